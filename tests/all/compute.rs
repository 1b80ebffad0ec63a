//! Compute backends against an f64 reference, on both backends, plus hostile use of the
//! tensor table.
//!
//! The GPU tests run the WGSL shaders on whatever adapter wgpu finds, software ones included
//! (Debian's `mesa-vulkan-drivers` gives llvmpipe). With no adapter at all they fail; they
//! never skip.
//!
//! Tolerances (values drawn uniformly from [-1, 1]):
//! - matmul: `|got - ref| <= 1e-6 + 2e-5 * sum_p |a_ip * b_pj|`;
//! - element-wise arithmetic and transpose: `|got - ref| <= 1e-6 * max(1, |ref|)`;
//! - activations and their gradients: `|got - ref| <= 1e-5 * max(1, |ref|)`;
//! - reductions: `|got - ref| <= 1e-6 + 1e-5 * sum |x| / count` (count = 1 for sums);
//! - softmax cross-entropy: loss `1e-5 * max(1, |ref|)`, gradient `1e-6` absolute.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use shoal::abi::ErrorCode;
use shoal_host::compute::{
    Backend, BackendKind, ComputeError, DeterministicCpuBackend, DeviceChoice, GpuBackend,
    OpBudget, Overrun, ReduceAxis, ReduceOp, Shape, TensorOp, TensorTable, UnaryOp, XentReduction,
    select_backend,
};

const QUOTA: u64 = 1 << 30;

/// The node-wide GPU backend, made once for all tests (as a node would).
fn gpu() -> Arc<dyn Backend> {
    static GPU: OnceLock<Arc<dyn Backend>> = OnceLock::new();
    GPU.get_or_init(|| match select_backend(DeviceChoice::Gpu, true) {
        Ok(backend) => {
            eprintln!("gpu tests run on {}", backend.name());
            backend
        }
        Err(err) => panic!(
            "GPU tests need a wgpu adapter and none was usable: {err}. On Debian, \
             `apt-get install mesa-vulkan-drivers` provides the llvmpipe software adapter."
        ),
    })
    .clone()
}

fn cpu() -> Arc<dyn Backend> {
    select_backend(DeviceChoice::Cpu, false).expect("cpu backend")
}

/// Deterministic values in [-1, 1] (xorshift64*).
pub(crate) fn values(len: usize, seed: u64) -> Vec<f32> {
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
        let err = (g as f64 - w).abs();
        assert!(
            err <= tol(i),
            "{what}: element {i}: got {g}, want {w} (error {err:e} > tolerance {:e})",
            tol(i)
        );
    }
}

/// `op(A) @ op(B)` in f64, and per-entry `sum_p |a_ip b_pj|` for the tolerance.
fn matmul_ref(
    a: &[f32],
    sa: Shape,
    b: &[f32],
    sb: Shape,
    ta: bool,
    tb: bool,
) -> (Vec<f64>, Vec<f64>) {
    let (m, k) = if ta {
        (sa.cols, sa.rows)
    } else {
        (sa.rows, sa.cols)
    };
    let n = if tb { sb.rows } else { sb.cols };
    let (m, k, n) = (m as usize, k as usize, n as usize);
    // Materialise op(A) and op(B) in f64 once; the inner loop then walks plain rows.
    let a_op: Vec<f64> = (0..m * k)
        .map(|x| {
            let (i, p) = (x / k, x % k);
            f64::from(if ta { a[p * m + i] } else { a[i * k + p] })
        })
        .collect();
    let b_op: Vec<f64> = (0..k * n)
        .map(|x| {
            let (p, j) = (x / n, x % n);
            f64::from(if tb { b[j * k + p] } else { b[p * n + j] })
        })
        .collect();
    let mut out = vec![0.0; m * n];
    let mut mag = vec![0.0; m * n];
    for i in 0..m {
        let (out_row, mag_row) = (&mut out[i * n..(i + 1) * n], &mut mag[i * n..(i + 1) * n]);
        for p in 0..k {
            let x = a_op[i * k + p];
            for ((o, g), &y) in out_row
                .iter_mut()
                .zip(mag_row.iter_mut())
                .zip(&b_op[p * n..(p + 1) * n])
            {
                *o += x * y;
                *g += (x * y).abs();
            }
        }
    }
    (out, mag)
}

