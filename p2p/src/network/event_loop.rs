//! The event loop: it owns the [`Swarm`], runs the commands of [`NetworkClient`]s and settles
//! their pending operations from swarm events. Each caller's reply sender is parked under its
//! operation's id until the matching event settles it.

use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
    sync::Arc,
};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm,
    core::transport::ListenerId,
    identify, kad, mdns,
    request_response::{self, OutboundFailure, OutboundRequestId},
    swarm::{
        ConnectionId, SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Span, debug, info, info_span, trace, warn};

#[cfg(doc)]
use super::NetworkClient;
use super::{
    Command, Error, Reply,
    inbound::{Inbound, InboundHandler, InboundPermits, InboundReply},
    peer_of,
};
use crate::{
    behaviour::{Behaviour, BehaviourEvent},
    codec::{BLOCK_PROTOCOL_NAME, CAPACITY_PROTOCOL_NAME, KAD_PROTOCOL, PROGRESS_PROTOCOL_NAME},
    messages::{BlockResponse, Capacity, CapacityRequest},
};

/// Identify can report any number of addresses; we keep this many per peer.
const MAX_ADDRS_PER_PEER: usize = 16;
/// Callers waiting for the first listen addresses; more get the current list at once.
const MAX_LISTEN_WAITERS: usize = 64;

pub(super) struct EventLoop {
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) local_peer_id: PeerId,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) reply_tx: mpsc::Sender<InboundReply>,
    pub(super) reply_rx: mpsc::Receiver<InboundReply>,
    pub(super) handler: Arc<dyn InboundHandler>,
    pub(super) permits: InboundPermits,
    /// Inbound handlers in flight, each ending with the peer it served.
    pub(super) inbound: JoinSet<PeerId>,
    pub(super) shutdown: CancellationToken,
    pub(super) bootstrap_peers: HashSet<PeerId>,
    pub(super) listen_addrs: Vec<Multiaddr>,
    pub(super) listeners_pending: HashSet<ListenerId>,
    pub(super) listen_waiters: Vec<Reply<Vec<Multiaddr>>>,
    pub(super) pending: Outbound,
    pub(super) connection_spans: HashMap<ConnectionId, Span>,
}

