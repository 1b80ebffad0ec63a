//! Matmul GFLOP/s through the guest ABI, in one table and one run:
//! - `pure wasm`: the `matmul-wasm` task, the product computed inside the sandbox;
//! - `task cpu`: the `matmul` task, the product on the host's cpu backend via `Tensor`, counting
//!   the whole task (seeding the matrices in wasm, copies in and out, storing the output);
//! - `guest cpu`: the cost of one more product inside a running task, measured as
//!   `(T(reps = R) - T(reps = 1)) / (R - 1)` on tasks that repeat the product on resident
//!   tensors: what a training loop's step pays for a matmul through the sandbox;
//! - `native cpu`: the same backend called directly, no sandbox;
//! - `numpy`: `numpy.matmul` (OpenBLAS) in a child process, the reference the issue names;
//! - `task gpu`: the `matmul` task on the wgpu backend (whatever adapter the machine has).
//!
//! Every figure is `2 n^3` flops over the median of several timings.
//!
//! `cargo bench --profile dev -p shoal-host --bench guest_matmul`
//! (`SHOAL_BENCH_PYTHON` names a python with numpy; default `python3`.)

use std::{
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use shoal_host::{
    compute::{Backend, CpuBackend, DeviceChoice, GpuBackend, Shape, TensorOp},
    runtime::{Limits, Runtime, RuntimeConfig, TaskSpec},
    store::BlockStore,
};

const SIZES: [usize; 4] = [256, 512, 1024, 2048];
/// Products per task for the steady-state column.
const REPS: u32 = 9;
/// Pure wasm at 2048 is skipped when 1024 already took longer than this (2048 is 8x the work).
const WASM_2048_BUDGET: Duration = Duration::from_millis(7_500);

fn gflops(n: usize, t: Duration) -> f64 {
    2.0 * (n as f64).powi(3) / t.as_secs_f64() / 1e9
}

fn runs(n: usize) -> usize {
    if n >= 1024 { 3 } else { 7 }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

struct Bench {
    _dir: tempfile::TempDir,
    rt: Runtime,
    module: shoal_host::store::Cid,
}

impl Bench {
    fn new(path: &str, device: DeviceChoice) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(BlockStore::open(dir.path()).expect("store"));
        let module = store
            .put_file(std::fs::File::open(path).expect("task wasm"))
            .expect("put");
        let config = RuntimeConfig {
            slots: 1,
            device,
            allow_software_gpu: true,
            ..RuntimeConfig::default()
        };
        let rt = Runtime::new(store, config).expect("runtime");
        let bench = Self {
            _dir: dir,
            rt,
            module,
        };
        // Compiles the module and starts the backend.
        bench.run(16, 1);
        bench
    }

    /// Runs the task once at size `n` with `reps` products; returns its wall time and backend.
    fn run(&self, n: usize, reps: u32) -> (Duration, Option<String>) {
        let spec = TaskSpec {
            module: self.module,
            task: None,
            inputs: vec![],
            args: vec![
                ("n".into(), n.to_string()),
                ("seed".into(), "1".into()),
                ("reps".into(), reps.to_string()),
            ],
            limits: Limits {
                timeout: Duration::from_secs(300),
                cpu_budget: Duration::from_secs(600),
                ..Limits::default()
            },
        };
        let started = Instant::now();
        let report = self.rt.run_blocking(&spec);
        let took = started.elapsed();
        assert!(
            report.result.is_ok(),
            "n={n} failed: {:?}\n{}",
            report.result,
            report.logs
        );
        (took, report.stats.backend)
    }

    /// Median wall time of `runs` tasks at size `n`.
    fn time(&self, n: usize, reps: u32, runs: usize) -> (Duration, Option<String>) {
        let mut backend = None;
        let times = (0..runs)
            .map(|_| {
                let (t, name) = self.run(n, reps);
                backend = name;
                t
            })
            .collect();
        (median(times), backend)
    }
}

fn native(backend: &dyn Backend, n: usize, runs: usize) -> Duration {
    let len = n * n;
    let a: Vec<f32> = (0..len).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect();
    let shape = Shape::new(n as u32, n as u32);
    let (a, b) = (
        backend.upload(a.clone(), shape).expect("upload"),
        backend.upload(a, shape).expect("upload"),
    );
    let op = TensorOp::Matmul {
        trans_a: false,
        trans_b: false,
    };
    drop(backend.execute(op, &[&a, &b]).expect("warm-up"));
    median(
        (0..runs)
            .map(|_| {
                let started = Instant::now();
                drop(backend.execute(op, &[&a, &b]).expect("matmul"));
                started.elapsed()
            })
            .collect(),
    )
}

/// numpy's matmul GFLOP/s at each size (median of 7), or why there is none.
fn numpy() -> Result<Vec<f64>, String> {
    let python = std::env::var("SHOAL_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let sizes = SIZES.map(|n| n.to_string()).join(",");
    let script = format!(
        "import time, numpy as np\n\
         for n in [{sizes}]:\n\
         \x20   a = np.random.rand(n, n).astype(np.float32); b = a.copy(); a @ b\n\
         \x20   ts = []\n\
         \x20   for _ in range(7):\n\
         \x20       t = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t)\n\
         \x20   print(2 * n**3 / sorted(ts)[3] / 1e9)\n"
    );
    let out = Command::new(&python)
        .args(["-c", &script])
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{python} has no numpy ({}): pip install numpy, or set SHOAL_BENCH_PYTHON",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            l.trim()
                .parse()
                .map_err(|e| format!("bad numpy output {l:?}: {e}"))
        })
        .collect()
}

