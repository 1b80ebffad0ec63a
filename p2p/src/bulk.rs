//! `/shoal/bulk/1`: many chunks of one file over one long-lived stream.
//!
//! `/shoal/block/2` pays a stream, a protocol negotiation and a postcard frame per 1 MiB
//! block. Here a requester opens one raw stream to a provider ([`NetworkClient::open_bulk`])
//! and sends it requests, each naming a file, a [`Credential`] and up to
//! [`MAX_BULK_CHUNKS`] chunks; the provider answers each request with a status byte and then
//! every chunk in the order asked, as a raw length-prefixed frame written straight from the
//! store's bytes. Requests may be pipelined: the answers come back in order.
//!
//! Wire format (integers big-endian, like [`crate::codec`]):
//!
//! ```text
//! request   u32 length, then postcard(BulkRequest)        (length ≤ BULK_REQUEST_LIMIT)
//! answer    u8 status: 0 ok, 1 denied, 2 busy              (denied and busy end the stream)
//!           then, when ok, for each chunk asked, in order:
//!             u8 0, u32 length, the bytes                  (length ≤ MAX_BLOCK_LEN)
//!             u8 1                                         (not found)
//! ```
//!
//! The provider applies the rule of [`BlockRequest`](crate::BlockRequest) through
//! [`InboundHandler::bulk`]: it answers only a requester whose credential names a tenant
//! that may read the file there, and refuses a request as a whole otherwise (whether the
//! chunks exist or not). The requester reads the stream on a task of its own, checks every
//! chunk against its [`Cid`] once, and hands on only verified bytes ([`BulkSession`]).

use std::{io, sync::Arc, time::Duration};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt, stream::BoxStream};
use libp2p::{PeerId, Stream, StreamProtocol};
use serde::{Deserialize, Serialize};
use tokio::{sync::mpsc, task::JoinHandle};

#[cfg(doc)]
use crate::NetworkClient;
use crate::{
    auth::Credential,
    messages::{Cid, MAX_BLOCK_LEN, Verified},
    network::{Error, InboundHandler},
};

/// `/shoal/bulk/1`: a file's chunks over one long-lived raw stream.
pub const BULK_PROTOCOL: StreamProtocol = StreamProtocol::new(BULK_PROTOCOL_NAME);
/// The name of [`BULK_PROTOCOL`].
pub const BULK_PROTOCOL_NAME: &str = "/shoal/bulk/1";
/// The most chunks one bulk request may name (4 GiB of 1 MiB chunks); larger wants are split
/// into several requests on the same stream.
pub const MAX_BULK_CHUNKS: usize = 4096;
/// The largest bulk request frame: the chunk ids (33 bytes each at most), the file id and a
/// credential (within the 4 KiB of a block request).
pub const BULK_REQUEST_LIMIT: usize = MAX_BULK_CHUNKS * 34 + 4096;
/// How long a requester waits for the next byte of an answer it is owed before it gives the
/// provider up ([`Error::Stalled`]).
pub const BULK_STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A chunk must arrive whole within this many stall timeouts (20 s for 1 MiB by default,
/// 52 KB/s): a provider that sends a byte now and then, each within the stall timeout, is
/// given up like one that stalls.
const CHUNK_DEADLINE_STALLS: u32 = 4;
/// How long a provider waits for its handler's next chunk, or for a requester to take the
/// bytes it writes, before it closes the stream.
const PROVIDER_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a provider keeps an idle stream open for the next request.
const PROVIDER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests sent on a session and not yet answered in full; a further
/// [`BulkSession::request`] waits.
const MAX_PIPELINED: usize = 4;
/// Verified chunks a session holds for its reader; past this, it stops reading the stream.
const ITEM_BUFFER: usize = 8;

const STATUS_OK: u8 = 0;
const STATUS_DENIED: u8 = 1;
const STATUS_BUSY: u8 = 2;
const CHUNK_FOUND: u8 = 0;
const CHUNK_NOT_FOUND: u8 = 1;

/// `/shoal/bulk/1` request: send me these chunks of file `file`, which the tenant I act for
/// may read. The provider's rule is that of [`BlockRequest`](crate::BlockRequest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkRequest {
    /// The file the chunks belong to.
    pub file: Cid,
    /// The chunks wanted, at most [`MAX_BULK_CHUNKS`], answered in this order.
    pub chunks: Vec<Cid>,
    /// The tenant the requester acts for, and the proof.
    pub credential: Credential,
}

