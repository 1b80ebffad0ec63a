//! The network actor: one event loop owns the [`Swarm`]; cloneable [`NetworkClient`]s talk
//! to it through a bounded command channel.
//!
//! Shape (after rust-libp2p `examples/file-sharing`): every client call sends a [`Command`]
//! carrying a oneshot reply sender; the loop starts the libp2p operation and parks the sender
//! in a `pending` map keyed by the operation's id until the matching swarm event arrives.
//! Inbound requests run on spawned tasks, bounded by semaphores, and hand their answers back
//! to the loop through a bounded reply channel.
//!
//! Everything is bounded: the command channel, the reply channel, the pending maps, inbound
//! work in flight, and streams per connection and protocol.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, future::BoxFuture};
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder,
    core::transport::ListenerId,
    identify,
    identity::Keypair,
    kad, mdns,
    multiaddr::Protocol,
    noise,
    request_response::{
        self, InboundRequestId, OutboundFailure, OutboundRequestId, ResponseChannel,
    },
    swarm::{
        ConnectionId, SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
    tcp, yamux,
};
use tokio::{
    sync::{Semaphore, mpsc, oneshot},
    task::{JoinHandle, JoinSet},
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, info, info_span, trace, warn};

use crate::{
    behaviour::{Behaviour, BehaviourEvent},
    codec::{
        BLOCK_PROTOCOL, BLOCK_PROTOCOL_NAME, CAPACITY_PROTOCOL, CAPACITY_PROTOCOL_NAME,
        KAD_PROTOCOL, TASK_LIMITS, TASK_PROTOCOL, TASK_PROTOCOL_NAME,
    },
    messages::{
        BlockRequest, BlockResponse, Capacity, CapacityRequest, Cid, FailureKind, MAX_BLOCK_LEN,
        TaskOutcome, TaskSpec,
    },
};

/// Identify can report any number of addresses; we keep this many per peer.
const MAX_ADDRS_PER_PEER: usize = 16;
/// Callers waiting for the first listen addresses; more get the current list at once.
const MAX_LISTEN_WAITERS: usize = 64;
/// Slack added to a protocol timeout for the client-side bound, so that libp2p's own timeout
/// (a typed error) normally fires first.
const CLIENT_SLACK: Duration = Duration::from_secs(5);
/// How long a local query of the actor (addresses, peers) may take.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Inbound task requests a peer handles at once by default; past that it answers `Busy`.
/// Submitters keep at most this many of their tasks in flight on one peer.
pub const DEFAULT_MAX_INBOUND_TASKS: usize = 32;

/// Answers to inbound requests, supplied by the node that embeds the network.
///
/// The actor calls these on spawned tasks, at most
/// [`Config::max_inbound_tasks`] task calls and [`Config::max_inbound_requests`] block and
/// capacity calls at a time; beyond that it answers `Busy` without calling them. A method that
/// panics drops its request (the requester sees the stream close), nothing more.
pub trait InboundHandler: Send + Sync + 'static {
    /// The bytes of block `cid` if this peer holds it. Blocks over [`MAX_BLOCK_LEN`] are
    /// never sent: the requester gets `NotFound`.
    fn block(&self, from: PeerId, cid: Cid) -> BoxFuture<'_, Option<Vec<u8>>>;

    /// Run `spec` for `from` and report its outcome. May take as long as the task does.
    fn task(&self, from: PeerId, spec: TaskSpec) -> BoxFuture<'_, TaskOutcome>;

    /// This peer's advertised capacity.
    fn capacity(&self) -> BoxFuture<'_, Capacity>;
}

