//! The digits MLP (`tasks/mlp-digits`) as wasm through the real runtime: its backward pass
//! against finite differences of its own loss on the cpu backend and on wgpu forced onto the
//! software adapter, and a short SGD run that must beat chance on the held-out digits. Then
//! its `train` driver on meshes of in-process nodes: sync mode on 3 shards over 3 nodes equals
//! 1 shard on 1 node, local mode learns, and a failing subtask stops the driver at once.
//!
//! The file formats are documented in `tasks/mlp-digits/src/format.rs`; this test reads them
//! itself (headers, little-endian f32 bodies, `key=value` stats) so that it checks the
//! documented bytes, not the crate's own decoder. The GPU test fails (never skips) when no
//! wgpu adapter is usable; on Debian, `mesa-vulkan-drivers` provides lavapipe.

use std::time::{Duration, Instant};

use shoal_host::{
    compute::{Backend, CpuBackend, DeviceChoice},
    node::Node,
    runtime::{Limits, Runtime, TaskFailure, TaskReport, TaskSpec},
    store::Cid,
};
use shoal_task_artifacts::{LINREG, MLP_DIGITS};

use crate::util::{node, runtime_on, software_gpu, spec, with_args};

/// The shipped data, as the `split` task takes it (gzipped).
const DIGITS_GZ: &[u8] = include_bytes!("../../tasks/data/digits.csv.gz");
/// Bytes before a parameter file's body: magic, inputs, hidden, classes.
const PARAMS_HEADER_LEN: usize = 16;
/// The digits model's inputs and classes.
const INPUTS: usize = 64;
const CLASSES: usize = 10;

/// A successful run's outputs, read back from the store.
struct Outputs {
    files: Vec<(String, Vec<u8>)>,
    report: TaskReport,
}

impl Outputs {
    fn get(&self, name: &str) -> &[u8] {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, bytes)| bytes.as_slice())
            .unwrap_or_else(|| panic!("no output `{name}`; logs: {}", self.report.logs))
    }

    /// A numeric `key=value` field of the `stats` output.
    fn stat(&self, key: &str) -> f64 {
        let text = std::str::from_utf8(self.get("stats")).expect("stats are text");
        text.split_whitespace()
            .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no `{key}` in stats `{text}`"))
            .parse()
            .expect("a number")
    }

    /// The mean loss, from the summable fields.
    fn loss(&self) -> f64 {
        self.stat("loss_sum") / self.stat("count")
    }
}

/// Runs one of the module's tasks, which must succeed.
fn run(rt: &Runtime, task: &str, inputs: &[(&str, &[u8])], args: &[(&str, &str)]) -> Outputs {
    let mut spec = with_args(spec(rt, MLP_DIGITS, inputs), args);
    spec.task = Some(task.into());
    let report = rt.run_blocking(&spec);
    let outputs = report
        .result
        .clone()
        .unwrap_or_else(|f| panic!("{task} failed: {f}\nlogs: {}", report.logs));
    let files = outputs
        .iter()
        .map(|(name, cid)| {
            (
                name.clone(),
                rt.store().read_file(cid).expect("output stored"),
            )
        })
        .collect();
    Outputs { files, report }
}

/// A parameter (or gradient) file: its header, kept as bytes, and its f32 body.
#[derive(Clone)]
struct Params {
    header: Vec<u8>,
    body: Vec<f32>,
}