/// A provider's answer to a [`BulkRequest`] ([`InboundHandler::bulk`]).
pub enum BulkResponse {
    /// The chunks, one item per chunk asked and in that order. Items past the number asked
    /// are ignored; a stream that ends early answers `NotFound` for the rest.
    Chunks(BoxStream<'static, BulkChunk>),
    /// The requester may not read the file here, or it is not here: the two look the same.
    Denied,
}

impl std::fmt::Debug for BulkResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Chunks(_) => "Chunks(..)",
            Self::Denied => "Denied",
        })
    }
}

/// One chunk of a [`BulkResponse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkChunk {
    /// Its bytes (at most [`MAX_BLOCK_LEN`]; a longer one is sent as `NotFound`).
    Found(Vec<u8>),
    /// The provider does not hold it.
    NotFound,
}

/// One chunk as a [`BulkSession`] hands it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkItem {
    /// The chunk's bytes, checked against its id (the proof goes on to the store, which
    /// does not hash them again).
    Chunk(Verified),
    /// The provider does not hold this chunk.
    NotFound(Cid),
}

/// One open `/shoal/bulk/1` stream to a provider ([`NetworkClient::open_bulk`]).
///
/// [`request`](Self::request) queues requests (up to 4 unanswered); [`next`](Self::next)
/// yields their chunks in order, each verified, read from the stream by a task of the
/// session's own. After the first error the session yields nothing more: the provider
/// refused ([`Error::Denied`], [`Error::Busy`]), sent a chunk that does not hash to its id
/// ([`Error::BlockMismatch`]), sent nothing for [`BULK_STALL_TIMEOUT`] while it owed bytes
/// ([`Error::Stalled`]), or broke the stream ([`Error::Stream`]). Dropping the session
/// closes the stream.
#[derive(Debug)]
pub struct BulkSession {
    peer: PeerId,
    requests: mpsc::Sender<BulkRequest>,
    items: mpsc::Receiver<Result<BulkItem, Error>>,
    writer: JoinHandle<()>,
    reader: JoinHandle<()>,
}

impl Drop for BulkSession {
    fn drop(&mut self) {
        self.writer.abort();
        self.reader.abort();
    }
}

impl BulkSession {
    /// Runs a session over an open stream to `peer`.
    pub(crate) fn start(peer: PeerId, stream: Stream, stall: Duration) -> Self {
        let (read, write) = stream.split();
        let (requests, requests_rx) = mpsc::channel(1);
        let (asked_tx, asked_rx) = mpsc::channel(MAX_PIPELINED);
        let (items_tx, items) = mpsc::channel(ITEM_BUFFER);
        let writer = tokio::spawn(write_requests(
            peer,
            write,
            requests_rx,
            asked_tx,
            items_tx.downgrade(),
        ));
        let reader = tokio::spawn(read_answers(peer, read, asked_rx, items_tx, stall));
        Self {
            peer,
            requests,
            items,
            writer,
            reader,
        }
    }

    /// The provider.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// Sends a request; its chunks come out of [`next`](Self::next) after those of the
    /// requests before it. Waits while 4 requests are unanswered, and the session holds only
    /// 8 chunks nobody has taken: read with [`next`](Self::next) while requesting (keep a
    /// couple of requests ahead), or a fifth request waits forever.
    ///
    /// # Errors
    ///
    /// [`Error::Stream`] with [`io::ErrorKind::InvalidInput`] for more than
    /// [`MAX_BULK_CHUNKS`] chunks; [`Error::ConnectionClosed`] once the session has ended
    /// ([`next`](Self::next) says why).
    pub async fn request(&self, request: BulkRequest) -> Result<(), Error> {
        if request.chunks.len() > MAX_BULK_CHUNKS {
            return Err(self.stream_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} chunks in one bulk request; at most {MAX_BULK_CHUNKS}",
                    request.chunks.len()
                ),
            )));
        }
        self.requests
            .send(request)
            .await
            .map_err(|_| Error::ConnectionClosed {
                peer: self.peer,
                protocol: BULK_PROTOCOL_NAME,
            })
    }

    /// The next chunk asked for, verified; `None` once every request sent so far is
    /// answered and the session was [`finish`](Self::finish)ed, or after an error.
    pub async fn next(&mut self) -> Option<Result<BulkItem, Error>> {
        self.items.recv().await
    }

    /// Says that no more requests will come: [`next`](Self::next) ends after the answers
    /// owed, and the provider sees the stream close.
    pub fn finish(&mut self) {
        let (closed, _) = mpsc::channel(1);
        self.requests = closed;
    }

    fn stream_error(&self, source: io::Error) -> Error {
        Error::Stream {
            peer: self.peer,
            protocol: BULK_PROTOCOL_NAME,
            source,
        }
    }
}

