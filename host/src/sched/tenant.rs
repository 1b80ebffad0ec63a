//! Signing what this node submits. Every spec on the wire is signed (`shoal_p2p::TaskAuth`)
//! and carries a credential whose chain ends at the peer it is sent to: a task of this
//! node's own gets one link, from this node as the tenant; a subtask of another tenant's
//! driver carries that driver's chain, and this node (the chain's holder) adds the link to
//! the subtask's executor. The executor checks both (`TaskSpec::verify`) before it fetches
//! anything.

use std::{
    hash::{BuildHasher, RandomState},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use shoal::abi::MAX_SUBTASKS;
use shoal_p2p::{AuthError, Credential, Keypair, PeerId, TaskSpec};

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

/// Signs `spec` for its run on `peer`: extends its credential (this node's own when it has
/// none) with a link to `peer` for this task, then signs it.
///
/// # Errors
/// [`AuthError::NotHolder`] when the spec carries a credential this node does not hold;
/// [`AuthError::Signing`] when the key cannot sign.
pub fn sign_for(spec: &mut TaskSpec, keypair: &Keypair, peer: PeerId) -> Result<(), AuthError> {
    let now = now_ms();
    let time = Duration::from_millis(spec.limits.timeout_ms.max(spec.limits.cpu_budget_ms));
    let expires = now
        .saturating_add(u64::try_from((time + DELEGATION_SLACK).as_millis()).unwrap_or(u64::MAX));
    let max = u32::try_from(MAX_SUBTASKS).unwrap_or(u32::MAX);
    let held = &spec.auth.credential;
    let held = if held.tenant.is_empty() {
        Credential::of(keypair)
    } else {
        held.clone()
    };
    spec.auth.credential = held.delegate(keypair, peer, expires, spec.id(), max)?;
    spec.sign(keypair, now, nonce())
}
