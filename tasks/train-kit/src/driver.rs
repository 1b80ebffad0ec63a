//! The `train` driver: data-parallel training across the mesh, one subtask of the trainer's
//! own module per training shard per round. A trainer supplies its file formats through
//! [`Trainer`]; the loop, the subtask protocol (see the crate docs), the checkpoints and the
//! report are the same for every trainer.
//!
//! Each round the driver puts the parameters as an object, spawns `grad` (sync mode) or
//! `step` (local mode) once per shard, waits for all of them, combines their results, puts a
//! [`Checkpoint`] and reports one [`Round`] line. After the last round it spawns `eval` on
//! `test` and writes the outputs `params`, `checkpoint` and `report`.
//!
//! - **sync**: `g = Σ count_j · g_j / Σ count_j` (each shard's `stats` count), then
//!   `params -= lr · g`. That is one full-batch gradient step on the union of the shards, so
//!   the result equals single-shard training up to float summation order.
//! - **local** (local SGD / DiLoCo with an outer learning rate of 1), for trainers with a
//!   `step` task ([`Trainer::local_shards`]): each shard takes `local_steps` minibatch steps
//!   of `batch` rows from the same parameters; the driver averages the returned parameters
//!   weighted by each shard's row count (read from its header).
//!
//! The combine is done here in plain Rust ([`crate::combine`]), accumulated in f64 in shard
//! order, so a run is deterministic. Argument `combine` picks it, in both modes: `mean` (the
//! weighted means above, the default), or a robust one that a minority of lying workers
//! cannot drag arbitrarily far, `median`, `trimmed` (with `trim`) or `centered_clip` (with
//! `tau` and `clip_iters`); see [`Combine`].
//!
//! **Sampled re-execution**: with `recheck=P` (0 to 1), each shard subtask is, with
//! probability P, run on two peers and verified ([`Spawn::verified`]); a peer whose result
//! disagrees is outvoted by a third run, marked faulty, and never given work by this node
//! again, so a lying worker is caught within about 1/P of its subtasks and then excluded.
//! Verified subtasks run the deterministic kernels, so honest peers agree bit for bit.
//!
//! Arguments: `rounds` ([`Trainer::DEFAULT_ROUNDS`]), `lr` ([`Trainer::DEFAULT_LR`]), `mode`
//! (`sync`), `local_steps` (10), `batch` (32), `seed` (0), `eval_every` (1), `combine`
//! (`mean`), `trim` (0.2), `tau` (the median distance), `clip_iters` (3), `recheck` (0).
//! Inputs: `params`
//! or `resume` (a checkpoint: its parameters, from its round + 1, with its RNG state),
//! `test`, and `shard0` … `shard{N-1}`.
//!
//! **Simulated poisoning, for robustness tests**: `poison_shard=K` (sync mode only) passes
//! `scale` (argument `poison_scale`, default −50) to the `grad` subtask of `shard{K}`, every
//! round; a trainer's `grad` that honours `scale` multiplies its gradient by it (mlp-digits'
//! does). It stands in for a hostile worker: a real one is a peer outside the driver's
//! control, and the combine sees only the gradients either way, so a module that lies about
//! one shard tests the combine as a hostile peer would. It is not a defence and not meant
//! for real runs.

use std::{
    io::Read,
    time::{Duration, Instant},
};

use shoal::{Cid, Ctx, Error, Outputs, Spawn, abi::MAX_SUBTASKS, log};

use crate::{
    Checkpoint, Rng,
    combine::{Combine, sgd_update},
    report::{Round, Stats, test_line},
    subtasks::{Reader, run_all},
};

/// A trainer's file formats: what the driver needs to know of a model to train it.
///
/// An implementation is a marker type; everything is associated, since a trainer module has
/// one model.
pub trait Trainer {
    /// The parameters, as `init` writes them. A gradient has the same layout: the driver
    /// decodes `grad` outputs with [`Trainer::decode_params`] too.
    type Params: Clone;
    /// The magic that starts this trainer's checkpoints (see [`crate::checkpoint`]).
    const CHECKPOINT_MAGIC: [u8; 4];
    /// `rounds` when the argument is not given.
    const DEFAULT_ROUNDS: u32 = 20;
    /// `lr` when the argument is not given.
    const DEFAULT_LR: f32;

    /// A parameter file's bytes.
    ///
    /// # Errors
    /// If the parameters cannot be written (a dimension that does not fit the format).
    fn encode_params(params: &Self::Params) -> Result<Vec<u8>, Error>;

    /// Reads a parameter (or gradient) file.
    ///
    /// # Errors
    /// Bytes that are not one.
    fn decode_params(bytes: &[u8]) -> Result<Self::Params, Error>;

    /// The values the driver combines: the whole body, flat.
    fn values(params: &Self::Params) -> &[f32];