/// The session's writing half: encodes each request, tells the reader what it asked for.
async fn write_requests(
    peer: PeerId,
    mut write: impl AsyncWrite + Unpin,
    mut requests: mpsc::Receiver<BulkRequest>,
    asked: mpsc::Sender<Vec<Cid>>,
    items: mpsc::WeakSender<Result<BulkItem, Error>>,
) {
    // Weak: once the reader has ended, the session's items end too, whatever this half does.
    let fail = |source| async move {
        if let Some(items) = items.upgrade() {
            let _ = items
                .send(Err(Error::Stream {
                    peer,
                    protocol: BULK_PROTOCOL_NAME,
                    source,
                }))
                .await;
        }
    };
    while let Some(request) = requests.recv().await {
        let frame = match encode_request(&request) {
            Ok(frame) => frame,
            Err(source) => return fail(source).await,
        };
        // The reader learns of the request first, so that it expects its answer.
        if asked.send(request.chunks).await.is_err() {
            return;
        }
        let written = async {
            write.write_all(&frame).await?;
            write.flush().await
        };
        if let Err(source) = written.await {
            return fail(source).await;
        }
    }
    let _ = write.close().await;
}

/// The session's reading half: reads each answer, verifies each chunk, hands it on.
async fn read_answers(
    peer: PeerId,
    mut read: impl AsyncRead + Unpin,
    mut asked: mpsc::Receiver<Vec<Cid>>,
    items: mpsc::Sender<Result<BulkItem, Error>>,
    stall: Duration,
) {
    let stream_error = |source| Error::Stream {
        peer,
        protocol: BULK_PROTOCOL_NAME,
        source,
    };
    while let Some(chunks) = asked.recv().await {
        let mut status = [0u8; 1];
        if let Err(e) = read_exact_within(&mut read, &mut status, stall).await {
            let _ = items.send(Err(io_to_error(peer, stall, e))).await;
            return;
        }
        match status[0] {
            STATUS_OK => {}
            STATUS_DENIED => {
                let cid = chunks.first().copied().unwrap_or(Cid::of(&[]));
                let _ = items.send(Err(Error::Denied { peer, cid })).await;
                return;
            }
            STATUS_BUSY => {
                let _ = items.send(Err(Error::Busy { peer })).await;
                return;
            }
            other => {
                let e = invalid(format!("bad bulk answer status {other}"));
                let _ = items.send(Err(stream_error(e))).await;
                return;
            }
        }
        for cid in chunks {
            let item = tokio::time::timeout(stall * CHUNK_DEADLINE_STALLS, async {
                read_chunk(&mut read, cid, stall).await
            })
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()));
            let item = match item {
                Ok(Some(bytes)) => match Verified::check(cid, bytes) {
                    Ok(chunk) => Ok(BulkItem::Chunk(chunk)),
                    Err((_, bytes)) => Err(Error::BlockMismatch {
                        peer,
                        cid,
                        len: bytes.len(),
                    }),
                },
                Ok(None) => Ok(BulkItem::NotFound(cid)),
                Err(e) => Err(io_to_error(peer, stall, e)),
            };
            let failed = item.is_err();
            if items.send(item).await.is_err() || failed {
                return;
            }
        }
    }
}

/// One chunk frame: its bytes, or `None` for not found.
async fn read_chunk(
    read: &mut (impl AsyncRead + Unpin),
    cid: Cid,
    stall: Duration,
) -> io::Result<Option<Vec<u8>>> {
    let mut tag = [0u8; 1];
    read_exact_within(read, &mut tag, stall).await?;
    match tag[0] {
        CHUNK_FOUND => {}
        CHUNK_NOT_FOUND => return Ok(None),
        other => return Err(invalid(format!("bad bulk chunk tag {other} for {cid}"))),
    }
    let mut len = [0u8; 4];
    read_exact_within(read, &mut len, stall).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_BLOCK_LEN {
        return Err(invalid(format!(
            "bulk chunk {cid} of {len} bytes; at most {MAX_BLOCK_LEN}"
        )));
    }
    // Sized once from the header: no growing, no copy.
    let mut bytes = vec![0u8; len];
    read_exact_within(read, &mut bytes, stall).await?;
    Ok(Some(bytes))
}

/// Fills `buf`, failing with [`io::ErrorKind::TimedOut`] when no byte arrives for `stall`.
async fn read_exact_within(
    read: &mut (impl AsyncRead + Unpin),
    buf: &mut [u8],
    stall: Duration,
) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = tokio::time::timeout(stall, read.read(&mut buf[filled..]))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "bulk stream stalled"))??;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
    }
    Ok(())
}

