//! Multi-node tests: in-process peers on 127.0.0.1, mDNS off, explicit bootstrap.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt, StreamExt};
use libp2p::{
    StreamProtocol, SwarmBuilder, noise,
    request_response::{self, ProtocolSupport},
    swarm::SwarmEvent,
    tcp, yamux,
};
use tokio::{sync::Notify, task::JoinHandle};

use crate::{
    BLOCK_PROTOCOL, BlockId, BoxFuture, Capacity, Config, Error, FailureKind, InboundHandler,
    Keypair, Multiaddr, Network, NetworkClient, PeerId, TaskLimits, TaskOutcome, TaskSpec,
    TaskStats,
};

/// A peer that serves blocks from a map, echoes tasks and reports a fixed capacity.
#[derive(Default)]
struct TestHandler {
    blocks: Mutex<HashMap<BlockId, Vec<u8>>>,
    /// Tasks with entry `"wait"` block until this is notified.
    gate: Notify,
    me: Mutex<Option<PeerId>>,
}

const CAPACITY: Capacity = Capacity {
    free_slots: 3,
    total_slots: 4,
    has_gpu: false,
    queue_len: 1,
};

impl TestHandler {
    fn put(&self, bytes: &[u8]) -> BlockId {
        let cid = BlockId::of(bytes);
        self.blocks.lock().unwrap().insert(cid, bytes.to_vec());
        cid
    }
}

impl InboundHandler for TestHandler {
    fn block(&self, _from: PeerId, cid: BlockId) -> BoxFuture<'_, Option<Vec<u8>>> {
        let found = self.blocks.lock().unwrap().get(&cid).cloned();
        async move { found }.boxed()
    }

    fn task(&self, from: PeerId, spec: TaskSpec) -> BoxFuture<'_, TaskOutcome> {
        async move {
            if spec.entry == "wait" {
                self.gate.notified().await;
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
                logs: format!("{} for {from}", spec.entry),
                stats: TaskStats {
                    wall_ms: 1,
                    peak_memory_bytes: 64 << 10,
                    backend: "cpu".into(),
                    executed_by: me,
                },
            }
        }
        .boxed()
    }

    fn capacity(&self) -> BoxFuture<'_, Capacity> {
        async { CAPACITY }.boxed()
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
    let mut config = Config::new(keypair, handler.clone());
    config.listen = vec![
        "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
    ];
    config.bootstrap = bootstrap;
    config.mdns = false;
    config.query_timeout = Duration::from_secs(5);
    tune(&mut config);
    let (client, handle) = Network::spawn(config).unwrap();
    Node {
        client,
        handle,
        handler,
    }
}

