//! Nodes on loopback in one process: remote noop tasks/s and submit→result latency between
//! two, and a 256 MiB file moved between them over `/shoal/bulk/1` (`fetch_file`) and over the
//! old per-block path, and from two providers at once (a third node holds the same file).
//! Next to them, the limits measured in the same run (medians of `SHOAL_BENCH_ROUNDS`,
//! default 3): a raw TCP loopback copy, the disk's durable write, the bulk stream alone over
//! TCP+noise+yamux and over QUIC, and libp2p's perf method between two bare swarms over the
//! same two transports (the encrypted-transport ceilings).
//!
//! No published `libp2p-perf` fits: its last release (0.3.0) is built on libp2p 0.53
//! (libp2p-swarm 0.44), and Shoal is on libp2p 0.57 (libp2p-swarm 0.48). So the perf method
//! is implemented here over `libp2p_stream`, on swarms built as Shoal builds its own (TCP with
//! nodelay + noise + default yamux, and QUIC), with only the stream behaviour in them.
//!
//! `cargo bench --profile dev -p shoal-host --bench mesh [-- tasks | transfer]`: both parts,
//! or the one named.

#[path = "common/data.rs"]
mod data;
#[path = "common/disk.rs"]
mod disk;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use data::pseudo_random;
use disk::{DiskSpeed, disk_mbps, settle};
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt};
use libp2p::{StreamProtocol, multiaddr::Protocol, noise, swarm::SwarmEvent, tcp, yamux};
use shoal_host::{
    compute::DeviceChoice,
    node::{Node, NodeConfig},
    runtime::TaskSpec,
    store::Cid,
};
use shoal_p2p::{Multiaddr, PeerId};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::Mutex,
};

const LEN: usize = 256 << 20;
/// Connections a fetch from one provider spreads over (`fetch.rs`'s `BULK_STREAMS`).
const LANES: usize = 4;

const TCP: &str = "/ip4/127.0.0.1/tcp/0";
const QUIC: &str = "/ip4/127.0.0.1/udp/0/quic-v1";

fn config(dir: &std::path::Path, slots: usize, listen: &[&str]) -> NodeConfig {
    NodeConfig {
        data_dir: dir.to_path_buf(),
        listen: listen.iter().map(|a| a.parse().expect("addr")).collect(),
        bootstrap: vec![],
        mdns: false,
        slots,
        store_limit: None,
        memory_budget: None,
        policy: Default::default(),
        device: DeviceChoice::Cpu,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    percentile(&xs, 0.5)
}

/// The per-block path as `fetch_file` ran it before `/shoal/bulk/1`: one `/shoal/block/2`
/// request per chunk, 16 in flight, each batch of 16 stored with one sync while the next
/// arrives (at most two batches held).
async fn fetch_per_block(fetcher: &Node, from: shoal_p2p::PeerId, file: Cid, chunks: &[Cid]) {
    let manifest = fetcher
        .net()
        .fetch_block(
            from,
            shoal_p2p::BlockRequest {
                cid: file,
                file,
                credential: fetcher.credential().clone(),
            },
        )
        .await
        .expect("manifest")
        .expect("found");
    let store = fetcher.store().clone();
    store
        .put_verified_batch(&[manifest])
        .expect("store manifest");
    let mut fetched = futures::stream::iter(chunks.iter().copied())
        .map(|cid| async move {
            let request = shoal_p2p::BlockRequest {
                cid,
                file,
                credential: fetcher.credential().clone(),
            };
            let block = fetcher.net().fetch_block(from, request).await;
            block.expect("block").expect("found")
        })
        .buffer_unordered(16)
        .ready_chunks(16);
    let mut storing: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(batch) = fetched.next().await {
        if let Some(previous) = storing.take() {
            previous.await.expect("stored");
        }
        let store = store.clone();
        storing = Some(tokio::task::spawn_blocking(move || {
            store.put_verified_batch(&batch).expect("store batch");
        }));
    }
    if let Some(last) = storing {
        last.await.expect("stored");
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn raw_tcp_mbps(data: &[u8]) -> f64 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0;
        loop {
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                break total;
            }
            total += n;
        }
    });
    let start = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(data).await.expect("write");
    s.shutdown().await.expect("shutdown");
    assert_eq!(reader.await.expect("reader"), data.len());
    data.len() as f64 / 1e6 / start.elapsed().as_secs_f64()
}

