//! Two nodes on loopback in one process: remote noop tasks/s and submit→result latency, and
//! a 256 MiB file moved between them next to a raw TCP loopback copy in the same run.
//!
//! `cargo bench --profile dev -p shoal-host --bench mesh`

use std::time::Instant;

use shoal_host::{
    compute::DeviceChoice,
    node::{Node, NodeConfig},
    runtime::TaskSpec,
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
        let worker_id = client.net().dial(addr).await.expect("dial");

        let module = client
            .put_path(shoal_task_artifacts::NOOP.into(), false)
            .await
            .expect("put noop");
        let spec = TaskSpec {
            module,
            task: None,
            inputs: vec![],
            args: vec![],
            limits: Default::default(),
            depth: 0,
            deterministic: false,
            tenant: None,
        };
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
        let start = Instant::now();
        client.fetch_file(cid, &[worker_id]).await.expect("fetch");
        let mesh = LEN as f64 / 1e6 / start.elapsed().as_secs_f64();
        let raw = raw_tcp_mbps(&data).await;
        println!("256 MiB file, worker -> client (fetch, verify and store every chunk)");
        println!("  shoal block transfer: {mesh:.0} MB/s");
        println!("  raw TCP loopback copy: {raw:.0} MB/s");
        println!("  ratio: {:.2}x raw TCP", mesh / raw);
        client.shutdown().await;
        worker.shutdown().await;
    });
}
