//! Inbound block and capacity requests: each takes a permit from its peer's share and one
//! from the node's pool, or is answered `Busy`, then runs the [`InboundHandler`] on a spawned
//! task whose answer comes back to the event loop. Progress records are handed on at once, on
//! the loop. (Tasks come over their own streams: [`crate::tasks`].)

use std::{collections::HashMap, fmt, future::Future, sync::Arc};

use futures::future::BoxFuture;
use libp2p::{
    PeerId,
    request_response::{InboundRequestId, ResponseChannel},
    swarm::ConnectionId,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, info_span, warn};

use super::{Config, event_loop::EventLoop};
use crate::{
    behaviour::Behaviour,
    bulk::{BulkRequest, BulkResponse},
    codec::{BLOCK_PROTOCOL, CAPACITY_PROTOCOL},
    messages::{
        BlockRequest, BlockResponse, Capacity, CapacityRequest, MAX_BLOCK_LEN, ProgressRecord,
        TaskOutcome, TaskSpec,
    },
};

/// Answers to inbound requests, supplied by the node that embeds the network.
///
/// The actor calls these on spawned tasks, at most [`Config::max_inbound_tasks`] task calls
/// and [`Config::max_inbound_requests`] block and capacity calls at a time, and of those at
/// most [`Config::max_inbound_tasks_per_peer`] and [`Config::max_inbound_requests_per_peer`]
/// for any one requester; beyond that it answers `Busy` without calling them. A method that
/// panics fails its own request only: a task is answered `Lost`, a block or capacity
/// request sees its stream close.
///
/// # Cancel safety
///
/// The future a method returns can be dropped at any await point, and then never polled
/// again: when the requester's last connection to this peer closes or, for a task, its task
/// stream ends (its request can no longer be answered, and the permit goes to someone else),
/// and when the network shuts down. Keep no state across an await that a drop there would
/// leave inconsistent. A requester that closes only a block request's stream but keeps the
/// connection is not noticed: its handler runs to the end and holds its permit until then.
pub trait InboundHandler: Send + Sync + 'static {
    /// The answer to `from`'s block request: the bytes, or `NotFound`, or `Denied` when the
    /// request's credential does not let `from` read it (see [`BlockRequest`]). Blocks over
    /// [`MAX_BLOCK_LEN`] are never sent: the requester gets `NotFound`.
    fn block(&self, from: PeerId, request: BlockRequest) -> BoxFuture<'_, BlockResponse>;

    /// The answer to `from`'s `/shoal/bulk/1` request: the chunks, in the order asked, or
    /// `Denied` as a whole under the rule of [`block`](Self::block) (a tenant that may not
    /// read the file, or a file that is not here, look the same). Called on the task that
    /// serves the stream, at most [`Config::max_inbound_bulk`] streams at a time and
    /// [`Config::max_inbound_bulk_per_peer`] per requester. By default, `Denied`: requesters
    /// then fall back to [`block`](Self::block).
    fn bulk(&self, from: PeerId, request: BulkRequest) -> BoxFuture<'_, BulkResponse> {
        let _ = (from, request);
        Box::pin(async { BulkResponse::Denied })
    }

    /// Run `spec` for `from` and report its outcome. May take as long as the task does.
    fn task(&self, from: PeerId, spec: TaskSpec) -> BoxFuture<'_, TaskOutcome>;

    /// This peer's advertised capacity.
    fn capacity(&self) -> BoxFuture<'_, Capacity>;

    /// A progress record from `from`, of a task it runs for this peer. Called on the event
    /// loop itself, so it must only hand the record on, never wait. By default, dropped.
    fn progress(&self, from: PeerId, record: ProgressRecord) {
        let _ = (from, record);
    }
}

/// Why an inbound request got no permit.
#[derive(Debug, Clone, Copy)]
enum Full {
    /// The requester already uses its whole share.
    Peer,
    /// Every permit of the node is taken.
    Node,
}

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Peer => "the requester uses its whole share",
            Self::Node => "every slot of this peer is taken",
        })
    }
}

