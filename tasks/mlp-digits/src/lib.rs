//! A multi-layer perceptron on the UCI digits (`tasks/data/digits.csv.gz`): `64 → hidden →
//! 10`, ReLU, softmax cross-entropy averaged over the batch. Every matrix op runs on the
//! host's tensors (GPU or CPU kernels); the task itself only moves bytes and counts.
//!
//! The file formats (parameters and gradients, shards, stats) are documented in
//! [`format`](mod@format).
//! The tasks, one module, chosen with `--task`:
//!
//! | task | inputs | args (default) | outputs |
//! |---|---|---|---|
//! | `split` | `csv` | `shards` (1), `seed` (0), `test_fraction` (0.25) | `test`, `shard0` … `shard{N-1}` |
//! | `init` | | `hidden` (64), `seed` (0) | `params` |
//! | `grad` | `params`, `shard` | `scale` (1) | `grad`, `stats` |
//! | `step` | `params`, `shard` | `lr` (0.1), `steps` (1), `batch` (32), `seed` (0) | `params`, `stats` |
//! | `eval` | `params`, `shard` | | `stats` (with `correct` and `accuracy`) |
//! | `train` | `params`, `test`, `shard0` … `shard{N-1}`; or `resume` for `params` | `rounds` (20), `lr` (0.5), `mode` (`sync`), `local_steps` (10), `batch` (32), `seed` (0), `combine` (`mean`; or `median`, `trimmed`, `centered_clip`) | `params`, `checkpoint`, `report` |
//!
//! `grad` is the gradient of the mean loss over the whole shard, with the shard's sample
//! count and loss sum in `stats`, so a driver combines shards by their sizes:
//! `g = Σ count_j · g_j / Σ count_j`. `train` is that driver, spawning the other tasks of
//! this module as subtasks; its checkpoint and report formats are in [`driver`], its other
//! arguments in [`train_kit::driver`].
//!
//! `grad`'s `scale` multiplies the gradient it writes: it exists only so that a robustness
//! test can make one worker lie (the driver's `poison_shard`, see [`train_kit::driver`]), and
//! is 1 otherwise.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod data;
pub mod driver;
pub mod format;
pub mod gzip;
pub mod model;
/// The seeded PRNG, shared with the driver's checkpoints (`train_kit`'s).
pub use train_kit::rng;

use format::{Dims, Params, Shard};
use model::{Batch, DeviceParams, Sgd};
use rng::Rng;
use shoal::{Ctx, Error, log};

/// The most inflated CSV `split` accepts: the shipped file is 0.3 MB.
const MAX_CSV_LEN: usize = 64 << 20;
/// The most hidden units `init` makes.
const MAX_HIDDEN: usize = 1 << 16;
/// The most shards `split` makes.
const MAX_SHARDS: usize = 1024;

fn params_and_shard(ctx: &Ctx) -> Result<(Params, Shard), Error> {
    let params = Params::decode(&ctx.input("params")?)
        .map_err(|e| Error::msg(format!("input `params`: {e}")))?;
    let shard = Shard::decode(&ctx.input("shard")?)
        .map_err(|e| Error::msg(format!("input `shard`: {e}")))?;
    Ok((params, shard))
}

/// Splits the digits CSV into a stratified held-out `test` set and `shards` training
/// shards (see [`data::split`]). Input `csv` is the CSV, gzipped (the shipped `.gz`) or
/// plain.
#[shoal::task]
fn split(ctx: &mut Ctx) -> Result<(), Error> {
    let shards: usize = ctx.arg_or("shards", 1)?;
    let seed: u64 = ctx.arg_or("seed", 0)?;
    let test_fraction: f64 = ctx.arg_or("test_fraction", 0.25)?;
    if shards > MAX_SHARDS {
        return Err(Error::msg(format!("shards={shards} is above {MAX_SHARDS}")));
    }
    let raw = ctx.input("csv")?;
    let csv = if gzip::is_gzip(&raw) {
        gzip::gunzip(&raw, MAX_CSV_LEN)?
    } else {
        raw
    };
    let data = data::parse_csv(&csv)?;
    let split = data::split(&data, shards, test_fraction, seed)?;
    ctx.output("test", &split.test.encode()?)?;
    for (i, shard) in split.train.iter().enumerate() {
        ctx.output(&format!("shard{i}"), &shard.encode()?)?;
    }
    let sizes: Vec<usize> = split.train.iter().map(Shard::rows).collect();
    log!(
        "{} rows: {} held out, shards of {sizes:?}",
        data.rows(),
        split.test.rows()
    );
    Ok(())
}