/// The bulk stream alone: every chunk moved and verified, none stored, over `lanes` streams
/// on connections of their own, each with an equal part of the chunks. MB/s, and the CPU
/// seconds the process spent.
async fn stream_alone_mbps(
    client: &Node,
    worker: PeerId,
    file: Cid,
    chunks: &[Cid],
    lanes: usize,
) -> (f64, f64) {
    let (start, cpu) = (Instant::now(), cpu_seconds());
    let mut readers = tokio::task::JoinSet::new();
    for (lane, part) in chunks.chunks(chunks.len().div_ceil(lanes)).enumerate() {
        // On a runtime worker, as `fetch_file`'s reader is. The bench's own future runs on
        // the thread that called `block_on`, so every chunk's wakeup would cross threads: in
        // one run on a 16-core Xeon this figure fell to 0.65x of what `fetch_file` moved
        // (0.92x after).
        let (client, part) = (client.clone(), part.to_vec());
        readers.spawn(async move { read_stream(&client, worker, lane, file, &part).await });
    }
    readers.join_all().await;
    let mbps = LEN as f64 / 1e6 / start.elapsed().as_secs_f64();
    (mbps, cpu_seconds() - cpu)
}

async fn read_stream(client: &Node, worker: PeerId, lane: usize, file: Cid, chunks: &[Cid]) {
    let mut session = client.net().open_bulk(worker, lane).await.expect("bulk");
    // Two requests ahead of the reader, as `fetch_file` keeps them: a session holds only a
    // few unanswered requests and unread chunks, so ask while reading.
    let mut requests = chunks.chunks(16);
    let ask = |chunks: &[Cid]| shoal_p2p::BulkRequest {
        file,
        chunks: chunks.to_vec(),
        credential: client.credential().clone(),
    };
    for batch in requests.by_ref().take(2) {
        session.request(ask(batch)).await.expect("request");
    }
    let mut got = 0;
    while got < chunks.len() {
        let item = session.next().await.expect("a chunk");
        assert!(matches!(item, Ok(shoal_p2p::BulkItem::Chunk { .. })));
        got += 1;
        if got % 16 == 0
            && let Some(batch) = requests.next()
        {
            session.request(ask(batch)).await.expect("request");
        }
    }
}

/// CPU time this process has used so far (every thread: both nodes, their writers), in
/// seconds, from `/proc/self/stat` (10 ms resolution).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    // utime and stime, fields 14 and 15 of the whole line, in clock ticks of 1/100 s.
    let ticks = |i: usize| fields[i].parse::<f64>().expect("ticks");
    (ticks(11) + ticks(12)) / 100.0
}

/// `fetch_file` into a fresh node that reaches each provider at its address only: an empty
/// store, so every chunk moves and is synced. MB/s, and the CPU seconds the process spent on
/// it.
async fn fetch_file_mbps(
    dir: &std::path::Path,
    providers: &[(&Multiaddr, PeerId)],
    file: Cid,
) -> (f64, f64) {
    let fetcher = Node::start(config(dir, 0, &[TCP])).await.expect("fetcher");
    for (addr, _) in providers {
        fetcher.net().dial((*addr).clone()).await.expect("dial");
    }
    let ids: Vec<PeerId> = providers.iter().map(|(_, id)| *id).collect();
    let (start, cpu) = (Instant::now(), cpu_seconds());
    fetcher.fetch_file(file, &ids).await.expect("fetch");
    let mbps = LEN as f64 / 1e6 / start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    fetcher.shutdown().await;
    (mbps, cpu)
}

/// libp2p perf's method on one long-lived stream: a request is the bytes the client wants and
/// then the bytes it sends (two big-endian u64s); the server reads the upload, acknowledges it
/// with its length (8 bytes, so that an upload is timed to its last byte in) and writes the
/// download. Both sides move data in reads and writes of up to 1 MiB, reusing one buffer.
const PERF: StreamProtocol = StreamProtocol::new("/shoal-bench/perf/1");

