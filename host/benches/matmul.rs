//! Matmul throughput: the native cpu kernel (in blocks on all cores, each block checking the
//! op's budget; the kernel is picked for the CPU at run time, its ISA printed and in the group
//! name: `avx512` is the backend's own AVX-512 kernel, `avx2` the `gemm` crate's) next to one
//! plain multi-threaded gemm call as its reference, and the wgpu
//! shader on whatever adapter wgpu finds (a software one included, named in the output).
//! The `deterministic` group sets the deterministic cpu backend (bit-identical on every CPU)
//! beside the gemm one, on matmul and on an element-wise `tanh`.
//!
//! Criterion's throughput is reported in elements/s with one element per flop (`2 n^3` per
//! matmul), so `Gelem/s` reads as GFLOP/s. Run with `cargo bench -p shoal-host --bench matmul`
//! (`-- deterministic` for that group alone).

use std::{hint::black_box, sync::Arc, time::Duration};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shoal_host::compute::{
    Backend, CpuBackend, DeterministicCpuBackend, GpuBackend, OpBudget, Shape, TensorOp, UnaryOp,
};

const CPU_SIZES: [u32; 4] = [256, 512, 1024, 2048];

fn operands(
    backend: &dyn Backend,
    n: u32,
) -> (shoal_host::compute::Tensor, shoal_host::compute::Tensor) {
    let len = n as usize * n as usize;
    let a: Vec<f32> = (0..len).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect();
    let b: Vec<f32> = (0..len).map(|i| ((i % 89) as f32 - 44.0) / 89.0).collect();
    let shape = Shape::new(n, n);
    match (backend.upload(a, shape), backend.upload(b, shape)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => panic!("uploading {n}x{n} operands: {e}"),
    }
}

fn reference_operands(n: u32) -> (Vec<f32>, Vec<f32>) {
    let len = n as usize * n as usize;
    let a = (0..len).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect();
    let b = (0..len).map(|i| ((i % 89) as f32 - 44.0) / 89.0).collect();
    (a, b)
}

/// `a @ b` for row-major `n x n` matrices in one multi-threaded gemm call.
fn gemm_rayon(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    assert!(a.len() == n * n && b.len() == n * n);
    let mut dst = vec![0.0f32; n * n];
    // SAFETY: all three matrices hold n*n values, read and written at row stride n and
    // column stride 1; `dst` is fresh, so nothing aliases it.
    unsafe {
        gemm::gemm(
            n,
            n,
            n,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            n as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
    dst
}

fn bench_matmul(c: &mut Criterion) {
    let matmul = TensorOp::Matmul {
        trans_a: false,
        trans_b: false,
    };

    let cpu = CpuBackend::new();
    println!("cpu matmul kernel: {} ({})", cpu.matmul_isa(), cpu.name());
    let mut group = c.benchmark_group(format!("matmul/{}", cpu.name()));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in CPU_SIZES {
        let (a, b) = operands(&cpu, n);
        group.throughput(Throughput::Elements(2 * u64::from(n).pow(3)));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |bench, _| {
            bench.iter(|| {
                black_box(
                    cpu.execute(matmul, &[&a, &b], &OpBudget::unlimited())
                        .expect("cpu matmul"),
                )
            });
        });
        // The reference, right after on the same noisy machine: one gemm call on all cores
        // (gemm's own rayon threads), with no blocks, budget or charging.
        let (a, b) = reference_operands(n);
        group.bench_with_input(BenchmarkId::new("gemm-rayon", n), &n, |bench, _| {
            bench.iter(|| black_box(gemm_rayon(&a, &b, n as usize)));
        });
    }
    group.finish();

    let gpu = match GpuBackend::new(true) {
        Ok(gpu) => Arc::new(gpu),
        Err(err) => {
            eprintln!("no wgpu adapter, skipping the gpu matmul bench: {err}");
            return;
        }
    };
    // A software adapter runs at a fraction of a GFLOP/s: keep it to sizes that finish.
    let sizes: &[u32] = if gpu.is_software() {
        &[128, 256]
    } else {
        &CPU_SIZES
    };
    let mut group = c.benchmark_group(format!("matmul/{}", gpu.name()));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for &n in sizes {
        let (a, b) = operands(gpu.as_ref(), n);
        group.throughput(Throughput::Elements(2 * u64::from(n).pow(3)));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |bench, _| {
            bench.iter(|| {
                let out = gpu
                    .execute(matmul, &[&a, &b], &OpBudget::unlimited())
                    .expect("gpu matmul");
                // execute() only submits; time the work itself.
                gpu.wait_idle().expect("gpu wait");
                black_box(out)
            });
        });
    }
    group.finish();
}

/// What bit-identical results cost: the deterministic backend's fast kernels (and, at the
/// small size, its plain ones) beside gemm's, on all cores, each right after the other.
fn bench_deterministic(c: &mut Criterion) {
    let matmul = TensorOp::Matmul {
        trans_a: false,
        trans_b: false,
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let gemm = CpuBackend::new();
    let fast = DeterministicCpuBackend::new();
    let plain = DeterministicCpuBackend::with(threads, false);
    let mut group = c.benchmark_group("deterministic");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in [256, 1024] {
        let mut backends: Vec<&dyn Backend> = vec![&gemm, &fast];
        if n == 256 {
            backends.push(&plain);
        }
        group.throughput(Throughput::Elements(2 * u64::from(n).pow(3)));
        for backend in backends {
            let (a, b) = operands(backend, n);
            let id = BenchmarkId::new(format!("matmul/{}", backend.name()), n);
            group.bench_with_input(id, &n, |bench, _| {
                bench.iter(|| {
                    black_box(
                        backend
                            .execute(matmul, &[&a, &b], &OpBudget::unlimited())
                            .expect("matmul"),
                    )
                });
            });
        }
    }
    // Element-wise: `exp` and `tanh` come from the pure-Rust libm here, the platform's there.
    let n = 1024;
    let tanh = TensorOp::Activation(UnaryOp::Tanh);
    group.throughput(Throughput::Elements(u64::from(n).pow(2)));
    for backend in [&gemm as &dyn Backend, &fast] {
        let (a, _) = operands(backend, n);
        let id = BenchmarkId::new(format!("tanh/{}", backend.name()), n);
        group.bench_with_input(id, &n, |bench, _| {
            bench.iter(|| {
                black_box(
                    backend
                        .execute(tanh, &[&a], &OpBudget::unlimited())
                        .expect("tanh"),
                )
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_matmul, bench_deterministic);
criterion_main!(benches);
