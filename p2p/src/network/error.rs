//! The network layer's [`Error`].

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};

#[cfg(doc)]
use super::Config;
use crate::messages::Cid;

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
