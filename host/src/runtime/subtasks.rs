//! Tasks that spawn tasks, and objects: the `shoal_v1` calls `self_module`, `input_cid`,
//! `object_put`, `object_open`, `spawn`, `subtask_wait` and `subtask_result`.
//!
//! The runtime knows nothing of the network: subtasks reach the mesh through [`Mesh`], a
//! trait the node implements with its scheduler, so they are placed, retried and reported like
//! any submitted task. Without a mesh (`host run`), `spawn` is `Unavailable`.
//!
//! The rules, each enforced here:
//! - a task reads only its module, its inputs, its own objects and outputs, and its
//!   subtasks' outputs; it spawns only with CIDs it may read (else `Denied`);
//! - handles are indices into the task's own table: a forged one is `BadHandle`;
//! - at most [`MAX_SUBTASKS`] in all and [`MAX_SUBTASKS_IN_FLIGHT`] at once
//!   (`QuotaExceeded`), nested at most [`MAX_DEPTH`] deep (`Denied`);
//! - subtasks inherit the task's limits, end by its deadline, and share its CPU budget: each
//!   spawn reserves 1/16 of what the pool has left and gives back what the subtask did not use;
//! - blocking in `subtask_wait` counts against wall time, not CPU, and lends the task's slot
//!   to the node meanwhile (see `Runtime::lend_slot`), so a driver never holds a slot its own
//!   subtasks need;
//! - when the task ends, subtasks still running are cancelled.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel},
    },
    time::{Duration, Instant},
};

use shoal::abi::{
    CID_LEN, ErrorCode, FailureCode, IMPORT_MODULE, MAX_DEPTH, MAX_SPAWN_SPEC_LEN, MAX_SUBTASKS,
    MAX_SUBTASKS_IN_FLIGHT, MAX_VERIFY, RunStats, SpawnSpec, encode_result,
};
use tokio_util::sync::CancellationToken;
use wasmtime::{Caller, Linker};

use super::{
    FailureKind, Input, Limits, TaskReport, TaskSpec, TaskState,
    host_fns::{copy_out, encode, guest_range, len_result, store_bytes, with_memory},
    limits::{Kill, fmt_duration},
};
use crate::store::Cid;

type Call<'a> = Caller<'a, TaskState>;

/// The smallest CPU reservation a spawn may get: below it the shared budget is spent.
const MIN_SUBTASK_CPU: Duration = Duration::from_millis(10);
/// Each spawn reserves this fraction of what is left of the shared CPU budget.
const CPU_SHARE: u32 = 16;

/// How subtasks reach the mesh; the node implements it with its scheduler.
pub trait Mesh: Send + Sync {
    /// Runs `spec` somewhere on the mesh (deterministic on `verify` distinct peers, taking
    /// their agreed answer, when that is 2 or more) and calls `done` with its report. Once
    /// `cancel` is cancelled the task is abandoned (`done` may then never be called).
    fn submit(
        &self,
        spec: TaskSpec,
        verify: u32,
        cancel: CancellationToken,
        done: Box<dyn FnOnce(TaskReport) + Send>,
    );

    /// Makes file `cid` (its manifest and chunks) present in the local store, fetching it
    /// from the mesh if needed, for `tenant` (the task's [`TaskSpec::tenant`]; `None`: this
    /// node's own). Blocks: it is called on a slot thread, and gives up at `deadline` (the
    /// task's), so a slow provider cannot hold the slot past the task's time.
    ///
    /// # Errors
    /// Why it could not be fetched.
    fn fetch(&self, cid: Cid, tenant: Option<&[u8]>, deadline: Instant) -> Result<(), String>;

    /// Lets `tenant` (a task's [`TaskSpec::tenant`]) read file `cid`, which its task just
    /// wrote here, from other peers: its node and the executors of its subtasks fetch it
    /// while the task still runs.
    fn written(&self, cid: Cid, tenant: &[u8]);

    /// Whether `tenant` may store `bytes` more here under the node's policy (an open
    /// tenant's stored-bytes quota); why not, if not. Asked before each file a task writes,
    /// whichever of the tenant's tasks writes it (a driver's subtasks run here too).
    ///
    /// # Errors
    /// The quota's message.
    fn may_store(&self, tenant: &[u8], bytes: u64) -> Result<(), String>;
}

