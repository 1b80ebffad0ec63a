//! The `train` driver: data-parallel training of the MLP across the mesh, one subtask of this
//! same module per training shard per round.
//!
//! Each round the driver puts the parameters as an object, spawns `grad` (sync mode) or
//! `step` (local mode) once per shard, waits for all of them, combines their results, puts a
//! [`Checkpoint`] and logs one line. After the last round it spawns `eval` on `test` and writes
//! the outputs `params`, `checkpoint` and `report`.
//!
//! - **sync**: `g = Σ count_j · g_j / Σ count_j` (each shard's `stats` count), then
//!   `params -= lr · g`. That is one full-batch gradient step on the union of the shards, so
//!   the result equals single-shard training up to float summation order.
//! - **local** (local SGD / DiLoCo with an outer learning rate of 1): each shard takes
//!   `local_steps` minibatch steps from the same parameters; the driver averages the returned
//!   parameters weighted by each shard's row count (read from its `DSH1` header).
//!
//! The combine is a few thousand floats, done here in plain Rust, accumulated in f64 in
//! shard order, so a run is deterministic.
//!
//! **Checkpoint** (`checkpoint` output, and each round's object), little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `MCK1` |
//! | 4 | 4 | `round` (u32): rounds completed |
//! | 8 | 8 | `seed` (u64): the run's `seed` argument |
//! | 16 | 8 | `rng` (u64): the driver's [`Rng`] state after that round |
//! | 24 | … | the parameters, a whole parameter file (`MLP1`, see [`crate::format`]) |
//!
//! Plain SGD keeps no optimizer state, so there is none to store. The driver's RNG draws each
//! local-mode `step` subtask's seed (one draw per shard per round, in shard order), so
//! resuming from `rng` replays the same seeds. Input `resume` (a checkpoint) starts from it:
//! its parameters, at its round + 1, with its RNG state.
//!
//! **Rounds.** Each round's line is sent as a progress record (`Ctx::progress`) as soon as
//! the round ends, and kept in the `report` output: UTF-8 `key=value` pairs,
//!
//! `round=1 loss=2.30 accuracy=0.11 samples=1347 peers=3 seconds=0.041 transfer=0.004
//! compute=0.021 checkpoint=0.001 coordination=0.015 bytes=48216 checkpoint_cid=…`
//!
//! - `loss`: the mean over all shards' samples (sync: at the parameters before the round's
//!   step; local: of the minibatches the round saw);
//! - `accuracy`: on `test`, at the parameters the round started from (an `eval` subtask
//!   beside the round's others), on rounds that are multiples of `eval_every` (0: never);
//! - `samples`: rows the round's gradients or local steps went through; `peers`: distinct
//!   peers that ran its subtasks;
//! - the round's `seconds`, split: `transfer`, the slowest subtask's fetch of its inputs plus
//!   the driver's reads of the results; `compute`, the slowest subtask's run plus the
//!   driver's combine and update; `checkpoint`, storing the parameters object and the
//!   checkpoint; `coordination`, the rest (placement, messages, queues). The slowest fetch
//!   and the slowest run may be different subtasks', so this is the round's critical path
//!   only approximately;
//! - `bytes`: what the round moved at most: the parameters to each subtask and every result
//!   read back (a subtask on the driver's own node moves nothing over the network);
//! - `checkpoint_cid`: the round's checkpoint object, which the submitter can fetch and keep.
//!
//! The report ends with `test count=450 loss=0.21 accuracy=0.95` for the final parameters.

use std::{
    io::Read,
    time::{Duration, Instant},
};

use shoal::{
    Cid, Ctx, Error, Handle, Outputs, Spawn,
    abi::{MAX_SUBTASKS, MAX_SUBTASKS_IN_FLIGHT},
    log,
};

use crate::{
    format::{Params, SHARD_HEADER_LEN, SHARD_MAGIC, Stats},
    rng::Rng,
};

/// The magic that starts a checkpoint.
pub const CHECKPOINT_MAGIC: [u8; 4] = *b"MCK1";
/// Bytes before a checkpoint's parameter file.
pub const CHECKPOINT_HEADER_LEN: usize = 24;