/// Makes Glorot-uniform parameters for `64 → hidden → 10` from `seed`.
#[shoal::task]
fn init(ctx: &mut Ctx) -> Result<(), Error> {
    let hidden: usize = ctx.arg_or("hidden", 64)?;
    let seed: u64 = ctx.arg_or("seed", 0)?;
    if hidden == 0 || hidden > MAX_HIDDEN {
        return Err(Error::msg(format!(
            "hidden={hidden} is not in 1..={MAX_HIDDEN}"
        )));
    }
    let params = Params::glorot(Dims::digits(hidden), seed);
    let cid = ctx.output("params", &params.encode()?)?;
    log!(
        "{} parameters ({hidden} hidden units, seed {seed}): {cid}",
        params.values.len()
    );
    Ok(())
}

/// The gradient of the mean loss over `shard`, and the shard's count and loss sum. Argument
/// `scale` (1) multiplies the gradient: a simulated liar, for the driver's robustness tests.
#[shoal::task]
fn grad(ctx: &mut Ctx) -> Result<(), Error> {
    let scale: f32 = ctx.arg_or("scale", 1.0)?;
    let (params, shard) = params_and_shard(ctx)?;
    let batch = Batch::upload(&shard, params.dims)?;
    let (loss, grad) = model::loss_and_grad(&DeviceParams::upload(&params)?, &batch)?;
    let mut grad = grad.download()?;
    if scale != 1.0 {
        grad.values.iter_mut().for_each(|g| *g *= scale);
        log!("gradient scaled by {scale} (a simulated liar)");
    }
    let stats = format::Stats {
        count: shard.rows() as u64,
        loss_sum: f64::from(loss) * shard.rows() as f64,
        correct: None,
    };
    ctx.output("grad", &grad.encode()?)?;
    ctx.output("stats", stats.encode().as_bytes())?;
    log!("{} rows, mean loss {loss}", shard.rows());
    Ok(())
}

/// `steps` steps of minibatch SGD on `shard` (see [`model::train`]).
#[shoal::task]
fn step(ctx: &mut Ctx) -> Result<(), Error> {
    let (params, shard) = params_and_shard(ctx)?;
    let sgd = Sgd {
        lr: ctx.arg_or("lr", 0.1)?,
        steps: ctx.arg_or("steps", 1)?,
        batch: ctx.arg_or("batch", 32)?,
    };
    let mut rng = Rng::new(ctx.arg_or("seed", 0)?);
    let (params, stats) = model::train(&params, &shard, sgd, &mut rng)?;
    ctx.output("params", &params.encode()?)?;
    ctx.output("stats", stats.encode().as_bytes())?;
    log!(
        "{} steps of {}, mean batch loss {}",
        sgd.steps,
        sgd.batch,
        stats.loss()
    );
    Ok(())
}

/// Loss and accuracy of `params` on `shard`.
#[shoal::task]
fn eval(ctx: &mut Ctx) -> Result<(), Error> {
    let (params, shard) = params_and_shard(ctx)?;
    let batch = Batch::upload(&shard, params.dims)?;
    let stats = model::evaluate(&DeviceParams::upload(&params)?, &batch, &shard.labels)?;
    ctx.output("stats", stats.encode().as_bytes())?;
    log!("{}", stats.encode().trim_end());
    Ok(())
}

/// Data-parallel training across the mesh: per round, `grad` (`mode=sync`) or `step`
/// (`mode=local`) on every shard as subtasks, combined by shard size (see [`driver`]).
#[shoal::task]
fn train(ctx: &mut Ctx) -> Result<(), Error> {
    driver::train(ctx)
}

