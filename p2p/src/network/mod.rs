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

mod client;
mod config;
mod error;
mod event_loop;
mod inbound;
mod pending;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use libp2p::{
    Multiaddr, PeerId, SwarmBuilder, multiaddr::Protocol, noise, swarm::dial_opts::DialOpts, tcp,
    yamux,
};
use tokio::{
    sync::{Semaphore, mpsc, oneshot},
    task::{JoinHandle, JoinSet},
};
use tracing::{Instrument, info_span, warn};

pub use self::{
    client::NetworkClient,
    config::{Config, DEFAULT_MAX_INBOUND_TASKS},
    error::Error,
    inbound::InboundHandler,
};
use self::{event_loop::EventLoop, pending::Outbound};
use crate::{
    behaviour::Behaviour,
    messages::{BlockResponse, Capacity, Cid, TaskOutcome, TaskSpec},
};
#[cfg(doc)]
use libp2p::Swarm;

type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// A request from a [`NetworkClient`] to the event loop.
enum Command {
    ListenAddrs(Reply<Vec<Multiaddr>>),
    ConnectedPeers(Reply<Vec<PeerId>>),
    Dial(Multiaddr, Reply<PeerId>),
    FetchBlock(PeerId, Cid, Reply<BlockResponse>),
    SubmitTask(PeerId, TaskSpec, Reply<TaskOutcome>),
    Capacity(PeerId, Reply<Capacity>),
    StartProviding(Cid, Reply<()>),
    StopProviding(Cid),
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
        let reply_depth = config.max_inbound_tasks + config.max_inbound_requests;
        let (reply_tx, reply_rx) = mpsc::channel(reply_depth.max(1));

        let client = NetworkClient::new(command_tx, local_peer_id, &config);

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
