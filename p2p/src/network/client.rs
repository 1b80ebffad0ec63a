//! [`NetworkClient`], the cloneable handle that talks to the event loop.

use std::{collections::HashSet, time::Duration};

use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Command, Config, Error, Reply};
use crate::{
    bulk::{BULK_PROTOCOL_NAME, BulkSession},
    messages::{
        BlockRequest, BlockResponse, Capacity, Cid, ProgressRecord, TaskOutcome, TaskSpec, Verified,
    },
    streams::{self, OpenError},
    tasks::TaskLinks,
};

/// Slack added to a protocol timeout for the client-side bound, so that libp2p's own timeout
/// (a typed error) normally fires first.
const CLIENT_SLACK: Duration = Duration::from_secs(5);
/// How long a local query of the actor (addresses, peers) may take.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a raw stream is asked for when the connection it went to fails.
const OPEN_TRIES: usize = 3;

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    task: Duration,
    block: Duration,
    capacity: Duration,
    dial: Duration,
    query: Duration,
    stall: Duration,
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
    streams: streams::Control,
    /// The `/shoal/task/6` streams to the peers this one sends tasks to.
    tasks: TaskLinks,
}

impl NetworkClient {
    pub(super) fn new(
        commands: mpsc::Sender<Command>,
        peer_id: PeerId,
        config: &Config,
        streams: streams::Control,
    ) -> Self {
        let timeouts = Timeouts {
            task: config.task_timeout + CLIENT_SLACK,
            block: config.block_timeout + CLIENT_SLACK,
            capacity: config.capacity_timeout + CLIENT_SLACK,
            dial: config.dial_timeout,
            query: config.query_timeout + CLIENT_SLACK,
            stall: config.bulk_stall_timeout,
        };
        let tasks = TaskLinks::new(
            streams.clone(),
            timeouts.dial + timeouts.capacity,
            config.max_pending_outbound,
            config.task_idle_timeout,
            config.shutdown.clone(),
        );
        Self {
            commands,
            peer_id,
            streams,
            tasks,
            shutdown: config.shutdown.clone(),
            timeouts,
        }
    }

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
        let addrs = self
            .call("listen_addrs", LOCAL_TIMEOUT, Command::ListenAddrs)
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
        self.call("connected_peers", LOCAL_TIMEOUT, Command::ConnectedPeers)
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

    /// Fetches the block `request` names from `peer`. `Ok(None)` means the peer does not
    /// hold it. The bytes returned are checked against the cid, and carry the proof.
    ///
    /// # Errors
    ///
    /// [`Error::BlockMismatch`] if the bytes do not hash to the cid; [`Error::Denied`] if the
    /// request's tenant may not read it there; [`Error::Busy`] if the peer is at capacity; [`Error::PeerUnreachable`], [`Error::Stream`],
    /// [`Error::ConnectionClosed`], [`Error::Timeout`] (after [`Config::block_timeout`]),
    /// [`Error::Shutdown`].
    #[tracing::instrument(skip_all, fields(%peer, cid = %request.cid))]
    pub async fn fetch_block(
        &self,
        peer: PeerId,
        request: BlockRequest,
    ) -> Result<Option<Verified>, Error> {
        let cid = request.cid;
        let response = self
            .call("fetch_block", self.timeouts.block, |tx| {
                Command::FetchBlock(peer, Box::new(request), tx)
            })
            .await?;
        match response {
            BlockResponse::Found(bytes) => match Verified::check(cid, bytes) {
                Ok(block) => Ok(Some(block)),
                Err((_, bytes)) => Err(Error::BlockMismatch {
                    peer,
                    cid,
                    len: bytes.len(),
                }),
            },
            BlockResponse::NotFound => Ok(None),
            BlockResponse::Denied => Err(Error::Denied { peer, cid }),
            BlockResponse::Busy => Err(Error::Busy { peer }),
        }
    }

