//! Placement across the mesh: picks a peer by advertised capacity (preferring peers that
//! already hold the inputs), runs the task there, retries elsewhere when a peer is lost or
//! busy, runs a verified task on several peers and takes their agreed answer, and fans a
//! `--map` out over the mesh with results in input order.
//!
//! Claims a peer makes that cannot be checked (its capacity, its outputs) are trusted only as
//! far as its behaviour bears them out: a peer that answers Busy is backed off, and one caught
//! disagreeing with a verified majority is never chosen again (see `trust`).
//!
//! The scheduler owns what it uses: a network client, the local runtime and store. The other
//! side, running a task another peer sent, is the node's.

mod locations;
mod progress;
mod tenant;
mod trust;
mod verify;
mod wire;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use futures::{StreamExt, future::join_all, stream};
use shoal_p2p::{Capacity, Keypair, NetworkClient, PeerId, TaskOutcome};
use tracing::Instrument;

use self::trust::Trust;
pub use self::{
    locations::Locations,
    progress::ProgressRoutes,
    tenant::{now_ms, sign_for},
    verify::MAX_VERIFY,
    wire::{credential_of, report_from_wire, report_to_wire, spec_from_wire, spec_to_wire},
};
use crate::{
    runtime::{FailureKind, Progress, Runtime, TaskFailure, TaskReport, TaskSpec},
    store::{BlockStore, Cid},
};

/// Tries per task before giving up on a lost or busy peer (a wait for a backed-off peer
/// counts as one).
const MAX_ATTEMPTS: usize = 5;
/// Our tasks in flight on one remote peer: its default inbound task limit for one peer, so
/// that one submitter alone never makes a peer answer "busy".
const REMOTE_IN_FLIGHT: usize = shoal_p2p::DEFAULT_MAX_INBOUND_TASKS_PER_PEER;
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
    /// For a verified task, the peers whose runs gave the agreed answer (`peer` among them);
    /// empty otherwise, and when the runs did not agree.
    pub verified_by: Vec<PeerId>,
}

/// What placement may do next.
enum Pick {
    /// Run it there.
    Peer(PeerId),
    /// Every candidate left is backed off for answering Busy; the first is back after this.
    Wait(Duration),
    /// No candidate left.
    None,
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
    /// This node's identity: the tenant of what it submits, and the signer of subtasks it
    /// submits for other tenants' drivers.
    keypair: Keypair,
    runtime: Runtime,
    store: Arc<BlockStore>,
    /// This node's own slots for the mesh: 0 keeps every task off it.
    local_slots: usize,
    capacities: Mutex<HashMap<PeerId, (Instant, Capacity)>>,
    in_flight: Mutex<HashMap<PeerId, i64>>,
    remote_permits: Mutex<HashMap<PeerId, Arc<tokio::sync::Semaphore>>>,
    progress: Arc<ProgressRoutes>,
    /// Where remote runs left their outputs.
    locations: Arc<Locations>,
    /// Busy backoffs and faulty peers.
    trust: Mutex<Trust>,
    /// This node's identity as the store's grants name it (a base58 encoding: a few µs to
    /// make, so made once, not for every task sent).
    own_name: String,
}

