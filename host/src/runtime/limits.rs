//! Per-task limits and their enforcement: memory through a `ResourceLimiter`, wall time and
//! CPU time through epoch callbacks and checks at every host call.

use std::time::{Duration, Instant};

use crate::compute::thread_cpu_time;

/// 1 MiB.
pub const MIB: u64 = 1 << 20;
/// The most memory any task may be given (the pooling allocator reserves this per slot).
pub const MAX_TASK_MEMORY: u64 = 4096 * MIB;
/// The longest wall-time limit or CPU budget any task gets: far below where a deadline
/// (`Instant` + limit) would overflow.
pub const MAX_TASK_TIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often the node's epoch ticks; the granularity of time limits.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The limits one task runs under.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Linear memory cap in bytes.
    pub memory_bytes: u64,
    /// Wall-clock limit, inside wasm and inside host calls alike.
    pub timeout: Duration,
    /// CPU time the task's thread may use.
    pub cpu_budget: Duration,
    /// Bytes of logs (log calls, stdout, stderr) kept.
    pub log_bytes: usize,
    /// Total bytes of outputs the task may write.
    pub output_bytes: u64,
    /// Number of outputs the task may write.
    pub outputs: usize,
    /// Bytes of tensors the task may hold on the compute device at once.
    pub tensor_bytes: u64,
}

/// Host memory a task may cost beyond its linear memory and tensors: logs, the chunk it is
/// reading and writing, its WASI state, and compiling its module (within the compile bounds,
/// the largest measured compile peak; see `SECURITY.md`).
pub const HOST_ALLOWANCE: u64 = 128 * MIB;

impl Limits {
    /// The host memory this task may cost the node, the term it is admitted against in the
    /// node's `--memory-budget`: its linear memory, plus its tensors (host memory on the cpu
    /// backend; counted on the gpu backend too, since tensors are staged through host
    /// buffers), plus [`HOST_ALLOWANCE`].
    #[must_use]
    pub fn host_bytes(&self) -> u64 {
        let applied = self.applied();
        applied
            .memory_bytes
            .saturating_add(applied.tensor_bytes)
            .saturating_add(HOST_ALLOWANCE)
    }

    /// The limits a task really gets: a spec may ask for more than the runtime's ceilings,
    /// but no task gets more. Past 4 GiB the pool refuses the growth itself, which would end
    /// the task as a bare trap, not as out of memory; past [`MAX_TASK_TIME`] a deadline could
    /// overflow.
    #[must_use]
    pub fn applied(&self) -> Self {
        Self {
            memory_bytes: self.memory_bytes.min(MAX_TASK_MEMORY),
            timeout: self.timeout.min(MAX_TASK_TIME),
            cpu_budget: self.cpu_budget.min(MAX_TASK_TIME),
            ..self.clone()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 256 * MIB,
            timeout: Duration::from_secs(60),
            cpu_budget: Duration::from_secs(60),
            log_bytes: 256 * 1024,
            output_bytes: 1024 * MIB,
            outputs: 1024,
            tensor_bytes: 1024 * MIB,
        }
    }
}

/// Why the host stopped a task. Carried inside wasmtime's trap error and recovered when the
/// task's result is classified.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub(crate) enum Kill {
    #[error("task exceeded its {} wall-time limit", fmt_duration(*.0))]
    Timeout(Duration),
    #[error("task exceeded its {} CPU budget", fmt_duration(*.0))]
    CpuBudget(Duration),
}

