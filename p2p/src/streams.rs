//! Raw streams (`/shoal/bulk/1`, `/shoal/task/6`), each opened on a chosen *lane*: lane `i`
//! is the `i`-th open connection to the peer, and a lane past the last one dials the peer
//! once more.
//!
//! Why lanes: one libp2p connection is one task, so TCP, noise and yamux for everything on it
//! run on one core. libp2p's own perf method moved 604-626 MB/s over one connection on a
//! 16-core Xeon whose disk writes 1.2-1.5 GB/s, so a bulk fetch from one provider spreads
//! its streams over several connections. `libp2p-stream` 0.5.0-alpha cannot do that (it picks
//! one of a peer's connections at random), and it loses a request made while a connection
//! is being set up; this behaviour does neither.
//!
//! A connection is usable from the moment its handler exists. When an extra connection is
//! refused (its dial fails: no address, our own limit; or the peer closes it before it
//! carried a stream: the peer's limit), the lanes past the connections there are fold back
//! onto them (`i % count`) until one of those closes.

use std::{
    collections::{HashMap, hash_map::Entry},
    convert::Infallible,
    future::{Ready, ready},
    io,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
};

use futures::{
    StreamExt,
    channel::{mpsc, oneshot},
};
use libp2p::{
    Multiaddr, PeerId, Stream, StreamProtocol,
    core::{
        Endpoint,
        transport::PortUse,
        upgrade::{InboundUpgrade, OutboundUpgrade, UpgradeInfo},
    },
    swarm::{
        ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, DialError,
        DialFailure, FromSwarm, NetworkBehaviour, StreamUpgradeError, SubstreamProtocol, THandler,
        THandlerInEvent, THandlerOutEvent, ToSwarm,
        dial_opts::{DialOpts, PeerCondition},
        handler::{
            ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
        },
    },
};

/// Inbound streams of one protocol not yet taken by their acceptor; more are dropped (the
/// opener sees the stream close).
const INBOUND_QUEUE: usize = 32;
/// Outbound streams asked of one connection and not yet taken up by its handler; more fail.
const OPENING_PER_CONNECTION: usize = 64;

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// The peer does not speak the protocol.
    #[error("the peer does not speak the protocol")]
    Unsupported,
    /// No connection (the dial failed), or the connection failed while the stream was set up.
    #[error(transparent)]
    Io(#[from] io::Error),
}

type Reply = oneshot::Sender<Result<Stream, OpenError>>;

/// A request for an outbound stream, sent to one connection's handler.
#[derive(Debug)]
struct NewStream {
    protocol: StreamProtocol,
    reply: Reply,
}

/// Opens streams and registers the protocols answered; shared by the clones of a network
/// client.
#[derive(Clone)]
pub(crate) struct Control(Arc<Mutex<Shared>>);

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("streams::Control")
    }
}

impl Control {
    /// Answers `protocol` from now on: its inbound streams come out of the receiver.
    ///
    /// # Panics
    ///
    /// If `protocol` is answered already (a programming error: each is registered once).
    pub(crate) fn accept(&self, protocol: StreamProtocol) -> mpsc::Receiver<(PeerId, Stream)> {
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let previous = lock(&self.0).inbound.insert(protocol.clone(), tx);
        assert!(previous.is_none(), "{protocol} is answered twice");
        rx
    }

