//! Linear regression on synthetic data: `ŷ = x·w + b`, trained by full-batch gradient descent
//! across the mesh. The data is made by `split` from a seed ([`data`]: `x ~ U(-1, 1)`,
//! `y = x·w* + b* + noise·N(0, 1)`), so this trainer needs no input file; it is the simple,
//! scalable model for measuring the driver (rows and features set the work and the bytes).
//! Every operation over the rows runs on the host's tensors ([`model`]).
//!
//! The file formats (parameters and gradients, shards, stats) are documented in
//! [`format`](mod@format).
//! The tasks, one module, chosen with `--task`:
//!
//! | task | inputs | args (default) | outputs |
//! |---|---|---|---|
//! | `split` | | `rows` (10000), `features` (64), `shards` (1), `seed` (0), `noise` (0.01), `test_rows` (1000) | `test`, `shard0` … `shard{N-1}` |
//! | `init` | | `features` (64) | `params` (all zero) |
//! | `grad` | `params`, `shard` | | `grad`, `stats` |
//! | `eval` | `params`, `shard` | | `stats` (with `sst` and `r2`) |
//! | `train` | `params`, `test`, `shard0` … `shard{N-1}`; or `resume` for `params` | `rounds` (20), `lr` (1.0), `mode` (`sync` only), `seed` (0), `eval_every` (1) | `params`, `checkpoint`, `report` |
//!
//! `split` and `init` ignore other arguments (`host train` gives every task all its `--arg`s,
//! and `init` a `hidden` and a `seed`), so `host train linreg.wasm --arg rows=60000 --arg
//! features=256` sets both. `split` refuses more than 2^28 values (`(rows + test_rows) ·
//! features`, 1 GiB of f32), more than 1024 shards, and fewer rows than shards.
//!
//! `grad` is the gradient of the mean loss `½·(x·w + b − y)²` over the whole shard (half the
//! mean squared error: see [`model`] for why the ½), with the shard's row count and loss sum
//! in `stats`, so a driver combines shards by their sizes. `train` is that driver
//! ([`driver`]); it reports R² on `test` in the report's `accuracy` field, since a regression
//! has no accuracy.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod data;
pub mod driver;
pub mod format;
pub mod model;
/// The seeded PRNG behind the data (`train_kit`'s).
pub use train_kit::rng;

use data::Generator;
use format::{Params, Shard};
use model::Batch;
use shoal::{Ctx, Error, log};

/// The most values (`(rows + test_rows) · features`) `split` makes: 1 GiB of f32.
const MAX_VALUES: usize = 1 << 28;
/// The most features `init` and `split` take.
const MAX_FEATURES: usize = 1 << 20;
/// The most shards `split` makes.
const MAX_SHARDS: usize = 1024;

fn features_arg(ctx: &Ctx) -> Result<usize, Error> {
    let features: usize = ctx.arg_or("features", 64)?;
    if features == 0 || features > MAX_FEATURES {
        return Err(Error::msg(format!(
            "features={features} is not in 1..={MAX_FEATURES}"
        )));
    }
    Ok(features)
}

fn params_and_batch(ctx: &Ctx) -> Result<(Params, Batch), Error> {
    let params = Params::decode(&ctx.input("params")?)
        .map_err(|e| Error::msg(format!("input `params`: {e}")))?;
    let shard = Shard::decode(&ctx.input("shard")?)
        .map_err(|e| Error::msg(format!("input `shard`: {e}")))?;
    let batch = Batch::upload(&shard, &params)?;
    Ok((params, batch))
}

