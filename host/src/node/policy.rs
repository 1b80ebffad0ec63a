//! Whose tasks this node runs, and how much of it each tenant may have: `host join`'s
//! `--accept`, `--allow` and `--open-max-*`. A task outside the policy is refused `Denied`,
//! naming the limit, before anything is fetched for it. Also the replay window: a signed
//! spec is run at most once, and only while it is fresh.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use shoal_p2p::{PeerId, TaskAuth, TaskLimits};

use crate::runtime::limits::{fmt_bytes as fmt_small, fmt_duration};

/// A size in whole GiB where it is one (a task's memory reads `4 GiB`, not `4096 MiB`).
fn fmt_bytes(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else {
        fmt_small(bytes)
    }
}

/// Which tenants a node runs tasks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Accept {
    /// Anyone's, allowlisted tenants with the node's full caps, others within the open limits.
    #[default]
    Open,
    /// Allowlisted tenants' only.
    Allowlist,
}

/// A node's admission policy for other peers' tasks. The node's own identity is always
/// allowlisted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Whom it runs tasks for.
    pub accept: Accept,
    /// Tenants (their peer ids) with the node's full caps (4 GiB of memory, 1 h, every slot).
    pub allow: HashSet<PeerId>,
    /// The most memory an open tenant's task may ask.
    pub open_max_memory: u64,
    /// The longest wall time (and CPU budget) an open tenant's task may ask.
    pub open_max_time: Duration,
    /// An open tenant's tasks running here at once.
    pub open_max_tasks: usize,
    /// The bytes of an open tenant's files (inputs fetched for it, its outputs) this node
    /// keeps.
    pub open_max_stored: u64,
}

/// `--open-max-memory`'s default.
pub const OPEN_MAX_MEMORY: u64 = 256 << 20;
/// `--open-max-time`'s default: a peer may ask at most an hour anyway, and `host train`'s
/// driver asks 30 minutes.
pub const OPEN_MAX_TIME: Duration = Duration::from_secs(3600);
/// `--open-max-tasks`'s default: one submitter's share of a peer's inbound tasks
/// ([`shoal_p2p::DEFAULT_MAX_INBOUND_TASKS_PER_PEER`]), so a lone submitter never meets it.
pub const OPEN_MAX_TASKS: usize = shoal_p2p::DEFAULT_MAX_INBOUND_TASKS_PER_PEER;
/// `--open-max-stored`'s default.
pub const OPEN_MAX_STORED: u64 = 1 << 30;

impl Default for Policy {
    fn default() -> Self {
        Self {
            accept: Accept::Open,
            allow: HashSet::new(),
            open_max_memory: OPEN_MAX_MEMORY,
            open_max_time: OPEN_MAX_TIME,
            open_max_tasks: OPEN_MAX_TASKS,
            open_max_stored: OPEN_MAX_STORED,
        }
    }
}

/// Open tenants' tasks running here, by tenant.
type Running = Arc<Mutex<HashMap<PeerId, usize>>>;

/// Tasks running here per open tenant, counted while their [`Admitted`] lives.
#[derive(Default)]
pub(super) struct Tenants {
    running: Running,
}

/// A task let in under the policy; dropping it frees its tenant's place.
pub(super) struct Admitted {
    counted: Option<(PeerId, Running)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((tenant, running)) = self.counted.take() {
            let mut running = running.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = running.get_mut(&tenant) {
                *n -= 1;
                if *n == 0 {
                    running.remove(&tenant);
                }
            }
        }
    }
}

