//! Two nodes on loopback in one process: remote noop tasks/s and submit→result latency, and
//! a 256 MiB file moved between them over `/shoal/bulk/1` (`fetch_file`) and over the old
//! per-block path, next to a raw TCP loopback copy in the same run (medians of
//! `SHOAL_BENCH_ROUNDS`, default 3).
//!
//! `cargo bench --profile dev -p shoal-host --bench mesh`

use std::time::Instant;

use futures::StreamExt;
use shoal_host::{
    compute::DeviceChoice,
    node::{Node, NodeConfig},
    runtime::TaskSpec,
    store::{Cid, Verified},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LEN: usize = 256 << 20;

fn config(dir: &std::path::Path, slots: usize) -> NodeConfig {
    NodeConfig {
        data_dir: dir.to_path_buf(),
        listen: vec![
            std::env::var("SHOAL_BENCH_LISTEN")
                .unwrap_or("/ip4/127.0.0.1/tcp/0".into())
                .parse()
                .expect("addr"),
        ],
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
        .put_verified_batch(&[Verified::check(file, manifest).expect("the manifest")])
        .expect("store manifest");
    let mut fetched = futures::stream::iter(chunks.iter().copied())
        .map(|cid| async move {
            let request = shoal_p2p::BlockRequest {
                cid,
                file,
                credential: fetcher.credential().clone(),
            };
            let bytes = fetcher.net().fetch_block(from, request).await;
            (cid, bytes.expect("block").expect("found"))
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
            // Hashed here, where the store hashed each block before it took `Verified`.
            let batch: Vec<Verified> = batch
                .into_iter()
                .map(|(cid, bytes)| Verified::check(cid, bytes).expect("a block"))
                .collect();
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

/// The disk's durable write speed where the stores live, as `dd conv=fdatasync` measures it:
/// `data` written to a fresh file in 1 MiB writes, then one `fdatasync`.
fn disk_mbps(dir: &std::path::Path, data: &[u8]) -> f64 {
    use std::io::Write;
    let path = dir.join("disk-ceiling.bin");
    let start = Instant::now();
    let mut file = std::fs::File::create(&path).expect("create");
    for chunk in data.chunks(1 << 20) {
        file.write_all(chunk).expect("write");
    }
    file.sync_data().expect("fdatasync");
    let mbps = data.len() as f64 / 1e6 / start.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    mbps
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    tokio.block_on(async {
        let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let worker = Node::start(config(&root.path().join("worker"), 2))
            .await
            .expect("worker");
        let addr = worker.net().listen_addrs().await.expect("addrs")[0].clone();
        let client = Node::start(config(&root.path().join("client"), 0))
            .await
            .expect("client");
        let worker_id = client.net().dial(addr.clone()).await.expect("dial");

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

        // Latency: one task at a time.
        let mut lat: Vec<f64> = Vec::new();
        for _ in 0..500 {
            let t = Instant::now();
            let placed = client.submit(spec.clone(), Some(worker_id)).await;
            assert!(placed.report.result.is_ok());
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        lat.sort_by(f64::total_cmp);

        // Throughput: many in flight.
        let n = 5000;
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (client, spec) = (client.clone(), spec.clone());
            set.spawn(async move {
                client
                    .submit(spec, Some(worker_id))
                    .await
                    .report
                    .result
                    .is_ok()
            });
        }
        let mut ok = 0;
        while let Some(r) = set.join_next().await {
            ok += usize::from(r.unwrap_or(false));
        }
        let tps = ok as f64 / start.elapsed().as_secs_f64();
        println!("remote noop tasks between 2 nodes on loopback (TCP+noise+yamux)");
        println!(
            "  submit->result latency: p50 {:.2} ms, p99 {:.2} ms (500 sequential)",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
        println!("  throughput: {tps:.0} tasks/s ({ok}/{n} ok, all in flight at once)");

        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let data: Vec<u8> = (0..LEN / 8)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()
            })
            .collect();
        let file = root.path().join("big.bin");
        std::fs::write(&file, &data).expect("write file");
        // Public: the client is another tenant.
        let cid = worker.put_path(file, true).await.expect("put");
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
        let (mut bulk, mut per_block, mut raw) = (Vec::new(), Vec::new(), Vec::new());
        let mut disk = Vec::new();
        let mut stream_only = Vec::new();
        for round in 0..rounds {
            // The bulk stream alone: every chunk moved and verified, none stored.
            let start = Instant::now();
            let mut session = client.net().open_bulk(worker_id).await.expect("bulk");
            // Two requests ahead of the reader, as `fetch_file` keeps them: a session holds
            // only a few unanswered requests and unread chunks, so ask while reading.
            let mut requests = manifest.chunks.chunks(16);
            let ask = |chunks: &[Cid]| shoal_p2p::BulkRequest {
                file: cid,
                chunks: chunks.to_vec(),
                credential: client.credential().clone(),
            };
            for chunks in requests.by_ref().take(2) {
                session.request(ask(chunks)).await.expect("request");
            }
            let mut got = 0;
            while got < manifest.chunks.len() {
                let item = session.next().await.expect("a chunk");
                assert!(matches!(item, Ok(shoal_p2p::BulkItem::Chunk(_))));
                got += 1;
                if got % 16 == 0
                    && let Some(chunks) = requests.next()
                {
                    session.request(ask(chunks)).await.expect("request");
                }
            }
            assert_eq!(got, manifest.chunks.len());
            stream_only.push(LEN as f64 / 1e6 / start.elapsed().as_secs_f64());

            // A fresh fetcher each time: an empty store, so every chunk moves and is synced.
            let dir = root.path().join(format!("fetcher-bulk-{round}"));
            let fetcher = Node::start(config(&dir, 0)).await.expect("fetcher");
            fetcher.net().dial(addr.clone()).await.expect("dial");
            let start = Instant::now();
            fetcher.fetch_file(cid, &[worker_id]).await.expect("fetch");
            bulk.push(LEN as f64 / 1e6 / start.elapsed().as_secs_f64());
            fetcher.shutdown().await;
            let _ = std::fs::remove_dir_all(&dir);

            let dir = root.path().join(format!("fetcher-block-{round}"));
            let fetcher = Node::start(config(&dir, 0)).await.expect("fetcher");
            fetcher.net().dial(addr.clone()).await.expect("dial");
            let start = Instant::now();
            fetch_per_block(&fetcher, worker_id, cid, &manifest.chunks).await;
            per_block.push(LEN as f64 / 1e6 / start.elapsed().as_secs_f64());
            fetcher.shutdown().await;
            let _ = std::fs::remove_dir_all(&dir);

            raw.push(raw_tcp_mbps(&data).await);
            disk.push(disk_mbps(root.path(), &data));
        }
        let (bulk, per_block, raw) = (median(bulk), median(per_block), median(raw));
        let disk = median(disk);
        let stream_only = median(stream_only);
        println!(
            "256 MiB file, worker -> a fresh client (fetch, verify and store every chunk durably), \
             median of {rounds}"
        );
        println!("  shoal /shoal/bulk/1 (one stream, fetch_file): {bulk:.0} MB/s");
        println!(
            "  shoal /shoal/block/2 (16 requests in flight, batch fsync): {per_block:.0} MB/s"
        );
        println!(
            "  shoal /shoal/bulk/1 stream alone (verified, not stored): {stream_only:.0} MB/s"
        );
        println!("  raw TCP loopback copy: {raw:.0} MB/s");
        println!("  the disk's durable write (1 MiB writes, one fdatasync): {disk:.0} MB/s");
        println!(
            "  ratios: bulk {:.2}x per-block; bulk {:.2}x raw TCP; per-block {:.2}x raw TCP",
            bulk / per_block,
            bulk / raw,
            per_block / raw
        );
        println!(
            "  end to end: bulk {:.2}x the disk's durable write",
            bulk / disk
        );
        client.shutdown().await;
        worker.shutdown().await;
    });
}
