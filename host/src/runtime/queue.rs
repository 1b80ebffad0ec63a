//! The queue between `Runtime::run` and the slot threads: one FIFO per tenant, served round
//! robin, so a tenant that floods a node delays another's task by at most one of its own per
//! slot, not by its whole backlog; and bounds on what each tenant may have waiting.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
};

/// Whose queue a task waits in: a remote tenant by name, or `None` for the node's own tasks.
pub(super) type Tenant = Option<String>;

/// Tasks one tenant may have waiting (for memory or for a slot) before its next is refused.
pub const MAX_QUEUED_PER_TENANT: usize = 1024;
/// Tasks all tenants together may have waiting before another tenant's task is refused.
pub const MAX_QUEUED: usize = 4096;

/// Why a task was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueFull {
    /// The tenant already has [`MAX_QUEUED_PER_TENANT`] tasks waiting.
    #[error("this node's queue for tenant {tenant} is full ({limit} tasks)")]
    Tenant {
        /// The tenant refused.
        tenant: String,
        /// Its bound.
        limit: usize,
    },
    /// All tenants together have [`MAX_QUEUED`] tasks waiting.
    #[error("this node's task queue is full ({limit} tasks from all tenants)")]
    Node {
        /// The node's bound.
        limit: usize,
    },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many tasks each tenant has waiting, counted from admission until a slot takes them.
#[derive(Default)]
pub(super) struct Admission {
    held: Mutex<(HashMap<Tenant, usize>, usize)>,
}

/// One waiting task's place in its tenant's count; dropping it gives the place back.
pub(super) struct Place {
    admission: Arc<Admission>,
    tenant: Tenant,
}

impl Admission {
    /// Counts a task of `tenant` in, or refuses it when its tenant's or the node's bound is
    /// reached. The node's own tasks are never refused here: their callers wait for room
    /// instead (see `Runtime::run_reporting`), as they always have.
    pub(super) fn admit(self: &Arc<Self>, tenant: Tenant) -> Result<Place, QueueFull> {
        let mut held = lock(&self.held);
        let (by_tenant, total) = &mut *held;
        let n = by_tenant.get(&tenant).copied().unwrap_or(0);
        if let Some(name) = &tenant {
            if n >= MAX_QUEUED_PER_TENANT {
                return Err(QueueFull::Tenant {
                    tenant: name.clone(),
                    limit: MAX_QUEUED_PER_TENANT,
                });
            }
            if *total >= MAX_QUEUED {
                return Err(QueueFull::Node { limit: MAX_QUEUED });
            }
        }
        by_tenant.insert(tenant.clone(), n + 1);
        *total += 1;
        Ok(Place {
            admission: self.clone(),
            tenant,
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut held = lock(&self.admission.held);
        let (by_tenant, total) = &mut *held;
        *total = total.saturating_sub(1);
        if let Some(n) = by_tenant.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_tenant.remove(&self.tenant);
            }
        }
    }
}

/// Per-tenant FIFOs served round robin (deficit round robin where every task costs one
/// unit): each tenant with a task waiting gets one task taken in turn. Slot threads block in
/// [`FairQueue::pop`]; closing the queue wakes and ends them.
pub(super) struct FairQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

struct State<T> {
    waiting: HashMap<Tenant, VecDeque<T>>,
    /// Tenants with a task waiting, in the order they are next served.
    turn: VecDeque<Tenant>,
    closed: bool,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                waiting: HashMap::new(),
                turn: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }
}

impl<T> FairQueue<T> {
    /// Queues `item` behind `tenant`'s earlier ones. Bounds are the [`Admission`]'s job; a
    /// closed queue hands the item back.
    pub(super) fn push(&self, tenant: Tenant, item: T) -> Result<(), T> {
        let mut state = lock(&self.state);
        if state.closed {
            return Err(item);
        }
        let queue = state.waiting.entry(tenant.clone()).or_default();
        queue.push_back(item);
        if queue.len() == 1 {
            state.turn.push_back(tenant);
        }
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// The next item, in turn: blocks until there is one; `None` once the queue is closed.
    pub(super) fn pop(&self) -> Option<T> {
        let mut state = lock(&self.state);
        loop {
            if state.closed {
                return None;
            }
            if let Some(tenant) = state.turn.pop_front() {
                let Some(queue) = state.waiting.get_mut(&tenant) else {
                    continue;
                };
                let item = queue.pop_front();
                if queue.is_empty() {
                    state.waiting.remove(&tenant);
                } else {
                    state.turn.push_back(tenant);
                }
                if let Some(item) = item {
                    return Some(item);
                }
                continue;
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Ends every [`FairQueue::pop`], now and later, and drops what was waiting.
    pub(super) fn close(&self) {
        let waiting = {
            let mut state = lock(&self.state);
            state.closed = true;
            state.turn.clear();
            std::mem::take(&mut state.waiting)
        };
        // Dropped outside the lock: a waiting job's reply and progress sink may run code.
        drop(waiting);
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_served_in_turn_and_each_in_order() {
        let queue = FairQueue::default();
        let a = Some("a".to_owned());
        let b = Some("b".to_owned());
        for i in 0..5 {
            queue.push(a.clone(), ("a", i)).expect("open");
        }
        queue.push(b.clone(), ("b", 0)).expect("open");
        queue.push(None, ("own", 0)).expect("open");
        queue.push(b, ("b", 1)).expect("open");
        let order: Vec<_> = (0..8).map(|_| queue.pop().expect("queued")).collect();
        assert_eq!(
            order,
            [
                ("a", 0),
                ("b", 0),
                ("own", 0),
                ("a", 1),
                ("b", 1),
                ("a", 2),
                ("a", 3),
                ("a", 4)
            ]
        );
        queue.close();
        assert_eq!(queue.pop(), None);
        assert!(queue.push(a, ("a", 5)).is_err());
    }

    #[test]
    fn a_tenant_past_its_bound_is_refused_and_others_are_not() {
        let admission = Arc::new(Admission::default());
        let a = Some("a".to_owned());
        let places: Vec<_> = (0..MAX_QUEUED_PER_TENANT)
            .map(|_| admission.admit(a.clone()).expect("room"))
            .collect();
        let full = admission.admit(a.clone()).err().expect("full");
        assert_eq!(
            full.to_string(),
            "this node's queue for tenant a is full (1024 tasks)"
        );
        assert!(admission.admit(Some("b".to_owned())).is_ok());
        assert!(admission.admit(None).is_ok());
        drop(places);
        assert!(admission.admit(a).is_ok(), "places come back");
    }

    #[test]
    fn the_node_bound_holds_across_tenants() {
        let admission = Arc::new(Admission::default());
        let places: Vec<_> = (0..MAX_QUEUED)
            .map(|i| {
                let tenant = Some(format!("t{}", i % 8));
                admission.admit(tenant).expect("room")
            })
            .collect();
        assert_eq!(
            admission.admit(Some("new".to_owned())).err(),
            Some(QueueFull::Node { limit: MAX_QUEUED })
        );
        drop(places);
    }
}