/// How to start a [`Network`]. Build with [`Config::new`], then adjust the public fields.
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
    /// Longest wait for a `/shoal/task/2` outcome. Default 10 minutes.
    pub task_timeout: Duration,
    /// Longest wait for a `/shoal/block/1` response. Default 30 s.
    pub block_timeout: Duration,
    /// Longest wait for a `/shoal/capacity/1` response. Default 10 s.
    pub capacity_timeout: Duration,
    /// Longest wait for [`NetworkClient::dial`]. Default 10 s.
    pub dial_timeout: Duration,
    /// Longest Kademlia query (find providers, publish a provider record). Default 10 s.
    pub query_timeout: Duration,
    /// Connections with no open stream close after this. Default 60 s.
    pub idle_connection_timeout: Duration,
    /// Inbound task requests handled at once; more are answered `Busy`. Default 32.
    pub max_inbound_tasks: usize,
    /// Inbound block and capacity requests handled at once; more are answered `Busy` (blocks)
    /// or dropped (capacity). Default 64.
    pub max_inbound_requests: usize,
    /// Concurrent streams per connection and protocol. Default 64.
    pub max_concurrent_streams: usize,
    /// Outbound operations (requests, dials, queries) awaiting an answer. Default 1024.
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
            max_inbound_requests: 64,
            max_concurrent_streams: 64,
            max_pending_outbound: 1024,
            command_buffer: 256,
            max_provided_keys: 1 << 16,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("peer_id", &self.keypair.public().to_peer_id())
            .field("listen", &self.listen)
            .field("bootstrap", &self.bootstrap)
            .field("mdns", &self.mdns)
            .field("task_timeout", &self.task_timeout)
            .field("block_timeout", &self.block_timeout)
            .field("capacity_timeout", &self.capacity_timeout)
            .field("dial_timeout", &self.dial_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("idle_connection_timeout", &self.idle_connection_timeout)
            .field("max_inbound_tasks", &self.max_inbound_tasks)
            .field("max_inbound_requests", &self.max_inbound_requests)
            .field("max_concurrent_streams", &self.max_concurrent_streams)
            .field("max_pending_outbound", &self.max_pending_outbound)
            .field("command_buffer", &self.command_buffer)
            .field("max_provided_keys", &self.max_provided_keys)
            .finish_non_exhaustive()
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
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    ConnectedPeers(oneshot::Sender<Vec<PeerId>>),
    Dial(Multiaddr, Reply<PeerId>),
    FetchBlock(PeerId, Cid, Reply<BlockResponse>),
    SubmitTask(PeerId, TaskSpec, Reply<TaskOutcome>),
    Capacity(PeerId, Reply<Capacity>),
    StartProviding(Cid, Reply<()>),
    StopProviding(Cid),
    FindProviders(Cid, Reply<HashSet<PeerId>>),
}

/// An answer to an inbound request, computed on a spawned task.
enum InboundReply {
    Block(ResponseChannel<BlockResponse>, BlockResponse),
    Task(ResponseChannel<TaskOutcome>, TaskOutcome),
    Capacity(ResponseChannel<Capacity>, Capacity),
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
        let reply_depth = config.max_inbound_tasks + config.max_inbound_requests;
        let (reply_tx, reply_rx) = mpsc::channel(reply_depth.max(1));

        let client = NetworkClient {
            commands: command_tx,
            peer_id: local_peer_id,
            shutdown: config.shutdown.clone(),
            timeouts: Timeouts {
                task: config.task_timeout + CLIENT_SLACK,
                block: config.block_timeout + CLIENT_SLACK,
                capacity: config.capacity_timeout + CLIENT_SLACK,
                dial: config.dial_timeout,
                query: config.query_timeout + CLIENT_SLACK,
            },
        };

