//! All WASI plumbing lives here, so that a later move from wasi-common to
//! `wasmtime_wasi::p1` touches one file.
//!
//! A task gets WASI preview 1 with no preopened directories, no environment, no arguments and
//! no sockets. stdin is empty; stdout and stderr go to the task's bounded log. Clocks and
//! randomness are real, except for a deterministic task: its randomness is a stream seeded by
//! the spec, and its clocks are virtual (the wall clock stands at the Unix epoch, the
//! monotonic one advances a microsecond per reading), so that every honest node gives it the
//! same bytes and verified runs can compare them. Sleeping is capped by the task's wall-time
//! limit.
//!
//! The four iovec calls (`fd_read`, `fd_write`, `fd_pread`, `fd_pwrite`) are our own:
//! wasi-common builds ~40 host bytes per 8-byte guest iovec before it writes anything (one
//! `fd_write` took a 512 MiB task's host to 3 GiB), where these walk the guest's iovecs in
//! place and allocate nothing.

use std::{
    convert::Infallible,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use wasi_common::{
    Error as WasiError, WasiClocks, WasiCtx, WasiMonotonicClock, WasiSystemClock,
    clocks::WasiMonotonicOffsetClock,
    pipe::WritePipe,
    sched::{Poll, WasiSched},
    sync::{clocks_ctx, random_ctx, sched::poll_oneoff},
    table::Table,
};
use wasmtime::{Caller, Linker};

use super::{
    TaskState,
    host_fns::guest_range,
    limits::Kill,
    logs::{LogSink, StdStream},
};

/// Adds WASI preview 1 (and the older `wasi_unstable`) to the linker, with our own iovec
/// calls and `random_get` in place of wasi-common's.
pub(crate) fn add_to_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    wasi_common::sync::add_to_linker(linker, |s: &mut TaskState| &mut s.wasi)?;
    linker.allow_shadowing(true);
    for module in ["wasi_snapshot_preview1", "wasi_unstable"] {
        linker.func_wrap(
            module,
            "fd_write",
            |mut c: Caller<'_, TaskState>, fd: i32, iovs: i32, len: i32, done: i32| {
                stdio(&mut c, fd, Stdio::Write, iovs, len, done)
            },
        )?;
        linker.func_wrap(
            module,
            "fd_read",
            |mut c: Caller<'_, TaskState>, fd: i32, iovs: i32, len: i32, done: i32| {
                stdio(&mut c, fd, Stdio::Read, iovs, len, done)
            },
        )?;
        linker.func_wrap(
            module,
            "random_get",
            |mut c: Caller<'_, TaskState>, buf: i32, len: i32| random_get(&mut c, buf, len),
        )?;
        // Positioned I/O on a pipe is ESPIPE in POSIX; every fd a task has is a pipe.
        for call in ["fd_pwrite", "fd_pread"] {
            linker.func_wrap(
                module,
                call,
                |c: Caller<'_, TaskState>, fd: i32, _: i32, _: i32, _: i64, _: i32| {
                    Ok(stdio_fd(&c, fd).map_or_else(|errno| errno, |_| ERRNO_SPIPE))
                },
            )?;
        }
    }
    linker.allow_shadowing(false);
    Ok(())
}

const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const ERRNO_SPIPE: i32 = 70;
/// POSIX's `IOV_MAX`: more iovecs in one call is `EINVAL`, as on Linux.
const IOV_MAX: u32 = 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stdio {
    Read,
    Write,
}

/// The fds a task has: 0 (stdin), 1 and 2 (stdout and stderr), while wasi-common's table
/// still holds them (a task may close them).
fn stdio_fd(c: &Caller<'_, TaskState>, fd: i32) -> Result<i32, i32> {
    match u32::try_from(fd) {
        Ok(fd @ 0..=2) if c.data().wasi.table().contains_key(fd) => Ok(fd as i32),
        _ => Err(ERRNO_BADF),
    }
}

/// `fd_read` and `fd_write` on stdio: stdin is empty, stdout and stderr append to the
/// task's bounded log. Each iovec is read from guest memory as it is used.
fn stdio(
    c: &mut Caller<'_, TaskState>,
    fd: i32,
    dir: Stdio,
    iovs: i32,
    iovs_len: i32,
    done_ptr: i32,
) -> wasmtime::Result<i32> {
    let fd = match stdio_fd(c, fd) {
        Ok(fd) => fd,
        Err(errno) => return Ok(errno),
    };
    if (dir == Stdio::Read) != (fd == 0) {
        return Ok(ERRNO_BADF);
    }
    if iovs_len as u32 > IOV_MAX {
        return Ok(ERRNO_INVAL);
    }
    let Some(memory) = c.data().memory else {
        return Ok(ERRNO_FAULT);
    };
    let (data, state) = memory.data_and_store_mut(c);
    let Ok(table) = guest_range(iovs, iovs_len.wrapping_mul(8), data.len()) else {
        return Ok(ERRNO_FAULT);
    };
    let mut done = 0u32;
    for iov in data[table].chunks_exact(8) {
        let word = |i: usize| i32::from_le_bytes([iov[i], iov[i + 1], iov[i + 2], iov[i + 3]]);
        let Ok(buf) = guest_range(word(0), word(4), data.len()) else {
            return Ok(ERRNO_FAULT);
        };
        // stdin is empty: a read takes nothing. A write is wholly "written" even past the
        // log's cap, so the guest never spins retrying.
        if dir == Stdio::Write {
            state.logs.append(&[&data[buf.clone()]]);
            done = done.saturating_add(buf.len() as u32);
        }
    }
    let Ok(out) = guest_range(done_ptr, 4, data.len()) else {
        return Ok(ERRNO_FAULT);
    };
    data[out].copy_from_slice(&done.to_le_bytes());
    Ok(ERRNO_SUCCESS)
}

