//! The wgpu backend on a hardware GPU, against the cpu backend on the same machine, in one run:
//!
//! - matmul GFLOP/s at n = 448 (the 64-wide kernel for small outputs), 1024, 2048, 4096 and
//!   8192 (the 128-wide one), and one transposed product, each GPU product checked against
//!   the cpu backend's by ‖gpu − cpu‖ / ‖cpu‖, next to the card's own f32 GEMM (cuBLAS
//!   through PyTorch, TF32 off) where `SHOAL_BENCH_PYTHON` (default `python3`) has a CUDA
//!   PyTorch;
//! - one MLP training step (forward, backward, SGD on the resident parameters, the loss read
//!   back) at the digits model's size and at sizes that fill a GPU, on both backends from the
//!   same parameters, their losses compared; then the largest step on the GPU op by op;
//! - how much work one task can queue on the device before its deadline refuses it.
//!
//! Times are medians. A product's time is a batch of products submitted back to back, then
//! one wait, divided by the batch: what a training loop that keeps the queue full sees.
//! On a software adapter (lavapipe) it runs only small sizes, to check the bench itself.
//!
//! `cargo bench --profile dev -p shoal-host --bench gpu`

#[path = "common/data.rs"]
mod data;

use std::{
    collections::HashMap,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use data::pseudo_random_f32;
use shoal_host::compute::{
    Backend, CpuBackend, GpuBackend, OpBudget, ReduceAxis, ReduceOp, Shape, Tensor, TensorOp,
    TensorTable, UnaryOp, XentReduction,
};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// ‖a − b‖ / ‖b‖, in f64.
fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        diff += (f64::from(*x) - f64::from(*y)).powi(2);
        norm += f64::from(*y).powi(2);
    }
    (diff / norm).sqrt()
}

fn read(backend: &dyn Backend, t: &Tensor) -> Vec<f32> {
    let shape = t.shape();
    let mut out = vec![0.0; shape.rows as usize * shape.cols as usize];
    backend.read_into(t, &mut out).expect("read back");
    out
}

/// Seconds per product: `batch` products submitted back to back, then one wait.
fn time_products(
    backend: &dyn Backend,
    wait: &dyn Fn(),
    op: TensorOp,
    a: &Tensor,
    b: &Tensor,
    batch: usize,
    rounds: usize,
) -> f64 {
    let budget = OpBudget::unlimited();
    let run = || {
        let started = Instant::now();
        let outs: Vec<Tensor> = (0..batch)
            .map(|_| backend.execute(op, &[a, b], &budget).expect("matmul"))
            .collect();
        wait();
        let took = started.elapsed();
        drop(outs);
        took / batch as u32
    };
    run(); // warm up: pipelines, allocations, clocks
    median((0..rounds).map(|_| run()).collect()).as_secs_f64()
}

/// Times `a @ b` in f32 with TF32 off, the same way as [`time_products`] (batches, median
/// of 7, CUDA events): the card's own GEMM as the reference for the shader.
const CUBLAS: &str = r#"
import sys, torch
torch.backends.cuda.matmul.allow_tf32 = False
torch.set_float32_matmul_precision("highest")
print("device", torch.cuda.get_device_name(0), flush=True)
for n in map(int, sys.argv[1:]):
    a = torch.rand(n, n, device="cuda") * 2 - 1
    b = torch.rand(n, n, device="cuda") * 2 - 1
    reps = max(1, min(64, int(4e12 / (2 * n**3))))
    times = []
    for i in range(8):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            c = a @ b
        end.record()
        torch.cuda.synchronize()
        if i > 0:
            times.append(start.elapsed_time(end) / 1e3 / reps)
    times.sort()
    print(n, 2 * n**3 / times[len(times) // 2] / 1e9, flush=True)
"#;

/// GFLOP/s of the card's f32 GEMM per size, or why there is none.
fn cublas_reference(sizes: &[u32]) -> Result<HashMap<u32, f64>, String> {
    let python = std::env::var("SHOAL_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(&python)
        .arg("-c")
        .arg(CUBLAS)
        .args(sizes.iter().map(u32::to_string))
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "{python}: {}",
            err.lines().last().unwrap_or("failed")
        ));
    }
    let mut gflops = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        match line.split_once(' ') {
            Some(("device", name)) => println!("cuBLAS reference on {name}"),
            Some((n, rate)) => {
                if let (Ok(n), Ok(rate)) = (n.parse(), rate.parse()) {
                    gflops.insert(n, rate);
                }
            }
            None => {}
        }
    }
    Ok(gflops)
}

