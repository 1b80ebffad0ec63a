//! Multi-node tests: in-process peers on 127.0.0.1, mDNS off, explicit bootstrap.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    io,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt, StreamExt};
use libp2p::{
    Stream, StreamProtocol, Swarm, SwarmBuilder, noise,
    request_response::{self, OutboundFailure, ProtocolSupport},
    swarm::SwarmEvent,
    tcp, yamux,
};
use tokio::{sync::Semaphore, task::JoinHandle};

use crate::{
    BLOCK_LIMITS, BLOCK_PROTOCOL, BoxFuture, CAPACITY_LIMITS, CAPACITY_PROTOCOL, Capacity, Cid,
    Config, Error, FailureKind, InboundHandler, Keypair, MAX_PROGRESS_LEN, Multiaddr, Network,
    NetworkClient, PeerId, TASK_LIMITS, TASK_PROTOCOL, TaskLimits, TaskOutcome, TaskSpec,
    TaskStats, Verified,
    bulk::{
        BULK_PROTOCOL_NAME, BulkChunk, BulkItem, BulkRequest, BulkResponse, BulkSession,
        MAX_BULK_CHUNKS,
    },
    codec::{FRAME_HEADER_BYTES, encode_frame, read_frame},
    messages::ProgressRecord,
    messages::{BlockRequest, BlockResponse, CapacityRequest},
    tasks::{ANSWER_FRAME, TASK_FRAME},
};

/// How long a local peer may take to refuse a bad frame or reach a handler. Far below every
/// protocol and raw-peer timeout, so that only a prompt answer passes.
const PROMPT: Duration = Duration::from_secs(3);
/// Bound for work that is not itself under test (connecting, a good request).
const SETTLE: Duration = Duration::from_secs(10);
/// How often [`eventually`] polls a condition that no event announces.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// The inbound task limit that [`Config::max_inbound_tasks`] and the README document.
const DOCUMENTED_MAX_INBOUND_TASKS: usize = 32;

/// A peer that serves blocks from a map, echoes tasks and reports a fixed capacity.
struct TestHandler {
    blocks: Mutex<HashMap<Cid, Vec<u8>>>,
    /// Each task with entry `"wait"` adds a permit here once it is in the handler...
    entered: Semaphore,
    /// ...and then takes one permit from here before it completes.
    gate: Semaphore,
    me: Mutex<Option<PeerId>>,
    progress: Mutex<Vec<(PeerId, ProgressRecord)>>,
    /// Task calls so far.
    calls: std::sync::atomic::AtomicUsize,
}

impl Default for TestHandler {
    fn default() -> Self {
        Self {
            blocks: Mutex::default(),
            entered: Semaphore::new(0),
            gate: Semaphore::new(0),
            progress: Mutex::default(),
            me: Mutex::default(),
            calls: Default::default(),
        }
    }
}

const CAPACITY: Capacity = Capacity {
    free_slots: 3,
    total_slots: 4,
    has_gpu: false,
    queue_len: 1,
};

/// A file every [`TestHandler`] denies.
const PRIVATE: &[u8] = b"private";
/// A file whose second chunk in each bulk answer every [`TestHandler`] corrupts.
const LIAR: &[u8] = b"liar";

/// A request for block `cid` as a file of its own, with no credential: the test handler
/// does not check them (the host's executor does).
fn ask(cid: Cid) -> BlockRequest {
    BlockRequest {
        cid,
        file: cid,
        credential: Default::default(),
    }
}

impl TestHandler {
    fn put(&self, bytes: &[u8]) -> Cid {
        let cid = Cid::of(bytes);
        self.blocks.lock().unwrap().insert(cid, bytes.to_vec());
        cid
    }

    /// Waits until `n` more `"wait"` tasks are inside the handler.
    async fn until_entered(&self, n: usize) {
        let n = u32::try_from(n).unwrap();
        tokio::time::timeout(PROMPT, self.entered.acquire_many(n))
            .await
            .unwrap_or_else(|_| panic!("{n} waiting tasks did not reach the handler"))
            .unwrap()
            .forget();
    }
}

impl InboundHandler for TestHandler {
    fn block(&self, _from: PeerId, request: BlockRequest) -> BoxFuture<'_, BlockResponse> {
        let response = if request.file == Cid::of(PRIVATE) {
            BlockResponse::Denied
        } else {
            self.blocks
                .lock()
                .unwrap()
                .get(&request.cid)
                .cloned()
                .map_or(BlockResponse::NotFound, BlockResponse::Found)
        };
        async move { response }.boxed()
    }

    fn bulk(&self, _from: PeerId, request: BulkRequest) -> BoxFuture<'_, BulkResponse> {
        let response = if request.file == Cid::of(PRIVATE) {
            BulkResponse::Denied
        } else {
            let liar = request.file == Cid::of(LIAR);
            let blocks = self.blocks.lock().unwrap();
            let chunks: Vec<BulkChunk> = request
                .chunks
                .iter()
                .enumerate()
                .map(|(i, c)| match blocks.get(c) {
                    Some(bytes) if liar && i == 1 => BulkChunk::Found(bytes[1..].to_vec()),
                    Some(bytes) => BulkChunk::Found(bytes.clone()),
                    None => BulkChunk::NotFound,
                })
                .collect();
            BulkResponse::Chunks(futures::stream::iter(chunks).boxed())
        };
        async move { response }.boxed()
    }

    fn task(&self, from: PeerId, spec: TaskSpec) -> BoxFuture<'_, TaskOutcome> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            if spec.entry == "wait" {
                self.entered.add_permits(1);
                self.gate.acquire().await.unwrap().forget();
            }
            if spec.entry == "panic" {
                panic!("handler panics on purpose");
            }
            let me = self
                .me
                .lock()
                .unwrap()
                .map(|p| p.to_string())
                .unwrap_or_default();
            TaskOutcome::Ok {
                outputs: spec.inputs.clone(),
                // "big": an outcome that fills a stream's window on its own.
                logs: if spec.entry == "big" {
                    "x".repeat(1 << 20)
                } else {
                    format!("{} for {from}", spec.entry)
                },
                stats: TaskStats {
                    wall_us: 1000,
                    peak_memory_bytes: 64 << 10,
                    backend: "cpu".into(),
                    executed_by: me,
                    ..TaskStats::default()
                },
            }
        }
        .boxed()
    }

    fn capacity(&self) -> BoxFuture<'_, Capacity> {
        async { CAPACITY }.boxed()
    }

    fn progress(&self, from: PeerId, record: ProgressRecord) {
        self.progress.lock().unwrap().push((from, record));
    }
}

struct Node {
    client: NetworkClient,
    handle: JoinHandle<()>,
    handler: Arc<TestHandler>,
}

impl Node {
    fn id(&self) -> PeerId {
        self.client.local_peer_id()
    }

    async fn tcp_addr(&self) -> Multiaddr {
        self.addr("tcp").await
    }

    async fn addr(&self, transport: &str) -> Multiaddr {
        let addrs = self.client.listen_addrs().await.unwrap();
        addrs
            .into_iter()
            .find(|a| a.iter().any(|p| p.tag() == transport))
            .unwrap_or_else(|| panic!("no {transport} listen address"))
    }
}