    /// The same, to update in place.
    fn values_mut(params: &mut Self::Params) -> &mut [f32];

    /// Why `result` (a subtask's gradient or parameters) does not fit the model `params`;
    /// `None` when it does.
    fn mismatch(params: &Self::Params, result: &Self::Params) -> Option<String>;

    /// Reads a subtask's `stats` output.
    ///
    /// # Errors
    /// Bytes that are not stats.
    fn decode_stats(bytes: &[u8]) -> Result<Stats, Error>;

    /// How local mode weighs the shards, for a trainer with a `step` task; `None` (the
    /// default) refuses `mode=local`.
    fn local_shards() -> Option<LocalShards> {
        None
    }
}

/// How to read a shard's row count, which weighs its parameters in local mode.
#[derive(Clone, Copy, Debug)]
pub struct LocalShards {
    /// Bytes of the header: the driver reads only these.
    pub header_len: usize,
    /// The rows, from those bytes.
    pub rows: fn(&[u8]) -> Result<u64, Error>,
}

/// How each round trains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// One full-batch gradient step per round, the shard gradients combined.
    Sync,
    /// `steps` minibatch steps of `batch` rows per shard, then the parameters averaged.
    Local {
        /// Local steps per round (H).
        steps: usize,
        /// Rows per local step.
        batch: usize,
    },
}

/// The training shards among the input names: `shard0` … `shard{N-1}`, in index order.
///
/// # Errors
/// No shard, or a gap in the numbering.
pub fn shard_names(names: &[String]) -> Result<Vec<String>, Error> {
    let mut indices: Vec<usize> = names
        .iter()
        .filter_map(|n| n.strip_prefix("shard")?.parse().ok())
        .collect();
    indices.sort_unstable();
    if indices.is_empty() {
        return Err(Error::msg(
            "no training shards: give inputs `shard0`, `shard1`, …",
        ));
    }
    if let Some(missing) = indices.iter().enumerate().find(|(i, n)| i != *n) {
        return Err(Error::msg(format!(
            "training shards must be numbered from 0 without gaps: `shard{}` is missing",
            missing.0
        )));
    }
    Ok(indices.iter().map(|i| format!("shard{i}")).collect())
}

/// A training shard as the driver sees it.
struct ShardInput {
    name: String,
    cid: Cid,
    /// Rows, from the header; read only in local mode, which weights by it.
    rows: u64,
}

/// `eval` of `params` on `test`.
fn eval_spawn(module: Cid, params: Cid, test: Cid) -> Spawn {
    Spawn::new(module)
        .task("eval")
        .input("params", params)
        .input("shard", test)
}

/// The simulated poisoning arguments (see the module docs): the shard index and the scale
/// its `grad` gets, if `poison_shard` is given.
fn poison(ctx: &Ctx, mode: Mode, shards: usize) -> Result<Option<(usize, f32)>, Error> {
    let Some(shard) = ctx
        .arg("poison_shard")
        .map(|v| {
            v.parse::<usize>()
                .map_err(|e| Error::msg(format!("argument `poison_shard={v}`: {e}")))
        })
        .transpose()?
    else {
        if ctx.arg("poison_scale").is_some() {
            return Err(Error::msg("argument `poison_scale` needs `poison_shard`"));
        }
        return Ok(None);
    };
    if mode != Mode::Sync {
        return Err(Error::msg(
            "poison_shard: only sync mode's `grad` takes a `scale`",
        ));
    }
    if shard >= shards {
        return Err(Error::msg(format!(
            "poison_shard={shard}: there are {shards} shard(s)"
        )));
    }
    let scale: f32 = ctx.arg_or("poison_scale", -50.0)?;
    Ok(Some((shard, scale)))
}