/// A swarm on the transports Shoal's own swarm uses, configured the same way.
fn perf_swarm() -> libp2p::Swarm<libp2p_stream::Behaviour> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_quic()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

async fn perf_send(stream: &mut libp2p::Stream, buf: &[u8], mut n: u64) -> std::io::Result<()> {
    while n > 0 {
        let k = n.min(buf.len() as u64) as usize;
        stream.write_all(&buf[..k]).await?;
        n -= k as u64;
    }
    stream.flush().await
}

async fn perf_recv(stream: &mut libp2p::Stream, buf: &mut [u8], mut n: u64) -> std::io::Result<()> {
    while n > 0 {
        let k = n.min(buf.len() as u64) as usize;
        match stream.read(&mut buf[..k]).await? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            got => n -= got as u64,
        }
    }
    Ok(())
}

async fn perf_serve(mut stream: libp2p::Stream) {
    let mut buf = vec![0u8; 1 << 20];
    let mut request = [0u8; 16];
    while stream.read_exact(&mut request).await.is_ok() {
        let [down, up] = [&request[..8], &request[8..]]
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
        let served = async {
            perf_recv(&mut stream, &mut buf, up).await?;
            stream.write_all(&up.to_be_bytes()).await?;
            perf_send(&mut stream, &buf, down).await
        };
        if served.await.is_err() {
            return;
        }
    }
}

/// A perf server swarm listening on `listen` and a client swarm connected to it, both driven
/// by tasks of their own; returns the client's stream, opened on that one connection.
async fn perf_connect(listen: &str) -> Arc<Mutex<libp2p::Stream>> {
    let mut server = perf_swarm();
    let mut incoming = server
        .behaviour()
        .new_control()
        .accept(PERF)
        .expect("accept");
    server
        .listen_on(listen.parse().expect("addr"))
        .expect("listen");
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let server_id = *server.local_peer_id();
    tokio::spawn(async move {
        loop {
            server.select_next_some().await;
        }
    });
    tokio::spawn(async move {
        while let Some((_, stream)) = incoming.next().await {
            tokio::spawn(perf_serve(stream));
        }
    });
    let mut client = perf_swarm();
    let mut control = client.behaviour().new_control();
    client.dial(addr).expect("dial");
    // Connected before the stream is asked for: the stream behaviour alone would dial by
    // peer id, with no address to dial.
    loop {
        match client.select_next_some().await {
            SwarmEvent::ConnectionEstablished { .. } => break,
            SwarmEvent::OutgoingConnectionError { error, .. } => panic!("perf dial: {error}"),
            _ => {}
        }
    }
    tokio::spawn(async move {
        loop {
            client.select_next_some().await;
        }
    });
    let stream = control.open_stream(server_id, PERF).await;
    Arc::new(Mutex::new(stream.expect("perf stream")))
}

/// One perf request on `stream`: `up` bytes sent, then `down` bytes received; MB/s of the
/// bytes moved, from the request to the last byte in. On a worker task, as Shoal's bulk reader
/// is: polled from `block_on`'s thread, each of the many small yamux writes and reads waits on
/// a cross-thread wake-up (a TCP upload measured ~530 MB/s that way, ~705 MB/s here).
async fn perf_mbps(stream: &Arc<Mutex<libp2p::Stream>>, down: u64, up: u64) -> f64 {
    let stream = Arc::clone(stream);
    let client = async move {
        let mut stream = stream.lock().await;
        let mut buf = vec![0u8; 1 << 20];
        let start = Instant::now();
        let mut request = [0u8; 16];
        request[..8].copy_from_slice(&down.to_be_bytes());
        request[8..].copy_from_slice(&up.to_be_bytes());
        stream.write_all(&request).await.expect("perf request");
        perf_send(&mut stream, &buf, up).await.expect("perf upload");
        let mut ack = [0u8; 8];
        stream.read_exact(&mut ack).await.expect("perf ack");
        assert_eq!(u64::from_be_bytes(ack), up);
        perf_recv(&mut stream, &mut buf, down)
            .await
            .expect("perf download");
        (down + up) as f64 / 1e6 / start.elapsed().as_secs_f64()
    };
    tokio::spawn(client).await.expect("perf client")
}