async fn spawn_node(bootstrap: Vec<Multiaddr>, tune: impl FnOnce(&mut Config)) -> Node {
    let handler = Arc::new(TestHandler::default());
    let keypair = Keypair::generate_ed25519();
    *handler.me.lock().unwrap() = Some(keypair.public().to_peer_id());
    let mut config = Config::new(keypair);
    config.listen = vec![
        "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
    ];
    config.bootstrap = bootstrap;
    config.mdns = false;
    config.query_timeout = Duration::from_secs(5);
    tune(&mut config);
    let serving: Arc<dyn InboundHandler> = handler.clone();
    let (client, handle) = Network::spawn(config, |_| serving).unwrap();
    Node {
        client,
        handle,
        handler,
    }
}

fn spec(entry: &str) -> TaskSpec {
    TaskSpec {
        module: Cid::of(b"module"),
        entry: entry.into(),
        inputs: vec![("x".into(), Cid::of(b"x"))],
        args: vec![("k".into(), "v".into())],
        limits: TaskLimits {
            memory_bytes: 1 << 20,
            timeout_ms: 1000,
            cpu_budget_ms: 1000,
        },
        depth: 0,
        progress: 0,
        deterministic: false,
        sources: vec![],
        auth: Default::default(),
    }
}

/// `future`'s output, or a test failure naming `what` after `bound`.
async fn within<T>(bound: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(bound, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {bound:?}"))
}

/// Polls `probe` until it yields `Some`, for conditions that no event announces (such as a
/// provider record spreading through Kademlia); fails the test after `bound`.
async fn eventually<T, F, Fut>(bound: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + bound;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: not within {bound:?}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Aborts a helper task when the test that started it ends, however it ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A TCP address where no libp2p peer will ever answer: a listener the test owns, which
/// accepts each connection and drops it at once. Unlike a port guessed to be closed, nothing
/// else can be listening there, and a dial fails at once instead of timing out.
struct DeadEnd {
    addr: Multiaddr,
    _acceptor: AbortOnDrop,
}

impl DeadEnd {
    async fn new() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        Self {
            addr: format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap(),
            _acceptor: AbortOnDrop(acceptor),
        }
    }
}

/// Every reported address, TCP and QUIC alike, is dialable and reaches this very peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_addrs_are_real_and_dialable() {
    let a = spawn_node(vec![], |_| {}).await;
    let addrs = a.client.listen_addrs().await.unwrap();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    for transport in ["tcp", "quic-v1"] {
        assert!(
            addrs.iter().any(|a| a.iter().any(|p| p.tag() == transport)),
            "no {transport} address in {addrs:?}"
        );
    }
    for addr in &addrs {
        let s = addr.to_string();
        assert!(s.ends_with(&format!("/p2p/{}", a.id())), "{s}");
        assert!(
            !s.contains("/tcp/0/") && !s.contains("/udp/0/"),
            "port 0 left in {s}"
        );
        // A fresh dialer for each address: a peer already connected would answer at once
        // without dialing. The `/p2p` suffix makes the remote prove it is A.
        let b = spawn_node(vec![], |_| {}).await;
        assert_eq!(b.client.dial(addr.clone()).await.unwrap(), a.id(), "{s}");
        assert_eq!(b.client.capacity(a.id()).await.unwrap(), CAPACITY, "{s}");
    }
}

