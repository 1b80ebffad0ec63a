//! Placement across the mesh: picks a peer by advertised capacity (preferring peers that
//! already hold the inputs), runs the task there, retries elsewhere when a peer is lost or
//! busy, and fans a `--map` out over the mesh with results in input order.
//!
//! The scheduler owns what it uses: a network client, the local runtime and store. The other
//! side, running a task another peer sent, is the node's.

mod progress;
mod wire;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use futures::{StreamExt, future::join_all, stream};
use shoal_p2p::{Capacity, NetworkClient, PeerId, TaskOutcome};
use tracing::Instrument;

pub use self::{
    progress::ProgressRoutes,
    wire::{report_from_wire, report_to_wire, spec_from_wire, spec_to_wire},
};
use crate::{
    runtime::{FailureKind, Progress, Runtime, TaskReport, TaskSpec},
    store::{BlockStore, Cid},
};

/// Tries per task before giving up on a lost or busy peer.
const MAX_ATTEMPTS: usize = 5;
/// Our tasks in flight on one remote peer: its default inbound task limit, so that one
/// submitter alone never makes a peer answer "busy".
const REMOTE_IN_FLIGHT: usize = shoal_p2p::DEFAULT_MAX_INBOUND_TASKS;
/// How long advertised capacities are trusted.
const CAPACITY_TTL: Duration = Duration::from_secs(2);
/// The most map items in flight at once, whatever the mesh's size.
const MAX_MAP_PARALLEL: usize = 256;

/// A finished task and the peer it ran on.
#[derive(Clone, Debug)]
pub struct Placed {
    /// Where it ran (the last peer tried, for a failure).
    pub peer: PeerId,
    /// Its outputs or failure, logs and stats.
    pub report: TaskReport,
}

/// Where a submitted task's progress records go, with the peer that is running it.
pub type Reporter = Arc<dyn Fn(PeerId, Vec<u8>) + Send + Sync>;

/// Progress of a map, for the progress bar.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct MapProgress {
    /// Items finished successfully.
    pub done: usize,
    /// Items running.
    pub running: usize,
    /// Items failed.
    pub failed: usize,
    /// Items in all.
    pub total: usize,
}

/// The capacity a node with this runtime advertises; `slots` 0 means it runs no tasks for the
/// mesh.
pub fn capacity(runtime: &Runtime, slots: usize, has_gpu: bool) -> Capacity {
    let (total, free) = match slots {
        0 => (0, 0),
        _ => (runtime.slots(), runtime.free_slots()),
    };
    Capacity {
        free_slots: free as u32,
        total_slots: total as u32,
        has_gpu,
        queue_len: runtime.queue_len() as u32,
    }
}

/// The submitting side's view of the mesh: cached capacities and its own tasks in flight.
pub struct Scheduler {
    net: NetworkClient,
    runtime: Runtime,
    store: Arc<BlockStore>,
    /// This node's own slots for the mesh: 0 keeps every task off it.
    local_slots: usize,
    capacities: Mutex<HashMap<PeerId, (Instant, Capacity)>>,
    in_flight: Mutex<HashMap<PeerId, i64>>,
    remote_permits: Mutex<HashMap<PeerId, Arc<tokio::sync::Semaphore>>>,
    progress: Arc<ProgressRoutes>,
}

