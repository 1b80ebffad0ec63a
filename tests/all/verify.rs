//! Verified results and claims the scheduler cannot check: deterministic tasks give the same
//! CIDs on every node, `--verify` catches a peer that lies about its outputs and never uses it
//! again, and a peer that advertises free slots but answers Busy cannot fail anyone's work.
//!
//! The liar and the always-Busy peer are real nodes whose answers to other peers pass through
//! a wrapper (`Node::start_with`), built here, not behind a build flag of the host.

use std::{
    path::Path,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use shoal_host::{
    control::{self, Peers},
    node::Node,
    runtime::{FailureKind, TaskSpec},
    store::BlockStore,
};
use shoal_p2p::{
    BlockRequest, BlockResponse, BoxFuture, Capacity, FailureKind as WireKind, InboundHandler,
    PeerId, ProgressRecord, TaskOutcome,
};
use shoal_task_artifacts as wasm;

use crate::util::{connect, node, node_config, spec_for};

/// How a wrapped node answers other peers' tasks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behaviour {
    /// Runs them, then swaps every output for bytes of its own.
    Liar,
    /// Refuses them all as Busy.
    AlwaysBusy,
}

/// A real node's inbound handler, wrapped: it advertises 1000 free slots whatever it has,
/// and answers tasks as its [`Behaviour`] says. Blocks and progress go to the real node.
struct Wrapped {
    inner: Arc<dyn InboundHandler>,
    behaviour: Behaviour,
    /// The node's store, once it runs: where the liar keeps its forged outputs.
    store: Arc<OnceLock<Arc<BlockStore>>>,
    /// Tasks other peers sent it.
    tasks: Arc<AtomicUsize>,
}

impl InboundHandler for Wrapped {
    fn block(&self, from: PeerId, request: BlockRequest) -> BoxFuture<'_, BlockResponse> {
        self.inner.block(from, request)
    }

    fn task(&self, from: PeerId, spec: shoal_p2p::TaskSpec) -> BoxFuture<'_, TaskOutcome> {
        self.tasks.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if self.behaviour == Behaviour::AlwaysBusy {
                return TaskOutcome::failed(WireKind::Busy, "always busy");
            }
            let mut outcome = self.inner.task(from, spec).await;
            if let TaskOutcome::Ok { outputs, .. } = &mut outcome {
                let store = self.store.get().expect("the liar's node runs");
                for (name, cid) in outputs.iter_mut() {
                    let forged = format!("not the real {name}");
                    *cid = store.put_bytes(forged.as_bytes()).expect("forged output");
                }
            }
            outcome
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

    fn progress(&self, from: PeerId, record: ProgressRecord) {
        self.inner.progress(from, record);
    }
}

/// A one-slot node whose answers to other peers are wrapped; and the count of tasks it got.
pub(crate) async fn wrapped(
    root: &Path,
    name: &str,
    behaviour: Behaviour,
) -> (Node, Arc<AtomicUsize>) {
    let store = Arc::new(OnceLock::new());
    let tasks = Arc::new(AtomicUsize::new(0));
    let (store_slot, counter) = (store.clone(), tasks.clone());
    let node = Node::start_with(node_config(root, name, 1), move |inner| {
        Arc::new(Wrapped {
            inner,
            behaviour,
            store: store_slot,
            tasks: counter,
        })
    })
    .await
    .expect("wrapped node starts");
    store.set(node.store().clone()).ok();
    (node, tasks)
}

/// A hello spec whose module and input are in `node`'s store.
async fn hello_spec(node: &Node) -> TaskSpec {
    let mut spec = spec_for(node, wasm::HELLO, &[]).await;
    spec.inputs = vec![(
        "name".into(),
        node.store().put_bytes(b"verify").expect("input"),
    )];
    spec
}