fn bench_matmul(gpu: &GpuBackend, cpu: &CpuBackend, sizes: &[u32]) {
    let wait_gpu = || gpu.wait_idle().expect("gpu wait");
    let cublas = if gpu.is_software() {
        HashMap::new()
    } else {
        cublas_reference(sizes).unwrap_or_else(|why| {
            println!("no cuBLAS reference: {why}");
            HashMap::new()
        })
    };
    println!("\nmatmul, n x n x n, f32 (GFLOP/s; each gpu product checked against the cpu's)");
    println!(
        "{:>6} {:>5} {:>9} {:>9} {:>8} {:>9} {:>8} {:>10}",
        "n", "op", "gpu", "cuBLAS", "/cuBLAS", "cpu", "gpu/cpu", "rel. error"
    );
    for &n in sizes {
        let len = n as usize * n as usize;
        let (a, b) = (
            pseudo_random_f32(len, 1 + u64::from(n)),
            pseudo_random_f32(len, 2 + u64::from(n)),
        );
        let shape = Shape::new(n, n);
        let flops = 2.0 * f64::from(n).powi(3);
        for (name, trans_a, trans_b) in [("a·b", false, false), ("aᵀ·b", true, false)] {
            // The transposed product only at one size: its tiles load A the other way round.
            if trans_a && n != 4096 && sizes.len() > 2 {
                continue;
            }
            let op = TensorOp::Matmul { trans_a, trans_b };
            let (ga, gb) = (
                gpu.upload(a.clone(), shape).expect("upload"),
                gpu.upload(b.clone(), shape).expect("upload"),
            );
            let (ca, cb) = (
                cpu.upload(a.clone(), shape).expect("upload"),
                cpu.upload(b.clone(), shape).expect("upload"),
            );
            let budget = OpBudget::unlimited();
            let expected = read(cpu, &cpu.execute(op, &[&ca, &cb], &budget).expect("cpu"));
            let got = read(gpu, &gpu.execute(op, &[&ga, &gb], &budget).expect("gpu"));
            let error = relative_error(&got, &expected);
            // About 0.2 s of work per timed batch on a fast GPU, at least one product; one
            // on a software adapter, which only checks the bench.
            let batch = if gpu.is_software() {
                1
            } else {
                ((4e12 / flops) as usize).clamp(1, 64)
            };
            let gpu_s = time_products(gpu, &wait_gpu, op, &ga, &gb, batch, 7);
            let cpu_rounds = if n >= 8192 { 1 } else { 3 };
            let cpu_s = time_products(cpu, &|| {}, op, &ca, &cb, 1, cpu_rounds);
            let gpu_rate = flops / gpu_s / 1e9;
            let (reference, ratio) = match cublas.get(&n) {
                Some(r) if !trans_a => (format!("{r:.1}"), format!("{:.2}", gpu_rate / r)),
                _ => ("-".into(), "-".into()),
            };
            println!(
                "{n:>6} {name:>5} {gpu_rate:>9.1} {reference:>9} {ratio:>8} {:>9.1} {:>7.1}x {:>10.2e}",
                flops / cpu_s / 1e9,
                cpu_s / gpu_s,
                error
            );
            assert!(error < 1e-4, "gpu matmul at n = {n} is wrong: {error:e}");
        }
    }
}

/// One SGD step of a `inputs`-`hidden`-`classes` MLP on a batch: forward, loss (read back,
/// as a training loop does), backward, update. Returns the loss and the new parameters.
/// `mark(op)` is called after each op is submitted: the per-op breakdown waits there.
fn mlp_step(
    t: &mut TensorTable,
    p: [u32; 4],
    x: u32,
    y: u32,
    mark: &mut dyn FnMut(&'static str),
) -> (f32, [u32; 4]) {
    let mut op = |name: &'static str, handle: Result<u32, _>| {
        mark(name);
        handle.expect(name)
    };
    let h = op("x·w1", t.matmul(x, p[0], false, false));
    let z1 = op("+ b1", t.add(h, p[1]));
    let a1 = op("relu", t.activation(UnaryOp::Relu, z1));
    let o = op("a1·w2", t.matmul(a1, p[2], false, false));
    let logits = op("+ b2", t.add(o, p[3]));
    let loss = op("xent", t.softmax_xent(logits, y, XentReduction::Mean));
    let dlogits = op("xent grad", t.softmax_xent_backward(logits, y));
    let gw2 = op("a1ᵀ·dlogits", t.matmul(a1, dlogits, true, false));
    let gb2 = op(
        "sum0 dlogits",
        t.reduce(ReduceOp::Sum, ReduceAxis::Axis0, dlogits),
    );
    let da1 = op("dlogits·w2ᵀ", t.matmul(dlogits, p[2], false, true));
    let dz1 = op("relu grad", t.activation_grad(UnaryOp::Relu, z1, da1));
    let gw1 = op("xᵀ·dz1", t.matmul(x, dz1, true, false));
    let gb1 = op("sum0 dz1", t.reduce(ReduceOp::Sum, ReduceAxis::Axis0, dz1));
    let grads = [gw1, gb1, gw2, gb2];
    let mut next = [0; 4];
    for i in 0..4 {
        next[i] = op("sgd", t.axpy(-0.01, grads[i], p[i]));
    }
    let loss_value = t.read(loss).expect("read the loss")[0];
    mark("read loss");
    for handle in [h, z1, a1, o, logits, loss, dlogits, da1, dz1]
        .into_iter()
        .chain(grads)
        .chain(p)
    {
        t.free(handle).expect("free");
    }
    (loss_value, next)
}

