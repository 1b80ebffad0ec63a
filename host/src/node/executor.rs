//! The node's answers to other peers: it serves the blocks a requester's tenant may read,
//! reports its capacity, and runs the tasks they send (fetching module and inputs first,
//! verified, from the sender and the sources it names).

use std::{sync::Arc, time::Instant};

use shoal_p2p::{
    AuthError, BlockRequest, BlockResponse, BoxFuture, BulkChunk, BulkRequest, BulkResponse,
    Capacity, Credential, InboundHandler, PeerId, ProgressRecord, TaskOutcome,
};
use tracing::Instrument;

use super::{FetchError, NodeInner};
use crate::{
    sched::{now_ms, report_to_wire, spec_from_wire},
    store::{Cid, StoreError},
};

impl InboundHandler for NodeInner {
    fn block(&self, from: PeerId, request: BlockRequest) -> BoxFuture<'_, BlockResponse> {
        Box::pin(async move {
            // Whom the requester acts for, proven; then whether that tenant may read the file
            // here. A refusal never looks at the block, so it says nothing of whether it is here.
            let reader = match self.reader(from, &request.credential) {
                Ok(reader) => reader,
                Err(e) => {
                    tracing::debug!(peer = %from, "block request refused: {e}");
                    return BlockResponse::Denied;
                }
            };
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || {
                let BlockRequest { cid, file, .. } = request;
                if !store.may_read(&file, &cid, &reader) {
                    return BlockResponse::Denied;
                }
                store
                    .get_block(&cid)
                    .map_or(BlockResponse::NotFound, BlockResponse::Found)
            })
            .await
            .unwrap_or(BlockResponse::NotFound)
        })
    }

    fn bulk(&self, from: PeerId, request: BulkRequest) -> BoxFuture<'_, BulkResponse> {
        Box::pin(self.serve_bulk(from, request))
    }

    fn task(&self, from: PeerId, spec: shoal_p2p::TaskSpec) -> BoxFuture<'_, TaskOutcome> {
        let span =
            tracing::info_span!("task", id = %spec.id(), peer = %from, module = %spec.module);
        Box::pin(self.run_for_peer(from, spec).instrument(span))
    }

    fn capacity(&self) -> BoxFuture<'_, Capacity> {
        Box::pin(async move { NodeInner::capacity(self) })
    }

    fn progress(&self, from: PeerId, record: ProgressRecord) {
        self.progress.deliver(from, record);
    }
}

/// Chunks a bulk answer reads ahead of the stream that sends them.
const BULK_READ_AHEAD: usize = 4;

/// Sources of a spec asked besides its sender; the rest are ignored.
const MAX_SOURCES: usize = 16;

/// Progress records waiting to go back to a submitter; past this, new ones are dropped.
const PROGRESS_QUEUE: usize = 64;

impl NodeInner {
    /// Whom a requester of blocks acts for, proven by `credential` against the connection's
    /// peer `from`: the tenant's name as the store's grants know it. A peer acting for this
    /// node's own tenancy (running a task this node sent) reads only what was granted to it
    /// too: the files of the tasks this node handed over, not all this node holds.
    fn reader(&self, from: PeerId, credential: &Credential) -> Result<String, AuthError> {
        Ok(credential.verify(from, now_ms())?.to_string())
    }