    /// Opens a stream to `peer` on `protocol`, on connection `lane` (see the module's
    /// documentation), dialing the peer if need be. Not bounded in time: the caller bounds it.
    pub(crate) async fn open(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
        lane: usize,
    ) -> Result<Stream, OpenError> {
        let (reply, answer) = oneshot::channel();
        lock(&self.0).route(peer, lane, NewStream { protocol, reply });
        answer
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::ConnectionReset, "connection closed"))?
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct Shared {
    inbound: HashMap<StreamProtocol, mpsc::Sender<(PeerId, Stream)>>,
    peers: HashMap<PeerId, Peer>,
    /// Dials for the behaviour to hand to the swarm.
    dials: Vec<DialOpts>,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Peer {
    /// Open connections in the order they came up: the lanes.
    connections: Vec<Connection>,
    /// Requests waiting for the dial in flight.
    parked: Vec<(usize, NewStream)>,
    /// This behaviour's dial to the peer, while in flight.
    dialing: Option<ConnectionId>,
    /// An extra connection was refused with this many open: no more are asked for until one
    /// of them closes.
    most: Option<usize>,
}

struct Connection {
    id: ConnectionId,
    requests: mpsc::Sender<NewStream>,
    /// The address we dialed, to dial an extra connection to it.
    dialed: Option<Multiaddr>,
    /// Dialed by this behaviour for a lane past the connections there were.
    extra: bool,
    /// Set once a stream was negotiated on it: closing after that is not a refusal.
    carried: Arc<AtomicBool>,
    /// A stream failed on it with an I/O error: it is likely closing, and streams go to the
    /// other connections while there are any. It stays a lane until its handler goes, so a
    /// connection that lives on is never forgotten (a peer's own limits, or a garbled
    /// negotiation, fail one stream and leave the connection up).
    failing: bool,
}

impl Shared {
    /// Sends `request` to the handler of lane `lane`, or parks it behind a dial.
    fn route(&mut self, peer: PeerId, lane: usize, request: NewStream) {
        let state = self.peers.entry(peer).or_default();
        // The lanes: the connections not failing, or all of them if every one is.
        let healthy = state.connections.iter().filter(|c| !c.failing).count();
        let (open, skip_failing) = match healthy {
            0 => (state.connections.len(), false),
            n => (n, true),
        };
        let wants_another =
            open == 0 || (lane >= open && state.most.is_none_or(|most| open < most));
        if !wants_another {
            let Some(connection) = state
                .connections
                .iter_mut()
                .filter(|c| !(skip_failing && c.failing))
                .nth(lane % open)
            else {
                return;
            };
            if let Err(e) = connection.requests.try_send(request) {
                let error = if e.is_full() {
                    io::Error::other(format!(
                        "{OPENING_PER_CONNECTION} streams are being opened on the connection already"
                    ))
                } else {
                    // The handler went between the check and the send: the caller tries again.
                    io::Error::new(io::ErrorKind::ConnectionReset, "connection closed")
                };
                let _ = e.into_inner().reply.send(Err(error.into()));
            }
            return;
        }
        state.parked.push((lane, request));
        if state.dialing.is_some() {
            return;
        }
        let opts = if open == 0 {
            DialOpts::peer_id(peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build()
        } else {
            let dialed = state.connections.iter().filter_map(|c| c.dialed.clone());
            DialOpts::peer_id(peer)
                .condition(PeerCondition::Always)
                .addresses(dialed.collect())
                .extend_addresses_through_behaviour()
                .build()
        };
        state.dialing = Some(opts.connection_id());
        self.dials.push(opts);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// A connection to `peer` is up: it takes the parked requests that want it.
    fn connected(&mut self, peer: PeerId, mut connection: Connection) {
        let state = self.peers.entry(peer).or_default();
        if state.dialing == Some(connection.id) {
            state.dialing = None;
            connection.extra = !state.connections.is_empty();
        }
        state.connections.push(connection);
        let parked = std::mem::take(&mut state.parked);
        for (lane, request) in parked {
            self.route(peer, lane, request);
        }
    }

    /// A stream failed on connection `id` with an I/O error: the next tries go to the other
    /// lanes, and an extra connection that never carried a stream was refused (the lanes
    /// fold at once, before its handler goes).
    fn failing(&mut self, peer: PeerId, id: ConnectionId) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(connection) = state.connections.iter_mut().find(|c| c.id == id) else {
            return;
        };
        connection.failing = true;
        if connection.extra && !connection.carried.load(Ordering::Relaxed) {
            state.most = Some(state.connections.iter().filter(|c| !c.failing).count());
        }
    }

    /// Connection `id` to `peer` is gone: its handler's drop (`Handler`'s `Drop`), which comes
    /// with every closed connection.
    fn closed(&mut self, peer: PeerId, id: ConnectionId) {
        if let Entry::Occupied(mut state) = self.peers.entry(peer) {
            let peer_state = state.get_mut();
            let Some(at) = peer_state.connections.iter().position(|c| c.id == id) else {
                return;
            };
            let gone = peer_state.connections.remove(at);
            let refused = gone.extra && !gone.carried.load(Ordering::Relaxed);
            peer_state.most = refused.then_some(peer_state.connections.len());
            if peer_state.connections.is_empty()
                && peer_state.parked.is_empty()
                && peer_state.dialing.is_none()
            {
                state.remove();
            }
        }
    }

    fn dial_failed(&mut self, peer: PeerId, id: ConnectionId, error: &DialError) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let ours = state.dialing == Some(id);
        if ours {
            state.dialing = None;
        }
        let open = state.connections.len();
        if open == 0 {
            if state.dialing.is_some() || matches!(error, DialError::DialPeerConditionFalse(_)) {
                // Another dial to the peer is under way: its connection takes the requests.
                return;
            }
            let parked = std::mem::take(&mut state.parked);
            self.peers.remove(&peer);
            for (_, request) in parked {
                let failed = io::Error::new(io::ErrorKind::NotConnected, error.to_string());
                let _ = request.reply.send(Err(failed.into()));
            }
        } else if ours {
            // An extra connection was refused: the lanes fold onto those there are.
            tracing::debug!(%peer, open, "no extra connection: {error}");
            state.most = Some(open);
            for (lane, request) in std::mem::take(&mut state.parked) {
                self.route(peer, lane, request);
            }
        }
    }

    fn deliver(&mut self, peer: PeerId, protocol: StreamProtocol, stream: Stream) {
        if let Some(acceptor) = self.inbound.get_mut(&protocol)
            && let Err(e) = acceptor.try_send((peer, stream))
        {
            tracing::debug!(%peer, %protocol, "inbound stream dropped: {e}");
        }
    }
}

/// The behaviour: one [`Handler`] per connection.
pub(crate) struct Behaviour(Arc<Mutex<Shared>>);

impl Behaviour {
    pub(crate) fn new() -> Self {
        Self(Arc::default())
    }

    pub(crate) fn control(&self) -> Control {
        Control(Arc::clone(&self.0))
    }

    fn handler(&self, peer: PeerId, id: ConnectionId, dialed: Option<Multiaddr>) -> Handler {
        let (requests, receiver) = mpsc::channel(OPENING_PER_CONNECTION);
        let carried = Arc::new(AtomicBool::new(false));
        lock(&self.0).connected(
            peer,
            Connection {
                id,
                requests,
                dialed,
                extra: false,
                carried: Arc::clone(&carried),
                failing: false,
            },
        );
        Handler {
            remote: peer,
            id,
            shared: Arc::clone(&self.0),
            requests: receiver,
            carried,
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = ();

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, id, None))
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, id, Some(addr.clone())))
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        // Closed connections need nothing here: their handlers' drop says so, and sooner.
        if let FromSwarm::DialFailure(DialFailure {
            peer_id: Some(peer),
            error,
            connection_id,
        }) = event
        {
            lock(&self.0).dial_failed(peer, connection_id, error);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<(), THandlerInEvent<Self>>> {
        let mut shared = lock(&self.0);
        match shared.dials.pop() {
            Some(opts) => Poll::Ready(ToSwarm::Dial { opts }),
            None => {
                shared.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// One connection's side: opens the streams asked of it, and hands inbound ones to their
/// acceptors.
pub(crate) struct Handler {
    remote: PeerId,
    id: ConnectionId,
    shared: Arc<Mutex<Shared>>,
    requests: mpsc::Receiver<NewStream>,
    carried: Arc<AtomicBool>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Infallible;
    type ToBehaviour = Infallible;
    type InboundProtocol = Upgrade;
    type OutboundProtocol = Upgrade;
    type InboundOpenInfo = ();
    /// Each outbound stream carries its own reply, so any number may be set up at once.
    type OutboundOpenInfo = Reply;

    fn listen_protocol(&self) -> SubstreamProtocol<Upgrade, ()> {
        let protocols = lock(&self.shared).inbound.keys().cloned().collect();
        SubstreamProtocol::new(Upgrade(protocols), ())
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Upgrade, Reply, Infallible>> {
        match self.requests.poll_next_unpin(cx) {
            Poll::Ready(Some(NewStream { protocol, reply })) => {
                Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                    protocol: SubstreamProtocol::new(Upgrade(vec![protocol]), reply),
                })
            }
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn on_behaviour_event(&mut self, event: Infallible) {
        match event {}
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<'_, Upgrade, Upgrade, (), Reply>) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, protocol),
                ..
            }) => {
                self.carried.store(true, Ordering::Relaxed);
                lock(&self.shared).deliver(self.remote, protocol, stream);
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: (stream, _),
                info: reply,
            }) => {
                self.carried.store(true, Ordering::Relaxed);
                let _ = reply.send(Ok(stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, info: reply }) => {
                if matches!(error, StreamUpgradeError::Io(_)) {
                    // The caller's next try goes to another lane, if there is one.
                    lock(&self.shared).failing(self.remote, self.id);
                }
                let error = match error {
                    StreamUpgradeError::NegotiationFailed => OpenError::Unsupported,
                    StreamUpgradeError::Timeout => io::Error::from(io::ErrorKind::TimedOut).into(),
                    StreamUpgradeError::Io(e) => e.into(),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                let _ = reply.send(Err(error));
            }
            _ => {}
        }
    }
}

impl Drop for Handler {
    /// Before the swarm reports the connection closed, and before the replies of the
    /// requests still queued here fail: their callers' next tries must not come back here.
    fn drop(&mut self) {
        lock(&self.shared).closed(self.remote, self.id);
    }
}

/// Negotiates one of a list of protocols and hands over the stream as it is.
pub(crate) struct Upgrade(Vec<StreamProtocol>);

impl UpgradeInfo for Upgrade {
    type Info = StreamProtocol;
    type InfoIter = std::vec::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.clone().into_iter()
    }
}

impl InboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_inbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}

impl OutboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_outbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection as a handler registers it, and the handler's end of its request queue.
    fn connect(
        shared: &mut Shared,
        peer: PeerId,
        id: usize,
        extra: bool,
    ) -> mpsc::Receiver<NewStream> {
        let (requests, receiver) = mpsc::channel(OPENING_PER_CONNECTION);
        shared.connected(
            peer,
            Connection {
                id: ConnectionId::new_unchecked(id),
                requests,
                dialed: None,
                extra,
                carried: Arc::default(),
                failing: false,
            },
        );
        receiver
    }

    fn ask(
        shared: &mut Shared,
        peer: PeerId,
        lane: usize,
    ) -> oneshot::Receiver<Result<Stream, OpenError>> {
        let (reply, answer) = oneshot::channel();
        let protocol = StreamProtocol::new("/test/1");
        shared.route(peer, lane, NewStream { protocol, reply });
        answer
    }

    #[test]
    fn a_connection_whose_stream_failed_still_serves_when_it_is_the_only_one() {
        let (mut shared, peer) = (Shared::default(), PeerId::random());
        let mut only = connect(&mut shared, peer, 1, false);
        shared.failing(peer, ConnectionId::new_unchecked(1));
        let _answer = ask(&mut shared, peer, 0);
        assert!(
            only.try_recv().is_ok(),
            "the request went to the live connection"
        );
        assert!(
            shared.dials.is_empty(),
            "no dial, which the swarm would refuse"
        );
    }

    #[test]
    fn streams_go_around_a_failing_connection_and_a_refused_extra_one_folds_the_lanes() {
        let (mut shared, peer) = (Shared::default(), PeerId::random());
        let mut first = connect(&mut shared, peer, 1, false);
        let mut extra = connect(&mut shared, peer, 2, true);
        shared.failing(peer, ConnectionId::new_unchecked(2));
        // Lane 1 folds onto the first connection, without dialing a third.
        let _answer = ask(&mut shared, peer, 1);
        assert!(first.try_recv().is_ok());
        assert!(
            extra.try_recv().is_err(),
            "nothing waits on the failing one"
        );
        assert!(shared.dials.is_empty());
        assert_eq!(shared.peers[&peer].most, Some(1));
    }
}