impl Tenants {
    /// Lets `tenant`'s task asking `limits` in under `policy` (`me` is this node), with
    /// `stored` bytes of the tenant's files here already, or says why not.
    pub(super) fn admit(
        &self,
        policy: &Policy,
        me: PeerId,
        tenant: PeerId,
        limits: &TaskLimits,
        stored: u64,
    ) -> Result<Admitted, String> {
        if tenant == me || policy.allow.contains(&tenant) {
            return Ok(Admitted { counted: None });
        }
        if stored >= policy.open_max_stored {
            return Err(stored_over(tenant, stored, policy));
        }
        if policy.accept == Accept::Allowlist {
            return Err(format!("tenant {tenant} is not on this node's allowlist"));
        }
        if limits.memory_bytes > policy.open_max_memory {
            return Err(format!(
                "task asks {} of memory, open tenants get at most {} on this node",
                fmt_bytes(limits.memory_bytes),
                fmt_bytes(policy.open_max_memory)
            ));
        }
        let asked = Duration::from_millis(limits.timeout_ms.max(limits.cpu_budget_ms));
        if asked > policy.open_max_time {
            return Err(format!(
                "task asks {} of time, open tenants get at most {} on this node",
                fmt_duration(asked),
                fmt_duration(policy.open_max_time)
            ));
        }
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let n = running.entry(tenant).or_default();
        if *n >= policy.open_max_tasks {
            let n = *n;
            return Err(format!(
                "tenant {tenant} already runs {n} tasks here, its limit"
            ));
        }
        *n += 1;
        Ok(Admitted {
            counted: Some((tenant, self.running.clone())),
        })
    }

    /// Whether an open `tenant` with `stored` bytes here (its inputs fetched) is within its
    /// stored-bytes quota. Its outputs are counted when its next task asks.
    pub(super) fn check_stored(
        &self,
        policy: &Policy,
        me: PeerId,
        tenant: PeerId,
        stored: u64,
    ) -> Result<(), String> {
        let open = tenant != me && !policy.allow.contains(&tenant);
        if open && stored > policy.open_max_stored {
            return Err(stored_over(tenant, stored, policy));
        }
        Ok(())
    }
}

fn stored_over(tenant: PeerId, stored: u64, policy: &Policy) -> String {
    format!(
        "tenant {tenant} stores {} on this node, over its {} stored-bytes quota",
        crate::store::space::fmt_bytes(stored),
        fmt_bytes(policy.open_max_stored)
    )
}

/// How long a signed spec is accepted after it was signed. Submitters sign each attempt
/// when they send it, so only a wait on the wire or a clock set wrong counts against it.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(600);
/// How far ahead of this node's clock a signing time may be.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Specs remembered at most, and driver delegations whose subtasks are counted.
const MAX_REMEMBERED: usize = 1 << 20;

/// What this node has seen of signed specs: the signatures of those run here within the
/// replay window (with their signing times, by tenant), and how many subtasks it has run
/// under each driver's delegation (with its expiry).
pub(super) struct Seen {
    replays: Mutex<Replays>,
    /// By the driver's delegation: subtasks run under it, its expiry, and its tenant.
    subtasks: Mutex<HashMap<shoal::abi::Cid, (u32, u64, PeerId)>>,
    capacity: usize,
}

/// Signatures seen within the replay window, each with its signing time, and each tenant's in
/// the order they came.
#[derive(Default)]
struct Replays {
    signed: HashMap<shoal::abi::Cid, u64>,
    by_tenant: HashMap<PeerId, std::collections::VecDeque<shoal::abi::Cid>>,
}

impl Default for Seen {
    fn default() -> Self {
        Self::with_capacity(MAX_REMEMBERED)
    }
}

