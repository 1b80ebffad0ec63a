//! The mesh as users run it: real `host join` processes on 127.0.0.1, driven by the CLI.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use shoal_task_artifacts as wasm;

use crate::cli::host_bin;

/// A `host join` process, killed on drop.
struct Joined {
    child: Child,
    data_dir: PathBuf,
    addr: String,
    peer_id: String,
    log: PathBuf,
}

impl Drop for Joined {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Joined {
    fn start(root: &Path, name: &str, extra: &[&str]) -> Self {
        let data_dir = root.join(name);
        let log = root.join(format!("{name}.log"));
        let mut child = Command::new(host_bin())
            .args([
                "join",
                "--no-mdns",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--data-dir",
            ])
            .arg(&data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("host join starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::sync_channel(16);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut addr, mut peer_id) = (None, None);
        while addr.is_none() || peer_id.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("host join prints its peer id and address");
            if let Some(id) = line.strip_prefix("peer id: ") {
                peer_id = Some(id.to_owned());
            }
            if let Some(a) = line.strip_prefix("listening on ") {
                addr = Some(a.to_owned());
            }
        }
        Self {
            child,
            data_dir,
            addr: addr.unwrap_or_default(),
            peer_id: peer_id.unwrap_or_default(),
            log,
        }
    }

    fn host(&self, args: &[&str]) -> Output {
        Command::new(host_bin())
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .output()
            .expect("host runs")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits until `node` sees `n` peers.
fn wait_for_peers(node: &Joined, n: usize) {
    for _ in 0..100 {
        let out = node.host(&["peers", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["peers"].as_array().is_some_and(|p| p.len() >= n) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("node never saw {n} peers");
}

#[test]
fn three_processes_map_fetch_and_fail_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let b = Joined::start(root.path(), "b", &[]);
    let c = Joined::start(root.path(), "c", &["--bootstrap", &b.addr]);
    // A only submits: with no slots of its own, every item must run on B or C.
    let a = Joined::start(root.path(), "a", &["--slots", "0", "--bootstrap", &b.addr]);
    wait_for_peers(&a, 2);
    wait_for_peers(&c, 2);

    // A maps hello over 6 named items.
    let items: Vec<String> = (0..6)
        .map(|i| {
            let p = root.path().join(format!("item{i}.txt"));
            std::fs::write(&p, format!("item{i}")).unwrap();
            p.display().to_string()
        })
        .collect();
    let map = format!("name={}", items.join(","));
    let out = a.host(&["submit", wasm::HELLO, "--map", &map, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json result");
    let results = result["items"].as_array().expect("items");
    assert_eq!(results.len(), 6);
    let mut ran_on = std::collections::HashSet::new();
    for (i, item) in results.iter().enumerate() {
        let peer = item["peer"].as_str().unwrap().to_owned();
        assert!(
            peer == b.peer_id || peer == c.peer_id,
            "item {i} ran on {peer}, not B or C"
        );
        ran_on.insert(peer);
        // In input order, with the right output, fetched by A from whichever peer ran it.
        let cid = item["report"]["result"]["Ok"][0][1]
            .as_str()
            .expect("output cid")
            .to_owned();
        let dest = root.path().join(format!("out{i}.txt"));
        let got = a.host(&["get", &cid, "-o", dest.to_str().unwrap()]);
        assert!(got.status.success(), "{}", text(&got));
        assert_eq!(
            std::fs::read_to_string(&dest).unwrap(),
            format!("Hello, item{i}!")
        );
    }
    assert_eq!(ran_on.len(), 2, "the map spread over both B and C");
    // The executing nodes' logs name the submitter.
    let runs = |n: &Joined| {
        n.log()
            .matches(&format!("running a task for peer {}", a.peer_id))
            .count()
    };
    assert_eq!(
        runs(&b) + runs(&c),
        6,
        "B log:\n{}\nC log:\n{}",
        b.log(),
        c.log()
    );

    // C fetches a 20 MiB file that only B holds, chunk by chunk, verified.
    let big: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let big_path = root.path().join("big.bin");
    std::fs::write(&big_path, &big).unwrap();
    let out = b.host(&["put", big_path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let cid = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let dest = root.path().join("big.out");
    let out = c.host(&["get", &cid, "-o", dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        std::fs::read(&dest).unwrap() == big,
        "C got B's 20 MiB file intact"
    );

    // An unknown CID is a clear error after a bounded time.
    let started = std::time::Instant::now();
    let out = a.host(&[
        "get",
        &"cd".repeat(32),
        "-o",
        root.path().join("none").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("not found in the mesh"),
        "{}",
        text(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    // A failing item names itself; the others are not lost.
    let bad = root.path().join("missing-input-name");
    std::fs::write(&bad, "x").unwrap();
    let out = a.host(&[
        "submit",
        wasm::HELLO,
        "--map",
        &format!("wrong={},{}", items[0], bad.display()),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("item 0") && text(&out).contains("failed on"),
        "{}",
        text(&out)
    );
}

#[test]
fn dead_bootstrap_is_reported_and_the_node_keeps_running() {
    let root = tempfile::tempdir().unwrap();
    let dead = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWSgDPqFuztk4vkjXBewRP28EQvM1aNsT2aLaUSCxNAZVy";
    let node = Joined::start(root.path(), "lonely", &["--bootstrap", dead]);
    for _ in 0..150 {
        if node.log().contains("cannot reach bootstrap") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        node.log()
            .contains("warning: cannot reach bootstrap /ip4/127.0.0.1/tcp/1"),
        "{}",
        node.log()
    );
    let out = node.host(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&node.peer_id));
    // Still serving: a local put through the node works.
    let f = root.path().join("f.txt");
    std::fs::write(&f, "still here").unwrap();
    assert!(node.host(&["put", f.to_str().unwrap()]).status.success());
}

mod in_process {
    //! Nodes in one process on 127.0.0.1, for what needs a hostile peer.

    use std::sync::Arc;

    use shoal_host::{
        compute::DeviceChoice,
        node::{Node, NodeConfig},
    };
    use shoal_p2p::{
        BlockId, BoxFuture, Capacity, InboundHandler, Keypair, Network, PeerId, TaskOutcome,
        TaskSpec,
    };

    fn config(dir: &std::path::Path, bootstrap: Vec<shoal_p2p::Multiaddr>) -> NodeConfig {
        NodeConfig {
            data_dir: dir.to_path_buf(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap,
            mdns: false,
            slots: 1,
            device: DeviceChoice::Cpu,
        }
    }

    /// A peer that answers every block request with the wrong bytes.
    struct Liar;

    impl InboundHandler for Liar {
        fn block(&self, _: PeerId, _: BlockId) -> BoxFuture<'_, Option<Vec<u8>>> {
            Box::pin(async { Some(vec![0xEE; 1 << 20]) })
        }
        fn task(&self, _: PeerId, _: TaskSpec) -> BoxFuture<'_, TaskOutcome> {
            Box::pin(async { TaskOutcome::failed(shoal_p2p::FailureKind::Denied, "liar") })
        }
        fn capacity(&self) -> BoxFuture<'_, Capacity> {
            Box::pin(async { Capacity::default() })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_provider_is_skipped_and_the_fetch_succeeds() {
        let root = tempfile::tempdir().unwrap();
        let holder = Node::start(config(&root.path().join("holder"), vec![]))
            .await
            .unwrap();
        let addr = holder.net().listen_addrs().await.unwrap()[0].clone();
        let mut liar_cfg = shoal_p2p::Config::new(Keypair::generate_ed25519(), Arc::new(Liar));
        liar_cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        liar_cfg.mdns = false;
        let (liar, _task) = Network::spawn(liar_cfg).unwrap();
        let liar_addr = liar.listen_addrs().await.unwrap()[0].clone();
        let fetcher = Node::start(config(&root.path().join("fetcher"), vec![addr.clone()]))
            .await
            .unwrap();
        let holder_id = fetcher.net().dial(addr).await.unwrap();
        let liar_id = fetcher.net().dial(liar_addr).await.unwrap();

        let data: Vec<u8> = (0..5u32 << 20).map(|i| (i % 253) as u8).collect();
        let file = root.path().join("data.bin");
        std::fs::write(&file, &data).unwrap();
        let cid = holder.put_path(file).await.unwrap();

        // The liar is asked first for every block; each of its answers fails verification.
        fetcher
            .fetch_file(cid, &[liar_id, holder_id])
            .await
            .expect("fetch succeeds from the honest peer");
        assert_eq!(fetcher.store().read_file(&cid).unwrap(), data);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_nodes_submit_on_a_chosen_peer() {
        let root = tempfile::tempdir().unwrap();
        let a = Node::start(config(&root.path().join("a"), vec![]))
            .await
            .unwrap();
        let a_addr = a.net().listen_addrs().await.unwrap()[0].clone();
        let b = Node::start(config(&root.path().join("b"), vec![a_addr.clone()]))
            .await
            .unwrap();
        let c = Node::start(config(&root.path().join("c"), vec![a_addr.clone()]))
            .await
            .unwrap();
        for n in [&b, &c] {
            n.net().dial(a_addr.clone()).await.unwrap();
        }
        let module = a
            .put_path(shoal_task_artifacts::HELLO.into())
            .await
            .unwrap();
        let name = a.store().put_bytes(b"mesh").unwrap();
        let spec = shoal_host::runtime::TaskSpec {
            module,
            task: None,
            inputs: vec![("name".into(), name)],
            args: vec![],
            limits: Default::default(),
        };
        for target in [&b, &c] {
            let placed = a.submit(spec.clone(), Some(target.peer_id())).await;
            assert_eq!(placed.peer, target.peer_id());
            let outputs = placed.report.result.expect("runs remotely");
            a.fetch_file(outputs[0].1, &[target.peer_id()])
                .await
                .unwrap();
            assert_eq!(a.store().read_file(&outputs[0].1).unwrap(), b"Hello, mesh!");
        }
    }
}