/// Parameters, rounds completed and RNG state: enough to resume a run (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Rounds completed.
    pub round: u32,
    /// The run's `seed` argument.
    pub seed: u64,
    /// The driver's RNG state after `round`.
    pub rng: u64,
    /// The parameters after `round`.
    pub params: Params,
}

impl Checkpoint {
    /// The checkpoint's bytes.
    ///
    /// # Errors
    /// As [`Params::encode`].
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let params = self.params.encode()?;
        let mut out = Vec::with_capacity(CHECKPOINT_HEADER_LEN + params.len());
        out.extend_from_slice(&CHECKPOINT_MAGIC);
        out.extend_from_slice(&self.round.to_le_bytes());
        out.extend_from_slice(&self.seed.to_le_bytes());
        out.extend_from_slice(&self.rng.to_le_bytes());
        out.extend_from_slice(&params);
        Ok(out)
    }

    /// Reads a checkpoint.
    ///
    /// # Errors
    /// A wrong magic, a short header, or a bad parameter file.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() < CHECKPOINT_HEADER_LEN || bytes[..4] != CHECKPOINT_MAGIC {
            return Err(Error::msg("not a checkpoint (no `MCK1` header)"));
        }
        let u64_at = |at: usize| {
            let mut word = [0; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(word)
        };
        let mut round = [0; 4];
        round.copy_from_slice(&bytes[4..8]);
        Ok(Self {
            round: u32::from_le_bytes(round),
            seed: u64_at(8),
            rng: u64_at(16),
            params: Params::decode(&bytes[CHECKPOINT_HEADER_LEN..])
                .map_err(|e| Error::msg(format!("checkpoint: {e}")))?,
        })
    }
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

/// `Σ w_j · v_j / Σ w_j`, element-wise, accumulated in f64 in the order given so that the
/// result depends only on the inputs and their order.
///
/// # Errors
/// No parts, a zero total weight, or parts of different lengths.
pub fn weighted_mean(parts: &[(u64, &[f32])]) -> Result<Vec<f32>, Error> {
    let Some((_, first)) = parts.first() else {
        return Err(Error::msg("nothing to average"));
    };
    let total: u64 = parts.iter().map(|(w, _)| w).sum();
    if total == 0 {
        return Err(Error::msg("the weights sum to zero"));
    }
    if let Some((_, bad)) = parts.iter().find(|(_, v)| v.len() != first.len()) {
        return Err(Error::msg(format!(
            "cannot average {} values with {}",
            bad.len(),
            first.len()
        )));
    }
    let mut sum = vec![0f64; first.len()];
    for (w, values) in parts {
        let w = *w as f64;
        for (s, v) in sum.iter_mut().zip(values.iter()) {
            *s += w * f64::from(*v);
        }
    }
    let total = total as f64;
    Ok(sum.into_iter().map(|s| (s / total) as f32).collect())
}

/// One SGD step in place: `params -= lr · grad`.
pub fn sgd_update(params: &mut [f32], grad: &[f32], lr: f32) {
    for (p, g) in params.iter_mut().zip(grad) {
        *p -= lr * g;
    }
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

/// A shard's row count, from its header.
///
/// # Errors
/// If the header is not a shard's.
pub fn shard_rows(header: &[u8]) -> Result<u64, Error> {
    if header.len() < SHARD_HEADER_LEN || header[..4] != SHARD_MAGIC {
        return Err(Error::msg("not a shard file (no `DSH1` header)"));
    }
    let mut rows = [0; 4];
    rows.copy_from_slice(&header[4..8]);
    Ok(u64::from(u32::from_le_bytes(rows)))
}

/// What one round did and where its time went (see the module docs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Round {
    /// The round's number.
    pub round: u32,
    /// Mean loss over the round's samples.
    pub loss: f64,
    /// Held-out accuracy at the round's starting parameters, if evaluated.
    pub accuracy: Option<f64>,
    /// Rows the round trained on.
    pub samples: u64,
    /// Distinct peers that ran its subtasks.
    pub peers: usize,
    /// Its wall time, and that split four ways, in seconds.
    pub seconds: f64,
    /// Fetching inputs and reading results.
    pub transfer: f64,
    /// Subtask runs and the driver's combine.
    pub compute: f64,
    /// Storing the parameters and the checkpoint.
    pub checkpoint: f64,
    /// Bytes moved at most.
    pub bytes: u64,
    /// The checkpoint object's CID.
    pub checkpoint_cid: Option<Cid>,
}

