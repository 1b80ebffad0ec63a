//! Tenants and trust: every spec is signed by its tenant, a node runs other peers' tasks only
//! under its policy (`--accept`, `--allow`, `--open-max-*`), and a refusal is a typed `Denied`
//! that names the reason, given before anything is fetched. A tenant's blocks are served only
//! to those acting for it, and a refusal does not say whether the block exists.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use shoal_host::{
    compute::DeviceChoice,
    node::{Accept, Node, NodeConfig, Policy},
    runtime::{FailureKind, Limits, TaskReport, TaskSpec},
    sched::{now_ms, sign_for, spec_to_wire},
    store::Cid,
};
use shoal_p2p::{
    BlockRequest, BlockResponse, BoxFuture, Capacity, Credential, Error as NetError,
    FailureKind as WireKind, InboundHandler, Keypair, PeerId, ProgressRecord, TaskAuth,
    TaskOutcome, Verified,
};
use shoal_task_artifacts as wasm;

use crate::util::{connect, node, node_config, spec_for};

/// An in-process node on 127.0.0.1 with this policy.
async fn node_with(root: &Path, name: &str, slots: usize, policy: Policy) -> Node {
    Node::start(NodeConfig {
        policy,
        ..node_config(root, name, slots)
    })
    .await
    .expect("node starts")
}

/// A node's identity, read from its data dir as the node did.
fn identity(root: &Path, name: &str) -> Keypair {
    let bytes = std::fs::read(root.join(name).join("identity.key")).expect("identity key");
    Keypair::from_protobuf_encoding(&bytes).expect("a key")
}

/// The failure a report carries, or a test failure.
fn denied(report: &TaskReport) -> &str {
    match &report.result {
        Err(f) if f.kind == FailureKind::Denied => &f.message,
        other => panic!("expected Denied, got {other:?}\nlogs: {}", report.logs),
    }
}