impl Params {
    fn decode(bytes: &[u8]) -> Self {
        assert_eq!(&bytes[..4], b"MLP1");
        let (header, body) = bytes.split_at(PARAMS_HEADER_LEN);
        Self {
            header: header.to_vec(),
            body: f32s(body),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = self.header.clone();
        out.extend(self.body.iter().flat_map(|v| v.to_le_bytes()));
        out
    }

    fn hidden(&self) -> usize {
        u32::from_le_bytes(self.header[8..12].try_into().expect("4 bytes")) as usize
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Each row's features, from a shard file (`DSH1`, rows, features, then records of
/// `features` f32s and an f32 label).
fn shard_rows(bytes: &[u8]) -> Vec<Vec<f32>> {
    assert_eq!(&bytes[..4], b"DSH1");
    let features = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    f32s(&bytes[12..])
        .chunks_exact(features + 1)
        .map(|record| record[..features].to_vec())
        .collect()
}

/// For each hidden unit, the smallest |pre-activation| over the rows, in f64: a unit whose
/// pre-activation comes near 0 has a ReLU kink within reach of a finite-difference step.
fn closest_to_kink(p: &Params, rows: &[Vec<f32>]) -> Vec<f64> {
    let hidden = p.hidden();
    let b1 = INPUTS * hidden;
    (0..hidden)
        .map(|j| {
            rows.iter()
                .map(|x| {
                    let dot: f64 = (0..INPUTS)
                        .map(|i| f64::from(x[i]) * f64::from(p.body[i * hidden + j]))
                        .sum();
                    (dot + f64::from(p.body[b1 + j])).abs()
                })
                .fold(f64::INFINITY, f64::min)
        })
        .collect()
}

/// The step of the central differences, and the relative error they must meet.
const EPS: f32 = 1e-2;
const MAX_RELATIVE_ERROR: f32 = 1e-2;

/// Central differences `(L(p + ε·e_i) − L(p − ε·e_i)) / 2ε`, ε = 1e-2, each loss from a
/// `grad` run on a perturbed parameter file, against the `grad` output at `p`, for the two
/// largest-gradient coordinates of each of `W1`, `b1`, `W2` and `b2` (a 64→8→10 model, one
/// 21-row shard, all in f32). Coordinates of a hidden unit whose pre-activation comes within
/// 2ε of 0 are left out: a step there crosses ReLU's kink. Relative error
/// `|fd − g| / max(|fd|, |g|)` must stay below 1e-2. Returns the worst.
fn check_gradient(rt: &Runtime, backend: &str) -> f32 {
    let split = run(rt, "split", &[("csv", DIGITS_GZ)], &[("shards", "64")]);
    let shard = split.get("shard0").to_vec();
    let init = run(rt, "init", &[], &[("hidden", "8"), ("seed", "3")]);
    let p = Params::decode(init.get("params"));
    let loss_and_grad = |p: &Params| {
        let bytes = p.encode();
        let out = run(rt, "grad", &[("params", &bytes), ("shard", &shard)], &[]);
        assert_eq!(out.report.stats.backend.as_deref(), Some(backend));
        (out.loss(), Params::decode(out.get("grad")))
    };
    let (loss, grad) = loss_and_grad(&p);
    assert!((loss - 10f64.ln()).abs() < 0.5, "initial loss {loss}");
    assert_eq!(
        grad.header, p.header,
        "a gradient has its parameters' layout"
    );

    let hidden = p.hidden();
    let margin = closest_to_kink(&p, &shard_rows(&shard));
    let blocks = [
        ("W1", 0..INPUTS * hidden),
        ("b1", INPUTS * hidden..(INPUTS + 1) * hidden),
        ("W2", (INPUTS + 1) * hidden..(INPUTS + 1 + CLASSES) * hidden),
        ("b2", (INPUTS + 1 + CLASSES) * hidden..p.body.len()),
    ];
    let unit = |i: usize| match i {
        i if i < INPUTS * hidden => Some(i % hidden),
        i if i < (INPUTS + 1) * hidden => Some(i - INPUTS * hidden),
        _ => None,
    };
    let mut worst = 0.0f32;
    for (name, range) in blocks {
        let mut coords: Vec<usize> = range
            .filter(|&i| unit(i).is_none_or(|j| margin[j] > 2.0 * f64::from(EPS)))
            .collect();
        coords.sort_by(|&a, &b| grad.body[b].abs().total_cmp(&grad.body[a].abs()));
        assert!(coords.len() >= 2, "{name}: every unit is near a kink");
        for &i in &coords[..2] {
            let (mut plus, mut minus) = (p.clone(), p.clone());
            plus.body[i] += EPS;
            minus.body[i] -= EPS;
            let fd = ((loss_and_grad(&plus).0 - loss_and_grad(&minus).0) / (2.0 * f64::from(EPS)))
                as f32;
            let g = grad.body[i];
            let relative = (fd - g).abs() / fd.abs().max(g.abs());
            assert!(
                relative < MAX_RELATIVE_ERROR,
                "{backend}: {name} coordinate {i}: finite difference {fd} vs gradient {g} (relative error {relative})"
            );
            worst = worst.max(relative);
        }
    }
    eprintln!("{backend}: worst relative error {worst:e} over 8 coordinates");
    worst
}

/// `--device cpu`: the native kernels.
#[test]
fn mlp_gradient_matches_finite_differences_on_cpu() {
    let (_dir, rt) = runtime_on(DeviceChoice::Cpu, false);
    check_gradient(&rt, CpuBackend::new().name());
}

/// `--device gpu` with software allowed: the shaders on wgpu over lavapipe.
#[test]
fn mlp_gradient_matches_finite_differences_on_software_gpu() {
    let expected = software_gpu();
    let (_dir, rt) = runtime_on(DeviceChoice::Gpu, true);
    check_gradient(&rt, expected.name());
}

/// 300 steps of minibatch SGD (batch 32, learning rate 0.5, 32 hidden units) on one of three
/// training shards, as one `step` task, then `eval` on the stratified held-out quarter:
/// accuracy far above chance (0.1), and a training loss that fell.
#[test]
fn sgd_on_one_shard_beats_chance_on_held_out_digits() {
    let (_dir, rt) = runtime_on(DeviceChoice::Cpu, false);
    let started = Instant::now();
    let split = run(
        &rt,
        "split",
        &[("csv", DIGITS_GZ)],
        &[("shards", "3"), ("seed", "0")],
    );
    let names: Vec<&str> = split.files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["test", "shard0", "shard1", "shard2"]);
    let init = run(&rt, "init", &[], &[("hidden", "32"), ("seed", "1")]);
    let (params, shard, test) = (init.get("params"), split.get("shard0"), split.get("test"));
    let before = run(&rt, "eval", &[("params", params), ("shard", test)], &[]);
    let trained = run(
        &rt,
        "step",
        &[("params", params), ("shard", shard)],
        &[
            ("lr", "0.5"),
            ("steps", "300"),
            ("batch", "32"),
            ("seed", "0"),
        ],
    );
    // 20 epochs of the 449 rows, each 14 batches of 32 and one of 1.
    assert_eq!(trained.stat("count"), 20.0 * 449.0);
    let after = run(
        &rt,
        "eval",
        &[("params", trained.get("params")), ("shard", test)],
        &[],
    );
    let accuracy = after.stat("accuracy");
    eprintln!(
        "held-out accuracy {:.3} → {accuracy:.3}, loss {:.3} → {:.3}, step task {:?}, all {:?}",
        before.stat("accuracy"),
        before.loss(),
        after.loss(),
        trained.report.stats.wall,
        started.elapsed()
    );
    assert!(accuracy > 0.85, "held-out accuracy {accuracy}");
    assert!(after.loss() < 0.5 * before.loss());
}

/// `n` nodes of one slot each, every pair connected.
async fn mesh(root: &std::path::Path, n: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(node(root, &format!("node{i}"), 1).await);
    }
    for i in 0..n {
        for j in i + 1..n {
            let addr = nodes[j].net().listen_addrs().await.unwrap()[0].clone();
            nodes[i].net().dial(addr).await.unwrap();
        }
    }
    nodes
}

/// Runs task `task` of the mlp-digits module on `node`'s mesh; its outputs or its failure,
/// and how long it took.
async fn submit(
    node: &Node,
    task: &str,
    inputs: &[(&str, Cid)],
    args: &[(&str, &str)],
) -> (Result<Vec<(String, Cid)>, TaskFailure>, String, Duration) {
    submit_module(node, MLP_DIGITS, task, inputs, args, false).await
}

/// [`submit`] for the trainer module at `module`.
async fn submit_module(
    node: &Node,
    module: &str,
    task: &str,
    inputs: &[(&str, Cid)],
    args: &[(&str, &str)],
    deterministic: bool,
) -> (Result<Vec<(String, Cid)>, TaskFailure>, String, Duration) {
    let spec = TaskSpec {
        module: node.put_path(module.into(), false).await.unwrap(),
        task: Some(task.into()),
        inputs: inputs.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
        args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        limits: Limits::default(),
        depth: 0,
        deterministic,
        tenant: None,
    };
    let started = Instant::now();
    let report = node.submit(spec, None).await.report;
    (report.result, report.logs.to_string(), started.elapsed())
}

/// [`submit`], which must succeed: its outputs by name.
async fn submit_ok(
    node: &Node,
    task: &str,
    inputs: &[(&str, Cid)],
    args: &[(&str, &str)],
) -> Vec<(String, Cid)> {
    let (result, logs, _) = submit(node, task, inputs, args).await;
    result.unwrap_or_else(|f| panic!("{task} failed: {f}\nlogs: {logs}"))
}

fn cid_of(outputs: &[(String, Cid)], name: &str) -> Cid {
    outputs
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no output `{name}` in {outputs:?}"))
        .1
}

/// `split` (seed 0) into `shards` training shards, and `init` (`hidden`, seed 1), run on
/// `data`, then stored on `node` alone: the inputs of a `train` driver, as (name, CID) pairs.
/// `data` is a node outside `node`'s mesh, so `node`'s peers hold a shard only if they fetched
/// it to run a subtask.
pub(crate) async fn training_inputs(
    data: &Node,
    node: &Node,
    shards: usize,
    hidden: usize,
) -> Vec<(String, Cid)> {
    let csv = data.store().put_bytes(DIGITS_GZ).unwrap();
    let shards = shards.to_string();
    let split = submit_ok(
        data,
        "split",
        &[("csv", csv)],
        &[("shards", &shards), ("seed", "0")],
    )
    .await;
    let hidden = hidden.to_string();
    let init = submit_ok(data, "init", &[], &[("hidden", &hidden), ("seed", "1")]).await;
    let mut inputs = vec![("params".to_string(), cid_of(&init, "params"))];
    inputs.extend(split);
    for (_, cid) in &inputs {
        let bytes = data.store().read_file(cid).unwrap();
        assert_eq!(node.store().put_bytes(&bytes).unwrap(), *cid);
    }
    inputs
}

/// What a `train` run wrote.
struct Trained {
    params: Params,
    /// The report's lines.
    report: Vec<String>,
    checkpoint: Vec<u8>,
}

/// Runs `train` with these inputs and arguments on `node`, which must succeed.
async fn train(node: &Node, inputs: &[(String, Cid)], args: &[(&str, &str)]) -> Trained {
    train_on(node, inputs, args, false).await
}

/// [`train`], its tensor math on the deterministic backend if `deterministic`: the same
/// trajectory on every CPU.
async fn train_on(
    node: &Node,
    inputs: &[(String, Cid)],
    args: &[(&str, &str)],
    deterministic: bool,
) -> Trained {
    let inputs: Vec<(&str, Cid)> = inputs.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    let (result, logs, _) =
        submit_module(node, MLP_DIGITS, "train", &inputs, args, deterministic).await;
    let outputs = result.unwrap_or_else(|f| panic!("train failed: {f}\nlogs: {logs}"));
    let read = |name| node.store().read_file(&cid_of(&outputs, name)).unwrap();
    // The checkpoint (`MCK1`, round, seed, RNG state, then a parameter file) holds the
    // final parameters and the last round's number.
    let checkpoint = read("checkpoint");
    assert_eq!(&checkpoint[..4], b"MCK1");
    assert_eq!(
        checkpoint[24..],
        read("params")[..],
        "the checkpoint's parameters"
    );
    let report = String::from_utf8(read("report")).unwrap();
    let report: Vec<String> = report.lines().map(str::to_owned).collect();
    let rounds = u32::from_le_bytes(checkpoint[4..8].try_into().unwrap());
    let last = &report[report.len() - 2];
    assert_eq!(f64::from(rounds), field(last, "round"), "{last}");
    Trained {
        params: Params::decode(&read("params")),
        report,
        checkpoint,
    }
}

/// A numeric `key=value` field of a report line.
fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no `{key}` in `{line}`"))
        .parse()
        .unwrap()
}