/// Makes the data set of `seed`: `test_rows` held-out rows and `rows` training rows in
/// `shards` shards (see [`data`]).
#[shoal::task]
fn split(ctx: &mut Ctx) -> Result<(), Error> {
    let rows: usize = ctx.arg_or("rows", 10_000)?;
    let features = features_arg(ctx)?;
    let shards: usize = ctx.arg_or("shards", 1)?;
    let seed: u64 = ctx.arg_or("seed", 0)?;
    let noise: f32 = ctx.arg_or("noise", 0.01)?;
    let test_rows: usize = ctx.arg_or("test_rows", 1000)?;
    if shards == 0 || shards > MAX_SHARDS {
        return Err(Error::msg(format!(
            "shards={shards} is not in 1..={MAX_SHARDS}"
        )));
    }
    if rows < shards {
        return Err(Error::msg(format!(
            "rows={rows} cannot fill {shards} shards"
        )));
    }
    if test_rows == 0 {
        return Err(Error::msg("test_rows must be at least 1"));
    }
    if !(noise.is_finite() && noise >= 0.0) {
        return Err(Error::msg(format!("noise={noise} is not a scale")));
    }
    let values = rows
        .checked_add(test_rows)
        .and_then(|n| n.checked_mul(features));
    if values.is_none_or(|v| v > MAX_VALUES) {
        return Err(Error::msg(format!(
            "(rows + test_rows) · features = ({rows} + {test_rows}) · {features} values is above \
             the limit of 2^28 (1 GiB of f32)"
        )));
    }
    let mut data = Generator::new(seed, features, noise);
    ctx.output("test", &data.next_shard(test_rows)?)?;
    let sizes = data::shard_sizes(rows, shards);
    for (i, &size) in sizes.iter().enumerate() {
        ctx.output(&format!("shard{i}"), &data.next_shard(size)?)?;
    }
    log!(
        "{rows} rows × {features} features (seed {seed}, noise {noise}): {test_rows} held out, \
         shards of {sizes:?}"
    );
    Ok(())
}

/// Makes zero parameters for `features` features.
#[shoal::task]
fn init(ctx: &mut Ctx) -> Result<(), Error> {
    let features = features_arg(ctx)?;
    let cid = ctx.output("params", &Params::zeros(features).encode()?)?;
    log!("{} parameters, all zero: {cid}", features + 1);
    Ok(())
}

/// The gradient of the mean loss over `shard`, and the shard's count and loss sum.
#[shoal::task]
fn grad(ctx: &mut Ctx) -> Result<(), Error> {
    let (params, batch) = params_and_batch(ctx)?;
    let (stats, grad) = model::loss_and_grad(&params, &batch)?;
    ctx.output("grad", &grad.encode()?)?;
    ctx.output("stats", stats.encode().as_bytes())?;
    log!("{} rows, mean loss {}", stats.count, stats.loss());
    Ok(())
}

/// The loss and R² of `params` on `shard`.
#[shoal::task]
fn eval(ctx: &mut Ctx) -> Result<(), Error> {
    let (params, batch) = params_and_batch(ctx)?;
    let stats = model::evaluate(&params, &batch)?;
    ctx.output("stats", stats.encode().as_bytes())?;
    log!("{}", stats.encode().trim_end());
    Ok(())
}

/// Data-parallel training across the mesh: per round, `grad` on every shard as subtasks,
/// combined by shard size (see [`driver`]).
#[shoal::task]
fn train(ctx: &mut Ctx) -> Result<(), Error> {
    driver::train(ctx)
}

#[cfg(test)]
mod tests {
    use shoal::testing::{NativeHost, NativeRun};
    use train_kit::{Rng, combine::sgd_update};

    use super::*;

    fn split_with(args: &[(&str, &str)]) -> NativeRun {
        args.iter()
            .fold(NativeHost::new(), |h, (k, v)| h.arg(k, v))
            .run(super::split)
            .unwrap()
    }

    fn shard(run: &NativeRun, name: &str) -> Shard {
        Shard::decode(run.output(name).expect("a shard")).unwrap()
    }

    fn stats(run: &NativeRun) -> format::Stats {
        format::Stats::decode(run.output("stats").expect("stats")).unwrap()
    }