pub(crate) fn check_matmul(backend: &Arc<dyn Backend>, m: u32, k: u32, n: u32, ta: bool, tb: bool) {
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
    let ha = t.create(&a[..], sa).unwrap();
    let hb = t.create(&b[..], sb).unwrap();
    let hc = t.matmul(ha, hb, ta, tb).unwrap();
    assert_eq!(t.shape(hc).unwrap(), Shape::new(m, n));
    let (want, mag) = matmul_ref(&a, sa, &b, sb, ta, tb);
    let what = format!("{} matmul {m}x{k}x{n} ta={ta} tb={tb}", backend.name());
    assert_close(&what, &t.read(hc).unwrap(), &want, |i| 1e-6 + 2e-5 * mag[i]);
}

/// Awkward matmul shapes: 1x1, primes, non-multiples of the 64- and 128-wide tiles, thin
/// ones; every transpose variant of each.
fn matmul_awkward(backend: Arc<dyn Backend>) {
    for (m, k, n) in [
        (1, 1, 1),
        (17, 31, 13),
        (65, 67, 63),
        (1, 129, 3),
        (130, 1, 70),
        (64, 64, 64),
        // Ends mid-way through the deterministic kernels' register tiles and depth blocks.
        (37, 53, 29),
        (97, 257, 33),
        (9, 7, 259),
        // The GPU's 128-wide kernel for large outputs: partial tiles and a partial k slab.
        (513, 77, 515),
    ] {
        for ta in [false, true] {
            for tb in [false, true] {
                check_matmul(&backend, m, k, n, ta, tb);
            }
        }
    }
}

fn elementwise(backend: Arc<dyn Backend>) {
    let mut t = TensorTable::new(backend.clone(), QUOTA);
    for (r, c) in [(1, 1), (17, 31), (257, 263), (1024, 1024)] {
        let shape = Shape::new(r, c);
        let len = shape.elements().unwrap();
        let (a, b) = (values(len, 1), values(len, 2));
        let bias = values(c as usize, 3);
        let (ha, hb) = (
            t.create(&a[..], shape).unwrap(),
            t.create(&b[..], shape).unwrap(),
        );
        let hbias = t.create(&bias[..], Shape::new(1, c)).unwrap();
        let name = backend.name().to_owned();
        let check = |t: &TensorTable, h: u32, what: &str, f: &dyn Fn(usize) -> f64| {
            let want: Vec<f64> = (0..len).map(f).collect();
            assert_close(
                &format!("{name} {what} {shape}"),
                &t.read(h).unwrap(),
                &want,
                |i| 1e-6 * want[i].abs().max(1.0),
            );
        };
        let (x, y, z) = (
            |i: usize| a[i] as f64,
            |i: usize| b[i] as f64,
            |i: usize| bias[i % c as usize] as f64,
        );
        let h = t.add(ha, hb).unwrap();
        check(&t, h, "add", &|i| x(i) + y(i));
        let h = t.sub(ha, hb).unwrap();
        check(&t, h, "sub", &|i| x(i) - y(i));
        let h = t.mul(ha, hb).unwrap();
        check(&t, h, "mul", &|i| x(i) * y(i));
        let h = t.add(ha, hbias).unwrap();
        check(&t, h, "add broadcast row", &|i| x(i) + z(i));
        let h = t.mul(ha, hbias).unwrap();
        check(&t, h, "mul broadcast row", &|i| x(i) * z(i));
        let h = t.scale(ha, -2.5).unwrap();
        check(&t, h, "scale", &|i| -2.5 * x(i));
        let h = t.axpy(0.75, ha, hb).unwrap();
        check(&t, h, "axpy", &|i| 0.75 * x(i) + y(i));
        let h = t.transpose(ha).unwrap();
        assert_eq!(t.shape(h).unwrap(), shape.transposed());
        check(&t, h, "transpose", &|i| {
            let (j, k) = (i / r as usize, i % r as usize); // out is c x r
            a[k * c as usize + j] as f64
        });
    }
}

/// An activation with its f64 function and derivative.
type ActivationCase = (UnaryOp, fn(f64) -> f64, fn(f64) -> f64);