/// Every training row of a shard file as bytes (features and label), sorted: the multiset of
/// rows, to compare shard sets whatever their order.
fn sorted_records(node: &Node, shards: &[Cid]) -> Vec<Vec<u8>> {
    let mut records: Vec<Vec<u8>> = Vec::new();
    for cid in shards {
        let bytes = node.store().read_file(cid).unwrap();
        assert_eq!(&bytes[..4], b"DSH1");
        let features = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        records.extend(
            bytes[12..]
                .chunks_exact(4 * (features + 1))
                .map(<[u8]>::to_vec),
        );
    }
    records.sort();
    records
}

/// The relative tolerance of the equivalence test, on `max|a − b| / max|b|`: both runs take
/// full-batch gradient steps on the same rows, so they are equal in exact arithmetic; only the
/// order of the f32 sums differs (rows split over 3 shards and in another order, then the
/// shard gradients combined in f64). That rounding is ~1e-7 relative per step; 5 steps that
/// barely amplify it stay orders of magnitude below 1e-4, while any real difference (a wrong
/// weighting, a lost shard, an extra step) moves the parameters by ~1e-2 or more.
const EQUIVALENCE_TOLERANCE: f32 = 1e-4;

/// Sync mode, 3 shards on a mesh of 3 nodes, gives the parameters of 1 shard holding the same
/// rows on 1 node: 5 rounds of full-batch gradient descent (hidden 16, lr 0.5, same init).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_training_on_3_shards_over_3_nodes_equals_1_shard_on_1_node() {
    let root = tempfile::tempdir().unwrap();
    let nodes = mesh(root.path(), 3).await;
    let solo = node(root.path(), "solo", 1).await;
    let three = training_inputs(&solo, &nodes[0], 3, 16).await;
    let one = training_inputs(&solo, &solo, 1, 16).await;
    // The same seed gives the same held-out rows and the same init; the 3 shards hold
    // exactly the 1 shard's rows.
    assert_eq!(cid_of(&three, "test"), cid_of(&one, "test"));
    assert_eq!(cid_of(&three, "params"), cid_of(&one, "params"));
    let shards: Vec<Cid> = (0..3)
        .map(|i| cid_of(&three, &format!("shard{i}")))
        .collect();
    assert_eq!(
        sorted_records(&nodes[0], &shards),
        sorted_records(&solo, &[cid_of(&one, "shard0")])
    );

    let args = [("rounds", "5"), ("lr", "0.5"), ("mode", "sync")];
    let started = Instant::now();
    let Trained {
        params: p3,
        report: report3,
        ..
    } = train(&nodes[0], &three, &args).await;
    let mesh_time = started.elapsed();
    let started = Instant::now();
    let Trained {
        params: p1,
        report: report1,
        ..
    } = train(&solo, &one, &args).await;
    let solo_time = started.elapsed();

    assert_eq!(p3.header, p1.header);
    let scale = p1.body.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = p3
        .body
        .iter()
        .zip(&p1.body)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let relative = diff / scale;
    eprintln!(
        "sync equivalence: max |Δ| {diff:e} over max |p| {scale}: relative {relative:e}; \
         3 nodes {mesh_time:?}, 1 node {solo_time:?}\n3 shards:\n{}\n1 shard:\n{}",
        report3.join("\n"),
        report1.join("\n")
    );
    assert!(
        relative < EQUIVALENCE_TOLERANCE,
        "relative difference {relative:e}"
    );
    // It trained: the parameters moved far beyond the tolerance, and the loss fell.
    let init = Params::decode(
        &nodes[0]
            .store()
            .read_file(&cid_of(&three, "params"))
            .unwrap(),
    );
    let moved = p1
        .body
        .iter()
        .zip(&init.body)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(moved / scale > 1e-2, "moved {moved}");
    assert_eq!(report3.len(), 6, "5 rounds and the test line");
    for (a, b) in report3.iter().zip(&report1).take(5) {
        let (la, lb) = (field(a, "loss"), field(b, "loss"));
        assert!((la - lb).abs() < 1e-4 * lb, "{a} vs {b}");
    }
    assert!(field(&report3[4], "loss") < field(&report3[0], "loss"));
    // Gradients ran on the other nodes too: only a subtask placed there fetches a shard.
    let remote = nodes[1..]
        .iter()
        .filter(|n| shards.iter().any(|c| n.store().has_block(c)))
        .count();
    eprintln!("{remote} of the 2 other nodes ran a shard's gradient");
    assert!(remote >= 1, "every subtask ran on the driver's node");
}