/// B provides a block, C (which only knows A) finds B through Kademlia and fetches from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_find_providers_and_fetch_block() {
    let a = spawn_node(vec![], |_| {}).await;
    let boot = a.tcp_addr().await;
    let b = spawn_node(vec![boot.clone()], |_| {}).await;
    let c = spawn_node(vec![boot], |_| {}).await;

    let data = b"a block that lives on B".to_vec();
    let cid = b.handler.put(&data);
    b.client.start_providing(cid).await.unwrap();

    // Nothing announces that the record has reached A, or that C's routing table holds A.
    let providers = eventually(
        Duration::from_secs(20),
        "C finds B as a provider",
        || async {
            let found = c.client.find_providers(cid).await.unwrap();
            found.contains(&b.id()).then_some(found)
        },
    )
    .await;
    assert!(!providers.contains(&c.id()), "{providers:?}");

    // C has never been given B's address: the swarm gets it from Kademlia.
    let fetched = c.client.fetch_block(b.id(), ask(cid)).await.unwrap();
    assert_eq!(fetched.as_ref().map(Verified::bytes), Some(&data[..]));
    // A does not hold it.
    assert_eq!(c.client.fetch_block(a.id(), ask(cid)).await.unwrap(), None);

    let peers = c.client.connected_peers().await.unwrap();
    assert!(
        peers.contains(&a.id()) && peers.contains(&b.id()),
        "{peers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_round_trip_and_capacity() {
    let a = spawn_node(vec![], |_| {}).await;
    let b = spawn_node(vec![a.tcp_addr().await], |_| {}).await;

    let outcome = b.client.submit_task(a.id(), spec("echo")).await.unwrap();
    match outcome {
        TaskOutcome::Ok {
            outputs,
            logs,
            stats,
        } => {
            assert_eq!(outputs, spec("echo").inputs);
            assert_eq!(logs, format!("echo for {}", b.id()));
            assert_eq!(stats.executed_by, a.id().to_string());
        }
        other => panic!("unexpected outcome {other:?}"),
    }
    assert_eq!(b.client.capacity(a.id()).await.unwrap(), CAPACITY);
    assert_eq!(a.client.capacity(b.id()).await.unwrap(), CAPACITY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_records_reach_the_handler_in_order() {
    let a = spawn_node(vec![], |_| {}).await;
    let b = spawn_node(vec![a.tcp_addr().await], |_| {}).await;
    for i in 0..3u8 {
        let record = ProgressRecord {
            token: 7,
            data: vec![i; MAX_PROGRESS_LEN],
        };
        b.client.send_progress(a.id(), record).await.unwrap();
    }
    let got = a.handler.progress.lock().unwrap().clone();
    let firsts: Vec<(PeerId, u64, u8)> =
        got.iter().map(|(p, r)| (*p, r.token, r.data[0])).collect();
    assert_eq!(firsts, vec![(b.id(), 7, 0), (b.id(), 7, 1), (b.id(), 7, 2)]);
    // One byte over the limit is refused by the codec, and the handler never sees it.
    let over = ProgressRecord {
        token: 7,
        data: vec![0; MAX_PROGRESS_LEN + 32],
    };
    assert!(b.client.send_progress(a.id(), over).await.is_err());
    assert_eq!(a.handler.progress.lock().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_block_is_none_within_bounded_time() {
    let a = spawn_node(vec![], |_| {}).await;
    let b = spawn_node(vec![a.tcp_addr().await], |_| {}).await;
    let started = Instant::now();
    let got = b
        .client
        .fetch_block(a.id(), ask(Cid::of(b"nobody has this")))
        .await
        .unwrap();
    assert_eq!(got, None);
    // A provider's refusal is its own error, not an absence.
    let err = b
        .client
        .fetch_block(a.id(), ask(Cid::of(PRIVATE)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Denied { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let providers = b
        .client
        .find_providers(Cid::of(b"nobody has this"))
        .await
        .unwrap();
    assert!(providers.is_empty());
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_with_wrong_bytes_is_rejected() {
    let a = spawn_node(vec![], |_| {}).await;
    let b = spawn_node(vec![a.tcp_addr().await], |_| {}).await;
    let cid = Cid::of(b"the real bytes");
    a.handler
        .blocks
        .lock()
        .unwrap()
        .insert(cid, b"forged bytes".to_vec());
    let err = b.client.fetch_block(a.id(), ask(cid)).await.unwrap_err();
    assert!(matches!(err, Error::BlockMismatch { len: 12, .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_a_dead_address_is_a_clear_error_and_the_node_keeps_working() {
    let dead = DeadEnd::new().await;
    // A dead bootstrap peer: spawn succeeds, the node keeps running.
    let ghost = Keypair::generate_ed25519().public().to_peer_id();
    let a = spawn_node(vec![dead.addr.clone().with_p2p(ghost).unwrap()], |_| {}).await;
    let b = spawn_node(vec![], |_| {}).await;

    let err = within(PROMPT, "dial a dead end", a.client.dial(dead.addr.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Unreachable { addr, .. } if *addr == dead.addr),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&dead.addr.to_string()) && text.contains("unreachable"),
        "{text}"
    );

    // Still working: dial a live peer and talk to it.
    let peer = a.client.dial(b.tcp_addr().await).await.unwrap();
    assert_eq!(peer, b.id());
    assert_eq!(a.client.capacity(b.id()).await.unwrap(), CAPACITY);
    // Dialing a connected peer again answers at once.
    assert_eq!(a.client.dial(b.tcp_addr().await).await.unwrap(), b.id());
    // Our own address is refused.
    let own = a.tcp_addr().await;
    assert!(matches!(
        a.client.dial(own).await,
        Err(Error::DialSelf { .. })
    ));
    // An unknown peer id cannot be reached.
    let err = a.client.capacity(ghost).await.unwrap_err();
    assert!(matches!(err, Error::PeerUnreachable { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_transport_works() {
    let a = spawn_node(vec![], |_| {}).await;
    let b = spawn_node(vec![], |_| {}).await;
    let quic = b.addr("quic-v1").await;
    assert_eq!(a.client.dial(quic).await.unwrap(), b.id());
    assert_eq!(a.client.capacity(b.id()).await.unwrap(), CAPACITY);
}

/// Under the documented default of 32 task slots: a panicking handler fails only its own
/// task (answered Lost, on the stream the others share) and gives its slot back, 32 tasks run at once, the 33rd is answered Busy without
/// reaching the handler, and the 32 held tasks all complete once released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_peer_answers_busy_and_a_panicking_handler_drops_only_its_request() {
    // One requester fills the node here: give it the whole node as its share.
    let a = spawn_node(vec![], |c| {
        c.max_inbound_tasks_per_peer = DOCUMENTED_MAX_INBOUND_TASKS;
    })
    .await;
    let b = spawn_node(vec![a.tcp_addr().await], |_| {}).await;
    let hold = |n: usize| -> Vec<JoinHandle<Result<TaskOutcome, Error>>> {
        (0..n)
            .map(|_| {
                let client = b.client.clone();
                let peer = a.id();
                tokio::spawn(async move { client.submit_task(peer, spec("wait")).await })
            })
            .collect()
    };

    // Every slot but one is taken by a task waiting in the handler.
    let mut held = hold(DOCUMENTED_MAX_INBOUND_TASKS - 1);
    a.handler
        .until_entered(DOCUMENTED_MAX_INBOUND_TASKS - 1)
        .await;

    // A panicking handler fails its own task only: it is answered Lost...
    let lost = within(
        PROMPT,
        "panicking task",
        b.client.submit_task(a.id(), spec("panic")),
    )
    .await
    .unwrap();
    assert!(
        matches!(
            lost,
            TaskOutcome::Failed {
                kind: FailureKind::Lost,
                ..
            }
        ),
        "{lost:?}"
    );
    // ...and gives its slot back: the last slot can still be taken.
    held.extend(hold(1));
    a.handler.until_entered(1).await;

    // All 32 are taken: one more is Busy, at once.
    let extra = within(
        PROMPT,
        "task past the limit",
        b.client.submit_task(a.id(), spec("echo")),
    )
    .await
    .unwrap();
    assert!(
        matches!(
            extra,
            TaskOutcome::Failed {
                kind: FailureKind::Busy,
                ..
            }
        ),
        "{extra:?}"
    );

    // Released, every held task completes: the panic and the refusal cost them nothing.
    a.handler.gate.add_permits(DOCUMENTED_MAX_INBOUND_TASKS);
    for task in held {
        let outcome = within(SETTLE, "released task", task)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(outcome, TaskOutcome::Ok { .. }), "{outcome:?}");
    }
    let again = b.client.submit_task(a.id(), spec("echo")).await.unwrap();
    assert!(matches!(again, TaskOutcome::Ok { .. }), "{again:?}");
}

/// The outbound bound holds for each kind of work: block, capacity, provider and dial
/// requests share one bound, tasks to one peer have their own; a caller that gives up frees
/// its slot for the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_operations_share_one_bound_and_abandoned_calls_free_their_slot() {
    let a = spawn_node(vec![], |_| {}).await;
    let b = spawn_node(vec![a.tcp_addr().await], |c| c.max_pending_outbound = 2).await;
    let wait = || {
        let (client, peer) = (b.client.clone(), a.id());
        tokio::spawn(async move { client.submit_task(peer, spec("wait")).await })
    };

    // Two tasks fill their bound: a third is refused at once.
    let (kept, abandoned) = (wait(), wait());
    a.handler.until_entered(2).await;
    let third = within(
        PROMPT,
        "third task",
        b.client.submit_task(a.id(), spec("echo")),
    )
    .await;
    assert!(
        matches!(third, Err(Error::TooManyInFlight { limit: 2 })),
        "{third:?}"
    );
    // A caller that gives up frees its slot for the next task.
    abandoned.abort();
    assert!(abandoned.await.is_err());
    let next = wait();
    a.handler.until_entered(1).await;
    a.handler.gate.add_permits(3);
    for task in [kept, next] {
        let outcome = within(SETTLE, "held task", task).await.unwrap().unwrap();
        assert!(matches!(outcome, TaskOutcome::Ok { .. }), "{outcome:?}");
    }

    // Two block requests to a peer that never answers fill the other bound: every other
    // kind of operation is refused at once.
    let (silent, asked) = silent_server(BLOCK_PROTOCOL).await;
    let silent = b.client.dial(silent).await.unwrap();
    let fetch = || {
        let client = b.client.clone();
        tokio::spawn(async move { client.fetch_block(silent, ask(Cid::of(b"x"))).await })
    };
    let (_kept, abandoned) = (fetch(), fetch());
    within(PROMPT, "both asked", asked.acquire_many(2))
        .await
        .unwrap()
        .forget();
    let full = |r: Result<_, Error>| matches!(r, Err(Error::TooManyInFlight { limit: 2 }));
    assert!(full(b.client.capacity(a.id()).await.map(drop)));
    assert!(full(
        b.client
            .fetch_block(a.id(), ask(Cid::of(b"x")))
            .await
            .map(drop)
    ));
    assert!(full(b.client.find_providers(Cid::of(b"x")).await.map(drop)));
    assert!(full(b.client.dial(a.tcp_addr().await).await.map(drop)));

    abandoned.abort();
    assert!(abandoned.await.is_err());
    let capacity = within(SETTLE, "capacity", b.client.capacity(a.id())).await;
    assert_eq!(capacity.unwrap(), CAPACITY);
}

/// A raw peer that takes every request on `protocol` and never answers; the semaphore gains
/// a permit for each request taken.
async fn silent_server(protocol: StreamProtocol) -> (Multiaddr, Arc<Semaphore>) {
    let (mut raw, addr) = listening_raw_peer(protocol).await;
    let asked = Arc::new(Semaphore::new(0));
    let counted = Arc::clone(&asked);
    tokio::spawn(async move {
        // Held, never answered, until the test's runtime ends.
        let mut held = Vec::new();
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            }) = raw.select_next_some().await
            {
                held.push(channel);
                counted.add_permits(1);
            }
        }
    });
    (addr, asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_actor_and_later_calls_fail() {
    // TCP only: a redial of A's closed TCP port is refused at once, where one of its QUIC
    // port would wait out the handshake timeout (5 s).
    let a = spawn_node(vec![], |c| {
        c.listen
            .retain(|addr| addr.iter().any(|p| p.tag() == "tcp"));
    })
    .await;
    let b = spawn_node(vec![a.tcp_addr().await], |_| {}).await;
    assert_eq!(b.client.capacity(a.id()).await.unwrap(), CAPACITY);
    let a_id = a.id();
    a.client.shutdown().await;
    tokio::time::timeout(Duration::from_secs(10), a.handle)
        .await
        .expect("actor stops")
        .expect("actor did not panic");
    assert!(matches!(
        a.client.connected_peers().await,
        Err(Error::Shutdown)
    ));
    // The other side notices the peer is gone: the connection closes under the request, or
    // B sees it closed first and the redial fails.
    let err = within(PROMPT, "B notices", b.client.capacity(a_id))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ConnectionClosed { .. } | Error::PeerUnreachable { .. }
        ),
        "{err}"
    );
    b.client.shutdown().await;
    tokio::time::timeout(Duration::from_secs(10), b.handle)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn bootstrap_without_peer_id_is_rejected() {
    let dead = DeadEnd::new().await;
    let keypair = Keypair::generate_ed25519();
    let mut config = Config::new(keypair);
    config.mdns = false;
    config.bootstrap = vec![dead.addr.clone()];
    let err = Network::spawn(config, |_| Arc::new(TestHandler::default())).unwrap_err();
    assert!(matches!(err, Error::BootstrapWithoutPeerId { .. }), "{err}");
}

/// What a raw peer writes on one stream.
#[derive(Debug, Clone)]
struct RawFrame {
    bytes: Vec<u8>,
    /// Keep the stream open after `bytes` instead of closing it, so that the other side can
    /// refuse it only by looking at what arrived, not by reaching the end of the stream.
    hold: bool,
}

impl RawFrame {
    /// `bytes`, then the stream held open.
    fn held(bytes: Vec<u8>) -> Self {
        Self { bytes, hold: true }
    }

    /// Just a header declaring `len` payload bytes, none of which ever follow.
    fn header_only(len: usize) -> Self {
        Self::held(u32::try_from(len).unwrap().to_be_bytes().to_vec())
    }

    /// A frame with a truthful header around `payload`, then the stream held open.
    fn held_payload(payload: &[u8]) -> Self {
        let mut bytes = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
        bytes.extend_from_slice(payload);
        Self::held(bytes)
    }
}

/// More than any one response of any protocol, header included.
const RAW_READ_MAX: usize =
    FRAME_HEADER_BYTES + TASK_LIMITS.response + BLOCK_LIMITS.response + CAPACITY_LIMITS.response;
/// How often a held stream is probed for a reset.
const PROBE_EVERY: Duration = Duration::from_millis(10);
/// A raw peer's request and idle timeouts: long enough that none fires within a test.
const RAW_PATIENCE: Duration = Duration::from_secs(60);

/// A codec that writes whatever bytes it is given, to play a hostile peer.
#[derive(Clone, Default)]
struct RawCodec;

/// Writes `frame`; if it is held, probes the stream with empty writes until the other side
/// resets it. An empty write adds no byte, so the promised frame never completes; once the
/// reset arrives, yamux fails the write with `WriteZero`.
async fn write_raw<T>(io: &mut T, frame: RawFrame) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    io.write_all(&frame.bytes).await?;
    io.flush().await?;
    if frame.hold {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            assert_eq!(io.write(&[]).await?, 0);
        }
    }
    Ok(())
}

async fn read_raw<T>(io: &mut T) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    let mut buf = Vec::new();
    io.take(RAW_READ_MAX as u64).read_to_end(&mut buf).await?;
    Ok(buf)
}

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = RawFrame;
    type Response = RawFrame;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<RawFrame>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_raw(io).await?;
        Ok(RawFrame { bytes, hold: false })
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<RawFrame>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_raw(io).await?;
        if bytes.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(RawFrame { bytes, hold: false })
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: RawFrame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_raw(io, req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: RawFrame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_raw(io, res).await
    }
}

type RawPeer = Swarm<request_response::Behaviour<RawCodec>>;

/// A libp2p peer over TCP that speaks only `protocol`, with whatever bytes it is told to.
fn raw_peer(protocol: StreamProtocol, support: ProtocolSupport) -> RawPeer {
    tcp_swarm(request_response::Behaviour::with_codec(
        RawCodec,
        [(protocol, support)],
        request_response::Config::default().with_request_timeout(RAW_PATIENCE),
    ))
}

/// A swarm of `behaviour` alone over TCP + noise + yamux, patient with idle connections.
fn tcp_swarm<B: libp2p::swarm::NetworkBehaviour>(behaviour: B) -> Swarm<B> {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| behaviour)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(RAW_PATIENCE))
        .build()
}

/// Has a raw peer send each of `bad` to `victim` on `protocol` and checks that the victim
/// resets every one of those streams within [`PROMPT`], without an answer and without
/// closing the connection; then that `good`, sent on the same connection, is answered.
/// Returns the answer's bytes.
async fn refused_then_served(
    victim: &Node,
    protocol: StreamProtocol,
    bad: Vec<RawFrame>,
    good: Vec<u8>,
) -> Vec<u8> {
    let mut raw = raw_peer(protocol.clone(), ProtocolSupport::Outbound);
    raw.dial(victim.tcp_addr().await).unwrap();
    let connection = within(SETTLE, "raw peer connects", async {
        loop {
            match raw.select_next_some().await {
                SwarmEvent::ConnectionEstablished {
                    peer_id,
                    connection_id,
                    ..
                } => {
                    assert_eq!(peer_id, victim.id());
                    break connection_id;
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => panic!("{error}"),
                _ => {}
            }
        }
    })
    .await;

    let mut unrefused: HashSet<_> = bad
        .into_iter()
        .map(|frame| raw.behaviour_mut().send_request(&victim.id(), frame))
        .collect();
    let refusals = async {
        while !unrefused.is_empty() {
            match raw.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    request_id,
                    error,
                    ..
                }) => {
                    assert!(unrefused.remove(&request_id), "{request_id} failed twice");
                    assert!(
                        matches!(&error, OutboundFailure::Io(e) if e.kind() == io::ErrorKind::WriteZero),
                        "{protocol}: expected the stream to be reset, got {error:?}"
                    );
                }
                SwarmEvent::Behaviour(request_response::Event::Message { message, .. }) => {
                    panic!("{protocol}: a bad frame got an answer: {message:?}");
                }
                SwarmEvent::ConnectionClosed { cause, .. } => {
                    panic!("{protocol}: the victim closed the connection: {cause:?}");
                }
                _ => {}
            }
        }
    };
    within(PROMPT, &format!("{protocol}: bad frames refused"), refusals).await;

    let good = RawFrame {
        bytes: good,
        hold: false,
    };
    let id = raw.behaviour_mut().send_request(&victim.id(), good);
    answer(
        &mut raw,
        id,
        connection,
        &format!("{protocol}: good request"),
    )
    .await
}

/// The bytes of the response to request `id`, which must come on `connection`; a failed
/// request or a closed connection fails the test, naming `what`.
async fn answer(
    raw: &mut RawPeer,
    id: request_response::OutboundRequestId,
    connection: libp2p::swarm::ConnectionId,
    what: &str,
) -> Vec<u8> {
    within(SETTLE, &format!("{what} answered"), async {
        loop {
            match raw.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    connection_id,
                    message:
                        request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                }) if request_id == id => {
                    assert_eq!(connection_id, connection, "answered on another connection");
                    break response.bytes;
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    error, ..
                }) => panic!("{what} failed: {error}"),
                SwarmEvent::ConnectionClosed { cause, .. } => {
                    panic!("{what}: the connection closed: {cause:?}");
                }
                _ => {}
            }
        }
    })
    .await
}