fn activations(backend: Arc<dyn Backend>) {
    let mut t = TensorTable::new(backend.clone(), QUOTA);
    for (r, c) in [(1, 1), (17, 31), (257, 263)] {
        let shape = Shape::new(r, c);
        let len = shape.elements().unwrap();
        // Spread inputs over [-12, 12] and include the saturating tails and exact zero.
        let mut x: Vec<f32> = values(len, 4).iter().map(|v| v * 12.0).collect();
        x[0] = 0.0;
        if len > 2 {
            x[1] = 90.0;
            x[2] = -90.0;
        }
        let dy = values(len, 5);
        let (hx, hdy) = (
            t.create(&x[..], shape).unwrap(),
            t.create(&dy[..], shape).unwrap(),
        );
        let cases: [ActivationCase; 3] = [
            (
                UnaryOp::Relu,
                |v| v.max(0.0),
                |v| if v > 0.0 { 1.0 } else { 0.0 },
            ),
            (
                UnaryOp::Sigmoid,
                |v| 1.0 / (1.0 + (-v).exp()),
                |v| {
                    let s = 1.0 / (1.0 + (-v).exp());
                    s * (1.0 - s)
                },
            ),
            (UnaryOp::Tanh, f64::tanh, |v| 1.0 - v.tanh() * v.tanh()),
        ];
        for (op, f, df) in cases {
            let what = format!("{} {op:?} {shape}", backend.name());
            let h = t.activation(op, hx).unwrap();
            let want: Vec<f64> = x.iter().map(|&v| f(v as f64)).collect();
            assert_close(&what, &t.read(h).unwrap(), &want, |i| {
                1e-5 * want[i].abs().max(1.0)
            });
            let h = t.activation_grad(op, hx, hdy).unwrap();
            let want: Vec<f64> = x
                .iter()
                .zip(&dy)
                .map(|(&v, &d)| d as f64 * df(v as f64))
                .collect();
            assert_close(&format!("{what} grad"), &t.read(h).unwrap(), &want, |i| {
                1e-5 * want[i].abs().max(1.0)
            });
        }
    }
}

fn reductions(backend: Arc<dyn Backend>) {
    let mut t = TensorTable::new(backend.clone(), QUOTA);
    for (r, c) in [
        (1, 1),
        (17, 31),
        (1, 300),
        (300, 1),
        (257, 263),
        (1024, 1024),
    ] {
        let shape = Shape::new(r, c);
        let x = values(shape.elements().unwrap(), 6);
        let hx = t.create(&x[..], shape).unwrap();
        let (r, c) = (r as usize, c as usize);
        for axis in [ReduceAxis::Axis0, ReduceAxis::Axis1] {
            for op in [ReduceOp::Sum, ReduceOp::Mean] {
                let (outer, inner) = match axis {
                    ReduceAxis::Axis0 => (c, r),
                    ReduceAxis::Axis1 => (r, c),
                };
                let at = |o: usize, i: usize| match axis {
                    ReduceAxis::Axis0 => x[i * c + o] as f64,
                    ReduceAxis::Axis1 => x[o * c + i] as f64,
                };
                let div = if op == ReduceOp::Mean {
                    inner as f64
                } else {
                    1.0
                };
                let want: Vec<f64> = (0..outer)
                    .map(|o| (0..inner).map(|i| at(o, i)).sum::<f64>() / div)
                    .collect();
                let mag: Vec<f64> = (0..outer)
                    .map(|o| (0..inner).map(|i| at(o, i).abs()).sum::<f64>() / div)
                    .collect();
                let h = t.reduce(op, axis, hx).unwrap();
                let expect_shape = match axis {
                    ReduceAxis::Axis0 => Shape::new(1, c as u32),
                    ReduceAxis::Axis1 => Shape::new(r as u32, 1),
                };
                assert_eq!(t.shape(h).unwrap(), expect_shape);
                let what = format!("{} {op:?} {axis:?} {shape}", backend.name());
                assert_close(&what, &t.read(h).unwrap(), &want, |i| 1e-6 + 1e-5 * mag[i]);
            }
        }
    }
}

