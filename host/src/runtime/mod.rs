//! The sandbox: one wasmtime `Engine` per node, one `Store` per task, and the `shoal_v1` host
//! ABI. This module knows nothing of the network; data comes from the [`BlockStore`].

mod compile;
mod host_fns;
pub mod limits;
mod logs;
mod queue;
mod subtasks;
mod tensor_fns;
mod wasi;

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use wasmtime::{
    CallHook, Config, Enabled, Engine, InstanceAllocationStrategy, InstancePre, Linker, Memory,
    Module, ModuleExport, PoolingAllocationConfig, Store, Trap, UpdateDeadline,
};

pub use self::{
    compile::{
        MAX_BODY_BYTES, MAX_CODE_BYTES, MAX_FUNCTIONS, MAX_LOCALS, MAX_MODULE_LEN, MAX_NESTING,
        MAX_SECTION_ENTRIES, MODULE_CACHE_BYTES,
    },
    limits::{HOST_ALLOWANCE, Limits, MAX_TASK_MEMORY, MAX_TASK_TIME, MIB, default_memory_budget},
    logs::Logs,
    queue::{MAX_QUEUED, MAX_QUEUED_PER_TENANT, QueueFull},
    subtasks::Mesh,
};
use self::{
    limits::{Kill, TaskClock, TaskLimiter, fmt_bytes},
    logs::LogSink,
    queue::{Admission, FairQueue, Place},
};
use crate::{
    compute::{DeviceChoice, TensorTable},
    store::{BlockStore, Cid, Manifest},
};

/// The most slots a runtime runs: each is a thread, and the instance pool holds two
/// memories' worth of address space per slot.
pub const MAX_SLOTS: usize = 256;
/// The node's own tasks that may wait (for memory or a slot) before further ones wait to be
/// queued: other tenants' tasks are refused past their bounds instead ([`QueueFull`]).
const OWN_QUEUE_LEN: usize = MAX_QUEUED_PER_TENANT;

/// A task for a slot thread, where its progress records go, and where its report goes.
struct Job {
    spec: TaskSpec,
    progress: Option<Progress>,
    reply: tokio::sync::oneshot::Sender<TaskReport>,
    /// Its place in its tenant's queue bound, given back when a slot takes it.
    place: Place,
    /// For the node's own tasks, their room in [`OWN_QUEUE_LEN`], likewise.
    own_room: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The MiB of the memory budget it holds while it runs, taken when a slot takes it.
    needs: u32,
}

/// Where a running task's progress records go (`shoal_v1::progress`), each at most
/// [`shoal::abi::MAX_PROGRESS_LEN`] bytes. Called on the task's slot thread: it must hand the
/// record on and return, never wait.
pub type Progress = Arc<dyn Fn(Vec<u8>) + Send + Sync>;

/// How the node's runtime is set up.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Tasks that may run at once.
    pub slots: usize,
    /// The deepest wasm stack a task may use, in bytes.
    pub max_wasm_stack: usize,
    /// Where tasks' tensor math runs (`--device`). The backend is made on the first tensor
    /// call of any task, then shared by all.
    pub device: DeviceChoice,
    /// Whether `device: Gpu` may take a software adapter (llvmpipe, lavapipe), as tests do.
    pub allow_software_gpu: bool,
    /// Host memory the node's running tasks may cost together (`--memory-budget`), each
    /// counted as [`Limits::host_bytes`]. A task waits for room; one that could never fit is
    /// refused.
    pub memory_budget: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            slots: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_wasm_stack: 512 * 1024,
            device: DeviceChoice::Auto,
            allow_software_gpu: false,
            memory_budget: limits::default_memory_budget(),
        }
    }
}

/// One task to run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskSpec {
    /// The module, a file in the store.
    pub module: Cid,
    /// The task entry to call; `None` picks the module's only task.
    pub task: Option<String>,
    /// Named inputs, files in the store.
    pub inputs: Vec<(String, Cid)>,
    /// Key/value arguments.
    pub args: Vec<(String, String)>,
    /// The limits it runs under.
    pub limits: Limits,
    /// How deep in a tree of subtasks it is: 0 for a task a user submitted.
    #[serde(default)]
    pub depth: u32,
    /// Run its tensor math on the node's [`DeterministicCpuBackend`](crate::compute::DeterministicCpuBackend)
    /// whatever the node's `--device`, so that its outputs are the same bytes on every honest
    /// node (verified runs compare them). Its subtasks inherit it.
    #[serde(default)]
    pub deterministic: bool,
    /// The tenant it runs for when that is not this node, as the peer that sent it proved
    /// it: opaque here (`sched` encodes the credential whose chain ends at this node), and inherited
    /// by its subtasks, which are then submitted in that tenant's name. `None`: this node's
    /// own task.
    #[serde(default)]
    pub tenant: Option<Vec<u8>>,
}

impl TaskSpec {
    /// The module's only task, with no inputs or arguments, default limits, on this node's
    /// own account.
    pub fn new(module: Cid) -> Self {
        Self {
            module,
            task: None,
            inputs: Vec::new(),
            args: Vec::new(),
            limits: Limits::default(),
            depth: 0,
            deterministic: false,
            tenant: None,
        }
    }
}

/// How a task failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum FailureKind {
    /// The task trapped (a wasm trap, a stack overflow, a panic in the guest).
    Trap,
    /// The task exceeded its memory limit.
    OutOfMemory,
    /// The task exceeded its wall-time limit or CPU budget.
    Timeout,
    /// The module is not valid wasm, imports what we do not offer, or lacks the task.
    BadModule,
    /// The task's inputs are missing or unreadable.
    BadInput,
    /// The task asked for something it may not have.
    Denied,
    /// The task's own code returned an error.
    TaskError,
    /// The node running it was lost.
    Lost,
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A typed task failure with a human-readable reason.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct TaskFailure {
    /// The class of failure.
    pub kind: FailureKind,
    /// What happened, naming the limit where one was hit.
    pub message: String,
}

