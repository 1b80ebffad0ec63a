//! The typed messages that Shoal peers exchange, one request/response pair a protocol.
//!
//! Every type here is plain serde data. Nothing is bounded field by field: the codec bounds
//! each whole frame (see [`crate::codec`]), so no `String` or `Vec` in a message can outgrow
//! the frame it arrived in.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// The largest block a peer stores or serves: 1 MiB. Larger data is chunked by the host.
pub const MAX_BLOCK_BYTES: usize = 1 << 20;

/// A block's name: the blake3 hash of its bytes. Shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockId(pub [u8; 32]);

impl BlockId {
    /// The id of `bytes`, i.e. their blake3 hash.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// The raw 32 hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether `bytes` hash to this id.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        // blake3::Hash compares in constant time; not needed here, but free.
        blake3::Hash::from_bytes(self.0) == blake3::hash(bytes)
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockId({self})")
    }
}

/// Why a string is not a [`BlockId`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseBlockIdError {
    /// The string is not 64 characters long.
    #[error("a block id is 64 hex digits, got {len} characters")]
    Length {
        /// The length that was given.
        len: usize,
    },
    /// The string holds a character that is not a hex digit.
    #[error("a block id is 64 hex digits: {0}")]
    Hex(#[from] hex::FromHexError),
}

impl FromStr for BlockId {
    type Err = ParseBlockIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 {
            return Err(ParseBlockIdError::Length { len: s.len() });
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(Self(out))
    }
}

impl From<[u8; 32]> for BlockId {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

/// `/shoal/block/1` request: send me the block named `cid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRequest {
    /// The block wanted.
    pub cid: BlockId,
}

/// `/shoal/block/1` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockResponse {
    /// The block's bytes (at most [`MAX_BLOCK_BYTES`]). The requester checks them against the
    /// cid it asked for.
    Found(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The peer does not hold the block.
    NotFound,
    /// The peer is serving too many requests; ask another provider or retry later.
    Busy,
}

/// Resource limits a task runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLimits {
    /// The most linear memory the task may use, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock limit, in milliseconds.
    pub timeout_ms: u64,
}

/// `/shoal/task/1` request: run this task and send back its outcome.
///
/// The executing peer fetches the module and inputs it lacks from the submitter, whose
/// `PeerId` it knows from the connection (or from providers found through Kademlia).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The wasm module, as a block.
    pub module: BlockId,
    /// The exported entry point to call.
    pub entry: String,
    /// Named input blocks.
    pub inputs: Vec<(String, BlockId)>,
    /// Named string arguments.
    pub args: Vec<(String, String)>,
    /// Sandbox limits.
    pub limits: TaskLimits,
}

/// What a successful run cost and where it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStats {
    /// Wall time of the run, in milliseconds.
    pub wall_ms: u64,
    /// Peak linear memory, in bytes.
    pub peak_memory_bytes: u64,
    /// The compute backend used, e.g. `"wgpu"` or `"cpu"`.
    pub backend: String,
    /// The peer that ran the task (its `PeerId` as a string).
    pub executed_by: String,
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
    /// The task was not allowed (quota, capability, tenant policy).
    Denied,
    /// The task or one of its inputs was lost (peer gone, block unavailable).
    Lost,
    /// The peer had no free slot; submit elsewhere or later.
    Busy,
    /// Anything else; see the message.
    Other,
}

/// `/shoal/task/1` response: what became of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskOutcome {
    /// The task ran to completion.
    Ok {
        /// Named output blocks, held by the executing peer.
        outputs: Vec<(String, BlockId)>,
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
    },
}

impl TaskOutcome {
    /// A failure with no logs.
    pub fn failed(kind: FailureKind, message: impl Into<String>) -> Self {
        Self::Failed {
            kind,
            message: message.into(),
            logs: String::new(),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_id_hex_round_trip() {
        let id = BlockId::of(b"hello");
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s, s.to_lowercase());
        assert_eq!(s.parse::<BlockId>().unwrap(), id);
        assert!(id.matches(b"hello"));
        assert!(!id.matches(b"hellp"));
    }

    #[test]
    fn block_id_parse_rejects_bad_input() {
        assert!(matches!(
            "abc".parse::<BlockId>(),
            Err(ParseBlockIdError::Length { len: 3 })
        ));
        let bad = "g".repeat(64);
        assert!(matches!(
            bad.parse::<BlockId>(),
            Err(ParseBlockIdError::Hex(_))
        ));
    }
}