#[cfg(test)]
mod tests {
    use shoal::testing::NativeHost;

    use super::*;

    const DIGITS_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");

    fn stats(bytes: Option<&[u8]>) -> format::Stats {
        format::Stats::decode(bytes.expect("stats output")).unwrap()
    }

    /// The whole pipeline natively: split, init, a few hundred SGD steps on one shard, then
    /// held-out accuracy far above chance (0.1).
    #[test]
    fn tasks_train_the_digits_natively() {
        let split = NativeHost::new()
            .input("csv", DIGITS_GZ)
            .arg("shards", "3")
            .run(super::split)
            .unwrap();
        let names: Vec<&str> = split.outputs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["test", "shard0", "shard1", "shard2"]);
        let init = NativeHost::new()
            .arg("hidden", "16")
            .arg("seed", "1")
            .run(super::init)
            .unwrap();
        let params = init.output("params").unwrap().to_vec();
        let shard = split.output("shard0").unwrap().to_vec();
        let grad = NativeHost::new()
            .input("params", params.clone())
            .input("shard", shard.clone())
            .run(super::grad)
            .unwrap();
        let g = stats(grad.output("stats"));
        assert_eq!(g.count, 449);
        assert!(
            (g.loss() - 10f64.ln()).abs() < 0.3,
            "initial loss {}",
            g.loss()
        );
        assert_eq!(grad.output("grad").unwrap().len(), params.len());
        let trained = NativeHost::new()
            .input("params", params)
            .input("shard", shard)
            .arg("lr", "0.5")
            .arg("steps", "300")
            .arg("batch", "32")
            .run(super::step)
            .unwrap();
        let eval = NativeHost::new()
            .input("params", trained.output("params").unwrap())
            .input("shard", split.output("test").unwrap())
            .run(super::eval)
            .unwrap();
        let accuracy = stats(eval.output("stats")).accuracy().unwrap();
        assert!(accuracy > 0.8, "held-out accuracy {accuracy}");
        eprintln!("native: held-out accuracy {accuracy} after 300 steps");
    }

    /// `grad`'s `scale` (the simulated liar of the driver's `poison_shard`) multiplies the
    /// gradient and nothing else.
    #[test]
    fn grad_scale_multiplies_the_gradient() {
        let split = NativeHost::new()
            .input("csv", DIGITS_GZ)
            .arg("shards", "8")
            .run(super::split)
            .unwrap();
        let init = NativeHost::new()
            .arg("hidden", "4")
            .run(super::init)
            .unwrap();
        let grad = |scale: Option<&str>| {
            let mut host = NativeHost::new()
                .input("params", init.output("params").unwrap())
                .input("shard", split.output("shard0").unwrap());
            if let Some(scale) = scale {
                host = host.arg("scale", scale);
            }
            let run = host.run(super::grad).unwrap();
            let g = Params::decode(run.output("grad").unwrap()).unwrap();
            (g, stats(run.output("stats")))
        };
        let ((plain, s1), (flipped, s2)) = (grad(None), grad(Some("-50")));
        assert_eq!(s1, s2);
        assert_eq!(plain.dims, flipped.dims);
        let scaled: Vec<f32> = plain.values.iter().map(|g| -50.0 * g).collect();
        assert_eq!(flipped.values, scaled);
        assert!(plain.values.iter().any(|g| *g != 0.0));
    }

    #[test]
    fn bad_arguments_and_inputs_are_errors() {
        let err = NativeHost::new()
            .arg("hidden", "0")
            .run(super::init)
            .unwrap_err();
        assert!(err.to_string().contains("hidden=0"), "{err}");
        let err = NativeHost::new()
            .input("params", "nonsense")
            .input("shard", "")
            .run(super::grad)
            .unwrap_err();
        assert!(err.to_string().contains("input `params`"), "{err}");
        let plain = format!("{},1\n", vec!["0"; 64].join(","));
        let err = NativeHost::new()
            .input("csv", plain)
            .run(super::split)
            .unwrap_err();
        assert!(err.to_string().contains("too few"), "{err}");
    }
}
