//! Tasks that spawn tasks, and objects, in the shape of Ray's API:
//! `let h = ctx.spawn(Spawn::new(module).task("grad").input("params", p))?;`
//! `let grad = ctx.read(h.get()?.output("grad")?)?;`
//!
//! Subtasks go through the mesh's scheduler like any submitted task, inherit this task's
//! limits, and share its CPU budget; see [`crate::abi::MAX_SUBTASKS`] and its neighbours for
//! the bounds.

use crate::{
    Cid, Error,
    abi::{FailureCode, RunStats, SpawnSpec, decode_result},
    sys,
};

/// A task to spawn.
#[derive(Clone, Debug)]
pub struct Spawn(pub(crate) SpawnSpec);

impl Spawn {
    /// A task from `module` (a CID this task may read, e.g. [`crate::Ctx::module`]).
    pub fn new(module: Cid) -> Self {
        Self(SpawnSpec {
            module,
            task: None,
            inputs: Vec::new(),
            args: Vec::new(),
            verify: 0,
        })
    }

    /// Runs it deterministic on `copies` distinct peers (2 to [`crate::abi::MAX_VERIFY`]) and
    /// takes their agreed output: a peer whose result disagrees with the majority is caught,
    /// and this node never places work on it again. A driver re-executes a sample of its
    /// gradient tasks this way.
    #[must_use]
    pub fn verified(mut self, copies: u32) -> Self {
        self.0.verify = copies;
        self
    }

    /// Calls this task of the module (needed when it has several).
    #[must_use]
    pub fn task(mut self, name: &str) -> Self {
        self.0.task = Some(name.to_owned());
        self
    }

    /// Gives the subtask an input: a file this task may read.
    #[must_use]
    pub fn input(mut self, name: &str, cid: Cid) -> Self {
        self.0.inputs.retain(|(n, _)| n != name);
        self.0.inputs.push((name.to_owned(), cid));
        self
    }

    /// The spec as `spawn` takes it.
    pub fn encoded(&self) -> Vec<u8> {
        self.0.encode()
    }

    /// Sets an argument.
    #[must_use]
    pub fn arg(mut self, key: &str, value: impl ToString) -> Self {
        self.0.args.retain(|(k, _)| k != key);
        self.0.args.push((key.to_owned(), value.to_string()));
        self
    }
}

/// A subtask this task spawned. Handles are the spawning task's own: another task's are
/// refused by the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handle(pub(crate) u32);

impl Handle {
    /// A handle from a raw number, as a hostile task would make one: only for testing that
    /// the host refuses handles a task never got.
    pub fn forge(raw: u32) -> Self {
        Self(raw)
    }

    /// Waits for the subtask and returns its outputs; a failure is an error naming its kind.
    ///
    /// # Errors
    /// The subtask's failure, or the host's refusal.
    pub fn get(&self) -> Result<Outputs, Error> {
        self.result()?
            .map_err(|(kind, message)| Error::msg(format!("subtask failed ({kind:?}): {message}")))
    }

    /// Waits for the subtask and returns its outputs or its typed failure.
    ///
    /// # Errors
    /// The host's refusal (a foreign handle, out of time).
    pub fn result(&self) -> Result<Result<Outputs, (FailureCode, String)>, Error> {
        sys::subtask_wait(&[self.0]).map_err(|c| Error::host("waiting for a subtask", c))?;
        let bytes = sys::subtask_result(self.0)
            .map_err(|c| Error::host("reading a subtask's result", c))?;
        let (result, stats) = decode_result(&bytes)
            .ok_or_else(|| Error::msg("the host sent a malformed subtask result"))?;
        Ok(result.map(|named| Outputs { named, stats }))
    }
}

/// A finished subtask's named outputs, and what its run cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outputs {
    /// The outputs by name, in the order written.
    pub named: Vec<(String, Cid)>,
    /// Its run's wall and fetch time and (as a number) the peer it ran on.
    pub stats: RunStats,
}

impl Outputs {
    /// The output by that name.
    ///
    /// # Errors
    /// If the subtask wrote no output by that name.
    pub fn output(&self, name: &str) -> Result<Cid, Error> {
        self.named
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| *c)
            .ok_or_else(|| Error::msg(format!("the subtask wrote no output `{name}`")))
    }
}