impl TaskFailure {
    /// A failure of this kind, saying what happened.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Measurements of one task run.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskStats {
    /// Wall time from start to end, compilation included.
    pub wall: Duration,
    /// CPU time of the task's thread.
    pub cpu: Duration,
    /// Largest linear memory the task had, in bytes.
    pub peak_memory: u64,
    /// Whether the module came from the compiled-module cache.
    pub cached_module: bool,
    /// The compute backend's name, if the task used tensors.
    pub backend: Option<String>,
    /// The limits it ran under, as applied (clamped to the runtime's ceilings).
    #[serde(default)]
    pub limits: Limits,
    /// The peer id of the node that ran it, filled in by the node (the runtime has no
    /// identity of its own); remote reports carry the executor's word for it.
    #[serde(default)]
    pub executed_by: Option<String>,
    /// Time the node spent fetching the module and inputs before the run (filled in by the
    /// node that ran it).
    #[serde(default)]
    pub fetch: Duration,
}

/// Everything a task run produced.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TaskReport {
    /// The named output files, or why it failed.
    pub result: Result<Vec<(String, Cid)>, TaskFailure>,
    /// Captured logs.
    pub logs: Logs,
    /// Measurements.
    pub stats: TaskStats,
}

impl TaskReport {
    /// A task that failed before it ran.
    pub fn failed(failure: TaskFailure) -> Self {
        Self {
            result: Err(failure),
            logs: Logs::default(),
            stats: TaskStats::default(),
        }
    }

    /// A task the node could not run to an end of its own.
    pub fn lost(why: String) -> Self {
        Self::failed(TaskFailure::new(FailureKind::Lost, why))
    }
}

/// How a slot thread runs one task: [`Runtime::run_reporting_blocking`], or a stand-in in
/// tests.
type Runner = fn(&Runtime, &TaskSpec, Option<Progress>) -> TaskReport;

/// Slots lent at once by tasks blocked in `subtask_wait`, node-wide. Past it a waiting task
/// keeps its slot (the instance pool holds room for this many blocked tasks).
const MAX_LENT_SLOTS: usize = 32;
static LENT_SLOTS: AtomicUsize = AtomicUsize::new(0);

/// What a slot thread serves: the queue, for one slot of one runtime.
#[derive(Clone)]
struct SlotRole {
    slot: usize,
    inner: std::sync::Weak<Inner>,
    jobs: Arc<FairQueue<Job>>,
    run: Runner,
}

thread_local! {
    /// The slot this thread serves, until it lends it away.
    static SLOT: std::cell::RefCell<Option<SlotRole>> = const { std::cell::RefCell::new(None) };
}

fn spawn_slot(role: SlotRole) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("shoal-slot-{}", role.slot))
        .spawn(move || serve_slot(role))
        .map(|_| ())
}

/// A slot thread's life: run jobs until the runtime is gone, or, once this thread has lent
/// its slot to another (its task blocked on subtasks), until its current task ends.
fn serve_slot(role: SlotRole) {
    let _slot = tracing::info_span!("slot", slot = role.slot).entered();
    let (jobs, weak, run) = (role.jobs.clone(), role.inner.clone(), role.run);
    SLOT.with(|s| *s.borrow_mut() = Some(role));
    loop {
        let (Some(job), Some(inner)) = (jobs.pop(), weak.upgrade()) else {
            return;
        };
        let Job {
            spec,
            progress,
            reply,
            place,
            own_room,
            needs,
        } = job;
        // No longer waiting: its tenant may queue another.
        drop((place, own_room));
        // The memory budget is taken here, in the fair queue's order, and held until the
        // report is back: taken before queueing, a flooding tenant's queued tasks would hold
        // it, and another tenant's task would wait behind them for memory, first come first
        // served. A slot waits here only while running tasks hold the budget.
        let budget = inner.budget.clone();
        let Ok(_budget) = futures::executor::block_on(budget.acquire_many_owned(needs)) else {
            inner.queued.fetch_sub(1, Ordering::Relaxed);
            let _ = reply.send(TaskReport::lost("the runtime is shutting down".into()));
            continue;
        };
        let runtime = Runtime { inner };
        runtime.inner.queued.fetch_sub(1, Ordering::Relaxed);
        runtime.inner.busy.fetch_add(1, Ordering::Relaxed);
        // A host bug must cost one task, not the slot: the panic becomes this task's failure
        // and the thread goes on serving the queue.
        let report = catch_unwind(AssertUnwindSafe(|| run(&runtime, &spec, progress)))
            .unwrap_or_else(|panic| {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(%why, "host panicked running a task");
                TaskReport::lost(format!(
                    "the host failed running this task ({why}); its slot was kept"
                ))
            });
        // Counted down before the reply goes, so whoever gets it sees the slot free.
        let lent = SLOT.with(|s| s.borrow().is_none());
        if lent {
            // The busy count was given back when the slot was lent.
            LENT_SLOTS.fetch_sub(1, Ordering::Relaxed);
        } else {
            runtime.inner.busy.fetch_sub(1, Ordering::Relaxed);
        }
        let _ = reply.send(report);
        if lent {
            return;
        }
    }
}