/// The `train` task of trainer `T`; see the module docs.
///
/// # Errors
/// Bad arguments or inputs, a refused spawn, or the first subtask failure, named by round,
/// task and shard.
pub fn train<T: Trainer>(ctx: &mut Ctx) -> Result<(), Error> {
    let rounds: u32 = ctx.arg_or("rounds", T::DEFAULT_ROUNDS)?;
    let lr: f32 = ctx.arg_or("lr", T::DEFAULT_LR)?;
    let eval_every: u32 = ctx.arg_or("eval_every", 1)?;
    let mut seed: u64 = ctx.arg_or("seed", 0)?;
    let mode = match ctx.arg("mode").unwrap_or("sync") {
        "sync" => Mode::Sync,
        "local" if T::local_shards().is_none() => {
            return Err(Error::msg(
                "mode=local: this trainer has no `step` task; use mode=sync",
            ));
        }
        "local" => Mode::Local {
            steps: ctx.arg_or("local_steps", 10)?,
            batch: ctx.arg_or("batch", 32)?,
        },
        other => {
            return Err(Error::msg(format!(
                "mode={other}: expected `sync` or `local`"
            )));
        }
    };
    let combine = Combine::from_args(|key| ctx.arg(key))?;
    let recheck: f32 = ctx.arg_or("recheck", 0.0)?;
    if !(0.0..=1.0).contains(&recheck) {
        return Err(Error::msg(format!(
            "recheck={recheck}: a probability, from 0 to 1"
        )));
    }
    // Its own stream, so that rechecking leaves the training's random numbers as they are.
    let mut sampler = Rng::new(seed ^ 0x7265_6368_6563_6b21);
    let names = shard_names(&ctx.input_names())?;
    let poison = poison(ctx, mode, names.len())?;
    let test = ctx.input_cid("test")?;
    let module = ctx.module()?;

    let (mut params, first, mut rng) = if ctx.input_names().iter().any(|n| n == "resume") {
        let cp = Checkpoint::<T>::decode(&ctx.input("resume")?)
            .map_err(|e| Error::msg(format!("input `resume`: {e}")))?;
        log!("resuming after round {} (seed {})", cp.round, cp.seed);
        seed = cp.seed;
        (
            cp.params,
            cp.round.saturating_add(1),
            Rng::from_state(cp.rng),
        )
    } else {
        let params = T::decode_params(&ctx.input("params")?)
            .map_err(|e| Error::msg(format!("input `params`: {e}")))?;
        (params, 1, Rng::new(seed))
    };
    // Every round spawns one subtask per shard (and `eval` on evaluated rounds), and the end
    // one `eval` more: refuse up front a run the subtask count limit would stop half-way.
    let per_round = names.len() + usize::from(eval_every > 0);
    let needed =
        (rounds.saturating_sub(first.saturating_sub(1)) as usize).saturating_mul(per_round) + 1;
    if needed > MAX_SUBTASKS {
        return Err(Error::msg(format!(
            "{rounds} rounds of {} shards need {needed} subtasks, above the limit of {MAX_SUBTASKS}",
            names.len()
        )));
    }
    let local = T::local_shards().filter(|_| matches!(mode, Mode::Local { .. }));
    let mut shards = Vec::with_capacity(names.len());
    for name in names {
        let rows = match local {
            Some(local) => {
                // Only the header: a short file is shorter still, and `local.rows` says so.
                let mut header = Vec::with_capacity(local.header_len);
                ctx.input_reader(&name)?
                    .take(local.header_len as u64)
                    .read_to_end(&mut header)
                    .map_err(|e| Error::msg(format!("input `{name}`: {e}")))?;
                (local.rows)(&header).map_err(|e| Error::msg(format!("input `{name}`: {e}")))?
            }
            None => 0,
        };
        let cid = ctx.input_cid(&name)?;
        shards.push(ShardInput { name, cid, rows });
    }
    log!(
        "training {} parameters on {} shard(s), rounds {first}..={rounds}, {mode:?}, lr {lr}, \
         combine {combine}",
        T::values(&params).len(),
        shards.len()
    );
    if let Some((shard, scale)) = poison {
        log!("poisoning: the gradient of `shard{shard}` is scaled by {scale} every round");
    }

    let mut report = String::new();
    let mut checkpoint = None;
    for round in first..=rounds {
        let started = Instant::now();
        let encoded = T::encode_params(&params)?;
        let p = ctx.put(&encoded)?;
        let mut stored = started.elapsed();
        let (task, mut spawns): (&str, Vec<Spawn>) = match mode {
            Mode::Sync => (
                "grad",
                shards
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let spawn = Spawn::new(module)
                            .task("grad")
                            .input("params", p)
                            .input("shard", s.cid);
                        match poison {
                            Some((shard, scale)) if shard == i => spawn.arg("scale", scale),
                            _ => spawn,
                        }
                    })
                    .collect(),
            ),
            Mode::Local { steps, batch } => (
                "step",
                shards
                    .iter()
                    .map(|s| {
                        Spawn::new(module)
                            .task("step")
                            .input("params", p)
                            .input("shard", s.cid)
                            .arg("lr", lr)
                            .arg("steps", steps)
                            .arg("batch", batch)
                            .arg("seed", rng.next_u64())
                    })
                    .collect(),
            ),
        };
        for spawn in &mut spawns {
            if recheck > 0.0 && sampler.next_f32() < recheck {
                *spawn = spawn.clone().verified(2);
            }
        }
        let evaluate = eval_every > 0 && round % eval_every == 0;
        if evaluate {
            spawns.push(eval_spawn(module, p, test));
        }
        let spawned = spawns.len() as u64;
        let what = |i: usize| match shards.get(i) {
            Some(s) => format!("round {round}: subtask `{task}` on `{}`", s.name),
            None => format!("round {round}: subtask `eval` on `test`"),
        };
        let mut outputs = run_all(ctx, spawns, what)?;
        let slowest = |f: fn(&Outputs) -> u64| {
            Duration::from_micros(outputs.iter().map(f).max().unwrap_or(0))
        };
        let (fetch, run) = (slowest(|o| o.stats.fetch_us), slowest(|o| o.stats.wall_us));
        let mut peers: Vec<u32> = outputs.iter().map(|o| o.stats.peer).collect();
        peers.sort_unstable();
        peers.dedup();

        let mut read = Reader::default();
        let accuracy = match evaluate {
            true => {
                let out = outputs.pop().ok_or_else(|| Error::msg("no eval result"))?;
                let stats = read.output(ctx, &out, "stats", T::decode_stats)?;
                stats.accuracy
            }
            false => None,
        };
        let mut loss = Stats::default();
        let mut parts = Vec::with_capacity(outputs.len());
        for (i, out) in outputs.iter().enumerate() {
            let stats = read
                .output(ctx, out, "stats", T::decode_stats)
                .map_err(|e| Error::msg(format!("{}: {e}", what(i))))?;
            let result_name = if mode == Mode::Sync { "grad" } else { "params" };
            let values = read
                .output(ctx, out, result_name, T::decode_params)
                .map_err(|e| Error::msg(format!("{}: {e}", what(i))))?;
            if let Some(why) = T::mismatch(&params, &values) {
                return Err(Error::msg(format!("{}: {why}", what(i))));
            }
            let (got, want) = (T::values(&values).len(), T::values(&params).len());
            if got != want {
                return Err(Error::msg(format!(
                    "{}: returned {got} values, the model has {want}",
                    what(i)
                )));
            }
            // Sync weighs by the rows the gradient averaged over; local by the shard's rows
            // (its stats count the minibatch rows it saw, not its size).
            let weight = if mode == Mode::Sync {
                stats.count
            } else {
                shards[i].rows
            };
            loss.count += stats.count;
            loss.loss_sum += stats.loss_sum;
            parts.push((weight, values));
        }
        let combining = Instant::now();
        let parts: Vec<(u64, &[f32])> = parts.iter().map(|(w, v)| (*w, T::values(v))).collect();
        let combined = combine.combine(&parts)?;
        match mode {
            Mode::Sync => sgd_update(T::values_mut(&mut params), &combined, lr),
            Mode::Local { .. } => T::values_mut(&mut params).copy_from_slice(&combined),
        }
        let combined = combining.elapsed();

        let storing = Instant::now();
        let bytes = Checkpoint::<T> {
            round,
            seed,
            rng: rng.state(),
            params: params.clone(),
        }
        .encode()?;
        let cid = ctx.put(&bytes)?;
        stored += storing.elapsed();
        checkpoint = Some(bytes);
        let line = Round {
            round,
            loss: loss.loss(),
            accuracy,
            samples: loss.count,
            peers: peers.len(),
            seconds: started.elapsed().as_secs_f64(),
            transfer: (fetch + read.time).as_secs_f64(),
            compute: (run + combined).as_secs_f64(),
            checkpoint: stored.as_secs_f64(),
            bytes: encoded.len() as u64 * spawned + read.bytes,
            combine: Some(combine.name()),
            checkpoint_cid: Some(cid),
        }
        .line();
        log!("{line}");
        ctx.progress(line.as_bytes())?;
        report.push_str(&line);
        report.push('\n');
    }

    let p = ctx.put(&T::encode_params(&params)?)?;
    let eval = eval_spawn(module, p, test);
    let outputs = run_all(ctx, vec![eval], |_| "subtask `eval` on `test`".to_owned())?;
    let test_stats = Reader::default().output(ctx, &outputs[0], "stats", T::decode_stats)?;
    let line = test_line(&test_stats);
    log!("{line}");
    report.push_str(&line);
    report.push('\n');

    ctx.output("params", &T::encode_params(&params)?)?;
    // A run resumed after its last round trains nothing: its checkpoint is the one it got.
    let checkpoint = match checkpoint {
        Some(bytes) => bytes,
        None => ctx.input("resume")?,
    };
    ctx.output("checkpoint", &checkpoint)?;
    ctx.output("report", report.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_are_numbered_without_gaps() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            shard_names(&names(&["test", "shard1", "params", "shard0", "shard10"]))
                .unwrap_err()
                .to_string(),
            "training shards must be numbered from 0 without gaps: `shard2` is missing"
        );
        let many: Vec<String> = (0..12).rev().map(|i| format!("shard{i}")).collect();
        let sorted = shard_names(&many).unwrap();
        assert_eq!(sorted[..3], names(&["shard0", "shard1", "shard2"])[..]);
        assert_eq!(sorted[11], "shard11");
        assert!(shard_names(&names(&["test", "shardx"])).is_err());
    }
}
