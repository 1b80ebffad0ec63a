//! Moving files between nodes over `/shoal/bulk/1`: a file's chunks stream from several
//! providers at once, each serving its share, a slow one less; a provider that streams a
//! corrupt chunk or stalls is dropped and its chunks come from another, and the bulk protocol keeps the capability rule of
//! `/shoal/block/2` (a non-owner gets `Denied` for a private file and for a missing one alike).
//!
//! The misbehaving providers are real nodes whose answers pass through a wrapper
//! (`Node::start_with`).

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt};
use shoal_host::node::Node;
use shoal_p2p::{
    BlockRequest, BlockResponse, BoxFuture, BulkChunk, BulkItem, BulkRequest, BulkResponse,
    Capacity, Cid, Error, InboundHandler, PeerId, ProgressRecord, TaskOutcome,
};

use crate::util::{connect, node, node_config, pseudo_random};

/// How a wrapped provider answers bulk requests.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Honest,
    /// Flips a byte of the third chunk of every answer.
    CorruptThird,
    /// Sends two chunks of every answer, then nothing, ever.
    StallAfterTwo,
    /// Sends every chunk 50 ms late: a slow disk or link.
    Slow,
}

/// What a wrapped provider was asked and did.
#[derive(Default)]
struct Counts {
    bulk_requests: AtomicUsize,
    bulk_chunks: AtomicUsize,
    /// `/shoal/block/2` requests for a file's chunks (not its manifest).
    chunk_blocks: AtomicUsize,
    lies: AtomicUsize,
}

struct Wrapped {
    inner: Arc<dyn InboundHandler>,
    mode: Mode,
    counts: Arc<Counts>,
}

impl InboundHandler for Wrapped {
    fn block(&self, from: PeerId, request: BlockRequest) -> BoxFuture<'_, BlockResponse> {
        if request.cid != request.file {
            self.counts.chunk_blocks.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.block(from, request)
    }

    fn bulk(&self, from: PeerId, request: BulkRequest) -> BoxFuture<'_, BulkResponse> {
        self.counts.bulk_requests.fetch_add(1, Ordering::SeqCst);
        let counts = self.counts.clone();
        let mode = self.mode;
        async move {
            let BulkResponse::Chunks(chunks) = self.inner.bulk(from, request).await else {
                return BulkResponse::Denied;
            };
            let served = counts.clone();
            let chunks = chunks.inspect(move |c| {
                if matches!(c, BulkChunk::Found(_)) {
                    served.bulk_chunks.fetch_add(1, Ordering::SeqCst);
                }
            });
            let chunks = match mode {
                Mode::Honest => chunks.boxed(),
                Mode::CorruptThird => chunks
                    .enumerate()
                    .map(move |(i, c)| match c {
                        BulkChunk::Found(mut bytes) if i == 2 => {
                            bytes[0] ^= 1;
                            counts.lies.fetch_add(1, Ordering::SeqCst);
                            BulkChunk::Found(bytes)
                        }
                        c => c,
                    })
                    .boxed(),
                Mode::StallAfterTwo => chunks.take(2).chain(futures::stream::pending()).boxed(),
                Mode::Slow => chunks
                    .then(|c| async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        c
                    })
                    .boxed(),
            };
            BulkResponse::Chunks(chunks)
        }
        .boxed()
    }

    fn task(&self, from: PeerId, spec: shoal_p2p::TaskSpec) -> BoxFuture<'_, TaskOutcome> {
        self.inner.task(from, spec)
    }

    fn capacity(&self) -> BoxFuture<'_, Capacity> {
        self.inner.capacity()
    }

    fn progress(&self, from: PeerId, record: ProgressRecord) {
        self.inner.progress(from, record);
    }
}

async fn wrapped(root: &Path, name: &str, mode: Mode) -> (Node, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    let node = Node::start_with(node_config(root, name, 1), move |inner| {
        Arc::new(Wrapped {
            inner,
            mode,
            counts: c,
        })
    })
    .await
    .expect("wrapped node starts");
    (node, counts)
}

/// `mib` MiB of pseudo-random bytes in a file under `root`.
fn data_file(root: &Path, mib: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let data = pseudo_random(mib << 20, seed);
    let path = root.join(format!("data-{seed}.bin"));
    std::fs::write(&path, &data).expect("write data");
    (path, data)
}