/// Decodes a frame the way the victim's codec would have sent it.
async fn decode<M: serde::de::DeserializeOwned>(bytes: Vec<u8>, max: usize) -> M {
    read_frame(&mut futures::io::Cursor::new(bytes), max)
        .await
        .unwrap()
}

/// A real libp2p peer sends oversized and malformed frames on `/shoal/block/2`: each stream is
/// reset promptly, without an answer and without waiting for bytes that were promised but
/// never sent; the connection stays up and the node keeps serving on it and to others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peer_frames_are_dropped_without_a_panic() {
    let a = spawn_node(vec![], |_| {}).await;
    let data = b"served to honest peers";
    let cid = a.handler.put(data);

    let mut trailing = postcard::to_allocvec(&ask(cid)).unwrap();
    trailing.extend_from_slice(&[0; 8]);
    let bad = vec![
        // 4 GiB declared: refused on the header alone.
        RawFrame::header_only(u32::MAX as usize),
        RawFrame::header_only(BLOCK_LIMITS.request + 1),
        // Within the limit, but a block id cut short.
        RawFrame::held_payload(&[0xff; 3]),
        // A valid request with bytes left over.
        RawFrame::held_payload(&trailing),
    ];
    let good = encode_frame(BLOCK_LIMITS.request, &ask(cid)).unwrap();
    let answer = refused_then_served(&a, BLOCK_PROTOCOL, bad, good).await;
    let answer: BlockResponse = decode(answer, BLOCK_LIMITS.response).await;
    assert_eq!(answer, BlockResponse::Found(data.to_vec()));

    let b = spawn_node(vec![a.tcp_addr().await], |_| {}).await;
    let got = b.client.fetch_block(a.id(), ask(cid)).await.unwrap();
    assert_eq!(got.as_ref().map(Verified::bytes), Some(&data[..]));
    assert!(!a.handle.is_finished());
}