        let event_loop = EventLoop {
            swarm,
            local_peer_id,
            commands: command_rx,
            reply_tx,
            reply_rx,
            handler: handler(client.clone()),
            task_permits: Arc::new(Semaphore::new(config.max_inbound_tasks)),
            request_permits: Arc::new(Semaphore::new(config.max_inbound_requests)),
            inbound: JoinSet::new(),
            shutdown: config.shutdown,
            bootstrap_peers: bootstrap.into_iter().map(|(p, _)| p).collect(),
            listen_addrs: Vec::new(),
            listeners_pending,
            listen_waiters: Vec::new(),
            pending_dial: HashMap::new(),
            pending_block: HashMap::new(),
            pending_task: HashMap::new(),
            pending_capacity: HashMap::new(),
            pending_provide: HashMap::new(),
            pending_providers: HashMap::new(),
            connection_spans: HashMap::new(),
            max_pending: config.max_pending_outbound.max(1),
        };
        let span = info_span!("p2p", peer = %local_peer_id);
        let handle = tokio::spawn(event_loop.run().instrument(span));
        Ok((client, handle))
    }
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    task: Duration,
    block: Duration,
    capacity: Duration,
    dial: Duration,
    query: Duration,
}

/// A cheap, cloneable handle to the network actor.
///
/// Every method is bounded in time and fails with a typed [`Error`]; after shutdown every
/// method fails with [`Error::Shutdown`]. All methods are cancel safe: dropping a call
/// abandons its answer, nothing else.
#[derive(Debug, Clone)]
pub struct NetworkClient {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    shutdown: CancellationToken,
    timeouts: Timeouts,
}

impl NetworkClient {
    /// This peer's id.
    pub fn local_peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses this peer listens on, each ending in `/p2p/<peer id>`, ready to pass to
    /// another peer's `--bootstrap`. Waits until every configured listener has reported its
    /// first address, so a port-0 listener shows its real port.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if the listeners do not come up within 10 s; [`Error::Shutdown`].
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, Error> {
        let (tx, rx) = oneshot::channel();
        let addrs = self
            .ask(
                "listen_addrs",
                LOCAL_TIMEOUT,
                Command::ListenAddrs(tx),
                async { rx.await.map_err(|_| Error::Shutdown) },
            )
            .await?;
        Ok(addrs
            .into_iter()
            .map(|a| a.with_p2p(self.peer_id).unwrap_or_else(|a| a))
            .collect())
    }

    /// Peers with at least one open connection.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], [`Error::Shutdown`].
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, Error> {
        let (tx, rx) = oneshot::channel();
        self.ask(
            "connected_peers",
            LOCAL_TIMEOUT,
            Command::ConnectedPeers(tx),
            async { rx.await.map_err(|_| Error::Shutdown) },
        )
        .await
    }

    /// Connects to `addr` and returns the peer's id. With a `/p2p/<id>` suffix the remote
    /// must prove that identity; without one any peer at the address is accepted. Returns at
    /// once if already connected to the named peer.
    ///
    /// # Errors
    ///
    /// [`Error::Unreachable`] (with the reason) if nothing answers at `addr`;
    /// [`Error::DialSelf`]; [`Error::Timeout`] after [`Config::dial_timeout`];
    /// [`Error::Shutdown`].
    #[tracing::instrument(skip(self), fields(%addr))]
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, Error> {
        self.call("dial", self.timeouts.dial, |tx| Command::Dial(addr, tx))
            .await
    }

    /// Fetches block `cid` from `peer`. `Ok(None)` means the peer does not hold it. The bytes
    /// returned are checked against `cid`.
    ///
    /// # Errors
    ///
    /// [`Error::BlockMismatch`] if the bytes do not hash to `cid`; [`Error::Busy`] if the peer
    /// is at capacity; [`Error::PeerUnreachable`], [`Error::Stream`],
    /// [`Error::ConnectionClosed`], [`Error::Timeout`] (after [`Config::block_timeout`]),
    /// [`Error::Shutdown`].
    #[tracing::instrument(skip(self), fields(%peer, %cid))]
    pub async fn fetch_block(&self, peer: PeerId, cid: Cid) -> Result<Option<Vec<u8>>, Error> {
        let response = self
            .call("fetch_block", self.timeouts.block, |tx| {
                Command::FetchBlock(peer, cid, tx)
            })
            .await?;
        match response {
            BlockResponse::Found(bytes) if cid.matches(&bytes) => Ok(Some(bytes)),
            BlockResponse::Found(bytes) => Err(Error::BlockMismatch {
                peer,
                cid,
                len: bytes.len(),
            }),
            BlockResponse::NotFound => Ok(None),
            BlockResponse::Busy => Err(Error::Busy { peer }),
        }
    }