fn spec(entry: &str) -> TaskSpec {
    TaskSpec {
        module: BlockId::of(b"module"),
        entry: entry.into(),
        inputs: vec![("x".into(), BlockId::of(b"x"))],
        args: vec![("k".into(), "v".into())],
        limits: TaskLimits {
            memory_bytes: 1 << 20,
            timeout_ms: 1000,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_addrs_are_real_and_dialable() {
    let a = spawn_node(vec![], |_| {}).await;
    let addrs = a.client.listen_addrs().await.unwrap();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    for addr in &addrs {
        let s = addr.to_string();
        assert!(s.ends_with(&format!("/p2p/{}", a.id())), "{s}");
        assert!(
            !s.contains("/tcp/0/") && !s.contains("/udp/0/"),
            "port 0 left in {s}"
        );
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

    let deadline = Instant::now() + Duration::from_secs(20);
    let providers = loop {
        let found = c.client.find_providers(cid).await.unwrap();
        if found.contains(&b.id()) || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(providers.contains(&b.id()), "providers: {providers:?}");
    assert!(!providers.contains(&c.id()));

    // C has never been given B's address: the swarm gets it from Kademlia.
    let fetched = c.client.fetch_block(b.id(), cid).await.unwrap();
    assert_eq!(fetched.as_deref(), Some(&data[..]));
    // A does not hold it.
    assert_eq!(c.client.fetch_block(a.id(), cid).await.unwrap(), None);

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
async fn unknown_block_is_none_within_bounded_time() {
    let a = spawn_node(vec![], |_| {}).await;
    let b = spawn_node(vec![a.tcp_addr().await], |_| {}).await;
    let started = Instant::now();
    let got = b
        .client
        .fetch_block(a.id(), BlockId::of(b"nobody has this"))
        .await
        .unwrap();
    assert_eq!(got, None);
    assert!(started.elapsed() < Duration::from_secs(5));
    let providers = b
        .client
        .find_providers(BlockId::of(b"nobody has this"))
        .await
        .unwrap();
    assert!(providers.is_empty());
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_with_wrong_bytes_is_rejected() {
    let a = spawn_node(vec![], |_| {}).await;
    let b = spawn_node(vec![a.tcp_addr().await], |_| {}).await;
    let cid = BlockId::of(b"the real bytes");
    a.handler
        .blocks
        .lock()
        .unwrap()
        .insert(cid, b"forged bytes".to_vec());
    let err = b.client.fetch_block(a.id(), cid).await.unwrap_err();
    assert!(matches!(err, Error::BlockMismatch { len: 12, .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_a_dead_address_is_a_clear_error_and_the_node_keeps_working() {
    // A dead bootstrap peer: spawn succeeds, the node keeps running.
    let ghost = Keypair::generate_ed25519().public().to_peer_id();
    let dead: Multiaddr = format!("/ip4/127.0.0.1/tcp/1/p2p/{ghost}").parse().unwrap();
    let a = spawn_node(vec![dead], |_| {}).await;
    let b = spawn_node(vec![], |_| {}).await;

    let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
    let err = a.client.dial(addr.clone()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Unreachable { addr: a, .. } if *a == addr),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("/ip4/127.0.0.1/tcp/1") && text.contains("unreachable"),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_peer_answers_busy_and_a_panicking_handler_drops_only_its_request() {
    let a = spawn_node(vec![], |c| c.max_inbound_tasks = 1).await;
    let b = spawn_node(vec![a.tcp_addr().await], |_| {}).await;

    let first = {
        let client = b.client.clone();
        let peer = a.id();
        tokio::spawn(async move { client.submit_task(peer, spec("wait")).await })
    };
    // Let the first task take the only slot.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = b.client.submit_task(a.id(), spec("echo")).await.unwrap();
    assert!(
        matches!(
            second,
            TaskOutcome::Failed {
                kind: FailureKind::Busy,
                ..
            }
        ),
        "{second:?}"
    );
    a.handler.gate.notify_one();
    let first = first.await.unwrap().unwrap();
    assert!(matches!(first, TaskOutcome::Ok { .. }), "{first:?}");

    let err = b
        .client
        .submit_task(a.id(), spec("panic"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Stream { .. } | Error::ConnectionClosed { .. }),
        "{err}"
    );
    // The slot came back and the node still works.
    let again = b.client.submit_task(a.id(), spec("echo")).await.unwrap();
    assert!(matches!(again, TaskOutcome::Ok { .. }), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_actor_and_later_calls_fail() {
    let a = spawn_node(vec![], |_| {}).await;
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
    // The other side notices the peer is gone.
    assert!(b.client.capacity(a_id).await.is_err());
    b.client.shutdown().await;
    tokio::time::timeout(Duration::from_secs(10), b.handle)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn bootstrap_without_peer_id_is_rejected() {
    let keypair = Keypair::generate_ed25519();
    let mut config = Config::new(keypair, Arc::new(TestHandler::default()));
    config.mdns = false;
    config.bootstrap = vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()];
    let err = Network::spawn(config).unwrap_err();
    assert!(matches!(err, Error::BootstrapWithoutPeerId { .. }), "{err}");
}

/// A codec that writes whatever bytes it is given, to play a hostile peer.
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut buf = Vec::new();
        io.take(1 << 16).read_to_end(&mut buf).await?;
        Ok(buf)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut buf = Vec::new();
        io.take(1 << 16).read_to_end(&mut buf).await?;
        if buf.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(buf)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&res).await
    }
}

/// A real libp2p peer sends oversized and malformed frames on `/shoal/block/1`: each stream
/// is dropped without an answer, and the node keeps serving everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peer_frames_are_dropped_without_a_panic() {
    let a = spawn_node(vec![], |_| {}).await;
    let cid = a.handler.put(b"served to honest peers");
    let target = a.tcp_addr().await;

    let mut hostile = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                RawCodec,
                [(BLOCK_PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
            )
        })
        .unwrap()
        .build();
    hostile.dial(target).unwrap();

    let mut oversized = u32::MAX.to_be_bytes().to_vec();
    oversized.extend_from_slice(&[0; 64]);
    let mut malformed = 3u32.to_be_bytes().to_vec();
    malformed.extend_from_slice(&[0xff, 0xff, 0xff]);
    let mut trailing = 40u32.to_be_bytes().to_vec();
    trailing.extend_from_slice(&[0; 40]);
    let frames = [oversized, malformed, trailing];

    let mut sent = false;
    let mut failures = 0;
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(deadline);
    while failures < frames.len() {
        tokio::select! {
            () = &mut deadline => panic!("hostile requests neither failed nor were answered"),
            event = hostile.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if !sent => {
                    assert_eq!(peer_id, a.id());
                    for frame in &frames {
                        hostile.behaviour_mut().send_request(&peer_id, frame.clone());
                    }
                    sent = true;
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => {
                    failures += 1;
                }
                SwarmEvent::Behaviour(request_response::Event::Message { message, .. }) => {
                    panic!("a hostile frame got an answer: {message:?}");
                }
                _ => {}
            }
        }
    }

    // The node survived and still serves honest peers.
    let b = spawn_node(vec![a.tcp_addr().await], |_| {}).await;
    let got = b.client.fetch_block(a.id(), cid).await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"served to honest peers"[..]));
    assert!(!a.handle.is_finished());
}