fn softmax_xent(backend: Arc<dyn Backend>) {
    let mut t = TensorTable::new(backend.clone(), QUOTA);
    for (r, c) in [(1, 1), (1, 2), (17, 31), (64, 10), (257, 263), (1024, 1024)] {
        let shape = Shape::new(r, c);
        // Large logits: without max subtraction exp() would overflow.
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
                .map(|&v| v as f64)
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
        assert_eq!(t.shape(h).unwrap(), Shape::new(r as u32, 1));
        assert_close(&what, &t.read(h).unwrap(), &loss, |i| {
            1e-5 * loss[i].abs().max(1.0)
        });
        let h = t.softmax_xent(hl, hy, XentReduction::Mean).unwrap();
        let mean = [loss.iter().sum::<f64>() / r as f64];
        assert_close(&format!("{what} mean"), &t.read(h).unwrap(), &mean, |_| {
            1e-5 * mean[0].abs().max(1.0)
        });
        let h = t.softmax_xent_backward(hl, hy).unwrap();
        assert_close(
            &format!("{what} backward"),
            &t.read(h).unwrap(),
            &grad,
            |_| 1e-6,
        );
    }
}

/// Labels that are not class indices give NaN rows, the same on every backend.
fn bad_labels(backend: Arc<dyn Backend>) {
    let mut t = TensorTable::new(backend, QUOTA);
    let hl = t
        .create([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], Shape::new(3, 2))
        .unwrap();
    let hy = t.create([1.0, 2.0, 0.5], Shape::new(3, 1)).unwrap();
    let h = t.softmax_xent(hl, hy, XentReduction::PerRow).unwrap();
    let loss = t.read(h).unwrap();
    assert!(
        loss[0].is_finite() && loss[1].is_nan() && loss[2].is_nan(),
        "{loss:?}"
    );
    let g = t.softmax_xent_backward(hl, hy).unwrap();
    let grad = t.read(g).unwrap();
    assert!(grad[..2].iter().all(|v| v.is_finite()) && grad[2..].iter().all(|v| v.is_nan()));
}

/// A chain of ops on resident tensors: one training step of a linear softmax classifier.
fn resident_chain(backend: Arc<dyn Backend>) {
    let mut t = TensorTable::new(backend.clone(), QUOTA);
    let x = t.create(values(8 * 5, 8), Shape::new(8, 5)).unwrap();
    let w = t.create(values(5 * 3, 9), Shape::new(5, 3)).unwrap();
    let y = t
        .create([0., 1., 2., 0., 1., 2., 0., 1.], Shape::new(8, 1))
        .unwrap();
    let logits = t.matmul(x, w, false, false).unwrap();
    let loss0 = t.softmax_xent(logits, y, XentReduction::Mean).unwrap();
    let dlogits = t.softmax_xent_backward(logits, y).unwrap();
    let dw = t.matmul(x, dlogits, true, false).unwrap();
    let w2 = t.axpy(-0.5, dw, w).unwrap();
    let logits2 = t.matmul(x, w2, false, false).unwrap();
    let loss1 = t.softmax_xent(logits2, y, XentReduction::Mean).unwrap();
    let (l0, l1) = (t.read(loss0).unwrap()[0], t.read(loss1).unwrap()[0]);
    assert!(
        l1 < l0,
        "{}: a gradient step lowers the loss: {l0} -> {l1}",
        backend.name()
    );
}

