//! The typed messages that Shoal peers exchange, one request/response pair a protocol.
//!
//! Every type here is plain serde data. The codec bounds each whole frame (see
//! [`crate::codec`]), so no `String` or `Vec` in a message can outgrow the frame it arrived
//! in; a task's lists are bounded as they are decoded too ([`at_most`]), since a frame of
//! empty entries decodes to many times its size.

use std::marker::PhantomData;

use serde::{
    Deserialize, Deserializer, Serialize,
    de::{Error as _, SeqAccess, Visitor},
};

pub use shoal::abi::{Cid, MAX_BLOCK_LEN, Verified};

pub use crate::auth::{AuthError, Credential, Delegation, TaskAuth};

/// `/shoal/block/2` request: send me the block named `cid`, part of file `file`, which the
/// tenant I act for may read.
///
/// The provider serves it only when the credential holds for the requester and names a
/// tenant that may read `file` there (its grants, the provider's own identity's included),
/// and `cid` is `file` or one of its chunks. Anything else is `Denied`, whether the block is
/// there or not, so that a peer cannot probe for content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRequest {
    /// The block wanted.
    pub cid: Cid,
    /// The file it belongs to (`cid` itself for a file's manifest).
    pub file: Cid,
    /// The tenant the requester acts for, and the proof.
    pub credential: Credential,
}

/// `/shoal/block/2` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockResponse {
    /// The block's bytes (at most [`MAX_BLOCK_LEN`]). The requester checks them against the
    /// cid it asked for.
    Found(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The peer does not hold the block (said only to a tenant that may read the file).
    NotFound,
    /// The requester may not read the file here, or it is not here: the two look the same.
    Denied,
    /// The peer is serving too many requests; ask another provider or retry later.
    Busy,
}

/// Resource limits a task runs under: what the submitter may choose, within the executing
/// node's own caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TaskLimits {
    /// The most linear memory the task may use, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock limit, in milliseconds.
    pub timeout_ms: u64,
    /// CPU time the task may use, in milliseconds.
    pub cpu_budget_ms: u64,
}

/// `/shoal/task/5` request: run this task and send back its outcome.
///
/// The executing peer fetches the module and inputs it lacks from the submitter, whose
/// `PeerId` it knows from the connection (or from providers found through Kademlia).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The wasm module, as a block.
    pub module: Cid,
    /// The exported entry point to call.
    pub entry: String,
    /// Named input blocks, at most [`MAX_TASK_INPUTS`](shoal::abi::MAX_TASK_INPUTS).
    #[serde(deserialize_with = "at_most::<_, _, { shoal::abi::MAX_TASK_INPUTS }>")]
    pub inputs: Vec<(String, Cid)>,
    /// Named string arguments, at most [`MAX_TASK_ARGS`](shoal::abi::MAX_TASK_ARGS).
    #[serde(deserialize_with = "at_most::<_, _, { shoal::abi::MAX_TASK_ARGS }>")]
    pub args: Vec<(String, String)>,
    /// Sandbox limits.
    pub limits: TaskLimits,
    /// How deep in a tree of subtasks it is: 0 for a task a user submitted.
    pub depth: u32,
    /// Nonzero: the submitter wants the task's progress records, sent to it over
    /// `/shoal/progress/1` under this token.
    pub progress: u64,
    /// Run its tensor math on the deterministic cpu backend, whatever the executor's device,
    /// so that every honest peer produces the same output bytes (verified runs compare them).
    pub deterministic: bool,
    /// Other peers (their `PeerId` bytes) that hold some of the module and inputs, asked
    /// after the sender: private blocks are not announced, so the submitter says where they
    /// are (a subtask's inputs may be other subtasks' outputs, held where those ran). At most
    /// one a module or input.
    #[serde(deserialize_with = "at_most::<_, _, { shoal::abi::MAX_TASK_INPUTS + 1 }>")]
    pub sources: Vec<Vec<u8>>,
    /// Who the task runs for, and the signatures that prove it (boxed: it is over half of a
    /// spec's size, and specs travel in the network actor's commands).
    pub auth: Box<TaskAuth>,
}