/// A spec whose payload is exactly `TASK_LIMITS.request` bytes.
fn largest_spec() -> TaskSpec {
    let size = |s: &TaskSpec| postcard::experimental::serialized_size(s).unwrap();
    let mut spec = spec("");
    // The entry's length varint grows from 1 byte to 3 as it fills the frame.
    let fill = TASK_LIMITS.request - size(&spec) - 2;
    spec.entry = "e".repeat(fill);
    assert_eq!(size(&spec), TASK_LIMITS.request);
    spec
}

/// The request limits of `/shoal/task/6` and `/shoal/capacity/1` hold over libp2p: one byte
/// over the limit is refused on the header, promptly (the task stream is closed, the
/// capacity request's stream reset), while a request of exactly the limit is still served,
/// on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_and_capacity_request_limits_hold_over_libp2p() {
    let a = spawn_node(vec![], |_| {}).await;
    let raw = RawStreams::start(None).await;
    raw.connect(&a).await;

    for over in [TASK_FRAME + 1, u32::MAX as usize] {
        let mut stream = raw.open(a.id(), TASK_PROTOCOL).await;
        stream
            .write_all(&u32::try_from(over).unwrap().to_be_bytes())
            .await
            .unwrap();
        stream.flush().await.unwrap();
        let mut rest = Vec::new();
        let read = within(
            PROMPT,
            "an oversized task refused",
            stream.read_to_end(&mut rest),
        );
        // Closed or reset: either way, no answer.
        assert!(read.await.map_or(true, |n| n == 0), "answered: {rest:?}");
    }

    // The largest spec, with the largest id: exactly the limit, and served.
    let largest = largest_spec();
    let mut stream = raw.open(a.id(), TASK_PROTOCOL).await;
    let frame = encode_frame(TASK_FRAME, &(u64::MAX, &largest)).unwrap();
    assert_eq!(frame.len(), FRAME_HEADER_BYTES + TASK_FRAME);
    stream.write_all(&frame).await.unwrap();
    stream.flush().await.unwrap();
    let (id, outcome) = read_answer(&mut stream, "the largest task answered").await;
    assert_eq!(id, u64::MAX);
    match outcome {
        TaskOutcome::Ok { outputs, logs, .. } => {
            assert_eq!(outputs, largest.inputs);
            assert!(logs.starts_with(&largest.entry), "the whole spec arrived");
        }
        other => panic!("{other:?}"),
    }

    let bad = vec![RawFrame::header_only(CAPACITY_LIMITS.request + 1)];
    let good = encode_frame(CAPACITY_LIMITS.request, &CapacityRequest).unwrap();
    let answer = refused_then_served(&a, CAPACITY_PROTOCOL, bad, good).await;
    assert_eq!(
        decode::<Capacity>(answer, CAPACITY_LIMITS.response).await,
        CAPACITY
    );
    assert!(!a.handle.is_finished());
}

/// The next answer on a raw task stream, within [`SETTLE`].
async fn read_answer(stream: &mut Stream, what: &str) -> (u64, TaskOutcome) {
    within(SETTLE, what, read_frame(stream, ANSWER_FRAME))
        .await
        .unwrap()
}

/// How a [`RawStreams`] peer answers each stream of the protocol it serves.
type RawAnswer = fn(Stream) -> BoxFuture<'static, ()>;

/// A bare libp2p peer over TCP that speaks raw streams only, its swarm driven by a task of
/// its own: to play a hostile submitter or executor of `/shoal/task/6`, or a hostile bulk
/// provider.
struct RawStreams {
    control: libp2p_stream::Control,
    id: PeerId,
    addr: Multiaddr,
    dial: tokio::sync::mpsc::Sender<Multiaddr>,
    connected: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<PeerId>>,
    _swarm: AbortOnDrop,
}

impl RawStreams {
    /// Starts one; with `answer`, it serves that protocol's streams with it.
    async fn start(answer: Option<(StreamProtocol, RawAnswer)>) -> Self {
        let mut swarm = tcp_swarm(libp2p_stream::Behaviour::new());
        let mut control = swarm.behaviour().new_control();
        if let Some((protocol, answer)) = answer {
            let mut incoming = control.accept(protocol).unwrap();
            tokio::spawn(async move {
                while let Some((_, stream)) = incoming.next().await {
                    tokio::spawn(answer(stream));
                }
            });
        }
        let addr = listen_on_loopback(&mut swarm).await;
        let id = *swarm.local_peer_id();
        let (dial, mut dials) = tokio::sync::mpsc::channel(1);
        let (connected_tx, connected) = tokio::sync::mpsc::channel(1);
        let driver = tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(addr) = dials.recv() => swarm.dial(addr).unwrap(),
                    event = swarm.select_next_some() => {
                        if let SwarmEvent::ConnectionEstablished { peer_id, .. } = event {
                            let _ = connected_tx.try_send(peer_id);
                        }
                    }
                }
            }
        });
        Self {
            control,
            id,
            addr,
            dial,
            connected: tokio::sync::Mutex::new(connected),
            _swarm: AbortOnDrop(driver),
        }
    }

    /// Connects to `node`, and waits until the connection is up (`libp2p-stream`
    /// 0.5.0-alpha loses a stream asked for while the connection is being set up).
    async fn connect(&self, node: &Node) {
        self.dial.send(node.tcp_addr().await).await.unwrap();
        let peer = within(SETTLE, "raw peer connects", async {
            self.connected.lock().await.recv().await.unwrap()
        })
        .await;
        assert_eq!(peer, node.id());
    }

    async fn open(&self, peer: PeerId, protocol: StreamProtocol) -> Stream {
        let mut control = self.control.clone();
        within(
            SETTLE,
            "raw stream opens",
            control.open_stream(peer, protocol),
        )
        .await
        .unwrap()
    }
}

