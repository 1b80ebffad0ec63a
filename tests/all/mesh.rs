//! The mesh as users run it: real `host join` processes on 127.0.0.1, driven by the CLI.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use shoal_task_artifacts as wasm;

use crate::{cli::host_bin, util::pseudo_random};

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

/// A loopback TCP port that nothing listens on: the OS picked it free, and we let it go.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("bound address").port()
}

/// The JSON a `--json` verb printed, or a panic that shows what it printed instead.
fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", text(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
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
        let peer = item["report"]["stats"]["executed_by"]
            .as_str()
            .expect("the report names its executor")
            .to_owned();
        assert_eq!(item["peer"], peer.as_str(), "ran where it was placed");
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

    // C fetches a 20 MiB file that only B holds, chunk by chunk, verified: once B makes it
    // public. Before, it is B's alone, and nobody else can find or read it.
    let big = pseudo_random(20 << 20, 20);
    let big_path = root.path().join("big.bin");
    std::fs::write(&big_path, &big).unwrap();
    let out = b.host(&["put", big_path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let cid = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let dest = root.path().join("big.out");
    let out = c.host(&["get", &cid, "-o", dest.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "a private file was fetched: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("was not found in the mesh"),
        "{}",
        text(&out)
    );
    let out = b.host(&["put", "--public", big_path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = c.host(&["get", &cid, "-o", dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        std::fs::read(&dest).unwrap() == big,
        "C got B's 20 MiB file intact"
    );

    // An unknown CID is a clear error after a bounded time.
    let started = Instant::now();
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

    // A failing item names itself; the others are not lost. matmul-wasm with n = 2 wants a
    // 16-byte matrix `a`: item 0 is the identity, item 1 is 3 bytes.
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (id, b_mat, short) = (
        root.path().join("id.bin"),
        root.path().join("b.bin"),
        root.path().join("short.bin"),
    );
    std::fs::write(&id, f32s(&[1.0, 0.0, 0.0, 1.0])).unwrap();
    std::fs::write(&b_mat, f32s(&[1.0, 2.0, 3.0, 4.0])).unwrap();
    std::fs::write(&short, b"abc").unwrap();
    let map = format!("a={},{}", id.display(), short.display());
    let b_input = format!("b={}", b_mat.display());
    let args = [
        "submit",
        wasm::MATMUL_WASM,
        "--arg",
        "n=2",
        "--input",
        &b_input,
        "--map",
        &map,
    ];
    let out = a.host(&args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = text(&out);
    let line = |i: usize| {
        shown
            .lines()
            .find(|l| l.starts_with(&format!("item {i} (")))
            .unwrap_or_else(|| panic!("no line for item {i}:\n{shown}"))
    };
    assert!(line(0).contains(" ran on "), "{shown}");
    assert!(line(1).contains(" failed on "), "{shown}");
    let out = a.host(&[&args[..], &["--json"]].concat());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json result");
    let good = &result["items"][0]["report"]["result"]["Ok"][0][1];
    let dest = root.path().join("product.bin");
    let got = a.host(&[
        "get",
        good.as_str().expect("item 0 ran"),
        "-o",
        dest.to_str().unwrap(),
    ]);
    assert!(got.status.success(), "{}", text(&got));
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        f32s(&[1.0, 2.0, 3.0, 4.0]),
        "I × B = B"
    );
    let bad = &result["items"][1]["report"]["result"]["Err"];
    assert_eq!(bad["kind"], "TaskError", "{bad}");
    assert!(
        bad["message"]
            .as_str()
            .unwrap_or("")
            .contains("input `a` has 3 bytes"),
        "{bad}"
    );
}

#[test]
fn a_task_on_a_peer_killed_mid_task_is_retried_elsewhere() {
    let root = tempfile::tempdir().unwrap();
    let b = Joined::start(root.path(), "b", &["--slots", "1"]);
    let c = Joined::start(root.path(), "c", &["--slots", "1", "--bootstrap", &b.addr]);
    let a = Joined::start(root.path(), "a", &["--slots", "0", "--bootstrap", &b.addr]);
    wait_for_peers(&a, 2);
    let mut peers = [Some(b), Some(c)];

    // The task waits 2 s, long enough to kill its peer while it runs.
    let submit = Command::new(host_bin())
        .args([
            "submit",
            wasm::WAIT,
            "--arg",
            "ms=2000",
            "--arg",
            "tag=survived",
            "--json",
        ])
        .arg("--data-dir")
        .arg(&a.data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("host submit starts");
    // The victim is the peer whose one slot is busy: the task is in its sandbox now.
    let busy = |p: &Joined| json(&p.host(&["status", "--json"]))["free_slots"] == 0;
    let victim = (0..200)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(25));
            peers.iter().position(|p| p.as_ref().is_some_and(busy))
        })
        .expect("the task starts on B or C");
    let running = format!("running a task for peer {}", a.peer_id);
    let killed = peers[victim].take().expect("victim is alive");
    let killed_id = killed.peer_id.clone();
    drop(killed); // SIGKILL, mid-task
    let survivor = peers[1 - victim].as_ref().expect("the other peer lives");

    let out = submit.wait_with_output().expect("host submit ends");
    let result = json(&out);
    assert_eq!(
        result["stats"]["executed_by"],
        survivor.peer_id.as_str(),
        "retried on the surviving peer, not {killed_id}: {result}"
    );
    let cid = result["result"]["Ok"][0][1]
        .as_str()
        .expect("the retry succeeded");
    let dest = root.path().join("done.txt");
    let got = a.host(&["get", cid, "-o", dest.to_str().unwrap()]);
    assert!(got.status.success(), "{}", text(&got));
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "survived");
    assert!(survivor.log().contains(&running), "{}", survivor.log());
}

#[test]
fn idle_control_connections_do_not_block_the_cli() {
    let root = tempfile::tempdir().unwrap();
    let node = Joined::start(root.path(), "n", &[]);
    // More idle clients than the node serves at once, none of them ever sending a request.
    let socket = node.data_dir.join("control.sock");
    let _idle: Vec<_> = (0..80)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).expect("connect"))
        .collect();
    let (tx, rx) = mpsc::sync_channel(1);
    let status = Command::new(host_bin())
        .args(["status", "--data-dir"])
        .arg(&node.data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("host status starts");
    std::thread::spawn(move || tx.send(status.wait_with_output()));
    let out = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("host status answers while idle clients hold connections")
        .expect("host status ran");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&node.peer_id), "{}", text(&out));
}