/// Formats durations the way limits are written on the command line.
pub fn fmt_duration(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Formats a byte count in the largest whole unit.
pub fn fmt_bytes(bytes: u64) -> String {
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

/// How stale the last reading of the task thread's CPU clock may get before a check reads it
/// again, even while the budget is far away.
const CPU_READ_INTERVAL: Duration = Duration::from_millis(10);

/// How recent this thread's last CPU clock reading must be for a task starting on it to take
/// it as its own starting point instead of reading the clock again (see [`TaskClock::start`]).
const START_READING_AGE: Duration = Duration::from_micros(50);

thread_local! {
    /// This thread's last CPU clock reading, and when it was taken.
    static LAST_CPU_READING: std::cell::Cell<Option<(Instant, Duration)>> =
        const { std::cell::Cell::new(None) };
}

/// Reads this thread's CPU clock, remembering the reading for the next task's start.
fn read_thread_cpu() -> (Instant, Duration) {
    let reading = (Instant::now(), thread_cpu_time());
    LAST_CPU_READING.set(Some(reading));
    reading
}

/// The task's clocks: wall deadline, and the CPU budget of its own thread plus every other
/// thread that worked for it (the compiler, tensor kernels), charged with [`TaskClock::charge`].
///
/// Checks run on every host call, and reading a thread's CPU clock is a system call (about
/// 1 µs in a VM, several per tensor op), so a check bounds the CPU used instead where it can:
/// one thread's CPU time grows no faster than wall time, so `used ≤ last reading + wall time
/// since it`. Only when that bound could pass the budget, or the reading is older than
/// [`CPU_READ_INTERVAL`], is the clock read again. The budget holds exactly as before.
///
/// A task starts from its thread's last reading when that is under [`START_READING_AGE`] old
/// (the previous task's closing one, on a busy slot), so back-to-back tasks cost one read each
/// instead of two. The task is then charged the thread's CPU since that reading too, at most
/// 50 µs of the slot's own bookkeeping: more than it used, never less, so the budget still
/// holds.
#[derive(Debug, Clone)]
pub(crate) struct TaskClock {
    pub(crate) started: Instant,
    pub(crate) deadline: Instant,
    pub(crate) timeout: Duration,
    pub(crate) cpu_started: Duration,
    pub(crate) cpu_budget: Duration,
    /// CPU spent for the task on threads other than its own.
    pub(crate) charged: Duration,
    /// The last reading of the thread's CPU clock (as used since start) and when it was taken.
    last_read: std::cell::Cell<(Instant, Duration)>,
}

impl TaskClock {
    pub(crate) fn start(limits: &Limits) -> Self {
        let started = Instant::now();
        let (read_at, cpu_started) = match LAST_CPU_READING.get() {
            Some((at, cpu)) if started.saturating_duration_since(at) < START_READING_AGE => {
                (at, cpu)
            }
            _ => read_thread_cpu(),
        };
        Self {
            started,
            deadline: started + limits.timeout,
            timeout: limits.timeout,
            cpu_started,
            cpu_budget: limits.cpu_budget,
            charged: Duration::ZERO,
            last_read: std::cell::Cell::new((read_at, Duration::ZERO)),
        }
    }

    /// Charges CPU time that another thread spent working for this task.
    pub(crate) fn charge(&mut self, cpu: Duration) {
        self.charged = self.charged.saturating_add(cpu);
    }

    /// CPU the task may still use before its budget runs out (at least; see the type's docs).
    pub(crate) fn cpu_left(&self) -> Duration {
        self.cpu_budget
            .saturating_sub(self.cpu_used_at_most(Instant::now()))
    }

    /// Errs once the task is past its wall-time limit or CPU budget.
    pub(crate) fn check(&self) -> Result<(), Kill> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(Kill::Timeout(self.timeout));
        }
        if self.cpu_used_at_most(now) > self.cpu_budget {
            return Err(Kill::CpuBudget(self.cpu_budget));
        }
        Ok(())
    }

    /// CPU used by the task's own thread since it started, plus what was charged to it.
    pub(crate) fn cpu_used(&self) -> Duration {
        let (at, cpu) = read_thread_cpu();
        let own = cpu.saturating_sub(self.cpu_started);
        self.last_read.set((at, own));
        own.saturating_add(self.charged)
    }

    /// An upper bound of [`TaskClock::cpu_used`] at `now`, exact when it matters: the clock is
    /// read when the bound could pass the budget or the last reading is stale.
    fn cpu_used_at_most(&self, now: Instant) -> Duration {
        let (read_at, own) = self.last_read.get();
        let since = now.saturating_duration_since(read_at);
        let bound = own.saturating_add(since).saturating_add(self.charged);
        if since < CPU_READ_INTERVAL && bound <= self.cpu_budget {
            return bound;
        }
        self.cpu_used()
    }
}