/// Called by a task about to block on its subtasks: a new thread takes this thread's slot,
/// so the node keeps running as many tasks as it has slots (Ray frees the CPU of a task
/// blocked in `ray.get` the same way). This thread finishes its task and then ends. A no-op
/// off a slot thread, or once [`MAX_LENT_SLOTS`] are lent.
pub(crate) fn lend_slot() {
    let Some(role) = SLOT.with(|s| s.borrow().clone()) else {
        return;
    };
    if LENT_SLOTS.fetch_add(1, Ordering::Relaxed) >= MAX_LENT_SLOTS {
        LENT_SLOTS.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let inner = role.inner.upgrade();
    if spawn_slot(role).is_err() {
        LENT_SLOTS.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    SLOT.with(|s| *s.borrow_mut() = None);
    if let Some(inner) = inner {
        inner.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Errors building the runtime itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// wasmtime refused the configuration.
    #[error("cannot set up the wasm engine: {0}")]
    Engine(String),
}

/// The wasmtime configuration of a runtime with `slots` slots: the pooling allocator sized for
/// them, epoch interruption, compilation on the calling thread. Public so that the runtime
/// bench's bare-wasmtime reference runs on the same engine.
pub fn engine_config(slots: usize, max_wasm_stack: usize) -> Config {
    let mut pool = PoolingAllocationConfig::default();
    // Room for every slot plus a few instantiations racing a finishing task.
    // Tasks blocked on their subtasks keep their instances while lending their slots.
    let pooled = u32::try_from((slots + MAX_LENT_SLOTS) * 2 + 2).unwrap_or(u32::MAX);
    pool.total_core_instances(pooled)
        .total_memories(pooled)
        .total_tables(pooled);
    pool.max_memory_size(MAX_TASK_MEMORY as usize)
        .table_elements(limits::MAX_TABLE_ELEMENTS);
    // Reset a task's memory with memset instead of madvise + page faults, up to 16 MiB:
    // a page fault costs ~4 µs in a VM (16 ms for 16 MiB) where memset costs ~1.5 ms. The
    // pool holds `pooled` memories, so this keeps at most `pooled` x 16 MiB resident.
    pool.linear_memory_keep_resident(16 << 20)
        .table_keep_resident(64 << 10)
        // Where Linux has `PAGEMAP_SCAN` (6.7+), reset only the pages the task wrote
        // instead of memsetting the first 16 MiB of every memory: a noop task writes a
        // few pages of a 1 MiB memory, and the memset was half its cost. Every written
        // page is still reset (or decommitted past the 16 MiB), so no task sees another's
        // memory; elsewhere wasmtime falls back to the memset.
        .pagemap_scan(Enabled::Auto);
    let mut cfg = Config::new();
    // Relaxed SIMD gives the same bits on every CPU (FMA or not): deterministic tasks are
    // compared across nodes.
    cfg.relaxed_simd_deterministic(true);
    cfg.epoch_interruption(true)
        // Compile on the task's own slot thread, so its CPU is the task's (see `compile`).
        .parallel_compilation(false)
        .max_wasm_stack(max_wasm_stack)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    cfg
}

/// A compiled module, ready to instantiate, with the tasks it exports. Exports are looked up
/// by name once, here, not for every task.
struct Compiled {
    pre: InstancePre<TaskState>,
    /// Each task's name (without [`shoal::abi::TASK_EXPORT_PREFIX`]) and its export.
    tasks: Vec<(String, ModuleExport)>,
    initialize: Option<ModuleExport>,
    memory: Option<ModuleExport>,
}

/// An input file as the task sees it.
struct Input {
    name: String,
    cid: Cid,
    manifest: Manifest,
}

/// Chunks a task keeps once read, whichever inputs they belong to: enough that small reads
/// going through a few inputs at once do not re-read and re-verify a chunk each time, and
/// bounded per task, however many inputs it names.
const CACHED_CHUNKS: usize = 4;

/// The chunks a task read last, by (input, chunk index), the most recent first.
#[derive(Default)]
struct ChunkCache(std::collections::VecDeque<((usize, usize), Vec<u8>)>);

impl ChunkCache {
    /// Chunk `key`'s bytes, from the cache or from `read`, which then takes the place of the
    /// chunk used longest ago.
    fn get_or_read<E>(
        &mut self,
        key: (usize, usize),
        read: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<&[u8], E> {
        match self.0.iter().position(|(k, _)| *k == key) {
            Some(at) => {
                if let Some(entry) = self.0.remove(at) {
                    self.0.push_front(entry);
                }
            }
            None => {
                let bytes = read()?;
                self.0.truncate(CACHED_CHUNKS - 1);
                self.0.push_front((key, bytes));
            }
        }
        Ok(self.0.front().map_or(&[][..], |(_, bytes)| bytes))
    }
}

/// Per-task state inside the wasmtime `Store`.
pub(crate) struct TaskState {
    wasi: wasi_common::WasiCtx,
    limiter: TaskLimiter,
    clock: TaskClock,
    memory: Option<Memory>,
    store: Arc<BlockStore>,
    inputs: Vec<Input>,
    chunks: ChunkCache,
    args: Vec<u8>,
    outputs: Vec<(String, Cid)>,
    output_bytes: u64,
    limits: Limits,
    logs: LogSink,
    error_message: Option<String>,
    /// The node's compute backend, made on first use.
    compute: Arc<tensor_fns::LazyBackend>,
    /// The task's tensors, made on its first tensor call; dropped (freeing device memory)
    /// with the task's `Store`.
    tensors: Option<TensorTable>,
    /// Its subtasks, objects, and what it may read.
    subtasks: subtasks::Subtasks,
    /// Where its progress records go; `None` drops them.
    progress: Option<Progress>,
}

/// The node's sandbox: compiles, caches and runs task modules.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<TaskState>,
    modules: Mutex<compile::ModuleCache<Compiled>>,
    store: Arc<BlockStore>,
    /// Jobs for the slot threads, one queue per tenant served in turn.
    jobs: Arc<FairQueue<Job>>,
    /// What each tenant has waiting, bounded so a flood is refused instead of piling up.
    admission: Arc<Admission>,
    /// Room for the node's own waiting tasks (see [`OWN_QUEUE_LEN`]).
    own_room: Arc<tokio::sync::Semaphore>,
    slot_count: usize,
    busy: AtomicUsize,
    queued: AtomicUsize,
    max_wasm_stack: usize,
    /// The node's memory budget, in MiB permits; a task holds its `host_bytes` while it runs.
    budget: Arc<tokio::sync::Semaphore>,
    budget_mib: u32,
    ticker_stop: Arc<AtomicBool>,
    /// The compute backend, shared by every task; made lazily (see `tensor_fns`).
    compute: Arc<tensor_fns::LazyBackend>,
    /// The deterministic cpu backend, for tasks that ask for it; made lazily too.
    deterministic: Arc<tensor_fns::LazyBackend>,
    /// Where subtasks go; set once by the node (`host run` has none).
    mesh: std::sync::OnceLock<Arc<dyn Mesh>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
        // The slot threads hold the runtime weakly and wait on the queue: closing it ends them.
        self.jobs.close();
    }
}

impl Runtime {
    /// Builds the engine (pooling allocator, epoch interruption), links `shoal_v1` and WASI,
    /// and starts the epoch ticker.
    ///
    /// # Errors
    /// [`RuntimeError::Engine`] if wasmtime rejects the configuration (for example when the
    /// machine cannot reserve the pool's address space).
    pub fn new(store: Arc<BlockStore>, config: RuntimeConfig) -> Result<Self, RuntimeError> {
        Self::with_runner(store, config, Self::run_reporting_blocking)
    }

    fn with_runner(
        store: Arc<BlockStore>,
        config: RuntimeConfig,
        run: Runner,
    ) -> Result<Self, RuntimeError> {
        let slots = config.slots.clamp(1, MAX_SLOTS);
        let cfg = engine_config(slots, config.max_wasm_stack);
        let engine = Engine::new(&cfg).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasi::add_to_linker(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        host_fns::add_to_linker(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        subtasks::add_to_linker(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        tensor_fns::add_to_linker(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (ticking_engine, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("shoal-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(limits::EPOCH_TICK);
                    ticking_engine.increment_epoch();
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch ticker: {e}")))?;

        let budget_mib = u32::try_from(config.memory_budget / MIB).unwrap_or(u32::MAX);
        let jobs = Arc::new(FairQueue::default());
        let runtime = Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                modules: Mutex::default(),
                store,
                jobs: jobs.clone(),
                admission: Arc::default(),
                own_room: Arc::new(tokio::sync::Semaphore::new(OWN_QUEUE_LEN)),
                slot_count: slots,
                busy: AtomicUsize::new(0),
                queued: AtomicUsize::new(0),
                max_wasm_stack: config.max_wasm_stack,
                budget: Arc::new(tokio::sync::Semaphore::new(budget_mib as usize)),
                budget_mib,
                ticker_stop,
                compute: Arc::new(tensor_fns::LazyBackend::new(
                    config.device,
                    config.allow_software_gpu,
                )),
                deterministic: Arc::new(tensor_fns::LazyBackend::deterministic()),
                mesh: std::sync::OnceLock::new(),
            }),
        };
        runtime.start_slots(slots, &jobs, run)?;
        Ok(runtime)
    }

    /// One thread per slot takes jobs off the shared fair queue. The threads hold the runtime
    /// only weakly, so dropping the last `Runtime` closes the queue and ends them.
    fn start_slots(
        &self,
        slots: usize,
        jobs: &Arc<FairQueue<Job>>,
        run: Runner,
    ) -> Result<(), RuntimeError> {
        for slot in 0..slots {
            spawn_slot(SlotRole {
                slot,
                inner: Arc::downgrade(&self.inner),
                jobs: jobs.clone(),
                run,
            })
            .map_err(|e| RuntimeError::Engine(format!("cannot start slot thread: {e}")))?;
        }
        Ok(())
    }

    /// Lets subtasks reach the mesh (the node attaches its scheduler once it has one).
    pub fn attach_mesh(&self, mesh: Arc<dyn Mesh>) {
        // Set once: a second node cannot take over a runtime's subtasks.
        let _ = self.inner.mesh.set(mesh);
    }

    /// The block store tasks read from and write to.
    pub fn store(&self) -> &Arc<BlockStore> {
        &self.inner.store
    }

    /// How many tasks may run at once.
    pub fn slots(&self) -> usize {
        self.inner.slot_count
    }

    /// Slots not running a task right now.
    pub fn free_slots(&self) -> usize {
        self.inner
            .slot_count
            .saturating_sub(self.inner.busy.load(Ordering::Relaxed))
    }

    /// Tasks waiting for a slot.
    pub fn queue_len(&self) -> usize {
        self.inner.queued.load(Ordering::Relaxed)
    }

    /// Runs a task on a blocking thread once a slot is free. Tasks wait in one queue per
    /// tenant ([`TaskSpec::tenant`]), served in turn; see [`Runtime::run_for`].
    pub async fn run(&self, spec: TaskSpec) -> TaskReport {
        self.run_reporting(spec, None).await
    }

    /// [`Runtime::run`], handing the task's progress records to `progress` as it runs. The
    /// task queues as its [`TaskSpec::tenant`]'s (the node's own when `None`); a caller that
    /// knows the tenant's identity should name it with [`Runtime::run_for`], since the spec's
    /// opaque proof may differ between tasks of one tenant.
    pub async fn run_reporting(&self, spec: TaskSpec, progress: Option<Progress>) -> TaskReport {
        let tenant = spec.tenant.as_deref().map(|proof| {
            use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
            let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(proof);
            format!("(delegated, {hash:016x})")
        });
        self.run_for(tenant, spec, progress).await
    }

    /// [`Runtime::run_reporting`] in the queue of `tenant` (`None`: the node's own). Each
    /// tenant's tasks run in the order they came; tenants with tasks waiting take turns at
    /// the slots, one task each, so one tenant's backlog does not delay another's task.
    ///
    /// # Errors
    /// A report failed with [`FailureKind::Denied`] at once when `tenant` already has
    /// [`MAX_QUEUED_PER_TENANT`] tasks waiting here, or all tenants [`MAX_QUEUED`]. The
    /// node's own tasks are not refused: past [`MAX_QUEUED_PER_TENANT`] they wait for room.
    pub async fn run_for(
        &self,
        tenant: Option<String>,
        spec: TaskSpec,
        progress: Option<Progress>,
    ) -> TaskReport {
        let lost = TaskReport::lost;
        let needs = spec.limits.host_bytes().div_ceil(MIB);
        let budget = self.inner.budget_mib;
        let Some(needs) = u32::try_from(needs).ok().filter(|&n| n <= budget) else {
            return TaskReport::failed(TaskFailure::new(
                FailureKind::Denied,
                format!(
                    "the task may cost the host {} ({} memory + {} tensors + {} host \
                     allowance), over this node's {} memory budget",
                    fmt_bytes(needs * MIB),
                    fmt_bytes(spec.limits.applied().memory_bytes),
                    fmt_bytes(spec.limits.tensor_bytes),
                    fmt_bytes(HOST_ALLOWANCE),
                    fmt_bytes(u64::from(budget) * MIB)
                ),
            ));
        };
        // Counted from here until a slot takes it, waiting for memory included, so a tenant
        // past its bound is refused before it waits for anything.
        let own_room = match tenant {
            Some(_) => None,
            None => match self.inner.own_room.clone().acquire_owned().await {
                Ok(room) => Some(room),
                Err(_) => return lost("the runtime is shutting down".into()),
            },
        };
        let place = match self.inner.admission.admit(tenant.clone()) {
            Ok(place) => place,
            Err(full) => {
                return TaskReport::failed(TaskFailure::new(FailureKind::Denied, full.to_string()));
            }
        };
        let (reply, report) = tokio::sync::oneshot::channel();
        self.inner.queued.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            spec,
            progress,
            reply,
            place,
            own_room,
            needs,
        };
        if self.inner.jobs.push(tenant, job).is_err() {
            self.inner.queued.fetch_sub(1, Ordering::Relaxed);
            return lost("the runtime is shutting down".into());
        }
        report
            .await
            .unwrap_or_else(|_| lost("the task's slot thread died".into()))
    }

    /// Runs a task on the calling thread, ignoring slots. Never panics on guest input.
    pub fn run_blocking(&self, spec: &TaskSpec) -> TaskReport {
        self.run_reporting_blocking(spec, None)
    }

    /// [`Runtime::run_blocking`], handing the task's progress records to `progress`.
    pub fn run_reporting_blocking(
        &self,
        spec: &TaskSpec,
        progress: Option<Progress>,
    ) -> TaskReport {
        let _run = tracing::debug_span!("run", module = %spec.module).entered();
        let limits = spec.limits.applied();
        let logs = LogSink::new(limits.log_bytes);
        let mut clock = TaskClock::start(&limits);
        let mut stats = TaskStats::default();
        let result = self.execute(spec, progress, &limits, &logs, &mut clock, &mut stats);
        stats.limits = limits;
        stats.wall = clock.started.elapsed();
        stats.cpu = clock.cpu_used();
        TaskReport {
            result,
            logs: logs.finish(),
            stats,
        }
    }

    /// Runs `spec` under `limits`, the ones it really gets (`Limits::applied`).
    fn execute(
        &self,
        spec: &TaskSpec,
        progress: Option<Progress>,
        limits: &Limits,
        logs: &LogSink,
        clock: &mut TaskClock,
        stats: &mut TaskStats,
    ) -> Result<Vec<(String, Cid)>, TaskFailure> {
        if let Some(why) = shape_error(spec.inputs.len(), spec.args.len()) {
            return Err(TaskFailure::new(FailureKind::BadInput, why));
        }
        let (compiled, cached) = self.compiled(&spec.module)?;
        stats.cached_module = cached;
        // Compiling cannot be interrupted; what it cost still counts.
        clock
            .check()
            .map_err(|kill| TaskFailure::new(FailureKind::Timeout, kill.to_string()))?;
        let export = pick_task(&compiled.tasks, spec.task.as_deref())?;
        let inputs = self.open_inputs(&spec.inputs)?;

        let mut state = self.task_state(spec, limits, logs, clock.clone(), inputs);
        state.progress = progress;
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| match ctx.data().clock.check() {
            Ok(()) => Ok(UpdateDeadline::Continue(1)),
            Err(kill) => Err(wasmtime::Error::new(kill)),
        });
        // Epochs tick only inside wasm, so the clock is also checked as every host call
        // (`shoal_v1` and WASI alike) starts and as it returns: a task whose limit passed
        // during a call ends with Timeout even if the call then returned.
        store.call_hook(|ctx, hook| match hook {
            CallHook::CallingHost | CallHook::ReturningFromHost => {
                ctx.data().clock.check().map_err(wasmtime::Error::new)
            }
            CallHook::CallingWasm | CallHook::ReturningFromWasm => Ok(()),
        });

        let bad = |e: wasmtime::Error| TaskFailure::new(FailureKind::BadModule, first_line(&e));
        let instance = match compiled.pre.instantiate(&mut store) {
            Ok(instance) => instance,
            Err(e) => {
                return Err(match classify(e, store.data(), self.inner.max_wasm_stack) {
                    Err(f) if f.kind == FailureKind::Trap => TaskFailure::new(
                        FailureKind::BadModule,
                        format!("cannot instantiate the module: {}", f.message),
                    ),
                    other => other.err().unwrap_or_else(|| {
                        TaskFailure::new(FailureKind::BadModule, "exited during instantiation")
                    }),
                });
            }
        };
        let memory = compiled
            .memory
            .as_ref()
            .and_then(|m| instance.get_module_export(&mut store, m))
            .and_then(wasmtime::Extern::into_memory);
        store.data_mut().memory = memory;
        let func = |store: &mut Store<TaskState>, export: &ModuleExport, name: &str| {
            instance
                .get_module_export(&mut *store, export)
                .and_then(wasmtime::Extern::into_func)
                .ok_or_else(|| {
                    TaskFailure::new(FailureKind::BadModule, format!("{name} is not a function"))
                })
        };
        let entry = func(&mut store, export, "the task export")?
            .typed::<(), i32>(&store)
            .map_err(bad)?;
        let init = match &compiled.initialize {
            Some(export) => Some(
                func(&mut store, export, "`_initialize`")?
                    .typed::<(), ()>(&store)
                    .map_err(bad)?,
            ),
            None => None,
        };
        let outcome = match init.map(|f| f.call(&mut store, ())).transpose() {
            Ok(_) => entry.call(&mut store, ()),
            Err(e) => Err(e),
        };
        let state = store.data();
        // Hand back what host calls charged, so the report's CPU includes it.
        *clock = state.clock.clone();
        stats.peak_memory = state.limiter.peak_memory as u64;
        stats.backend = state
            .tensors
            .as_ref()
            .map(|t| t.backend().name().to_owned());
        match outcome {
            Ok(shoal::abi::TASK_OK) => Ok(state.outputs.clone()),
            Ok(status) => Err(TaskFailure::new(
                FailureKind::TaskError,
                state
                    .error_message
                    .clone()
                    .unwrap_or_else(|| format!("task returned status {status}")),
            )),
            Err(e) => classify(e, state, self.inner.max_wasm_stack).map(|()| state.outputs.clone()),
        }
    }

    /// A fresh task's state in its `Store`.
    fn task_state(
        &self,
        spec: &TaskSpec,
        limits: &Limits,
        logs: &LogSink,
        clock: TaskClock,
        inputs: Vec<Input>,
    ) -> TaskState {
        TaskState {
            wasi: wasi::task_ctx(
                logs,
                clock.deadline,
                clock.timeout,
                spec.deterministic.then(|| deterministic_seed(spec)),
            ),
            limiter: TaskLimiter::new(limits),
            clock,
            memory: None,
            store: self.inner.store.clone(),
            inputs,
            chunks: ChunkCache::default(),
            args: encode_args(&spec.args),
            outputs: Vec::new(),
            output_bytes: 0,
            limits: limits.clone(),
            logs: logs.clone(),
            error_message: None,
            compute: match spec.deterministic {
                true => self.inner.deterministic.clone(),
                false => self.inner.compute.clone(),
            },
            tensors: None,
            subtasks: subtasks::Subtasks::new(spec, limits, self.inner.mesh.get().cloned()),
            progress: None,
        }
    }

    /// The names of the `shoal_v1` functions a task may import, sorted: the host's side of
    /// the ABI, so that tests can check they cover every call.
    pub fn host_imports(&self) -> Vec<String> {
        let limits = Limits::default();
        let spec = TaskSpec {
            module: Cid([0; 32]),
            task: None,
            inputs: Vec::new(),
            args: Vec::new(),
            limits: limits.clone(),
            depth: 0,
            deterministic: false,
            tenant: None,
        };
        let state = self.task_state(
            &spec,
            &limits,
            &LogSink::new(0),
            TaskClock::start(&limits),
            Vec::new(),
        );
        let mut store = Store::new(&self.inner.engine, state);
        let mut names: Vec<String> = self
            .inner
            .linker
            .iter(&mut store)
            .filter(|(module, _, _)| *module == shoal::abi::IMPORT_MODULE)
            .map(|(_, name, _)| name.to_owned())
            .collect();
        names.sort();
        names
    }

    /// Looks the module up in the compiled cache, or loads, measures and compiles it.
    fn compiled(&self, cid: &Cid) -> Result<(Arc<Compiled>, bool), TaskFailure> {
        let cache = &self.inner.modules;
        if let Some(hit) = cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(cid)
        {
            return Ok((hit, true));
        }
        let bad = |m: String| TaskFailure::new(FailureKind::BadModule, m);
        let manifest = self
            .inner
            .store
            .manifest(cid)
            .map_err(|e| bad(format!("cannot load module {cid}: {e}")))?;
        if manifest.len > MAX_MODULE_LEN {
            return Err(bad(format!(
                "module is {} bytes, over the {} module size limit",
                manifest.len,
                fmt_bytes(MAX_MODULE_LEN)
            )));
        }
        let bytes = self
            .inner
            .store
            .read_file(cid)
            .map_err(|e| bad(format!("cannot load module {cid}: {e}")))?;
        compile::check_bounds(&bytes).map_err(bad)?;
        let module = Module::from_binary(&self.inner.engine, &bytes)
            .map_err(|e| bad(format!("not a valid wasm module: {}", first_line(&e))))?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&module)
            .map_err(|e| bad(format!("{e}")))?;
        let tasks = module
            .exports()
            .filter_map(|e| {
                let name = e.name().strip_prefix(shoal::abi::TASK_EXPORT_PREFIX)?;
                Some((name.to_owned(), module.get_export_index(e.name())?))
            })
            .collect();
        let initialize = module.get_export_index("_initialize");
        let memory = module.get_export_index("memory");
        let image = module.image_range();
        let code_bytes = (image.end as usize).saturating_sub(image.start as usize);
        let compiled = Arc::new(Compiled {
            pre,
            tasks,
            initialize,
            memory,
        });
        cache.lock().unwrap_or_else(PoisonError::into_inner).insert(
            *cid,
            compiled.clone(),
            code_bytes,
        );
        Ok((compiled, false))
    }

    fn open_inputs(&self, inputs: &[(String, Cid)]) -> Result<Vec<Input>, TaskFailure> {
        inputs
            .iter()
            .map(|(name, cid)| {
                let manifest = self.inner.store.manifest(cid).map_err(|e| {
                    TaskFailure::new(FailureKind::BadInput, format!("input `{name}`: {e}"))
                })?;
                Ok(Input {
                    name: name.clone(),
                    cid: *cid,
                    manifest,
                })
            })
            .collect()
    }
}

/// Why a task with this many inputs and arguments is refused, if it is: past
/// [`MAX_TASK_INPUTS`](shoal::abi::MAX_TASK_INPUTS) and
/// [`MAX_TASK_ARGS`](shoal::abi::MAX_TASK_ARGS) a spec costs the host more (manifests held,
/// files fetched, copies decoded) than its limits charge for. Checked wherever a spec enters:
/// a run, a placement (before it is sent), a spawn; a peer's spec is bounded as it decodes.
pub fn shape_error(inputs: usize, args: usize) -> Option<String> {
    use shoal::abi::{MAX_TASK_ARGS, MAX_TASK_INPUTS};
    if inputs > MAX_TASK_INPUTS {
        return Some(format!(
            "the task names {inputs} inputs; at most {MAX_TASK_INPUTS}, the input limit"
        ));
    }
    (args > MAX_TASK_ARGS).then(|| {
        format!("the task has {args} arguments; at most {MAX_TASK_ARGS}, the argument limit")
    })
}

/// A deterministic task's seed for its randomness: what it is (module, task, inputs and
/// arguments), so every node that runs it draws the same numbers.
fn deterministic_seed(spec: &TaskSpec) -> [u8; 32] {
    let what = (&spec.module, &spec.task, &spec.inputs, &spec.args);
    *blake3::hash(&postcard::to_stdvec(&what).unwrap_or_default()).as_bytes()
}

/// Encodes arguments in key order, as the ABI promises the guest.
fn encode_args(args: &[(String, String)]) -> Vec<u8> {
    let mut sorted: Vec<_> = args.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    sorted.sort();
    shoal::abi::encode_args(sorted)
}

fn first_line(e: &wasmtime::Error) -> String {
    format!("{e:#}")
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Chooses the export to call for `--task NAME`, or the only task if none was named.
fn pick_task<'a>(
    tasks: &'a [(String, ModuleExport)],
    wanted: Option<&str>,
) -> Result<&'a ModuleExport, TaskFailure> {
    let prefix = shoal::abi::TASK_EXPORT_PREFIX;
    if let Some((_, export)) = tasks
        .iter()
        .find(|(task, _)| wanted.is_none_or(|name| name == task))
        .filter(|_| wanted.is_some() || tasks.len() == 1)
    {
        return Ok(export);
    }
    let listed = if tasks.is_empty() {
        "none".to_owned()
    } else {
        let names: Vec<&str> = tasks.iter().map(|(task, _)| task.as_str()).collect();
        names.join(", ")
    };
    match wanted {
        Some(name) => Err(TaskFailure::new(
            FailureKind::BadModule,
            format!("module has no task named `{name}` (its tasks: {listed})"),
        )),
        None if tasks.is_empty() => Err(TaskFailure::new(
            FailureKind::BadModule,
            format!("module exports no task (no `{prefix}*` export); mark one with #[shoal::task]"),
        )),
        None => Err(TaskFailure::new(
            FailureKind::BadModule,
            format!(
                "module exports {} tasks ({listed}); choose one with --task",
                tasks.len()
            ),
        )),
    }
}

/// Turns a wasmtime error into a typed failure; `Ok` for a clean `proc_exit(0)`.
fn classify(e: wasmtime::Error, state: &TaskState, max_stack: usize) -> Result<(), TaskFailure> {
    use FailureKind as K;
    if let Some(kill) = e.downcast_ref::<Kill>() {
        return Err(TaskFailure::new(K::Timeout, kill.to_string()));
    }
    if let Some(exit) = e.downcast_ref::<wasi_common::I32Exit>() {
        return match exit.0 {
            0 => Ok(()),
            code => Err(TaskFailure::new(
                K::TaskError,
                format!("task exited with status {code}"),
            )),
        };
    }
    let trap = e.downcast_ref::<Trap>();
    // Out of memory only when the last growth was refused and the task then gave up (an
    // allocator's abort is `unreachable`, an instantiation fails without a trap): any other
    // trap after a refusal is still the trap it is.
    if let Some(asked) = state.limiter.refused
        && matches!(trap, None | Some(Trap::UnreachableCodeReached))
    {
        return Err(TaskFailure::new(
            K::OutOfMemory,
            format!(
                "task exceeded its {} memory limit (it asked for {})",
                fmt_bytes(state.limiter.memory_limit as u64),
                fmt_bytes(asked as u64)
            ),
        ));
    }
    match trap {
        Some(Trap::StackOverflow) => Err(TaskFailure::new(
            K::Trap,
            format!(
                "stack overflow: the task exceeded its {} wasm stack",
                fmt_bytes(max_stack as u64)
            ),
        )),
        Some(Trap::Interrupt) => Err(TaskFailure::new(K::Timeout, "task was interrupted")),
        Some(trap) => Err(TaskFailure::new(K::Trap, format!("wasm trap: {trap}"))),
        None => Err(TaskFailure::new(K::Trap, first_line(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chunk_cache_keeps_the_chunks_used_last() {
        let mut cache = ChunkCache::default();
        let reads = std::cell::Cell::new(0);
        let get = |cache: &mut ChunkCache, key: (usize, usize)| {
            let bytes = cache
                .get_or_read(key, || {
                    reads.set(reads.get() + 1);
                    Ok::<_, ()>(vec![u8::try_from(key.0).unwrap_or(0); 3])
                })
                .unwrap()
                .to_vec();
            assert_eq!(bytes, vec![u8::try_from(key.0).unwrap_or(0); 3]);
        };
        for input in 0..CACHED_CHUNKS {
            get(&mut cache, (input, 0));
        }
        get(&mut cache, (0, 0));
        assert_eq!(
            reads.get(),
            CACHED_CHUNKS,
            "a cached chunk is not read again"
        );
        // One more evicts the one used longest ago: input 1, not input 0 (just used).
        get(&mut cache, (CACHED_CHUNKS, 0));
        get(&mut cache, (0, 0));
        assert_eq!(reads.get(), CACHED_CHUNKS + 1);
        get(&mut cache, (1, 0));
        assert_eq!(reads.get(), CACHED_CHUNKS + 2);
        assert_eq!(cache.0.len(), CACHED_CHUNKS);
    }

    /// Panics for tasks named `panic`, runs the rest for real.
    fn panicky(runtime: &Runtime, spec: &TaskSpec, progress: Option<Progress>) -> TaskReport {
        assert_ne!(spec.task.as_deref(), Some("panic"), "injected host panic");
        runtime.run_reporting_blocking(spec, progress)
    }

    /// Fails (status 1 to 4) if it sees anything an earlier task wrote: in its data segment
    /// (the copy-on-write image), in its zeroed memory, or past 16 MiB (which the pool
    /// decommits rather than resets); then writes there for the next task to find.
    const SNOOP: &str = r#"(module
        (memory (export "memory") 2)
        (data (i32.const 16) "\11")
        (func (export "shoal_task:snoop") (result i32)
            (if (i32.ne (i32.load8_u (i32.const 16)) (i32.const 0x11)) (then (return (i32.const 1))))
            (if (i32.ne (i32.load8_u (i32.const 70000)) (i32.const 0)) (then (return (i32.const 2))))
            (if (i32.eq (memory.grow (i32.const 350)) (i32.const -1)) (then (return (i32.const 3))))
            (if (i32.ne (i32.load8_u (i32.const 22020096)) (i32.const 0)) (then (return (i32.const 4))))
            (i32.store8 (i32.const 16) (i32.const 0x99))
            (i32.store8 (i32.const 70000) (i32.const 0x99))
            (i32.store8 (i32.const 22020096) (i32.const 0x99))
            (i32.const 0)))"#;

    /// Slots reuse pooled memories and reset only the pages a task wrote (`PAGEMAP_SCAN`
    /// where the kernel has it): no task may see another's writes, one after another on a
    /// thread or on both slots at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_task_sees_the_memory_of_one_before() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(BlockStore::open(dir.path()).expect("store"));
        let config = RuntimeConfig {
            slots: 2,
            ..RuntimeConfig::default()
        };
        let runtime = Runtime::new(store.clone(), config).expect("runtime");
        let module = store
            .put_bytes(&wat::parse_str(SNOOP).expect("wat"))
            .expect("module");
        let spec = TaskSpec::new(module);
        for _ in 0..50 {
            let report = runtime.run_blocking(&spec);
            assert_eq!(report.result, Ok(vec![]), "{}", report.logs);
        }
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let (runtime, spec) = (runtime.clone(), spec.clone());
            set.spawn(async move { runtime.run(spec).await.result });
        }
        while let Some(result) = set.join_next().await {
            assert_eq!(result.expect("joined"), Ok(vec![]));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_slot_fails_its_task_and_keeps_serving() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(BlockStore::open(dir.path()).expect("store"));
        let config = RuntimeConfig {
            slots: 2,
            ..RuntimeConfig::default()
        };
        let runtime = Runtime::with_runner(store.clone(), config, panicky).expect("runtime");
        let module = store
            .put_bytes(
                &wat::parse_str(
                    r#"(module (func (export "shoal_task:t") (result i32) i32.const 0))"#,
                )
                .expect("wat"),
            )
            .expect("module");
        let spec = |task: &str| TaskSpec {
            module,
            task: Some(task.into()),
            inputs: vec![],
            args: vec![],
            limits: Limits::default(),
            depth: 0,
            deterministic: false,
            tenant: None,
        };
        // Panic on every slot more than once over.
        for _ in 0..4 {
            let report = runtime.run(spec("panic")).await;
            let failure = report.result.expect_err("a host panic fails the task");
            assert_eq!(failure.kind, FailureKind::Lost);
            assert!(failure.message.contains("injected host panic"), "{failure}");
        }
        assert_eq!(runtime.free_slots(), 2, "no slot stays busy after a panic");
        // Both slots still run tasks, at once.
        let (a, b) = tokio::join!(runtime.run(spec("t")), runtime.run(spec("t")));
        for report in [a, b] {
            assert_eq!(report.result.expect("runs after the panics"), vec![]);
        }
    }
}