/// Local mode (local SGD): 4 rounds of 25 minibatch steps per shard on 3 shards over 3 nodes,
/// parameters averaged each round: held-out accuracy far above chance (0.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_training_beats_chance_on_held_out_digits() {
    let root = tempfile::tempdir().unwrap();
    let nodes = mesh(root.path(), 3).await;
    let inputs = training_inputs(&nodes[0], &nodes[0], 3, 16).await;
    let started = Instant::now();
    let report = train(
        &nodes[0],
        &inputs,
        &[
            ("rounds", "4"),
            ("lr", "0.5"),
            ("mode", "local"),
            ("local_steps", "25"),
            ("batch", "32"),
            ("seed", "3"),
        ],
    )
    .await
    .report;
    eprintln!(
        "local mode in {:?}:\n{}",
        started.elapsed(),
        report.join("\n")
    );
    assert_eq!(report.len(), 5, "4 rounds and the test line");
    let test = &report[4];
    assert!(test.starts_with("test "), "{test}");
    let accuracy = field(test, "accuracy");
    assert!(accuracy > 0.6, "held-out accuracy {accuracy}");
    assert!(field(&report[3], "loss") < field(&report[0], "loss"));
}

/// A shard that is not a shard: the driver stops in its first round, with an error naming the
/// round, the subtask and its typed failure, not after 20 rounds and not by timing out. In
/// local mode the driver reads the shards' headers itself and refuses it before spawning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_subtask_stops_the_driver_at_once_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let nodes = mesh(root.path(), 2).await;
    let mut inputs = training_inputs(&nodes[0], &nodes[0], 2, 16).await;
    let garbage = nodes[0].store().put_bytes(b"not a shard").unwrap();
    for (name, cid) in &mut inputs {
        if name == "shard1" {
            *cid = garbage;
        }
    }
    let inputs: Vec<(&str, Cid)> = inputs.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    let (result, logs, took) = submit(&nodes[0], "train", &inputs, &[("rounds", "20")]).await;
    let failure = result.expect_err("the driver fails");
    eprintln!("failed in {took:?}: {failure}");
    assert_eq!(
        failure.kind,
        shoal_host::runtime::FailureKind::TaskError,
        "{failure}"
    );
    for part in [
        "round 1: subtask `grad` on `shard1`",
        "subtask failed (TaskError)",
        "input `shard`: not a shard file",
    ] {
        assert!(
            failure.message.contains(part),
            "`{part}` in {failure}\nlogs: {logs}"
        );
    }
    assert!(took < Duration::from_secs(20), "no hang: {took:?}");

    let (result, _, _) = submit(&nodes[0], "train", &inputs, &[("mode", "local")]).await;
    let failure = result.expect_err("the driver fails");
    assert!(
        failure.message.contains("input `shard1`: not a shard file"),
        "{failure}"
    );
}