    /// Asks `peer` to run `spec` and waits for the outcome (up to [`Config::task_timeout`]).
    /// A peer at capacity answers `TaskOutcome::Failed { kind: FailureKind::Busy, .. }`.
    ///
    /// # Errors
    ///
    /// [`Error::PeerUnreachable`], [`Error::Stream`], [`Error::ConnectionClosed`],
    /// [`Error::Unsupported`], [`Error::Timeout`], [`Error::Shutdown`].
    #[tracing::instrument(skip(self, spec), fields(%peer, module = %spec.module, entry = %spec.entry))]
    pub async fn submit_task(&self, peer: PeerId, spec: TaskSpec) -> Result<TaskOutcome, Error> {
        self.call("submit_task", self.timeouts.task, |tx| {
            Command::SubmitTask(peer, spec, tx)
        })
        .await
    }

    /// Asks `peer` for its advertised capacity.
    ///
    /// # Errors
    ///
    /// [`Error::PeerUnreachable`], [`Error::Stream`], [`Error::ConnectionClosed`],
    /// [`Error::Timeout`] (after [`Config::capacity_timeout`]), [`Error::Shutdown`].
    #[tracing::instrument(skip(self), fields(%peer))]
    pub async fn capacity(&self, peer: PeerId) -> Result<Capacity, Error> {
        self.call("capacity", self.timeouts.capacity, |tx| {
            Command::Capacity(peer, tx)
        })
        .await
    }

    /// Announces in the DHT that this peer holds block `cid`, and waits until the provider
    /// record has been offered to the closest peers (best effort: a peer with no neighbours
    /// still records it locally and succeeds).
    ///
    /// # Errors
    ///
    /// [`Error::ProviderStore`] if [`Config::max_provided_keys`] is reached;
    /// [`Error::Timeout`]; [`Error::Shutdown`].
    #[tracing::instrument(skip(self), fields(%cid))]
    pub async fn start_providing(&self, cid: Cid) -> Result<(), Error> {
        self.call("start_providing", self.timeouts.query, |tx| {
            Command::StartProviding(cid, tx)
        })
        .await
    }

    /// Stops announcing block `cid` (existing records elsewhere expire on their own).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], [`Error::Shutdown`].
    pub async fn stop_providing(&self, cid: Cid) -> Result<(), Error> {
        self.send(LOCAL_TIMEOUT, "stop_providing", Command::StopProviding(cid))
            .await
    }

    /// The peers (other than this one) that announce block `cid`, found through Kademlia
    /// within [`Config::query_timeout`]. An empty set means none were found in time.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], [`Error::TooManyInFlight`], [`Error::Shutdown`].
    #[tracing::instrument(skip(self), fields(%cid))]
    pub async fn find_providers(&self, cid: Cid) -> Result<HashSet<PeerId>, Error> {
        self.call("find_providers", self.timeouts.query, |tx| {
            Command::FindProviders(cid, tx)
        })
        .await
    }

