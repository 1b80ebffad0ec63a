//! Whose tasks this node runs, and how much of it each tenant may have: `host join`'s
//! `--accept`, `--allow` and `--open-max-*`. A task outside the policy is refused `Denied`,
//! naming the limit, before anything is fetched for it.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use shoal_p2p::{PeerId, TaskLimits};

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
}

/// `--open-max-memory`'s default.
pub const OPEN_MAX_MEMORY: u64 = 256 << 20;
/// `--open-max-time`'s default: a peer may ask at most an hour anyway, and `host train`'s
/// driver asks 30 minutes.
pub const OPEN_MAX_TIME: Duration = Duration::from_secs(3600);
/// `--open-max-tasks`'s default: one submitter's share of a peer's inbound tasks
/// ([`shoal_p2p::DEFAULT_MAX_INBOUND_TASKS_PER_PEER`]), so a lone submitter never meets it.
pub const OPEN_MAX_TASKS: usize = shoal_p2p::DEFAULT_MAX_INBOUND_TASKS_PER_PEER;

impl Default for Policy {
    fn default() -> Self {
        Self {
            accept: Accept::Open,
            allow: HashSet::new(),
            open_max_memory: OPEN_MAX_MEMORY,
            open_max_time: OPEN_MAX_TIME,
            open_max_tasks: OPEN_MAX_TASKS,
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
    /// Lets `tenant`'s task asking `limits` in under `policy` (`me` is this node), or says
    /// why not.
    pub(super) fn admit(
        &self,
        policy: &Policy,
        me: PeerId,
        tenant: PeerId,
        limits: &TaskLimits,
    ) -> Result<Admitted, String> {
        if tenant == me || policy.allow.contains(&tenant) {
            return Ok(Admitted { counted: None });
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
        assert!(tenants.admit(&policy, me, me, &big).is_ok());
        assert!(tenants.admit(&policy, me, friend, &big).is_ok());
        let e = tenants.admit(&policy, me, stranger, &big).err().unwrap();
        assert_eq!(
            e,
            "task asks 4 GiB of memory, open tenants get at most 256 MiB on this node"
        );
        let e = tenants
            .admit(&policy, me, stranger, &limits(256, 7200))
            .err()
            .unwrap();
        assert!(e.contains("open tenants get at most 3600 s"), "{e}");
        let small = limits(64, 60);
        let one = tenants.admit(&policy, me, stranger, &small).unwrap();
        let _two = tenants.admit(&policy, me, stranger, &small).unwrap();
        let e = tenants.admit(&policy, me, stranger, &small).err().unwrap();
        assert_eq!(
            e,
            format!("tenant {stranger} already runs 2 tasks here, its limit")
        );
        drop(one);
        assert!(tenants.admit(&policy, me, stranger, &small).is_ok());
        let closed = Policy {
            accept: Accept::Allowlist,
            ..policy
        };
        let e = tenants.admit(&closed, me, stranger, &small).err().unwrap();
        assert_eq!(
            e,
            format!("tenant {stranger} is not on this node's allowlist")
        );
        assert!(tenants.admit(&closed, me, friend, &big).is_ok());
    }
}