/// A run resumed from its round-2 checkpoint (input `resume`, no `params`) finishes as the
/// uninterrupted 3-round run does, bit for bit: the checkpoint carries the parameters, the
/// round and the RNG state that draws local mode's per-shard seeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_resumed_from_a_checkpoint_finishes_as_the_uninterrupted_one() {
    let root = tempfile::tempdir().unwrap();
    let node = node(root.path(), "one", 1).await;
    let inputs = training_inputs(&node, &node, 2, 16).await;
    let args = |rounds| {
        [
            ("rounds", rounds),
            ("mode", "local"),
            ("local_steps", "5"),
            ("seed", "9"),
        ]
    };
    let straight = train(&node, &inputs, &args("3")).await;
    let first = train(&node, &inputs, &args("2")).await;
    let checkpoint = node.store().put_bytes(&first.checkpoint).unwrap();
    let resumed: Vec<(String, Cid)> = inputs
        .iter()
        .filter(|(n, _)| n != "params")
        .cloned()
        .chain([("resume".to_string(), checkpoint)])
        .collect();
    let rest = train(&node, &resumed, &args("3")).await;
    assert_eq!(rest.params.body, straight.params.body);
    assert_eq!(rest.checkpoint, straight.checkpoint);
    assert_eq!(
        rest.report.len(),
        2,
        "round 3 and the test line: {:?}",
        rest.report
    );
    assert_eq!(
        field(&rest.report[0], "loss"),
        field(&straight.report[2], "loss")
    );
}