impl Seen {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            replays: Mutex::default(),
            subtasks: Mutex::default(),
            capacity,
        }
    }

    /// Accepts a spec signed at `auth.issued_at_ms` once, within the window around `now_ms`,
    /// and a subtask only within its driver's subtask budget as far as this node has seen it;
    /// says why not otherwise. Call it after the spec's signatures are verified, with the
    /// tenant they proved.
    pub(super) fn check(&self, tenant: PeerId, auth: &TaskAuth, now_ms: u64) -> Result<(), String> {
        self.fresh(tenant, auth, now_ms)?;
        self.within_budget(tenant, auth, now_ms)
    }

    /// The subtask budget of the link that delegated to the driver's node: counted here, so
    /// a driver's node cannot send one executor more subtasks than the tenant allowed.
    fn within_budget(&self, tenant: PeerId, auth: &TaskAuth, now_ms: u64) -> Result<(), String> {
        let chain = &auth.credential.chain;
        let Some(parent) = chain.len().checked_sub(2).map(|i| &chain[i]) else {
            return Ok(());
        };
        let mut counts = self.subtasks.lock().unwrap_or_else(PoisonError::into_inner);
        let key = shoal::abi::Cid::of(&parent.signature);
        if counts.len() >= self.capacity && !counts.contains_key(&key) {
            counts.retain(|_, (_, expires, _)| *expires > now_ms);
        }
        if counts.len() >= self.capacity && !counts.contains_key(&key) {
            // Full of live delegations: the tenant with the most forgets a sixteenth of them,
            // which lets only its own drivers start their counts over here.
            let mut per_tenant: HashMap<PeerId, usize> = HashMap::new();
            for (_, _, t) in counts.values() {
                *per_tenant.entry(*t).or_default() += 1;
            }
            if let Some((most, _)) = per_tenant.into_iter().max_by_key(|(_, n)| *n) {
                let mut forget = (self.capacity / 16).max(1);
                counts.retain(|_, (_, _, t)| {
                    let keep = *t != most || forget == 0;
                    forget -= usize::from(!keep);
                    keep
                });
            }
        }
        let (count, _, _) = counts
            .entry(key)
            .or_insert((0, parent.expires_at_ms, tenant));
        if *count >= parent.max_subtasks {
            return Err(format!(
                "the driver's delegation allows {} subtasks, and this node has run them all",
                parent.max_subtasks
            ));
        }
        *count += 1;
        Ok(())
    }

    fn fresh(&self, tenant: PeerId, auth: &TaskAuth, now_ms: u64) -> Result<(), String> {
        let window = u64::try_from(REPLAY_WINDOW.as_millis()).unwrap_or(u64::MAX);
        let skew = u64::try_from(CLOCK_SKEW.as_millis()).unwrap_or(u64::MAX);
        let issued = auth.issued_at_ms;
        if issued.saturating_add(window) < now_ms {
            return Err(format!(
                "the task was signed {} ago, outside this node's {} replay window",
                fmt_duration(Duration::from_millis(now_ms - issued)),
                fmt_duration(REPLAY_WINDOW)
            ));
        }
        if issued > now_ms.saturating_add(skew) {
            return Err("the task is signed with a time ahead of this node's clock".into());
        }
        let signature = shoal::abi::Cid::of(&auth.signature);
        let mut replays = self.replays.lock().unwrap_or_else(PoisonError::into_inner);
        let Replays { signed, by_tenant } = &mut *replays;
        if signed.contains_key(&signature) {
            return Err("this signed task was already received here: a replay".into());
        }
        if signed.len() >= self.capacity {
            signed.retain(|_, at| at.saturating_add(window) >= now_ms);
            by_tenant.retain(|_, sigs| {
                sigs.retain(|s| signed.contains_key(s));
                !sigs.is_empty()
            });
        }
        if signed.len() >= self.capacity {
            // Full within the window: the tenants with the most signatures remembered forget
            // their oldest, so one tenant's flood costs only its own tasks their replay
            // protection, never another tenant its place. A sixteenth at a time, so that
            // this and the pruning above are not paid for every spec.
            let target = self.capacity - (self.capacity / 16).max(1);
            let mut most: std::collections::BinaryHeap<(usize, PeerId)> =
                by_tenant.iter().map(|(t, sigs)| (sigs.len(), *t)).collect();
            while signed.len() > target
                && let Some((_, tenant)) = most.pop()
                && let Some(sigs) = by_tenant.get_mut(&tenant)
                && let Some(oldest) = sigs.pop_front()
            {
                signed.remove(&oldest);
                most.push((sigs.len(), tenant));
            }
        }
        signed.insert(signature, issued);
        by_tenant.entry(tenant).or_default().push_back(signature);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(memory_mib: u64, secs: u64) -> TaskLimits {
        TaskLimits {
            memory_bytes: memory_mib << 20,
            timeout_ms: secs * 1000,
            cpu_budget_ms: secs * 1000,
        }
    }

    #[test]
    fn open_tenants_get_the_open_limits_and_allowed_ones_the_nodes() {
        let (me, friend, stranger) = (PeerId::random(), PeerId::random(), PeerId::random());
        let policy = Policy {
            allow: [friend].into(),
            open_max_tasks: 2,
            ..Policy::default()
        };
        let tenants = Tenants::default();
        let big = limits(4096, 3600);
        assert!(tenants.admit(&policy, me, me, &big, 0).is_ok());
        assert!(tenants.admit(&policy, me, friend, &big, 0).is_ok());
        let e = tenants.admit(&policy, me, stranger, &big, 0).err().unwrap();
        assert_eq!(
            e,
            "task asks 4 GiB of memory, open tenants get at most 256 MiB on this node"
        );
        let e = tenants
            .admit(&policy, me, stranger, &limits(256, 7200), 0)
            .err()
            .unwrap();
        assert!(e.contains("open tenants get at most 3600 s"), "{e}");
        let small = limits(64, 60);
        let one = tenants.admit(&policy, me, stranger, &small, 0).unwrap();
        let _two = tenants.admit(&policy, me, stranger, &small, 0).unwrap();
        let e = tenants
            .admit(&policy, me, stranger, &small, 0)
            .err()
            .unwrap();
        assert_eq!(
            e,
            format!("tenant {stranger} already runs 2 tasks here, its limit")
        );
        drop(one);
        assert!(tenants.admit(&policy, me, stranger, &small, 0).is_ok());
        let closed = Policy {
            accept: Accept::Allowlist,
            ..policy
        };
        let e = tenants
            .admit(&closed, me, stranger, &small, 0)
            .err()
            .unwrap();
        assert_eq!(
            e,
            format!("tenant {stranger} is not on this node's allowlist")
        );
        assert!(tenants.admit(&closed, me, friend, &big, 0).is_ok());
    }

    #[test]
    fn open_tenants_are_refused_past_their_stored_bytes() {
        let (me, stranger) = (PeerId::random(), PeerId::random());
        let policy = Policy {
            open_max_stored: 10 << 20,
            ..Policy::default()
        };
        let tenants = Tenants::default();
        let small = limits(64, 60);
        assert!(
            tenants
                .admit(&policy, me, stranger, &small, 9 << 20)
                .is_ok()
        );
        let e = tenants
            .admit(&policy, me, stranger, &small, 10 << 20)
            .err()
            .unwrap();
        assert_eq!(
            e,
            format!(
                "tenant {stranger} stores 10 MiB on this node, over its 10 MiB stored-bytes quota"
            )
        );
        assert!(
            tenants
                .check_stored(&policy, me, stranger, 10 << 20)
                .is_ok()
        );
        assert!(
            tenants
                .check_stored(&policy, me, stranger, 11 << 20)
                .is_err()
        );
        assert!(tenants.check_stored(&policy, me, me, u64::MAX).is_ok());
    }

    #[test]
    fn a_signed_spec_runs_once_and_only_while_fresh() {
        let (replays, me) = (Seen::default(), PeerId::random());
        let now = 10_000_000;
        let auth = |issued_at_ms, signature: &[u8]| TaskAuth {
            issued_at_ms,
            signature: signature.to_vec(),
            ..TaskAuth::default()
        };
        assert!(replays.check(me, &auth(now - 1_000, b"a"), now).is_ok());
        let e = replays
            .check(me, &auth(now - 1_000, b"a"), now)
            .unwrap_err();
        assert!(e.contains("a replay"), "{e}");
        assert!(replays.check(me, &auth(now - 1_000, b"b"), now).is_ok());
        let e = replays
            .check(me, &auth(now - 700_000, b"c"), now)
            .unwrap_err();
        assert!(e.contains("outside this node's 600 s replay window"), "{e}");
        assert!(replays.check(me, &auth(now + 120_000, b"d"), now).is_err());
    }

    #[test]
    fn a_flood_of_one_tenants_specs_costs_no_other_tenant_its_place() {
        let seen = Seen::with_capacity(4);
        let (flooder, other) = (PeerId::random(), PeerId::random());
        let now = 10_000_000;
        let auth = |n: u32| TaskAuth {
            issued_at_ms: now,
            signature: n.to_be_bytes().to_vec(),
            ..TaskAuth::default()
        };
        assert!(seen.check(other, &auth(0), now).is_ok());
        for n in 1..100 {
            assert!(seen.check(flooder, &auth(n), now).is_ok(), "{n}");
        }
        // The other tenant was let in, and its spec is still known: a replay of it is not.
        assert!(seen.check(other, &auth(100), now).is_ok());
        assert!(
            seen.check(other, &auth(0), now)
                .unwrap_err()
                .contains("a replay")
        );
        // The flooder's oldest were forgotten to make room.
        assert!(seen.check(flooder, &auth(1), now).is_ok());
        let replays = seen.replays.lock().unwrap();
        assert!(replays.signed.len() <= 4, "{}", replays.signed.len());
    }

    #[test]
    fn a_tenant_filling_the_budget_memory_forgets_its_own_not_anothers() {
        use shoal_p2p::{Credential, Keypair};
        let seen = Seen::with_capacity(4);
        let now = 10_000_000;
        let worker = PeerId::random();
        // A subtask under a fresh driver delegation of `tenant`'s, signed `n`.
        let subtask = |tenant: &Keypair, n: u8| {
            let driver = Keypair::generate_ed25519();
            let held = Credential::of(tenant)
                .delegate(
                    tenant,
                    driver.public().to_peer_id(),
                    u64::MAX,
                    shoal::abi::Cid([n; 32]),
                    1,
                )
                .unwrap();
            TaskAuth {
                credential: held
                    .delegate(&driver, worker, u64::MAX, shoal::abi::Cid([n; 32]), 1)
                    .unwrap(),
                issued_at_ms: now,
                nonce: 0,
                signature: vec![n],
            }
        };
        let (flooder, other) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (flooder_id, other_id) = (flooder.public().to_peer_id(), other.public().to_peer_id());
        let other_first = subtask(&other, 0);
        assert!(seen.check(other_id, &other_first, now).is_ok());
        for n in 1..10 {
            assert!(
                seen.check(flooder_id, &subtask(&flooder, n), now).is_ok(),
                "{n}"
            );
        }
        // The other tenant's count was kept: its driver's second subtask is over its budget.
        let again = TaskAuth {
            signature: vec![100],
            ..other_first
        };
        assert!(
            seen.check(other_id, &again, now)
                .unwrap_err()
                .contains("allows 1 subtasks")
        );
    }

    #[test]
    fn a_drivers_subtasks_are_counted_against_its_delegation() {
        use shoal_p2p::{Credential, Keypair};
        let (tenant, driver) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let worker = PeerId::random();
        let held = Credential::of(&tenant)
            .delegate(
                &tenant,
                driver.public().to_peer_id(),
                u64::MAX,
                shoal::abi::Cid([1; 32]),
                2,
            )
            .unwrap();
        let seen = Seen::default();
        let now = 10_000_000;
        let subtask = |n: u8| TaskAuth {
            credential: held
                .delegate(&driver, worker, u64::MAX, shoal::abi::Cid([n; 32]), 2)
                .unwrap(),
            issued_at_ms: now,
            nonce: 0,
            signature: vec![n],
        };
        assert!(seen.check(worker, &subtask(1), now).is_ok());
        assert!(seen.check(worker, &subtask(2), now).is_ok());
        assert_eq!(
            seen.check(worker, &subtask(3), now).unwrap_err(),
            "the driver's delegation allows 2 subtasks, and this node has run them all"
        );
        // A user's own task (one link) has no driver budget to count.
        let own = TaskAuth {
            credential: Credential::of(&tenant)
                .delegate(&tenant, worker, u64::MAX, shoal::abi::Cid([9; 32]), 2)
                .unwrap(),
            issued_at_ms: now,
            nonce: 0,
            signature: vec![9],
        };
        assert!(seen.check(worker, &own, now).is_ok());
    }
}
