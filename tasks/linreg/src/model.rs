//! The model's math on the host's tensors: residuals, the loss, its gradient, and R². Every
//! op over the rows is a [`Tensor`] op (matmul with transpose flags, broadcasts, reductions),
//! so it runs on the node's GPU or CPU kernels; the task moves bytes and a few scalars.
//!
//! With residuals `r = X·w + b − y` over `n` rows, the loss is `L = ½·mean(r²)` and its
//! gradient `∂L/∂w = Xᵀ·r / n`, `∂L/∂b = mean(r)`. The ½ (least squares' usual convention)
//! keeps the curvature at about `1/3` per weight (`x ~ U(-1, 1)`) and `1` for the bias, so a
//! learning rate of 1, `host train`'s default, converges.

use shoal::{Error, Tensor, tensor::ReduceAxis};

use crate::format::{Params, Shard, Stats};

/// A shard on the device: `x` (`rows × features`) and `y` (`rows × 1`).
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
    /// An empty shard, features that are not the model's, or a host refusal.
    pub fn upload(shard: &Shard, params: &Params) -> Result<Self, Error> {
        if shard.rows() == 0 {
            return Err(Error::msg("the shard has no rows"));
        }
        if shard.features != params.features() {
            return Err(Error::msg(format!(
                "the shard has {} features, the model takes {}",
                shard.features,
                params.features()
            )));
        }
        Ok(Self {
            rows: shard.rows(),
            x: Tensor::from_slice(shard.rows(), shard.features, &shard.x)?,
            y: Tensor::from_slice(shard.rows(), 1, &shard.y)?,
        })
    }
}

/// The residuals `X·w + b − y` (`rows × 1`).
fn residuals(p: &Params, batch: &Batch) -> Result<Tensor, Error> {
    let w = Tensor::from_slice(p.features(), 1, p.w())?;
    let b = Tensor::from_slice(1, 1, &[p.b()])?;
    // `b` is a 1 × 1 row: the add broadcasts it over the rows.
    batch.x.matmul(&w)?.add(&b)?.sub(&batch.y)
}

/// `Σ r²` of a column, as `rᵀ·r`.
fn sum_of_squares(r: &Tensor) -> Result<f64, Error> {
    let s = r.matmul_t(r, true, false)?.to_vec()?;
    Ok(f64::from(s.first().copied().unwrap_or(f32::NAN)))
}

/// The loss over the batch (count and sum) and its gradient.
///
/// # Errors
/// If the host refuses an op.
pub fn loss_and_grad(p: &Params, batch: &Batch) -> Result<(Stats, Params), Error> {
    let r = residuals(p, batch)?;
    let n = batch.rows as f32;
    let gw = batch
        .x
        .matmul_t(&r, true, false)?
        .scale(1.0 / n)?
        .to_vec()?;
    let gb = r.mean(ReduceAxis::Axis0)?.to_vec()?;
    let mut values = gw;
    values.extend(gb);
    let stats = Stats {
        count: batch.rows as u64,
        loss_sum: 0.5 * sum_of_squares(&r)?,
        sst: None,
    };
    Ok((stats, Params { values }))
}

/// The loss over the batch, with `sst` for R².
///
/// # Errors
/// If the host refuses an op.
pub fn evaluate(p: &Params, batch: &Batch) -> Result<Stats, Error> {
    let r = residuals(p, batch)?;
    let centred = batch.y.sub(&batch.y.mean(ReduceAxis::Axis0)?)?;
    Ok(Stats {
        count: batch.rows as u64,
        loss_sum: 0.5 * sum_of_squares(&r)?,
        sst: Some(sum_of_squares(&centred)?),
    })
}
