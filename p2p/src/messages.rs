//! The typed messages that Shoal peers exchange, one request/response pair a protocol.
//!
//! Every type here is plain serde data. Nothing is bounded field by field: the codec bounds
//! each whole frame (see [`crate::codec`]), so no `String` or `Vec` in a message can outgrow
//! the frame it arrived in.

use libp2p::identity::{Keypair, PeerId, PublicKey};
use serde::{Deserialize, Serialize};

pub use shoal::abi::{Cid, MAX_BLOCK_LEN};

/// `/shoal/block/1` request: send me the block named `cid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRequest {
    /// The block wanted.
    pub cid: Cid,
}

/// `/shoal/block/1` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockResponse {
    /// The block's bytes (at most [`MAX_BLOCK_LEN`]). The requester checks them against the
    /// cid it asked for.
    Found(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The peer does not hold the block.
    NotFound,
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

/// `/shoal/task/4` request: run this task and send back its outcome.
///
/// The executing peer fetches the module and inputs it lacks from the submitter, whose
/// `PeerId` it knows from the connection (or from providers found through Kademlia).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The wasm module, as a block.
    pub module: Cid,
    /// The exported entry point to call.
    pub entry: String,
    /// Named input blocks.
    pub inputs: Vec<(String, Cid)>,
    /// Named string arguments.
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
    /// Who the task runs for, and the signatures that prove it (boxed: it is over half of a
    /// spec's size, and specs travel in the network actor's commands).
    pub auth: Box<TaskAuth>,
}

/// Who a task runs for (its tenant) and the proof: every spec on the wire is signed.
///
/// **What is signed.** [`TaskSpec::signed_bytes`]: the context string
/// `shoal/task-spec/1\n` followed by the spec's postcard encoding with `auth.signature`
/// empty (every other field, `auth` included, as sent). Postcard is canonical for these
/// types (no maps, no floats, fixed field order), so both sides compute the same bytes.
///
/// **Who signs.** A task a user submits is signed by its tenant (`signer` empty). A driver's
/// subtask carries its driver's tenant and [`Delegation`], and is signed by the node that
/// runs the driver (`signer`), which must be the delegation's audience. The executor checks
/// it all ([`TaskSpec::verify`]) before it fetches anything.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TaskAuth {
    /// The tenant's ed25519 public key, protobuf-encoded as libp2p encodes keys; its
    /// `PeerId` form is how nodes name the tenant (`--allow`).
    pub tenant: Vec<u8>,
    /// When it was signed, in milliseconds since the Unix epoch.
    pub issued_at_ms: u64,
    /// Random: two signings of the same spec differ. Signed; not yet checked for replays.
    pub nonce: u64,
    /// The tenant's leave for the peer that runs this task to submit subtasks in its name:
    /// set by the tenant on each attempt (it knows the peer then), and carried unchanged by
    /// those subtasks.
    pub delegation: Option<Delegation>,
    /// Empty when the tenant signed; otherwise the signer's public key (protobuf), which
    /// must be `delegation`'s audience.
    pub signer: Vec<u8>,
    /// The ed25519 signature of the signer (the tenant, or `signer`) over
    /// [`TaskSpec::signed_bytes`].
    pub signature: Vec<u8>,
}

/// A tenant's leave for one peer to submit subtasks of one task in the tenant's name, until
/// a time. The tenant signs the context string `shoal/delegation/1\n` followed by the
/// postcard encoding of this struct with `signature` empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    /// The peer allowed to sign subtasks (its `PeerId` bytes).
    pub audience: Vec<u8>,
    /// Not valid from this time on, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// The driver task's id ([`TaskSpec::id`]).
    pub task: Cid,
    /// How many subtasks the audience may submit under it (not yet counted by executors).
    pub max_subtasks: u32,
    /// The tenant's signature.
    pub signature: Vec<u8>,
}

/// Why a spec's signatures do not hold; the executor refuses the task with it (`Denied`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The tenant (or signer) key is missing or not an ed25519 key.
    #[error("the task's {what} key is missing or malformed")]
    BadKey {
        /// `tenant` or `signer`.
        what: &'static str,
    },
    /// The signature over the spec is wrong: the spec was changed after signing, or signed
    /// with another key.
    #[error("the task's signature does not verify")]
    BadSignature,
    /// A subtask signed by someone other than its tenant, with no delegation.
    #[error(
        "the task is signed by {signer}, not by its tenant {tenant}, and carries no delegation"
    )]
    NoDelegation {
        /// The tenant.
        tenant: String,
        /// Who signed.
        signer: String,
    },
    /// The delegation names another peer than the signer.
    #[error("the task is signed by {signer}, but its tenant {tenant} delegated to {audience}")]
    NotTheAudience {
        /// The tenant.
        tenant: String,
        /// Who signed.
        signer: String,
        /// Whom the tenant delegated to.
        audience: String,
    },
    /// The delegation was not signed by the tenant.
    #[error("the task's delegation is not signed by its tenant {tenant}")]
    BadDelegation {
        /// The tenant.
        tenant: String,
    },
    /// The delegation's time is up.
    #[error("the task's delegation from tenant {tenant} expired {ago_ms} ms ago")]
    Expired {
        /// The tenant.
        tenant: String,
        /// How long ago.
        ago_ms: u64,
    },
    /// The key could not sign.
    #[error("cannot sign: {0}")]
    Signing(String),
}

