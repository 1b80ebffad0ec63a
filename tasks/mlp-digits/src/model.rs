//! The MLP's math on the host's tensors: forward, backward (the gradient of the mean
//! softmax cross-entropy), SGD and evaluation. Every matrix op is a [`Tensor`] op, so it runs
//! on the node's GPU or CPU kernels; natively (unit tests) on the SDK's reference ops.

use shoal::{Error, Tensor, tensor::ReduceAxis};

use crate::{
    format::{Dims, Params, Shard, Stats},
    rng::Rng,
};

/// Parameters resident on the compute device: `W1` (`inputs × hidden`), `b1` (`1 × hidden`),
/// `W2` (`hidden × classes`), `b2` (`1 × classes`). A gradient has the same form.
#[derive(Debug)]
pub struct DeviceParams {
    dims: Dims,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
}

impl DeviceParams {
    /// Copies parameters to the device.
    ///
    /// # Errors
    /// If the host refuses a tensor (quota, size).
    pub fn upload(p: &Params) -> Result<Self, Error> {
        let d = p.dims;
        Ok(Self {
            dims: d,
            w1: Tensor::from_slice(d.inputs, d.hidden, p.w1())?,
            b1: Tensor::from_slice(1, d.hidden, p.b1())?,
            w2: Tensor::from_slice(d.hidden, d.classes, p.w2())?,
            b2: Tensor::from_slice(1, d.classes, p.b2())?,
        })
    }

    /// Reads the parameters back into the task.
    ///
    /// # Errors
    /// If the device fails.
    pub fn download(&self) -> Result<Params, Error> {
        let mut values = Vec::with_capacity(self.dims.param_count());
        for t in [&self.w1, &self.b1, &self.w2, &self.b2] {
            values.extend(t.to_vec()?);
        }
        Ok(Params {
            dims: self.dims,
            values,
        })
    }

    /// One SGD step, `self - lr · grad`, on the device.
    ///
    /// # Errors
    /// If the host refuses an op.
    pub fn sgd(&self, grad: &DeviceParams, lr: f32) -> Result<DeviceParams, Error> {
        Ok(Self {
            dims: self.dims,
            w1: grad.w1.axpy(-lr, &self.w1)?,
            b1: grad.b1.axpy(-lr, &self.b1)?,
            w2: grad.w2.axpy(-lr, &self.w2)?,
            b2: grad.b2.axpy(-lr, &self.b2)?,
        })
    }
}

/// Rows on the device: features `x` (`rows × inputs`) and labels `y` (`rows × 1`, as f32).
#[derive(Debug)]
pub struct Batch {
    rows: usize,
    x: Tensor,
    y: Tensor,
}

impl Batch {
    /// Uploads a shard after checking that it fits the model.
    ///
    /// # Errors
    /// An empty shard, features that are not `dims.inputs`, a label not below `dims.classes`
    /// (which would make the loss NaN), or a host refusal.
    pub fn upload(shard: &Shard, dims: Dims) -> Result<Self, Error> {
        if shard.rows() == 0 {
            return Err(Error::msg("the shard has no rows"));
        }
        if shard.features != dims.inputs {
            return Err(Error::msg(format!(
                "the shard has {} features, the model takes {}",
                shard.features, dims.inputs
            )));
        }
        if let Some(bad) = shard.labels.iter().find(|&&l| l as usize >= dims.classes) {
            return Err(Error::msg(format!(
                "label {bad} is not a class of a {}-class model",
                dims.classes
            )));
        }
        let labels: Vec<f32> = shard.labels.iter().map(|&l| l as f32).collect();
        Ok(Self {
            rows: shard.rows(),
            x: Tensor::from_slice(shard.rows(), shard.features, &shard.x)?,
            y: Tensor::from_slice(shard.rows(), 1, &labels)?,
        })
    }
}

/// What the backward pass needs from the forward pass.
struct Forward {
    /// Hidden pre-activations, `rows × hidden`.
    z1: Tensor,
    /// `relu(z1)`.
    a1: Tensor,
    /// `rows × classes`.
    logits: Tensor,
}

fn forward(p: &DeviceParams, x: &Tensor) -> Result<Forward, Error> {
    let z1 = x.matmul(&p.w1)?.add(&p.b1)?;
    let a1 = z1.relu()?;
    let logits = a1.matmul(&p.w2)?.add(&p.b2)?;
    Ok(Forward { z1, a1, logits })
}