/// One spawned subtask.
enum Subtask {
    Running {
        reserved_cpu: Duration,
    },
    /// Its report, and the number of the peer that ran it (see [`RunStats::peer`]).
    Done(Box<TaskReport>, u32),
}

/// A task's subtasks, objects and what it may read.
pub(crate) struct Subtasks {
    mesh: Option<Arc<dyn Mesh>>,
    module: Cid,
    depth: u32,
    /// Whether the task runs deterministic: its subtasks do too, so a verified driver's
    /// whole tree gives the same bytes everywhere.
    deterministic: bool,
    /// The tenant it runs for (see [`TaskSpec::tenant`]): its subtasks run for it too.
    tenant: Option<Vec<u8>>,
    limits: Limits,
    pub(super) readable: HashSet<Cid>,
    table: Vec<Subtask>,
    in_flight: usize,
    /// CPU of the shared budget not reserved by a running subtask nor used by a finished one.
    cpu_left: Duration,
    done_tx: SyncSender<(usize, TaskReport)>,
    done_rx: Receiver<(usize, TaskReport)>,
    cancel: CancellationToken,
    /// The peers that ran this task's subtasks, numbered in the order first seen.
    peers: Vec<String>,
}

impl Drop for Subtasks {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Subtasks {
    pub(crate) fn new(spec: &TaskSpec, limits: &Limits, mesh: Option<Arc<dyn Mesh>>) -> Self {
        // A report is drained before its slot in the in-flight count is freed, so at most
        // that many wait here at once.
        let (done_tx, done_rx) = sync_channel(MAX_SUBTASKS_IN_FLIGHT);
        let readable = std::iter::once(spec.module)
            .chain(spec.inputs.iter().map(|(_, c)| *c))
            .collect();
        Self {
            mesh,
            module: spec.module,
            depth: spec.depth,
            deterministic: spec.deterministic,
            tenant: spec.tenant.clone(),
            limits: limits.clone(),
            readable,
            table: Vec::new(),
            in_flight: 0,
            cpu_left: limits.cpu_budget,
            done_tx,
            done_rx,
            cancel: CancellationToken::new(),
            peers: Vec::new(),
        }
    }

    /// Whether the task's tenant may store `bytes` more on this node.
    pub(super) fn may_store(&self, bytes: u64) -> Result<(), String> {
        match (&self.mesh, &self.tenant) {
            (Some(mesh), Some(tenant)) => mesh.may_store(tenant, bytes),
            _ => Ok(()),
        }
    }

    /// Tells the node that the task wrote file `cid`, so its tenant may read it.
    pub(super) fn written(&self, cid: Cid) {
        if let (Some(mesh), Some(tenant)) = (&self.mesh, &self.tenant) {
            mesh.written(cid, tenant);
        }
    }

    /// Records a finished subtask: its outputs become readable, unused CPU goes back. What the
    /// task can read of it is kept (result, a failure's message up to 4 KiB, times), not its
    /// logs: up to 1024 finished reports wait for the task to read them.
    fn finish(&mut self, index: usize, mut report: TaskReport) {
        const MAX_MESSAGE: usize = 4096;
        report.logs = Default::default();
        if let Err(failure) = &mut report.result {
            let end = failure.message.floor_char_boundary(MAX_MESSAGE);
            failure.message.truncate(end);
        }
        if let Some(Subtask::Running { reserved_cpu }) = self.table.get(index) {
            let unused = reserved_cpu.saturating_sub(report.stats.cpu);
            self.cpu_left = self.cpu_left.saturating_add(unused);
            self.in_flight -= 1;
            if let Ok(outputs) = &report.result {
                self.readable.extend(outputs.iter().map(|(_, c)| *c));
            }
            let peer = report.stats.executed_by.clone().unwrap_or_default();
            let number = match self.peers.iter().position(|p| *p == peer) {
                Some(n) => n,
                None => {
                    self.peers.push(peer);
                    self.peers.len() - 1
                }
            };
            let number = u32::try_from(number).unwrap_or(u32::MAX);
            self.table[index] = Subtask::Done(Box::new(report), number);
        }
    }

