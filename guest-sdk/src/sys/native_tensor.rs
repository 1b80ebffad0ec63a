//! The native stand-in for the host's tensor calls: a small reference implementation of every
//! op in plain Rust (f32 values, f64 accumulation), with the host's shape rules and error
//! codes, so task code that uses [`crate::Tensor`] unit-tests natively.
//!
//! The host's `compute` module is the authority; this mirrors its `Op::output_shape` and op
//! semantics (see the docs on [`crate::abi::TensorOpCode`]).

use std::{cell::RefCell, collections::HashMap};

use crate::abi::{BinaryOp, ErrorCode, ReduceAxis, ReduceOp, TensorOp, UnaryOp, XentReduction};

/// The native tensor quota, as the host's default per-task `tensor_bytes` limit (1 GiB).
pub(crate) const NATIVE_TENSOR_QUOTA: u64 = 1 << 30;

struct NativeTensor {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

#[derive(Default)]
struct Table {
    /// Handles are never reused, as on the host.
    next: u32,
    tensors: HashMap<u32, NativeTensor>,
    used_bytes: u64,
}

thread_local! {
    static TENSORS: RefCell<Table> = RefCell::new(Table::default());
}

fn with<R>(f: impl FnOnce(&mut Table) -> R) -> R {
    TENSORS.with(|t| f(&mut t.borrow_mut()))
}

/// `rows * cols * 4` with the host's checks: a zero dimension is invalid, overflow too large.
fn byte_size(rows: usize, cols: usize) -> Result<u64, ErrorCode> {
    if rows == 0 || cols == 0 {
        return Err(ErrorCode::InvalidArgument);
    }
    if u32::try_from(rows).is_err() || u32::try_from(cols).is_err() {
        return Err(ErrorCode::TooLarge);
    }
    let bytes = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(4))
        .ok_or(ErrorCode::TooLarge)?;
    if bytes > isize::MAX as usize {
        return Err(ErrorCode::TooLarge);
    }
    Ok(bytes as u64)
}

impl Table {
    fn get(&self, handle: u32) -> Result<&NativeTensor, ErrorCode> {
        self.tensors.get(&handle).ok_or(ErrorCode::BadHandle)
    }

    fn insert(&mut self, rows: usize, cols: usize, data: Vec<f32>) -> Result<u32, ErrorCode> {
        let bytes = byte_size(rows, cols)?;
        if self.used_bytes.saturating_add(bytes) > NATIVE_TENSOR_QUOTA {
            return Err(ErrorCode::QuotaExceeded);
        }
        if self.next >= i32::MAX as u32 {
            return Err(ErrorCode::TooLarge);
        }
        self.next += 1;
        self.used_bytes += bytes;
        self.tensors
            .insert(self.next, NativeTensor { rows, cols, data });
        Ok(self.next)
    }
}

pub(crate) fn tensor_create(rows: usize, cols: usize, data: &[f32]) -> Result<u32, ErrorCode> {
    let bytes = byte_size(rows, cols)?;
    if data.len() as u64 * 4 != bytes {
        return Err(ErrorCode::ShapeMismatch);
    }
    with(|t| t.insert(rows, cols, data.to_vec()))
}

pub(crate) fn tensor_shape(handle: u32) -> Result<(usize, usize), ErrorCode> {
    with(|t| t.get(handle).map(|x| (x.rows, x.cols)))
}

pub(crate) fn tensor_read(handle: u32, out: &mut [f32]) -> Result<usize, ErrorCode> {
    with(|t| {
        let x = t.get(handle)?;
        let dst = out
            .get_mut(..x.data.len())
            .ok_or(ErrorCode::BufferTooSmall)?;
        dst.copy_from_slice(&x.data);
        Ok(x.data.len())
    })
}

pub(crate) fn tensor_free(handle: u32) -> Result<(), ErrorCode> {
    with(|t| {
        let x = t.tensors.remove(&handle).ok_or(ErrorCode::BadHandle)?;
        t.used_bytes -= (x.data.len() * 4) as u64;
        Ok(())
    })
}

pub(crate) fn tensor_op(op: TensorOp, a: u32, b: u32) -> Result<u32, ErrorCode> {
    with(|t| {
        let x = t.get(a)?;
        let y = if op.arity() == 2 { t.get(b)? } else { x };
        let (rows, cols, data) = compute(op, x, y)?;
        t.insert(rows, cols, data)
    })
}

/// A label's class index, if it is an integer in `0..cols`.
fn label_index(label: f32, cols: usize) -> Option<usize> {
    (label >= 0.0 && label.fract() == 0.0 && (label as usize) < cols).then_some(label as usize)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `(logsumexp(row) - row[label], softmax(row))` in f64.
fn softmax_row(row: &[f32]) -> (f64, Vec<f64>) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exp: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    (max + sum.ln(), exp.into_iter().map(|e| e / sum).collect())
}