fn io_to_error(peer: PeerId, stall: Duration, source: io::Error) -> Error {
    if source.kind() == io::ErrorKind::TimedOut {
        Error::Stalled { peer, after: stall }
    } else {
        Error::Stream {
            peer,
            protocol: BULK_PROTOCOL_NAME,
            source,
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn encode_request(request: &BulkRequest) -> io::Result<Vec<u8>> {
    let payload = postcard::to_stdvec(request).map_err(|e| invalid(e.to_string()))?;
    if payload.len() > BULK_REQUEST_LIMIT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "bulk request of {} bytes; at most {BULK_REQUEST_LIMIT}",
                payload.len()
            ),
        ));
    }
    let len = u32::try_from(payload.len()).map_err(|e| invalid(e.to_string()))?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Reads one request, or `None` at a clean end of stream. Checks the declared length before
/// reading the body.
async fn read_request(read: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<BulkRequest>> {
    let mut len = [0u8; 4];
    match read.read(&mut len[..1]).await? {
        0 => return Ok(None),
        _ => read.read_exact(&mut len[1..]).await?,
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > BULK_REQUEST_LIMIT {
        return Err(invalid(format!(
            "bulk request of {len} bytes; at most {BULK_REQUEST_LIMIT}"
        )));
    }
    let mut payload = vec![0u8; len];
    read.read_exact(&mut payload).await?;
    let request: BulkRequest =
        postcard::from_bytes(&payload).map_err(|e| invalid(e.to_string()))?;
    if request.chunks.len() > MAX_BULK_CHUNKS {
        return Err(invalid(format!(
            "{} chunks in one bulk request; at most {MAX_BULK_CHUNKS}",
            request.chunks.len()
        )));
    }
    Ok(Some(request))
}

/// `io` bounded by [`PROVIDER_STALL_TIMEOUT`]: a requester that stops reading loses its stream.
async fn within(io: impl Future<Output = io::Result<()>>) -> io::Result<()> {
    tokio::time::timeout(PROVIDER_STALL_TIMEOUT, io)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "bulk requester stopped reading"))?
}

/// Answers `Busy` on a stream that got no permit, and closes it.
pub(crate) async fn refuse_busy(mut stream: Stream) {
    let answer = async {
        stream.write_all(&[STATUS_BUSY]).await?;
        stream.close().await
    };
    let _ = tokio::time::timeout(PROVIDER_STALL_TIMEOUT, answer).await;
}

/// Serves one inbound bulk stream from `peer` until it closes, idles, or a request is refused.
pub(crate) async fn serve(
    peer: PeerId,
    mut stream: Stream,
    handler: Arc<dyn InboundHandler>,
) -> io::Result<()> {
    loop {
        let request =
            match tokio::time::timeout(PROVIDER_IDLE_TIMEOUT, read_request(&mut stream)).await {
                Ok(Ok(Some(request))) => request,
                Ok(Ok(None)) | Err(_) => break,
                Ok(Err(e)) => return Err(e),
            };
        let asked = request.chunks.len();
        match handler.bulk(peer, request).await {
            BulkResponse::Denied => {
                within(stream.write_all(&[STATUS_DENIED])).await?;
                break;
            }
            BulkResponse::Chunks(chunks) => {
                within(stream.write_all(&[STATUS_OK])).await?;
                let mut chunks = chunks.take(asked);
                let mut sent = 0;
                while sent < asked {
                    let chunk = tokio::time::timeout(PROVIDER_STALL_TIMEOUT, chunks.next())
                        .await
                        .map_err(|_| {
                            io::Error::new(io::ErrorKind::TimedOut, "bulk handler stalled")
                        })?;
                    match chunk {
                        Some(BulkChunk::Found(bytes)) if bytes.len() <= MAX_BLOCK_LEN => {
                            let len =
                                u32::try_from(bytes.len()).map_err(|e| invalid(e.to_string()))?;
                            let mut header = [CHUNK_FOUND; 5];
                            header[1..].copy_from_slice(&len.to_be_bytes());
                            within(stream.write_all(&header)).await?;
                            within(stream.write_all(&bytes)).await?;
                        }
                        Some(_) | None => within(stream.write_all(&[CHUNK_NOT_FOUND])).await?,
                    }
                    sent += 1;
                }
                within(stream.flush()).await?;
            }
        }
    }
    let _ = tokio::time::timeout(PROVIDER_STALL_TIMEOUT, stream.close()).await;
    Ok(())
}