    /// Stops the actor gracefully: in-flight inbound work is aborted, pending calls fail
    /// with [`Error::Shutdown`], connections close. Waits (up to 10 s) until the event loop
    /// has let go of its command channel.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(LOCAL_TIMEOUT, self.commands.closed()).await;
    }

    /// Sends a command whose reply carries a `Result`, bounded by `after` in all.
    async fn call<T>(
        &self,
        op: &'static str,
        after: Duration,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.ask(op, after, command(tx), async {
            rx.await.map_err(|_| Error::Shutdown)?
        })
        .await
    }

    async fn send(&self, after: Duration, op: &'static str, command: Command) -> Result<(), Error> {
        self.ask(op, after, command, async { Ok(()) }).await
    }

    /// Sends `command`, then awaits `answer`, both within `after`.
    async fn ask<T>(
        &self,
        op: &'static str,
        after: Duration,
        command: Command,
        answer: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let work = async {
            self.commands
                .send(command)
                .await
                .map_err(|_| Error::Shutdown)?;
            answer.await
        };
        tokio::time::timeout(after, work)
            .await
            .map_err(|_| Error::Timeout { op, after })?
    }
}

/// The peer id at the end of `addr`, if any.
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
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

/// Shrinks an outcome that would not fit its frame: keep the tail of the logs, or as a last
/// resort report the overflow as a failure.
fn fit_outcome(outcome: TaskOutcome) -> TaskOutcome {
    const LOG_TAIL: usize = 64 * 1024;
    let fits = |o: &TaskOutcome| {
        postcard::experimental::serialized_size(o).is_ok_and(|n| n <= TASK_LIMITS.response)
    };
    if fits(&outcome) {
        return outcome;
    }
    let shrunk = match outcome {
        TaskOutcome::Ok {
            outputs,
            logs,
            stats,
        } => TaskOutcome::Ok {
            outputs,
            logs: log_tail(&logs, LOG_TAIL),
            stats,
        },
        TaskOutcome::Failed {
            kind,
            message,
            logs,
            stats,
        } => TaskOutcome::Failed {
            kind,
            message: log_tail(&message, LOG_TAIL),
            logs: log_tail(&logs, LOG_TAIL),
            stats,
        },
    };
    if fits(&shrunk) {
        shrunk
    } else {
        TaskOutcome::failed(
            FailureKind::Other,
            format!(
                "the task's outcome exceeds the {} byte limit of {TASK_PROTOCOL}",
                TASK_LIMITS.response
            ),
        )
    }
}

/// The last `max` bytes of `s` (on a char boundary), marked as truncated.
fn log_tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[… {start} bytes truncated …]\n{}", &s[start..])
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    local_peer_id: PeerId,
    commands: mpsc::Receiver<Command>,
    reply_tx: mpsc::Sender<InboundReply>,
    reply_rx: mpsc::Receiver<InboundReply>,
    handler: Arc<dyn InboundHandler>,
    task_permits: Arc<Semaphore>,
    request_permits: Arc<Semaphore>,
    inbound: JoinSet<()>,
    shutdown: CancellationToken,
    bootstrap_peers: HashSet<PeerId>,
    listen_addrs: Vec<Multiaddr>,
    listeners_pending: HashSet<ListenerId>,
    listen_waiters: Vec<oneshot::Sender<Vec<Multiaddr>>>,
    pending_dial: HashMap<ConnectionId, (Multiaddr, Reply<PeerId>)>,
    pending_block: HashMap<OutboundRequestId, Reply<BlockResponse>>,
    pending_task: HashMap<OutboundRequestId, Reply<TaskOutcome>>,
    pending_capacity: HashMap<OutboundRequestId, Reply<Capacity>>,
    pending_provide: HashMap<kad::QueryId, Reply<()>>,
    pending_providers: HashMap<kad::QueryId, (HashSet<PeerId>, Reply<HashSet<PeerId>>)>,
    connection_spans: HashMap<ConnectionId, Span>,
    max_pending: usize,
}

