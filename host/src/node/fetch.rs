//! Fetching a file from the mesh for a tenant: its manifest, then its missing chunks in
//! parallel from several providers, each chunk verified before it is stored. A provider that
//! serves a bad chunk is dropped for the rest of the fetch and the chunk is asked of another.
//!
//! Every request carries the tenant's credential, and providers serve only files the tenant
//! may read there. A local copy counts only if the tenant may read it here: otherwise the
//! whole file (manifest and every chunk) is asked of providers, whose answers are the proof,
//! and the file is then granted to the tenant here too.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, PoisonError},
};

use futures::{StreamExt, future::join_all, stream};
use shoal_p2p::{BlockRequest, BulkItem, BulkRequest, Credential, PeerId};

use super::{NodeInner, blocking};
use crate::store::{Cid, StoreError, Verified, writer::BlockWriter};

/// Chunks fetched at once for one file over the per-block protocol.
const PARALLEL_CHUNKS: usize = 16;
/// Streams carrying one file's chunks at once over `/shoal/bulk/1`, from up to as many
/// providers. With fewer providers, each gets several, on connections of their own (lanes):
/// one connection is one core's worth of encryption at each end.
const BULK_STREAMS: usize = 4;
/// Chunks per stream below which a fetch opens no further stream to a provider: a
/// connection's handshake costs about what a few chunks take to move.
const CHUNKS_PER_LANE: usize = BULK_BATCH;
/// The most chunks in one bulk request (16 MiB); smaller files are cut finer, so that every
/// provider gets a share.
const BULK_BATCH: usize = 16;
/// Bulk requests a provider has in flight: it starts on the next before the requester has
/// all of the last. Split among its streams, so that a provider's lanes do not let it hold
/// more of the file than a provider with one stream (a slow one would keep it from the
/// others); each stream has at least one.
const BULK_PIPELINE: usize = 2;
/// Why a file could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// No peer that was asked had a good copy.
    #[error("block {cid} was not found in the mesh (asked {asked} peer(s))")]
    NotFound {
        /// The block.
        cid: Cid,
        /// How many peers were asked.
        asked: usize,
    },
    /// No peer would serve it to the tenant: it is not the tenant's to read, or it does not
    /// exist (providers answer both alike).
    #[error(
        "no peer would serve block {cid} to tenant {tenant}: it is not the tenant's to read, \
         or it does not exist (asked {asked} peer(s))"
    )]
    Denied {
        /// The block.
        cid: Cid,
        /// The tenant it was asked for.
        tenant: String,
        /// How many peers were asked.
        asked: usize,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl NodeInner {
    /// Makes file `cid` present here and readable by `credential`'s tenant, asking `hints`
    /// first, then where this node's tasks left it, then the peers that announce it.
    pub(crate) async fn fetch_file(
        &self,
        cid: Cid,
        hints: &[PeerId],
        credential: &Credential,
    ) -> Result<(), FetchError> {
        // A GC while we fetch must not take the manifest or the chunks stored so far.
        let _lease = self.store.lease(&[cid]);
        let me = self.net.local_peer_id();
        let tenant = credential.tenant().map_err(|e| FetchError::Denied {
            cid,
            tenant: e.to_string(),
            asked: 0,
        })?;
        let reader = (tenant != me).then(|| tenant.to_string());
        // Already here in full and granted (a module run again): no disk, no blocking thread.
        if self.store.known_complete(&cid)
            && reader
                .as_deref()
                .is_none_or(|r| self.store.granted(&cid, r))
        {
            return Ok(());
        }
        let mut providers: Vec<PeerId> = hints.to_vec();
        for peer in self.locations.of(&cid) {
            if !providers.contains(&peer) {
                providers.push(peer);
            }
        }
        let bad = Arc::new(Mutex::new(HashSet::new()));
        let have = self.store.has_block(&cid);
        let may_read = reader
            .as_ref()
            .is_none_or(|r| self.store.may_read(&cid, &cid, r));
        if !have || !may_read {
            let manifest = self
                .fetch_block(cid, cid, credential, &mut providers, &bad, 0)
                .await?;
            if !have {
                self.store_blocks(vec![manifest]).await?;
            }
        }
        let store = self.store.clone();
        let missing = if may_read {
            blocking("listing chunks", move || store.missing_blocks(&cid)).await?
        } else {
            // The tenant's proof is a provider that serves it the file: every chunk, not only
            // the manifest, or whoever knows a manifest could open the bytes this node holds
            // for another tenant.
            blocking("listing chunks", move || {
                store.manifest(&cid).map(|m| m.chunks)
            })
            .await?
        };
        if !missing.is_empty() && providers.is_empty() {
            providers = self.find_providers(cid).await;
        }
        if !missing.is_empty() {
            let (writer, writing) = self.store.writer()?;
            let left = self
                .fetch_bulk(cid, credential, &providers, &bad, missing, &writer)
                .await;
            let fell_back = self
                .fetch_blocks(cid, credential, &providers, &bad, left, &writer)
                .await;
            drop(writer);
            // The writer's error first: a full disk makes the fetch fail where it was going.
            blocking("storing blocks", move || writing.finish()).await?;
            fell_back?;
        }
        if let Some(reader) = reader {
            let store = self.store.clone();
            blocking("granting a file", move || store.grant(&cid, &reader)).await?;
        }
        Ok(())
    }

    /// Chunks by the per-block protocol, [`PARALLEL_CHUNKS`] at once, each to `writer`: for
    /// what the bulk streams did not bring (a provider without `/shoal/bulk/1`, or one that
    /// failed, or a chunk a provider lacked).
    async fn fetch_blocks(
        &self,
        file: Cid,
        credential: &Credential,
        providers: &[PeerId],
        bad: &Arc<Mutex<HashSet<PeerId>>>,
        chunks: Vec<Cid>,
        writer: &BlockWriter,
    ) -> Result<(), FetchError> {
        if chunks.is_empty() {
            return Ok(());
        }
        tracing::debug!(%file, chunks = chunks.len(), "fetching chunks one request each");
        let mut fetched = stream::iter(chunks.into_iter().enumerate())
            .map(|(i, chunk)| {
                let mut providers = providers.to_vec();
                let bad = bad.clone();
                async move {
                    self.fetch_block(chunk, file, credential, &mut providers, &bad, i)
                        .await
                }
            })
            .buffer_unordered(PARALLEL_CHUNKS);
        while let Some(fetched) = fetched.next().await {
            if writer.send(fetched?).await.is_err() {
                // The writer failed; it reports why.
                break;
            }
        }
        Ok(())
    }

    /// Stores verified blocks with one disk sync for the lot. The work starts at once, on a
    /// blocking thread; the returned future reports how it went.
    fn store_blocks(
        &self,
        blocks: Vec<Verified>,
    ) -> impl Future<Output = Result<(), StoreError>> + use<> {
        let store = self.store.clone();
        blocking("storing blocks", move || store.put_verified_batch(&blocks))
    }

    async fn find_providers(&self, cid: Cid) -> Vec<PeerId> {
        let me = self.net.local_peer_id();
        match self.net.find_providers(cid).await {
            Ok(found) => found.into_iter().filter(|p| *p != me).collect(),
            Err(e) => {
                tracing::debug!(%cid, error = %e, "provider lookup failed");
                Vec::new()
            }
        }
    }

    /// Fetches block `cid` of file `file` for `credential`'s tenant and checks it against its
    /// CID, starting at provider `start % len` so parallel chunks spread over the providers.
    /// Falls back to a provider lookup when the known peers fail.
    async fn fetch_block(
        &self,
        cid: Cid,
        file: Cid,
        credential: &Credential,
        providers: &mut Vec<PeerId>,
        bad: &Mutex<HashSet<PeerId>>,
        start: usize,
    ) -> Result<Verified, FetchError> {
        let mut asked = 0;
        // Peers that answered without the block, denied or not found: for another tenant the
        // two mean the same, as they do to its requests.
        let mut answered = 0;
        let mut denied = 0;
        for round in 0..2 {
            if round == 1 {
                let found = self.find_providers(cid).await;
                providers.retain(|p| !found.contains(p));
                providers.extend(found);
            }
            let n = providers.len();
            for k in 0..n {
                let peer = providers[(start + k) % n];
                if bad
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains(&peer)
                {
                    continue;
                }
                asked += 1;
                // The network client checks the bytes against the id before returning them.
                let request = BlockRequest {
                    cid,
                    file,
                    credential: credential.clone(),
                };
                match self.net.fetch_block(peer, request).await {
                    Ok(Some(block)) => return Ok(block),
                    Ok(None) => answered += 1,
                    Err(shoal_p2p::Error::Denied { .. }) => denied += 1,
                    Err(shoal_p2p::Error::BlockMismatch { .. }) => {
                        tracing::warn!(%peer, %cid, "peer served a corrupt block; asking another provider");
                        bad.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(peer);
                    }
                    Err(e) => tracing::debug!(%peer, %cid, error = %e, "block fetch failed"),
                }
            }
        }
        let tenant = credential.tenant().ok();
        let for_another = tenant.is_some_and(|t| t != self.net.local_peer_id());
        if denied > 0 || (for_another && answered > 0) {
            let tenant = tenant.map_or_else(|| "with a malformed key".into(), |t| t.to_string());
            return Err(FetchError::Denied { cid, tenant, asked });
        }
        Err(FetchError::NotFound { cid, asked })
    }
}

/// Who streams which chunks of one bulk fetch: each provider's own share, cut into requests
/// and dealt round-robin, and the chunks that a dropped provider left, which any other takes
/// first. A provider whose share is done takes from the largest share left.
struct Plan {
    shares: Vec<VecDeque<Vec<Cid>>>,
    orphans: VecDeque<Vec<Cid>>,
    /// Requests sent and not yet answered in full, across providers: while there are some,
    /// an idle provider waits, since a failure may orphan them.
    in_flight: usize,
    /// Chunks no bulk provider brought: for the per-block protocol.
    left: Vec<Cid>,
}

/// What a provider's stream does next.
enum Next {
    Ask(Vec<Cid>),
    Wait,
    Done,
}

impl Plan {
    fn new(chunks: Vec<Cid>, providers: usize) -> Self {
        let per_request = (chunks.len() / (2 * providers)).clamp(1, BULK_BATCH);
        let mut shares = vec![VecDeque::new(); providers];
        for (i, request) in chunks.chunks(per_request).enumerate() {
            shares[i % providers].push_back(request.to_vec());
        }
        Self {
            shares,
            orphans: VecDeque::new(),
            in_flight: 0,
            left: Vec::new(),
        }
    }

    fn next(&mut self, me: usize) -> Next {
        let largest = (0..self.shares.len()).max_by_key(|&i| self.shares[i].len());
        let request = self
            .orphans
            .pop_front()
            .or_else(|| self.shares[me].pop_front())
            .or_else(|| largest.and_then(|i| self.shares[i].pop_back()));
        match request {
            Some(request) => {
                self.in_flight += 1;
                Next::Ask(request)
            }
            None if self.in_flight > 0 => Next::Wait,
            None => Next::Done,
        }
    }

    /// A provider is dropped: its requests in flight and its share go to the others.
    fn drop_provider(&mut self, me: usize, unanswered: impl IntoIterator<Item = Vec<Cid>>) {
        for request in unanswered {
            self.in_flight -= 1;
            if !request.is_empty() {
                self.orphans.push_back(request);
            }
        }
        let share = std::mem::take(&mut self.shares[me]);
        self.orphans.extend(share);
    }
}

/// Streams (lanes) to each of `providers` for `chunks` chunks: together up to
/// [`BULK_STREAMS`], one per [`CHUNKS_PER_LANE`] chunks, at least one each.
fn lanes(providers: usize, chunks: usize) -> usize {
    (BULK_STREAMS / providers.max(1))
        .min(chunks.div_ceil(CHUNKS_PER_LANE * providers.max(1)))
        .max(1)
}

/// The bulk streams this node's fetches hold to each provider, within the [`BULK_STREAMS`]
/// that a provider serves one peer by default. A fetch's first stream to a provider takes a
/// slot, waiting (at most [`SLOT_WAIT`]) while other fetches' extra lanes hold them all; its
/// extra lanes take only free slots, and give theirs back between two requests as soon as
/// a first stream waits. So fetches at once from one provider each stream, and a fetch
/// alone gets every lane.
#[derive(Default)]
pub(crate) struct BulkSlots {
    peers: Mutex<HashMap<PeerId, Held>>,
    freed: tokio::sync::Notify,
}

#[derive(Default)]
struct Held {
    first: usize,
    extra: usize,
    /// First streams waiting for a slot.
    waiting: usize,
}

/// How many times a bulk stream refused as busy before its first chunk is opened again, and
/// the first pause (it grows by as much each time).
const BUSY_RETRIES: u32 = 3;
const BUSY_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// How long a fetch's first stream to a provider waits for another fetch's extra lane to
/// give way; then it goes ahead, and a provider that refuses it leaves its chunks to one
/// request each.
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// One stream of a bulk fetch: which connection to its provider, how many requests it keeps
/// in flight, and its slot.
struct Lane<'a> {
    index: usize,
    pipeline: usize,
    slot: Slot<'a>,
}

