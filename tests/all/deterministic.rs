//! The deterministic cpu backend beyond `compute.rs`'s backend tests (which check every op of
//! its fast and plain kernels against the f64 reference): bit-identity of a training step
//! across kernels and thread counts, and its budget and NaN rules.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::compute::{check_matmul, values};
use shoal_host::compute::{
    Backend, BackendKind, BinaryOp, ComputeError, DeterministicCpuBackend, OpBudget, Overrun,
    ReduceAxis, ReduceOp, Shape, TensorOp, TensorTable, UnaryOp, XentReduction,
};

const QUOTA: u64 = 1 << 30;

fn fast(threads: usize) -> Arc<dyn Backend> {
    Arc::new(DeterministicCpuBackend::with(threads, true))
}

fn plain(threads: usize) -> Arc<dyn Backend> {
    Arc::new(DeterministicCpuBackend::with(threads, false))
}

/// Several output tiles and depth blocks of the fast kernels, on every transpose (the other
/// shapes and ops run in `compute.rs`'s backend tests, for this backend too).
#[test]
fn matmul_300x257x190_on_both_kernels() {
    for backend in [fast(2), plain(1)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            check_matmul(&backend, 300, 257, 190, ta, tb);
        }
    }
}

/// One step of a two-layer MLP (forward, backward, an SGD update) on `backend`, and the blake3
/// hash of the bytes of every tensor it made. Large enough that each matmul and most
/// element-wise ops are shared out over several blocks.
fn mlp_step(backend: Arc<dyn Backend>) -> blake3::Hash {
    let (batch, inputs, hidden, classes) = (520, 300, 257, 10);
    let mut t = TensorTable::new(backend, QUOTA);
    let mut create =
        |data: Vec<f32>, rows: u32, cols: u32| t.create(data, Shape::new(rows, cols)).unwrap();
    let x = create(values(batch * inputs, 11), batch as u32, inputs as u32);
    let w1 = create(values(inputs * hidden, 12), inputs as u32, hidden as u32);
    let b1 = create(values(hidden, 13), 1, hidden as u32);
    let w2 = create(values(hidden * classes, 14), hidden as u32, classes as u32);
    let b2 = create(values(classes, 15), 1, classes as u32);
    let labels = (0..batch).map(|i| ((i * 7) % classes) as f32).collect();
    let y = create(labels, batch as u32, 1);

    let mut made = Vec::new();
    let mut keep = |h: u32| {
        made.push(h);
        h
    };
    // Forward.
    let z1 = keep(t.matmul(x, w1, false, false).unwrap());
    let z1 = keep(t.add(z1, b1).unwrap());
    let h1 = keep(t.activation(UnaryOp::Relu, z1).unwrap());
    let squashed = keep(t.activation(UnaryOp::Tanh, z1).unwrap());
    keep(t.activation(UnaryOp::Sigmoid, squashed).unwrap());
    let logits = keep(t.matmul(h1, w2, false, false).unwrap());
    let logits = keep(t.add(logits, b2).unwrap());
    keep(t.softmax_xent(logits, y, XentReduction::Mean).unwrap());
    keep(t.softmax_xent(logits, y, XentReduction::PerRow).unwrap());
    // Backward.
    let dlogits = keep(t.softmax_xent_backward(logits, y).unwrap());
    let dw2 = keep(t.matmul(h1, dlogits, true, false).unwrap());
    keep(t.reduce(ReduceOp::Sum, ReduceAxis::Axis0, dlogits).unwrap());
    let dh1 = keep(t.matmul(dlogits, w2, false, true).unwrap());
    let dz1 = keep(t.activation_grad(UnaryOp::Relu, z1, dh1).unwrap());
    keep(t.activation_grad(UnaryOp::Tanh, z1, dh1).unwrap());
    keep(t.activation_grad(UnaryOp::Sigmoid, z1, dh1).unwrap());
    let dw1 = keep(t.matmul(x, dz1, true, false).unwrap());
    keep(t.reduce(ReduceOp::Sum, ReduceAxis::Axis0, dz1).unwrap());
    keep(t.reduce(ReduceOp::Mean, ReduceAxis::Axis1, dz1).unwrap());
    let dz1_t = keep(t.transpose(dz1).unwrap());
    keep(t.matmul(dz1_t, x, false, false).unwrap());
    // The same product as dw1 with B transposed twice over: the same bits.
    let dw1_again = keep(t.matmul(x, dz1_t, true, true).unwrap());
    assert_eq!(t.read(dw1_again).unwrap(), t.read(dw1).unwrap());
    // SGD.
    keep(t.axpy(-0.1, dw1, w1).unwrap());
    keep(t.axpy(-0.1, dw2, w2).unwrap());
    let scaled = keep(t.scale(dz1, 0.5).unwrap());
    keep(t.mul(scaled, dh1).unwrap());
    keep(t.sub(scaled, b1).unwrap());

    let mut hasher = blake3::Hasher::new();
    for h in made {
        for v in t.read(h).unwrap() {
            hasher.update(&v.to_le_bytes());
        }
    }
    hasher.finalize()
}