    fn grad(params: &Params, shard: &[u8]) -> (format::Stats, Params) {
        let run = NativeHost::new()
            .input("params", params.encode().unwrap())
            .input("shard", shard)
            .run(super::grad)
            .unwrap();
        let grad = Params::decode(run.output("grad").expect("grad")).unwrap();
        (stats(&run), grad)
    }

    fn eval(params: &Params, shard: &[u8]) -> format::Stats {
        let run = NativeHost::new()
            .input("params", params.encode().unwrap())
            .input("shard", shard)
            .run(super::eval)
            .unwrap();
        stats(&run)
    }

    #[test]
    fn split_is_deterministic_and_sized() {
        let args = [
            ("rows", "10"),
            ("features", "3"),
            ("shards", "3"),
            ("test_rows", "4"),
            ("seed", "5"),
        ];
        let run = split_with(&args);
        let names: Vec<&str> = run.outputs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["test", "shard0", "shard1", "shard2"]);
        let rows: Vec<usize> = names.iter().map(|n| shard(&run, n).rows()).collect();
        assert_eq!(rows, [4, 4, 3, 3]);
        assert!(names.iter().all(|n| shard(&run, n).features == 3));
        let bytes = run.output("shard2").unwrap();
        assert_eq!(bytes.len(), 12 + 4 * 3 * (3 + 1));
        assert_eq!(&bytes[..12], b"LRD1\x03\x00\x00\x00\x03\x00\x00\x00");
        assert_eq!(
            split_with(&args).outputs,
            run.outputs,
            "same seed, same bytes"
        );
        let other = split_with(&[("rows", "10"), ("features", "3"), ("seed", "6")]);
        assert_ne!(other.output("test"), run.output("test"));
        // One shard holds the rows of the three, in order; the test rows are the same.
        let one = split_with(&[
            ("rows", "10"),
            ("features", "3"),
            ("test_rows", "4"),
            ("seed", "5"),
        ]);
        assert_eq!(one.output("test"), run.output("test"));
        let whole = shard(&one, "shard0");
        let parts: Vec<Shard> = (0..3).map(|i| shard(&run, &format!("shard{i}"))).collect();
        assert_eq!(
            whole.x,
            parts.iter().flat_map(|s| s.x.clone()).collect::<Vec<_>>()
        );
        assert_eq!(
            whole.y,
            parts.iter().flat_map(|s| s.y.clone()).collect::<Vec<_>>()
        );
        let defaults = split_with(&[]);
        assert_eq!(shard(&defaults, "shard0").rows(), 10_000);
        assert_eq!(shard(&defaults, "test").rows(), 1000);
        assert_eq!(shard(&defaults, "test").features, 64);
    }

    #[test]
    fn bad_arguments_and_inputs_are_errors() {
        let err = |args: &[(&str, &str)]| {
            args.iter()
                .fold(NativeHost::new(), |h, (k, v)| h.arg(k, v))
                .run(super::split)
                .unwrap_err()
                .to_string()
        };
        let big = err(&[("rows", "1000000"), ("features", "1024")]);
        assert!(big.contains("above the limit of 2^28"), "{big}");
        assert!(err(&[("rows", "2"), ("shards", "3")]).contains("cannot fill 3 shards"));
        assert!(err(&[("features", "0")]).contains("features=0"));
        assert!(err(&[("test_rows", "0")]).contains("test_rows"));
        assert!(err(&[("noise", "-1")]).contains("noise=-1"));
        assert!(err(&[("shards", "0")]).contains("shards=0"));
        let overflow = err(&[("rows", &usize::MAX.to_string())]);
        assert!(overflow.contains("2^28"), "{overflow}");

        let init = NativeHost::new()
            .arg("features", "3")
            .arg("hidden", "64")
            .arg("seed", "9")
            .run(super::init)
            .unwrap();
        assert_eq!(
            Params::decode(init.output("params").unwrap()).unwrap(),
            Params::zeros(3)
        );
        let data = split_with(&[("rows", "4"), ("features", "2")]);
        let e = NativeHost::new()
            .input("params", Params::zeros(3).encode().unwrap())
            .input("shard", data.output("shard0").unwrap())
            .run(super::grad)
            .unwrap_err();
        assert!(
            e.to_string().contains("2 features, the model takes 3"),
            "{e}"
        );
        let e = NativeHost::new()
            .input("params", "nonsense")
            .input("shard", "")
            .run(super::grad)
            .unwrap_err();
        assert!(e.to_string().contains("input `params`"), "{e}");
        let e = NativeHost::new()
            .arg("mode", "local")
            .run(super::train)
            .unwrap_err();
        assert!(e.to_string().contains("mode=local"), "{e}");
    }

    /// Central differences `(L(p + ε·e_i) − L(p − ε·e_i)) / 2ε`, ε = 1e-2, each loss from a
    /// `grad` run, against the `grad` output, on every coordinate of a 6-feature model at
    /// random parameters. The loss is quadratic, so the differences are exact up to f32
    /// rounding: relative error `|fd − g| / max(|fd|, |g|, 1e-3)` stays below 1e-3.
    #[test]
    fn gradient_matches_finite_differences() {
        let data = split_with(&[("rows", "40"), ("features", "6"), ("noise", "0.3")]);
        let shard = data.output("shard0").unwrap();
        let mut rng = Rng::new(4);
        let p = Params {
            values: (0..7).map(|_| 2.0 * rng.next_f32() - 1.0).collect(),
        };
        let (_, g) = grad(&p, shard);
        assert_eq!(g.features(), 6);
        let eps = 1e-2;
        let mut worst = 0f64;
        for i in 0..p.values.len() {
            let (mut plus, mut minus) = (p.clone(), p.clone());
            plus.values[i] += eps;
            minus.values[i] -= eps;
            let loss = |p: &Params| grad(p, shard).0.loss();
            let fd = (loss(&plus) - loss(&minus)) / (2.0 * f64::from(eps));
            let gi = f64::from(g.values[i]);
            let rel = (fd - gi).abs() / fd.abs().max(gi.abs()).max(1e-3);
            assert!(rel < 1e-3, "coordinate {i}: fd {fd} vs grad {gi} ({rel:e})");
            worst = worst.max(rel);
        }
        eprintln!("worst relative error {worst:e}");
    }

    /// 300 full-batch gradient steps of learning rate 1 from zero, natively, recover the
    /// data's `w*` and `b*` to within 0.01, and R² on `test` goes from ≤ 0 to above 0.999.
    #[test]
    fn gradient_descent_recovers_the_true_parameters() {
        let data = split_with(&[("rows", "500"), ("features", "8"), ("seed", "7")]);
        let (shard, test) = (data.output("shard0").unwrap(), data.output("test").unwrap());
        let mut p = Params::zeros(8);
        let before = eval(&p, test);
        let mut first = None;
        for _ in 0..300 {
            let (stats, g) = grad(&p, shard);
            first.get_or_insert(stats.loss());
            sgd_update(&mut p.values, &g.values, 1.0);
        }
        let truth = Generator::new(7, 8, 0.01);
        let err = p
            .w()
            .iter()
            .zip(truth.w())
            .map(|(a, b)| (a - b).abs())
            .fold((p.b() - truth.b()).abs(), f32::max);
        let after = eval(&p, test);
        eprintln!(
            "max |p − p*| {err:e}; test mse {} → {}, R² {:?} → {:?}",
            before.mse(),
            after.mse(),
            before.r2(),
            after.r2()
        );
        assert!(err < 0.01, "max parameter error {err}");
        assert!(before.r2().unwrap() <= 0.0);
        assert!(after.r2().unwrap() > 0.999);
        // The noise floor: ½·0.01² per row.
        assert!(after.loss() < 1e-4, "{}", after.loss());
        assert!(first.unwrap() > 100.0 * after.loss());
    }
}
