//! Helpers shared by the integration tests.

use std::{path::Path, sync::Arc, time::Duration};

use shoal_host::{
    compute::{DeviceChoice, GpuBackend},
    node::{Node, NodeConfig},
    runtime::{Limits, Runtime, RuntimeConfig, TaskReport, TaskSpec},
    store::{BlockStore, Cid},
};
use tempfile::TempDir;

/// `len` pseudo-random bytes (xorshift64) from `seed`: every 1 MiB chunk distinct, so a file
/// of them moves as many blocks as it has chunks.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len.div_ceil(8))
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .take(len)
        .collect()
}

/// A runtime over a fresh store in a temp dir (kept alive by the returned guard).
pub fn runtime(slots: usize) -> (TempDir, Runtime) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(BlockStore::open(dir.path()).expect("store opens"));
    let rt = Runtime::new(
        store,
        RuntimeConfig {
            slots,
            ..RuntimeConfig::default()
        },
    )
    .expect("runtime");
    (dir, rt)
}

/// Stores the module at `path` and builds a spec with these inputs and default limits.
pub fn spec(rt: &Runtime, path: &str, inputs: &[(&str, &[u8])]) -> TaskSpec {
    let module = put_file(rt.store(), Path::new(path));
    let inputs = inputs
        .iter()
        .map(|(name, bytes)| {
            (
                name.to_string(),
                rt.store().put_bytes(bytes).expect("put input"),
            )
        })
        .collect();
    TaskSpec {
        module,
        task: None,
        inputs,
        args: vec![],
        limits: Limits::default(),
        depth: 0,
        deterministic: false,
        tenant: None,
    }
}

/// `spec` with these arguments.
pub fn with_args(mut spec: TaskSpec, args: &[(&str, &str)]) -> TaskSpec {
    spec.args = args
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    spec
}

/// Stores a file from disk.
pub fn put_file(store: &BlockStore, path: &Path) -> Cid {
    store
        .put_file(std::fs::File::open(path).expect("artifact exists"))
        .expect("put file")
}

/// Runs the hello task and checks its greeting: proof the runtime is still healthy.
pub fn assert_hello_works(rt: &Runtime) {
    let spec = spec(rt, shoal_task_artifacts::HELLO, &[("name", b"Shoal")]);
    let report = rt.run_blocking(&spec);
    let outputs = report
        .result
        .unwrap_or_else(|f| panic!("hello failed: {f}\nlogs: {}", report.logs));
    assert_eq!(outputs[0].0, "greeting");
    assert_eq!(
        rt.store()
            .read_file(&outputs[0].1)
            .expect("greeting stored"),
        b"Hello, Shoal!"
    );
}

/// A spec for a module written in WAT, with default limits.
pub fn wat_spec(rt: &Runtime, wat: &str) -> TaskSpec {
    let bytes = wat::parse_str(wat).unwrap_or_else(|e| panic!("bad WAT: {e}\n{wat}"));
    TaskSpec::new(rt.store().put_bytes(&bytes).expect("put module"))
}

/// The task's `[info]` log lines that start with `prefix`, without it.
pub fn logged<'a>(report: &'a TaskReport, prefix: &str) -> Vec<&'a str> {
    let prefix = format!("[info] {prefix}");
    report
        .logs
        .text
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

/// The most `hostile-sleep` tasks asleep at once, from the naps they logged (start and end,
/// in µs). Every report must be a success.
pub fn most_asleep_at_once(reports: &[TaskReport]) -> usize {
    let mut edges = Vec::new();
    for report in reports {
        assert!(
            report.result.is_ok(),
            "{:?}\nlogs: {}",
            report.result,
            report.logs
        );
        let nap = logged(report, "slept ");
        let nap = nap
            .first()
            .unwrap_or_else(|| panic!("no nap logged: {}", report.logs));
        let times: Vec<i64> = nap.split(' ').map(|t| t.parse().expect("a time")).collect();
        edges.extend([(times[0], 1), (times[1], -1)]);
    }
    // An end sorts before a start at the same instant: naps that only touch do not overlap.
    edges.sort_unstable();
    let peak = edges
        .iter()
        .scan(0i64, |asleep, &(_, step)| {
            *asleep += step;
            Some(*asleep)
        })
        .max();
    usize::try_from(peak.unwrap_or(0)).unwrap_or(0)
}

/// A one-slot runtime computing on `device` (`allow_software_gpu` lets `Gpu` take lavapipe).
pub fn runtime_on(device: DeviceChoice, allow_software_gpu: bool) -> (TempDir, Runtime) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(BlockStore::open(dir.path()).expect("store opens"));
    let config = RuntimeConfig {
        slots: 1,
        device,
        allow_software_gpu,
        ..RuntimeConfig::default()
    };
    (dir, Runtime::new(store, config).expect("runtime"))
}

/// The software GPU the GPU tests run on; a machine without one fails the test, saying why.
pub fn software_gpu() -> GpuBackend {
    GpuBackend::new(true).unwrap_or_else(|e| {
        panic!("this test needs a wgpu adapter (Debian: mesa-vulkan-drivers): {e}")
    })
}

/// The config of an in-process node in `root/name` on 127.0.0.1 with `slots` slots, cpu
/// tensors, no mDNS and the default policy.
pub fn node_config(root: &Path, name: &str, slots: usize) -> NodeConfig {
    NodeConfig {
        data_dir: root.join(name),
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("an address")],
        bootstrap: vec![],
        mdns: false,
        slots,
        device: DeviceChoice::Cpu,
        store_limit: None,
        memory_budget: None,
        policy: Default::default(),
    }
}

/// A node started from [`node_config`].
pub async fn node(root: &Path, name: &str, slots: usize) -> Node {
    Node::start(node_config(root, name, slots))
        .await
        .expect("node starts")
}

/// Connects `from` to `to`, returning `to`'s peer id.
pub async fn connect(from: &Node, to: &Node) -> shoal_p2p::PeerId {
    let addr = to.net().listen_addrs().await.expect("addresses")[0].clone();
    from.net().dial(addr).await.expect("dial")
}

/// A spec for the module at `path` with `args`, stored by `node`, with 30 s of time and CPU.
pub async fn spec_for(node: &Node, path: &str, args: &[(&str, &str)]) -> TaskSpec {
    TaskSpec {
        module: node.put_path(path.into(), false).await.expect("module"),
        task: None,
        inputs: vec![],
        args: args
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        limits: Limits {
            timeout: Duration::from_secs(30),
            cpu_budget: Duration::from_secs(30),
            ..Limits::default()
        },
        depth: 0,
        deterministic: false,
        tenant: None,
    }
}