impl EventLoop {
    pub(super) async fn run(mut self) {
        info!("network started");
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(reply) = self.reply_rx.recv() => self.on_inbound_reply(reply),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    // Every client is gone: nobody can use or stop us any more.
                    None => break,
                },
                Some(joined) = self.inbound.join_next(), if !self.inbound.is_empty() => {
                    match joined {
                        Ok(peer) => self.permits.drop_if_idle(&peer),
                        Err(e) => {
                            if e.is_panic() {
                                warn!("an inbound request handler panicked; its request was dropped");
                            }
                            // A panicked task no longer says whose it was.
                            self.permits.drop_all_idle();
                        }
                    }
                }
            }
        }
        info!("network shutting down");
        self.shutdown.cancel();
        self.commands.close();
        self.inbound.shutdown().await;
        // Dropping `self` drops every pending reply sender (callers see `Error::Shutdown`)
        // and the swarm with its connections.
    }

    pub(super) fn connection_span(&self, connection: ConnectionId) -> Span {
        self.connection_spans
            .get(&connection)
            .cloned()
            .unwrap_or_else(Span::current)
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::ListenAddrs(tx) => {
                if self.listeners_pending.is_empty()
                    || self.listen_waiters.len() >= MAX_LISTEN_WAITERS
                {
                    let _ = tx.send(Ok(self.listen_addrs.clone()));
                } else {
                    self.listen_waiters.push(tx);
                }
            }
            Command::ConnectedPeers(tx) => {
                let _ = tx.send(Ok(self.swarm.connected_peers().copied().collect()));
            }
            Command::Dial(addr, tx) => {
                if let Some(tx) = self.pending.admit(tx) {
                    self.dial(addr, tx);
                }
            }
            Command::FetchBlock(peer, request, tx) => {
                if let Some(tx) = self.pending.admit(tx) {
                    let behaviour = self.swarm.behaviour_mut();
                    let id = behaviour.block.send_request(&peer, *request);
                    self.pending.block.insert(id, (), tx);
                }
            }
            Command::Capacity(peer, tx) => {
                if let Some(tx) = self.pending.admit(tx) {
                    let behaviour = self.swarm.behaviour_mut();
                    let id = behaviour.capacity.send_request(&peer, CapacityRequest);
                    self.pending.capacity.insert(id, (), tx);
                }
            }
            Command::Progress(peer, record, tx) => {
                if let Some(tx) = self.pending.admit(tx) {
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .progress
                        .send_request(&peer, record);
                    self.pending.progress.insert(id, (), tx);
                }
            }
            Command::StartProviding(cid, tx) => {
                let Some(tx) = self.pending.admit(tx) else {
                    return;
                };
                let key = kad::RecordKey::new(cid.as_bytes());
                match self.swarm.behaviour_mut().kademlia.start_providing(key) {
                    Ok(id) => self.pending.provide.insert(id, (), tx),
                    Err(e) => {
                        let _ = tx.send(Err(Error::ProviderStore {
                            cid,
                            reason: e.to_string(),
                        }));
                    }
                }
            }
            Command::StopProviding(cid, tx) => {
                let key = kad::RecordKey::new(cid.as_bytes());
                self.swarm.behaviour_mut().kademlia.stop_providing(&key);
                let _ = tx.send(Ok(()));
            }
            Command::FindProviders(cid, tx) => {
                if let Some(tx) = self.pending.admit(tx) {
                    let key = kad::RecordKey::new(cid.as_bytes());
                    let id = self.swarm.behaviour_mut().kademlia.get_providers(key);
                    self.pending.providers.insert(id, HashSet::new(), tx);
                }
            }
        }
    }

    fn dial(&mut self, addr: Multiaddr, tx: Reply<PeerId>) {
        let opts = match peer_of(&addr) {
            Some(peer) if peer == self.local_peer_id => {
                let _ = tx.send(Err(Error::DialSelf { addr }));
                return;
            }
            Some(peer) if self.swarm.is_connected(&peer) => {
                let _ = tx.send(Ok(peer));
                return;
            }
            // `Always`, so that this dial gets its own connection events to answer from.
            Some(peer) => DialOpts::peer_id(peer)
                .addresses(vec![addr.clone()])
                .condition(PeerCondition::Always)
                .build(),
            None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        let connection = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => self.pending.dial.insert(connection, addr, tx),
            Err(e) => {
                warn!(%addr, "dial failed: {e}");
                let _ = tx.send(Err(Error::Unreachable {
                    addr,
                    reason: e.to_string(),
                }));
            }
        }
    }

    fn answer_listen_waiters(&mut self) {
        if self.listeners_pending.is_empty() {
            for tx in self.listen_waiters.drain(..) {
                let _ = tx.send(Ok(self.listen_addrs.clone()));
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                info!("listening on {address}/p2p/{}", self.local_peer_id);
                if !self.listen_addrs.contains(&address) {
                    self.listen_addrs.push(address);
                }
                self.listeners_pending.remove(&listener_id);
                self.answer_listen_waiters();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                debug!(%address, "listen address expired");
                self.listen_addrs.retain(|a| a != &address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                warn!(?addresses, "listener closed: {reason:?}");
                self.listen_addrs.retain(|a| !addresses.contains(a));
                self.listeners_pending.remove(&listener_id);
                self.answer_listen_waiters();
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                warn!(?listener_id, "listener error: {error}");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let span = info_span!(
                    "connection",
                    peer = %peer_id,
                    id = %connection_id,
                    remote = %endpoint.get_remote_address(),
                );
                span.in_scope(|| debug!(num_established, "connection established"));
                self.connection_spans.insert(connection_id, span);
                self.pending.dial.settle(&connection_id, peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                cause,
                num_established,
                ..
            } => {
                if let Some(span) = self.connection_spans.remove(&connection_id) {
                    span.in_scope(|| debug!(num_established, ?cause, "connection closed"));
                }
                if num_established == 0 {
                    // Nothing can carry an answer back to this peer any more.
                    self.permits.disconnected(&peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                if let Some(peer) = peer_id.filter(|p| self.bootstrap_peers.contains(p)) {
                    warn!(%peer, "bootstrap peer unreachable: {error}; continuing without it");
                } else {
                    debug!(?peer_id, "outgoing connection failed: {error}");
                }
                self.pending.dial.finish(&connection_id, |addr| {
                    Err(Error::Unreachable {
                        addr,
                        reason: error.to_string(),
                    })
                });
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                debug!(%send_back_addr, "incoming connection failed: {error}");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocols.contains(&KAD_PROTOCOL) {
                    let kademlia = &mut self.swarm.behaviour_mut().kademlia;
                    for addr in info.listen_addrs.into_iter().take(MAX_ADDRS_PER_PEER) {
                        kademlia.add_address(&peer_id, addr);
                    }
                }
            }
            BehaviourEvent::Limits(never) => match never {},
            BehaviourEvent::Identify(_) | BehaviourEvent::Ping(_) | BehaviourEvent::Stream(()) => {}
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    debug!(%peer, %addr, "mdns discovered");
                    self.swarm
                        .behaviour_mut()
                        .kademlia
                        .add_address(&peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        let opts = DialOpts::peer_id(peer).addresses(vec![addr]).build();
                        let _ = self.swarm.dial(opts);
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(gone)) => {
                for (peer, addr) in gone {
                    self.swarm
                        .behaviour_mut()
                        .kademlia
                        .remove_address(&peer, &addr);
                }
            }
            BehaviourEvent::Kademlia(event) => self.on_kad_event(event),
            BehaviourEvent::Block(event) => {
                if let Some(r) =
                    settle_outbound(&mut self.pending.block, BLOCK_PROTOCOL_NAME, event)
                {
                    self.on_block_request(r);
                }
            }
            BehaviourEvent::Capacity(event) => {
                let pending = &mut self.pending.capacity;
                if let Some(r) = settle_outbound(pending, CAPACITY_PROTOCOL_NAME, event) {
                    self.on_capacity_request(r);
                }
            }
            BehaviourEvent::Progress(event) => {
                let pending = &mut self.pending.progress;
                if let Some(r) = settle_outbound(pending, PROGRESS_PROTOCOL_NAME, event) {
                    self.on_progress_request(r);
                }
            }
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        let (id, result, step) = match event {
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => (id, result, step),
            other => {
                trace!(?other, "kademlia");
                return;
            }
        };
        match result {
            kad::QueryResult::GetProviders(result) => {
                let done = match result {
                    Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => {
                        if let Some(found) = self.pending.providers.state_mut(&id) {
                            found
                                .extend(providers.into_iter().filter(|p| *p != self.local_peer_id));
                        }
                        step.last
                    }
                    Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => true,
                    Err(e) => {
                        debug!("provider query ended: {e}");
                        true
                    }
                };
                if done {
                    self.pending.providers.finish(&id, Ok);
                }
            }
            kad::QueryResult::StartProviding(result) => {
                if let Err(e) = result {
                    // The record is stored locally and republished periodically; peers that
                    // could not be reached now will hear of it later.
                    debug!("provider record not published to every peer: {e}");
                }
                self.pending.provide.settle(&id, ());
            }
            kad::QueryResult::Bootstrap(Err(e)) => {
                warn!("kademlia bootstrap failed: {e}");
            }
            other => trace!(?other, "kademlia query progressed"),
        }
    }
}

fn outbound_error(peer: PeerId, protocol: &'static str, error: OutboundFailure) -> Error {
    match error {
        OutboundFailure::DialFailure => Error::PeerUnreachable { peer, protocol },
        OutboundFailure::Timeout => Error::RequestTimeout { peer, protocol },
        OutboundFailure::ConnectionClosed => Error::ConnectionClosed { peer, protocol },
        OutboundFailure::UnsupportedProtocols => Error::Unsupported { peer, protocol },
        OutboundFailure::Io(source) => Error::Stream {
            peer,
            protocol,
            source,
        },
    }
}

/// Resolves the outbound side of a request-response event against `pending`; hands back an
/// inbound request, if that is what the event was.
fn settle_outbound<Req, Resp>(
    pending: &mut Pending<OutboundRequestId, Resp>,
    protocol: &'static str,
    event: request_response::Event<Req, Resp>,
) -> Option<Inbound<Req, Resp>> {
    match event {
        request_response::Event::Message {
            peer,
            connection_id,
            message:
                request_response::Message::Request {
                    request_id,
                    request,
                    channel,
                },
        } => {
            return Some(Inbound {
                peer,
                connection: connection_id,
                id: request_id,
                request,
                channel,
            });
        }
        request_response::Event::Message {
            message:
                request_response::Message::Response {
                    request_id,
                    response,
                },
            ..
        } => pending.settle(&request_id, response),
        request_response::Event::OutboundFailure {
            peer,
            request_id,
            error,
            ..
        } => {
            debug!(%peer, protocol, "outbound request failed: {error}");
            pending.fail(&request_id, outbound_error(peer, protocol, error));
        }
        request_response::Event::InboundFailure {
            peer,
            request_id,
            error,
            ..
        } => {
            // Malformed or oversized requests land here: libp2p has already dropped the stream.
            debug!(%peer, protocol, request = %request_id, "inbound request dropped: {error}");
        }
        request_response::Event::ResponseSent { .. } => {}
    }
    None
}

/// One kind of outbound operation: the caller awaiting a `T` for each operation `Id`, beside
/// the state `S` the operation keeps until it settles.
pub(super) struct Pending<Id, T, S = ()>(HashMap<Id, (S, Reply<T>)>);

impl<Id, T, S> Default for Pending<Id, T, S> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<Id: Eq + Hash, T, S> Pending<Id, T, S> {
    /// Parks `tx` until operation `id` settles, starting from `state`.
    pub(super) fn insert(&mut self, id: Id, state: S, tx: Reply<T>) {
        self.0.insert(id, (state, tx));
    }

    /// The state of operation `id`, while it is pending.
    pub(super) fn state_mut(&mut self, id: &Id) -> Option<&mut S> {
        self.0.get_mut(id).map(|(state, _)| state)
    }

    /// Answers the caller of `id`, if it is pending, with `reply`.
    pub(super) fn settle(&mut self, id: &Id, reply: T) {
        self.finish(id, |_| Ok(reply));
    }

    /// Answers the caller of `id`, if it is pending, with `error`.
    pub(super) fn fail(&mut self, id: &Id, error: Error) {
        self.finish(id, |_| Err(error));
    }

    /// Answers the caller of `id`, if it is pending, with what `answer` makes of its state.
    pub(super) fn finish(&mut self, id: &Id, answer: impl FnOnce(S) -> Result<T, Error>) {
        if let Some((state, tx)) = self.0.remove(id) {
            let _ = tx.send(answer(state));
        }
    }

    /// How many operations are pending; with `prune`, after dropping those whose callers
    /// gave up.
    fn len(&mut self, prune: bool) -> usize {
        if prune {
            self.0.retain(|_, (_, tx)| !tx.is_closed());
        }
        self.0.len()
    }
}

/// Every outbound operation awaiting an answer, one [`Pending`] map per kind, bounded together
/// by `max` ([`Config::max_pending_outbound`](super::Config::max_pending_outbound)).
#[derive(Default)]
pub(super) struct Outbound {
    pub(super) dial: Pending<ConnectionId, PeerId, Multiaddr>,
    pub(super) block: Pending<OutboundRequestId, BlockResponse>,
    pub(super) capacity: Pending<OutboundRequestId, Capacity>,
    pub(super) progress: Pending<OutboundRequestId, ()>,
    pub(super) provide: Pending<kad::QueryId, ()>,
    pub(super) providers: Pending<kad::QueryId, HashSet<PeerId>, HashSet<PeerId>>,
    pub(super) max: usize,
}

impl Outbound {
    /// `tx` back if another outbound operation may start (ask before starting it); otherwise
    /// answers it [`Error::TooManyInFlight`].
    pub(super) fn admit<T>(&mut self, tx: Reply<T>) -> Option<Reply<T>> {
        if self.has_room() {
            return Some(tx);
        }
        let _ = tx.send(Err(Error::TooManyInFlight { limit: self.max }));
        None
    }

    /// Whether another outbound operation may start; drops entries whose callers gave up.
    fn has_room(&mut self) -> bool {
        self.len(false) < self.max || self.len(true) < self.max
    }

    fn len(&mut self, prune: bool) -> usize {
        self.dial.len(prune)
            + self.block.len(prune)
            + self.capacity.len(prune)
            + self.progress.len(prune)
            + self.provide.len(prune)
            + self.providers.len(prune)
    }
}