/// Fills the guest's buffer from the task's randomness a chunk at a time, checking its clock
/// between chunks: wasi-common's fills all of it in one call (up to 4 GiB), however long
/// that runs past the task's deadline.
fn random_get(c: &mut Caller<'_, TaskState>, buf: i32, len: i32) -> wasmtime::Result<i32> {
    const CHUNK: usize = 1 << 20;
    let Some(memory) = c.data().memory else {
        return Ok(ERRNO_FAULT);
    };
    let (data, state) = memory.data_and_store_mut(c);
    let Ok(range) = guest_range(buf, len, data.len()) else {
        return Ok(ERRNO_FAULT);
    };
    let mut random = state
        .wasi
        .random
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for chunk in data[range].chunks_mut(CHUNK) {
        state.clock.check().map_err(wasmtime::Error::new)?;
        let Ok(()) = wasi_common::TryRng::try_fill_bytes(&mut *random, chunk);
    }
    Ok(ERRNO_SUCCESS)
}

/// A fresh, empty WASI context for one task.
///
/// With `seed` (a deterministic task's), randomness and clocks are the same on every node.
pub(crate) fn task_ctx(
    logs: &LogSink,
    deadline: Instant,
    timeout: Duration,
    seed: Option<[u8; 32]>,
) -> WasiCtx {
    let sched = Box::new(DeadlineSched { deadline, timeout });
    let ctx = match seed {
        None => WasiCtx::new(random_ctx(), clocks_ctx(), sched, Table::new()),
        Some(seed) => {
            let clocks = WasiClocks {
                system: Some(Box::new(VirtualClock::default())),
                monotonic: Some(WasiMonotonicOffsetClock::new(VirtualClock::default())),
            };
            let random = SeededRandom(blake3::Hasher::new_keyed(&seed).finalize_xof());
            WasiCtx::new(Box::new(random), clocks, sched, Table::new())
        }
    };
    // `WasiCtx::new` already gave it an empty stdin (`ReadPipe` of `io::empty`); setting it
    // again cost every task one more table entry made and dropped.
    ctx.set_stdout(Box::new(WritePipe::new(StdStream(logs.clone()))));
    ctx.set_stderr(Box::new(WritePipe::new(StdStream(logs.clone()))));
    ctx
}

/// A deterministic task's randomness: blake3's output stream, keyed by the spec.
struct SeededRandom(blake3::OutputReader);

impl wasi_common::TryRng for SeededRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut word = [0; 4];
        self.0.fill(&mut word);
        Ok(u32::from_le_bytes(word))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut word = [0; 8];
        self.0.fill(&mut word);
        Ok(u64::from_le_bytes(word))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill(dst);
        Ok(())
    }
}

/// A deterministic task's clocks: the count of its readings, in microseconds, from a fixed
/// start (the Unix epoch for the wall clock; any instant for the monotonic one, which is read
/// as an offset from its first reading).
#[derive(Default)]
struct VirtualClock(AtomicU64);

impl VirtualClock {
    fn tick(&self) -> Duration {
        Duration::from_micros(self.0.fetch_add(1, Ordering::Relaxed))
    }
}

impl WasiMonotonicClock for VirtualClock {
    fn resolution(&self) -> Duration {
        Duration::from_micros(1)
    }

    fn now(&self, _: Duration) -> cap_std::time::Instant {
        static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
        cap_std::time::Instant::from_std(*START + self.tick())
    }
}

impl WasiSystemClock for VirtualClock {
    fn resolution(&self) -> Duration {
        Duration::from_micros(1)
    }

    fn now(&self, _: Duration) -> cap_std::time::SystemTime {
        cap_std::time::SystemTime::from_std(std::time::UNIX_EPOCH + self.tick())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// stdin (the empty pipe `WasiCtx::new` gives), stdout and stderr, and nothing else.
    #[test]
    fn a_task_has_stdio_and_nothing_else() {
        let logs = LogSink::new(64);
        let ctx = task_ctx(&logs, Instant::now(), Duration::from_secs(1), None);
        for fd in 0..=2 {
            assert!(ctx.table().contains_key(fd), "fd {fd}");
        }
        assert!(!ctx.table().contains_key(3));
    }
}