    fn drain(&mut self) {
        while let Ok((index, report)) = self.done_rx.try_recv() {
            self.finish(index, report);
        }
    }

    fn handle(&self, raw: i32) -> Result<usize, ErrorCode> {
        usize::try_from(raw)
            .ok()
            .and_then(|h| h.checked_sub(1))
            .filter(|&i| i < self.table.len())
            .ok_or(ErrorCode::BadHandle)
    }
}

fn note(state: &TaskState, text: &str) {
    state.logs.append(&[b"[host] ", text.as_bytes(), b"\n"]);
}

fn read_cid(data: &[u8], ptr: i32) -> Result<Cid, ErrorCode> {
    let range = guest_range(ptr, CID_LEN as i32, data.len())?;
    let mut cid = [0u8; CID_LEN];
    cid.copy_from_slice(&data[range]);
    Ok(Cid(cid))
}

/// Why a spawn must be refused, if it must.
fn refusal(subs: &Subtasks, spec: &SpawnSpec) -> Option<(ErrorCode, String)> {
    if subs.mesh.is_none() {
        let why = "subtasks need a node: submit the task with `host submit` to a running node";
        return Some((ErrorCode::Unavailable, why.into()));
    }
    if subs.depth >= MAX_DEPTH {
        let why = format!("subtasks nest at most {MAX_DEPTH} deep, the depth limit");
        return Some((ErrorCode::Denied, why));
    }
    if subs.table.len() >= MAX_SUBTASKS {
        let why = format!("a task may spawn at most {MAX_SUBTASKS} subtasks, the count limit");
        return Some((ErrorCode::QuotaExceeded, why));
    }
    if let Some(why) = super::shape_error(spec.inputs.len(), spec.args.len()) {
        return Some((ErrorCode::InvalidArgument, why));
    }
    if spec.verify > MAX_VERIFY {
        let why = format!("a subtask may be verified on at most {MAX_VERIFY} peers");
        return Some((ErrorCode::InvalidArgument, why));
    }
    if subs.in_flight >= MAX_SUBTASKS_IN_FLIGHT {
        let why = format!(
            "a task may have at most {MAX_SUBTASKS_IN_FLIGHT} subtasks running at once; wait for one"
        );
        return Some((ErrorCode::QuotaExceeded, why));
    }
    if let Some(cid) = std::iter::once(spec.module)
        .chain(spec.inputs.iter().map(|(_, c)| *c))
        .find(|c| !subs.readable.contains(c))
    {
        let why = format!(
            "{cid} is not this task's to give: not its module, input, object or output, nor a subtask's output"
        );
        return Some((ErrorCode::Denied, why));
    }
    if subs.cpu_left / CPU_SHARE < MIN_SUBTASK_CPU {
        let why = format!(
            "the task's {} CPU budget, shared with its subtasks, is spent",
            fmt_duration(subs.limits.cpu_budget)
        );
        return Some((ErrorCode::QuotaExceeded, why));
    }
    None
}

fn spawn(state: &mut TaskState, bytes: &[u8], now: Instant) -> Result<i32, ErrorCode> {
    // Bounded before it is decoded: decoding makes several host bytes of each guest byte.
    if bytes.len() > MAX_SPAWN_SPEC_LEN {
        let why = format!(
            "a spawn spec of {} bytes; at most {MAX_SPAWN_SPEC_LEN}",
            bytes.len()
        );
        note(state, &format!("spawn refused: {why}"));
        return Err(ErrorCode::InvalidArgument);
    }
    let spec = SpawnSpec::decode(bytes).ok_or(ErrorCode::InvalidArgument)?;
    state.subtasks.drain();
    if let Some((code, why)) = refusal(&state.subtasks, &spec) {
        note(state, &format!("spawn refused: {why}"));
        return Err(code);
    }
    let state_deadline = state.clock.deadline;
    let subs = &mut state.subtasks;
    let Some(mesh) = subs.mesh.clone() else {
        return Err(ErrorCode::Unavailable);
    };
    let reserved_cpu = subs.cpu_left / CPU_SHARE;
    let deadline_left = state_deadline.saturating_duration_since(now);
    let child = TaskSpec {
        module: spec.module,
        task: spec.task,
        inputs: spec.inputs,
        args: spec.args,
        limits: Limits {
            timeout: deadline_left,
            cpu_budget: reserved_cpu,
            ..subs.limits.clone()
        },
        depth: subs.depth + 1,
        deterministic: subs.deterministic,
        tenant: subs.tenant.clone(),
    };
    let index = subs.table.len();
    subs.table.push(Subtask::Running { reserved_cpu });
    subs.cpu_left -= reserved_cpu;
    subs.in_flight += 1;
    let done_tx = subs.done_tx.clone();
    mesh.submit(
        child,
        spec.verify,
        subs.cancel.child_token(),
        Box::new(move |report| {
            // The channel has room for every report not yet drained (at most the in-flight
            // bound: a subtask counts until its report is drained), so this never blocks; a
            // task that already ended has dropped its receiver, and the report goes nowhere.
            let _ = done_tx.try_send((index, report));
        }),
    );
    i32::try_from(index + 1).map_err(|_| ErrorCode::TooLarge)
}

/// Blocks until one of `handles` is done; returns its position in `handles`.
fn wait(caller: &mut Call<'_>, ptr: i32, count: i32) -> wasmtime::Result<Result<i32, ErrorCode>> {
    let wanted = match with_memory(caller, |data, state| {
        let range = guest_range(ptr, count.saturating_mul(4), data.len())?;
        // A task has at most this many handles; more is a list with repeats, read for nothing.
        if range.len() / 4 > MAX_SUBTASKS {
            return Err(ErrorCode::InvalidArgument);
        }
        let wanted = data[range]
            .chunks_exact(4)
            .map(|b| {
                state
                    .subtasks
                    .handle(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if wanted.is_empty() {
            return Err(ErrorCode::InvalidArgument);
        }
        Ok(wanted)
    }) {
        Ok(wanted) => wanted,
        Err(code) => return Ok(Err(code)),
    };
    let ready = |subs: &Subtasks| {
        wanted
            .iter()
            .position(|&i| matches!(subs.table[i], Subtask::Done(..)))
    };
    let state = caller.data_mut();
    state.subtasks.drain();
    if let Some(pos) = ready(&state.subtasks) {
        return Ok(len_result(pos));
    }
    // Nothing is ready: give the slot to the node while we block.
    super::lend_slot();
    loop {
        let left = state
            .clock
            .deadline
            .saturating_duration_since(Instant::now());
        match state.subtasks.done_rx.recv_timeout(left) {
            Ok((index, report)) => {
                state.subtasks.finish(index, report);
                if let Some(pos) = ready(&state.subtasks) {
                    return Ok(len_result(pos));
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err(wasmtime::Error::new(Kill::Timeout(state.clock.timeout)));
            }
            // The sender lives in the same state: unreachable, but never a hang.
            Err(RecvTimeoutError::Disconnected) => return Ok(Err(ErrorCode::Unavailable)),
        }
    }
}

fn failure_code(kind: FailureKind) -> FailureCode {
    match kind {
        FailureKind::Trap => FailureCode::Trap,
        FailureKind::OutOfMemory => FailureCode::OutOfMemory,
        FailureKind::Timeout => FailureCode::Timeout,
        FailureKind::BadModule => FailureCode::BadModule,
        FailureKind::BadInput => FailureCode::BadInput,
        FailureKind::Denied => FailureCode::Denied,
        FailureKind::TaskError => FailureCode::TaskError,
        FailureKind::Lost => FailureCode::Lost,
    }
}

/// A subtask's encoded result: copied out if it fits, else its length so the guest can grow
/// its buffer.
fn result(
    state: &TaskState,
    data: &mut [u8],
    handle: i32,
    ptr: i32,
    len: i32,
) -> Result<i32, ErrorCode> {
    guest_range(ptr, len, data.len())?;
    let index = state.subtasks.handle(handle)?;
    let Subtask::Done(report, peer) = &state.subtasks.table[index] else {
        return Err(ErrorCode::InvalidArgument);
    };
    // Times differ from run to run: a deterministic task reads zeros.
    let micros = |d: Duration| match state.subtasks.deterministic {
        true => 0,
        false => u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
    };
    let stats = RunStats {
        wall_us: micros(report.stats.wall),
        fetch_us: micros(report.stats.fetch),
        peer: *peer,
    };
    let bytes = encode_result(
        &report
            .result
            .clone()
            .map_err(|f| (failure_code(f.kind), f.message)),
        &stats,
    );
    if (len as u32 as usize) < bytes.len() {
        return len_result(bytes.len());
    }
    copy_out(data, ptr, len, &bytes)
}

/// Opens a file the task may read as one more input; returns its index.
fn open(state: &mut TaskState, cid: Cid) -> Result<i32, ErrorCode> {
    if let Some(i) = state.inputs.iter().position(|i| i.cid == cid) {
        return len_result(i);
    }
    if !state.subtasks.readable.contains(&cid) {
        note(
            state,
            &format!(
                "reading {cid} denied: not this task's input, object or output, nor a subtask's output"
            ),
        );
        return Err(ErrorCode::Denied);
    }
    // Through the node even when the blocks are here: a subtask's report names outputs, and
    // the tenant must be able to read them (granted here, or served by a provider), not just
    // be told of them, or a forged report could open another tenant's file.
    if let Some(mesh) = state.subtasks.mesh.clone()
        && let Err(e) = mesh.fetch(cid, state.subtasks.tenant.as_deref(), state.clock.deadline)
    {
        note(state, &format!("fetching {cid}: {e}"));
        return Err(ErrorCode::Unavailable);
    }
    let manifest = state.store.manifest(&cid).map_err(|e| {
        note(state, &format!("opening {cid}: {e}"));
        ErrorCode::Unavailable
    })?;
    state.inputs.push(Input {
        name: cid.to_hex(),
        cid,
        manifest,
    });
    len_result(state.inputs.len() - 1)
}

/// Registers the subtask and object calls.
pub(crate) fn add_to_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    let m = IMPORT_MODULE;
    linker.func_wrap(m, "self_module", |mut c: Call<'_>, ptr: i32| {
        Ok(encode(with_memory(&mut c, |data, state| {
            let module = state.subtasks.module;
            copy_out(data, ptr, CID_LEN as i32, module.as_bytes()).map(|_| 0)
        })))
    })?;
    linker.func_wrap(m, "input_cid", |mut c: Call<'_>, index: i32, ptr: i32| {
        Ok(encode(with_memory(&mut c, |data, state| {
            let input = usize::try_from(index)
                .ok()
                .and_then(|i| state.inputs.get(i))
                .ok_or(ErrorCode::NotFound)?;
            copy_out(data, ptr, CID_LEN as i32, input.cid.as_bytes()).map(|_| 0)
        })))
    })?;
    linker.func_wrap(
        m,
        "object_put",
        |mut c: Call<'_>, ptr: i32, len: i32, cid_ptr: i32| {
            Ok(encode(with_memory(&mut c, |data, state| {
                let out = guest_range(cid_ptr, CID_LEN as i32, data.len())?;
                let cid = store_bytes(
                    state,
                    &data[guest_range(ptr, len, data.len())?],
                    "an object",
                )?;
                data[out].copy_from_slice(cid.as_bytes());
                Ok(0)
            })))
        },
    )?;
    linker.func_wrap(m, "object_open", |mut c: Call<'_>, cid_ptr: i32| {
        Ok(encode(with_memory(&mut c, |data, state| {
            open(state, read_cid(data, cid_ptr)?)
        })))
    })?;
    linker.func_wrap(m, "spawn", |mut c: Call<'_>, ptr: i32, len: i32| {
        let now = Instant::now();
        Ok(encode(with_memory(&mut c, |data, state| {
            spawn(state, &data[guest_range(ptr, len, data.len())?], now)
        })))
    })?;
    linker.func_wrap(
        m,
        "subtask_wait",
        |mut c: Call<'_>, ptr: i32, count: i32| Ok(encode(wait(&mut c, ptr, count)?)),
    )?;
    linker.func_wrap(
        m,
        "subtask_result",
        |mut c: Call<'_>, handle: i32, ptr: i32, len: i32| {
            Ok(encode(with_memory(&mut c, |data, state| {
                result(state, data, handle, ptr, len)
            })))
        },
    )?;
    Ok(())
}