    /// Answers a `/shoal/bulk/1` request under the rule of [`InboundHandler::block`]: the
    /// credential must hold for `from` and name a tenant that may read the file here, and every
    /// chunk asked must be one of the file's; otherwise the whole request is `Denied`, without a look at the chunks. The chunks are read on a blocking thread, a few
    /// ahead of the stream that sends them.
    async fn serve_bulk(&self, from: PeerId, request: BulkRequest) -> BulkResponse {
        let reader = match self.reader(from, &request.credential) {
            Ok(reader) => reader,
            Err(e) => {
                tracing::debug!(peer = %from, "bulk request refused: {e}");
                return BulkResponse::Denied;
            }
        };
        let store = self.store.clone();
        let BulkRequest { file, chunks, .. } = request;
        let allowed = {
            let store = store.clone();
            let chunks = chunks.clone();
            tokio::task::spawn_blocking(move || {
                if !store.may_read(&file, &file, &reader) {
                    return false;
                }
                // The file's own chunks only: a bulk request names a file, and serves nothing
                // outside it.
                let Ok(manifest) = store.manifest(&file) else {
                    return false;
                };
                let own: std::collections::HashSet<&Cid> = manifest.chunks.iter().collect();
                chunks.iter().all(|c| own.contains(c))
            })
            .await
            .unwrap_or(false)
        };
        if !allowed {
            return BulkResponse::Denied;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(BULK_READ_AHEAD);
        tokio::task::spawn_blocking(move || {
            for cid in chunks {
                let chunk = store
                    .get_block(&cid)
                    .map_or(BulkChunk::NotFound, BulkChunk::Found);
                // The stream is gone: stop reading.
                if tx.blocking_send(chunk).is_err() {
                    return;
                }
            }
        });
        let chunks = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        BulkResponse::Chunks(Box::pin(chunks))
    }

    /// Runs a task another peer sent us: fetch its module and inputs (from the sender first),
    /// run it sandboxed, announce its outputs, and report.
    async fn run_for_peer(&self, from: PeerId, spec: shoal_p2p::TaskSpec) -> TaskOutcome {
        if self.config.slots == 0 {
            return TaskOutcome::failed(
                shoal_p2p::FailureKind::Busy,
                "this node runs no tasks (started with --slots 0)",
            );
        }
        // Who it runs for, proven, and whether this node's policy lets it in: checked before
        // anything is fetched or run, so a forged or unwelcome spec costs a signature check.
        let me = self.net.local_peer_id();
        let now = now_ms();
        let tenant = match spec.verify(me, now) {
            Ok(tenant) => tenant,
            Err(e) => {
                tracing::info!("refused a task from peer {from}: {e}");
                return TaskOutcome::failed(shoal_p2p::FailureKind::Denied, e.to_string());
            }
        };
        // Its name once: a peer id's text is a base58 encoding, a few µs each time.
        let tenant_name = tenant.to_string();
        let stored = || self.store.granted_bytes(&tenant_name);
        // The policy before the replay memory: a tenant the node does not run leaves nothing
        // remembered there.
        let admitted = self
            .tenants
            .admit(&self.config.policy, me, tenant, &spec.limits, stored())
            .and_then(|admitted| self.seen.check(tenant, &spec.auth, now).map(|()| admitted));
        let _admitted = match admitted {
            Ok(admitted) => admitted,
            Err(why) => {
                tracing::info!("refused a task from peer {from}: {why}");
                return TaskOutcome::failed(shoal_p2p::FailureKind::Denied, why);
            }
        };
        let token = spec.progress;
        let credential = spec.auth.credential.clone();
        let mut providers = vec![from];
        providers.extend(
            spec.sources
                .iter()
                .filter_map(|p| PeerId::from_bytes(p).ok())
                .filter(|p| *p != from && *p != me)
                .take(MAX_SOURCES),
        );
        let spec = spec_from_wire(spec);
        let fetching = Instant::now();
        tracing::info!("running a task for peer {from}");
        // Each block with the failure it means when it is there but is no file: the spec's
        // fault, wherever it runs.
        let inputs = spec.inputs.iter().map(|(n, c)| {
            let what = format!("input `{n}`");
            (what, *c, shoal_p2p::FailureKind::BadInput)
        });
        let module = (
            "the module".to_owned(),
            spec.module,
            shoal_p2p::FailureKind::BadModule,
        );
        // Held until the task ends, so a GC cannot take what it needs between fetch and run.
        let cids: Vec<Cid> = std::iter::once(spec.module)
            .chain(spec.inputs.iter().map(|(_, c)| *c))
            .collect();
        let _lease = self.store.lease(&cids);
        for (what, cid, not_a_file) in std::iter::once(module).chain(inputs) {
            if let Err(e) = self.fetch_file(cid, &providers, &credential).await {
                // A block no peer would serve to the tenant is refused, whether it exists or
                // not. Anything else may pass (a provider went away, this disk is full): lost,
                // so the submitter tries another peer.
                let kind = match e {
                    FetchError::Store(StoreError::NotAFile { .. }) => not_a_file,
                    FetchError::Denied { .. } => shoal_p2p::FailureKind::Denied,
                    _ => shoal_p2p::FailureKind::Lost,
                };
                return TaskOutcome::failed(kind, format!("cannot fetch {what} {cid}: {e}"));
            }
        }
        if let Err(why) = self
            .tenants
            .check_stored(&self.config.policy, me, tenant, stored())
        {
            return TaskOutcome::failed(shoal_p2p::FailureKind::Denied, why);
        }
        let fetched = fetching.elapsed();
        let progress = (token != 0).then(|| self.send_progress_to(from, token));
        // Queued as its tenant's, so one tenant's flood waits behind its own tasks, not
        // behind others'; this node's own identity shares its local tasks' queue.
        let queue = (tenant != me).then_some(tenant_name);
        let mut report = self.runtime.run_for(queue, spec, progress).await;
        report.stats.fetch = fetched;
        tracing::info!(
            ok = report.result.is_ok(),
            "finished a task for peer {from}"
        );
        report_to_wire(report, self.net.local_peer_id())
    }

    /// A sink that sends a task's progress records to its submitter, one at a time and in
    /// order, on a task that ends when the run drops the sink. The task never waits on the
    /// network: a record that finds the queue full is dropped.
    fn send_progress_to(&self, to: PeerId, token: u64) -> crate::runtime::Progress {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(PROGRESS_QUEUE);
        let net = self.net.clone();
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if let Err(e) = net.send_progress(to, ProgressRecord { token, data }).await {
                    tracing::debug!(peer = %to, "progress record not delivered: {e}");
                }
            }
        });
        Arc::new(move |data| {
            let _ = tx.try_send(data);
        })
    }
}
