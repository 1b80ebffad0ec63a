//! The network actor: one event loop owns the [`Swarm`]; cloneable [`NetworkClient`]s talk
//! to it through a bounded command channel. This file also holds how to start one
//! ([`Config`]) and what its calls can fail with ([`Error`]).
//!
//! Shape (after rust-libp2p `examples/file-sharing`): every client call sends a [`Command`]
//! carrying a oneshot reply sender; the loop starts the libp2p operation and parks the sender
//! in a `pending` map keyed by the operation's id until the matching swarm event arrives.
//! Inbound requests run on spawned tasks, bounded by semaphores (node-wide and per remote
//! peer), and hand their answers back to the loop through a bounded reply channel.
//!
//! Everything is bounded: the command channel, the reply channel, the pending maps, inbound
//! work in flight (in all and per peer), connections (in all, per peer and pending), and
//! streams per connection and protocol.

mod accept;
mod client;
mod event_loop;
mod inbound;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use libp2p::{
    Multiaddr, PeerId, SwarmBuilder, identity::Keypair, multiaddr::Protocol, noise,
    swarm::dial_opts::DialOpts, tcp, yamux,
};
use tokio::{
    sync::{mpsc, oneshot},
    task::{JoinHandle, JoinSet},
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

pub(crate) use self::client::open_stream;
pub use self::{client::NetworkClient, inbound::InboundHandler};
use self::{
    event_loop::{EventLoop, Outbound},
    inbound::InboundPermits,
};
use crate::{
    behaviour::Behaviour,
    bulk::{self, BULK_PROTOCOL, BULK_PROTOCOL_NAME, BULK_STALL_TIMEOUT},
    messages::{BlockRequest, BlockResponse, Capacity, Cid, ProgressRecord},
    tasks::{self, TASK_IDLE_TIMEOUT, TASK_PROTOCOL, TASK_PROTOCOL_NAME, TaskSlots},
};
#[cfg(doc)]
use libp2p::Swarm;

/// Inbound task requests a peer handles at once by default, from all peers together; past
/// that it answers `Busy`.
pub const DEFAULT_MAX_INBOUND_TASKS: usize = 32;

/// Inbound task requests a peer handles at once by default for any one remote peer; past that
/// it answers that peer `Busy`. Submitters keep at most this many of their tasks in flight on
/// one peer.
pub const DEFAULT_MAX_INBOUND_TASKS_PER_PEER: usize = 8;

/// How to start a [`Network`]. Build with [`Config::new`], then adjust the public fields.
#[derive(Debug)]
#[non_exhaustive]
pub struct Config {
    /// This peer's identity.
    pub keypair: Keypair,
    /// Addresses to listen on: `/ip4/…/tcp/…` and/or `/ip4/…/udp/…/quic-v1`. Port 0 picks a
    /// free port; [`NetworkClient::listen_addrs`] reports the real ones.
    pub listen: Vec<Multiaddr>,
    /// Peers to join through, each ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// Cancel to stop the actor gracefully ([`NetworkClient::shutdown`] does this too).
    pub shutdown: CancellationToken,
    /// Longest wait for a `/shoal/task/6` outcome. Default 10 minutes.
    pub task_timeout: Duration,
    /// Longest wait for a `/shoal/block/2` response. Default 30 s.
    pub block_timeout: Duration,
    /// Longest wait for a `/shoal/capacity/1` response. Default 10 s.
    pub capacity_timeout: Duration,
    /// Longest wait for [`NetworkClient::dial`]. Default 10 s.
    pub dial_timeout: Duration,
    /// Longest Kademlia query (find providers, publish a provider record). Default 10 s.
    pub query_timeout: Duration,
    /// Connections with no open stream close after this. Default 60 s.
    pub idle_connection_timeout: Duration,
    /// Inbound tasks handled at once, from all peers together; more are answered `Busy`.
    /// Default 32 ([`DEFAULT_MAX_INBOUND_TASKS`]).
    pub max_inbound_tasks: usize,
    /// Inbound tasks handled at once for any one remote peer, within `max_inbound_tasks`;
    /// more from that peer are answered `Busy`, so that one peer cannot take every slot.
    /// Default 8 ([`DEFAULT_MAX_INBOUND_TASKS_PER_PEER`]).
    pub max_inbound_tasks_per_peer: usize,
    /// Inbound block and capacity requests handled at once, from all peers together; more are
    /// answered `Busy` (blocks) or dropped (capacity). Default 64.
    pub max_inbound_requests: usize,
    /// Inbound block and capacity requests handled at once for any one remote peer, within
    /// `max_inbound_requests`; more from that peer are answered `Busy` (blocks) or dropped
    /// (capacity). Default 16.
    pub max_inbound_requests_per_peer: usize,
    /// Inbound `/shoal/bulk/1` streams served at once, from all peers together; more are
    /// answered `Busy`. Default 16.
    pub max_inbound_bulk: usize,
    /// Inbound `/shoal/bulk/1` streams served at once for any one remote peer, within
    /// `max_inbound_bulk`; more from that peer are answered `Busy`. Default 4.
    pub max_inbound_bulk_per_peer: usize,
    /// How long a bulk requester waits for the next byte it is owed before it gives the
    /// provider up. Default 5 s ([`BULK_STALL_TIMEOUT`]).
    pub bulk_stall_timeout: Duration,
    /// How long a `/shoal/task/6` stream to a peer stays open with no task in flight; the
    /// next task opens a new one. Default 60 s ([`TASK_IDLE_TIMEOUT`]).
    pub task_idle_timeout: Duration,
    /// Established connections, inbound and outbound together; more are refused. Default 256.
    /// Also the bound on inbound `/shoal/task/6` streams, from all peers together.
    pub max_established: u32,
    /// Established connections with any one peer; more are refused. Default 4. Also the
    /// bound on inbound `/shoal/task/6` streams from any one peer.
    pub max_established_per_peer: u32,
    /// Incoming connections still in their handshake; more are refused before the handshake.
    /// Default 64.
    pub max_pending_incoming: u32,
    /// Concurrent streams per connection and protocol. Default 64.
    pub max_concurrent_streams: usize,
    /// Outbound operations (requests, dials, queries) awaiting an answer; and, apart from
    /// those, tasks in flight to any one peer. Default 1024.
    pub max_pending_outbound: usize,
    /// Depth of the client → actor command channel. Default 256.
    pub command_buffer: usize,
    /// Blocks this peer can announce as a provider. Default 65 536.
    pub max_provided_keys: usize,
}

impl Config {
    /// A config with no listen or bootstrap addresses, mDNS on, and the documented defaults.
    pub fn new(keypair: Keypair) -> Self {
        Self {
            keypair,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            mdns: true,
            shutdown: CancellationToken::new(),
            task_timeout: Duration::from_secs(600),
            block_timeout: Duration::from_secs(30),
            capacity_timeout: Duration::from_secs(10),
            dial_timeout: Duration::from_secs(10),
            query_timeout: Duration::from_secs(10),
            idle_connection_timeout: Duration::from_secs(60),
            max_inbound_tasks: DEFAULT_MAX_INBOUND_TASKS,
            max_inbound_tasks_per_peer: DEFAULT_MAX_INBOUND_TASKS_PER_PEER,
            max_inbound_requests: 64,
            max_inbound_requests_per_peer: 16,
            max_inbound_bulk: 16,
            max_inbound_bulk_per_peer: 4,
            bulk_stall_timeout: BULK_STALL_TIMEOUT,
            task_idle_timeout: TASK_IDLE_TIMEOUT,
            max_established: 256,
            max_established_per_peer: 4,
            max_pending_incoming: 64,
            max_concurrent_streams: 64,
            max_pending_outbound: 1024,
            command_buffer: 256,
            max_provided_keys: 1 << 16,
        }
    }
}

/// What went wrong in the network layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transport or behaviour could not be built.
    #[error("cannot build the libp2p swarm: {0}")]
    Build(String),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// A bootstrap address lacks its `/p2p/<peer id>` suffix.
    #[error("bootstrap address {addr} must end in /p2p/<peer id>")]
    BootstrapWithoutPeerId {
        /// The address.
        addr: Multiaddr,
    },
    /// Dialing an address failed.
    #[error("address {addr} is unreachable: {reason}")]
    Unreachable {
        /// The address dialed.
        addr: Multiaddr,
        /// Why the dial failed.
        reason: String,
    },
    /// The address names this very peer.
    #[error("refusing to dial our own peer id at {addr}")]
    DialSelf {
        /// The address.
        addr: Multiaddr,
    },
    /// A request could not reach the peer (no known address, or every dial failed).
    #[error("peer {peer} is unreachable for {protocol}")]
    PeerUnreachable {
        /// The peer.
        peer: PeerId,
        /// The protocol of the request.
        protocol: &'static str,
    },
    /// The peer does not speak the protocol.
    #[error("peer {peer} does not support {protocol}")]
    Unsupported {
        /// The peer.
        peer: PeerId,
        /// The protocol.
        protocol: &'static str,
    },
    /// The connection closed before the response arrived.
    #[error("connection to {peer} closed before {protocol} answered")]
    ConnectionClosed {
        /// The peer.
        peer: PeerId,
        /// The protocol.
        protocol: &'static str,
    },
    /// The stream failed: the peer sent a malformed or oversized response, or hung up.
    #[error("{protocol} stream with {peer} failed: {source}")]
    Stream {
        /// The peer.
        peer: PeerId,
        /// The protocol.
        protocol: &'static str,
        /// The I/O or decoding error.
        #[source]
        source: std::io::Error,
    },
    /// The operation did not finish in time.
    #[error("{op} timed out after {after:?}")]
    Timeout {
        /// What timed out.
        op: &'static str,
        /// The bound that was hit.
        after: Duration,
    },
    /// The peer did not answer within the protocol's timeout.
    #[error("{protocol} request to {peer} timed out")]
    RequestTimeout {
        /// The peer.
        peer: PeerId,
        /// The protocol.
        protocol: &'static str,
    },
    /// The peer refused the request because it is at capacity.
    #[error("peer {peer} is busy")]
    Busy {
        /// The peer.
        peer: PeerId,
    },
    /// The peer sent bytes that do not hash to the block id asked for.
    #[error("peer {peer} sent {len} bytes that do not hash to block {cid}")]
    BlockMismatch {
        /// The peer.
        peer: PeerId,
        /// The block asked for.
        cid: Cid,
        /// How many bytes came back.
        len: usize,
    },
    /// The peer would not serve the block to the tenant the request acted for (or does not
    /// hold it: it says the same).
    #[error("peer {peer} denied block {cid}: the tenant may not read it there, or it is not there")]
    Denied {
        /// The peer.
        peer: PeerId,
        /// The block asked for.
        cid: Cid,
    },
    /// A bulk stream's provider sent nothing for this long while it owed bytes.
    #[error("peer {peer} sent nothing on its bulk stream for {after:?}")]
    Stalled {
        /// The peer.
        peer: PeerId,
        /// The bound that was hit.
        after: Duration,
    },
    /// Too many outbound operations are already awaiting answers.
    #[error("too many network operations in flight (limit {limit})")]
    TooManyInFlight {
        /// [`Config::max_pending_outbound`].
        limit: usize,
    },
    /// The local provider-record store refused the record (it is full).
    #[error("cannot record block {cid} as provided: {reason}")]
    ProviderStore {
        /// The block.
        cid: Cid,
        /// Why.
        reason: String,
    },
    /// The network actor has stopped.
    #[error("the network has shut down")]
    Shutdown,
}