/// One bulk stream's slot; given back when dropped.
struct Slot<'a> {
    slots: &'a BulkSlots,
    peer: PeerId,
    extra: bool,
}

impl BulkSlots {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Held>> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a fetch's first stream to `peer`.
    async fn first(&self, peer: PeerId) -> Slot<'_> {
        let deadline = tokio::time::Instant::now() + SLOT_WAIT;
        // Counted in `waiting` while this waits; a fetch dropped meanwhile uncounts itself.
        let mut waiter: Option<Waiter<'_>> = None;
        loop {
            // Registered before the look, so that a slot freed in between is not missed.
            let freed = self.freed.notified();
            {
                let mut peers = self.held();
                let held = peers.entry(peer).or_default();
                let taken = held.first + held.extra;
                // Wait only for extra lanes, which give way; never for other first streams.
                let timed_out = tokio::time::Instant::now() >= deadline;
                if taken < BULK_STREAMS || held.extra == 0 || timed_out {
                    if let Some(mut waiter) = waiter.take() {
                        waiter.counted = false;
                        held.waiting -= 1;
                    }
                    held.first += 1;
                    return Slot {
                        slots: self,
                        peer,
                        extra: false,
                    };
                }
                if waiter.is_none() {
                    held.waiting += 1;
                    waiter = Some(Waiter {
                        slots: self,
                        peer,
                        counted: true,
                    });
                }
            }
            let _ = tokio::time::timeout_at(deadline, freed).await;
        }
    }

    /// Takes one off `peer`'s count (`which`), and its entry once nothing is counted.
    fn release(&self, peer: PeerId, which: impl FnOnce(&mut Held) -> &mut usize) {
        let mut peers = self.held();
        if let Some(held) = peers.get_mut(&peer) {
            *which(held) -= 1;
            if held.first + held.extra + held.waiting == 0 {
                peers.remove(&peer);
            }
        }
    }

    /// A slot for an extra lane to `peer`, if one is free and no first stream waits.
    fn extra(&self, peer: PeerId) -> Option<Slot<'_>> {
        let mut peers = self.held();
        let held = peers.entry(peer).or_default();
        (held.first + held.extra < BULK_STREAMS && held.waiting == 0).then(|| {
            held.extra += 1;
            Slot {
                slots: self,
                peer,
                extra: true,
            }
        })
    }
}

