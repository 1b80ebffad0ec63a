//! Shoal's networking: a libp2p behaviour speaking Shoal's versioned protocols, their
//! size-limited codecs, and a network actor with a cloneable client handle.
//!
//! The crate moves opaque typed messages and knows nothing of wasm. A node embeds it by
//! implementing [`InboundHandler`] and calling [`Network::spawn`]:
//!
//! - `/shoal/block/2` — fetch a block by [`Cid`], presenting a [`Credential`]
//!   ([`NetworkClient::fetch_block`]);
//! - `/shoal/bulk/1` — many chunks of one file over one long-lived raw stream
//!   ([`NetworkClient::open_bulk`], [`InboundHandler::bulk`], see [`bulk`]);
//! - `/shoal/task/6` — submit [`TaskSpec`]s and get their [`TaskOutcome`]s over one
//!   long-lived raw stream per peer ([`NetworkClient::submit_task`],
//!   [`InboundHandler::task`], see [`tasks`]);
//! - `/shoal/capacity/1` — ask for a peer's [`Capacity`] ([`NetworkClient::capacity`]);
//! - `/shoal/progress/1` — a running task's [`ProgressRecord`], sent to its submitter
//!   ([`NetworkClient::send_progress`], [`InboundHandler::progress`]);
//! - Kademlia (`/shoal/kad/1.0.0`) for provider records, identify, ping, and optional mDNS.
//!
//! Transports are TCP (noise + yamux) and QUIC v1.
//!
//! A stranger cannot hog a node's network side: connections are capped in all, per peer and
//! while pending, each requester gets at most a share of the inbound permits, and a
//! requester's handlers are dropped when its last connection closes ([`Config`]).

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod auth;
mod behaviour;
pub mod bulk;
pub mod codec;
pub mod messages;
mod network;
mod streams;
pub mod tasks;
#[cfg(test)]
mod tests;

pub use futures::future::BoxFuture;
pub use libp2p::{Multiaddr, PeerId, identity::Keypair};
pub use tokio_util::sync::CancellationToken;

pub use crate::{
    auth::{AuthError, Credential, Delegation, TaskAuth},
    bulk::{
        BULK_PROTOCOL, BULK_STALL_TIMEOUT, BulkChunk, BulkItem, BulkRequest, BulkResponse,
        BulkSession, MAX_BULK_CHUNKS,
    },
    codec::{
        BLOCK_LIMITS, BLOCK_PROTOCOL, CAPACITY_LIMITS, CAPACITY_PROTOCOL, FrameLimits,
        KAD_PROTOCOL, PROGRESS_LIMITS, PROGRESS_PROTOCOL, TASK_LIMITS,
    },
    messages::{
        BlockRequest, BlockResponse, Capacity, Cid, FailureKind, MAX_BLOCK_LEN, MAX_PROGRESS_LEN,
        ProgressRecord, TaskLimits, TaskOutcome, TaskSpec, TaskStats, Verified,
    },
    network::{
        Config, DEFAULT_MAX_INBOUND_TASKS, DEFAULT_MAX_INBOUND_TASKS_PER_PEER, Error,
        InboundHandler, Network, NetworkClient,
    },
    tasks::{TASK_IDLE_TIMEOUT, TASK_PROTOCOL, TASK_PROTOCOL_NAME},
};