/// A raw peer that answers requests on `protocol`, listening on loopback TCP, and its address
/// (ending in `/p2p/<id>`).
async fn listening_raw_peer(protocol: StreamProtocol) -> (RawPeer, Multiaddr) {
    let mut raw = raw_peer(protocol, ProtocolSupport::Inbound);
    let addr = listen_on_loopback(&mut raw).await;
    (raw, addr)
}

/// Has `swarm` listen on loopback TCP; its address, ending in `/p2p/<id>`.
async fn listen_on_loopback<B: libp2p::swarm::NetworkBehaviour>(swarm: &mut Swarm<B>) -> Multiaddr {
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr = within(SETTLE, "raw peer listens", async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        }
    })
    .await;
    addr.with_p2p(*swarm.local_peer_id()).unwrap()
}

/// A raw peer that answers every request on `protocol` with `answer`. Returns its address,
/// ending in `/p2p/<id>`, and the task that runs it.
async fn raw_server(protocol: StreamProtocol, answer: RawFrame) -> (Multiaddr, AbortOnDrop) {
    let (mut raw, addr) = listening_raw_peer(protocol).await;
    let server = tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            }) = raw.select_next_some().await
            {
                let _ = raw.behaviour_mut().send_response(channel, answer.clone());
            }
        }
    });
    (addr, AbortOnDrop(server))
}

/// Whether `err` is the requester's frame-limit check refusing a response.
fn is_over_limit(err: &Error) -> bool {
    matches!(err, Error::Stream { source, .. }
        if source.kind() == io::ErrorKind::InvalidData
            && source.to_string().contains("exceeds the limit"))
}

/// The response limits hold over libp2p too: a peer answering with a header one byte over a
/// protocol's response limit fails the request (for a task: every task on its stream) at once, instead of leaving the requester
/// waiting for a body that never comes; the requester keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_responses_fail_the_request_promptly() {
    let a = spawn_node(vec![], |_| {}).await;

    // An executor that answers a task with a header one byte over the answer limit, then
    // holds the stream open.
    let executor = RawStreams::start(Some((TASK_PROTOCOL, |mut stream| {
        Box::pin(async move {
            let _ = read_frame::<_, (u64, TaskSpec)>(&mut stream, TASK_FRAME).await;
            let over = u32::try_from(ANSWER_FRAME + 1).unwrap().to_be_bytes();
            let _ = stream.write_all(&over).await;
            let _ = stream.flush().await;
            tokio::time::sleep(RAW_PATIENCE).await;
        })
    })))
    .await;
    let peer = a.client.dial(executor.addr.clone()).await.unwrap();
    assert_eq!(peer, executor.id);
    let err = within(PROMPT, "task", a.client.submit_task(peer, spec("echo")))
        .await
        .unwrap_err();
    assert!(is_over_limit(&err), "{err}");

    let over = |limit: usize| RawFrame::header_only(limit + 1);

    let (addr, _capacity) = raw_server(CAPACITY_PROTOCOL, over(CAPACITY_LIMITS.response)).await;
    let peer = a.client.dial(addr).await.unwrap();
    let err = within(PROMPT, "capacity", a.client.capacity(peer))
        .await
        .unwrap_err();
    assert!(is_over_limit(&err), "{err}");

    let (addr, _block) = raw_server(BLOCK_PROTOCOL, over(BLOCK_LIMITS.response)).await;
    let peer = a.client.dial(addr).await.unwrap();
    let err = within(
        PROMPT,
        "block",
        a.client.fetch_block(peer, ask(Cid::of(b"x"))),
    )
    .await
    .unwrap_err();
    assert!(is_over_limit(&err), "{err}");

    let b = spawn_node(vec![a.tcp_addr().await], |_| {}).await;
    // B knows A's address; A answers B, then asks B back over that connection.
    assert_eq!(b.client.capacity(a.id()).await.unwrap(), CAPACITY);
    assert_eq!(a.client.capacity(b.id()).await.unwrap(), CAPACITY);
}

/// Submits `n` `"wait"` tasks from `from` to `to`, each on its own task.
fn hold_tasks(from: &Node, to: PeerId, n: usize) -> Vec<JoinHandle<Result<TaskOutcome, Error>>> {
    (0..n)
        .map(|_| {
            let client = from.client.clone();
            tokio::spawn(async move { client.submit_task(to, spec("wait")).await })
        })
        .collect()
}

fn is_busy(outcome: &TaskOutcome) -> bool {
    matches!(
        outcome,
        TaskOutcome::Failed {
            kind: FailureKind::Busy,
            ..
        }
    )
}

/// A node with 3 task slots, 2 per requester: B fills its share and is refused a third,
/// yet C still gets the slot that B could otherwise have taken; then the node-wide cap holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_filling_its_share_leaves_task_slots_for_others() {
    let a = spawn_node(vec![], |c| {
        c.max_inbound_tasks = 3;
        c.max_inbound_tasks_per_peer = 2;
    })
    .await;
    let b = spawn_node(vec![a.tcp_addr().await], |_| {}).await;
    let c = spawn_node(vec![a.tcp_addr().await], |_| {}).await;

    let mut held = hold_tasks(&b, a.id(), 2);
    a.handler.until_entered(2).await;
    let over = within(
        PROMPT,
        "B over its share",
        b.client.submit_task(a.id(), spec("echo")),
    )
    .await
    .unwrap();
    assert!(is_busy(&over), "{over:?}");

    // Without shares, B's third task would have taken this slot and C would be Busy.
    held.extend(hold_tasks(&c, a.id(), 1));
    a.handler.until_entered(1).await;
    // The node is full now: C, well within its share, is refused by the node-wide cap.
    let full = within(
        PROMPT,
        "C past the node cap",
        c.client.submit_task(a.id(), spec("echo")),
    )
    .await
    .unwrap();
    assert!(is_busy(&full), "{full:?}");

    a.handler.gate.add_permits(3);
    for task in held {
        let outcome = within(SETTLE, "released task", task)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(outcome, TaskOutcome::Ok { .. }), "{outcome:?}");
    }
}