/// The wire outcome's failure message, when it is `Denied`.
fn denied_on_wire(outcome: &TaskOutcome) -> &str {
    match outcome {
        TaskOutcome::Failed {
            kind: WireKind::Denied,
            message,
            ..
        } => message,
        other => panic!("expected Denied, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowlist_node_refuses_a_stranger_and_runs_an_allowed_tenant() {
    let root = tempfile::tempdir().unwrap();
    let friend = node(root.path(), "friend", 0).await;
    let stranger = node(root.path(), "stranger", 0).await;
    let policy = Policy {
        accept: Accept::Allowlist,
        allow: [friend.peer_id()].into(),
        ..Policy::default()
    };
    let b = node_with(root.path(), "b", 1, policy).await;
    let b_id = connect(&friend, &b).await;
    connect(&stranger, &b).await;

    let refused = stranger
        .submit(spec_for(&stranger, wasm::NOOP, &[]).await, Some(b_id))
        .await;
    assert_eq!(
        denied(&refused.report),
        format!(
            "tenant {} is not on this node's allowlist",
            stranger.peer_id()
        )
    );
    // Unpinned, the stranger's task finds no other peer, and the refusal is the answer.
    let unpinned = stranger
        .submit(spec_for(&stranger, wasm::NOOP, &[]).await, None)
        .await;
    assert!(denied(&unpinned.report).contains("allowlist"));

    // Allowed tenants get the node's full caps: more than the open 256 MiB.
    let mut spec = spec_for(&friend, wasm::NOOP, &[]).await;
    spec.limits.memory_bytes = 1 << 30;
    let ran = friend.submit(spec, Some(b_id)).await;
    assert!(ran.report.result.is_ok(), "{:?}", ran.report.result);
    assert_eq!(ran.peer, b_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_signature_is_denied_before_anything_is_fetched() {
    let root = tempfile::tempdir().unwrap();
    let a = node(root.path(), "a", 0).await;
    let b = node(root.path(), "b", 1).await;
    let b_id = connect(&a, &b).await;
    let key = identity(root.path(), "a");
    let spec = spec_for(&a, wasm::NOOP, &[]).await;

    let mut tampered = spec_to_wire(&spec, 0);
    sign_for(&mut tampered, &key, b_id).unwrap();
    tampered.auth.nonce ^= 1;
    let outcome = a.net().submit_task(b_id, tampered).await.unwrap();
    assert_eq!(
        denied_on_wire(&outcome),
        "the task's signature does not verify"
    );
    // A changed spec is another task: the delegation it carries names the one signed.
    let mut changed = spec_to_wire(&spec, 0);
    sign_for(&mut changed, &key, b_id).unwrap();
    changed.limits.memory_bytes *= 2;
    let outcome = a.net().submit_task(b_id, changed).await.unwrap();
    assert_eq!(
        denied_on_wire(&outcome),
        format!("tenant {}'s delegation is for another task", a.peer_id())
    );
    let mut unsigned = spec_to_wire(&spec, 0);
    *unsigned.auth = TaskAuth::default();
    let outcome = a.net().submit_task(b_id, unsigned).await.unwrap();
    assert_eq!(
        denied_on_wire(&outcome),
        "the tenant key is missing or malformed"
    );
    // Signed by another key than the tenant it names.
    let mut forged = spec_to_wire(&spec, 0);
    sign_for(&mut forged, &key, b_id).unwrap();
    let b_key = identity(root.path(), "b").public();
    forged.auth.credential.tenant = b_key.encode_protobuf();
    let outcome = a.net().submit_task(b_id, forged).await.unwrap();
    assert_eq!(
        denied_on_wire(&outcome),
        format!(
            "link 0 of tenant {}'s delegation chain is forged or out of place",
            b_key.to_peer_id()
        )
    );
    assert!(
        !b.store().has_block(&spec.module),
        "the executor fetched nothing for a spec it refused"
    );

    // As the scheduler hands a task over: its files are granted to its tenant, here the
    // node's own identity, so that the executor may fetch them.
    a.store()
        .grant(&spec.module, &a.peer_id().to_string())
        .unwrap();
    let mut honest = spec_to_wire(&spec, 0);
    sign_for(&mut honest, &key, b_id).unwrap();
    let outcome = a.net().submit_task(b_id, honest).await.unwrap();
    assert!(matches!(outcome, TaskOutcome::Ok { .. }), "{outcome:?}");
    assert!(b.store().has_block(&spec.module));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tenant_over_its_task_cap_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let a = node(root.path(), "a", 0).await;
    let policy = Policy {
        open_max_tasks: 2,
        ..Policy::default()
    };
    let b = node_with(root.path(), "b", 4, policy).await;
    let b_id = connect(&a, &b).await;
    let wait = spec_for(&a, wasm::WAIT, &[("ms", "3000")]).await;
    let holding: Vec<_> = (0..2)
        .map(|_| {
            let (a, wait) = (a.clone(), wait.clone());
            tokio::spawn(async move { a.submit(wait, Some(b_id)).await })
        })
        .collect();
    // Both run on B (its free slots fall to 2) before the third is sent.
    for _ in 0..200 {
        if b.capacity().free_slots == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.capacity().free_slots, 2, "two waits run on B");
    let third = a.submit(wait.clone(), Some(b_id)).await;
    assert_eq!(
        denied(&third.report),
        format!(
            "tenant {} already runs 2 tasks here, its limit",
            a.peer_id()
        )
    );
    for held in holding {
        let placed = held.await.unwrap();
        assert!(placed.report.result.is_ok(), "{:?}", placed.report.result);
    }
    let again = a.submit(wait, Some(b_id)).await;
    assert!(again.report.result.is_ok(), "a freed place is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_task_over_the_memory_cap_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let a = node(root.path(), "a", 0).await;
    let b = node(root.path(), "b", 1).await;
    let b_id = connect(&a, &b).await;
    let mut spec = spec_for(&a, wasm::NOOP, &[]).await;
    spec.limits.memory_bytes = 4 << 30;
    let refused = a.submit(spec.clone(), Some(b_id)).await;
    assert_eq!(
        denied(&refused.report),
        "task asks 4 GiB of memory, open tenants get at most 256 MiB on this node"
    );
    assert!(!b.store().has_block(&spec.module), "nothing was fetched");
    spec.limits.memory_bytes = 256 << 20;
    let ran = a.submit(spec, Some(b_id)).await;
    assert!(ran.report.result.is_ok(), "{:?}", ran.report.result);
}

/// `spec` as a driver's node (`driver_key`, holding `held`) sends it to `executor` as a
/// subtask.
fn subtask(
    spec: &TaskSpec,
    held: &Credential,
    driver_key: &Keypair,
    executor: PeerId,
) -> shoal_p2p::TaskSpec {
    let mut wire = spec_to_wire(spec, 0);
    wire.depth = 1;
    wire.auth.credential = held.clone();
    sign_for(&mut wire, driver_key, executor).unwrap();
    wire
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_replayed_and_widened_delegations_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let tenant = node(root.path(), "tenant", 0).await;
    let driver = node(root.path(), "driver", 0).await;
    let other = node(root.path(), "other", 0).await;
    // B and C run the tenant's tasks only: a subtask is let in only as the tenant's.
    let policy = Policy {
        accept: Accept::Allowlist,
        allow: [tenant.peer_id()].into(),
        ..Policy::default()
    };
    let b = node_with(root.path(), "b", 1, policy.clone()).await;
    let c = node_with(root.path(), "c", 1, policy).await;
    let b_id = connect(&driver, &b).await;
    let c_id = connect(&driver, &c).await;
    connect(&other, &b).await;
    let (tenant_key, driver_key, other_key) = (
        identity(root.path(), "tenant"),
        identity(root.path(), "driver"),
        identity(root.path(), "other"),
    );
    let spec = spec_for(&driver, wasm::NOOP, &[]).await;
    // The driver's node hands the subtask's module over, as its scheduler does.
    driver
        .store()
        .grant(&spec.module, &tenant.peer_id().to_string())
        .unwrap();
    let driver_task = spec_to_wire(&spec, 0).id();
    let held = |expires_at_ms| {
        Credential::of(&tenant_key)
            .delegate(
                &tenant_key,
                driver.peer_id(),
                expires_at_ms,
                driver_task,
                16,
            )
            .unwrap()
    };
    let later = now_ms() + 60_000;
    let refused = |outcome: &TaskOutcome| denied_on_wire(outcome).to_owned();

    let expired = subtask(&spec, &held(now_ms() - 1), &driver_key, b_id);
    let why = refused(&driver.net().submit_task(b_id, expired).await.unwrap());
    assert!(
        why.contains(&format!("tenant {}'s delegation expired", tenant.peer_id())),
        "{why}"
    );

    // A chain the driver's node holds, extended by a node that does not hold it.
    let mut stolen = subtask(&spec, &held(later), &driver_key, b_id);
    let link = &mut stolen.auth.credential.chain[1];
    link.audience = b_id.to_bytes();
    link.signature = other_key.sign(&link.signed_bytes()).unwrap();
    stolen.sign(&other_key, now_ms(), 3).unwrap();
    let why = refused(&other.net().submit_task(b_id, stolen).await.unwrap());
    assert_eq!(
        why,
        format!(
            "link 1 of tenant {}'s delegation chain is forged or out of place",
            tenant.peer_id()
        )
    );

    // Widened: the driver's node gives the subtask more subtasks than it was given itself.
    let mut widened = subtask(&spec, &held(later), &driver_key, b_id);
    let link = &mut widened.auth.credential.chain[1];
    link.max_subtasks = 17;
    link.signature = driver_key.sign(&link.signed_bytes()).unwrap();
    widened.sign(&driver_key, now_ms(), 4).unwrap();
    let why = refused(&driver.net().submit_task(b_id, widened).await.unwrap());
    assert_eq!(
        why,
        format!(
            "link 1 of tenant {}'s delegation chain is wider than its parent",
            tenant.peer_id()
        )
    );
    assert!(!b.store().has_block(&spec.module), "nothing was fetched");

    // The honest subtask runs once; sent again to B, or on to C, it is refused.
    let honest = subtask(&spec, &held(later), &driver_key, b_id);
    let outcome = driver
        .net()
        .submit_task(b_id, honest.clone())
        .await
        .unwrap();
    assert!(matches!(outcome, TaskOutcome::Ok { .. }), "{outcome:?}");
    let why = refused(
        &driver
            .net()
            .submit_task(b_id, honest.clone())
            .await
            .unwrap(),
    );
    assert_eq!(why, "this signed task was already received here: a replay");
    let why = refused(&driver.net().submit_task(c_id, honest).await.unwrap());
    assert_eq!(
        why,
        format!(
            "tenant {}'s delegation is for {b_id}, not for {c_id}",
            tenant.peer_id()
        )
    );
}

/// A real node's answers to other peers, counting the tasks it ran and refused.
struct Counting {
    inner: Arc<dyn InboundHandler>,
    ran: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

impl InboundHandler for Counting {
    fn block(&self, from: PeerId, request: BlockRequest) -> BoxFuture<'_, BlockResponse> {
        self.inner.block(from, request)
    }

    fn task(&self, from: PeerId, spec: shoal_p2p::TaskSpec) -> BoxFuture<'_, TaskOutcome> {
        Box::pin(async move {
            let outcome = self.inner.task(from, spec).await;
            let counter = match &outcome {
                TaskOutcome::Ok { .. } => &self.ran,
                TaskOutcome::Failed { .. } => &self.refused,
            };
            counter.fetch_add(1, Ordering::SeqCst);
            outcome
        })
    }

    fn capacity(&self) -> BoxFuture<'_, Capacity> {
        self.inner.capacity()
    }

    fn progress(&self, from: PeerId, record: ProgressRecord) {
        self.inner.progress(from, record);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drivers_subtasks_run_in_its_tenants_name() {
    let root = tempfile::tempdir().unwrap();
    let tenant = node(root.path(), "tenant", 0).await;
    let b = node(root.path(), "b", 1).await;
    // C runs the tenant's tasks only, not B's: B's subtasks run there only as the tenant's.
    let (ran, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (r, f) = (ran.clone(), refused.clone());
    let c = Node::start_with(
        NodeConfig {
            data_dir: root.path().join("c"),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("an address")],
            bootstrap: vec![],
            mdns: false,
            slots: 2,
            device: DeviceChoice::Cpu,
            store_limit: None,
            memory_budget: None,
            policy: Policy {
                accept: Accept::Allowlist,
                allow: [tenant.peer_id()].into(),
                ..Policy::default()
            },
        },
        move |inner| {
            Arc::new(Counting {
                inner,
                ran: r,
                refused: f,
            })
        },
    )
    .await
    .expect("node starts");
    let b_id = connect(&tenant, &b).await;
    connect(&b, &c).await;
    let mut spec = spec_for(&tenant, wasm::FANOUT, &[("n", "12")]).await;
    spec.task = Some("fanout".into());
    let placed = tenant.submit(spec, Some(b_id)).await;
    let outputs = placed
        .report
        .result
        .as_ref()
        .unwrap_or_else(|f| panic!("{f}\n{}", placed.report.logs));
    tenant.fetch_file(outputs[0].1, &[b_id]).await.unwrap();
    let sum = tenant.store().read_file(&outputs[0].1).unwrap();
    let expected: u64 = (0..12u64).map(|i| i * i).sum();
    assert_eq!(String::from_utf8_lossy(&sum), expected.to_string());
    assert!(ran.load(Ordering::SeqCst) > 0, "some subtasks ran on C");
    assert_eq!(refused.load(Ordering::SeqCst), 0, "C refused none");
}

/// What signing and verifying one spec costs (median of 1000 each, a realistic spec with
/// inputs, args and a delegation). A measurement, not an assertion:
/// `cargo nextest run -p shoal-host --test all signing_cost --run-ignored only --no-capture`.
#[test]
#[ignore = "a measurement; run it by name"]
fn signing_cost() {
    let key = Keypair::generate_ed25519();
    let peer = PeerId::random();
    let spec = TaskSpec {
        module: Cid([1; 32]),
        task: Some("grad".into()),
        inputs: (0..4)
            .map(|i| (format!("shard{i}"), Cid([i; 32])))
            .collect(),
        args: (0..8)
            .map(|i| (format!("arg{i}"), "0.125".to_owned()))
            .collect(),
        limits: Limits::default(),
        depth: 0,
        deterministic: false,
        tenant: None,
    };
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let mut wire = spec_to_wire(&spec, 0);
    let signing = (0..1000)
        .map(|_| {
            let mut w = spec_to_wire(&spec, 0);
            let t = std::time::Instant::now();
            sign_for(&mut w, &key, peer).unwrap();
            wire = w;
            t.elapsed()
        })
        .collect();
    let verifying = (0..1000)
        .map(|_| {
            let t = std::time::Instant::now();
            wire.verify(peer, now_ms()).unwrap();
            t.elapsed()
        })
        .collect();
    println!(
        "spec of {} bytes on the wire: signing (delegation + spec) {:?}, verifying {:?} (medians of 1000)",
        postcard::to_stdvec(&wire).unwrap().len(),
        median(signing),
        median(verifying)
    );
}

/// A block request for file `cid` from `from`, acting for itself.
async fn ask(
    from: &Node,
    key: &Keypair,
    peer: PeerId,
    cid: Cid,
) -> Result<Option<Verified>, NetError> {
    let request = BlockRequest {
        cid,
        file: cid,
        credential: Credential::of(key),
    };
    from.net().fetch_block(peer, request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_blocks_are_denied_alike_whether_they_exist_or_not() {
    let root = tempfile::tempdir().unwrap();
    let alice = node(root.path(), "alice", 0).await;
    let bob = node(root.path(), "bob", 0).await;
    let e = node(root.path(), "e", 1).await;
    let e_id = connect(&alice, &e).await;
    connect(&bob, &e).await;
    let alice_id = connect(&bob, &alice).await;
    connect(&e, &alice).await;
    let bob_key = identity(root.path(), "bob");

    // Alice's secret, given to her task on E: E now holds it too, as hers.
    let secret = root.path().join("secret.txt");
    std::fs::write(&secret, "alice's low-entropy secret").unwrap();
    let secret = alice.put_path(secret, false).await.unwrap();
    let mut spec = spec_for(&alice, wasm::HELLO, &[]).await;
    spec.inputs = vec![("name".into(), secret)];
    let ran = alice.submit(spec.clone(), Some(e_id)).await;
    let outputs = ran.report.result.clone().expect("alice's task runs");
    assert!(e.store().has_block(&secret));
    // Alice reads her output from E.
    alice.fetch_file(outputs[0].1, &[e_id]).await.unwrap();

    // Bob asks for it directly, from Alice's node and from E: denied, exactly as for a
    // block nobody has.
    let missing = Cid::of(b"nobody stored this");
    for peer in [alice_id, e_id] {
        for cid in [secret, outputs[0].1, missing] {
            let err = ask(&bob, &bob_key, peer, cid).await.unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "peer {peer} denied block {cid}: the tenant may not read it there, or it is not there"
                )
            );
        }
    }
    // Claiming to act for Alice without her delegation is no better.
    let claimed = BlockRequest {
        cid: secret,
        file: secret,
        credential: Credential {
            tenant: identity(root.path(), "alice").public().encode_protobuf(),
            chain: vec![],
        },
    };
    let err = bob.net().fetch_block(alice_id, claimed).await.unwrap_err();
    assert!(matches!(err, NetError::Denied { .. }), "{err}");

    // Bob's task naming Alice's secret, and one naming a block that does not exist, are
    // denied on E alike, though E holds the secret.
    let mut bobs = spec_for(&bob, wasm::HELLO, &[]).await;
    for cid in [secret, missing] {
        bobs.inputs = vec![("name".into(), cid)];
        let placed = bob.submit(bobs.clone(), Some(e_id)).await;
        let why = denied(&placed.report);
        let expected = format!(
            "cannot fetch input `name` {cid}: no peer would serve block {cid} to tenant {}: \
             it is not the tenant's to read, or it does not exist (asked",
            bob.peer_id()
        );
        assert!(why.starts_with(&expected), "{why}");
    }
    // What Bob may read, E serves him: his own task's output.
    bobs.inputs = vec![("name".into(), bob.store().put_bytes(b"bob").unwrap())];
    let ran = bob.submit(bobs, Some(e_id)).await;
    let outputs = ran.report.result.clone().expect("bob's task runs");
    assert!(
        ask(&bob, &bob_key, e_id, outputs[0].1)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tenant_over_its_stored_bytes_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let a = node(root.path(), "a", 0).await;
    let policy = Policy {
        open_max_stored: 1 << 20,
        ..Policy::default()
    };
    let b = node_with(root.path(), "b", 1, policy).await;
    let b_id = connect(&a, &b).await;
    let big = root.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 3 << 19]).unwrap();
    let big = a.put_path(big, false).await.unwrap();
    let mut spec = spec_for(&a, wasm::NOOP, &[]).await;
    let small = spec.clone();
    spec.inputs = vec![("data".into(), big)];
    let refused = a.submit(spec, Some(b_id)).await;
    let why = denied(&refused.report);
    assert!(
        why.starts_with(&format!("tenant {} stores ", a.peer_id()))
            && why.ends_with(" MiB on this node, over its 1 MiB stored-bytes quota"),
        "{why}"
    );
    // Now over it, even a task that brings nothing new is refused before it is fetched.
    let refused = a.submit(small, Some(b_id)).await;
    assert!(denied(&refused.report).contains("stored-bytes quota"));
}

/// What an open tenant's task writes counts against its stored-bytes quota as it writes,
/// not only at its next task's admission: a driver's subtasks on the same node, or one task
/// with many outputs, cannot fill the node's disk in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tenants_outputs_count_against_its_stored_bytes_as_they_are_written() {
    let root = tempfile::tempdir().unwrap();
    let a = node(root.path(), "a", 0).await;
    let spec = spec_for(
        &a,
        wasm::HOSTILE_OUTPUTS,
        &[("size", "1048576"), ("max", "8")],
    )
    .await;
    // Room for the module and one 1 MiB output, not two.
    let module = a.store().manifest(&spec.module).unwrap().len;
    let policy = Policy {
        open_max_stored: module + (3 << 19),
        ..Policy::default()
    };
    let b = node_with(root.path(), "b", 1, policy).await;
    let b_id = connect(&a, &b).await;
    let placed = a.submit(spec, Some(b_id)).await;
    let logs = &placed.report.logs.text;
    let failure = placed
        .report
        .result
        .as_ref()
        .expect_err("refused at its second output");
    assert!(
        logs.contains("wrote 1 outputs of 1048576 bytes"),
        "{failure}\n{logs}"
    );
    assert!(logs.contains("stored-bytes quota"), "{logs}");
}

/// A peer that runs a node's own task holds a delegation from the node's identity; with it,
/// it reads the files that task was given there, and nothing else the node holds (here a
/// file the node keeps for another tenant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_running_a_nodes_own_task_reads_only_that_tasks_files() {
    let root = tempfile::tempdir().unwrap();
    let n = node(root.path(), "n", 0).await;
    let e = node(root.path(), "e", 1).await;
    let n_id = connect(&e, &n).await;
    let e_id = connect(&n, &e).await;

    let input = n.store().put_bytes(b"the task's input").unwrap();
    let kept = n.store().put_bytes(b"kept here for somebody else").unwrap();
    let mut spec = spec_for(&n, wasm::HELLO, &[]).await;
    spec.inputs = vec![("name".into(), input)];
    let ran = n.submit(spec.clone(), Some(e_id)).await;
    ran.report
        .result
        .clone()
        .expect("the node's own task runs on E");

    // What E held while it ran the task: the node's delegation to E for it.
    let mut wire = spec_to_wire(&spec, 0);
    sign_for(&mut wire, &identity(root.path(), "n"), e_id).unwrap();
    let ask_as_task = |cid: Cid| BlockRequest {
        cid,
        file: cid,
        credential: wire.auth.credential.clone(),
    };
    let served = e.net().fetch_block(n_id, ask_as_task(input)).await.unwrap();
    assert!(served.is_some(), "the task's own input is served");
    let err = e
        .net()
        .fetch_block(n_id, ask_as_task(kept))
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Denied { .. }), "{err}");
}