/// The permits for inbound work: the node's pools, and each requesting peer's share of them.
///
/// A peer's inbound handlers are dropped when its last connection closes, through the
/// [`CancellationToken`] of its share, which every one of its handler tasks selects on. A
/// token rather than a `JoinSet` per peer keeps one `JoinSet` for the loop to poll, and lets
/// a task still report which peer it served when it ends, cancelled or not, so that the
/// share can be dropped once idle.
pub(super) struct InboundPermits {
    requests: Arc<Semaphore>,
    requests_per_peer: usize,
    /// Only peers with work in flight: a share goes as soon as its last permit is back, so
    /// the map holds no more entries than there are requests in flight.
    peers: HashMap<PeerId, PeerShare>,
}

/// One peer's share of the inbound permits.
struct PeerShare {
    requests: Arc<Semaphore>,
    /// Cancelled when the peer's last connection closes.
    gone: CancellationToken,
}

/// What an admitted request holds while its handler runs: its permits, given back on drop,
/// and its requester's token.
pub(super) struct Admission {
    _peer: OwnedSemaphorePermit,
    _node: OwnedSemaphorePermit,
    gone: CancellationToken,
}

impl InboundPermits {
    pub(super) fn new(config: &Config) -> Self {
        Self {
            requests: Arc::new(Semaphore::new(config.max_inbound_requests)),
            requests_per_peer: config.max_inbound_requests_per_peer,
            peers: HashMap::new(),
        }
    }

    /// A permit from `peer`'s share and one from the node's, or why not.
    fn admit(&mut self, peer: PeerId) -> Result<Admission, Full> {
        let requests_per_peer = self.requests_per_peer;
        let share = self.peers.entry(peer).or_insert_with(|| PeerShare {
            requests: Arc::new(Semaphore::new(requests_per_peer)),
            gone: CancellationToken::new(),
        });
        let (of_peer, of_node) = (&share.requests, &self.requests);
        let admitted = match Arc::clone(of_peer).try_acquire_owned() {
            Err(_) => Err(Full::Peer),
            Ok(peer_permit) => match Arc::clone(of_node).try_acquire_owned() {
                Err(_) => Err(Full::Node),
                Ok(node_permit) => Ok(Admission {
                    _peer: peer_permit,
                    _node: node_permit,
                    gone: share.gone.clone(),
                }),
            },
        };
        if admitted.is_err() {
            self.drop_if_idle(&peer);
        }
        admitted
    }

    /// Forgets `peer`'s share if none of its permits is out.
    pub(super) fn drop_if_idle(&mut self, peer: &PeerId) {
        if self.peers.get(peer).is_some_and(|s| self.is_idle(s)) {
            self.peers.remove(peer);
        }
    }

    /// Forgets every share none of whose permits is out.
    pub(super) fn drop_all_idle(&mut self) {
        let requests_per_peer = self.requests_per_peer;
        self.peers
            .retain(|_, s| s.requests.available_permits() < requests_per_peer);
    }

    fn is_idle(&self, share: &PeerShare) -> bool {
        share.requests.available_permits() >= self.requests_per_peer
    }

    /// `peer`'s last connection closed: drop the handlers of its requests, which can no
    /// longer be answered. Their permits come back as their tasks end; until then they still
    /// count against the share, which keeps it (with a fresh token, for requests arriving
    /// over a new connection).
    pub(super) fn disconnected(&mut self, peer: &PeerId) {
        if let Some(share) = self.peers.get_mut(peer) {
            share.gone.cancel();
            share.gone = CancellationToken::new();
        }
    }
}

/// An inbound request as the event loop received it.
pub(super) struct Inbound<Req, Resp> {
    pub(super) peer: PeerId,
    pub(super) connection: ConnectionId,
    pub(super) id: InboundRequestId,
    pub(super) request: Req,
    pub(super) channel: ResponseChannel<Resp>,
}

