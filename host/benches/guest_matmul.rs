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
//! Every figure is `2 n^3` flops over a median. The machines these run on are noisy, so the
//! cpu columns are timed in interleaved rounds (task, task with repeats, native, numpy), not
//! one column after another. Pure wasm and gpu are timed once per size.
//!
//! `cargo bench --profile dev -p shoal-host --bench guest_matmul`
//! (`SHOAL_BENCH_PYTHON` names a python with numpy; default the workspace's
//! `target/bench-venv/bin/python` where there is one, else `python3`.)

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdout, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use shoal_host::{
    compute::{Backend, CpuBackend, DeviceChoice, GpuBackend, OpBudget, Shape, Tensor, TensorOp},
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

/// Interleaved rounds per size: one timing of each cpu column per round.
fn rounds(n: usize) -> usize {
    if n >= 2048 { 5 } else { 9 }
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
            depth: 0,
            deterministic: false,
            tenant: None,
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
}

/// The cpu kernel called natively on one pair of `n x n` operands, made and warmed up once.
struct Native<'b> {
    backend: &'b dyn Backend,
    a: Tensor,
    b: Tensor,
}

impl<'b> Native<'b> {
    const OP: TensorOp = TensorOp::Matmul {
        trans_a: false,
        trans_b: false,
    };

    fn new(backend: &'b dyn Backend, n: usize) -> Self {
        let values: Vec<f32> = (0..n * n)
            .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
            .collect();
        let shape = Shape::new(n as u32, n as u32);
        let a = backend.upload(values.clone(), shape).expect("upload");
        let b = backend.upload(values, shape).expect("upload");
        drop(
            backend
                .execute(Self::OP, &[&a, &b], &OpBudget::unlimited())
                .expect("warm-up"),
        );
        Self { backend, a, b }
    }

    /// One product's wall time.
    fn time(&self) -> Duration {
        let started = Instant::now();
        drop(
            self.backend
                .execute(Self::OP, &[&self.a, &self.b], &OpBudget::unlimited())
                .expect("matmul"),
        );
        started.elapsed()
    }
}

/// A python child that times one `numpy.matmul` of `n x n` f32 matrices per request, so its
/// timings interleave with ours on this noisy machine.
struct Numpy {
    child: Child,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Numpy {
    const SCRIPT: &str = "import sys, time, numpy as np\n\
        m = {}\n\
        print('ready', flush=True)\n\
        for line in sys.stdin:\n\
        \x20   n = int(line)\n\
        \x20   if n not in m:\n\
        \x20       a = np.random.rand(n, n).astype(np.float32); m[n] = (a, a.copy()); a @ a\n\
        \x20   a, b = m[n]\n\
        \x20   t = time.perf_counter(); a @ b; print(time.perf_counter() - t, flush=True)\n";

    /// Starts the child, or says why there is no numpy.
    fn start() -> Result<Self, String> {
        let venv = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/bench-venv/bin/python"
        );
        let python = std::env::var("SHOAL_BENCH_PYTHON").unwrap_or_else(|_| {
            if std::path::Path::new(venv).exists() {
                venv.into()
            } else {
                "python3".into()
            }
        });
        let mut child = Command::new(&python)
            .args(["-c", Self::SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {python}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        match lines.next() {
            Some(Ok(l)) if l == "ready" => Ok(Self { child, lines }),
            _ => Err(format!(
                "{python} has no numpy: pip install numpy, or set SHOAL_BENCH_PYTHON"
            )),
        }
    }

    fn time(&mut self, n: usize) -> Duration {
        let stdin = self.child.stdin.as_mut().expect("numpy stdin");
        writeln!(stdin, "{n}").expect("numpy request");
        let line = self
            .lines
            .next()
            .expect("numpy answer")
            .expect("numpy output");
        Duration::from_secs_f64(line.trim().parse().expect("numpy seconds"))
    }
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
    let mut numpy = Numpy::start();

    println!("matmul GFLOP/s, 2 n^3 / median time; cpu columns interleaved, round by round");
    println!(
        "native cpu kernel: {} (matmul isa: {})",
        cpu.name(),
        cpu.matmul_isa()
    );
    if let Err(why) = &numpy {
        println!("numpy column empty: {why}");
    }
    println!(
        "{:>5} | {:>9} | {:>8} | {:>9} | {:>10} | {:>6} | {:>8} | {:>12} | {:>11}",
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
    for n in SIZES {
        let wasm_col = if n == 2048 && wasm_1024 > WASM_2048_BUDGET {
            "skipped".to_owned()
        } else {
            let (t, _) = wasm.run(n, 1);
            if n == 1024 {
                wasm_1024 = t;
            }
            format!("{:.2}", gflops(n, t))
        };
        let gpu_col = if n <= gpu_max {
            let (t, name) = host_gpu.run(n, 1);
            gpu_name = gpu_name.or(name);
            format!("{:.3}", gflops(n, t))
        } else {
            "-".to_owned()
        };
        let native_kernel = Native::new(&cpu, n);
        let (mut task, mut guest, mut native_t, mut numpy_t) = (vec![], vec![], vec![], vec![]);
        for _ in 0..rounds(n) {
            let (one, _) = host_cpu.run(n, 1);
            let (many, _) = host_cpu.run(n, REPS);
            task.push(one);
            guest.push(many.saturating_sub(one) / (REPS - 1));
            native_t.push(native_kernel.time());
            if let Ok(numpy) = &mut numpy {
                numpy_t.push(numpy.time(n));
            }
        }
        let guest = gflops(n, median(guest));
        let native = gflops(n, median(native_t));
        let (numpy_col, vs_numpy) = if numpy_t.is_empty() {
            ("-".to_owned(), "-".to_owned())
        } else {
            let rate = gflops(n, median(numpy_t));
            (format!("{rate:.1}"), format!("{:.2}", guest / rate))
        };
        println!(
            "{n:>5} | {wasm_col:>9} | {:>8.2} | {guest:>9.2} | {native:>10.2} | {numpy_col:>6} | {gpu_col:>8} | {:>12.2} | {vs_numpy:>11}",
            gflops(n, median(task)),
            guest / native,
        );
    }
    println!("gpu backend: {}", gpu_name.unwrap_or_else(|| "none".into()));
}