/// B fills every task slot of A with waiting tasks, then shuts down: A drops B's handlers as
/// soon as B's connection closes, and C can use the full share at once, without any of B's
/// tasks being let through the gate.
/// A task stream with nothing in flight closes after `task_idle_timeout`, and takes its
/// otherwise idle connection with it; the next task opens a fresh stream (and connection).
/// Tasks sent just before, at and after the moment a stream closes are all answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_task_stream_closes_and_the_next_task_opens_another() {
    let idle = Duration::from_millis(200);
    let a = spawn_node(vec![], |_| {}).await;
    let b = spawn_node(vec![a.tcp_addr().await], |c| {
        c.task_idle_timeout = idle;
        c.idle_connection_timeout = Duration::from_millis(300);
    })
    .await;
    let echo = || async {
        let outcome = within(SETTLE, "echo", b.client.submit_task(a.id(), spec("echo"))).await;
        assert!(matches!(outcome, Ok(TaskOutcome::Ok { .. })), "{outcome:?}");
    };
    echo().await;
    // Only the stream kept the connection up.
    eventually(SETTLE, "the idle connection closes", || async {
        let peers = b.client.connected_peers().await.unwrap();
        (!peers.contains(&a.id())).then_some(())
    })
    .await;
    echo().await;
    // A stream closes between one and two idle times after its last task: pauses across
    // that range land tasks on a stream as it closes.
    for step in 0..12u32 {
        tokio::time::sleep(idle + idle * step / 6).await;
        echo().await;
    }
}

/// A submitter that sends many tasks and never reads their outcomes gets no more of them run
/// than its share of slots and the few answers in transit: the executor does not run its
/// tasks into memory it cannot send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitter_that_does_not_read_gets_no_more_than_its_share_run() {
    let a = spawn_node(vec![], |c| c.max_inbound_tasks_per_peer = 2).await;
    let raw = RawStreams::start(None).await;
    raw.connect(&a).await;
    let mut stream = raw.open(a.id(), TASK_PROTOCOL).await;
    let sent = 200;
    for id in 0..sent {
        let frame = encode_frame(TASK_FRAME, &(id, spec("big"))).unwrap();
        stream.write_all(&frame).await.unwrap();
        stream.flush().await.unwrap();
        // Slow enough that each task finds its share's slots free again, unless the answers
        // nobody reads hold them.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Each answer is 1 MiB: one fills the stream's window, 16 fill the executor's queue,
    // one is being written, and the share holds 2 more, waiting to queue theirs.
    let bound = 1 + 16 + 1 + 2;
    let calls = || a.handler.calls.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(calls() <= bound + 2, "{} of {sent} tasks ran", calls());
    // Every task is answered once they are read.
    let mut answered = 0;
    while answered < sent {
        let (_, outcome) = read_answer(&mut stream, "every answer, once read").await;
        // Past its share, a task is answered Busy at once.
        assert!(
            matches!(outcome, TaskOutcome::Ok { .. }) || is_busy(&outcome),
            "{outcome:?}"
        );
        answered += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_requester_releases_its_permits() {
    let a = spawn_node(vec![], |c| {
        c.max_inbound_tasks = 2;
        c.max_inbound_tasks_per_peer = 2;
    })
    .await;
    let b = spawn_node(vec![a.tcp_addr().await], |_| {}).await;
    let c = spawn_node(vec![a.tcp_addr().await], |_| {}).await;

    let b_tasks = hold_tasks(&b, a.id(), 2);
    a.handler.until_entered(2).await;
    let busy = c.client.submit_task(a.id(), spec("echo")).await.unwrap();
    assert!(is_busy(&busy), "{busy:?}");

    b.client.shutdown().await;
    within(SETTLE, "B stops", b.handle).await.unwrap();
    for task in b_tasks {
        assert!(
            within(SETTLE, "B's task ends", task)
                .await
                .unwrap()
                .is_err()
        );
    }

    // No event tells C when A has noticed; the gate stays shut all along.
    eventually(SETTLE, "A frees B's slots", || async {
        let outcome = c.client.submit_task(a.id(), spec("echo")).await.unwrap();
        (!is_busy(&outcome)).then_some(())
    })
    .await;
    let held = hold_tasks(&c, a.id(), 2);
    a.handler.until_entered(2).await;
    a.handler.gate.add_permits(2);
    for task in held {
        let outcome = within(SETTLE, "C's task", task).await.unwrap().unwrap();
        assert!(matches!(outcome, TaskOutcome::Ok { .. }), "{outcome:?}");
    }
}

/// With one connection allowed per peer, a raw peer's second connection to A is closed or
/// refused promptly, while its first stays up and keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_from_one_peer_is_refused() {
    let a = spawn_node(vec![], |c| c.max_established_per_peer = 1).await;
    let addr = a.tcp_addr().await;
    let mut raw = raw_peer(CAPACITY_PROTOCOL, ProtocolSupport::Outbound);

    let connect = |raw: &mut RawPeer| {
        let opts = libp2p::swarm::dial_opts::DialOpts::unknown_peer_id()
            .address(addr.clone())
            .build();
        let id = opts.connection_id();
        raw.dial(opts).unwrap();
        id
    };
    let first = connect(&mut raw);
    within(SETTLE, "first connection", async {
        loop {
            match raw.select_next_some().await {
                SwarmEvent::ConnectionEstablished { connection_id, .. }
                    if connection_id == first =>
                {
                    break;
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => panic!("{error}"),
                _ => {}
            }
        }
    })
    .await;
    // The dialer finishes the handshake before the listener does, so only an answer shows
    // that A holds the first connection; without it, A could see the second one first and
    // refuse the first instead.
    let ask_capacity = async |raw: &mut RawPeer, what: &str| {
        let good = RawFrame {
            bytes: encode_frame(CAPACITY_LIMITS.request, &CapacityRequest).unwrap(),
            hold: false,
        };
        let id = raw.behaviour_mut().send_request(&a.id(), good);
        let answer = answer(raw, id, first, what).await;
        assert_eq!(
            decode::<Capacity>(answer, CAPACITY_LIMITS.response).await,
            CAPACITY
        );
    };
    ask_capacity(&mut raw, "capacity over the first connection").await;

    let second = connect(&mut raw);
    within(PROMPT, "second connection refused", async {
        loop {
            match raw.select_next_some().await {
                SwarmEvent::ConnectionClosed { connection_id, .. } => {
                    assert_eq!(connection_id, second, "the first connection closed");
                    break;
                }
                SwarmEvent::OutgoingConnectionError { connection_id, .. } => {
                    assert_eq!(connection_id, second);
                    break;
                }
                _ => {}
            }
        }
    })
    .await;

    ask_capacity(
        &mut raw,
        "capacity over the first connection, after the second",
    )
    .await;
}

fn bulk_ask(file: &[u8], chunks: Vec<Cid>) -> BulkRequest {
    BulkRequest {
        file: Cid::of(file),
        chunks,
        credential: Default::default(),
    }
}

/// One stream carries pipelined requests; chunks come back in order, verified, with
/// `NotFound` in place; a refusal ends the session as `Denied`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_streams_chunks_in_order_and_refuses_as_a_whole() {
    let a = spawn_node(vec![], |_| {}).await;
    let b = spawn_node(vec![a.tcp_addr().await], |_| {}).await;
    let blocks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 300 << 10]).collect();
    let cids: Vec<Cid> = blocks.iter().map(|b| a.handler.put(b)).collect();
    let missing = Cid::of(b"nobody has this");

    let mut session = within(SETTLE, "open", b.client.open_bulk(a.id(), 0))
        .await
        .unwrap();
    session
        .request(bulk_ask(b"file", vec![cids[0], missing, cids[1]]))
        .await
        .unwrap();
    session
        .request(bulk_ask(b"file", cids[2..].to_vec()))
        .await
        .unwrap();
    session.finish();
    let mut got = Vec::new();
    while let Some(item) = within(PROMPT, "chunk", session.next()).await {
        got.push(item.unwrap());
    }
    let expect = |i: usize| BulkItem::Chunk(Verified::check(cids[i], blocks[i].clone()).unwrap());
    assert_eq!(
        got,
        vec![
            expect(0),
            BulkItem::NotFound(missing),
            expect(1),
            expect(2),
            expect(3),
            expect(4)
        ]
    );

    let mut denied = b.client.open_bulk(a.id(), 0).await.unwrap();
    denied
        .request(bulk_ask(PRIVATE, cids.clone()))
        .await
        .unwrap();
    let err = within(PROMPT, "denied", denied.next())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, Error::Denied { peer, .. } if peer == a.id()),
        "{err}"
    );
    assert!(denied.next().await.is_none());

    let too_many = bulk_ask(b"file", vec![missing; MAX_BULK_CHUNKS + 1]);
    assert!(
        b.client
            .open_bulk(a.id(), 0)
            .await
            .unwrap()
            .request(too_many)
            .await
            .is_err()
    );
}

