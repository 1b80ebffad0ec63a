//! What one op may spend, and what its worker threads have spent: a task's limits carried
//! across the host boundary into the compute backends.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use super::ComputeError;

/// The wall deadline and CPU allowance one op runs under, and the CPU charged to it so far.
///
/// A task makes one per op from its own clock. The cpu backend's worker threads charge their
/// CPU time to it and check it before every block of work, so an op whose task runs out of
/// time or CPU stops within one block, and the task is charged for every thread that worked
/// for it. CPU used on the calling thread is not charged here: that thread's clock counts it.
#[derive(Debug)]
pub struct OpBudget {
    deadline: Option<Instant>,
    cpu_allowance: Duration,
    cpu_nanos: AtomicU64,
}

/// Why an op stopped before it finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overrun {
    /// The task's wall-time deadline passed.
    Deadline,
    /// The op's threads used more CPU than the task had left.
    Cpu,
}

impl fmt::Display for Overrun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Deadline => "the task's wall-time deadline passed",
            Self::Cpu => "the task's CPU budget ran out",
        })
    }
}

impl OpBudget {
    /// An op that must end by `deadline` and may use `cpu_allowance` of CPU on other threads.
    pub fn new(deadline: Instant, cpu_allowance: Duration) -> Self {
        Self {
            deadline: Some(deadline),
            cpu_allowance,
            cpu_nanos: AtomicU64::new(0),
        }
    }

    /// No deadline and no CPU limit, for callers outside a task (tests, benches, tools).
    pub fn unlimited() -> Self {
        Self {
            deadline: None,
            cpu_allowance: Duration::MAX,
            cpu_nanos: AtomicU64::new(0),
        }
    }

    /// The time left before the deadline: `None` without one, zero once it has passed.
    pub(super) fn time_left(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The CPU time charged so far by threads other than the caller's.
    pub fn cpu(&self) -> Duration {
        Duration::from_nanos(self.cpu_nanos.load(Ordering::Relaxed))
    }

    /// Adds CPU time a worker thread spent on the op.
    pub(super) fn charge(&self, cpu: Duration) {
        let nanos = u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX);
        self.cpu_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Whether the op may go on.
    ///
    /// # Errors
    ///
    /// [`ComputeError::Cancelled`] once the deadline has passed or the charged CPU exceeds
    /// the allowance.
    pub fn check(&self) -> Result<(), ComputeError> {
        let overrun = if self.deadline.is_some_and(|d| Instant::now() >= d) {
            Overrun::Deadline
        } else if self.cpu() > self.cpu_allowance {
            Overrun::Cpu
        } else {
            return Ok(());
        };
        Err(ComputeError::Cancelled { overrun })
    }
}

/// CPU time consumed by the calling thread (0 if the clock cannot be read): the one clock
/// that task CPU budgets and op budgets both read.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id is a constant libc knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
