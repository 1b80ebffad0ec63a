//! The provider side of `/shoal/bulk/1`: one task takes the inbound streams and serves each
//! on a task of its own, at most [`Config::max_inbound_bulk`] at once and
//! [`Config::max_inbound_bulk_per_peer`] per requester; a stream over either bound is
//! answered `Busy`. Stopping the network stops them all.

use std::{collections::HashMap, sync::Arc};

use futures::StreamExt;
use libp2p::PeerId;
use libp2p_stream::IncomingStreams;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

use super::{Config, InboundHandler};
use crate::bulk::{BULK_PROTOCOL_NAME, refuse_busy, serve};

pub(super) struct Acceptor {
    handler: Arc<dyn InboundHandler>,
    max: usize,
    max_per_peer: usize,
}

impl Acceptor {
    pub(super) fn new(config: &Config, handler: Arc<dyn InboundHandler>) -> Self {
        Self {
            handler,
            max: config.max_inbound_bulk,
            max_per_peer: config.max_inbound_bulk_per_peer,
        }
    }

    pub(super) async fn run(self, mut incoming: IncomingStreams, shutdown: CancellationToken) {
        // Each serving task ends with its peer, `None` for a refusal.
        let mut tasks: JoinSet<Option<PeerId>> = JoinSet::new();
        let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
        let mut serving = 0usize;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                next = incoming.next() => {
                    let Some((peer, stream)) = next else { break };
                    let of_peer = per_peer.get(&peer).copied().unwrap_or(0);
                    if serving >= self.max || of_peer >= self.max_per_peer {
                        debug!(%peer, protocol = BULK_PROTOCOL_NAME, "no bulk slot; answering Busy");
                        tasks.spawn(async move {
                            refuse_busy(stream).await;
                            None
                        });
                        continue;
                    }
                    serving += 1;
                    *per_peer.entry(peer).or_default() += 1;
                    let handler = Arc::clone(&self.handler);
                    let span = info_span!("inbound", protocol = BULK_PROTOCOL_NAME, %peer);
                    tasks.spawn(
                        async move {
                            if let Err(e) = serve(peer, stream, handler).await {
                                debug!("bulk stream ended: {e}");
                            }
                            Some(peer)
                        }
                        .instrument(span),
                    );
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    // A panicked task no longer says whose it was: its slot stays taken, a
                    // bounded leak for a handler bug.
                    if let Ok(Some(peer)) = joined {
                        serving = serving.saturating_sub(1);
                        if let Some(n) = per_peer.get_mut(&peer) {
                            *n -= 1;
                            if *n == 0 {
                                per_peer.remove(&peer);
                            }
                        }
                    }
                }
            }
        }
        tasks.shutdown().await;
    }
}
