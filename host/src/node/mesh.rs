//! The node's side of subtasks: the runtime's [`Mesh`], placing each subtask with the
//! scheduler (any peer, retried elsewhere if its peer is lost or busy) and fetching what a
//! task may read from the mesh.

use std::{sync::Weak, time::Instant};

use tokio_util::sync::CancellationToken;

use super::NodeInner;
use crate::{
    runtime::{FailureKind, Mesh, TaskFailure, TaskReport, TaskSpec},
    sched::Scheduler,
    store::Cid,
};

/// Holds the node's parts weakly: the runtime holds this, and the node holds the runtime.
pub(super) struct NodeMesh {
    pub(super) inner: Weak<NodeInner>,
    pub(super) scheduler: Weak<Scheduler>,
    pub(super) tokio: tokio::runtime::Handle,
}

impl Mesh for NodeMesh {
    fn submit(
        &self,
        spec: TaskSpec,
        verify: u32,
        cancel: CancellationToken,
        done: Box<dyn FnOnce(TaskReport) + Send>,
    ) {
        let Some(scheduler) = self.scheduler.upgrade() else {
            done(TaskReport::failed(TaskFailure::new(
                FailureKind::Lost,
                "the node is shutting down",
            )));
            return;
        };
        self.tokio.spawn(async move {
            tokio::select! {
                placed = async {
                    if verify >= 2 {
                        scheduler.submit_verified(spec, verify, None).await
                    } else {
                        scheduler.submit(spec, None).await
                    }
                } => done(placed.report),
                () = cancel.cancelled() => {}
            }
        });
    }

    fn written(&self, cid: Cid, tenant: &[u8]) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        if let Some(reader) = tenant_of(tenant)
            && let Err(e) = inner.store.grant(&cid, &reader.to_string())
        {
            tracing::warn!(%cid, error = %e, "cannot grant a task's output to its tenant");
        }
    }

    fn may_store(&self, tenant: &[u8], bytes: u64) -> Result<(), String> {
        let Some(inner) = self.inner.upgrade() else {
            return Err("the node is shutting down".to_owned());
        };
        let Some(tenant) = tenant_of(tenant) else {
            return Err("the task's credential does not decode".to_owned());
        };
        let stored = inner.store.granted_bytes(&tenant.to_string());
        inner.tenants.check_stored(
            &inner.config.policy,
            inner.net.local_peer_id(),
            tenant,
            stored.saturating_add(bytes),
        )
    }

    fn fetch(&self, cid: Cid, tenant: Option<&[u8]>, deadline: Instant) -> Result<(), String> {
        let inner = self
            .inner
            .upgrade()
            .ok_or_else(|| "the node is shutting down".to_owned())?;
        // The task's tenant's credential (the chain to this node), or this node's own.
        let credential = match tenant {
            Some(bytes) => postcard::from_bytes(bytes)
                .map_err(|e| format!("the task's credential does not decode: {e}"))?,
            None => inner.own.clone(),
        };
        let fetch = inner.fetch_file(cid, &[], &credential);
        // The timer is made inside the runtime, which it needs.
        match self
            .tokio
            .block_on(async { tokio::time::timeout_at(deadline.into(), fetch).await })
        {
            Ok(fetched) => fetched.map_err(|e| e.to_string()),
            Err(_) => Err(format!("fetching {cid}: the task's time ran out")),
        }
    }
}

/// The tenant a task's opaque credential ([`TaskSpec::tenant`](crate::runtime::TaskSpec::tenant))
/// names, if it decodes.
fn tenant_of(credential: &[u8]) -> Option<shoal_p2p::PeerId> {
    postcard::from_bytes::<shoal_p2p::Credential>(credential)
        .ok()
        .and_then(|c| c.tenant().ok())
}