/// The mean loss over the batch and its gradient with respect to every parameter.
///
/// # Errors
/// If the host refuses an op.
pub fn loss_and_grad(p: &DeviceParams, batch: &Batch) -> Result<(f32, DeviceParams), Error> {
    let f = forward(p, &batch.x)?;
    let loss = f.logits.softmax_xent(&batch.y)?.to_vec()?;
    // The host's gradient is already divided by the row count: the gradient of the mean.
    let dlogits = f.logits.softmax_xent_grad(&batch.y)?;
    let w2 = f.a1.matmul_t(&dlogits, true, false)?;
    let b2 = dlogits.sum(ReduceAxis::Axis0)?;
    let da1 = dlogits.matmul_t(&p.w2, false, true)?;
    let dz1 = f.z1.relu_grad(&da1)?;
    let w1 = batch.x.matmul_t(&dz1, true, false)?;
    let b1 = dz1.sum(ReduceAxis::Axis0)?;
    let grad = DeviceParams {
        dims: p.dims,
        w1,
        b1,
        w2,
        b2,
    };
    Ok((loss.first().copied().unwrap_or(f32::NAN), grad))
}

/// Loss sum and correct predictions over the batch; a tie goes to the lower class.
///
/// # Errors
/// If the host refuses an op.
pub fn evaluate(p: &DeviceParams, batch: &Batch, labels: &[u32]) -> Result<Stats, Error> {
    let f = forward(p, &batch.x)?;
    let losses = f.logits.softmax_xent_per_row(&batch.y)?.to_vec()?;
    let logits = f.logits.to_vec()?;
    let correct = logits
        .chunks_exact(p.dims.classes)
        .zip(labels)
        .filter(|(row, label)| {
            let best = row
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (c, &v)| {
                    if v > best.1 { (c, v) } else { best }
                });
            best.0 == **label as usize
        })
        .count();
    Ok(Stats {
        count: batch.rows as u64,
        loss_sum: losses.iter().map(|&l| f64::from(l)).sum(),
        correct: Some(correct as u64),
    })
}

/// Minibatch SGD settings for [`train`].
#[derive(Clone, Copy, Debug)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f32,
    /// Steps to take.
    pub steps: usize,
    /// Rows per step (at most the shard's rows).
    pub batch: usize,
}