/// Two providers of one public file of `mib` MiB, and a fetcher connected to both.
async fn two_providers(
    root: &Path,
    mib: usize,
    first: Mode,
) -> (Node, Arc<Counts>, Node, Arc<Counts>, Node, Cid, Vec<u8>) {
    let (p1, c1) = wrapped(root, "p1", first).await;
    let (p2, c2) = wrapped(root, "p2", Mode::Honest).await;
    let (path, data) = data_file(root, mib, 7);
    let cid = p1.put_path(path.clone(), true).await.expect("put on p1");
    assert_eq!(p2.put_path(path, true).await.expect("put on p2"), cid);
    let fetcher = node(root, "fetcher", 1).await;
    connect(&fetcher, &p1).await;
    connect(&fetcher, &p2).await;
    (p1, c1, p2, c2, fetcher, cid, data)
}

/// `fetcher` fetches file `cid` from `providers` within `secs` seconds, or the test fails.
async fn fetch_within(secs: u64, fetcher: &Node, cid: Cid, providers: &[&Node]) {
    let providers: Vec<PeerId> = providers.iter().map(|p| p.peer_id()).collect();
    tokio::time::timeout(
        Duration::from_secs(secs),
        fetcher.fetch_file(cid, &providers),
    )
    .await
    .expect("in time")
    .expect("fetched");
}