impl Slot<'_> {
    /// Whether this stream should finish what it asked and give its slot to a waiting one.
    fn should_yield(&self) -> bool {
        self.extra
            && self
                .slots
                .held()
                .get(&self.peer)
                .is_some_and(|h| h.waiting > 0)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let extra = self.extra;
        self.slots.release(self.peer, |held| {
            if extra {
                &mut held.extra
            } else {
                &mut held.first
            }
        });
        self.slots.freed.notify_waiters();
    }
}

/// A first stream waiting for a slot, counted in [`Held::waiting`] until it takes one or
/// its fetch is dropped.
struct Waiter<'a> {
    slots: &'a BulkSlots,
    peer: PeerId,
    counted: bool,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.slots.release(self.peer, |held| &mut held.waiting);
        }
    }
}

/// How long an idle bulk stream sleeps before it looks for orphaned chunks again.
const BULK_IDLE_POLL: std::time::Duration = std::time::Duration::from_millis(10);

impl NodeInner {
    /// Fetches `chunks` of `file` over `/shoal/bulk/1`, [`BULK_STREAMS`] streams from up to
    /// as many providers (several lanes to each when there are fewer, and the file is large
    /// enough), each chunk verified (by the session) before it goes to `writer`. A provider
    /// that sends a chunk that is not what it names, or nothing for
    /// [`shoal_p2p::BULK_STALL_TIMEOUT`], is marked `bad` and all its streams are dropped;
    /// a stream that is refused or whose peer does not speak the protocol is dropped. Their
    /// chunks go to the others. Returns what no provider brought, for the per-block
    /// protocol.
    async fn fetch_bulk(
        &self,
        file: Cid,
        credential: &Credential,
        providers: &[PeerId],
        bad: &Mutex<HashSet<PeerId>>,
        chunks: Vec<Cid>,
        writer: &BlockWriter,
    ) -> Vec<Cid> {
        let peers: Vec<PeerId> = {
            let bad = bad.lock().unwrap_or_else(PoisonError::into_inner);
            providers
                .iter()
                .filter(|p| !bad.contains(p))
                .take(BULK_STREAMS)
                .copied()
                .collect()
        };
        if peers.is_empty() {
            return chunks;
        }
        // Each provider's first stream, then extra lanes while slots are free: lane-major, so
        // that the providers' first streams come first.
        let wanted = lanes(peers.len(), chunks.len());
        // (provider, lane, slot)
        let mut streams = Vec::new();
        for (p, &peer) in peers.iter().enumerate() {
            streams.push((p, 0, self.bulk_slots.first(peer).await));
        }
        let mut granted = vec![1; peers.len()];
        for _ in 1..wanted {
            for (p, &peer) in peers.iter().enumerate() {
                if let Some(slot) = self.bulk_slots.extra(peer) {
                    streams.push((p, granted[p], slot));
                    granted[p] += 1;
                }
            }
        }
        let plan = Mutex::new(Plan::new(chunks, streams.len()));
        let streams = streams
            .into_iter()
            .enumerate()
            .map(|(me, (p, index, slot))| {
                let lane = Lane {
                    index,
                    pipeline: BULK_PIPELINE.div_ceil(granted[p]),
                    slot,
                };
                self.bulk_stream(me, peers[p], lane, file, credential, &plan, bad, writer)
            });
        join_all(streams).await;
        let mut plan = plan.into_inner().unwrap_or_else(PoisonError::into_inner);
        let mut left = std::mem::take(&mut plan.left);
        left.extend(plan.orphans.into_iter().flatten());
        left.extend(plan.shares.into_iter().flatten().flatten());
        left
    }