#[test]
fn a_second_process_cannot_share_a_data_dir() {
    let root = tempfile::tempdir().unwrap();
    let node = Joined::start(root.path(), "shared", &[]);
    let second = Command::new(host_bin())
        .args([
            "join",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--data-dir",
        ])
        .arg(&node.data_dir)
        .output()
        .expect("host join runs");
    assert_eq!(second.status.code(), Some(4), "{}", text(&second));
    assert!(
        text(&second).contains("is in use by another Shoal process"),
        "{}",
        text(&second)
    );
    // The first node is untouched.
    let out = node.host(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn dead_bootstrap_is_reported_and_the_node_keeps_running() {
    let root = tempfile::tempdir().unwrap();
    let port = closed_port();
    let dead = format!(
        "/ip4/127.0.0.1/tcp/{port}/p2p/12D3KooWSgDPqFuztk4vkjXBewRP28EQvM1aNsT2aLaUSCxNAZVy"
    );
    let node = Joined::start(root.path(), "lonely", &["--bootstrap", &dead]);
    // Wait for the whole line: the log may be read while the node is half-way through it.
    let expected = format!("warning: cannot reach bootstrap /ip4/127.0.0.1/tcp/{port}");
    for _ in 0..150 {
        if node.log().contains(&expected) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(node.log().contains(&expected), "{}", node.log());
    let out = node.host(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&node.peer_id));
    // Still serving: a local put through the node works.
    let f = root.path().join("f.txt");
    std::fs::write(&f, "still here").unwrap();
    assert!(node.host(&["put", f.to_str().unwrap()]).status.success());
}

/// The block files in a data dir's store.
fn block_files(data_dir: &Path) -> Vec<PathBuf> {
    let Ok(prefixes) = std::fs::read_dir(data_dir.join("blocks")) else {
        return Vec::new();
    };
    prefixes
        .map_while(Result::ok)
        .flat_map(|prefix| std::fs::read_dir(prefix.path()).into_iter().flatten())
        .map_while(Result::ok)
        .map(|block| block.path())
        .collect()
}

/// The blocks in a data dir's store, each checked against its name: a name that its bytes do
/// not hash to is a partial or torn block made visible.
fn stored_blocks(data_dir: &Path) -> usize {
    let blocks = block_files(data_dir);
    for block in &blocks {
        let bytes = std::fs::read(block).unwrap();
        let name = block.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            shoal_host::store::Cid::of(&bytes).to_hex(),
            name,
            "a block whose bytes are not its name is visible ({} bytes)",
            bytes.len()
        );
    }
    blocks.len()
}

#[test]
fn a_fetch_killed_mid_way_leaves_no_partial_block_and_completes_after_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let a = Joined::start(root.path(), "a", &[]);
    let b = Joined::start(root.path(), "b", &["--slots", "0", "--bootstrap", &a.addr]);
    // 160 distinct chunks: long enough on loopback to be caught half-way.
    let data = pseudo_random(160 << 20, 0x9E37_79B9_7F4A_7C15);
    let path = root.path().join("big.bin");
    std::fs::write(&path, &data).unwrap();
    let out = a.host(&["put", "--public", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let cid = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let dest = root.path().join("big.out");
    let data_dir = b.data_dir.clone();
    let get = || {
        Command::new(host_bin())
            .args(["get", &cid, "-o", dest.to_str().unwrap(), "--data-dir"])
            .arg(&data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("host get starts")
    };

    let mut fetching = get();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    // The manifest and some chunks are in; most are not.
    while seen < 8 {
        assert!(Instant::now() < deadline, "the fetch never started");
        if fetching.try_wait().unwrap().is_some() {
            let out = fetching.wait_with_output().unwrap();
            panic!("the fetch ended before it could be killed: {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(1));
        seen = block_files(&data_dir).len();
    }
    drop(b); // SIGKILL, mid-fetch
    let _ = fetching.wait();
    let after_kill = stored_blocks(&data_dir);
    assert!(
        after_kill < 161,
        "the fetch completed before the kill ({after_kill} blocks)"
    );
    assert!(!dest.exists(), "a killed fetch wrote its output");

    let b = Joined::start(root.path(), "b", &["--slots", "0", "--bootstrap", &a.addr]);
    stored_blocks(&data_dir);
    let got = get().wait_with_output().unwrap();
    assert!(got.status.success(), "{}", b.log());
    assert!(
        std::fs::read(&dest).unwrap() == data,
        "the file arrived intact"
    );
    assert_eq!(stored_blocks(&data_dir), 161, "160 chunks and the manifest");
}

mod in_process {
    //! Nodes in one process on 127.0.0.1, for what needs a hostile or scripted peer.

    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    use shoal_host::{
        node::Node,
        runtime::{FailureKind, TaskSpec},
    };
    use shoal_p2p::{
        BlockRequest, BlockResponse, BoxFuture, Capacity, InboundHandler, Keypair, Network,
        NetworkClient, PeerId, TaskOutcome,
    };
    use tokio::sync::{Notify, watch};

    use crate::util::node;

    /// A bare p2p peer on 127.0.0.1 that answers with `handler`.
    async fn scripted_peer(
        handler: Arc<dyn InboundHandler>,
        tune: impl FnOnce(&mut shoal_p2p::Config),
    ) -> (NetworkClient, shoal_p2p::Multiaddr) {
        let mut cfg = shoal_p2p::Config::new(Keypair::generate_ed25519());
        cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        cfg.mdns = false;
        tune(&mut cfg);
        let (client, _task) = Network::spawn(cfg, |_| handler).unwrap();
        let addr = client.listen_addrs().await.unwrap()[0].clone();
        (client, addr)
    }

    /// Connects `from` to `to`, returning `to`'s peer id.
    async fn connect(from: &Node, to: &Node) -> PeerId {
        let addr = to.net().listen_addrs().await.unwrap()[0].clone();
        from.net().dial(addr).await.unwrap()
    }

    /// A spec for the module at `path`, stored (and announced) by `node`.
    async fn spec_for(
        node: &Node,
        path: &str,
        inputs: Vec<(String, shoal_host::store::Cid)>,
    ) -> TaskSpec {
        TaskSpec {
            module: node.put_path(path.into(), false).await.unwrap(),
            task: None,
            inputs,
            args: vec![],
            limits: Default::default(),
            depth: 0,
            deterministic: false,
            tenant: None,
        }
    }

    /// A hello spec whose module and input are in `node`'s store.
    async fn hello_spec(node: &Node) -> TaskSpec {
        let name = node.store().put_bytes(b"mesh").unwrap();
        spec_for(
            node,
            shoal_task_artifacts::HELLO,
            vec![("name".into(), name)],
        )
        .await
    }

    /// A peer that answers every block request with the wrong bytes, and counts the requests.
    #[derive(Default)]
    struct Liar {
        asked: AtomicUsize,
    }

    impl InboundHandler for Liar {
        fn block(&self, _: PeerId, _: BlockRequest) -> BoxFuture<'_, BlockResponse> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { BlockResponse::Found(vec![0xEE; 1 << 20]) })
        }
        fn task(&self, _: PeerId, _: shoal_p2p::TaskSpec) -> BoxFuture<'_, TaskOutcome> {
            Box::pin(async {
                TaskOutcome::failed(shoal_p2p::FailureKind::Denied, "liar denies everyone")
            })
        }
        fn capacity(&self) -> BoxFuture<'_, Capacity> {
            Box::pin(async { Capacity::default() })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_provider_is_skipped_and_the_fetch_succeeds() {
        let root = tempfile::tempdir().unwrap();
        let holder = node(root.path(), "holder", 1).await;
        let liar = Arc::new(Liar::default());
        let (_liar_net, liar_addr) = scripted_peer(liar.clone(), |_| {}).await;
        let fetcher = node(root.path(), "fetcher", 1).await;
        let holder_id = connect(&fetcher, &holder).await;
        let liar_id = fetcher.net().dial(liar_addr).await.unwrap();

        // A manifest and 5 chunks: without the skip, the liar would be asked for about half.
        let data: Vec<u8> = (0..5u32 << 20).map(|i| (i % 253) as u8).collect();
        let file = root.path().join("data.bin");
        std::fs::write(&file, &data).unwrap();
        // Public: the fetcher is another tenant.
        let cid = holder.put_path(file, true).await.unwrap();

        // The liar is listed first, so it is asked for the manifest, fails verification, and
        // is never asked again during this fetch.
        fetcher
            .fetch_file(cid, &[liar_id, holder_id])
            .await
            .expect("fetch succeeds from the honest peer");
        assert_eq!(fetcher.store().read_file(&cid).unwrap(), data);
        assert_eq!(
            liar.asked.load(Ordering::SeqCst),
            1,
            "the corrupt provider is asked once, then skipped"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_nodes_submit_on_a_chosen_peer() {
        let root = tempfile::tempdir().unwrap();
        let a = node(root.path(), "a", 1).await;
        let (b, c) = (
            node(root.path(), "b", 1).await,
            node(root.path(), "c", 1).await,
        );
        for n in [&b, &c] {
            connect(n, &a).await;
        }
        let spec = hello_spec(&a).await;
        for target in [&b, &c] {
            let placed = a.submit(spec.clone(), Some(target.peer_id())).await;
            // The executor's own report names it, and it really has the output.
            assert_eq!(
                placed.report.stats.executed_by,
                Some(target.peer_id().to_string()),
                "the report names the node that ran the task"
            );
            let outputs = placed.report.result.expect("runs remotely");
            assert!(
                target.store().has_block(&outputs[0].1),
                "the executor stored the output"
            );
            a.fetch_file(outputs[0].1, &[target.peer_id()])
                .await
                .unwrap();
            assert_eq!(a.store().read_file(&outputs[0].1).unwrap(), b"Hello, mesh!");
        }
        let local = a.submit(spec, Some(a.peer_id())).await;
        assert_eq!(
            local.report.stats.executed_by,
            Some(a.peer_id().to_string())
        );
    }

    /// Runs `spec` on `a` itself and on `b`, and checks that the two reports agree on every
    /// deterministic field.
    async fn same_report_local_and_remote(a: &Node, b: &Node, spec: TaskSpec) {
        let local = a.submit(spec.clone(), Some(a.peer_id())).await.report;
        let remote = a.submit(spec, Some(b.peer_id())).await.report;
        assert_eq!(local.result, remote.result, "outputs or failure");
        assert_eq!(local.logs.text, remote.logs.text);
        let (l, r) = (&local.stats, &remote.stats);
        assert_eq!(l.backend, r.backend, "backend");
        assert_eq!(l.limits, r.limits, "limits applied");
        assert_eq!(l.peak_memory, r.peak_memory, "peak memory");
        assert_eq!(l.executed_by, Some(a.peer_id().to_string()));
        assert_eq!(r.executed_by, Some(b.peer_id().to_string()));
        for stats in [l, r] {
            assert!(!stats.wall.is_zero() && !stats.cpu.is_zero(), "{stats:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_remote_report_carries_what_a_local_one_does() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (
            node(root.path(), "a", 1).await,
            node(root.path(), "b", 1).await,
        );
        connect(&b, &a).await;
        let limits = shoal_host::runtime::Limits {
            memory_bytes: 96 << 20,
            timeout: std::time::Duration::from_secs(30),
            cpu_budget: std::time::Duration::from_secs(20),
            ..Default::default()
        };
        // A tensor task (so a backend is named), then one that fails its own way.
        for (path, args) in [
            (
                shoal_task_artifacts::MATMUL,
                vec![("n".into(), "16".into())],
            ),
            (shoal_task_artifacts::HOSTILE_TRAP, vec![]),
        ] {
            let spec = TaskSpec {
                args,
                limits: limits.clone(),
                depth: 0,
                ..spec_for(&a, path, vec![]).await
            };
            same_report_local_and_remote(&a, &b, spec).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_input_is_reported_as_such_not_retried_as_lost() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (
            node(root.path(), "a", 0).await,
            node(root.path(), "b", 1).await,
        );
        connect(&b, &a).await;
        // A chunk is a block but no file: whoever runs the task, the input is wrong, and the
        // submitter, which holds it, says so before it asks any peer.
        let mut spec = hello_spec(&a).await;
        let file = spec.inputs[0].1;
        let chunk = a.store().manifest(&file).unwrap().chunks[0];
        spec.inputs[0].1 = chunk;
        let placed = a.submit(spec, None).await;
        let failure = placed.report.result.expect_err("a chunk is not a file");
        assert_eq!(failure.kind, FailureKind::BadInput, "{failure}");
        assert!(failure.message.contains("input `name`"), "{failure}");
        assert_eq!(placed.peer, a.peer_id());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_refuses_is_reported_denied() {
        let root = tempfile::tempdir().unwrap();
        let a = node(root.path(), "a", 1).await;
        let (_liar_net, liar_addr) = scripted_peer(Arc::new(Liar::default()), |_| {}).await;
        let liar_id = a.net().dial(liar_addr).await.unwrap();
        let placed = a.submit(hello_spec(&a).await, Some(liar_id)).await;
        let failure = placed.report.result.expect_err("the peer refuses");
        assert_eq!(failure.kind, FailureKind::Denied, "{failure}");
        assert!(
            failure.message.contains("liar denies everyone"),
            "{failure}"
        );
    }

    /// A peer that holds every task until released, counting how many it holds at once.
    struct Gate {
        held: AtomicUsize,
        peak: AtomicUsize,
        /// Sends the number held each time it changes.
        count: watch::Sender<usize>,
        open: Notify,
        released: std::sync::atomic::AtomicBool,
        /// Peer ids of the senders, to check they are who we think.
        from: Mutex<Vec<PeerId>>,
    }

    impl Gate {
        fn new() -> Self {
            Self {
                held: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                count: watch::channel(0).0,
                open: Notify::new(),
                released: false.into(),
                from: Mutex::new(Vec::new()),
            }
        }
    }

    impl InboundHandler for Gate {
        fn block(&self, _: PeerId, _: BlockRequest) -> BoxFuture<'_, BlockResponse> {
            Box::pin(async { BlockResponse::NotFound })
        }
        fn task(&self, from: PeerId, _: shoal_p2p::TaskSpec) -> BoxFuture<'_, TaskOutcome> {
            Box::pin(async move {
                self.from.lock().unwrap().push(from);
                let now = self.held.fetch_add(1, Ordering::SeqCst) + 1;
                self.peak.fetch_max(now, Ordering::SeqCst);
                self.count.send_replace(now);
                let opened = self.open.notified();
                if !self.released.load(Ordering::SeqCst) {
                    opened.await;
                }
                let now = self.held.fetch_sub(1, Ordering::SeqCst) - 1;
                self.count.send_replace(now);
                TaskOutcome::Ok {
                    outputs: vec![],
                    logs: String::new(),
                    stats: shoal_p2p::TaskStats::default(),
                }
            })
        }
        fn capacity(&self) -> BoxFuture<'_, Capacity> {
            Box::pin(async {
                Capacity {
                    free_slots: 1000,
                    total_slots: 1000,
                    has_gpu: false,
                    queue_len: 0,
                }
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_submitter_keeps_at_most_its_per_peer_share_in_flight_on_one_peer() {
        let root = tempfile::tempdir().unwrap();
        let a = node(root.path(), "a", 1).await;
        // The gate would take far more at once: only the submitter's own bound (the peer's
        // default per-peer share) holds.
        const SHARE: usize = shoal_p2p::DEFAULT_MAX_INBOUND_TASKS_PER_PEER;
        let gate = Arc::new(Gate::new());
        let (_gate_net, gate_addr) = scripted_peer(gate.clone(), |c| {
            c.max_inbound_tasks = 1000;
            c.max_inbound_tasks_per_peer = 1000;
        })
        .await;
        let gate_id = a.net().dial(gate_addr).await.unwrap();
        let spec = hello_spec(&a).await;
        let submits: Vec<_> = (0..40)
            .map(|_| {
                let (a, spec) = (a.clone(), spec.clone());
                tokio::spawn(async move { a.submit(spec, Some(gate_id)).await })
            })
            .collect();
        let mut count = gate.count.subscribe();
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            count.wait_for(|n| *n >= SHARE),
        )
        .await
        .expect("a full share of tasks reaches the peer")
        .unwrap();
        // Nothing more may arrive while those are held: watch for a while.
        let more = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            count.wait_for(|n| *n > SHARE),
        )
        .await;
        assert!(
            more.is_err() && gate.peak.load(Ordering::SeqCst) == SHARE,
            "one task too many reached the peer (peak {})",
            gate.peak.load(Ordering::SeqCst)
        );
        gate.released.store(true, Ordering::SeqCst);
        gate.open.notify_waiters();
        for submit in submits {
            let placed = submit.await.unwrap();
            assert!(placed.report.result.is_ok(), "{:?}", placed.report.result);
        }
        assert_eq!(gate.peak.load(Ordering::SeqCst), SHARE);
        assert_eq!(gate.from.lock().unwrap().len(), 40);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_vanishes_mid_task_is_reported_lost() {
        let root = tempfile::tempdir().unwrap();
        let a = node(root.path(), "a", 1).await;
        let gate = Arc::new(Gate::new());
        let (gate_net, gate_addr) = scripted_peer(gate.clone(), |_| {}).await;
        let gate_id = a.net().dial(gate_addr).await.unwrap();
        let spec = hello_spec(&a).await;
        let submit = tokio::spawn({
            let a = a.clone();
            async move { a.submit(spec, Some(gate_id)).await }
        });
        gate.count.subscribe().wait_for(|n| *n == 1).await.unwrap();
        gate_net.shutdown().await;
        // Pinned to that peer, the task cannot move: it ends Lost, promptly.
        let placed = tokio::time::timeout(std::time::Duration::from_secs(20), submit)
            .await
            .expect("a lost peer is noticed")
            .unwrap();
        let failure = placed.report.result.expect_err("the peer is gone");
        assert_eq!(failure.kind, FailureKind::Lost, "{failure}");
        // A peer that loses a task is left out of placement for a while, like a busy one.
        assert!(a.backed_off(&gate_id).is_some());
    }
}

/// `VmHWM` or `VmRSS` of a process, in bytes.
fn memory_of(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the node lives");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a memory field");
    kib * 1024
}

#[test]
fn a_peer_cannot_drive_a_node_past_its_memory_budget() {
    const MIB: u64 = 1 << 20;
    let root = tempfile::tempdir().unwrap();
    let b = Joined::start(
        root.path(),
        "b",
        &[
            "--slots",
            "1",
            "--memory-budget",
            "2GiB",
            "--open-max-memory",
            "4GiB",
        ],
    );
    let a = Joined::start(root.path(), "a", &["--slots", "0", "--bootstrap", &b.addr]);
    wait_for_peers(&a, 1);
    // 20 M iovecs in one fd_write: wasi-common built ~40 host bytes for each (~800 MiB).
    let amplifier = root.path().join("iovecs.wasm");
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 2560)
      (func (export "shoal_task:t") (result i32)
        (call $write (i32.const 1) (i32.const 0) (i32.const 20000000) (i32.const 0))))"#;
    std::fs::write(&amplifier, wat::parse_str(wat).unwrap()).unwrap();
    let before = memory_of(b.child.id(), "VmRSS:");
    let out = a.host(&[
        "submit",
        amplifier.to_str().unwrap(),
        "--memory",
        "160MiB",
        "--on",
        &b.peer_id,
    ]);
    assert!(
        text(&out).contains("task returned status 28"),
        "{}",
        text(&out)
    );
    let rise = memory_of(b.child.id(), "VmHWM:").saturating_sub(before);
    assert!(
        rise < 160 * MIB + 128 * MIB,
        "the node's RSS rose {} MiB for a 160 MiB task",
        rise / MIB
    );
    // A task that could never fit the budget is refused, typed and named.
    let out = a.host(&["submit", wasm::NOOP, "--memory", "2GiB", "--on", &b.peer_id]);
    let shown = text(&out);
    assert!(shown.contains("Denied"), "{shown}");
    assert!(
        shown.contains("over this node's 2048 MiB memory budget"),
        "{shown}"
    );
    // And the node keeps serving.
    let name = root.path().join("name.txt");
    std::fs::write(&name, "budget").unwrap();
    let input = format!("name={}", name.display());
    let out = a.host(&["submit", wasm::HELLO, "--input", &input, "--on", &b.peer_id]);
    assert!(out.status.success(), "{}", text(&out));
}

/// The parameters in an `MLP1` file written out by `host get`.
fn mlp_params(node: &Joined, cid: &str, path: &Path) -> Vec<f32> {
    let got = node.host(&["get", cid, "-o", path.to_str().unwrap()]);
    assert!(got.status.success(), "{}", text(&got));
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"MLP1");
    bytes[16..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn sync_training_survives_a_worker_killed_mid_run() {
    let root = tempfile::tempdir().unwrap();
    let b = Joined::start(root.path(), "b", &["--slots", "1"]);
    let worker = ["--slots", "1", "--bootstrap", &b.addr];
    let mut victim = Some(Joined::start(root.path(), "c", &worker));
    let a = Joined::start(root.path(), "a", &worker);
    wait_for_peers(&a, 2);
    let submit = |args: &[&str]| {
        let mut all = vec!["submit", wasm::MLP_DIGITS, "--json"];
        all.extend_from_slice(args);
        let result = json(&a.host(&all));
        let outputs = result["result"]["Ok"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        move |name: &str| {
            outputs
                .iter()
                .find(|o| o[0] == name)
                .and_then(|o| o[1].as_str())
                .unwrap_or_else(|| panic!("no output {name}"))
                .to_owned()
        }
    };
    let csv = format!(
        "csv={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../tasks/data/digits.csv.gz")
    );
    let split = submit(&["--task", "split", "--input", &csv, "--arg", "shards=3"]);
    let params = submit(&["--task", "init", "--arg", "hidden=16"])("params");
    let inputs: Vec<String> = [
        format!("params={params}"),
        format!("test={}", split("test")),
        format!("shard0={}", split("shard0")),
        format!("shard1={}", split("shard1")),
        format!("shard2={}", split("shard2")),
    ]
    .into();
    // The driver stays on A; its gradient tasks go wherever the scheduler places them.
    let mut train: Vec<&str> = vec![
        "submit",
        wasm::MLP_DIGITS,
        "--json",
        "--task",
        "train",
        "--on",
        &a.peer_id,
    ];
    for input in &inputs {
        train.extend(["--input", input.as_str()]);
    }
    train.extend(["--arg", "rounds=60", "--arg", "lr=1.0", "--timeout", "120s"]);
    let calm = json(&a.host(&train));
    let calm_params = calm["result"]["Ok"][0][1]
        .as_str()
        .expect("params")
        .to_owned();

    let mut run = Command::new(host_bin())
        .args(&train)
        .arg("--data-dir")
        .arg(&a.data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("host submit starts");
    // The driver reports each round as progress on stderr: C dies after the fifth, mid-run
    // on a fast machine or a slow one.
    let stderr = run.stderr.take().expect("piped stderr");
    let (tx, rounds) = mpsc::sync_channel(64);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("progress: ") && line.contains("round") {
                let _ = tx.send(line);
            }
        }
    });
    for _ in 0..5 {
        rounds
            .recv_timeout(Duration::from_secs(60))
            .expect("the driver reports its rounds");
    }
    drop(victim.take()); // SIGKILL C mid-run
    assert!(
        run.try_wait().unwrap().is_none(),
        "the run ended before the kill: the test is void"
    );
    let out = run.wait_with_output().expect("host submit ends");
    let faulted = json(&out);
    let faulted_params = faulted["result"]["Ok"][0][1]
        .as_str()
        .expect("params")
        .to_owned();

    let calm = mlp_params(&a, &calm_params, &root.path().join("calm.bin"));
    let faulted = mlp_params(&a, &faulted_params, &root.path().join("faulted.bin"));
    let scale = calm.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = calm
        .iter()
        .zip(&faulted)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        worst <= 1e-4 * scale,
        "parameters differ by {worst} (scale {scale})"
    );
}

#[test]
fn host_train_keeps_every_rounds_checkpoint_and_resumes_after_the_driver_node_dies() {
    let root = tempfile::tempdir().unwrap();
    let b = Joined::start(root.path(), "b", &["--slots", "1"]);
    let addr = b.addr.clone();
    let worker = ["--slots", "1", "--bootstrap", &addr];
    let mut nodes = [Some(Joined::start(root.path(), "c", &worker)), Some(b)];
    // The starter runs nothing itself: the driver lands on B or C.
    let s = Joined::start(root.path(), "s", &["--slots", "0", "--bootstrap", &addr]);
    wait_for_peers(&s, 2);
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../tasks/data/digits.csv.gz");
    let plot = root.path().join("curve.png");
    let plot = plot.to_str().unwrap();
    let train = |rounds: &str, resume: Option<&str>| {
        let mut args = vec![
            "train",
            wasm::MLP_DIGITS,
            "--data",
            data,
            "--shards",
            "2",
            "--hidden",
            "16",
            "--rounds",
            rounds,
            "--plot",
            plot,
            "--json",
        ];
        if let Some(cid) = resume {
            args.extend(["--resume", cid]);
        }
        json(&s.host(&args))
    };
    let first = train("4", None);
    let rounds = first["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 4, "{first}");
    for r in rounds {
        assert!(
            r["accuracy"].as_f64().is_some(),
            "evaluated every round: {r}"
        );
        assert!(r["peers"].as_u64().is_some_and(|p| p >= 1), "{r}");
        assert!(r["samples"].as_u64().is_some_and(|s| s > 1000), "{r}");
    }
    assert!(
        first["test_accuracy"].as_f64().is_some_and(|a| a > 0.2),
        "{first}"
    );
    let png = std::fs::read(plot).expect("the loss curve");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        rounds.iter().all(|r| r["checkpoint_cid"].is_string()),
        "{first}"
    );

    // A long run, followed live: kill -9 the driver's node once round 3 is reported.
    let mut live = Command::new(host_bin())
        .args(["train", wasm::MLP_DIGITS, "--data", data, "--shards", "2"])
        .args([
            "--hidden",
            "16",
            "--rounds",
            "120",
            "--eval-every",
            "0",
            "--plot",
            plot,
        ])
        .arg("--data-dir")
        .arg(&s.data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("host train starts");
    let stdout = live.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::sync_channel(1024);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut driver, mut checkpoint) = (None, None);
    while checkpoint.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("host train reports its rounds as they end");
        if let Some(peer) = line.strip_prefix("the driver runs on ") {
            driver = Some(peer.to_owned());
        }
        // `round    3  loss …  checkpoint <cid>`: this node has kept it before printing it.
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"round") && words.get(1) == Some(&"3") {
            checkpoint = words.last().map(|c| c.to_string());
        }
    }
    let (driver, checkpoint) = (driver.expect("the driver's peer"), checkpoint.unwrap());
    let victim = nodes
        .iter()
        .position(|n| n.as_ref().is_some_and(|n| n.peer_id == driver))
        .expect("the driver runs on B or C");
    drop(nodes[victim].take()); // kill -9
    // The run ends either way (the driver placed again on the other node, or a failure):
    // what matters is that the checkpoint outlives the driver's node.
    let deadline = Instant::now() + Duration::from_secs(120);
    while live.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "host train hangs after its driver died"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let resumed = train("5", Some(&checkpoint));
    let rounds: Vec<u64> = resumed["rounds"]
        .as_array()
        .expect("rounds")
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    assert_eq!(rounds, [4, 5], "{resumed}");
    assert_ne!(
        resumed["driver"].as_str(),
        Some(driver.as_str()),
        "{resumed}"
    );
    assert!(resumed["test_accuracy"].as_f64().is_some(), "{resumed}");
}

/// `--key`: a tenant other than the node. B runs the tenant's tasks only; A submits with the
/// tenant's key, and the output is the tenant's: A's own identity is denied it, the key gets
/// it.
#[test]
fn a_tenant_key_submits_as_its_tenant_and_owns_the_outputs() {
    let root = tempfile::tempdir().unwrap();
    let key = root.path().join("tenant.key");
    let made = Command::new(host_bin())
        .arg("keygen")
        .arg(&key)
        .output()
        .expect("host runs");
    let tenant = String::from_utf8_lossy(&made.stdout)
        .strip_prefix("tenant: ")
        .map(|t| t.trim().to_owned())
        .unwrap_or_else(|| panic!("{}", text(&made)));
    let b = Joined::start(
        root.path(),
        "b",
        &["--accept", "allowlist", "--allow", &tenant],
    );
    let a = Joined::start(root.path(), "a", &["--slots", "0", "--bootstrap", &b.addr]);
    wait_for_peers(&a, 1);
    let name = root.path().join("name.txt");
    std::fs::write(&name, "tenant").unwrap();
    let input = format!("name={}", name.display());
    let key = key.to_str().unwrap();

    let refused = a.host(&["submit", wasm::HELLO, "--input", &input]);
    assert!(
        text(&refused).contains(&format!(
            "tenant {} is not on this node's allowlist",
            a.peer_id
        )),
        "{}",
        text(&refused)
    );
    let out = a.host(&[
        "submit",
        wasm::HELLO,
        "--input",
        &input,
        "--key",
        key,
        "--json",
    ]);
    let report = json(&out);
    let cid = report["result"]["Ok"][0][1]
        .as_str()
        .expect("an output")
        .to_owned();
    let dest = root.path().join("out.txt");
    let dest = dest.to_str().unwrap();
    let theirs = a.host(&["get", &cid, "-o", dest]);
    assert!(!theirs.status.success(), "{}", text(&theirs));
    assert!(
        text(&theirs).contains(&format!(
            "no peer would serve block {cid} to tenant {}",
            a.peer_id
        )),
        "{}",
        text(&theirs)
    );
    let mine = a.host(&["get", &cid, "-o", dest, "--key", key]);
    assert!(mine.status.success(), "{}", text(&mine));
    assert_eq!(std::fs::read_to_string(dest).unwrap(), "Hello, tenant!");
}