/// An answer to an inbound request, computed on a spawned task: it sends itself on its
/// protocol's behaviour and says whether the requester was still there to get it.
pub(super) type InboundReply = Box<dyn FnOnce(&mut Behaviour) -> bool + Send>;

impl EventLoop {
    pub(super) fn on_block_request(&mut self, r: Inbound<BlockRequest, BlockResponse>) {
        let span = info_span!(parent: self.connection_span(r.connection), "inbound", protocol = %BLOCK_PROTOCOL, peer = %r.peer, request = %r.id, cid = %r.request.cid);
        let admission = match self.permits.admit(r.peer) {
            Ok(admission) => admission,
            Err(full) => {
                span.in_scope(|| debug!("{full}; answering Busy"));
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .block
                    .send_response(r.channel, BlockResponse::Busy);
                return;
            }
        };
        self.spawn_inbound(r.peer, admission, span, |handler| async move {
            let response = match handler.block(r.peer, r.request).await {
                BlockResponse::Found(bytes) if bytes.len() > MAX_BLOCK_LEN => {
                    warn!(
                        len = bytes.len(),
                        "block over the size limit; answering NotFound"
                    );
                    BlockResponse::NotFound
                }
                response => response,
            };
            move |b: &mut Behaviour| b.block.send_response(r.channel, response).is_ok()
        });
    }

    pub(super) fn on_capacity_request(&mut self, r: Inbound<CapacityRequest, Capacity>) {
        let span = info_span!(parent: self.connection_span(r.connection), "inbound", protocol = %CAPACITY_PROTOCOL, peer = %r.peer, request = %r.id);
        let admission = match self.permits.admit(r.peer) {
            Ok(admission) => admission,
            Err(full) => {
                // Dropping the channel closes the stream: the asker sees an error and moves on.
                span.in_scope(|| debug!("{full}; dropping capacity request"));
                return;
            }
        };
        self.spawn_inbound(r.peer, admission, span, |handler| async move {
            let capacity = handler.capacity().await;
            move |b: &mut Behaviour| b.capacity.send_response(r.channel, capacity).is_ok()
        });
    }

    pub(super) fn on_progress_request(&mut self, r: Inbound<ProgressRecord, ()>) {
        self.handler.progress(r.peer, r.request);
        let _ = self
            .swarm
            .behaviour_mut()
            .progress
            .send_response(r.channel, ());
    }

    /// Runs `call` with the handler on a spawned task under `span` for `peer`, holding
    /// `admission` until its answer is handed back to the loop, or dropping the handler's
    /// future as soon as `peer` disconnects. The task ends with `peer`, whose share the loop
    /// then drops if it is idle.
    fn spawn_inbound<F, S>(
        &mut self,
        peer: PeerId,
        admission: Admission,
        span: Span,
        call: impl FnOnce(Arc<dyn InboundHandler>) -> F,
    ) where
        F: Future<Output = S> + Send + 'static,
        S: FnOnce(&mut Behaviour) -> bool + Send + 'static,
    {
        let reply = call(Arc::clone(&self.handler));
        let replies = self.reply_tx.clone();
        self.inbound.spawn(
            async move {
                let gone = admission.gone.clone();
                tokio::select! {
                    biased;
                    () = gone.cancelled() => {
                        debug!("requester disconnected; handler dropped");
                    }
                    reply = reply => {
                        // The reply channel has room for every permit holder: this never
                        // waits long.
                        let _ = replies.send(Box::new(reply)).await;
                    }
                }
                drop(admission);
                peer
            }
            .instrument(span),
        );
    }

    pub(super) fn on_inbound_reply(&mut self, reply: InboundReply) {
        if !reply(self.swarm.behaviour_mut()) {
            debug!("requester went away before the response was ready");
        }
    }
}
