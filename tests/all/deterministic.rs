//! The deterministic cpu backend: every op against an f64 reference, with the tolerances of
//! `compute.rs`, on its fast and its plain kernels; then bit-identity of a training step
//! across kernels and thread counts, and its budget and NaN rules.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

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

/// Deterministic values in [-1, 1] (xorshift64*).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let bits = s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40; // 24 bits
            (bits as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(g) - w).abs();
        assert!(
            err <= tol(i),
            "{what}: element {i}: got {g}, want {w} (error {err:e} > tolerance {:e})",
            tol(i)
        );
    }
}

/// `op(X)[i][j]` of a row-major `shape` tensor.
fn at(x: &[f32], shape: Shape, transposed: bool, i: usize, j: usize) -> f64 {
    let cols = shape.cols as usize;
    f64::from(if transposed {
        x[j * cols + i]
    } else {
        x[i * cols + j]
    })
}

fn check_matmul(backend: &Arc<dyn Backend>, (m, k, n): (u32, u32, u32), ta: bool, tb: bool) {
    let mut t = TensorTable::new(backend.clone(), QUOTA);
    let sa = if ta {
        Shape::new(k, m)
    } else {
        Shape::new(m, k)
    };
    let sb = if tb {
        Shape::new(n, k)
    } else {
        Shape::new(k, n)
    };
    let a = values(sa.elements().unwrap(), u64::from(m * 31 + k));
    let b = values(sb.elements().unwrap(), u64::from(k * 17 + n));
    let hc = {
        let (ha, hb) = (t.create(&a[..], sa).unwrap(), t.create(&b[..], sb).unwrap());
        t.matmul(ha, hb, ta, tb).unwrap()
    };
    assert_eq!(t.shape(hc).unwrap(), Shape::new(m, n));
    let (m, k, n) = (m as usize, k as usize, n as usize);
    let mut want = vec![0.0; m * n];
    let mut mag = vec![0.0; m * n];
    for i in 0..m {
        for p in 0..k {
            let x = at(&a, sa, ta, i, p);
            for j in 0..n {
                let xy = x * at(&b, sb, tb, p, j);
                want[i * n + j] += xy;
                mag[i * n + j] += xy.abs();
            }
        }
    }
    let what = format!("{} matmul {m}x{k}x{n} ta={ta} tb={tb}", backend.name());
    assert_close(&what, &t.read(hc).unwrap(), &want, |i| 1e-6 + 2e-5 * mag[i]);
}

/// 1x1, primes, thin ones, and shapes that end mid-way through the fast kernel's register
/// tiles (up to 8 x 32) and depth blocks (256); every transpose.
fn matmul_awkward(backend: Arc<dyn Backend>) {
    for shape in [
        (1, 1, 1),
        (37, 53, 29),
        (17, 31, 13),
        (1, 129, 3),
        (130, 1, 70),
        (97, 257, 33),
        (9, 7, 259),
    ] {
        for ta in [false, true] {
            for tb in [false, true] {
                check_matmul(&backend, shape, ta, tb);
            }
        }
    }
}