/// Runs one op: the output shape and values, or the host's error code.
fn compute(
    op: TensorOp,
    x: &NativeTensor,
    y: &NativeTensor,
) -> Result<(usize, usize, Vec<f32>), ErrorCode> {
    let (r, c) = (x.rows, x.cols);
    let (a, b) = (&x.data, &y.data);
    let same = x.rows == y.rows && x.cols == y.cols;
    let map = |f: &dyn Fn(usize) -> f64| (0..a.len()).map(|i| f(i) as f32).collect::<Vec<f32>>();
    let at = |i: usize| a[i] as f64;
    let bt = |i: usize| b[i] as f64;
    Ok(match op {
        TensorOp::Matmul { trans_a, trans_b } => {
            let (m, k) = if trans_a { (c, r) } else { (r, c) };
            let (kb, n) = if trans_b {
                (y.cols, y.rows)
            } else {
                (y.rows, y.cols)
            };
            if k != kb {
                return Err(ErrorCode::ShapeMismatch);
            }
            byte_size(m, n)?;
            let ea = |i: usize, p: usize| if trans_a { a[p * c + i] } else { a[i * c + p] } as f64;
            let eb = |p: usize, j: usize| if trans_b { b[j * y.cols + p] } else { b[p * y.cols + j] } as f64;
            let mut out = Vec::with_capacity(m * n);
            for i in 0..m {
                for j in 0..n {
                    out.push((0..k).map(|p| ea(i, p) * eb(p, j)).sum::<f64>() as f32);
                }
            }
            (m, n, out)
        }
        TensorOp::Binary(bop) => {
            if !(same || (y.rows == 1 && y.cols == c)) {
                return Err(ErrorCode::ShapeMismatch);
            }
            // A 1 x cols `b` is broadcast over a's rows.
            let bl = b.len();
            let out = match bop {
                BinaryOp::Add => map(&|i| at(i) + bt(i % bl)),
                BinaryOp::Sub => map(&|i| at(i) - bt(i % bl)),
                BinaryOp::Mul => map(&|i| at(i) * bt(i % bl)),
            };
            (r, c, out)
        }
        TensorOp::Scale { alpha } => (r, c, map(&|i| alpha as f64 * at(i))),
        TensorOp::Axpy { alpha } => {
            if !same {
                return Err(ErrorCode::ShapeMismatch);
            }
            (r, c, map(&|i| alpha as f64 * at(i) + bt(i)))
        }
        TensorOp::Activation(f) => {
            let out = match f {
                UnaryOp::Relu => map(&|i| at(i).max(0.0)),
                UnaryOp::Sigmoid => map(&|i| sigmoid(at(i))),
                UnaryOp::Tanh => map(&|i| at(i).tanh()),
            };
            (r, c, out)
        }
        TensorOp::ActivationGrad(f) => {
            if !same {
                return Err(ErrorCode::ShapeMismatch);
            }
            let out = match f {
                UnaryOp::Relu => map(&|i| if a[i] > 0.0 { bt(i) } else { 0.0 }),
                UnaryOp::Sigmoid => map(&|i| {
                    let s = sigmoid(at(i));
                    bt(i) * s * (1.0 - s)
                }),
                UnaryOp::Tanh => map(&|i| bt(i) * (1.0 - at(i).tanh().powi(2))),
            };
            (r, c, out)
        }
        TensorOp::Reduce { op, axis } => {
            let (count, shape) = match axis {
                ReduceAxis::Axis0 => (r, (1, c)),
                ReduceAxis::Axis1 => (c, (r, 1)),
            };
            let factor = match op {
                ReduceOp::Sum => 1.0,
                ReduceOp::Mean => 1.0 / count as f64,
            };
            let out = match axis {
                ReduceAxis::Axis0 => (0..c)
                    .map(|j| ((0..r).map(|i| at(i * c + j)).sum::<f64>() * factor) as f32)
                    .collect(),
                ReduceAxis::Axis1 => (0..r)
                    .map(|i| ((0..c).map(|j| at(i * c + j)).sum::<f64>() * factor) as f32)
                    .collect(),
            };
            (shape.0, shape.1, out)
        }
        TensorOp::SoftmaxXent(reduction) => {
            if y.rows != r || y.cols != 1 {
                return Err(ErrorCode::ShapeMismatch);
            }
            let loss: Vec<f64> = (0..r)
                .map(|i| {
                    let row = &a[i * c..(i + 1) * c];
                    match label_index(b[i], c) {
                        Some(l) => softmax_row(row).0 - row[l] as f64,
                        None => f64::NAN,
                    }
                })
                .collect();
            match reduction {
                XentReduction::PerRow => (r, 1, loss.iter().map(|&v| v as f32).collect()),
                XentReduction::Mean => (1, 1, vec![(loss.iter().sum::<f64>() / r as f64) as f32]),
            }
        }
        TensorOp::SoftmaxXentGrad => {
            if y.rows != r || y.cols != 1 {
                return Err(ErrorCode::ShapeMismatch);
            }
            let mut out = Vec::with_capacity(r * c);
            for i in 0..r {
                let (_, p) = softmax_row(&a[i * c..(i + 1) * c]);
                let label = label_index(b[i], c);
                out.extend(p.iter().enumerate().map(|(j, &pj)| match label {
                    Some(l) => ((pj - if l == j { 1.0 } else { 0.0 }) / r as f64) as f32,
                    None => f32::NAN,
                }));
            }
            (r, c, out)
        }
        TensorOp::Transpose => {
            let out = (0..c)
                .flat_map(|j| (0..r).map(move |i| a[i * c + j]))
                .collect();
            (c, r, out)
        }
    })
}