#[test]
fn an_mlp_step_has_the_same_bits_on_every_kernel_and_thread_count() {
    let hashes: Vec<(String, blake3::Hash)> = [(1, false), (1, true), (2, true), (3, false)]
        .into_iter()
        .map(|(threads, fast)| {
            let backend = Arc::new(DeterministicCpuBackend::with(threads, fast));
            (backend.name().to_owned(), mlp_step(backend))
        })
        .collect();
    let (first, want) = &hashes[0];
    for (name, hash) in &hashes[1..] {
        assert_eq!(hash, want, "{name} differs from {first}");
    }
}

#[test]
fn it_is_a_cpu_backend_that_says_it_is_deterministic() {
    let backend: Arc<dyn Backend> = Arc::new(DeterministicCpuBackend::new());
    assert_eq!(backend.kind(), BackendKind::Cpu);
    assert!(
        backend.name().starts_with("cpu deterministic ("),
        "{}",
        backend.name()
    );
    let name = plain(3).name().to_owned();
    assert!(
        name.contains("3 threads") && name.contains("plain"),
        "{name}"
    );
    // Its tensors are counted while they live, and given back.
    let mut t = TensorTable::new(backend.clone(), QUOTA);
    let a = t.create(values(12, 1), Shape::new(3, 4)).unwrap();
    t.matmul(a, a, false, true).unwrap();
    assert_eq!(backend.live_bytes(), 48 + 36);
    drop(t);
    assert_eq!(backend.live_bytes(), 0);
}

const CANONICAL_NAN: u32 = 0x7fc0_0000;

/// Labels that are not class indices give NaN rows, and every NaN is the canonical one.
#[test]
fn bad_labels_give_canonical_nan_rows() {
    for backend in [fast(1), plain(1)] {
        let name = backend.name().to_owned();
        let mut t = TensorTable::new(backend, QUOTA);
        let hl = t
            .create([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], Shape::new(3, 2))
            .unwrap();
        let hy = t.create([1.0, 2.0, 0.5], Shape::new(3, 1)).unwrap();
        let bits = |t: &TensorTable, h: u32| -> Vec<u32> {
            t.read(h).unwrap().into_iter().map(f32::to_bits).collect()
        };
        let h = t.softmax_xent(hl, hy, XentReduction::PerRow).unwrap();
        let loss = bits(&t, h);
        assert!(f32::from_bits(loss[0]).is_finite(), "{name}: {loss:x?}");
        assert_eq!(loss[1..], [CANONICAL_NAN; 2], "{name}");
        let h = t.softmax_xent(hl, hy, XentReduction::Mean).unwrap();
        assert_eq!(bits(&t, h), [CANONICAL_NAN], "{name}");
        let h = t.softmax_xent_backward(hl, hy).unwrap();
        let grad = bits(&t, h);
        assert!(grad[..2].iter().all(|&g| f32::from_bits(g).is_finite()));
        assert_eq!(grad[2..], [CANONICAL_NAN; 4], "{name}");
        // A NaN made by the hardware (0 * inf) and one with a payload, through a matmul.
        let ha = t
            .create([0.0, f32::from_bits(0xffc0_1234)], Shape::new(1, 2))
            .unwrap();
        let hb = t.create([f32::INFINITY, 1.0], Shape::new(2, 1)).unwrap();
        let h = t.matmul(ha, hb, false, false).unwrap();
        assert_eq!(bits(&t, h), [CANONICAL_NAN], "{name}");
        let h = t.run(TensorOp::Binary(BinaryOp::Mul), &[ha, ha]).unwrap();
        assert_eq!(bits(&t, h), [0, CANONICAL_NAN], "{name}");
    }
}

const MATMUL: TensorOp = TensorOp::Matmul {
    trans_a: false,
    trans_b: false,
};

/// An op whose budget has run out starts nothing and keeps no output.
#[test]
fn spent_budgets_run_nothing() {
    for backend in [fast(2), plain(2)] {
        let a = backend.upload(vec![1.0; 4], Shape::new(2, 2)).unwrap();
        let late = OpBudget::new(Instant::now(), Duration::from_secs(1));
        let err = backend.execute(MATMUL, &[&a, &a], &late).unwrap_err();
        assert!(
            matches!(
                err,
                ComputeError::Cancelled {
                    overrun: Overrun::Deadline
                }
            ),
            "{}: {err}",
            backend.name()
        );
        assert_eq!(
            backend.live_bytes(),
            16,
            "{}: no output kept",
            backend.name()
        );
    }
}