/// Linear regression (`tasks/linreg`; formats in its `src/format.rs`): `split` (2000 rows ×
/// 16 features, 2 shards), `init` (zeros) and 30 sync rounds of `train` over a mesh of 2
/// nodes. The held-out mean squared error ends below 1% of the initial one (it reaches the
/// noise floor, 0.01²), and R², the report's `accuracy`, near 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linreg_sync_training_on_2_nodes_reaches_the_noise_floor() {
    async fn run(
        node: &Node,
        task: &str,
        inputs: &[(&str, Cid)],
        args: &[(&str, &str)],
    ) -> Vec<(String, Cid)> {
        let (result, logs, _) = submit_module(node, LINREG, task, inputs, args, false).await;
        result.unwrap_or_else(|f| panic!("{task} failed: {f}\nlogs: {logs}"))
    }
    let root = tempfile::tempdir().unwrap();
    let nodes = mesh(root.path(), 2).await;
    let started = Instant::now();
    let data = [("rows", "2000"), ("features", "16"), ("shards", "2")];
    let split = run(&nodes[0], "split", &[], &data).await;
    let init = run(&nodes[0], "init", &[], &[("features", "16")]).await;
    let (params, test) = (cid_of(&init, "params"), cid_of(&split, "test"));
    let read = |cid: Cid| nodes[0].store().read_file(&cid).unwrap();
    // Stats are `key=value` text; the mean squared error is twice the mean loss (½·r²).
    let mse = |stats: &[u8]| {
        let text = std::str::from_utf8(stats).unwrap();
        2.0 * field(text, "loss_sum") / field(text, "count")
    };
    let eval = run(
        &nodes[0],
        "eval",
        &[("params", params), ("shard", test)],
        &[],
    )
    .await;
    let initial = mse(&read(cid_of(&eval, "stats")));

    let mut inputs = vec![("params", params)];
    inputs.extend(split.iter().map(|(n, c)| (n.as_str(), *c)));
    let args = [
        ("rounds", "30"),
        ("lr", "1"),
        ("mode", "sync"),
        ("eval_every", "10"),
    ];
    let outputs = run(&nodes[0], "train", &inputs, &args).await;
    let took = started.elapsed();
    let report = String::from_utf8(read(cid_of(&outputs, "report"))).unwrap();
    let lines: Vec<&str> = report.lines().collect();
    let checkpoint = read(cid_of(&outputs, "checkpoint"));
    assert_eq!(
        &checkpoint[..8],
        b"LRC1\x1e\x00\x00\x00",
        "round 30's checkpoint"
    );
    assert_eq!(checkpoint[24..], read(cid_of(&outputs, "params"))[..]);
    assert_eq!(lines.len(), 31, "30 rounds and the test line: {report}");
    let test_line = lines[30];
    assert!(test_line.starts_with("test count=1000 "), "{test_line}");
    let last = 2.0 * field(test_line, "loss");
    eprintln!(
        "linreg: test mse {initial} → {last} in {took:?}\n{}\n…\n{}",
        lines[..3].join("\n"),
        lines[27..].join("\n")
    );
    assert!(last < 0.01 * initial, "test mse {initial} → {last}");
    assert!(field(test_line, "accuracy") > 0.999, "R²: {test_line}");
    assert!(field(lines[29], "accuracy") > 0.99, "{}", lines[29]);
    assert!(field(lines[29], "loss") < 0.01 * field(lines[0], "loss"));
    assert_eq!(field(lines[0], "samples"), 2000.0);
}

