//! # Shoal guest SDK
//!
//! Write a training task in Rust, compile it to `wasm32-wasip1`, and submit it to the mesh.
//! A task is a function marked [`task`]: it reads named inputs and `key=value` arguments
//! through [`Ctx`], and writes named outputs, which become blake3-addressed blocks.
//!
//! ```no_run
//! use shoal::{Ctx, Error, log};
//!
//! /// Upper-cases its input `text` and writes it as output `shout`.
//! #[shoal::task]
//! fn shout(ctx: &mut Ctx) -> Result<(), Error> {
//!     let text = ctx.input("text")?;
//!     let times: usize = ctx.arg_or("times", 1)?;
//!     let loud = String::from_utf8_lossy(&text).to_uppercase().repeat(times);
//!     let cid = ctx.output("shout", loud.as_bytes())?;
//!     log!("wrote {} bytes as {cid}", loud.len());
//!     Ok(())
//! }
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip1`, then run it with
//! `host run target/wasm32-wasip1/release/<crate>.wasm --input text=FILE --arg times=2`.
//!
//! Heavy math goes to the host through [`Tensor`]: its ops run on the node's GPU or native
//! CPU kernels, and only explicit reads copy values back into the task.
//!
//! The same code compiles natively, where the host calls go to an in-process stub, so task
//! logic can be unit-tested with `cargo test` (see [`testing`]).

#![deny(missing_docs)]

pub mod abi;
mod cid;
mod ctx;
mod error;
mod subtask;
mod sys;
pub mod tensor;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use cid::Cid;
pub use ctx::{Ctx, InputReader};
pub use error::Error;
/// Marks a function as a task entry point: `#[shoal::task] fn name(ctx: &mut Ctx) -> Result<(), Error>`.
///
/// The task is exported as `name` (or the name given with `#[shoal::task(name = "other")]`).
/// An `Err` ends the task as failed with the error's message.
pub use shoal_macros::task;
pub use subtask::{Handle, Outputs, Spawn};
pub use tensor::Tensor;

/// Logs a line at info level to the task's captured log: `log!("step {i}: loss {loss}")`.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => { $crate::log_at($crate::abi::LogLevel::Info, &format!($($arg)*)) };
}

/// Logs a line at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log_at($crate::abi::LogLevel::Warn, &format!($($arg)*)) };
}

/// Logs one line at `level`.
pub fn log_at(level: abi::LogLevel, message: &str) {
    sys::log(level, message);
}

#[doc(hidden)]
pub mod __private {
    use crate::{Ctx, Error, abi, sys};

    /// What the `#[task]` macro's export calls: runs the task, maps `Result` to a status.
    pub fn run_task(f: fn(&mut Ctx) -> Result<(), Error>) -> i32 {
        let mut ctx = Ctx::new();
        match f(&mut ctx) {
            Ok(()) => abi::TASK_OK,
            Err(e) => {
                sys::set_error(&e.to_string());
                abi::TASK_FAILED
            }
        }
    }
}