const SPEC_CONTEXT: &[u8] = b"shoal/task-spec/1\n";
const DELEGATION_CONTEXT: &[u8] = b"shoal/delegation/1\n";

fn context_and(context: &[u8], value: &impl Serialize) -> Vec<u8> {
    let mut bytes = context.to_vec();
    bytes.extend(postcard::to_stdvec(value).unwrap_or_default());
    bytes
}

fn public_key(bytes: &[u8], what: &'static str) -> Result<PublicKey, AuthError> {
    PublicKey::try_decode_protobuf(bytes).map_err(|_| AuthError::BadKey { what })
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

    /// The bytes the signer signs: see [`TaskAuth`].
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.auth.signature = Vec::new();
        context_and(SPEC_CONTEXT, &unsigned)
    }

    /// Signs the spec with `keypair`, stamping `issued_at_ms` and `nonce`. With no tenant
    /// set (or `keypair`'s own), `keypair` signs as the tenant; with another tenant set (a
    /// subtask carrying its driver's tenant and delegation), it signs as that delegation's
    /// audience, in `signer`.
    ///
    /// # Errors
    /// [`AuthError::Signing`] when the key cannot sign.
    pub fn sign(
        &mut self,
        keypair: &Keypair,
        issued_at_ms: u64,
        nonce: u64,
    ) -> Result<(), AuthError> {
        let mine = keypair.public().encode_protobuf();
        if self.auth.tenant.is_empty() || self.auth.tenant == mine {
            self.auth.tenant = mine;
            self.auth.signer = Vec::new();
        } else {
            self.auth.signer = mine;
        }
        self.auth.issued_at_ms = issued_at_ms;
        self.auth.nonce = nonce;
        self.auth.signature = keypair
            .sign(&self.signed_bytes())
            .map_err(|e| AuthError::Signing(e.to_string()))?;
        Ok(())
    }

    /// Checks the spec's signatures at time `now_ms` and returns its tenant: the tenant's
    /// signature, or else a delegation signed by the tenant to the signer, unexpired, and
    /// the signer's signature.
    ///
    /// # Errors
    /// [`AuthError`] naming what does not hold.
    pub fn verify(&self, now_ms: u64) -> Result<PeerId, AuthError> {
        let auth = &self.auth;
        let tenant_key = public_key(&auth.tenant, "tenant")?;
        let tenant = tenant_key.to_peer_id();
        let named = tenant.to_string();
        let signed = self.signed_bytes();
        if auth.signer.is_empty() {
            return if tenant_key.verify(&signed, &auth.signature) {
                Ok(tenant)
            } else {
                Err(AuthError::BadSignature)
            };
        }
        let signer_key = public_key(&auth.signer, "signer")?;
        let signer = signer_key.to_peer_id();
        let Some(delegation) = &auth.delegation else {
            return Err(AuthError::NoDelegation {
                tenant: named,
                signer: signer.to_string(),
            });
        };
        if delegation.audience != signer.to_bytes() {
            let audience = PeerId::from_bytes(&delegation.audience)
                .map_or_else(|_| "a malformed peer id".to_owned(), |p| p.to_string());
            return Err(AuthError::NotTheAudience {
                tenant: named,
                signer: signer.to_string(),
                audience,
            });
        }
        if !tenant_key.verify(&delegation.signed_bytes(), &delegation.signature) {
            return Err(AuthError::BadDelegation { tenant: named });
        }
        if now_ms >= delegation.expires_at_ms {
            return Err(AuthError::Expired {
                tenant: named,
                ago_ms: now_ms - delegation.expires_at_ms,
            });
        }
        if signer_key.verify(&signed, &auth.signature) {
            Ok(tenant)
        } else {
            Err(AuthError::BadSignature)
        }
    }
}

impl Delegation {
    /// The tenant's (`keypair`'s) leave for `audience` to submit up to `max_subtasks`
    /// subtasks of task `task` in its name until `expires_at_ms`.
    ///
    /// # Errors
    /// [`AuthError::Signing`] when the key cannot sign.
    pub fn new(
        keypair: &Keypair,
        audience: PeerId,
        expires_at_ms: u64,
        task: Cid,
        max_subtasks: u32,
    ) -> Result<Self, AuthError> {
        let mut delegation = Self {
            audience: audience.to_bytes(),
            expires_at_ms,
            task,
            max_subtasks,
            signature: Vec::new(),
        };
        delegation.signature = keypair
            .sign(&delegation.signed_bytes())
            .map_err(|e| AuthError::Signing(e.to_string()))?;
        Ok(delegation)
    }

    /// The bytes the tenant signs: see [`Delegation`].
    pub fn signed_bytes(&self) -> Vec<u8> {
        let unsigned = Self {
            signature: Vec::new(),
            ..self.clone()
        };
        context_and(DELEGATION_CONTEXT, &unsigned)
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

/// `/shoal/task/4` response: what became of a task.
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