fn elementwise(backend: Arc<dyn Backend>) {
    let mut t = TensorTable::new(backend.clone(), QUOTA);
    // 401 x 331 is past the size where blocks of rows go to the worker threads.
    for (r, c) in [(1, 1), (17, 31), (37, 53), (401, 331)] {
        let shape = Shape::new(r, c);
        let len = shape.elements().unwrap();
        let (a, b, bias) = (values(len, 1), values(len, 2), values(c as usize, 3));
        let ha = t.create(&a[..], shape).unwrap();
        let hb = t.create(&b[..], shape).unwrap();
        let hbias = t.create(&bias[..], Shape::new(1, c)).unwrap();
        let name = backend.name().to_owned();
        let check = |t: &TensorTable, h: u32, what: &str, f: &dyn Fn(usize) -> f64| {
            let want: Vec<f64> = (0..len).map(f).collect();
            let got = t.read(h).unwrap();
            assert_close(&format!("{name} {what} {shape}"), &got, &want, |i| {
                1e-6 * want[i].abs().max(1.0)
            });
        };
        let x = |i: usize| f64::from(a[i]);
        let y = |i: usize| f64::from(b[i]);
        let z = |i: usize| f64::from(bias[i % c as usize]);
        let h = t.add(ha, hb).unwrap();
        check(&t, h, "add", &|i| x(i) + y(i));
        let h = t.sub(ha, hb).unwrap();
        check(&t, h, "sub", &|i| x(i) - y(i));
        let h = t.mul(ha, hb).unwrap();
        check(&t, h, "mul", &|i| x(i) * y(i));
        let h = t.add(ha, hbias).unwrap();
        check(&t, h, "add broadcast row", &|i| x(i) + z(i));
        let h = t.sub(ha, hbias).unwrap();
        check(&t, h, "sub broadcast row", &|i| x(i) - z(i));
        let h = t.mul(ha, hbias).unwrap();
        check(&t, h, "mul broadcast row", &|i| x(i) * z(i));
        let h = t.scale(ha, -2.5).unwrap();
        check(&t, h, "scale", &|i| -2.5 * x(i));
        let h = t.axpy(0.75, ha, hb).unwrap();
        check(&t, h, "axpy", &|i| 0.75 * x(i) + y(i));
        let h = t.transpose(ha).unwrap();
        assert_eq!(t.shape(h).unwrap(), shape.transposed());
        check(&t, h, "transpose", &|i| {
            x((i % r as usize) * c as usize + i / r as usize)
        });
    }
}

/// An activation with its f64 function and derivative.
type ActivationCase = (UnaryOp, fn(f64) -> f64, fn(f64) -> f64);

fn activations(backend: Arc<dyn Backend>) {
    let mut t = TensorTable::new(backend.clone(), QUOTA);
    for (r, c) in [(1, 1), (17, 31), (37, 53), (401, 331)] {
        let shape = Shape::new(r, c);
        let len = shape.elements().unwrap();
        // Spread over [-12, 12], with the saturating tails and exact zero.
        let mut x: Vec<f32> = values(len, 4).iter().map(|v| v * 12.0).collect();
        x[0] = 0.0;
        if len > 2 {
            x[1] = 90.0;
            x[2] = -90.0;
        }
        let dy = values(len, 5);
        let hx = t.create(&x[..], shape).unwrap();
        let hdy = t.create(&dy[..], shape).unwrap();
        let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
        let cases: [ActivationCase; 3] = [
            (
                UnaryOp::Relu,
                |v| v.max(0.0),
                |v| if v > 0.0 { 1.0 } else { 0.0 },
            ),
            (UnaryOp::Sigmoid, sigmoid, |v| {
                let s = 1.0 / (1.0 + (-v).exp());
                s * (1.0 - s)
            }),
            (UnaryOp::Tanh, f64::tanh, |v| 1.0 - v.tanh() * v.tanh()),
        ];
        for (op, f, df) in cases {
            let what = format!("{} {op:?} {shape}", backend.name());
            let h = t.activation(op, hx).unwrap();
            let want: Vec<f64> = x.iter().map(|&v| f(f64::from(v))).collect();
            assert_close(&what, &t.read(h).unwrap(), &want, |i| {
                1e-5 * want[i].abs().max(1.0)
            });
            let h = t.activation_grad(op, hx, hdy).unwrap();
            let want: Vec<f64> = x
                .iter()
                .zip(&dy)
                .map(|(&v, &d)| f64::from(d) * df(f64::from(v)))
                .collect();
            assert_close(&format!("{what} grad"), &t.read(h).unwrap(), &want, |i| {
                1e-5 * want[i].abs().max(1.0)
            });
        }
    }
}