fn read(node: &Node, cid: &Cid) -> Vec<u8> {
    node.store().read_file(cid).expect("file is complete here")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_streams_from_both_providers() {
    let root = tempfile::tempdir().unwrap();
    let (p1, c1, p2, c2, fetcher, cid, data) = two_providers(root.path(), 8, Mode::Honest).await;
    fetch_within(10, &fetcher, cid, &[&p1, &p2]).await;
    assert_eq!(read(&fetcher, &cid), data);
    let (n1, n2) = (
        c1.bulk_chunks.load(Ordering::SeqCst),
        c2.bulk_chunks.load(Ordering::SeqCst),
    );
    assert!(
        3 * n1 >= 8 && 3 * n2 >= 8,
        "each provider serves at least a third: {n1} + {n2}"
    );
    assert_eq!(n1 + n2, 8, "every chunk once");
    assert_eq!(c1.chunk_blocks.load(Ordering::SeqCst), 0);
    assert_eq!(c2.chunk_blocks.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_streams_a_corrupt_chunk_is_dropped_and_the_file_arrives_whole() {
    let root = tempfile::tempdir().unwrap();
    let (liar, lies, honest, _, fetcher, cid, data) =
        two_providers(root.path(), 16, Mode::CorruptThird).await;
    fetch_within(10, &fetcher, cid, &[&liar, &honest]).await;
    assert_eq!(read(&fetcher, &cid), data);
    assert!(lies.lies.load(Ordering::SeqCst) >= 1, "the liar lied");
    // Its first stream carried at most the two requests sent before the lie was seen; then
    // it is asked nothing more, over either protocol.
    assert!(lies.bulk_requests.load(Ordering::SeqCst) <= 2);
    assert_eq!(lies.chunk_blocks.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_stalls_mid_stream_is_dropped_in_bounded_time() {
    let root = tempfile::tempdir().unwrap();
    let (staller, stalls, honest, _, fetcher, cid, data) =
        two_providers(root.path(), 16, Mode::StallAfterTwo).await;
    let start = Instant::now();
    fetch_within(20, &fetcher, cid, &[&staller, &honest]).await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_eq!(read(&fetcher, &cid), data);
    assert!(stalls.bulk_requests.load(Ordering::SeqCst) <= 2);
    assert_eq!(stalls.chunk_blocks.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_one_provider_is_slow_the_other_serves_most_of_the_file() {
    let root = tempfile::tempdir().unwrap();
    // 96 chunks over two streams (lanes) to each provider: eight requests of 12, two in each
    // stream's share, one in flight on each. The fast one takes the slow one's second
    // requests once its own share is done, which it has 0.6 s to do (the slow one's first
    // requests) before the slow one asks for them.
    let (slow, slow_counts, fast, fast_counts, fetcher, cid, data) =
        two_providers(root.path(), 96, Mode::Slow).await;
    fetch_within(30, &fetcher, cid, &[&slow, &fast]).await;
    assert_eq!(read(&fetcher, &cid), data);
    let (s, f) = (
        slow_counts.bulk_chunks.load(Ordering::SeqCst),
        fast_counts.bulk_chunks.load(Ordering::SeqCst),
    );
    assert_eq!(s + f, 96, "every chunk once");
    assert!(f >= 2 * s, "the fast provider serves most: {f} against {s}");
}

/// Fetches of several files at once from one provider want more bulk streams than it serves
/// one peer (two lanes each, eight in all, against its 4): extra lanes give way to the
/// fetches that have none, so every fetch streams, none by one request per chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_at_once_from_one_provider_each_get_a_bulk_stream() {
    let root = tempfile::tempdir().unwrap();
    // A slow provider, so that the fetches overlap.
    let (provider, counts) = wrapped(root.path(), "provider", Mode::Slow).await;
    let mut files = Vec::new();
    for seed in 0..4 {
        let (path, data) = data_file(root.path(), 20, seed);
        files.push((provider.put_path(path, true).await.expect("put"), data));
    }
    let fetcher = node(root.path(), "fetcher", 1).await;
    connect(&fetcher, &provider).await;
    let providers = [&provider];
    let fetches = files
        .iter()
        .map(|(cid, _)| fetch_within(30, &fetcher, *cid, &providers));
    futures::future::join_all(fetches).await;
    for (cid, data) in &files {
        assert_eq!(&read(&fetcher, cid), data);
    }
    assert_eq!(counts.bulk_chunks.load(Ordering::SeqCst), 4 * 20);
    assert_eq!(
        counts.chunk_blocks.load(Ordering::SeqCst),
        0,
        "no chunk went one request each"
    );
}

/// The first item of a one-request bulk session from `from` to `to`.
async fn first_bulk_item(
    from: &Node,
    to: PeerId,
    request: BulkRequest,
) -> Option<Result<BulkItem, Error>> {
    let mut session = from
        .net()
        .open_bulk(to, 0)
        .await
        .expect("bulk stream opens");
    session.request(request).await.expect("request sent");
    tokio::time::timeout(Duration::from_secs(5), session.next())
        .await
        .expect("an answer in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_keeps_the_capability_rule() {
    let root = tempfile::tempdir().unwrap();
    let owner = node(root.path(), "owner", 1).await;
    let stranger = node(root.path(), "stranger", 1).await;
    let owner_id = connect(&stranger, &owner).await;
    let (private, _) = data_file(root.path(), 2, 3);
    let private = owner.put_path(private, false).await.expect("private file");
    let chunks = owner.store().manifest(&private).expect("manifest").chunks;
    let denied = |r: Option<Result<BulkItem, Error>>| matches!(r, Some(Err(Error::Denied { peer, .. })) if peer == owner_id);

    // A private file, to another tenant.
    let ask = BulkRequest {
        file: private,
        chunks: chunks.clone(),
        credential: stranger.credential().clone(),
    };
    assert!(denied(first_bulk_item(&stranger, owner_id, ask).await));
    // A file that is not there: the same answer.
    let ask = BulkRequest {
        file: Cid::of(b"no such file"),
        chunks: vec![Cid::of(b"no such chunk")],
        credential: stranger.credential().clone(),
    };
    assert!(denied(first_bulk_item(&stranger, owner_id, ask).await));
    // The owner's own credential, presented by someone else.
    let ask = BulkRequest {
        file: private,
        chunks: chunks.clone(),
        credential: owner.credential().clone(),
    };
    assert!(denied(first_bulk_item(&stranger, owner_id, ask).await));

    // Once public, the same request is served.
    let (public, _) = data_file(root.path(), 2, 3);
    assert_eq!(owner.put_path(public, true).await.expect("public"), private);
    let ask = BulkRequest {
        file: private,
        chunks: chunks.clone(),
        credential: stranger.credential().clone(),
    };
    assert!(matches!(
        first_bulk_item(&stranger, owner_id, ask).await,
        Some(Ok(BulkItem::Chunk(chunk))) if chunk.cid() == chunks[0]
    ));
}
