//! The node's answers to other peers: it serves the blocks it holds, reports its capacity,
//! and runs the tasks they send (fetching module and inputs first, verified, from the
//! sender).

use shoal_p2p::{BoxFuture, Capacity, InboundHandler, PeerId, TaskOutcome};
use tracing::Instrument;

use super::{FetchError, NodeInner};
use crate::{
    sched::{report_to_wire, spec_from_wire},
    store::{Cid, StoreError},
};

impl InboundHandler for NodeInner {
    fn block(&self, _from: PeerId, cid: Cid) -> BoxFuture<'_, Option<Vec<u8>>> {
        Box::pin(async move {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.get_block(&cid).ok())
                .await
                .ok()
                .flatten()
        })
    }

    fn task(&self, from: PeerId, spec: shoal_p2p::TaskSpec) -> BoxFuture<'_, TaskOutcome> {
        let span =
            tracing::info_span!("task", id = %spec.id(), peer = %from, module = %spec.module);
        Box::pin(self.run_for_peer(from, spec).instrument(span))
    }

    fn capacity(&self) -> BoxFuture<'_, Capacity> {
        Box::pin(async move { NodeInner::capacity(self) })
    }
}

impl NodeInner {
    /// Runs a task another peer sent us: fetch its module and inputs (from the sender first),
    /// run it sandboxed, announce its outputs, and report.
    async fn run_for_peer(&self, from: PeerId, spec: shoal_p2p::TaskSpec) -> TaskOutcome {
        if self.config.slots == 0 {
            return TaskOutcome::failed(
                shoal_p2p::FailureKind::Busy,
                "this node runs no tasks (started with --slots 0)",
            );
        }
        let spec = spec_from_wire(spec);
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
            if let Err(e) = self.fetch_file(cid, &[from]).await {
                // Anything else may pass (a provider went away, this disk is full): lost, so
                // the submitter tries another peer.
                let kind = match e {
                    FetchError::Store(StoreError::NotAFile { .. }) => not_a_file,
                    _ => shoal_p2p::FailureKind::Lost,
                };
                return TaskOutcome::failed(kind, format!("cannot fetch {what} {cid}: {e}"));
            }
        }
        let report = self.runtime.run(spec).await;
        if let Ok(outputs) = &report.result {
            for (_, cid) in outputs {
                self.announce(*cid).await;
            }
        }
        tracing::info!(
            ok = report.result.is_ok(),
            "finished a task for peer {from}"
        );
        report_to_wire(report, self.net.local_peer_id())
    }
}
