//! The composed libp2p behaviour: connection limits, identify, ping, Kademlia, optional mDNS
//! Shoal's three request-response protocols and its raw streams (`/shoal/bulk/1`,
//! `/shoal/task/6`).

use std::time::Duration;

use libp2p::{
    connection_limits::{self, ConnectionLimits},
    identify,
    identity::Keypair,
    kad, mdns, ping,
    request_response::{self, ProtocolSupport},
    swarm::{NetworkBehaviour, behaviour::toggle::Toggle},
};

use crate::{
    codec::{
        BLOCK_LIMITS, BLOCK_PROTOCOL, BlockCodec, CAPACITY_LIMITS, CAPACITY_PROTOCOL,
        CapacityCodec, IDENTIFY_PROTOCOL_VERSION, KAD_PROTOCOL, PROGRESS_LIMITS, PROGRESS_PROTOCOL,
        ProgressCodec,
    },
    network::Config,
    streams,
};

/// Everything a Shoal peer speaks. The derive generates `BehaviourEvent`, one variant a field.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// First, so that a connection over a limit is refused before any other behaviour sets
    /// up state for it.
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) kademlia: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) block: request_response::Behaviour<BlockCodec>,
    pub(crate) capacity: request_response::Behaviour<CapacityCodec>,
    pub(crate) progress: request_response::Behaviour<ProgressCodec>,
    /// Raw streams: `/shoal/bulk/1` and `/shoal/task/6`. Last, so that it sets up a
    /// connection only once every other behaviour has taken it.
    pub(crate) stream: streams::Behaviour,
}

impl Behaviour {
    pub(crate) fn new(key: &Keypair, config: &Config) -> std::io::Result<Self> {
        let peer_id = key.public().to_peer_id();

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL_VERSION.to_owned(), key.public())
                .with_agent_version(format!("shoal/{}", env!("CARGO_PKG_VERSION"))),
        );

        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config.set_query_timeout(config.query_timeout);
        let store = kad::store::MemoryStore::with_config(
            peer_id,
            kad::store::MemoryStoreConfig {
                max_provided_keys: config.max_provided_keys,
                ..Default::default()
            },
        );
        let mut kademlia = kad::Behaviour::with_config(peer_id, store, kad_config);
        // Without a confirmed public address Kademlia would stay a client and answer no
        // queries, which breaks LANs and loopback meshes. Every Shoal peer serves the DHT.
        kademlia.set_mode(Some(kad::Mode::Server));

        let mdns = (config.mdns)
            .then(|| mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id))
            .transpose()?;

        let rr = |timeout: Duration| {
            request_response::Config::default()
                .with_request_timeout(timeout)
                .with_max_concurrent_streams(config.max_concurrent_streams)
        };

        let limits = ConnectionLimits::default()
            .with_max_established(Some(config.max_established))
            .with_max_established_per_peer(Some(config.max_established_per_peer))
            .with_max_pending_incoming(Some(config.max_pending_incoming));

        Ok(Self {
            limits: connection_limits::Behaviour::new(limits),
            identify,
            ping: ping::Behaviour::default(),
            kademlia,
            mdns: mdns.into(),
            block: request_response::Behaviour::with_codec(
                BlockCodec::new(BLOCK_LIMITS),
                [(BLOCK_PROTOCOL, ProtocolSupport::Full)],
                rr(config.block_timeout),
            ),
            capacity: request_response::Behaviour::with_codec(
                CapacityCodec::new(CAPACITY_LIMITS),
                [(CAPACITY_PROTOCOL, ProtocolSupport::Full)],
                rr(config.capacity_timeout),
            ),
            progress: request_response::Behaviour::with_codec(
                ProgressCodec::new(PROGRESS_LIMITS),
                [(PROGRESS_PROTOCOL, ProtocolSupport::Full)],
                rr(config.capacity_timeout),
            ),
            stream: streams::Behaviour::new(),
        })
    }
}
