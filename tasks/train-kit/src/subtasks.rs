//! Running a round's subtasks and reading what they wrote, counting where the time went.

use std::time::{Duration, Instant};

use shoal::{Ctx, Error, Handle, Outputs, Spawn, abi::MAX_SUBTASKS_IN_FLIGHT};

/// Runs `spawns` (at most [`MAX_SUBTASKS_IN_FLIGHT`] at a time) and returns their outputs in
/// the order given. The first failure, in whatever order they finish, ends the driver at
/// once with an error naming `what(i)`; its other subtasks are then cancelled by the host.
///
/// # Errors
/// A refused spawn or a failed subtask, prefixed with `what(i)`.
pub fn run_all(
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
#[derive(Debug, Default)]
pub struct Reader {
    /// Time spent reading.
    pub time: Duration,
    /// Bytes read.
    pub bytes: u64,
}

impl Reader {
    /// Reads a subtask's output `name` and decodes it as `T`.
    ///
    /// # Errors
    /// No such output, a failed read, or `decode`'s error, prefixed with the output's name.
    pub fn output<T>(
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