/// Training that a liar cannot poison: 5 shards (5 `grad` subtasks a round) over 2 nodes, one
/// of which returns its gradient scaled by −50 every round. The liar is simulated by the
/// module itself (the driver's `poison_shard` passes `scale` to that shard's `grad`): a real
/// hostile peer is beyond the driver's control anyway, and the combine sees only gradients.
/// With `combine=mean` the parameters blow up in the first round and the held-out accuracy
/// falls to chance; with `median`, `trimmed` and `centered_clip` it stays within 1 point of
/// the clean run's. Sync mode, 78 rounds of full-batch steps (hidden 16, lr 0.5, fixed seeds),
/// so every run is deterministic. Robust combines under attack are not free: they learn from
/// the honest shards' middle, not their mean, and fall 1–2 points behind at some longer run
/// lengths of this small setup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_gradient_wrecks_the_mean_but_not_the_robust_combines() {
    let root = tempfile::tempdir().unwrap();
    let nodes = mesh(root.path(), 2).await;
    let inputs = training_inputs(&nodes[0], &nodes[0], 5, 16).await;
    let started = Instant::now();
    let run = |combine: &'static str, poisoned: bool| {
        let (node, inputs) = (&nodes[0], &inputs);
        async move {
            let mut args = vec![
                ("rounds", "78"),
                ("lr", "0.5"),
                ("mode", "sync"),
                ("eval_every", "0"),
                ("combine", combine),
            ];
            if poisoned {
                args.extend([("poison_shard", "2"), ("poison_scale", "-50")]);
            }
            // Deterministic kernels: the margins below hold on every CPU, not just this one.
            let report = train_on(node, inputs, &args, true).await.report;
            assert_eq!(report.len(), 79, "78 rounds and the test line");
            assert!(
                report[0].contains(&format!(" combine={combine} ")),
                "{}",
                report[0]
            );
            assert_eq!(field(&report[0], "samples"), 1346.0, "the 5 shards' rows");
            let test = &report[78];
            assert!(test.starts_with("test "), "{test}");
            field(test, "accuracy")
        }
    };
    let clean = run("mean", false).await;
    let poisoned = run("mean", true).await;
    let mut robust = Vec::new();
    for combine in ["median", "trimmed", "centered_clip"] {
        robust.push((combine, run(combine, true).await));
    }
    eprintln!(
        "held-out accuracy: clean mean {clean:.4}, poisoned mean {poisoned:.4}, poisoned \
         {robust:.4?} ({:?} for 5 runs)",
        started.elapsed()
    );
    assert!(clean > 0.9, "the clean run learns: {clean}");
    assert!(
        poisoned < 0.2,
        "mean: poisoned {poisoned}, near chance (0.1)"
    );
    for (combine, accuracy) in robust {
        assert!(
            (accuracy - clean).abs() <= 0.01,
            "{combine}: poisoned {accuracy} vs clean {clean}"
        );
    }
}