type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// A request from a [`NetworkClient`] to the event loop.
enum Command {
    ListenAddrs(Reply<Vec<Multiaddr>>),
    ConnectedPeers(Reply<Vec<PeerId>>),
    Dial(Multiaddr, Reply<PeerId>),
    FetchBlock(PeerId, Box<BlockRequest>, Reply<BlockResponse>),
    Capacity(PeerId, Reply<Capacity>),
    Progress(PeerId, ProgressRecord, Reply<()>),
    StartProviding(Cid, Reply<()>),
    StopProviding(Cid, Reply<()>),
    FindProviders(Cid, Reply<HashSet<PeerId>>),
}

/// Starts the network actor.
#[derive(Debug)]
pub struct Network(());

impl Network {
    /// Builds the swarm, binds the listen addresses, dials the bootstrap peers and spawns the
    /// event loop on the current tokio runtime.
    ///
    /// `handler` makes the [`InboundHandler`] that answers other peers. It gets this network's
    /// client first, so a handler that needs the network (to fetch what a task needs) owns a
    /// client of its own instead of reaching for it later.
    ///
    /// An unreachable bootstrap peer is not an error: it is logged as a warning and the node
    /// keeps running.
    ///
    /// # Errors
    ///
    /// [`Error::BootstrapWithoutPeerId`] for a bootstrap address without `/p2p/<peer id>`,
    /// [`Error::Listen`] if an address cannot be bound, [`Error::Build`] if the transport or
    /// mDNS cannot start.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn spawn(
        config: Config,
        handler: impl FnOnce(NetworkClient) -> Arc<dyn InboundHandler>,
    ) -> Result<(NetworkClient, JoinHandle<()>), Error> {
        let local_peer_id = config.keypair.public().to_peer_id();
        let mut bootstrap = Vec::with_capacity(config.bootstrap.len());
        for addr in &config.bootstrap {
            let peer = peer_of(addr)
                .ok_or_else(|| Error::BootstrapWithoutPeerId { addr: addr.clone() })?;
            if peer != local_peer_id {
                bootstrap.push((peer, addr.clone()));
            }
        }

        let mut swarm = SwarmBuilder::with_existing_identity(config.keypair.clone())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| Error::Build(e.to_string()))?
            .with_quic()
            .with_behaviour(|key| {
                Behaviour::new(key, &config)
                    .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
            })
            .map_err(|e| Error::Build(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_connection_timeout))
            .build();

        let mut listeners_pending = HashSet::new();
        for addr in &config.listen {
            let id = swarm.listen_on(addr.clone()).map_err(|e| Error::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
            listeners_pending.insert(id);
        }

        for (peer, addr) in &bootstrap {
            swarm
                .behaviour_mut()
                .kademlia
                .add_address(peer, addr.clone());
            let opts = DialOpts::peer_id(*peer)
                .addresses(vec![addr.clone()])
                .build();
            if let Err(e) = swarm.dial(opts) {
                warn!(%addr, "bootstrap peer unreachable: {e}; continuing without it");
            }
        }
        if !bootstrap.is_empty() {
            // Fails only with an empty routing table, which the loop above rules out.
            if let Err(e) = swarm.behaviour_mut().kademlia.bootstrap() {
                warn!("kademlia bootstrap not started: {e}");
            }
        }

        let (command_tx, command_rx) = mpsc::channel(config.command_buffer.max(1));
        let (reply_tx, reply_rx) = mpsc::channel(config.max_inbound_requests.max(1));

        let control = swarm.behaviour().stream.control();
        let (bulk_streams, task_streams) =
            (control.accept(BULK_PROTOCOL), control.accept(TASK_PROTOCOL));
        let client = NetworkClient::new(command_tx, local_peer_id, &config, control);
        let handler = handler(client.clone());
        let bulk = accept::Acceptor {
            protocol: BULK_PROTOCOL_NAME,
            max: config.max_inbound_bulk,
            max_per_peer: config.max_inbound_bulk_per_peer,
            serve: {
                let handler = Arc::clone(&handler);
                Box::new(move |peer, stream| {
                    Box::pin(bulk::serve(peer, stream, Arc::clone(&handler)))
                })
            },
            refuse: |stream| Box::pin(bulk::refuse_busy(stream)),
        };
        let slots = TaskSlots::new(config.max_inbound_tasks, config.max_inbound_tasks_per_peer);
        let tasks = accept::Acceptor {
            protocol: TASK_PROTOCOL_NAME,
            max: usize::try_from(config.max_established).unwrap_or(usize::MAX),
            max_per_peer: usize::try_from(config.max_established_per_peer).unwrap_or(usize::MAX),
            serve: {
                let handler = Arc::clone(&handler);
                // Past the submitter's own idle time, so that it retires a stream first.
                let idle = config.task_idle_timeout * 3;
                Box::new(move |peer, stream| {
                    let permits = slots.for_peer(peer);
                    Box::pin(tasks::serve(
                        peer,
                        stream,
                        Arc::clone(&handler),
                        permits,
                        idle,
                    ))
                })
            },
            // The requester sees the stream close, and its tasks fail.
            refuse: |stream| Box::pin(async move { drop(stream) }),
        };
        for (acceptor, incoming) in [(bulk, bulk_streams), (tasks, task_streams)] {
            let span = info_span!("p2p", peer = %local_peer_id);
            tokio::spawn(
                acceptor
                    .run(incoming, config.shutdown.clone())
                    .instrument(span),
            );
        }

        let event_loop = EventLoop {
            swarm,
            local_peer_id,
            commands: command_rx,
            reply_tx,
            reply_rx,
            handler,
            permits: InboundPermits::new(&config),
            inbound: JoinSet::new(),
            shutdown: config.shutdown,
            bootstrap_peers: bootstrap.into_iter().map(|(p, _)| p).collect(),
            listen_addrs: Vec::new(),
            listeners_pending,
            listen_waiters: Vec::new(),
            pending: Outbound {
                max: config.max_pending_outbound.max(1),
                ..Outbound::default()
            },
            connection_spans: HashMap::new(),
        };
        let span = info_span!("p2p", peer = %local_peer_id);
        let handle = tokio::spawn(event_loop.run().instrument(span));
        Ok((client, handle))
    }
}

/// The peer id at the end of `addr`, if any.
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}