    /// Opens a `/shoal/bulk/1` stream to `peer` on connection `lane` (dialing it if need
    /// be): a session to ask it for many chunks of a file, each verified before it is handed
    /// on.
    ///
    /// Lane `i` is the `i`-th connection to the peer; a lane past the last one dials another
    /// connection (up to [`Config::max_established_per_peer`], and the peer's own limit), and
    /// folds back onto those there are when the dial is refused. Sessions on different lanes
    /// are carried by different connections, so by different cores: one connection's
    /// encryption runs on one.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] if the peer does not speak the protocol (fall back to
    /// [`fetch_block`](Self::fetch_block)); [`Error::Stream`] if the stream cannot be opened
    /// (no connection, no address); [`Error::Timeout`] (after [`Config::dial_timeout`] and
    /// [`Config::block_timeout`]); [`Error::Shutdown`].
    #[tracing::instrument(skip(self), fields(%peer))]
    pub async fn open_bulk(&self, peer: PeerId, lane: usize) -> Result<BulkSession, Error> {
        if self.shutdown.is_cancelled() {
            return Err(Error::Shutdown);
        }
        let after = self.timeouts.dial + self.timeouts.block;
        let stream = open_stream(&self.streams, peer, BULK_PROTOCOL_NAME, lane, after).await?;
        Ok(BulkSession::start(peer, stream, self.timeouts.stall))
    }

    /// Asks `peer` to run `spec` and waits for the outcome (up to [`Config::task_timeout`]).
    /// A peer at capacity answers `TaskOutcome::Failed { kind: FailureKind::Busy, .. }`.
    ///
    /// Every task to one peer goes over one `/shoal/task/6` stream, opened (dialing the peer
    /// if need be) by the first and closed after [`Config::task_idle_timeout`] without
    /// tasks.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] if the peer does not speak the protocol; [`Error::Stream`] if
    /// the stream cannot be opened or fails (every task in flight on it fails with it);
    /// [`Error::TooManyInFlight`] past [`Config::max_pending_outbound`] tasks in flight to
    /// the peer; [`Error::Timeout`]; [`Error::Shutdown`].
    #[tracing::instrument(skip(self, spec), fields(%peer, module = %spec.module, entry = %spec.entry))]
    pub async fn submit_task(&self, peer: PeerId, spec: TaskSpec) -> Result<TaskOutcome, Error> {
        if self.shutdown.is_cancelled() {
            return Err(Error::Shutdown);
        }
        let after = self.timeouts.task;
        tokio::time::timeout(after, self.tasks.submit(peer, spec))
            .await
            .map_err(|_| Error::Timeout {
                op: "submit_task",
                after,
            })?
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

    /// Sends `peer` a progress record of a task it submitted here, and waits for its
    /// acknowledgement.
    ///
    /// # Errors
    ///
    /// [`Error::PeerUnreachable`], [`Error::Stream`], [`Error::ConnectionClosed`],
    /// [`Error::Timeout`] (after [`Config::capacity_timeout`]), [`Error::Shutdown`].
    pub async fn send_progress(&self, peer: PeerId, record: ProgressRecord) -> Result<(), Error> {
        self.call("send_progress", self.timeouts.capacity, |tx| {
            Command::Progress(peer, record, tx)
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
        self.call("stop_providing", LOCAL_TIMEOUT, |tx| {
            Command::StopProviding(cid, tx)
        })
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
        let work = async {
            let sent = self.commands.send(command(tx)).await;
            sent.map_err(|_| Error::Shutdown)?;
            rx.await.map_err(|_| Error::Shutdown)?
        };
        tokio::time::timeout(after, work)
            .await
            .map_err(|_| Error::Timeout { op, after })?
    }
}

/// Opens a raw stream to `peer` on protocol `name` and connection `lane`, dialing it if need
/// be, within `after`.
pub(crate) async fn open_stream(
    control: &streams::Control,
    peer: PeerId,
    name: &'static str,
    lane: usize,
    after: Duration,
) -> Result<Stream, Error> {
    let protocol = StreamProtocol::new(name);
    let open = async {
        let mut tries = 1;
        loop {
            match control.open(peer, protocol.clone(), lane).await {
                // The connection it went to was closing as it asked (idle, dropped, or an
                // extra one the peer refused): again, on the connections left or a new one. A
                // failed dial is not tried again.
                Err(OpenError::Io(e))
                    if tries < OPEN_TRIES && e.kind() != std::io::ErrorKind::NotConnected =>
                {
                    tracing::debug!(%peer, protocol = name, "opening a stream failed: {e}; again");
                    tries += 1;
                }
                opened => break opened,
            }
        }
    };
    let opened = tokio::time::timeout(after, open)
        .await
        .map_err(|_| Error::Timeout {
            op: "opening a stream",
            after,
        })?;
    opened.map_err(|e| match e {
        OpenError::Unsupported => Error::Unsupported {
            peer,
            protocol: name,
        },
        OpenError::Io(source) => Error::Stream {
            peer,
            protocol: name,
            source,
        },
    })
}