/// A chunk that does not hash to its id ends the session with `BlockMismatch`, after the
/// good chunks before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_corrupt_chunk_ends_the_session() {
    let a = spawn_node(vec![], |_| {}).await;
    let b = spawn_node(vec![a.tcp_addr().await], |_| {}).await;
    let cids: Vec<Cid> = (0..3u8).map(|i| a.handler.put(&[i; 1000])).collect();
    let mut session = b.client.open_bulk(a.id(), 0).await.unwrap();
    session.request(bulk_ask(LIAR, cids.clone())).await.unwrap();
    assert!(matches!(
        within(PROMPT, "first", session.next()).await,
        Some(Ok(BulkItem::Chunk(chunk))) if chunk.cid() == cids[0]
    ));
    let err = within(PROMPT, "second", session.next())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, Error::BlockMismatch { cid, len: 999, .. } if cid == cids[1]),
        "{err}"
    );
    assert!(session.next().await.is_none());
}

/// A task stream that carries nothing, with no task running, is closed by the executor after
/// two to three times the submitter's idle time: idle streams cannot hold its task-stream
/// places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_task_stream_is_closed_by_the_executor() {
    let idle = Duration::from_millis(200);
    let a = spawn_node(vec![], |c| c.task_idle_timeout = idle).await;
    let raw = RawStreams::start(None).await;
    raw.connect(&a).await;
    let mut stream = raw.open(a.id(), TASK_PROTOCOL).await;
    let started = tokio::time::Instant::now();
    let mut rest = Vec::new();
    let read = within(
        PROMPT,
        "the idle stream closed",
        stream.read_to_end(&mut rest),
    );
    assert!(read.await.map_or(true, |n| n == 0), "answered: {rest:?}");
    assert!(started.elapsed() >= idle * 3, "{:?}", started.elapsed());
}

/// A provider that sends a byte now and then, each within the stall timeout, is given up
/// like one that stalls: a chunk must arrive whole within four stall timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_a_trickling_provider_is_stalled_within_its_chunk_deadline() {
    let stall = Duration::from_millis(200);
    let a = spawn_node(vec![], |c| c.bulk_stall_timeout = stall).await;
    let trickler = RawStreams::start(Some((crate::BULK_PROTOCOL, |mut stream| {
        Box::pin(async move {
            // Status ok, then a 1 MiB chunk's header, then a byte every 100 ms.
            let _ = stream.write_all(&[0, 0, 0, 16, 0, 0]).await;
            loop {
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                if stream.write_all(&[7]).await.is_err() {
                    return;
                }
            }
        })
    })))
    .await;
    let peer = a.client.dial(trickler.addr.clone()).await.unwrap();
    let mut session = a.client.open_bulk(peer, 0).await.unwrap();
    session
        .request(bulk_ask(b"file", vec![Cid::of(b"chunk")]))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = within(PROMPT, "the chunk", session.next())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Stalled { .. }), "{err}");
    let took = started.elapsed();
    assert!(
        took >= stall * 3 && took < stall * 4 + PROMPT / 6,
        "gave up after {took:?}"
    );
}

/// A peer without `/shoal/bulk/1` is `Unsupported`, promptly: the requester falls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_to_a_peer_without_the_protocol_is_unsupported() {
    let a = spawn_node(vec![], |_| {}).await;
    let (addr, _raw) = raw_server(BLOCK_PROTOCOL, RawFrame::held(vec![0])).await;
    let peer = a.client.dial(addr).await.unwrap();
    let err = within(PROMPT, "open", a.client.open_bulk(peer, 0))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
}

/// Bulk streams on different lanes ride connections of their own, up to what the provider
/// allows; past that, a lane folds onto the connections there are, without dialing again
/// and again. Every stream, folded or not, is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_lanes_ride_connections_of_their_own_up_to_the_providers_limit() {
    let a = spawn_node(vec![], |c| c.max_established_per_peer = 2).await;
    let cid = a.handler.put(&[7; 1000]);
    let behaviour = crate::streams::Behaviour::new();
    let control = behaviour.control();
    let mut swarm = tcp_swarm(behaviour);
    swarm.dial(a.tcp_addr().await).unwrap();
    // Connections opened in all, and open now.
    let counts = Arc::new(Mutex::new((0usize, 0usize)));
    let counting = Arc::clone(&counts);
    let _driver = AbortOnDrop(tokio::spawn(async move {
        loop {
            let event = swarm.select_next_some().await;
            let mut counts = counting.lock().unwrap();
            match event {
                SwarmEvent::ConnectionEstablished { .. } => *counts = (counts.0 + 1, counts.1 + 1),
                SwarmEvent::ConnectionClosed { .. } => counts.1 -= 1,
                _ => {}
            }
        }
    }));
    let reach = |want: (usize, usize), what: &'static str| {
        let counts = Arc::clone(&counts);
        eventually(PROMPT, what, move || {
            let now = *counts.lock().unwrap();
            std::future::ready((now == want).then_some(()))
        })
    };
    reach((1, 1), "first connection").await;

    let mut sessions = Vec::new();
    // Four: a provider serves at most four bulk streams to one peer by default.
    for (i, lane) in [0, 1, 2, 3].into_iter().enumerate() {
        let stream = within(
            SETTLE,
            "stream opens",
            crate::network::open_stream(&control, a.id(), BULK_PROTOCOL_NAME, lane, SETTLE),
        )
        .await
        .unwrap_or_else(|e| panic!("lane {lane}: {e}"));
        sessions.push(BulkSession::start(a.id(), stream, SETTLE));
        match i {
            0 => assert_eq!(
                *counts.lock().unwrap(),
                (1, 1),
                "lane 0 is the first connection"
            ),
            1 => reach((2, 2), "lane 1 on a connection of its own").await,
            _ => {}
        }
    }
    // The provider refused a third connection from one peer; then the lanes folded.
    tokio::time::sleep(POLL_EVERY * 4).await;
    assert_eq!(*counts.lock().unwrap(), (3, 2));
    for (i, session) in sessions.iter_mut().enumerate() {
        session.request(bulk_ask(b"file", vec![cid])).await.unwrap();
        let item = within(PROMPT, "chunk", session.next()).await;
        assert!(
            matches!(&item, Some(Ok(BulkItem::Chunk(chunk))) if chunk.cid() == cid),
            "stream {i}: {item:?}"
        );
    }
}
