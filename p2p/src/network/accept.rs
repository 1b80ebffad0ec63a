//! Inbound raw streams (`/shoal/bulk/1`, `/shoal/task/6`): one task per protocol takes its
//! streams and serves each on a task of its own, at most `max` at once and `max_per_peer`
//! per requester; a stream over either bound is refused. Stopping the network stops them all.

use std::{collections::HashMap, io};

use futures::{StreamExt, channel::mpsc, future::BoxFuture};
use libp2p::{PeerId, Stream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

/// Serves one stream from a peer until it ends.
pub(super) type Serve = Box<dyn Fn(PeerId, Stream) -> BoxFuture<'static, io::Result<()>> + Send>;

pub(super) struct Acceptor {
    pub(super) protocol: &'static str,
    pub(super) max: usize,
    pub(super) max_per_peer: usize,
    pub(super) serve: Serve,
    /// Answers a stream over a bound.
    pub(super) refuse: fn(Stream) -> BoxFuture<'static, ()>,
}

impl Acceptor {
    pub(super) async fn run(
        self,
        mut incoming: mpsc::Receiver<(PeerId, Stream)>,
        shutdown: CancellationToken,
    ) {
        let protocol = self.protocol;
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
                        debug!(%peer, protocol, "no stream slot; refusing");
                        let refusal = (self.refuse)(stream);
                        tasks.spawn(async move {
                            refusal.await;
                            None
                        });
                        continue;
                    }
                    serving += 1;
                    *per_peer.entry(peer).or_default() += 1;
                    let span = info_span!("inbound", protocol, %peer);
                    let served = (self.serve)(peer, stream);
                    tasks.spawn(
                        async move {
                            if let Err(e) = served.await {
                                debug!("stream ended: {e}");
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