impl EventLoop {
    async fn run(mut self) {
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
                    if let Err(e) = joined
                        && e.is_panic()
                    {
                            warn!("an inbound request handler panicked; its request was dropped");
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

    fn connection_span(&self, connection: ConnectionId) -> Span {
        self.connection_spans
            .get(&connection)
            .cloned()
            .unwrap_or_else(Span::current)
    }

    fn pending_len(&self) -> usize {
        self.pending_dial.len()
            + self.pending_block.len()
            + self.pending_task.len()
            + self.pending_capacity.len()
            + self.pending_provide.len()
            + self.pending_providers.len()
    }

    /// Whether another outbound operation may start; drops entries whose callers gave up.
    fn has_room(&mut self) -> bool {
        if self.pending_len() < self.max_pending {
            return true;
        }
        self.pending_dial.retain(|_, (_, tx)| !tx.is_closed());
        self.pending_block.retain(|_, tx| !tx.is_closed());
        self.pending_task.retain(|_, tx| !tx.is_closed());
        self.pending_capacity.retain(|_, tx| !tx.is_closed());
        self.pending_provide.retain(|_, tx| !tx.is_closed());
        self.pending_providers.retain(|_, (_, tx)| !tx.is_closed());
        self.pending_len() < self.max_pending
    }

    fn on_command(&mut self, command: Command) {
        let full = Error::TooManyInFlight {
            limit: self.max_pending,
        };
        match command {
            Command::ListenAddrs(tx) => {
                if self.listeners_pending.is_empty()
                    || self.listen_waiters.len() >= MAX_LISTEN_WAITERS
                {
                    let _ = tx.send(self.listen_addrs.clone());
                } else {
                    self.listen_waiters.push(tx);
                }
            }
            Command::ConnectedPeers(tx) => {
                let _ = tx.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Dial(addr, tx) => {
                if !self.has_room() {
                    let _ = tx.send(Err(full));
                    return;
                }
                self.dial(addr, tx);
            }
            Command::FetchBlock(peer, cid, tx) => {
                if !self.has_room() {
                    let _ = tx.send(Err(full));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .block
                    .send_request(&peer, BlockRequest { cid });
                self.pending_block.insert(id, tx);
            }
            Command::SubmitTask(peer, spec, tx) => {
                if !self.has_room() {
                    let _ = tx.send(Err(full));
                    return;
                }
                let id = self.swarm.behaviour_mut().task.send_request(&peer, spec);
                self.pending_task.insert(id, tx);
            }
            Command::Capacity(peer, tx) => {
                if !self.has_room() {
                    let _ = tx.send(Err(full));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .capacity
                    .send_request(&peer, CapacityRequest);
                self.pending_capacity.insert(id, tx);
            }
            Command::StartProviding(cid, tx) => {
                if !self.has_room() {
                    let _ = tx.send(Err(full));
                    return;
                }
                let key = kad::RecordKey::new(cid.as_bytes());
                match self.swarm.behaviour_mut().kademlia.start_providing(key) {
                    Ok(id) => {
                        self.pending_provide.insert(id, tx);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Error::ProviderStore {
                            cid,
                            reason: e.to_string(),
                        }));
                    }
                }
            }
            Command::StopProviding(cid) => {
                let key = kad::RecordKey::new(cid.as_bytes());
                self.swarm.behaviour_mut().kademlia.stop_providing(&key);
            }
            Command::FindProviders(cid, tx) => {
                if !self.has_room() {
                    let _ = tx.send(Err(full));
                    return;
                }
                let key = kad::RecordKey::new(cid.as_bytes());
                let id = self.swarm.behaviour_mut().kademlia.get_providers(key);
                self.pending_providers.insert(id, (HashSet::new(), tx));
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
            Ok(()) => {
                self.pending_dial.insert(connection, (addr, tx));
            }
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
                let _ = tx.send(self.listen_addrs.clone());
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
                if let Some((_, tx)) = self.pending_dial.remove(&connection_id) {
                    let _ = tx.send(Ok(peer_id));
                }
            }
            SwarmEvent::ConnectionClosed {
                connection_id,
                cause,
                num_established,
                ..
            } => {
                if let Some(span) = self.connection_spans.remove(&connection_id) {
                    span.in_scope(|| debug!(num_established, ?cause, "connection closed"));
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
                if let Some((addr, tx)) = self.pending_dial.remove(&connection_id) {
                    let _ = tx.send(Err(Error::Unreachable {
                        addr,
                        reason: error.to_string(),
                    }));
                }
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
            BehaviourEvent::Identify(_) | BehaviourEvent::Ping(_) => {}
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
                if let Some((peer, connection, id, request, channel)) =
                    settle_outbound(&mut self.pending_block, BLOCK_PROTOCOL_NAME, event)
                {
                    self.on_block_request(peer, connection, id, request, channel);
                }
            }
            BehaviourEvent::Task(event) => {
                if let Some((peer, connection, id, request, channel)) =
                    settle_outbound(&mut self.pending_task, TASK_PROTOCOL_NAME, event)
                {
                    self.on_task_request(peer, connection, id, request, channel);
                }
            }
            BehaviourEvent::Capacity(event) => {
                if let Some((peer, connection, id, _, channel)) =
                    settle_outbound(&mut self.pending_capacity, CAPACITY_PROTOCOL_NAME, event)
                {
                    self.on_capacity_request(peer, connection, id, channel);
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
                        if let Some((found, _)) = self.pending_providers.get_mut(&id) {
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
                if done && let Some((found, tx)) = self.pending_providers.remove(&id) {
                    let _ = tx.send(Ok(found));
                }
            }
            kad::QueryResult::StartProviding(result) => {
                if let Err(e) = result {
                    // The record is stored locally and republished periodically; peers that
                    // could not be reached now will hear of it later.
                    debug!("provider record not published to every peer: {e}");
                }
                if let Some(tx) = self.pending_provide.remove(&id) {
                    let _ = tx.send(Ok(()));
                }
            }
            kad::QueryResult::Bootstrap(Err(e)) => {
                warn!("kademlia bootstrap failed: {e}");
            }
            other => trace!(?other, "kademlia query progressed"),
        }
    }

    fn on_block_request(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        id: InboundRequestId,
        request: BlockRequest,
        channel: ResponseChannel<BlockResponse>,
    ) {
        let span = info_span!(parent: self.connection_span(connection), "inbound", protocol = %BLOCK_PROTOCOL, %peer, request = %id, cid = %request.cid);
        let Ok(permit) = self.request_permits.clone().try_acquire_owned() else {
            span.in_scope(|| debug!("at capacity; answering Busy"));
            let _ = self
                .swarm
                .behaviour_mut()
                .block
                .send_response(channel, BlockResponse::Busy);
            return;
        };
        let handler = Arc::clone(&self.handler);
        let replies = self.reply_tx.clone();
        self.inbound.spawn(
            async move {
                let response = match handler.block(peer, request.cid).await {
                    Some(bytes) if bytes.len() <= MAX_BLOCK_LEN => BlockResponse::Found(bytes),
                    Some(bytes) => {
                        warn!(
                            len = bytes.len(),
                            "block over the size limit; answering NotFound"
                        );
                        BlockResponse::NotFound
                    }
                    None => BlockResponse::NotFound,
                };
                // The reply channel has room for every permit holder: this never waits long.
                let _ = replies.send(InboundReply::Block(channel, response)).await;
                drop(permit);
            }
            .instrument(span),
        );
    }

    fn on_task_request(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        id: InboundRequestId,
        spec: TaskSpec,
        channel: ResponseChannel<TaskOutcome>,
    ) {
        let span = info_span!(parent: self.connection_span(connection), "inbound", protocol = %TASK_PROTOCOL, %peer, request = %id, module = %spec.module, entry = %spec.entry);
        let Ok(permit) = self.task_permits.clone().try_acquire_owned() else {
            span.in_scope(|| debug!("at capacity; answering Busy"));
            let _ = self.swarm.behaviour_mut().task.send_response(
                channel,
                TaskOutcome::failed(FailureKind::Busy, "no free task slot on this peer"),
            );
            return;
        };
        let handler = Arc::clone(&self.handler);
        let replies = self.reply_tx.clone();
        self.inbound.spawn(
            async move {
                let outcome = fit_outcome(handler.task(peer, spec).await);
                let _ = replies.send(InboundReply::Task(channel, outcome)).await;
                drop(permit);
            }
            .instrument(span),
        );
    }

    fn on_capacity_request(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        id: InboundRequestId,
        channel: ResponseChannel<Capacity>,
    ) {
        let span = info_span!(parent: self.connection_span(connection), "inbound", protocol = %CAPACITY_PROTOCOL, %peer, request = %id);
        let Ok(permit) = self.request_permits.clone().try_acquire_owned() else {
            // Dropping the channel closes the stream: the asker sees an error and moves on.
            span.in_scope(|| debug!("at capacity; dropping capacity request"));
            return;
        };
        let handler = Arc::clone(&self.handler);
        let replies = self.reply_tx.clone();
        self.inbound.spawn(
            async move {
                let capacity = handler.capacity().await;
                let _ = replies
                    .send(InboundReply::Capacity(channel, capacity))
                    .await;
                drop(permit);
            }
            .instrument(span),
        );
    }

    fn on_inbound_reply(&mut self, reply: InboundReply) {
        let behaviour = self.swarm.behaviour_mut();
        let sent = match reply {
            InboundReply::Block(channel, response) => {
                behaviour.block.send_response(channel, response).is_ok()
            }
            InboundReply::Task(channel, outcome) => {
                behaviour.task.send_response(channel, outcome).is_ok()
            }
            InboundReply::Capacity(channel, capacity) => {
                behaviour.capacity.send_response(channel, capacity).is_ok()
            }
        };
        if !sent {
            debug!("requester went away before the response was ready");
        }
    }
}

/// Resolves the outbound side of a request-response event against `pending`; hands back an
/// inbound request, if that is what the event was.
#[allow(clippy::type_complexity)]
fn settle_outbound<Req, Resp>(
    pending: &mut HashMap<OutboundRequestId, Reply<Resp>>,
    protocol: &'static str,
    event: request_response::Event<Req, Resp>,
) -> Option<(
    PeerId,
    ConnectionId,
    InboundRequestId,
    Req,
    ResponseChannel<Resp>,
)> {
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
        } => return Some((peer, connection_id, request_id, request, channel)),
        request_response::Event::Message {
            message:
                request_response::Message::Response {
                    request_id,
                    response,
                },
            ..
        } => {
            if let Some(tx) = pending.remove(&request_id) {
                let _ = tx.send(Ok(response));
            }
        }
        request_response::Event::OutboundFailure {
            peer,
            request_id,
            error,
            ..
        } => {
            debug!(%peer, protocol, "outbound request failed: {error}");
            if let Some(tx) = pending.remove(&request_id) {
                let _ = tx.send(Err(outbound_error(peer, protocol, error)));
            }
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

#[cfg(test)]
mod unit_tests {
    use super::*;
    use crate::messages::TaskStats;

    #[test]
    fn oversized_outcome_keeps_the_tail_of_its_logs() {
        let logs = format!("{}é end", "x".repeat(TASK_LIMITS.response));
        let outcome = fit_outcome(TaskOutcome::Ok {
            outputs: vec![("out".into(), Cid::of(b"o"))],
            logs,
            stats: TaskStats {
                backend: "cpu".into(),
                executed_by: "p".into(),
                ..TaskStats::default()
            },
        });
        match outcome {
            TaskOutcome::Ok { logs, outputs, .. } => {
                assert!(logs.len() < 70 * 1024);
                assert!(logs.ends_with("é end") && logs.starts_with("[…"));
                assert_eq!(outputs.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        let small = TaskOutcome::failed(FailureKind::Trap, "boom");
        assert_eq!(fit_outcome(small.clone()), small);
    }
}