/// Decodes a list of at most `N` items, failing at the first past it: bounded as it is read,
/// not after.
fn at_most<'de, D, T, const N: usize>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T, const N: usize>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for Bounded<T, N> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a list of at most {N} items")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(N));
            while let Some(item) = seq.next_element()? {
                if items.len() == N {
                    return Err(A::Error::invalid_length(N + 1, &self));
                }
                items.push(item);
            }
            Ok(items)
        }
    }

    deserializer.deserialize_seq(Bounded::<T, N>(PhantomData))
}

impl TaskSpec {
    /// The task's id: the hash of its wire encoding without [`TaskAuth`], the same on the
    /// submitter and on the peer that runs it (and across attempts, which are signed anew),
    /// so that one task can be followed through both nodes' logs.
    pub fn id(&self) -> Cid {
        let unsigned = Self {
            auth: Box::default(),
            ..self.clone()
        };
        Cid::of(&postcard::to_stdvec(&unsigned).unwrap_or_default())
    }
}

/// What a run cost, under which limits, and where it ran.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TaskStats {
    /// Wall time of the run, in microseconds.
    pub wall_us: u64,
    /// CPU time of the run, in microseconds.
    pub cpu_us: u64,
    /// Peak linear memory, in bytes.
    pub peak_memory_bytes: u64,
    /// Whether the executor had the module compiled already.
    pub cached_module: bool,
    /// The compute backend used, e.g. `"wgpu …"` or `"cpu …"`; empty if none was.
    pub backend: String,
    /// The limits the executor applied.
    pub limits: TaskLimits,
    /// The peer that ran the task (its `PeerId` as a string).
    pub executed_by: String,
    /// Time the executor spent fetching the module and inputs before the run, in
    /// microseconds.
    pub fetch_us: u64,
}

/// Why a task failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureKind {
    /// The guest trapped.
    Trap,
    /// The guest hit its memory limit.
    OutOfMemory,
    /// The guest hit its time limit.
    Timeout,
    /// The module is not valid wasm or lacks the entry point / imports it needs.
    BadModule,
    /// The task's inputs are missing or unreadable where it ran.
    BadInput,
    /// The task's own code returned an error.
    TaskError,
    /// The task was not allowed (quota, capability, tenant policy).
    Denied,
    /// The task or one of its inputs was lost (peer gone, block unavailable).
    Lost,
    /// The peer had no free slot; submit elsewhere or later.
    Busy,
    /// Anything else; see the message.
    Other,
}

/// `/shoal/task/5` response: what became of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskOutcome {
    /// The task ran to completion.
    Ok {
        /// Named output blocks, held by the executing peer.
        outputs: Vec<(String, Cid)>,
        /// Captured guest logs (bounded by the executor and by the frame limit).
        logs: String,
        /// Cost and placement.
        stats: TaskStats,
    },
    /// The task did not complete.
    Failed {
        /// The kind of failure.
        kind: FailureKind,
        /// A human-readable explanation.
        message: String,
        /// Guest logs captured before the failure.
        logs: String,
        /// What the run cost before it failed (zero where it never started).
        stats: TaskStats,
    },
}

impl TaskOutcome {
    /// A failure with no logs.
    pub fn failed(kind: FailureKind, message: impl Into<String>) -> Self {
        Self::Failed {
            kind,
            message: message.into(),
            logs: String::new(),
            stats: TaskStats::default(),
        }
    }
}

/// The longest progress record, in bytes.
pub const MAX_PROGRESS_LEN: usize = 4096;

/// `/shoal/progress/1` request: one progress record of a task this peer runs for the
/// receiver, under the token the receiver put in the task's spec. The response is `()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressRecord {
    /// The spec's `progress` token.
    pub token: u64,
    /// What the task reported, at most [`MAX_PROGRESS_LEN`] bytes.
    pub data: Vec<u8>,
}

/// `/shoal/capacity/1` request: tell me your advertised capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CapacityRequest;

/// `/shoal/capacity/1` response: a peer's advertised capacity, used for placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capacity {
    /// Task slots free right now.
    pub free_slots: u32,
    /// Task slots in all.
    pub total_slots: u32,
    /// Whether the peer has a hardware GPU backend.
    pub has_gpu: bool,
    /// Tasks waiting for a slot.
    pub queue_len: u32,
}