/// A table holding a batch and the parameters of a `rows`, `inputs`-`hidden`-`classes`
/// MLP, the same values on every backend: `(table, params, x, y)`.
fn mlp_setup(
    backend: Arc<dyn Backend>,
    (rows, inputs, hidden, classes): (u32, u32, u32, u32),
) -> (TensorTable, [u32; 4], u32, u32) {
    let mut t = TensorTable::new(backend, 16 << 30);
    let mut up = |v: Vec<f32>, r: u32, c: u32| t.create(v, Shape::new(r, c)).expect("upload");
    let scale = |v: Vec<f32>, s: f32| v.into_iter().map(|x| x * s).collect::<Vec<_>>();
    let x = up(pseudo_random_f32((rows * inputs) as usize, 3), rows, inputs);
    let labels: Vec<f32> = (0..rows).map(|i| (i % classes) as f32).collect();
    let y = up(labels, rows, 1);
    let p = [
        up(
            scale(pseudo_random_f32((inputs * hidden) as usize, 4), 0.05),
            inputs,
            hidden,
        ),
        up(vec![0.0; hidden as usize], 1, hidden),
        up(
            scale(pseudo_random_f32((hidden * classes) as usize, 5), 0.05),
            hidden,
            classes,
        ),
        up(vec![0.0; classes as usize], 1, classes),
    ];
    (t, p, x, y)
}

/// Median seconds per step and the first step's loss, for `steps` steps from the same start.
fn time_mlp(backend: Arc<dyn Backend>, shape: (u32, u32, u32, u32), steps: usize) -> (f64, f32) {
    let (mut t, mut p, x, y) = mlp_setup(backend, shape);
    let mut times = Vec::new();
    let mut first_loss = None;
    for _ in 0..steps + 1 {
        let started = Instant::now();
        let (loss, next) = mlp_step(&mut t, p, x, y, &mut |_| {});
        times.push(started.elapsed());
        first_loss.get_or_insert(loss);
        p = next;
    }
    times.remove(0); // the first step compiles and allocates
    (
        median(times).as_secs_f64(),
        first_loss.expect("one step ran"),
    )
}

/// Where a GPU step's time goes: each op waited for on its own, medians over `steps` steps,
/// split into the host's part (from the last op's end until this one is submitted) and the
/// wait for the device. Waiting serialises what the queue would overlap, so the parts add
/// up to more than a step.
fn mlp_breakdown(gpu: &Arc<GpuBackend>, shape: (u32, u32, u32, u32), steps: usize) {
    let (mut t, mut p, x, y) = mlp_setup(gpu.clone(), shape);
    // Per op: its name, then the host's and the wait's times over the steps.
    let mut times: Vec<(&'static str, Vec<Duration>, Vec<Duration>)> = Vec::new();
    for step in 0..steps + 1 {
        let (mut i, mut last) = (0, Instant::now());
        let mut mark = |name: &'static str| {
            let submitted = Instant::now();
            gpu.wait_idle().expect("gpu wait");
            let now = Instant::now();
            if step > 0 {
                if times.len() == i {
                    times.push((name, Vec::new(), Vec::new()));
                }
                times[i].1.push(submitted - last);
                times[i].2.push(now - submitted);
            }
            (i, last) = (i + 1, now);
        };
        p = mlp_step(&mut t, p, x, y, &mut mark).1;
    }
    let (rows, inputs, hidden, classes) = shape;
    println!(
        "\n{rows}, {inputs}-{hidden}-{classes} on the gpu, each op waited for, median ms \
         (host: until submitted; wait: for the device):"
    );
    let ms = |d: &[Duration]| median(d.to_vec()).as_secs_f64() * 1e3;
    for (name, host, wait) in &times {
        println!("  {name:>14}  host {:8.3}  wait {:8.3}", ms(host), ms(wait));
    }
}

