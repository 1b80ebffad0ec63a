//! All WASI plumbing lives here, so that a later move from wasi-common to
//! `wasmtime_wasi::p1` touches one file.
//!
//! A task gets WASI preview 1 with no preopened directories, no environment, no arguments and
//! no sockets. stdin is empty; stdout and stderr go to the task's bounded log. Clocks and
//! randomness are real. Sleeping is capped by the task's wall-time limit.

use std::time::{Duration, Instant};

use wasi_common::{
    Error as WasiError, WasiCtx,
    pipe::{ReadPipe, WritePipe},
    sched::{Poll, WasiSched},
    sync::{clocks_ctx, random_ctx, sched::poll_oneoff},
    table::Table,
};
use wasmtime::Linker;

use super::{
    limits::Kill,
    logs::{LogSink, StdStream},
};

/// Adds WASI preview 1 (and the older `wasi_unstable`) to the linker.
pub(crate) fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    get: impl Fn(&mut T) -> &mut WasiCtx + Send + Sync + Copy + 'static,
) -> wasmtime::Result<()> {
    wasi_common::sync::add_to_linker(linker, get)
}

/// A fresh, empty WASI context for one task.
pub(crate) fn task_ctx(logs: &LogSink, deadline: Instant, timeout: Duration) -> WasiCtx {
    let ctx = WasiCtx::new(
        random_ctx(),
        clocks_ctx(),
        Box::new(DeadlineSched { deadline, timeout }),
        Table::new(),
    );
    ctx.set_stdin(Box::new(ReadPipe::new(std::io::empty())));
    ctx.set_stdout(Box::new(WritePipe::new(StdStream(logs.clone()))));
    ctx.set_stderr(Box::new(WritePipe::new(StdStream(logs.clone()))));
    ctx
}

/// A scheduler that never sleeps past the task's deadline: epochs only tick inside wasm, so
/// a task sleeping in a host call would otherwise outlive its limit.
struct DeadlineSched {
    deadline: Instant,
    timeout: Duration,
}

impl DeadlineSched {
    /// Sleeps `want`, or until the deadline and then ends the task.
    fn bounded_sleep(&self, want: Duration) -> Result<(), WasiError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if want < left {
            std::thread::sleep(want);
            return Ok(());
        }
        std::thread::sleep(left);
        Err(WasiError::trap(wasmtime::Error::new(Kill::Timeout(
            self.timeout,
        ))))
    }
}

#[async_trait::async_trait]
impl WasiSched for DeadlineSched {
    async fn poll_oneoff<'a>(&self, poll: &mut Poll<'a>) -> Result<(), WasiError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if let Some(wait) = poll
            .earliest_clock_deadline()
            .and_then(|c| c.duration_until())
            && wait >= left
        {
            return self.bounded_sleep(wait);
        }
        // Reads and writes on our in-memory pipes are always ready, so this cannot block
        // past the earliest clock, which is before the deadline.
        poll_oneoff(poll).await
    }

    async fn sched_yield(&self) -> Result<(), WasiError> {
        std::thread::yield_now();
        Ok(())
    }

    async fn sleep(&self, duration: Duration) -> Result<(), WasiError> {
        self.bounded_sleep(duration)
    }
}