fn main() {
    // Cargo passes `--bench` to a bench without the libtest harness: flags are not parts.
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    let (tasks, transfer) = (wants("tasks"), wants("transfer"));
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    tokio.block_on(async {
        let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        // The worker listens on both transports; each client reaches it over one of them
        // only, so that its streams go over that transport.
        let worker = Node::start(config(&root.path().join("worker"), 2, &[TCP, QUIC]))
            .await
            .expect("worker");
        let addrs = worker.net().listen_addrs().await.expect("addrs");
        let on = |quic: bool| {
            let is_quic = |a: &&Multiaddr| a.iter().any(|p| matches!(p, Protocol::QuicV1));
            addrs
                .iter()
                .find(|a| is_quic(a) == quic)
                .cloned()
                .expect("listening")
        };
        let (tcp_addr, quic_addr) = (on(false), on(true));
        let client = Node::start(config(&root.path().join("client"), 0, &[TCP]))
            .await
            .expect("client");
        let worker_id = client.net().dial(tcp_addr.clone()).await.expect("dial");
        let quic_client = Node::start(config(&root.path().join("quic-client"), 0, &[TCP]))
            .await
            .expect("quic client");
        quic_client
            .net()
            .dial(quic_addr.clone())
            .await
            .expect("dial quic");

        let module = client
            .put_path(shoal_task_artifacts::NOOP.into(), false)
            .await
            .expect("put noop");
        let spec = TaskSpec::new(module);
        assert!(
            client
                .submit(spec.clone(), Some(worker_id))
                .await
                .report
                .result
                .is_ok()
        );

        if tasks {
            remote_noop(&client, &worker, worker_id, spec).await;
        }
        if transfer {
            transfer_part(
                root.path(),
                &worker,
                &client,
                &quic_client,
                worker_id,
                tcp_addr,
                quic_addr,
            )
            .await;
        }
        client.shutdown().await;
        quic_client.shutdown().await;
        worker.shutdown().await;
    });
}

/// Remote noop tasks from `client` on `worker`: latency one at a time, then throughput with
/// all in flight at once; next to the same tasks submitted on the worker itself (its runtime,
/// no network), the reference of the same run.
async fn remote_noop(client: &Node, worker: &Node, worker_id: PeerId, spec: TaskSpec) {
    // Latency: one task at a time.
    let mut lat: Vec<f64> = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        let placed = client.submit(spec.clone(), Some(worker_id)).await;
        assert!(placed.report.result.is_ok());
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(f64::total_cmp);

    let n = 5000;
    let (ok, remote) = throughput(client, worker_id, &spec, n).await;
    let (local_ok, local) = throughput(worker, worker_id, &spec, n).await;
    println!("remote noop tasks between 2 nodes on loopback (TCP+noise+yamux)");
    println!(
        "  submit->result latency: p50 {:.2} ms, p99 {:.2} ms (500 sequential)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    println!("  throughput: {remote:.0} tasks/s ({ok}/{n} ok, all in flight at once)");
    println!(
        "  the same tasks submitted on the worker itself: {local:.0} tasks/s ({local_ok}/{n} \
         ok); remote {:.2}x local",
        remote / local
    );
}

/// `n` copies of `spec` submitted from `from` to run on `on`, all in flight at once: how
/// many succeeded, and tasks per second.
async fn throughput(from: &Node, on: PeerId, spec: &TaskSpec, n: usize) -> (usize, f64) {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (from, spec) = (from.clone(), spec.clone());
        set.spawn(async move { from.submit(spec, Some(on)).await.report.result.is_ok() });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        ok += usize::from(r.unwrap_or(false));
    }
    (ok, ok as f64 / start.elapsed().as_secs_f64())
}