/// The matmul task on the host's tensors, at an awkward size.
async fn matmul_spec(node: &Node) -> TaskSpec {
    spec_for(node, wasm::MATMUL, &[("n", "67"), ("seed", "5")]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deterministic_tensor_task_gives_the_same_cids_on_every_node() {
    let root = tempfile::tempdir().unwrap();
    let a = node(root.path(), "a", 0).await;
    let (b, c) = (
        node(root.path(), "b", 1).await,
        node(root.path(), "c", 2).await,
    );
    let b_id = connect(&a, &b).await;
    let c_id = connect(&a, &c).await;
    let spec = TaskSpec {
        deterministic: true,
        ..matmul_spec(&a).await
    };
    let mut seen = Vec::new();
    for peer in [b_id, c_id] {
        let placed = a.submit(spec.clone(), Some(peer)).await;
        let report = placed.report;
        let outputs = report
            .result
            .unwrap_or_else(|f| panic!("matmul on {peer}: {f}\n{}", report.logs));
        let backend = report
            .stats
            .backend
            .expect("a tensor task names its backend");
        assert!(
            backend.starts_with("cpu deterministic ("),
            "a deterministic task runs on the deterministic backend, not {backend}"
        );
        assert_eq!(report.stats.executed_by, Some(peer.to_string()));
        seen.push(outputs);
    }
    assert_eq!(seen[0], seen[1], "two nodes, one set of output CIDs");

    // Without the flag the node's own device runs it (its fast cpu kernels here).
    let plain = a.submit(matmul_spec(&a).await, Some(b_id)).await.report;
    let backend = plain.stats.backend.expect("a backend");
    assert!(!backend.contains("deterministic"), "{backend}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_catches_a_lying_peer_and_never_places_on_it_again() {
    let root = tempfile::tempdir().unwrap();
    let a = node(root.path(), "a", 0).await;
    let (b, c) = (
        node(root.path(), "b", 1).await,
        node(root.path(), "c", 1).await,
    );
    let (liar, liar_tasks) = wrapped(root.path(), "liar", Behaviour::Liar).await;
    let (b_id, c_id) = (connect(&a, &b).await, connect(&a, &c).await);
    let liar_id = connect(&a, &liar).await;
    let spec = matmul_spec(&a).await;

    // What an honest peer computes, run once on its own.
    let honest = TaskSpec {
        deterministic: true,
        ..spec.clone()
    };
    let truth = a.submit(honest, Some(b_id)).await.report.result.unwrap();

    // The liar advertises the most free slots, so it is among the first two runs: they
    // disagree, a third peer breaks the tie, and the liar is the minority.
    let placed = a.submit_verified(spec.clone(), 2, None).await;
    let outputs = placed
        .report
        .result
        .clone()
        .unwrap_or_else(|f| panic!("verified run failed: {f}"));
    assert_eq!(outputs, truth, "the user gets the honest outputs");
    assert_eq!(
        liar_tasks.load(Ordering::SeqCst),
        1,
        "the liar ran one of them"
    );
    let mut agreed = placed.verified_by.clone();
    agreed.sort();
    let mut honest_ids = vec![b_id, c_id];
    honest_ids.sort();
    assert_eq!(agreed, honest_ids, "both honest peers agreed");
    assert!(
        placed
            .report
            .stats
            .backend
            .unwrap()
            .starts_with("cpu deterministic"),
        "a verified task runs deterministic"
    );
    let faulty = a.faulty_peers();
    assert_eq!(faulty.len(), 1, "{faulty:?}");
    assert_eq!(faulty[0].0, liar_id);
    assert!(
        faulty[0].1.contains("where 2 of 3 peers gave"),
        "{}",
        faulty[0].1
    );

    // Later verified work never goes to the liar, however many slots it advertises...
    for _ in 0..3 {
        let placed = a.submit_verified(spec.clone(), 2, None).await;
        assert_eq!(placed.report.result.unwrap(), truth);
        assert!(!placed.verified_by.contains(&liar_id));
    }
    // ...nor does plain work.
    let plain = a.submit(hello_spec(&a).await, None).await;
    assert!(plain.report.result.is_ok());
    assert_ne!(plain.peer, liar_id);
    assert_eq!(
        liar_tasks.load(Ordering::SeqCst),
        1,
        "the liar got nothing more"
    );

    // Three distinct trustworthy peers are no longer there.
    let failure = a
        .submit_verified(spec, 3, None)
        .await
        .report
        .result
        .expect_err("only two peers are left");
    assert_eq!(failure.kind, FailureKind::Lost);
    assert!(
        failure.message.contains("2 available (1 marked faulty)"),
        "{failure}"
    );

    // `host peers` (the control socket) marks it.
    control::serve(a.clone()).await.unwrap();
    let data_dir = a.config().data_dir.clone();
    let peers = tokio::task::spawn_blocking(move || control::call(&data_dir, Peers, |_| {}))
        .await
        .unwrap()
        .unwrap();
    let marked: Vec<_> = peers.iter().filter(|p| p.faulty.is_some()).collect();
    assert_eq!(marked.len(), 1, "{peers:?}");
    assert_eq!(marked[0].peer, liar_id.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_that_disagree_with_no_majority_are_a_typed_failure() {
    let root = tempfile::tempdir().unwrap();
    let a = node(root.path(), "a", 0).await;
    let b = node(root.path(), "b", 1).await;
    let (liar, _) = wrapped(root.path(), "liar", Behaviour::Liar).await;
    let (b_id, liar_id) = (connect(&a, &b).await, connect(&a, &liar).await);
    // Two peers, one lying: the tie-breaking run finds no third peer.
    let placed = a.submit_verified(hello_spec(&a).await, 2, None).await;
    let failure = placed.report.result.expect_err("no majority");
    assert_eq!(failure.kind, FailureKind::TaskError, "{failure}");
    assert!(failure.message.contains("disagreed"), "{failure}");
    for peer in [b_id, liar_id] {
        assert!(
            failure.message.contains(&format!("{peer} → greeting=")),
            "{failure}"
        );
    }
    assert!(a.faulty_peers().is_empty(), "no majority marks no one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_always_answers_busy_fails_no_submission() {
    let root = tempfile::tempdir().unwrap();
    let a = node(root.path(), "a", 0).await;
    let b = node(root.path(), "b", 2).await;
    let (busy, busy_tasks) = wrapped(root.path(), "busy", Behaviour::AlwaysBusy).await;
    let b_id = connect(&a, &b).await;
    let busy_id = connect(&a, &busy).await;
    let spec = hello_spec(&a).await;
    let started = Instant::now();
    // One after another, then ten at once.
    for _ in 0..10 {
        let placed = a.submit(spec.clone(), None).await;
        assert!(placed.report.result.is_ok(), "{:?}", placed.report.result);
        assert_eq!(placed.peer, b_id);
    }
    let burst: Vec<_> = (0..10)
        .map(|_| {
            let (a, spec) = (a.clone(), spec.clone());
            tokio::spawn(async move { a.submit(spec, None).await })
        })
        .collect();
    for submit in burst {
        let placed = submit.await.unwrap();
        assert!(placed.report.result.is_ok(), "{:?}", placed.report.result);
        assert_eq!(placed.peer, b_id);
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "20 submissions took {took:?}"
    );
    // Backed off after its first Busy, it is asked again only once its interval passes.
    let asked = busy_tasks.load(Ordering::SeqCst);
    assert!(
        (1..=12).contains(&asked),
        "the busy peer was asked {asked} times in {took:?}"
    );
    // Asked once more, it is left out at once, and the task still runs.
    let placed = a.submit(spec, None).await;
    assert!(placed.report.result.is_ok());
    assert!(a.backed_off(&busy_id).is_some(), "it is backed off");
}

/// `--verify 2` against a plain submit of a small task on a 3-node in-process mesh: the
/// median of 20 each, interleaved. A measurement, not a check:
/// `cargo nextest run -p shoal-host --test all verify::cost --run-ignored only --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn cost_of_verify_2_against_a_plain_submit() {
    let root = tempfile::tempdir().unwrap();
    let a = node(root.path(), "a", 1).await;
    let (b, c) = (
        node(root.path(), "b", 1).await,
        node(root.path(), "c", 1).await,
    );
    let b_id = connect(&a, &b).await;
    connect(&a, &c).await;
    connect(&b, &c).await;
    for (name, spec) in [
        ("hello", hello_spec(&a).await),
        ("matmul n=67", matmul_spec(&a).await),
    ] {
        let deterministic = TaskSpec {
            deterministic: true,
            ..spec.clone()
        };
        // Warm every node's module cache and backends.
        for _ in 0..3 {
            a.submit_verified(spec.clone(), 3, None).await;
        }
        let (mut plain, mut remote, mut det, mut verified) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..20 {
            let t = Instant::now();
            assert!(a.submit(spec.clone(), None).await.report.result.is_ok());
            plain.push(t.elapsed());
            let t = Instant::now();
            assert!(
                a.submit(spec.clone(), Some(b_id))
                    .await
                    .report
                    .result
                    .is_ok()
            );
            remote.push(t.elapsed());
            let t = Instant::now();
            assert!(
                a.submit(deterministic.clone(), None)
                    .await
                    .report
                    .result
                    .is_ok()
            );
            det.push(t.elapsed());
            let t = Instant::now();
            assert!(
                a.submit_verified(spec.clone(), 2, None)
                    .await
                    .report
                    .result
                    .is_ok()
            );
            verified.push(t.elapsed());
        }
        let median = |mut v: Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let (p, r, d, v) = (median(plain), median(remote), median(det), median(verified));
        println!(
            "{name}: plain {p:?} (placed; on a remote peer {r:?}), deterministic {d:?}, \
             --verify 2 {v:?} ({:.2}x plain, {:.2}x remote)",
            v.as_secs_f64() / p.as_secs_f64(),
            v.as_secs_f64() / r.as_secs_f64()
        );
    }
}

/// The deterministic backend against the fast cpu one on the matmuls of an mlp-digits
/// gradient step (1,346 rows, 64-64-10): median of 20 each. A measurement, not a check.
#[test]
#[ignore = "a measurement; run by hand"]
fn cost_of_the_deterministic_backend_on_mlp_matmuls() {
    use shoal_host::compute::{
        Backend, CpuBackend, DeterministicCpuBackend, OpBudget, Shape, TensorOp,
    };
    let backends: [(&str, Arc<dyn Backend>); 2] = [
        ("fast cpu", Arc::new(CpuBackend::new())),
        ("deterministic", Arc::new(DeterministicCpuBackend::new())),
    ];
    let mm = |trans_a, trans_b| TensorOp::Matmul { trans_a, trans_b };
    // (what, op, a's shape, b's shape)
    let ops = [
        ("X·W1 1346x64·64x64", mm(false, false), (1346, 64), (64, 64)),
        ("H·W2 1346x64·64x10", mm(false, false), (1346, 64), (64, 10)),
        (
            "dZ2·W2ᵀ 1346x10·(64x10)ᵀ",
            mm(false, true),
            (1346, 10),
            (64, 10),
        ),
        (
            "Xᵀ·dZ1 (1346x64)ᵀ·1346x64",
            mm(true, false),
            (1346, 64),
            (1346, 64),
        ),
        (
            "Hᵀ·dZ2 (1346x64)ᵀ·1346x10",
            mm(true, false),
            (1346, 64),
            (1346, 10),
        ),
    ];
    let budget = OpBudget::unlimited();
    for (what, op, (ar, ac), (br, bc)) in ops {
        let mut line = format!("{what}:");
        for (name, backend) in &backends {
            let fill = |r: u32, c: u32| (0..r * c).map(|i| (i % 17) as f32 / 17.0).collect();
            let a = backend.upload(fill(ar, ac), Shape::new(ar, ac)).unwrap();
            let b = backend.upload(fill(br, bc), Shape::new(br, bc)).unwrap();
            let mut times: Vec<Duration> = (0..23)
                .map(|_| {
                    let t = Instant::now();
                    let c = backend.execute(op, &[&a, &b], &budget).unwrap();
                    let took = t.elapsed();
                    drop(c);
                    took
                })
                .skip(3)
                .collect();
            times.sort();
            line.push_str(&format!(" {name} {:?}", times[times.len() / 2]));
        }
        println!("{line}");
    }
}

/// `host submit --verify 2` through real `host join` processes: two honest peers agree, the
/// CLI says so, and misuse is refused as usage.
#[test]
fn host_submit_verify_runs_on_two_processes_and_says_who_agreed() {
    use std::{
        io::{BufRead, BufReader},
        process::{Child, Command, Output, Stdio},
    };

    /// A `host join` process, killed on drop, with its peer id and address.
    struct Joined(Child, String, String);
    impl Drop for Joined {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let root = tempfile::tempdir().unwrap();
    let join = |name: &str, extra: &[&str]| {
        let mut child = Command::new(crate::cli::host_bin())
            .args(["join", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .arg("--data-dir")
            .arg(root.path().join(name))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("host join starts");
        // Read on a thread to the end: a closed pipe would kill the node's next print.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.try_send(line);
            }
        });
        let (mut id, mut addr) = (String::new(), String::new());
        while addr.is_empty() {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) else {
                break;
            };
            if let Some(x) = line.strip_prefix("peer id: ") {
                id = x.to_owned();
            }
            if let Some(x) = line.strip_prefix("listening on ") {
                addr = x.to_owned();
            }
        }
        assert!(!addr.is_empty(), "host join printed its address");
        Joined(child, id, addr)
    };
    let host = |args: &[&str]| -> Output {
        Command::new(crate::cli::host_bin())
            .args(args)
            .arg("--data-dir")
            .arg(root.path().join("a"))
            .output()
            .expect("host runs")
    };
    let text = |out: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let b = join("b", &["--slots", "1", "--device", "cpu"]);
    let c = join(
        "c",
        &["--slots", "1", "--device", "cpu", "--bootstrap", &b.2],
    );
    let _a = join(
        "a",
        &["--slots", "0", "--bootstrap", &b.2, "--bootstrap", &c.2],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let peers = text(&host(&["peers"]));
        if peers.contains(&b.1) && peers.contains(&c.1) {
            break;
        }
        assert!(Instant::now() < deadline, "a never saw b and c: {peers}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = host(&["submit", wasm::MATMUL, "--arg", "n=33", "--verify", "2"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("status: ok"), "{said}");
    assert!(said.contains("verified: 2 peers agreed"), "{said}");
    assert!(said.contains(&b.1) && said.contains(&c.1), "{said}");
    assert!(!text(&host(&["peers"])).contains("FAULTY"));

    for misuse in [
        &["submit", wasm::HELLO, "--verify", "2", "--on", &b.1][..],
        &["submit", wasm::HELLO, "--verify", "1"][..],
        &["submit", wasm::HELLO, "--verify", "17"][..],
    ] {
        let out = host(misuse);
        assert_eq!(out.status.code(), Some(2), "{misuse:?}: {}", text(&out));
    }
}

/// `--verify-within`: a matmul on a GPU node (lavapipe here, a real GPU elsewhere) is checked
/// against a deterministic CPU run on another peer, within a relative 1e-4, and accepted
/// though its bits may differ. Pinned on a liar instead, the check disagrees, a second
/// deterministic run sides with the first, the liar is marked faulty and the answer is the
/// deterministic one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_outputs_are_checked_against_the_deterministic_backend_within_a_tolerance() {
    let root = tempfile::tempdir().unwrap();
    let a = node(root.path(), "a", 0).await;
    let gpu = Node::start(shoal_host::node::NodeConfig {
        device: shoal_host::compute::DeviceChoice::Gpu,
        ..node_config(root.path(), "gpu", 1)
    })
    .await
    .unwrap_or_else(|e| {
        panic!("a GPU node needs a wgpu adapter (Debian: mesa-vulkan-drivers): {e}")
    });
    let (b, c) = (
        node(root.path(), "b", 1).await,
        node(root.path(), "c", 1).await,
    );
    let (liar, _) = wrapped(root.path(), "liar", Behaviour::Liar).await;
    let gpu_id = connect(&a, &gpu).await;
    let b_id = connect(&a, &b).await;
    connect(&a, &c).await;
    let spec = matmul_spec(&a).await;
    // What an honest peer computes (pinned: the liar advertises the most free slots).
    let truth = a
        .submit(
            TaskSpec {
                deterministic: true,
                ..spec.clone()
            },
            Some(b_id),
        )
        .await
        .report
        .result
        .unwrap();

    // An MLP gradient (matmuls, tanh, softmax): the GPU's bits differ from the CPU's.
    let data = node(root.path(), "data", 1).await;
    let inputs = crate::training::training_inputs(&data, &a, 1, 16).await;
    let grad = TaskSpec {
        module: a.put_path(wasm::MLP_DIGITS.into(), false).await.unwrap(),
        task: Some("grad".into()),
        inputs: vec![
            ("params".into(), inputs[0].1),
            (
                "shard".into(),
                inputs.iter().find(|(n, _)| n == "shard0").unwrap().1,
            ),
        ],
        ..spec.clone()
    };
    let reference = a
        .submit(
            TaskSpec {
                deterministic: true,
                ..grad.clone()
            },
            Some(b_id),
        )
        .await
        .report
        .result
        .unwrap();
    let checked = a.submit_checked(grad, Some(gpu_id), 1e-4, None).await;
    let report = &checked.report;
    let outputs = report
        .result
        .clone()
        .unwrap_or_else(|f| panic!("{f}\n{}", report.logs));
    assert_eq!(checked.peer, gpu_id, "faulty: {:?}", a.faulty_peers());
    let backend = report.stats.backend.clone().unwrap_or_default();
    assert!(backend.starts_with("wgpu"), "ran on the GPU: {backend}");
    assert_eq!(checked.verified_by.len(), 2, "{:?}", checked.verified_by);
    assert_ne!(
        outputs, reference,
        "the GPU's gradient differs in its bits, yet passes the check"
    );

    // The liar joins only now: advertising the most free slots, it would otherwise be
    // chosen as the deterministic checker above (and be caught there instead).
    let liar_id = connect(&a, &liar).await;
    let caught = a.submit_checked(spec, Some(liar_id), 1e-4, None).await;
    assert_eq!(
        caught
            .report
            .result
            .clone()
            .unwrap_or_else(|f| panic!("{f}")),
        truth,
        "the answer is the deterministic runs'"
    );
    let faulty = a.faulty_peers();
    let (_, why) = faulty
        .iter()
        .find(|(p, _)| *p == liar_id)
        .unwrap_or_else(|| panic!("the liar is marked faulty: {faulty:?}"));
    assert!(
        why.contains("not within 0.0001 of two deterministic runs'"),
        "{why}"
    );
}