impl Round {
    /// The round's line: `key=value` pairs, as the module docs list them.
    pub fn line(&self) -> String {
        let mut line = format!("round={} loss={}", self.round, self.loss);
        if let Some(accuracy) = self.accuracy {
            line.push_str(&format!(" accuracy={accuracy}"));
        }
        let coordination = (self.seconds - self.transfer - self.compute - self.checkpoint).max(0.0);
        line.push_str(&format!(
            " samples={} peers={} seconds={:.4} transfer={:.4} compute={:.4} checkpoint={:.4} \
             coordination={coordination:.4} bytes={}",
            self.samples,
            self.peers,
            self.seconds,
            self.transfer,
            self.compute,
            self.checkpoint,
            self.bytes
        ));
        if let Some(cid) = self.checkpoint_cid {
            line.push_str(&format!(" checkpoint_cid={cid}"));
        }
        line
    }
}

/// The report's last line, from `eval`'s stats on the test shard.
pub fn test_line(stats: &Stats) -> String {
    format!(
        "test count={} loss={} accuracy={}",
        stats.count,
        stats.loss(),
        stats.accuracy().unwrap_or(f64::NAN)
    )
}

/// A training shard as the driver sees it.
struct ShardInput {
    name: String,
    cid: Cid,
    /// Rows, from the header; read only in local mode, which weights by it.
    rows: u64,
}

/// Runs `spawns` (at most [`MAX_SUBTASKS_IN_FLIGHT`] at a time) and returns their outputs in
/// the order given. The first failure, in whatever order they finish, ends the driver at
/// once with an error naming `what(i)`; its other subtasks are then cancelled by the host.
fn run_all(
    ctx: &mut Ctx,
    spawns: Vec<Spawn>,
    what: impl Fn(usize) -> String,
) -> Result<Vec<Outputs>, Error> {
    let mut results: Vec<Option<Outputs>> = vec![None; spawns.len()];
    let mut pending: Vec<(usize, Handle)> = Vec::new();
    let mut queue = spawns.into_iter().enumerate();
    loop {
        while pending.len() < MAX_SUBTASKS_IN_FLIGHT {
            let Some((i, spawn)) = queue.next() else {
                break;
            };
            let handle = ctx
                .spawn(spawn)
                .map_err(|e| Error::msg(format!("{}: {e}", what(i))))?;
            pending.push((i, handle));
        }
        if pending.is_empty() {
            break;
        }
        let handles: Vec<Handle> = pending.iter().map(|(_, h)| *h).collect();
        let (i, handle) = pending.swap_remove(ctx.wait(&handles)?);
        let outputs = handle
            .get()
            .map_err(|e| Error::msg(format!("{}: {e}", what(i))))?;
        results[i] = Some(outputs);
    }
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.ok_or_else(|| Error::msg(format!("{}: no result", what(i)))))
        .collect()
}

/// Reads subtasks' outputs, counting the time and bytes.
#[derive(Default)]
struct Reader {
    time: Duration,
    bytes: u64,
}

impl Reader {
    /// Reads a subtask's output as `T`.
    fn output<T>(
        &mut self,
        ctx: &Ctx,
        outputs: &Outputs,
        name: &str,
        decode: impl Fn(&[u8]) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let started = Instant::now();
        let bytes = ctx.read(outputs.output(name)?)?;
        self.time += started.elapsed();
        self.bytes += bytes.len() as u64;
        decode(&bytes).map_err(|e| Error::msg(format!("`{name}`: {e}")))
    }
}