/// A 256 MiB file from `worker` to fresh clients over each path, next to the ceilings
/// measured in the same run.
async fn transfer_part(
    root: &std::path::Path,
    worker: &Node,
    client: &Node,
    quic_client: &Node,
    worker_id: PeerId,
    tcp_addr: Multiaddr,
    quic_addr: Multiaddr,
) {
    let data = pseudo_random(LEN, 0x9E37_79B9_7F4A_7C15);
    let file = root.join("big.bin");
    std::fs::write(&file, &data).expect("write file");
    // Public: the client is another tenant.
    let cid = worker.put_path(file.clone(), true).await.expect("put");
    // A second provider of the same file, for a fetch over two connections: each connection
    // runs its transport on one task, so one connection is bound by one core.
    let second = Node::start(config(&root.join("second"), 0, &[TCP]))
        .await
        .expect("second provider");
    assert_eq!(second.put_path(file, true).await.expect("put"), cid);
    let second_id = second.peer_id();
    let second_addr = second.net().listen_addrs().await.expect("addrs")[0].clone();
    let manifest = worker.store().manifest(&cid).expect("manifest");
    let t = Instant::now();
    for c in manifest.chunks.iter().take(16) {
        client
            .net()
            .fetch_block(
                worker_id,
                shoal_p2p::BlockRequest {
                    cid: *c,
                    file: cid,
                    credential: client.credential().clone(),
                },
            )
            .await
            .expect("block")
            .expect("found");
    }
    println!(
        "  one 1 MiB block at a time: {:.1} ms each",
        t.elapsed().as_secs_f64() * 1e3 / 16.0
    );
    let rounds: usize = std::env::var("SHOAL_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let perf_tcp = perf_connect(TCP).await;
    let perf_quic = perf_connect(QUIC).await;
    // One vector of per-round figures for each line printed.
    let mut m: [Vec<f64>; 17] = Default::default();
    for round in 0..rounds {
        let (chunks, n) = (&manifest.chunks, LEN as u64);
        // Each transport's ceiling right before the stream over it, so that both see the
        // same load on a shared machine.
        let cpu = cpu_seconds();
        m[5].push(perf_mbps(&perf_tcp, n, 0).await);
        m[16].push(cpu_seconds() - cpu);
        let (mbps, cpu) = stream_alone_mbps(client, worker_id, cid, chunks, 1).await;
        m[0].push(mbps);
        m[12].push(cpu);
        m[15].push(
            stream_alone_mbps(client, worker_id, cid, chunks, LANES)
                .await
                .0,
        );
        m[7].push(perf_mbps(&perf_quic, n, 0).await);
        m[1].push(
            stream_alone_mbps(quic_client, worker_id, cid, chunks, 1)
                .await
                .0,
        );
        // Each durable write starts with nothing of the last one left to write back.
        settle();
        let disk = disk_mbps(root, &data);
        m[10].push(disk.buffered);
        m[11].push(disk.direct);
        settle();
        let dir = root.join(format!("fetcher-bulk-{round}"));
        let (mbps, cpu) = fetch_file_mbps(&dir, &[(&tcp_addr, worker_id)], cid).await;
        m[2].push(mbps);
        m[13].push(cpu);
        settle();
        let dir = root.join(format!("fetcher-bulk-quic-{round}"));
        m[3].push(
            fetch_file_mbps(&dir, &[(&quic_addr, worker_id)], cid)
                .await
                .0,
        );
        settle();
        let dir = root.join(format!("fetcher-two-{round}"));
        let both = [(&tcp_addr, worker_id), (&second_addr, second_id)];
        m[14].push(fetch_file_mbps(&dir, &both, cid).await.0);

        settle();
        let dir = root.join(format!("fetcher-block-{round}"));
        let fetcher = Node::start(config(&dir, 0, &[TCP])).await.expect("fetcher");
        fetcher.net().dial(tcp_addr.clone()).await.expect("dial");
        let start = Instant::now();
        fetch_per_block(&fetcher, worker_id, cid, chunks).await;
        m[4].push(LEN as f64 / 1e6 / start.elapsed().as_secs_f64());
        fetcher.shutdown().await;

        m[6].push(perf_mbps(&perf_tcp, 0, n).await);
        m[8].push(perf_mbps(&perf_quic, 0, n).await);
        m[9].push(raw_tcp_mbps(&data).await);
    }
    let [
        stream_tcp,
        stream_quic,
        bulk_tcp,
        bulk_quic,
        per_block,
        perf_tcp_down,
        perf_tcp_up,
        perf_quic_down,
        perf_quic_up,
        raw,
        disk_buffered,
        disk_direct,
        stream_cpu,
        fetch_cpu,
        two_providers,
        stream_lanes,
        perf_cpu,
    ] = m.map(median);
    println!(
        "256 MiB file, worker -> a fresh client (fetch, verify and store every chunk durably), \
             median of {rounds}"
    );
    println!(
        "  shoal /shoal/bulk/1 (fetch_file, one provider, {LANES} lanes), TCP+noise+yamux: \
         {bulk_tcp:.0} MB/s"
    );
    println!(
        "  shoal /shoal/bulk/1 (fetch_file, one provider, {LANES} lanes), QUIC: {bulk_quic:.0} MB/s"
    );
    println!(
        "  shoal /shoal/bulk/1 (fetch_file from two providers, two lanes to each), \
         TCP+noise+yamux: {two_providers:.0} MB/s"
    );
    println!(
        "  shoal /shoal/block/2 (16 requests in flight, batch fsync), TCP+noise+yamux: \
             {per_block:.0} MB/s"
    );
    println!(
        "  shoal /shoal/bulk/1 stream alone (verified, not stored), TCP+noise+yamux: \
             {stream_tcp:.0} MB/s"
    );
    println!(
        "  shoal /shoal/bulk/1 stream alone (verified, not stored), QUIC: {stream_quic:.0} MB/s"
    );
    println!(
        "  shoal /shoal/bulk/1 streams alone on {LANES} lanes (verified, not stored), \
         TCP+noise+yamux: {stream_lanes:.0} MB/s, {:.2}x one stream",
        stream_lanes / stream_tcp
    );
    println!(
        "  libp2p perf, two bare swarms, TCP+noise+yamux: download {perf_tcp_down:.0} MB/s, \
             upload {perf_tcp_up:.0} MB/s"
    );
    println!(
        "  libp2p perf, two bare swarms, QUIC: download {perf_quic_down:.0} MB/s, \
             upload {perf_quic_up:.0} MB/s"
    );
    println!("  raw TCP loopback copy: {raw:.0} MB/s");
    println!(
        "  the disk's durable write (1 MiB writes, one fdatasync): {disk_buffered:.0} MB/s \
             through the page cache, {disk_direct:.0} MB/s past it (O_DIRECT)"
    );
    let disk = DiskSpeed {
        buffered: disk_buffered,
        direct: disk_direct,
    }
    .best();
    // The file moves worker -> client: a perf download is the direction it bounds.
    let bulk = bulk_tcp.max(bulk_quic);
    let network = stream_tcp.max(stream_quic);
    let ceiling = perf_tcp_down.max(perf_quic_down);
    println!(
        "  ratios: bulk (TCP) {:.2}x per-block; bulk (TCP) {:.2}x raw TCP; per-block {:.2}x raw TCP",
        bulk_tcp / per_block,
        bulk_tcp / raw,
        per_block / raw
    );
    println!(
        "  network path: stream alone (best transport) {:.2}x the faster perf ceiling (one \
         connection each)",
        network / ceiling
    );
    println!(
        "  end to end (fetch_file, best transport): {:.2}x the disk's durable write; \
             {:.2}x min(disk, network ceiling)",
        bulk / disk,
        bulk / disk.min(ceiling)
    );
    println!(
        "  end to end from two providers (TCP): {:.2}x the disk's durable write; {:.2}x one \
         provider",
        two_providers / disk,
        two_providers / bulk_tcp
    );
    // Both nodes share this machine's CPUs: what a fetch costs bounds it wherever the disk
    // and the network would allow more.
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let cpu_bound = LEN as f64 / 1e6 * cpus / fetch_cpu;
    println!(
        "  CPU for the 256 MiB, both ends: libp2p perf (TCP) {perf_cpu:.2} s, stream alone (TCP) \
         {stream_cpu:.2} s ({:.2}x perf), fetch_file (TCP) {fetch_cpu:.2} s; on {cpus} CPUs \
         fetch_file can move at most {cpu_bound:.0} MB/s, and moved {:.2}x that",
        stream_cpu / perf_cpu,
        bulk_tcp / cpu_bound
    );
    second.shutdown().await;
}