/// Worker threads charge their CPU to the op's budget as they go: a zero allowance stops a
/// large matmul and a large element-wise op at their workers' first checkpoint, and a deadline
/// stops a long matmul within a block. With room to spare, the ops finish and charge what
/// they used.
#[test]
fn workers_charge_their_cpu_and_stop_at_their_limits() {
    for (backend, n) in [(fast(2), 2048), (plain(2), 1024)] {
        let name = backend.name().to_owned();
        let a = backend
            .upload(values(n * n, 9), Shape::new(n as u32, n as u32))
            .unwrap();
        for op in [MATMUL, TensorOp::Activation(UnaryOp::Tanh)] {
            let inputs = &[&a, &a][..op.arity()];
            let budget = OpBudget::new(Instant::now() + Duration::from_secs(60), Duration::ZERO);
            let err = backend.execute(op, inputs, &budget).unwrap_err();
            assert!(
                matches!(
                    err,
                    ComputeError::Cancelled {
                        overrun: Overrun::Cpu
                    }
                ),
                "{name} {}: {err}",
                op.name()
            );
            assert!(budget.cpu() > Duration::ZERO, "{name}: nothing charged");
            assert!(
                budget.cpu() < Duration::from_millis(50),
                "{name} {}: ran on for {:?}",
                op.name(),
                budget.cpu()
            );
        }
        let limit = Duration::from_millis(40);
        let started = Instant::now();
        let budget = OpBudget::new(started + limit, Duration::MAX);
        let err = backend.execute(MATMUL, &[&a, &a], &budget).unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(
                err,
                ComputeError::Cancelled {
                    overrun: Overrun::Deadline
                }
            ),
            "{name}: {err}"
        );
        assert!(
            took < limit + Duration::from_millis(100),
            "{name}: stopped only after {took:?}"
        );
        assert!(budget.cpu() > Duration::ZERO, "{name}: nothing charged");
        let budget = OpBudget::new(Instant::now() + Duration::from_secs(60), Duration::MAX);
        let tanh = TensorOp::Activation(UnaryOp::Tanh);
        backend.execute(tanh, &[&a], &budget).unwrap();
        assert!(budget.cpu() > Duration::ZERO, "{name}: nothing charged");
    }
}

/// Writes output `x`: 16 random bytes, the wall clock, and the monotonic clock twice.
const RANDOM_AND_CLOCKS: &str = r#"(module
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "shoal_v1" "output_write" (func $out (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "x")
  (func (export "shoal_task:t") (result i32)
    (drop (call $random (i32.const 0) (i32.const 16)))
    (drop (call $clock (i32.const 0) (i64.const 1) (i32.const 16)))
    (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 24)))
    (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 32)))
    (if (i32.lt_s (call $out (i32.const 100) (i32.const 1) (i32.const 0) (i32.const 40) (i32.const 200)) (i32.const 0))
      (then (return (i32.const 1))))
    (i32.const 0)))"#;

/// A deterministic task's randomness and clocks are the same on every run (so that verified
/// runs agree on honest nodes, and a task cannot make them disagree to get a peer marked
/// faulty); another task's are real.
#[test]
fn a_deterministic_task_draws_the_same_randomness_and_time_on_every_run() {
    let (_dir, rt) = crate::util::runtime(1);
    let mut spec = crate::util::wat_spec(&rt, RANDOM_AND_CLOCKS);
    let run = |spec: &shoal_host::runtime::TaskSpec| {
        let report = rt.run_blocking(spec);
        let outputs = report
            .result
            .unwrap_or_else(|f| panic!("{f}\n{}", report.logs));
        rt.store().read_file(&outputs[0].1).unwrap()
    };
    spec.deterministic = true;
    let (first, second) = (run(&spec), run(&spec));
    assert_eq!(first, second);
    let word = |at: usize| u64::from_le_bytes(first[at..at + 8].try_into().unwrap());
    assert_eq!(word(16), 0, "the wall clock stands at the Unix epoch");
    assert_eq!(
        (word(24), word(32)),
        (1_000, 2_000),
        "a microsecond per reading"
    );
    // Another spec draws other numbers.
    spec.args = vec![("k".into(), "v".into())];
    assert_ne!(run(&spec)[..16], first[..16]);
    spec.deterministic = false;
    assert_ne!(run(&spec)[..16], run(&spec)[..16]);
}