/// Enforces the memory cap and remembers the peak and any refusal, so that an allocation
/// failure inside the guest is reported as "exceeded its N MiB memory limit".
#[derive(Debug)]
pub(crate) struct TaskLimiter {
    pub(crate) memory_limit: usize,
    pub(crate) peak_memory: usize,
    /// The size asked for by refused growths since the last one that succeeded.
    pub(crate) refused: Option<usize>,
}

impl TaskLimiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        // The runtime hands every task its applied limits; clamp again so no caller can
        // build a limiter past the pool's ceiling.
        let memory_bytes = limits.memory_bytes.min(MAX_TASK_MEMORY);
        Self {
            memory_limit: usize::try_from(memory_bytes).unwrap_or(usize::MAX),
            peak_memory: 0,
            refused: None,
        }
    }
}

/// The most elements a task's table may hold (the pool reserves room for this many).
pub(crate) const MAX_TABLE_ELEMENTS: usize = 100_000;

impl wasmtime::ResourceLimiter for TaskLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            // Refuse, not trap: memory.grow returns -1 and a careful guest can recover.
            self.refused = Some(self.refused.map_or(desired, |r| r.max(desired)));
            return Ok(false);
        }
        self.peak_memory = self.peak_memory.max(desired);
        // A later growth that fits means the task recovered from any earlier refusal.
        self.refused = None;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }
}

/// The node's default memory budget: three quarters of the machine's memory, or of the
/// cgroup's limit where that is lower, leaving the rest to the node itself (the store, the
/// network, the module cache) and to the machine's other work.
pub fn default_memory_budget() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(4096 * MIB);
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|max| max.trim().parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    total.min(cgroup) / 4 * 3
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task starting right after another on its thread starts from that one's closing
    /// reading (one clock read instead of two); after a pause it reads the clock afresh.
    #[test]
    fn a_task_starts_from_a_fresh_reading_only() {
        let limits = Limits::default();
        let first = TaskClock::start(&limits);
        let _ = first.cpu_used();
        let (at, closing) = LAST_CPU_READING.get().expect("a reading");
        let next = TaskClock::start(&limits);
        if next.started.saturating_duration_since(at) < START_READING_AGE {
            assert_eq!(next.cpu_started, closing);
        }
        std::thread::sleep(START_READING_AGE * 2);
        let later = TaskClock::start(&limits);
        let (at, _) = LAST_CPU_READING.get().expect("a reading");
        assert!(at >= later.started, "read afresh after a pause");
        assert!(later.cpu_used() <= Duration::from_millis(50));
    }

    /// The bound saves clock reads but never lets a task run past its budget: a busy loop
    /// that checks as often as host calls do is stopped as soon as it really has used the
    /// budget, and not before.
    #[test]
    fn the_cpu_budget_holds_exactly_with_a_bounded_clock() {
        let budget = Duration::from_millis(30);
        let limits = Limits {
            cpu_budget: budget,
            timeout: Duration::from_secs(10),
            ..Limits::default()
        };
        let clock = TaskClock::start(&limits);
        let mut x = 0u64;
        while clock.check().is_ok() {
            for i in 0..1000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        let used = clock.cpu_used();
        assert!(
            used > budget,
            "stopped at {used:?}, before the {budget:?} budget"
        );
        assert!(
            used < budget + CPU_READ_INTERVAL,
            "ran on to {used:?} past the {budget:?} budget"
        );
    }
}
