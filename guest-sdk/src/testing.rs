//! Run task functions natively, for unit tests.
//!
//! ```
//! use shoal::{Ctx, Error, testing::NativeHost};
//!
//! fn double(ctx: &mut Ctx) -> Result<(), Error> {
//!     let x: i64 = ctx.arg_or("x", 0)?;
//!     ctx.output("y", (2 * x).to_string().as_bytes())?;
//!     Ok(())
//! }
//!
//! let run = NativeHost::new().arg("x", "21").run(double).unwrap();
//! assert_eq!(run.output("y"), Some(&b"42"[..]));
//! ```

use crate::{Ctx, Error, abi, sys::native};

/// A task's inputs and arguments, to run it in-process.
#[derive(Default)]
pub struct NativeHost {
    inputs: Vec<(String, Vec<u8>)>,
    args: Vec<(String, String)>,
}

/// What a native run produced.
#[derive(Debug)]
pub struct NativeRun {
    /// Named outputs, in the order written.
    pub outputs: Vec<(String, Vec<u8>)>,
    /// Log lines.
    pub logs: Vec<String>,
    /// Progress records, in the order reported.
    pub progress: Vec<Vec<u8>>,
}

impl NativeRun {
    /// An output's bytes by name.
    pub fn output(&self, name: &str) -> Option<&[u8]> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }
}

impl NativeHost {
    /// No inputs, no arguments.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a named input.
    pub fn input(mut self, name: &str, bytes: impl Into<Vec<u8>>) -> Self {
        self.inputs.push((name.to_owned(), bytes.into()));
        self
    }

    /// Adds an argument.
    pub fn arg(mut self, key: &str, value: &str) -> Self {
        self.args.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Runs `task` on this thread against these inputs.
    ///
    /// # Errors
    /// The task's own error.
    pub fn run(self, task: fn(&mut Ctx) -> Result<(), Error>) -> Result<NativeRun, Error> {
        let mut args = self.args;
        args.sort();
        native::TASK.with(|t| {
            *t.borrow_mut() = native::NativeTask {
                inputs: self.inputs,
                args: abi::encode_args(args.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
                ..Default::default()
            }
        });
        let result = task(&mut Ctx::new());
        let done = native::TASK.with(|t| std::mem::take(&mut *t.borrow_mut()));
        result.map(|()| NativeRun {
            outputs: done.outputs,
            logs: done.logs,
            progress: done.progress,
        })
    }
}