fn reductions(backend: Arc<dyn Backend>) {
    let mut t = TensorTable::new(backend.clone(), QUOTA);
    for (r, c) in [(1, 1), (17, 31), (1, 300), (300, 1), (37, 53), (401, 331)] {
        let shape = Shape::new(r, c);
        let x = values(shape.elements().unwrap(), 6);
        let hx = t.create(&x[..], shape).unwrap();
        let (r, c) = (r as usize, c as usize);
        for axis in [ReduceAxis::Axis0, ReduceAxis::Axis1] {
            let (outer, inner) = match axis {
                ReduceAxis::Axis0 => (c, r),
                ReduceAxis::Axis1 => (r, c),
            };
            let at = |o: usize, i: usize| match axis {
                ReduceAxis::Axis0 => f64::from(x[i * c + o]),
                ReduceAxis::Axis1 => f64::from(x[o * c + i]),
            };
            for op in [ReduceOp::Sum, ReduceOp::Mean] {
                let div = match op {
                    ReduceOp::Mean => inner as f64,
                    ReduceOp::Sum => 1.0,
                };
                let want: Vec<f64> = (0..outer)
                    .map(|o| (0..inner).map(|i| at(o, i)).sum::<f64>() / div)
                    .collect();
                let mag: Vec<f64> = (0..outer)
                    .map(|o| (0..inner).map(|i| at(o, i).abs()).sum::<f64>() / div)
                    .collect();
                let h = t.reduce(op, axis, hx).unwrap();
                let what = format!("{} {op:?} {axis:?} {shape}", backend.name());
                assert_close(&what, &t.read(h).unwrap(), &want, |i| 1e-6 + 1e-5 * mag[i]);
            }
        }
    }
}

fn softmax_xent(backend: Arc<dyn Backend>) {
    let mut t = TensorTable::new(backend.clone(), QUOTA);
    for (r, c) in [(1, 1), (1, 2), (17, 31), (64, 10), (37, 53), (401, 331)] {
        let shape = Shape::new(r, c);
        // Large logits: without the max subtracted, exp() would overflow.
        let mut logits: Vec<f32> = values(shape.elements().unwrap(), 7)
            .iter()
            .map(|v| v * 8.0)
            .collect();
        logits[0] = 100.0;
        let labels: Vec<f32> = (0..r).map(|i| ((i * 7 + 3) % c) as f32).collect();
        let hl = t.create(&logits[..], shape).unwrap();
        let hy = t.create(&labels[..], Shape::new(r, 1)).unwrap();
        let (r, c) = (r as usize, c as usize);
        let mut loss = vec![0.0f64; r];
        let mut grad = vec![0.0f64; r * c];
        for i in 0..r {
            let row: Vec<f64> = logits[i * c..(i + 1) * c]
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
            let label = labels[i] as usize;
            loss[i] = max + sum.ln() - row[label];
            for j in 0..c {
                let onehot = if j == label { 1.0 } else { 0.0 };
                grad[i * c + j] = ((row[j] - max).exp() / sum - onehot) / r as f64;
            }
        }
        let what = format!("{} softmax_xent {shape}", backend.name());
        let h = t.softmax_xent(hl, hy, XentReduction::PerRow).unwrap();
        assert_close(&what, &t.read(h).unwrap(), &loss, |i| {
            1e-5 * loss[i].abs().max(1.0)
        });
        let h = t.softmax_xent(hl, hy, XentReduction::Mean).unwrap();
        let mean = [loss.iter().sum::<f64>() / r as f64];
        assert_close(&format!("{what} mean"), &t.read(h).unwrap(), &mean, |_| {
            1e-5 * mean[0].abs().max(1.0)
        });
        let h = t.softmax_xent_backward(hl, hy).unwrap();
        let got = t.read(h).unwrap();
        assert_close(&format!("{what} backward"), &got, &grad, |_| 1e-6);
    }
}

macro_rules! reference_tests {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn matmul_awkward_shapes_all_transposes() {
                matmul_awkward($backend);
            }
            /// Several output tiles and depth blocks, on every transpose.
            #[test]
            fn matmul_300x257x190() {
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    check_matmul(&$backend, (300, 257, 190), ta, tb);
                }
            }
            #[test]
            fn elementwise_and_transpose() {
                elementwise($backend);
            }
            #[test]
            fn activations_and_gradients() {
                activations($backend);
            }
            #[test]
            fn sum_and_mean_both_axes() {
                reductions($backend);
            }
            #[test]
            fn softmax_xent_forward_backward() {
                softmax_xent($backend);
            }
        }
    };
}

reference_tests!(fast_kernels, fast(2));
reference_tests!(plain_kernels, plain(1));

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