/// Sampled re-execution (`recheck=1`: every gradient task verified on two peers): a worker
/// that lies about every output it returns is outvoted by a third run, marked faulty and
/// given no more work, and the training's parameters come out bit-identical to a clean run's
/// (verified subtasks run the deterministic kernels). The liar is a real node whose executor
/// is wrapped ([`crate::verify`]), advertising 1000 free slots so that it is chosen first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rechecked_gradients_catch_a_lying_worker_and_match_a_clean_run() {
    let root = tempfile::tempdir().unwrap();
    // Two slots on the driver's node: one for the driver, one for the subtasks it verifies.
    let (a, b) = (
        node(root.path(), "a", 2).await,
        node(root.path(), "b", 1).await,
    );
    let (liar, lied_to) =
        crate::verify::wrapped(root.path(), "liar", crate::verify::Behaviour::Liar).await;
    let liar_id = liar.peer_id();
    for n in [&a, &b] {
        crate::util::connect(&liar, n).await;
    }
    crate::util::connect(&a, &b).await;
    // Split and init run on a node outside the mesh, out of the liar's reach.
    let data = node(root.path(), "data", 1).await;
    let inputs = training_inputs(&data, &a, 3, 8).await;
    let train = |recheck: &'static str| {
        let (a, inputs) = (&a, &inputs);
        async move {
            let spec = TaskSpec {
                module: a.put_path(MLP_DIGITS.into(), false).await.unwrap(),
                task: Some("train".into()),
                inputs: inputs.clone(),
                args: [
                    ("rounds", "3"),
                    ("lr", "0.5"),
                    ("eval_every", "0"),
                    ("recheck", recheck),
                ]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
                limits: Limits::default(),
                depth: 0,
                deterministic: true,
                tenant: None,
            };
            // The driver runs here; its subtasks go wherever the scheduler places them.
            let report = a.submit(spec, Some(a.peer_id())).await.report;
            let outputs = report
                .result
                .unwrap_or_else(|f| panic!("train failed: {f}\nlogs: {}", report.logs));
            cid_of(&outputs, "params")
        }
    };
    let rechecked = train("1").await;
    assert!(
        lied_to.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the liar got work"
    );
    let faulty = a.faulty_peers();
    assert!(
        faulty.iter().any(|(p, _)| *p == liar_id),
        "the liar is marked faulty: {faulty:?}"
    );
    let before = lied_to.load(std::sync::atomic::Ordering::SeqCst);
    let clean = train("0").await;
    assert_eq!(
        lied_to.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "an excluded peer gets no more work"
    );
    assert_eq!(rechecked, clean, "the lies never reached the parameters");
}