/// Hostile use of a table: every misuse is a typed error with the right code, never a panic.
fn hostile(backend: Arc<dyn Backend>) {
    let mut t = TensorTable::new(backend.clone(), 1 << 20);
    let mut other = TensorTable::new(backend.clone(), 1 << 20);
    let a = t.create(values(12, 1), Shape::new(3, 4)).unwrap();
    let b = t.create(values(30, 2), Shape::new(5, 6)).unwrap();
    let foreign = other.create([1.0], Shape::new(1, 1)).unwrap();

    // Another task's handle.
    let err = t.read(foreign).unwrap_err();
    assert!(matches!(err, ComputeError::ForeignHandle { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::BadHandle);
    assert!(
        t.add(a, foreign)
            .is_err_and(|e| e.code() == ErrorCode::BadHandle)
    );
    assert!(
        t.free(foreign)
            .is_err_and(|e| e.code() == ErrorCode::BadHandle)
    );
    assert_eq!(
        other.read(foreign).unwrap(),
        vec![1.0],
        "the owner still has it"
    );

    // Never-issued and freed handles.
    for h in [0, 1, a + 1000, u32::MAX, 0x7fff_ffff] {
        assert!(
            t.shape(h).is_err_and(|e| e.code() == ErrorCode::BadHandle),
            "{h:#x}"
        );
    }
    let c = t.scale(a, 2.0).unwrap();
    t.free(c).unwrap();
    for res in [t.read(c).map(|_| ()), t.free(c), t.shape(c).map(|_| ())] {
        let err = res.unwrap_err();
        assert!(
            matches!(err, ComputeError::BadHandle { handle } if handle == c),
            "{err}"
        );
    }
    let d = t.scale(a, 2.0).unwrap();
    assert_ne!(c, d, "handles are not reused");

    // Shape mismatches.
    let err = t.matmul(a, b, false, false).unwrap_err();
    assert_eq!(err.to_string(), "shapes 3x4 and 5x6 do not fit matmul");
    assert_eq!(err.code(), ErrorCode::ShapeMismatch);
    for res in [
        t.add(a, b),
        t.axpy(1.0, a, b),
        t.activation_grad(UnaryOp::Relu, a, b),
        t.softmax_xent_backward(a, b),
    ] {
        assert_eq!(res.unwrap_err().code(), ErrorCode::ShapeMismatch);
    }
    let err = t.create([1.0; 5], Shape::new(2, 3)).unwrap_err();
    assert!(
        matches!(
            err,
            ComputeError::DataLength {
                expected: 6,
                got: 5,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.code(), ErrorCode::ShapeMismatch);
    assert_eq!(
        t.create([], Shape::new(0, 3)).unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    let err = t.read_into(a, &mut [0.0; 11]).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BufferTooSmall);
    let mut big = [7.0; 13];
    t.read_into(a, &mut big).unwrap();
    assert_eq!(big[12], 7.0, "read_into writes only rows * cols values");

    // Huge dimensions: the byte size overflows, or is past the quota, before any allocation.
    let err = t.create([], Shape::new(u32::MAX, u32::MAX)).unwrap_err();
    assert!(matches!(err, ComputeError::TooLarge { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::TooLarge);
    let err = t.create([], Shape::new(1 << 20, 1 << 20)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::QuotaExceeded, "{err}");
    let col = t.create([1.0; 3], Shape::new(3, 1)).unwrap();
    let row = t.create([1.0; 3], Shape::new(1, 3)).unwrap();
    assert!(t.matmul(col, row, false, false).is_ok());
    let mut unlimited = TensorTable::new(backend.clone(), u64::MAX);
    let err = unlimited
        .create([], Shape::new(u32::MAX, u32::MAX))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::TooLarge, "{err}");
    if backend.kind() == BackendKind::Gpu {
        // 64 GiB: no storage binding is that large, and the limit is checked before the data.
        let err = unlimited
            .create([], Shape::new(1 << 17, 1 << 17))
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::TooLarge, "{err}");
    }
}

/// Allocate until the quota refuses; dropping the table gives every byte back to the
/// backend, which the next task's table then gets in full.
///
/// The backend's live bytes are its own: nextest runs each test in its own process, so no
/// other test's tensors are counted.
fn quota_bomb(backend: Arc<dyn Backend>) {
    assert_eq!(
        backend.live_bytes(),
        0,
        "{}: a fresh backend",
        backend.name()
    );
    let quota = 4 << 20;
    let block = vec![0.5f32; 64 * 1024]; // 256 KiB
    for _ in 0..2 {
        let mut t = TensorTable::new(backend.clone(), quota);
        let mut made = 0;
        let err = loop {
            match t.create(&block[..], Shape::new(256, 256)) {
                Ok(_) => made += 1,
                Err(err) => break err,
            }
            assert!(made <= 16, "the quota never refused");
        };
        assert_eq!(made, 16);
        assert!(
            matches!(
                err,
                ComputeError::QuotaExceeded {
                    requested: 262_144,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.code(), ErrorCode::QuotaExceeded);
        assert_eq!(t.used_bytes(), quota);
        assert_eq!(t.len(), 16);
        assert_eq!(
            backend.live_bytes(),
            quota,
            "{}: the backend holds the table's tensors, and nothing for the refusal",
            backend.name()
        );
        drop(t);
        assert_eq!(
            backend.live_bytes(),
            0,
            "{}: a dropped table leaves memory behind",
            backend.name()
        );
    }
    if backend.kind() != BackendKind::Cpu {
        return; // 65536 device buffers would take a while on a software adapter
    }
    // Many small tensors hit the live-tensor cap rather than growing the table forever.
    let mut t = TensorTable::new(backend.clone(), u64::MAX);
    let err = loop {
        if let Err(err) = t.create([1.0], Shape::new(1, 1)) {
            break err;
        }
    };
    assert!(matches!(err, ComputeError::TooManyTensors { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::QuotaExceeded);
    assert_eq!(backend.live_bytes(), 4 * t.len() as u64);
    drop(t);
    assert_eq!(
        backend.live_bytes(),
        0,
        "a dropped table leaves memory behind"
    );
}

macro_rules! backend_tests {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn matmul_awkward_shapes_all_transposes() {
                matmul_awkward($backend);
            }
            #[test]
            fn matmul_1024() {
                check_matmul(&$backend, 1024, 1024, 1024, false, false);
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
            #[test]
            fn softmax_xent_bad_labels_are_nan() {
                bad_labels($backend);
            }
            #[test]
            fn resident_training_step() {
                resident_chain($backend);
            }
            #[test]
            fn hostile_handles_shapes_sizes() {
                hostile($backend);
            }
            #[test]
            fn quota_bomb_then_fresh_table() {
                quota_bomb($backend);
            }
        }
    };
}

backend_tests!(cpu_backend, cpu());
backend_tests!(gpu_backend, gpu());
// The deterministic backend meets the same reference, on its fast kernels and its plain ones.
backend_tests!(
    deterministic_fast_kernels,
    Arc::new(DeterministicCpuBackend::with(2, true)) as Arc<dyn Backend>
);
backend_tests!(
    deterministic_plain_kernels,
    Arc::new(DeterministicCpuBackend::with(1, false)) as Arc<dyn Backend>
);

#[test]
fn gpu_backend_is_a_gpu() {
    assert_eq!(gpu().kind(), BackendKind::Gpu);
}

/// `auto` takes a hardware GPU if there is one, else the native CPU kernels: never the
/// software adapter, far slower than they are. On CI (lavapipe only) that is the cpu backend.
/// Whatever it takes computes.
#[test]
fn auto_picks_hardware_gpu_or_cpu() {
    // The best adapter there is, software allowed: a software one only if nothing better.
    let best = GpuBackend::new(true).unwrap_or_else(|err| {
        panic!("GPU tests need a wgpu adapter (Debian: mesa-vulkan-drivers): {err}")
    });
    let auto = select_backend(DeviceChoice::Auto, false).unwrap();
    if best.is_software() {
        assert_eq!(
            auto.kind(),
            BackendKind::Cpu,
            "only the software adapter {} here, and auto took {}",
            best.name(),
            auto.name()
        );
    } else {
        assert_eq!(
            auto.kind(),
            BackendKind::Gpu,
            "auto ignored {}",
            best.name()
        );
        assert_eq!(auto.name(), best.name(), "auto took another adapter");
    }
    check_matmul(&auto, 5, 7, 3, false, false);
    check_matmul(&auto, 5, 7, 3, true, true);
}

#[test]
fn tensors_from_another_backend_are_refused() {
    let (cpu, gpu) = (cpu(), gpu());
    let on_cpu = cpu.upload(vec![1.0], Shape::new(1, 1)).unwrap();
    let op = TensorOp::Scale { alpha: 1.0 };
    let err = gpu
        .execute(op, &[&on_cpu], &OpBudget::unlimited())
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
}

/// The cpu matmul across many output tiles, partial ones at the edges, and an inner
/// dimension longer than one slice (each tile then sums two gemm calls), for every transpose.
#[test]
fn cpu_matmul_across_tiles_and_depth_slices() {
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        check_matmul(&cpu(), 257, 2049, 258, ta, tb);
    }
}

/// CPU time (user and system) this whole process has used, every thread included. Tests
/// that read it rely on nextest's one process per test: under `cargo test`, run them alone.
pub(crate) fn process_cpu() -> Duration {
    // SAFETY: an all-zero `rusage` is a valid value of that plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable `rusage` that getrusage fills in.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0, "getrusage failed");
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// The process's CPU use over `window` once `run` has returned: near zero, or some thread
/// still computes for an op that ended.
pub(crate) fn cpu_after(window: Duration) -> Duration {
    let before = process_cpu();
    std::thread::sleep(window);
    process_cpu() - before
}

const MATMUL: TensorOp = TensorOp::Matmul {
    trans_a: false,
    trans_b: false,
};

/// An op whose budget has run out starts nothing, on either backend, and says which limit.
#[test]
fn spent_budgets_run_nothing() {
    for backend in [cpu(), gpu()] {
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
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "the op was stopped: the task's wall-time deadline passed"
        );
        assert_eq!(
            backend.live_bytes(),
            16,
            "{}: no output was kept",
            backend.name()
        );
    }
}

/// A matmul of seconds stops within a block of its deadline; its workers' CPU is charged to
/// the budget (all the CPU the process used, less the calling thread's), and none of them
/// computes on afterwards.
#[test]
fn cpu_matmul_stops_at_its_deadline() {
    let cpu = cpu();
    let n = 4096;
    let a = cpu
        .upload(vec![0.5; n * n], Shape::new(n as u32, n as u32))
        .unwrap();
    let limit = Duration::from_millis(100);
    let (process_before, started) = (process_cpu(), Instant::now());
    let budget = OpBudget::new(started + limit, Duration::MAX);
    let err = cpu.execute(MATMUL, &[&a, &a], &budget).unwrap_err();
    let (took, process) = (started.elapsed(), process_cpu() - process_before);
    assert!(
        matches!(
            err,
            ComputeError::Cancelled {
                overrun: Overrun::Deadline
            }
        ),
        "{err}"
    );
    eprintln!(
        "stopped after {took:?}; workers charged {:?} of {process:?}",
        budget.cpu()
    );
    assert!(
        took < limit + Duration::from_millis(150),
        "stopped only after {took:?}"
    );
    assert!(
        budget.cpu() >= process.mul_f64(0.8) && budget.cpu() <= process + Duration::from_millis(5),
        "charged {:?}, the process used {process:?}",
        budget.cpu()
    );
    let idle = cpu_after(Duration::from_millis(200));
    assert!(
        idle < Duration::from_millis(20),
        "{idle:?} of CPU after the op ended"
    );
}

/// Worker threads charge their CPU as they go: a zero allowance stops a large matmul and a
/// large element-wise op after their workers' first checkpoint.
#[test]
fn cpu_ops_stop_when_their_cpu_allowance_is_spent() {
    let cpu = cpu();
    let n = 2048;
    let a = cpu
        .upload(vec![0.5; n * n], Shape::new(n as u32, n as u32))
        .unwrap();
    for op in [MATMUL, TensorOp::Activation(UnaryOp::Tanh)] {
        let budget = OpBudget::new(Instant::now() + Duration::from_secs(60), Duration::ZERO);
        let err = cpu
            .execute(op, &[&a, &a][..op.arity()], &budget)
            .unwrap_err();
        assert!(
            matches!(
                err,
                ComputeError::Cancelled {
                    overrun: Overrun::Cpu
                }
            ),
            "{}: {err}",
            op.name()
        );
        assert!(
            budget.cpu() > Duration::ZERO,
            "{}: nothing charged",
            op.name()
        );
        assert!(
            budget.cpu() < Duration::from_millis(50),
            "{}: ran on for {:?}",
            op.name(),
            budget.cpu()
        );
    }
    // With room to spare the same ops finish, and charge what they used.
    for op in [MATMUL, TensorOp::Activation(UnaryOp::Tanh)] {
        let budget = OpBudget::new(Instant::now() + Duration::from_secs(60), Duration::MAX);
        cpu.execute(op, &[&a, &a][..op.arity()], &budget).unwrap();
        assert!(
            budget.cpu() > Duration::ZERO,
            "{}: nothing charged",
            op.name()
        );
    }
}