/// Locks `m`, whether or not a panic poisoned it: every update to these maps is one step.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Scheduler {
    /// A scheduler that places tasks through `net`, signed with `keypair` (the node's
    /// identity), running local ones on `runtime`; remote runs' progress records come back
    /// through `progress`, and where their outputs are goes into `locations`.
    pub fn new(
        net: NetworkClient,
        keypair: Keypair,
        runtime: Runtime,
        store: Arc<BlockStore>,
        local_slots: usize,
        progress: Arc<ProgressRoutes>,
        locations: Arc<Locations>,
    ) -> Self {
        Self {
            own_name: keypair.public().to_peer_id().to_string(),
            net,
            keypair,
            runtime,
            store,
            local_slots,
            progress,
            locations,
            capacities: Mutex::default(),
            in_flight: Mutex::default(),
            remote_permits: Mutex::default(),
            trust: Mutex::default(),
        }
    }

    /// Peers marked faulty by this scheduler's verified runs, with the reason, oldest first.
    pub fn faulty_peers(&self) -> Vec<(PeerId, String)> {
        lock(&self.trust).faulty()
    }

    /// How much longer `peer` is left out of placement for answering Busy, if it is.
    pub fn backed_off(&self, peer: &PeerId) -> Option<Duration> {
        lock(&self.trust).backed_off(peer, Instant::now())
    }

    /// Why `spec` is wrong wherever it would run, said before any peer is asked: past the
    /// input or argument limits (no peer decodes it), or an input held here that is no file
    /// (a chunk, a stray block). A file known complete needs no manifest read.
    fn bad_input(&self, spec: &TaskSpec) -> Option<String> {
        if let Some(why) = crate::runtime::shape_error(spec.inputs.len(), spec.args.len()) {
            return Some(why);
        }
        spec.inputs.iter().find_map(|(name, cid)| {
            let held = !self.store.known_complete(cid) && self.store.has_block(cid);
            let e = held.then(|| self.store.manifest(cid).err()).flatten()?;
            Some(format!("input `{name}`: {e}"))
        })
    }

    /// Readies `spec`'s files for the peer it is sent to: what this node holds is granted to
    /// the spec's tenant (this node's own identity included), so the executor may fetch it
    /// here and nothing else; the peers known to hold the rest are returned, for the spec's
    /// `sources`.
    fn hand_over(&self, spec: &TaskSpec) -> Vec<Vec<u8>> {
        let tenant = credential_of(spec)
            .and_then(|c| c.tenant().ok())
            .map_or_else(|| self.own_name.clone(), |t| t.to_string());
        let mut sources = Vec::new();
        for cid in std::iter::once(spec.module).chain(spec.inputs.iter().map(|(_, c)| *c)) {
            if self.store.known_complete(&cid) || self.store.has_block(&cid) {
                if let Err(e) = self.store.grant(&cid, &tenant) {
                    tracing::warn!(%cid, error = %e, "cannot grant a task's input");
                }
            } else {
                for peer in self.locations.of(&cid) {
                    let peer = peer.to_bytes();
                    if !sources.contains(&peer) {
                        sources.push(peer);
                    }
                }
            }
        }
        // As many as a spec may carry (one a file); the executor asks the first few.
        sources.truncate(shoal::abi::MAX_TASK_INPUTS + 1);
        sources
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
            // A peer that does not answer offers nothing until the cache entry expires, so
            // later placements do not wait out its timeout again.
            let cap = self.net.capacity(peer).await.unwrap_or_else(|e| {
                tracing::debug!(%peer, "no capacity answer: {e}");
                Capacity::default()
            });
            lock(&self.capacities).insert(peer, (Instant::now(), cap));
            Some((peer, cap))
        });
        join_all(asks).await.into_iter().flatten().collect()
    }

    /// The peers placement may consider: connected ones and this node (if it has slots),
    /// less those marked faulty.
    async fn candidates(&self) -> Vec<PeerId> {
        let mut candidates = self.net.connected_peers().await.unwrap_or_default();
        if self.local_slots > 0 {
            candidates.push(self.net.local_peer_id());
        }
        let trust = lock(&self.trust);
        candidates.retain(|p| !trust.is_faulty(p));
        candidates
    }

    /// Chooses a peer outside `exclude`, faulty and backed-off peers: the most free slots
    /// after counting our own tasks in flight, preferring peers that hold the task's inputs.
    async fn pick(&self, spec: &TaskSpec, exclude: &HashSet<PeerId>) -> Pick {
        let mut candidates = self.candidates().await;
        candidates.retain(|p| !exclude.contains(p));
        let now = Instant::now();
        let mut soonest: Option<Duration> = None;
        {
            let trust = lock(&self.trust);
            candidates.retain(|p| match trust.backed_off(p, now) {
                Some(left) => {
                    soonest = Some(soonest.map_or(left, |s| s.min(left)));
                    false
                }
                None => true,
            });
        }
        match self.best(spec, &candidates).await {
            Some(peer) => Pick::Peer(peer),
            None => soonest.map_or(Pick::None, Pick::Wait),
        }
    }

    /// The best of `candidates` for `spec`, among those that offer slots.
    async fn best(&self, spec: &TaskSpec, candidates: &[PeerId]) -> Option<PeerId> {
        let me = self.net.local_peer_id();
        if candidates.is_empty() {
            return None;
        }
        let capacities = self.capacities(candidates).await;
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
            for peer in self.locations.of(cid) {
                *holders.entry(peer).or_default() += 1;
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

    /// Runs one task on the mesh (or on `on`), retrying elsewhere if its peer is lost or busy.
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
        self.place(spec, on, progress, None).instrument(span).await
    }

    /// Runs one task on the mesh on a peer other than those in `avoid` (retried elsewhere if
    /// its peer is lost or busy): the second opinion of a checked run.
    pub async fn submit_elsewhere(&self, spec: TaskSpec, avoid: &[PeerId]) -> Placed {
        let claimed = tokio::sync::Mutex::new(avoid.iter().copied().collect());
        let span = tracing::info_span!("task", id = %spec_to_wire(&spec, 0).id());
        self.place(spec, None, None, Some(&claimed))
            .instrument(span)
            .await
    }

    /// Marks `peer` faulty for `reason`: this node never places work on it again.
    pub fn mark_faulty(&self, peer: PeerId, reason: String) {
        tracing::warn!(%peer, %reason, "peer marked faulty");
        lock(&self.trust).mark_faulty(peer, reason, Instant::now());
    }

    /// Picks a peer outside `tried`, and outside `claimed` when given (the peers other runs of
    /// the same verified task hold), claiming it there.
    async fn pick_claiming(
        &self,
        spec: &TaskSpec,
        tried: &HashSet<PeerId>,
        claimed: Option<&tokio::sync::Mutex<HashSet<PeerId>>>,
    ) -> Pick {
        let Some(claimed) = claimed else {
            return self.pick(spec, tried).await;
        };
        // Held across the pick, so concurrent runs never take the same peer.
        let mut held = claimed.lock().await;
        let exclude: HashSet<PeerId> = tried.union(&held).copied().collect();
        let pick = self.pick(spec, &exclude).await;
        if let Pick::Peer(peer) = pick {
            held.insert(peer);
        }
        pick
    }

    async fn place(
        &self,
        spec: TaskSpec,
        on: Option<PeerId>,
        progress: Option<Reporter>,
        claimed: Option<&tokio::sync::Mutex<HashSet<PeerId>>>,
    ) -> Placed {
        let me = self.net.local_peer_id();
        if let Some(why) = self.bad_input(&spec) {
            return Placed {
                peer: me,
                report: TaskReport::failed(TaskFailure::new(FailureKind::BadInput, why)),
                verified_by: Vec::new(),
            };
        }
        // Peers this placement tried: lost for good, or busy (those may be asked again once
        // their backoff has passed, if no other peer is left).
        let mut tried = HashSet::new();
        let mut busy_tried = HashSet::new();
        let mut last = Placed {
            peer: me,
            report: TaskReport::lost("no peer in the mesh offers task slots".into()),
            verified_by: Vec::new(),
        };
        // A pinned peer that answered Busy is asked again after its backoff.
        let mut pinned_wait = None;
        for _ in 0..MAX_ATTEMPTS {
            let peer = match on {
                Some(peer) => {
                    if let Some(wait) = pinned_wait.take() {
                        tokio::time::sleep(wait).await;
                    }
                    peer
                }
                None => match self.pick_claiming(&spec, &tried, claimed).await {
                    Pick::Peer(peer) => peer,
                    Pick::Wait(wait) => {
                        tracing::debug!(?wait, "every candidate is backed off; waiting");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    Pick::None if !busy_tried.is_empty() => {
                        // Only busy peers are left: ask them again once the first is back.
                        let wait = busy_tried
                            .iter()
                            .filter_map(|p| self.backed_off(p))
                            .min()
                            .unwrap_or_default();
                        tracing::debug!(?wait, "only busy peers are left; waiting");
                        tokio::time::sleep(wait).await;
                        for peer in busy_tried.drain() {
                            tried.remove(&peer);
                        }
                        continue;
                    }
                    Pick::None => return last,
                },
            };
            self.adjust(peer, 1);
            let progress: Option<Progress> = progress
                .clone()
                .map(|report| Arc::new(move |record| report(peer, record)) as Progress);
            let (report, busy, accepted) = if peer == me {
                // A subtask of another tenant's driver queues as that tenant's, here as on
                // any executor.
                let tenant = credential_of(&spec)
                    .and_then(|c| c.tenant().ok())
                    .filter(|t| *t != me)
                    .map(|t| t.to_string());
                let mut report = self
                    .runtime
                    .run_for(tenant, spec.clone(), progress.clone())
                    .await;
                report.stats.executed_by = Some(me.to_string());
                (report, false, true)
            } else {
                let permits = lock(&self.remote_permits)
                    .entry(peer)
                    .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(REMOTE_IN_FLIGHT)))
                    .clone();
                let _permit = permits.acquire_owned().await;
                let route = progress.clone().map(|p| self.progress.open(peer, p));
                let mut wire = spec_to_wire(&spec, route.as_ref().map_or(0, |r| r.token()));
                wire.sources = self.hand_over(&spec);
                tracing::debug!(%peer, "sending the task");
                let sent = match sign_for(&mut wire, &self.keypair, peer) {
                    Ok(()) => self.net.submit_task(peer, wire).await,
                    Err(e) => Ok(TaskOutcome::failed(
                        shoal_p2p::FailureKind::Denied,
                        e.to_string(),
                    )),
                };
                match sent {
                    Ok(TaskOutcome::Failed {
                        kind: shoal_p2p::FailureKind::Busy,
                        message,
                        ..
                    }) => (
                        TaskReport::lost(format!("peer {peer} is busy: {message}")),
                        true,
                        false,
                    ),
                    Ok(outcome) => {
                        let report = report_from_wire(outcome);
                        if let Ok(outputs) = &report.result {
                            for (_, cid) in outputs {
                                self.locations.record(*cid, peer);
                            }
                        }
                        (report, false, true)
                    }
                    Err(e @ shoal_p2p::Error::Busy { .. }) => {
                        (TaskReport::lost(e.to_string()), true, false)
                    }
                    Err(e) => {
                        // It took the task and went away or never answered: left out of
                        // placement for a while like a busy peer, so a peer that accepts tasks
                        // and drops them cannot draw every placement to itself.
                        let wait = lock(&self.trust).busy(peer, Instant::now());
                        tracing::info!(%peer, ?wait, "peer lost the task; backing off");
                        (TaskReport::lost(format!("peer {peer}: {e}")), false, false)
                    }
                }
            };
            self.adjust(peer, -1);
            let lost_it = matches!(&report.result, Err(f) if f.kind == FailureKind::Lost);
            // Refused before it ran (the peer's policy, its memory budget): another peer may
            // take it, so it is placed elsewhere like a busy one, without a backoff (the
            // refusal is about this task, not the peer's load). If none does, the last
            // refusal is the answer.
            let refused = peer != me
                && report.stats.wall.is_zero()
                && matches!(&report.result, Err(f) if f.kind == FailureKind::Denied);
            last = Placed {
                peer,
                report,
                verified_by: Vec::new(),
            };
            if busy {
                // Its advertised capacity said otherwise: it is left out of placement for a
                // while, and this task goes elsewhere (or, pinned, asks again after the wait).
                let wait = lock(&self.trust).busy(peer, Instant::now());
                tracing::info!(%peer, ?wait, "peer is busy; backing off");
                pinned_wait = Some(wait);
                tried.insert(peer);
                busy_tried.insert(peer);
                continue;
            }
            if refused && on.is_none() {
                tracing::info!(%peer, "peer refused the task; placing it elsewhere");
                tried.insert(peer);
                continue;
            }
            if accepted {
                lock(&self.trust).accepted(peer);
            }
            if !lost_it || on.is_some() {
                break;
            }
            tracing::info!(%peer, "task lost on peer; placing it elsewhere");
            tried.insert(peer);
        }
        last
    }

    /// Runs `spec` deterministic on `copies` distinct peers (at least 2, at most
    /// [`MAX_VERIFY`]) and compares what they answer. If all agree, that is the result. If not,
    /// it runs once more on another distinct peer and takes the answer of a strict majority
    /// (of at least two); the peers that answered otherwise are marked faulty and never chosen
    /// again. No majority is a `TaskError` listing each peer's answer; fewer than `copies`
    /// distinct non-faulty peers is `Lost`, naming how many there are.
    ///
    /// The report is the first agreeing run's; `verified_by` lists the agreeing peers.
    /// `progress` sees the first run's records only.
    pub async fn submit_verified(
        &self,
        spec: TaskSpec,
        copies: u32,
        progress: Option<Reporter>,
    ) -> Placed {
        let span = tracing::info_span!("verified", id = %spec_to_wire(&spec, 0).id(), copies);
        self.verify(spec, copies, progress).instrument(span).await
    }

    async fn verify(&self, mut spec: TaskSpec, copies: u32, progress: Option<Reporter>) -> Placed {
        let me = self.net.local_peer_id();
        let failed = |report| Placed {
            peer: me,
            report,
            verified_by: Vec::new(),
        };
        if !(2..=MAX_VERIFY).contains(&copies) {
            return failed(TaskReport::failed(TaskFailure::new(
                FailureKind::Denied,
                format!("--verify {copies}: a verified task runs on 2 to {MAX_VERIFY} peers"),
            )));
        }
        spec.deterministic = true;
        let copies = copies as usize;
        // Count those that offer slots; a backed-off peer still counts (placement waits for it).
        let candidates = self.candidates().await;
        let available = self
            .capacities(&candidates)
            .await
            .iter()
            .filter(|(_, cap)| cap.total_slots > 0)
            .count();
        if available < copies {
            let faulty = lock(&self.trust).faulty().len();
            return failed(TaskReport::lost(format!(
                "--verify {copies} needs {copies} distinct peers that offer task slots and are \
                 not marked faulty; {available} available ({faulty} marked faulty)"
            )));
        }
        let claimed = tokio::sync::Mutex::new(HashSet::new());
        let claimed = &claimed;
        let runs = (0..copies).map(|i| {
            let progress = if i == 0 { progress.clone() } else { None };
            self.place(spec.clone(), None, progress, Some(claimed))
        });
        let mut runs = join_all(runs).await;
        if !verify::unanimous(&runs) {
            tracing::info!(runs = %verify::tally(&runs), "verified runs disagree; one more run");
            runs.push(self.place(spec.clone(), None, None, Some(claimed)).await);
        }
        let Some(agreed) = verify::majority(&runs) else {
            let voted = runs
                .iter()
                .filter(|r| verify::vote(&r.report).is_some())
                .count();
            let (kind, why) = match voted {
                0 | 1 => (
                    FailureKind::Lost,
                    format!("only {voted} of {} verified runs answered", runs.len()),
                ),
                _ => (
                    FailureKind::TaskError,
                    format!(
                        "the {} verified runs disagreed, with no majority",
                        runs.len()
                    ),
                ),
            };
            let message = format!("{why}: {}", verify::tally(&runs));
            tracing::warn!("{message}");
            return failed(TaskReport::failed(TaskFailure::new(kind, message)));
        };
        let agreeing: Vec<&Placed> = runs
            .iter()
            .filter(|r| verify::vote(&r.report).as_ref() == Some(&agreed))
            .collect();
        let id = spec_to_wire(&spec, 0).id();
        // This node never marks itself: it trusts its own runs, and a task that differs from
        // run to run must not take it out of its own placement.
        let me = self.net.local_peer_id();
        for wrong in verify::minority(&runs, &agreed)
            .into_iter()
            .filter(|r| r.peer != me)
        {
            let (peer, said) = (wrong.peer, verify::describe(&wrong.report));
            let reason = format!(
                "gave {said} where {} of {} peers gave {} (verified task {id})",
                agreeing.len(),
                runs.len(),
                verify::describe(&agreeing[0].report)
            );
            tracing::warn!(%peer, %reason, "peer disagreed with a verified majority; marked faulty");
            lock(&self.trust).mark_faulty(peer, reason, Instant::now());
        }
        let verified_by = agreeing.iter().map(|r| r.peer).collect();
        let first = agreeing[0];
        Placed {
            peer: first.peer,
            report: first.report.clone(),
            verified_by,
        }
    }

    /// Runs `base` once per item, with input `name` set to the item, spread over the mesh
    /// (each item verified on `verify` peers when that is 2 or more).
    /// Results come back in input order; `progress` sees every change.
    pub async fn map(
        &self,
        base: TaskSpec,
        name: &str,
        items: Vec<Cid>,
        on: Option<PeerId>,
        verify: u32,
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
        let all = self.candidates().await;
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
                    let placed = match verify {
                        0 | 1 => self.submit(spec, on).await,
                        n => self.submit_verified(spec, n, None).await,
                    };
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