/// An executor that answers every task at once with a forged success: output `y` is a file
/// it does not hold, but the driver's node does, for another tenant.
struct Forging {
    inner: Arc<dyn InboundHandler>,
    forged: Cid,
    asked: Arc<AtomicUsize>,
}

impl InboundHandler for Forging {
    fn block(&self, from: PeerId, request: BlockRequest) -> BoxFuture<'_, BlockResponse> {
        self.inner.block(from, request)
    }

    fn task(&self, _from: PeerId, _spec: shoal_p2p::TaskSpec) -> BoxFuture<'_, TaskOutcome> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let outputs = vec![("y".to_owned(), self.forged)];
        Box::pin(async move {
            TaskOutcome::Ok {
                outputs,
                logs: String::new(),
                stats: Default::default(),
            }
        })
    }

    fn capacity(&self) -> BoxFuture<'_, Capacity> {
        // Always the emptiest peer, so that the subtasks come here.
        Box::pin(async {
            Capacity {
                free_slots: 64,
                total_slots: 64,
                has_gpu: false,
                queue_len: 0,
            }
        })
    }

    fn progress(&self, from: PeerId, record: ProgressRecord) {
        self.inner.progress(from, record);
    }
}

/// A subtask's report names its outputs, and a driver reads them only as its tenant may:
/// a forged report naming a file its node holds for somebody else opens nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_subtask_output_does_not_open_another_tenants_file() {
    let root = tempfile::tempdir().unwrap();
    let mallory = node(root.path(), "mallory", 0).await;
    let b = node(root.path(), "b", 1).await;
    // B's own file: a number, so that the driver would sum it if it could read it.
    let secret = b.store().put_bytes(b"12345").unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let h = Node::start_with(node_config(root.path(), "h", 1), move |inner| {
        Arc::new(Forging {
            inner,
            forged: secret,
            asked: counter,
        })
    })
    .await
    .expect("node starts");
    let b_id = connect(&mallory, &b).await;
    connect(&b, &h).await;

    let mut spec = spec_for(&mallory, wasm::FANOUT, &[("n", "1")]).await;
    spec.task = Some("fanout".into());
    let placed = mallory.submit(spec, Some(b_id)).await;
    assert!(asked.load(Ordering::SeqCst) > 0, "the subtask went to H");
    let failure = placed
        .report
        .result
        .as_ref()
        .expect_err("the driver cannot read B's file");
    assert!(
        placed
            .report
            .logs
            .text
            .contains(&format!("fetching {secret}")),
        "{failure}\n{}",
        placed.report.logs
    );
}