/// `eval` of `params` on `test`.
fn eval_spawn(module: Cid, params: Cid, test: Cid) -> Spawn {
    Spawn::new(module)
        .task("eval")
        .input("params", params)
        .input("shard", test)
}

/// The `train` task; see the module docs and the table in the crate docs.
///
/// # Errors
/// Bad arguments or inputs, a refused spawn, or the first subtask failure, named by round,
/// task and shard.
pub fn train(ctx: &mut Ctx) -> Result<(), Error> {
    let rounds: u32 = ctx.arg_or("rounds", 20)?;
    let lr: f32 = ctx.arg_or("lr", 0.5)?;
    let eval_every: u32 = ctx.arg_or("eval_every", 1)?;
    let mut seed: u64 = ctx.arg_or("seed", 0)?;
    let mode = match ctx.arg("mode").unwrap_or("sync") {
        "sync" => Mode::Sync,
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
    let names = shard_names(&ctx.input_names())?;
    let test = ctx.input_cid("test")?;
    let module = ctx.module()?;

    let (mut params, first, mut rng) = if ctx.input_names().iter().any(|n| n == "resume") {
        let cp = Checkpoint::decode(&ctx.input("resume")?)
            .map_err(|e| Error::msg(format!("input `resume`: {e}")))?;
        log!("resuming after round {} (seed {})", cp.round, cp.seed);
        seed = cp.seed;
        (
            cp.params,
            cp.round.saturating_add(1),
            Rng::from_state(cp.rng),
        )
    } else {
        let params = Params::decode(&ctx.input("params")?)
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
    let mut shards = Vec::with_capacity(names.len());
    for name in names {
        let rows = if matches!(mode, Mode::Local { .. }) {
            // Only the header: a short file is shorter still, and `shard_rows` says so.
            let mut header = Vec::with_capacity(SHARD_HEADER_LEN);
            ctx.input_reader(&name)?
                .take(SHARD_HEADER_LEN as u64)
                .read_to_end(&mut header)
                .map_err(|e| Error::msg(format!("input `{name}`: {e}")))?;
            shard_rows(&header).map_err(|e| Error::msg(format!("input `{name}`: {e}")))?
        } else {
            0
        };
        let cid = ctx.input_cid(&name)?;
        shards.push(ShardInput { name, cid, rows });
    }
    log!(
        "training {} parameters on {} shard(s), rounds {first}..={rounds}, {mode:?}, lr {lr}",
        params.values.len(),
        shards.len()
    );

    let mut report = String::new();
    let mut checkpoint = None;
    for round in first..=rounds {
        let started = Instant::now();
        let encoded = params.encode()?;
        let p = ctx.put(&encoded)?;
        let mut stored = started.elapsed();
        let (task, mut spawns): (&str, Vec<Spawn>) = match mode {
            Mode::Sync => (
                "grad",
                shards
                    .iter()
                    .map(|s| {
                        Spawn::new(module)
                            .task("grad")
                            .input("params", p)
                            .input("shard", s.cid)
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
                let stats = read.output(ctx, &out, "stats", Stats::decode)?;
                stats.accuracy()
            }
            false => None,
        };
        let mut loss = Stats::default();
        let mut parts = Vec::with_capacity(outputs.len());
        for (i, out) in outputs.iter().enumerate() {
            let stats = read
                .output(ctx, out, "stats", Stats::decode)
                .map_err(|e| Error::msg(format!("{}: {e}", what(i))))?;
            let result_name = if mode == Mode::Sync { "grad" } else { "params" };
            let values = read
                .output(ctx, out, result_name, Params::decode)
                .map_err(|e| Error::msg(format!("{}: {e}", what(i))))?;
            if values.dims != params.dims {
                return Err(Error::msg(format!(
                    "{}: returned {:?}, the model is {:?}",
                    what(i),
                    values.dims,
                    params.dims
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
            parts.push((weight, values.values));
        }
        let combining = Instant::now();
        let parts: Vec<(u64, &[f32])> = parts.iter().map(|(w, v)| (*w, v.as_slice())).collect();
        let mean = weighted_mean(&parts)?;
        match mode {
            Mode::Sync => sgd_update(&mut params.values, &mean, lr),
            Mode::Local { .. } => params.values = mean,
        }
        let combined = combining.elapsed();

        let storing = Instant::now();
        let bytes = Checkpoint {
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
            checkpoint_cid: Some(cid),
        }
        .line();
        log!("{line}");
        ctx.progress(line.as_bytes())?;
        report.push_str(&line);
        report.push('\n');
    }

    let p = ctx.put(&params.encode()?)?;
    let eval = eval_spawn(module, p, test);
    let outputs = run_all(ctx, vec![eval], |_| "subtask `eval` on `test`".to_owned())?;
    let test_stats = Reader::default().output(ctx, &outputs[0], "stats", Stats::decode)?;
    let line = test_line(&test_stats);
    log!("{line}");
    report.push_str(&line);
    report.push('\n');

    ctx.output("params", &params.encode()?)?;
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
    use crate::format::Dims;

    #[test]
    fn checkpoint_round_trips_and_rejects_garbage() {
        let cp = Checkpoint {
            round: 7,
            seed: 42,
            rng: Rng::new(42).state(),
            params: Params::glorot(Dims::digits(3), 1),
        };
        let bytes = cp.encode().unwrap();
        assert_eq!(&bytes[..8], b"MCK1\x07\x00\x00\x00");
        assert_eq!(&bytes[8..16], &42u64.to_le_bytes());
        assert_eq!(&bytes[24..28], b"MLP1");
        assert_eq!(Checkpoint::decode(&bytes).unwrap(), cp);
        assert!(Checkpoint::decode(&bytes[..20]).is_err());
        assert!(Checkpoint::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Checkpoint::decode(b"MLP1xxxxxxxxxxxxxxxxxxxxxxxx").is_err());
    }

    #[test]
    fn weighted_mean_weights_and_is_exact_for_one_part() {
        let a = [1.0f32, 2.0, -3.0];
        let b = [3.0f32, 0.0, 1.0];
        let mean = weighted_mean(&[(1, &a), (3, &b)]).unwrap();
        assert_eq!(mean, vec![2.5, 0.5, 0.0]);
        let odd = [0.1f32, 1e-7, 12345.678];
        assert_eq!(weighted_mean(&[(449, &odd)]).unwrap(), odd.to_vec());
        assert!(weighted_mean(&[]).is_err());
        assert!(weighted_mean(&[(0, &a)]).is_err());
        assert!(weighted_mean(&[(1, &a), (1, &a[..2])]).is_err());
    }

    #[test]
    fn sgd_update_steps_against_the_gradient() {
        let mut p = vec![1.0f32, -1.0];
        sgd_update(&mut p, &[2.0, -4.0], 0.5);
        assert_eq!(p, vec![0.0, 1.0]);
    }

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

    #[test]
    fn shard_rows_reads_the_header() {
        let mut header = b"DSH1".to_vec();
        header.extend_from_slice(&449u32.to_le_bytes());
        header.extend_from_slice(&64u32.to_le_bytes());
        assert_eq!(shard_rows(&header).unwrap(), 449);
        assert!(shard_rows(b"MLP1\x01\x00\x00\x00\x40\x00\x00\x00").is_err());
        assert!(shard_rows(b"DSH1").is_err());
    }

    #[test]
    fn report_lines_are_key_value() {
        let round = Round {
            round: 3,
            loss: 0.25,
            accuracy: Some(0.5),
            samples: 10,
            peers: 2,
            seconds: 0.0414,
            transfer: 0.01,
            compute: 0.02,
            checkpoint: 0.001,
            bytes: 99,
            checkpoint_cid: None,
        };
        assert_eq!(
            round.line(),
            "round=3 loss=0.25 accuracy=0.5 samples=10 peers=2 seconds=0.0414 transfer=0.0100 \
             compute=0.0200 checkpoint=0.0010 coordination=0.0104 bytes=99"
        );
        let stats = Stats {
            count: 4,
            loss_sum: 1.0,
            correct: Some(3),
        };
        assert_eq!(test_line(&stats), "test count=4 loss=0.25 accuracy=0.75");
    }
}
