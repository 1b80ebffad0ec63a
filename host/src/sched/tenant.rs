//! Signing what this node submits. Every spec on the wire is signed (`shoal_p2p::TaskAuth`):
//! a task of this node's own is signed by its identity as the tenant, with a delegation to
//! the peer it is placed on, so that peer may submit the task's subtasks in the tenant's
//! name; a subtask of another tenant's driver carries that tenant and its delegation, and
//! this node signs it as the delegation's audience. The executor checks both
//! (`TaskSpec::verify`) before it fetches anything.

use std::{
    hash::{BuildHasher, RandomState},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use shoal::abi::MAX_SUBTASKS;
use shoal_p2p::{
    Keypair, PeerId, TaskSpec,
    messages::{AuthError, Delegation},
};

/// How long a delegation outlives its task's own time limit: the task may wait for a slot
/// or for memory on the executor before it starts.
const DELEGATION_SLACK: Duration = Duration::from_secs(600);

/// Now, in milliseconds since the Unix epoch (0 for a clock set before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A fresh nonce: distinct within this process, unpredictable across processes.
fn nonce() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Signs `spec` for its run on `peer`: as the tenant, with a delegation to `peer`, when the
/// spec names no other tenant; as a delegate when it carries another tenant's delegation.
///
/// # Errors
/// [`AuthError::Signing`] when the key cannot sign.
pub fn sign_for(spec: &mut TaskSpec, keypair: &Keypair, peer: PeerId) -> Result<(), AuthError> {
    let now = now_ms();
    let mine = keypair.public().encode_protobuf();
    if spec.auth.tenant.is_empty() || spec.auth.tenant == mine {
        let time = Duration::from_millis(spec.limits.timeout_ms.max(spec.limits.cpu_budget_ms));
        let expires = now.saturating_add(
            u64::try_from((time + DELEGATION_SLACK).as_millis()).unwrap_or(u64::MAX),
        );
        let max = u32::try_from(MAX_SUBTASKS).unwrap_or(u32::MAX);
        spec.auth.delegation = Some(Delegation::new(keypair, peer, expires, spec.id(), max)?);
    }
    spec.sign(keypair, now, nonce())
}