    /// One stream of a bulk fetch, on `lane` to `peer`: it asks for the chunks the plan
    /// gives it, the lane's pipeline ahead, until none are left, the provider is dropped, or
    /// (an extra lane) another fetch waits for its slot.
    #[allow(clippy::too_many_arguments)]
    async fn bulk_stream(
        &self,
        me: usize,
        peer: PeerId,
        lane: Lane<'_>,
        file: Cid,
        credential: &Credential,
        plan: &Mutex<Plan>,
        bad: &Mutex<HashSet<PeerId>>,
        writer: &BlockWriter,
    ) {
        let lock = || plan.lock().unwrap_or_else(PoisonError::into_inner);
        let is_bad = || {
            bad.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&peer)
        };
        let mut session = match self.net.open_bulk(peer, lane.index).await {
            Ok(session) => session,
            Err(e) => {
                tracing::debug!(%peer, %file, error = %e, "no bulk stream; others take its share");
                lock().drop_provider(me, []);
                return;
            }
        };
        let ask = |chunks: &Vec<Cid>| BulkRequest {
            file,
            chunks: chunks.clone(),
            credential: credential.clone(),
        };
        // The requests sent, each with how many of its chunks have arrived.
        let mut asked: VecDeque<(Vec<Cid>, usize)> = VecDeque::new();
        let mut busy = 0;
        loop {
            if is_bad() {
                // Another stream caught this provider lying: ask it nothing more.
                let unanswered = asked.drain(..).map(|(chunks, got)| chunks[got..].to_vec());
                lock().drop_provider(me, unanswered);
                return;
            }
            // Looked at only when this stream could ask for more: not on every chunk.
            let yielding = asked.len() < lane.pipeline && lane.slot.should_yield();
            while asked.len() < lane.pipeline && !yielding {
                let Next::Ask(chunks) = lock().next(me) else {
                    break;
                };
                let request = ask(&chunks);
                asked.push_back((chunks, 0));
                if session.request(request).await.is_err() {
                    // The session ended; `next` below says why.
                    break;
                }
            }
            if asked.is_empty() {
                if yielding {
                    // Another fetch's first stream waits for this slot: this lane's share
                    // goes to the others.
                    lock().drop_provider(me, []);
                    return;
                }
                let next = lock().next(me);
                match next {
                    Next::Done => return,
                    Next::Wait => {
                        tokio::time::sleep(BULK_IDLE_POLL).await;
                        continue;
                    }
                    Next::Ask(chunks) => {
                        // Taken between the two looks: give it back for the loop to send.
                        let mut plan = lock();
                        plan.in_flight -= 1;
                        plan.orphans.push_front(chunks);
                        continue;
                    }
                }
            }
            let failure = match session.next().await {
                // Refused for want of a stream slot, before any chunk: the provider may not
                // yet have seen the stream this slot came from end. Again, a little later.
                Some(Err(shoal_p2p::Error::Busy { .. }))
                    if busy < BUSY_RETRIES && asked.iter().all(|(_, got)| *got == 0) =>
                {
                    busy += 1;
                    tokio::time::sleep(BUSY_BACKOFF * busy).await;
                    match self.net.open_bulk(peer, lane.index).await {
                        Ok(again) => {
                            session = again;
                            for (chunks, _) in &asked {
                                // A failure shows in `next`.
                                let _ = session.request(ask(chunks)).await;
                            }
                            continue;
                        }
                        Err(e) => Some(e),
                    }
                }
                Some(Ok(item)) => {
                    let Some((chunks, got)) = asked.front_mut() else {
                        continue;
                    };
                    *got += 1;
                    let finished = *got == chunks.len();
                    let stored = match item {
                        BulkItem::Chunk(chunk) => writer.send(chunk).await.is_ok(),
                        BulkItem::NotFound(cid) => {
                            lock().left.push(cid);
                            true
                        }
                    };
                    if finished {
                        asked.pop_front();
                        lock().in_flight -= 1;
                    }
                    if stored {
                        continue;
                    }
                    // The writer failed and says why: stop quietly, leaving the rest.
                    None
                }
                Some(Err(e)) => Some(e),
                None => Some(shoal_p2p::Error::ConnectionClosed {
                    peer,
                    protocol: shoal_p2p::bulk::BULK_PROTOCOL_NAME,
                }),
            };
            if let Some(e) = &failure {
                match e {
                    shoal_p2p::Error::BlockMismatch { cid, .. } => {
                        tracing::warn!(%peer, %cid, "peer streamed a corrupt chunk; dropping it for this fetch");
                        bad.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(peer);
                    }
                    shoal_p2p::Error::Stalled { .. } => {
                        tracing::warn!(%peer, %file, "peer stalled its bulk stream; dropping it for this fetch");
                        bad.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(peer);
                    }
                    e => {
                        tracing::debug!(%peer, %file, error = %e, "bulk stream failed; others take its share")
                    }
                }
            }
            let unanswered = asked
                .drain(..)
                .map(|(chunks, got)| chunks[got..].to_vec())
                .collect::<Vec<_>>();
            lock().drop_provider(me, unanswered);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Poll;

    use shoal_p2p::PeerId;

    use super::{BULK_STREAMS, BulkSlots, Slot, lanes};

    /// Extra lanes give way to a waiting first stream, which gets the first slot freed; a
    /// fetch dropped while it waits leaves nothing counted.
    #[tokio::test]
    async fn extra_lanes_give_way_to_a_waiting_first_stream() {
        let slots = BulkSlots::default();
        let peer = PeerId::random();
        let first = slots.first(peer).await;
        let mut extras: Vec<Slot<'_>> = (1..BULK_STREAMS)
            .map(|_| slots.extra(peer).expect("a free slot"))
            .collect();
        assert!(slots.extra(peer).is_none(), "all {BULK_STREAMS} are taken");
        {
            let dropped = slots.first(peer);
            tokio::pin!(dropped);
            assert!(futures::poll!(&mut dropped).is_pending());
            assert!(extras.iter().all(Slot::should_yield));
            assert!(!first.should_yield(), "a first stream never gives way");
        }
        assert!(!extras[0].should_yield(), "the dropped fetch waits no more");

        let second = slots.first(peer);
        tokio::pin!(second);
        assert!(futures::poll!(&mut second).is_pending());
        extras.pop();
        let Poll::Ready(second) = futures::poll!(&mut second) else {
            panic!("the freed slot goes to the waiting first stream");
        };
        assert!(!extras[0].should_yield());
        drop((first, second, extras));
        assert!(slots.held().is_empty(), "nothing left counted");
    }

    #[test]
    fn a_large_file_from_fewer_providers_gets_more_lanes_to_each() {
        // 256 MiB: four connections to one provider, two to each of two, one to each of more.
        assert_eq!(lanes(1, 256), 4);
        assert_eq!(lanes(2, 256), 2);
        assert_eq!(lanes(3, 256), 1);
        assert_eq!(lanes(4, 256), 1);
        // A small file opens no connection it would not fill.
        assert_eq!(lanes(1, 1), 1);
        assert_eq!(lanes(1, 16), 1);
        assert_eq!(lanes(1, 17), 2);
        assert_eq!(lanes(2, 33), 2);
    }
}
