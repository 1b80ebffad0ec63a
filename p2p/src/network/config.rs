//! How to start a [`Network`]: [`Config`] and its defaults.

use std::time::Duration;

use libp2p::{Multiaddr, identity::Keypair};
use tokio_util::sync::CancellationToken;

#[cfg(doc)]
use super::{Network, NetworkClient};

/// Inbound task requests a peer handles at once by default; past that it answers `Busy`.
/// Submitters keep at most this many of their tasks in flight on one peer.
pub const DEFAULT_MAX_INBOUND_TASKS: usize = 32;

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