fn bench_mlp(gpu: &Arc<GpuBackend>, cpu: Arc<dyn Backend>, shapes: &[(u32, u32, u32, u32)]) {
    println!("\nMLP training step (forward, backward, SGD, loss read back), median ms per step");
    println!(
        "{:>24} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "rows, in-hidden-out", "gpu", "cpu", "cpu/gpu", "gpu GF/s", "loss diff"
    );
    for &shape in shapes {
        let (rows, inputs, hidden, classes) = shape;
        let flops = 6.0 * f64::from(rows) * f64::from(inputs * hidden + hidden * classes);
        let steps = if flops > 1e11 { 5 } else { 20 };
        let (gpu_s, gpu_loss) = time_mlp(gpu.clone(), shape, steps);
        let (cpu_s, cpu_loss) = time_mlp(cpu.clone(), shape, steps);
        let diff = (gpu_loss - cpu_loss).abs() / cpu_loss.abs();
        println!(
            "{:>24} {:>9.3} {:>9.3} {:>8.1}x {:>10.1} {:>10.1e}",
            format!("{rows}, {inputs}-{hidden}-{classes}"),
            gpu_s * 1e3,
            cpu_s * 1e3,
            cpu_s / gpu_s,
            flops / gpu_s / 1e9,
            diff
        );
        assert!(diff < 1e-3, "the gpu step's loss differs from the cpu's");
    }
    if let Some(&largest) = shapes.last() {
        mlp_breakdown(gpu, largest, 5);
    }
}

/// A task that submits products as fast as it can, with a deadline 4 products away: how many
/// the backend takes before it refuses one (the device's queue bound makes the task wait),
/// and how long after the deadline the device is busy with what was taken.
fn bench_queue_bound(gpu: &GpuBackend, n: u32) {
    let shape = Shape::new(n, n);
    let len = n as usize * n as usize;
    let a = gpu
        .upload(pseudo_random_f32(len, 6), shape)
        .expect("upload");
    let op = TensorOp::Matmul {
        trans_a: false,
        trans_b: false,
    };
    let one = time_products(gpu, &|| gpu.wait_idle().expect("wait"), op, &a, &a, 1, 3);
    let one = Duration::from_secs_f64(one);
    let started = Instant::now();
    let deadline = started + one * 4;
    let budget = OpBudget::new(deadline, Duration::MAX);
    let mut outs = Vec::new();
    let refused = loop {
        match gpu.execute(op, &[&a, &a], &budget) {
            Ok(out) if outs.len() < 1000 => outs.push(out),
            Ok(_) => break "nothing, after 1000".to_string(),
            Err(err) => break err.to_string(),
        }
    };
    let refused_after = started.elapsed();
    gpu.wait_idle().expect("wait");
    let idle = Instant::now().saturating_duration_since(deadline);
    println!(
        "\nqueue bound: {n}² products as fast as they go, deadline 4 products ({:.2} ms) away: \
         {} taken, then refused ({refused}) at {:.2} ms; the device idle {:.2} ms after the \
         deadline",
        one.as_secs_f64() * 4e3,
        outs.len(),
        refused_after.as_secs_f64() * 1e3,
        idle.as_secs_f64() * 1e3
    );
}

fn main() {
    let gpu = Arc::new(GpuBackend::new(true).expect("a wgpu adapter"));
    let cpu = Arc::new(CpuBackend::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("gpu: {}", gpu.name());
    println!(
        "cpu: {} kernel, {threads} threads ({})",
        cpu.matmul_isa(),
        cpu.name()
    );
    let (sizes, shapes): (&[u32], &[_]) = if gpu.is_software() {
        println!("a software adapter: small sizes only, to check the bench");
        (&[256, 600], &[(1346, 64, 64, 10)])
    } else {
        (
            &[448, 1024, 2048, 4096, 8192],
            &[
                (1346, 64, 64, 10),
                (4096, 784, 1024, 10),
                (8192, 1024, 4096, 10),
            ],
        )
    };
    bench_matmul(&gpu, &cpu, sizes);
    bench_queue_bound(&gpu, if gpu.is_software() { 256 } else { 4096 });
    bench_mlp(&gpu, cpu, shapes);
}