/// Locks `m`, whether or not a panic poisoned it: every update to these maps is one step.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Scheduler {
    /// A scheduler that places tasks through `net`, running local ones on `runtime`; remote
    /// runs' progress records come back through `progress`.
    pub fn new(
        net: NetworkClient,
        runtime: Runtime,
        store: Arc<BlockStore>,
        local_slots: usize,
        progress: Arc<ProgressRoutes>,
    ) -> Self {
        Self {
            net,
            runtime,
            store,
            local_slots,
            progress,
            capacities: Mutex::default(),
            in_flight: Mutex::default(),
            remote_permits: Mutex::default(),
        }
    }

    fn adjust(&self, peer: PeerId, by: i64) {
        *lock(&self.in_flight).entry(peer).or_default() += by;
    }

    /// Capacities of the candidates, asked concurrently and cached briefly.
    async fn capacities(&self, peers: &[PeerId]) -> Vec<(PeerId, Capacity)> {
        let me = self.net.local_peer_id();
        let asks = peers.iter().map(|&peer| async move {
            if peer == me {
                return Some((peer, capacity(&self.runtime, self.local_slots, false)));
            }
            if let Some((at, cap)) = lock(&self.capacities).get(&peer)
                && at.elapsed() < CAPACITY_TTL
            {
                return Some((peer, *cap));
            }
            let cap = self.net.capacity(peer).await.ok()?;
            lock(&self.capacities).insert(peer, (Instant::now(), cap));
            Some((peer, cap))
        });
        join_all(asks).await.into_iter().flatten().collect()
    }

    /// Chooses a peer: the most free slots after counting our own tasks in flight, preferring
    /// peers that hold the task's inputs.
    async fn pick(&self, spec: &TaskSpec, exclude: &HashSet<PeerId>) -> Option<PeerId> {
        let me = self.net.local_peer_id();
        let mut candidates = self.net.connected_peers().await.unwrap_or_default();
        if self.local_slots > 0 {
            candidates.push(me);
        }
        candidates.retain(|p| !exclude.contains(p));
        let capacities = self.capacities(&candidates).await;
        let mut holders: HashMap<PeerId, usize> = HashMap::new();
        for (_, cid) in &spec.inputs {
            if let Ok(found) = self.net.find_providers(*cid).await {
                for peer in found {
                    *holders.entry(peer).or_default() += 1;
                }
            }
            if self.store.has_block(cid) {
                *holders.entry(me).or_default() += 1;
            }
        }
        let in_flight = lock(&self.in_flight).clone();
        capacities
            .into_iter()
            .filter(|(_, cap)| cap.total_slots > 0)
            .max_by_key(|(peer, cap)| {
                let ours = in_flight.get(peer).copied().unwrap_or(0);
                let free = i64::from(cap.total_slots) - i64::from(cap.queue_len) - ours;
                // Free capacity first; among equals, the peer holding more inputs.
                (free.max(0), holders.get(peer).copied().unwrap_or(0), free)
            })
            .map(|(peer, _)| peer)
    }

    /// Runs one task on the mesh (or on `on`), retrying elsewhere if its peer is lost.
    pub async fn submit(&self, spec: TaskSpec, on: Option<PeerId>) -> Placed {
        self.submit_reporting(spec, on, None).await
    }

    /// [`Scheduler::submit`], handing the task's progress records, with the peer running it,
    /// to `progress` as it runs (those of every attempt, if it is retried).
    pub async fn submit_reporting(
        &self,
        spec: TaskSpec,
        on: Option<PeerId>,
        progress: Option<Reporter>,
    ) -> Placed {
        let span = tracing::info_span!("task", id = %spec_to_wire(&spec, 0).id());
        self.place(spec, on, progress).instrument(span).await
    }

    async fn place(
        &self,
        spec: TaskSpec,
        on: Option<PeerId>,
        progress: Option<Reporter>,
    ) -> Placed {
        let me = self.net.local_peer_id();
        let mut tried = HashSet::new();
        let mut last = Placed {
            peer: me,
            report: TaskReport::lost("no peer in the mesh offers task slots".into()),
        };
        for _ in 0..MAX_ATTEMPTS {
            let peer = match on {
                Some(peer) => peer,
                None => match self.pick(&spec, &tried).await {
                    Some(peer) => peer,
                    None => return last,
                },
            };
            self.adjust(peer, 1);
            let progress: Option<Progress> = progress
                .clone()
                .map(|report| Arc::new(move |record| report(peer, record)) as Progress);
            let (report, busy) = if peer == me {
                let mut report = self
                    .runtime
                    .run_reporting(spec.clone(), progress.clone())
                    .await;
                report.stats.executed_by = Some(me.to_string());
                (report, false)
            } else {
                let permits = lock(&self.remote_permits)
                    .entry(peer)
                    .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(REMOTE_IN_FLIGHT)))
                    .clone();
                let _permit = permits.acquire_owned().await;
                let route = progress.clone().map(|p| self.progress.open(peer, p));
                let wire = spec_to_wire(&spec, route.as_ref().map_or(0, |r| r.token()));
                tracing::debug!(%peer, "sending the task");
                match self.net.submit_task(peer, wire).await {
                    Ok(TaskOutcome::Failed {
                        kind: shoal_p2p::FailureKind::Busy,
                        message,
                        ..
                    }) => (
                        TaskReport::lost(format!("peer {peer} is busy: {message}")),
                        true,
                    ),
                    Ok(outcome) => (report_from_wire(outcome), false),
                    Err(e @ shoal_p2p::Error::Busy { .. }) => {
                        (TaskReport::lost(e.to_string()), true)
                    }
                    Err(e) => (TaskReport::lost(format!("peer {peer}: {e}")), false),
                }
            };
            self.adjust(peer, -1);
            let lost_it = matches!(&report.result, Err(f) if f.kind == FailureKind::Lost);
            last = Placed { peer, report };
            if busy {
                // Busy is transient: back off, then try again (the same peer if pinned).
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            if !lost_it || on.is_some() {
                break;
            }
            tracing::info!(%peer, "task lost on peer; placing it elsewhere");
            tried.insert(peer);
        }
        last
    }

    /// Runs `base` once per item, with input `name` set to the item, spread over the mesh.
    /// Results come back in input order; `progress` sees every change.
    pub async fn map(
        &self,
        base: TaskSpec,
        name: &str,
        items: Vec<Cid>,
        on: Option<PeerId>,
        progress: impl Fn(MapProgress),
    ) -> Vec<Placed> {
        let state = Mutex::new(MapProgress {
            total: items.len(),
            ..MapProgress::default()
        });
        let update = |f: &dyn Fn(&mut MapProgress)| {
            let snapshot = {
                let mut s = lock(&state);
                f(&mut s);
                *s
            };
            progress(snapshot);
        };
        let mut all = self.net.connected_peers().await.unwrap_or_default();
        all.push(self.net.local_peer_id());
        let slots: usize = self
            .capacities(&all)
            .await
            .iter()
            .map(|(_, c)| c.total_slots as usize)
            .sum();
        let parallel = slots.clamp(1, MAX_MAP_PARALLEL);
        stream::iter(items)
            .map(|item| {
                let mut spec = base.clone();
                spec.inputs.retain(|(n, _)| n != name);
                spec.inputs.push((name.to_owned(), item));
                let update = &update;
                async move {
                    update(&|p| p.running += 1);
                    let placed = self.submit(spec, on).await;
                    let ok = placed.report.result.is_ok();
                    update(&|p| {
                        p.running -= 1;
                        if ok { p.done += 1 } else { p.failed += 1 }
                    });
                    placed
                }
            })
            .buffered(parallel)
            .collect()
            .await
    }
}