fn main() {
    let cpu = CpuBackend::new();
    let wasm = Bench::new(shoal_task_artifacts::MATMUL_WASM, DeviceChoice::Cpu);
    let host_cpu = Bench::new(shoal_task_artifacts::MATMUL, DeviceChoice::Cpu);
    let host_gpu = Bench::new(shoal_task_artifacts::MATMUL, DeviceChoice::Gpu);
    let software_gpu = GpuBackend::new(true)
        .map(|g| g.is_software())
        .unwrap_or(true);
    // A software adapter (llvmpipe) runs at ~0.4 GFLOP/s: only the small sizes finish.
    let gpu_max = if software_gpu { 512 } else { usize::MAX };
    let numpy = numpy();

    println!("matmul GFLOP/s, 2 n^3 / median time");
    println!("native cpu kernel: {}", cpu.name());
    if let Err(why) = &numpy {
        println!("numpy column empty: {why}");
    }
    println!(
        "{:>5} | {:>9} | {:>8} | {:>9} | {:>10} | {:>6} | {:>8} | {:>12} | {:>12}",
        "n",
        "pure wasm",
        "task cpu",
        "guest cpu",
        "native cpu",
        "numpy",
        "task gpu",
        "guest/native",
        "guest/numpy"
    );
    let mut wasm_1024 = Duration::ZERO;
    let mut gpu_name = None;
    for (i, n) in SIZES.into_iter().enumerate() {
        let wasm_col = if n == 2048 && wasm_1024 > WASM_2048_BUDGET {
            "skipped".to_owned()
        } else {
            let (t, _) = wasm.time(n, 1, 1);
            if n == 1024 {
                wasm_1024 = t;
            }
            format!("{:.2}", gflops(n, t))
        };
        let (task_t, _) = host_cpu.time(n, 1, runs(n));
        let (reps_t, _) = host_cpu.time(n, REPS, runs(n));
        let guest = gflops(n, reps_t.saturating_sub(task_t) / (REPS - 1));
        let native = gflops(n, native(&cpu, n, runs(n).max(5)));
        let gpu_col = if n <= gpu_max {
            let (t, name) = host_gpu.time(n, 1, 1);
            gpu_name = gpu_name.or(name);
            format!("{:.3}", gflops(n, t))
        } else {
            "-".to_owned()
        };
        let (numpy_col, vs_numpy) = match &numpy {
            Ok(rates) => (
                format!("{:.1}", rates[i]),
                format!("{:.2}", guest / rates[i]),
            ),
            Err(_) => ("-".to_owned(), "-".to_owned()),
        };
        println!(
            "{n:>5} | {wasm_col:>9} | {:>8.2} | {guest:>9.2} | {native:>10.2} | {numpy_col:>6} | {gpu_col:>8} | {:>12.2} | {vs_numpy:>12}",
            gflops(n, task_t),
            guest / native,
        );
    }
    println!("gpu backend: {}", gpu_name.unwrap_or_else(|| "none".into()));
}