/// `sgd.steps` steps of minibatch SGD on `shard`: each epoch visits the rows in a fresh
/// order drawn from `rng`, in batches of `sgd.batch` (the last one of an epoch may be
/// smaller). The parameters stay on the device throughout; only each batch is uploaded.
/// Returns the new parameters and the stats of the batches seen (each batch's mean loss,
/// before its step, weighted by its size).
///
/// # Errors
/// As [`Batch::upload`] and [`loss_and_grad`].
pub fn train(p: &Params, shard: &Shard, sgd: Sgd, rng: &mut Rng) -> Result<(Params, Stats), Error> {
    if sgd.batch == 0 {
        return Err(Error::msg("the batch size must be at least 1"));
    }
    let mut params = DeviceParams::upload(p)?;
    let mut order: Vec<usize> = (0..shard.rows()).collect();
    let mut next = order.len();
    let mut stats = Stats::default();
    for _ in 0..sgd.steps {
        if next >= order.len() {
            rng.shuffle(&mut order);
            next = 0;
        }
        let end = (next + sgd.batch).min(order.len());
        // The tensor API has no row gather: the batch's rows are copied in the task.
        let rows = shard.select(&order[next..end]);
        next = end;
        let batch = Batch::upload(&rows, p.dims)?;
        let (loss, grad) = loss_and_grad(&params, &batch)?;
        params = params.sgd(&grad, sgd.lr)?;
        stats.count += rows.rows() as u64;
        stats.loss_sum += f64::from(loss) * rows.rows() as f64;
    }
    Ok((params.download()?, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> (Params, Shard) {
        let dims = Dims {
            inputs: 5,
            hidden: 4,
            classes: 3,
        };
        let mut p = Params::glorot(dims, 11);
        // Non-zero biases, so their gradients are exercised away from the symmetric start.
        let mut rng = Rng::new(12);
        for i in dims.b1().chain(dims.b2()) {
            p.values[i] = rng.next_f32() - 0.5;
        }
        let rows = 6;
        let shard = Shard {
            features: 5,
            x: (0..rows * 5).map(|_| rng.next_f32()).collect(),
            labels: (0..rows).map(|i| (i % 3) as u32).collect(),
        };
        (p, shard)
    }

    fn loss(p: &Params, shard: &Shard) -> f32 {
        let batch = Batch::upload(shard, p.dims).unwrap();
        loss_and_grad(&DeviceParams::upload(p).unwrap(), &batch)
            .unwrap()
            .0
    }

    /// Hidden pre-activations in f64, to keep finite differences off ReLU's kink.
    fn hidden_preacts(p: &Params, shard: &Shard) -> Vec<f64> {
        let d = p.dims;
        let mut z = Vec::new();
        for r in 0..shard.rows() {
            for j in 0..d.hidden {
                let dot: f64 = (0..d.inputs)
                    .map(|i| f64::from(shard.row(r)[i]) * f64::from(p.w1()[i * d.hidden + j]))
                    .sum();
                z.push(dot + f64::from(p.b1()[j]));
            }
        }
        z
    }

    /// Central differences `(L(p + ε·e_i) − L(p − ε·e_i)) / 2ε` with ε = 1e-2 against the
    /// backward pass, on every coordinate of a 5→4→3 model and 6 rows, in f32. Coordinates
    /// of a hidden unit whose pre-activation comes within 2ε of 0 on some row are skipped:
    /// a step there crosses ReLU's kink, where no difference quotient matches a gradient.
    /// Relative error `|fd − g| / max(|fd|, |g|, 1e-3)` stays below 1e-2.
    #[test]
    fn backward_matches_finite_differences() {
        let (p, shard) = tiny();
        let d = p.dims;
        let batch = Batch::upload(&shard, d).unwrap();
        let (_, grad) = loss_and_grad(&DeviceParams::upload(&p).unwrap(), &batch).unwrap();
        let grad = grad.download().unwrap();
        let z = hidden_preacts(&p, &shard);
        let eps = 1e-2;
        let kinky =
            |j: usize| (0..shard.rows()).any(|r| z[r * d.hidden + j].abs() < 2.0 * eps as f64);
        let mut checked = 0;
        let mut worst = 0.0f32;
        for i in 0..d.param_count() {
            let unit = if d.w1().contains(&i) {
                Some(i % d.hidden)
            } else if d.b1().contains(&i) {
                Some(i - d.b1().start)
            } else {
                None
            };
            if unit.is_some_and(kinky) {
                continue;
            }
            let (mut plus, mut minus) = (p.clone(), p.clone());
            plus.values[i] += eps;
            minus.values[i] -= eps;
            let fd = (loss(&plus, &shard) - loss(&minus, &shard)) / (2.0 * eps);
            let g = grad.values[i];
            let rel = (fd - g).abs() / fd.abs().max(g.abs()).max(1e-3);
            assert!(
                rel < 1e-2,
                "coordinate {i}: fd {fd} vs grad {g} (relative {rel})"
            );
            worst = worst.max(rel);
            checked += 1;
        }
        assert!(
            checked > d.param_count() / 2,
            "only {checked} of {} checked",
            d.param_count()
        );
        eprintln!(
            "checked {checked} of {} coordinates, worst relative error {worst:e}",
            d.param_count()
        );
    }

    #[test]
    fn sgd_lowers_the_loss() {
        let (p, shard) = tiny();
        let before = loss(&p, &shard);
        let sgd = Sgd {
            lr: 0.5,
            steps: 300,
            batch: 4,
        };
        let (after, stats) = train(&p, &shard, sgd, &mut Rng::new(1)).unwrap();
        assert_eq!(
            stats.count,
            150 * (4 + 2),
            "epochs of 6 rows: batches of 4 and 2"
        );
        let after = loss(&after, &shard);
        assert!(after < 0.5 * before, "{before} → {after}");
        assert!(
            stats.loss() < f64::from(before),
            "mean batch loss {}",
            stats.loss()
        );
    }

    #[test]
    fn eval_counts_argmax_hits_with_ties_to_the_lower_class() {
        let (mut p, shard) = tiny();
        let batch = Batch::upload(&shard, p.dims).unwrap();
        let eval = |p: &Params| {
            evaluate(&DeviceParams::upload(p).unwrap(), &batch, &shard.labels).unwrap()
        };
        p.values.fill(0.0);
        // All logits tie: every row is predicted class 0, the label of rows 0 and 3.
        let tied = eval(&p);
        assert_eq!((tied.count, tied.correct), (6, Some(2)));
        assert!((tied.loss() - 3f64.ln()).abs() < 1e-6);
        p.values[p.dims.b2().start + 2] = 1.0;
        assert_eq!(eval(&p).correct, Some(2), "class 2: rows 2 and 5");
        let (trained, _) = tiny();
        let stats = eval(&trained);
        assert!((stats.loss() as f32 - loss(&trained, &shard)).abs() < 1e-5);
    }

    #[test]
    fn mismatched_shards_are_errors() {
        let (p, mut shard) = tiny();
        shard.labels[0] = 3;
        assert!(
            Batch::upload(&shard, p.dims)
                .unwrap_err()
                .to_string()
                .contains("label 3")
        );
        let empty = shard.select(&[]);
        assert!(Batch::upload(&empty, p.dims).is_err());
        assert!(Batch::upload(&shard, Dims::digits(4)).is_err());
    }
}
