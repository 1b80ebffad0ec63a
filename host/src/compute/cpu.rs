//! The native CPU backend: matmul through the `gemm` crate (multi-threaded), the rest as
//! plain loops, split across threads where a tensor is large enough to pay for it.

use std::{num::NonZeroUsize, thread};

use gemm::Parallelism;

use super::{
    Backend, BackendKind, BinaryOp, ComputeError, LiveBytes, ReduceAxis, ReduceOp, Shape, Storage,
    Tensor, TensorOp, UnaryOp, XentReduction, check_inputs,
};

/// Below this many multiply-adds a matmul runs on one thread: spawning costs more.
const GEMM_PARALLEL_MIN_FLOPS: usize = 64 * 64 * 64;
/// Below this many output elements the other kernels run on one thread.
const PARALLEL_MIN_ELEMS: usize = 1 << 17;

/// Native CPU kernels. Tensors live in host memory.
#[derive(Debug)]
pub struct CpuBackend {
    name: String,
    threads: usize,
    live: LiveBytes,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// A backend using every available core.
    pub fn new() -> Self {
        let threads = thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Self {
            name: format!("cpu (gemm, {threads} threads)"),
            threads,
            live: LiveBytes::default(),
        }
    }

    fn host<'t>(&self, tensor: &'t Tensor) -> Result<&'t [f32], ComputeError> {
        match &tensor.storage {
            Storage::Host(data) => Ok(data),
            Storage::Device(_) => Err(ComputeError::WrongBackend {
                tensor: "gpu",
                backend: "cpu",
            }),
        }
    }

    /// Fills `out`, viewed as rows of `row_len`, calling `f(row_index, row)`; splits the rows
    /// across threads when `out` is large.
    fn par_rows<F>(&self, out: &mut [f32], row_len: usize, f: F)
    where
        F: Fn(usize, &mut [f32]) + Sync,
    {
        let rows = out.len() / row_len.max(1);
        let threads = self.threads.min(rows);
        if out.len() < PARALLEL_MIN_ELEMS || threads <= 1 {
            for (i, row) in out.chunks_mut(row_len).enumerate() {
                f(i, row);
            }
            return;
        }
        let rows_per_thread = rows.div_ceil(threads);
        thread::scope(|scope| {
            for (t, block) in out.chunks_mut(rows_per_thread * row_len).enumerate() {
                let f = &f;
                scope.spawn(move || {
                    for (i, row) in block.chunks_mut(row_len).enumerate() {
                        f(t * rows_per_thread + i, row);
                    }
                });
            }
        });
    }

    /// Element-wise map into a fresh buffer, in parallel chunks.
    fn map_elems<F>(&self, len: usize, f: F) -> Vec<f32>
    where
        F: Fn(usize) -> f32 + Sync,
    {
        let mut out = vec![0.0; len];
        const CHUNK: usize = 1 << 14;
        self.par_rows(&mut out, CHUNK, |chunk, values| {
            let base = chunk * CHUNK;
            for (i, v) in values.iter_mut().enumerate() {
                *v = f(base + i);
            }
        });
        out
    }

    /// `op(A) @ op(B)` for host operands `lhs` (shaped `a`) and `rhs` (shaped `b`), whose
    /// shapes `output_shape` has already checked against `out`.
    fn matmul(
        &self,
        lhs: &[f32],
        a: Shape,
        rhs: &[f32],
        b: Shape,
        flags: (bool, bool),
        out: Shape,
    ) -> Vec<f32> {
        let (ta, tb) = flags;
        let (m, n) = (out.rows as usize, out.cols as usize);
        let k = if ta { a.rows } else { a.cols } as usize;
        let (a_cols, b_cols) = (a.cols as isize, b.cols as isize);
        // Row-major X (r x c) has row stride c, column stride 1; its transpose, viewed in place,
        // swaps the two.
        let (lhs_rs, lhs_cs) = if ta { (1, a_cols) } else { (a_cols, 1) };
        let (rhs_rs, rhs_cs) = if tb { (1, b_cols) } else { (b_cols, 1) };
        let mut dst = vec![0.0f32; m * n];
        let parallelism = if m.saturating_mul(n).saturating_mul(k) < GEMM_PARALLEL_MIN_FLOPS {
            Parallelism::None
        } else {
            Parallelism::Rayon(0)
        };
        // SAFETY: `dst` holds m*n values written at row stride n, column stride 1. `lhs` holds
        // the m x k operand op(A): untransposed A is m x k (stride k = a_cols, 1), transposed
        // A is stored k x m and read at strides (1, a_cols = m); both stay inside its
        // a.rows * a.cols values. The same holds for `rhs` (k x n). The shapes were checked by
        // `output_shape` before this call, and no pointer aliases another (dst is fresh).
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                false,
                lhs.as_ptr(),
                lhs_cs,
                lhs_rs,
                rhs.as_ptr(),
                rhs_cs,
                rhs_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
        dst
    }

    fn softmax_xent_rows(&self, logits: &[f32], labels: &[f32], cols: usize) -> Vec<f32> {
        let rows = labels.len();
        let mut loss = vec![0.0; rows];
        self.par_rows(&mut loss, 1, |r, out| {
            let row = &logits[r * cols..(r + 1) * cols];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
            out[0] = match label_index(labels[r], cols) {
                Some(l) => max + sum.ln() - row[l],
                None => f32::NAN,
            };
        });
        loss
    }
}

/// A label's class index, if it is an integer in `0..cols`.
fn label_index(label: f32, cols: usize) -> Option<usize> {
    (label >= 0.0 && label.fract() == 0.0 && (label as usize) < cols).then_some(label as usize)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Backend for CpuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn live_bytes(&self) -> u64 {
        self.live.get()
    }

    fn upload(&self, data: Vec<f32>, shape: Shape) -> Result<Tensor, ComputeError> {
        let expected = shape.elements()?;
        if data.len() != expected {
            return Err(ComputeError::DataLength {
                shape,
                expected,
                got: data.len(),
            });
        }
        Ok(self.live.tensor(shape, Storage::Host(data)))
    }

    fn read_into(&self, tensor: &Tensor, out: &mut [f32]) -> Result<(), ComputeError> {
        let data = self.host(tensor)?;
        let got = out.len();
        let dst = out
            .get_mut(..data.len())
            .ok_or(ComputeError::BufferTooSmall {
                needed: data.len(),
                got,
            })?;
        dst.copy_from_slice(data);
        Ok(())
    }

    fn execute(&self, op: TensorOp, inputs: &[&Tensor]) -> Result<Tensor, ComputeError> {
        let shape = check_inputs(op, inputs)?;
        let len = shape.elements()?;
        let a = self.host(inputs[0])?;
        let b = match inputs.get(1) {
            Some(t) => self.host(t)?,
            None => a,
        };
        let (rows, cols) = (inputs[0].shape.rows as usize, inputs[0].shape.cols as usize);
        let data = match op {
            TensorOp::Matmul { trans_a, trans_b } => self.matmul(
                a,
                inputs[0].shape,
                b,
                inputs[1].shape,
                (trans_a, trans_b),
                shape,
            ),
            TensorOp::Binary(bop) => {
                let f: fn(f32, f32) -> f32 = match bop {
                    BinaryOp::Add => |x, y| x + y,
                    BinaryOp::Sub => |x, y| x - y,
                    BinaryOp::Mul => |x, y| x * y,
                };
                // A 1 x cols `b` is broadcast over a's rows.
                let b_len = b.len();
                self.map_elems(len, |i| f(a[i], b[i % b_len]))
            }
            TensorOp::Scale { alpha } => self.map_elems(len, |i| alpha * a[i]),
            TensorOp::Axpy { alpha } => self.map_elems(len, |i| alpha * a[i] + b[i]),
            TensorOp::Activation(UnaryOp::Relu) => self.map_elems(len, |i| a[i].max(0.0)),
            TensorOp::Activation(UnaryOp::Sigmoid) => self.map_elems(len, |i| sigmoid(a[i])),
            TensorOp::Activation(UnaryOp::Tanh) => self.map_elems(len, |i| a[i].tanh()),
            TensorOp::ActivationGrad(UnaryOp::Relu) => {
                self.map_elems(len, |i| if a[i] > 0.0 { b[i] } else { 0.0 })
            }
            TensorOp::ActivationGrad(UnaryOp::Sigmoid) => self.map_elems(len, |i| {
                let s = sigmoid(a[i]);
                b[i] * s * (1.0 - s)
            }),
            TensorOp::ActivationGrad(UnaryOp::Tanh) => self.map_elems(len, |i| {
                let t = a[i].tanh();
                b[i] * (1.0 - t * t)
            }),
            TensorOp::Reduce { op: rop, axis } => {
                let count = match axis {
                    ReduceAxis::Axis0 => rows,
                    ReduceAxis::Axis1 => cols,
                };
                let factor = match rop {
                    ReduceOp::Sum => 1.0,
                    ReduceOp::Mean => 1.0 / count as f32,
                };
                match axis {
                    ReduceAxis::Axis0 => {
                        // Walk rows in order so the reads stay sequential.
                        let mut acc = vec![0.0f32; cols];
                        for row in a.chunks_exact(cols) {
                            for (s, &x) in acc.iter_mut().zip(row) {
                                *s += x;
                            }
                        }
                        acc.iter_mut().for_each(|s| *s *= factor);
                        acc
                    }
                    ReduceAxis::Axis1 => {
                        let mut out = vec![0.0; rows];
                        self.par_rows(&mut out, 1, |r, o| {
                            o[0] = a[r * cols..(r + 1) * cols].iter().sum::<f32>() * factor;
                        });
                        out
                    }
                }
            }
            TensorOp::SoftmaxXent(reduction) => {
                let loss = self.softmax_xent_rows(a, b, cols);
                match reduction {
                    XentReduction::PerRow => loss,
                    XentReduction::Mean => vec![loss.iter().sum::<f32>() / rows as f32],
                }
            }
            TensorOp::SoftmaxXentGrad => {
                let mut grad = vec![0.0; len];
                let inv_rows = 1.0 / rows as f32;
                self.par_rows(&mut grad, cols, |r, out| {
                    let row = &a[r * cols..(r + 1) * cols];
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for (o, &x) in out.iter_mut().zip(row) {
                        *o = (x - max).exp();
                        sum += *o;
                    }
                    let label = label_index(b[r], cols);
                    for (j, o) in out.iter_mut().enumerate() {
                        let onehot = if label == Some(j) { 1.0 } else { 0.0 };
                        *o = match label {
                            Some(_) => (*o / sum - onehot) * inv_rows,
                            None => f32::NAN,
                        };
                    }
                });
                grad
            }
            TensorOp::Transpose => {
                let mut out = vec![0.0; len];
                // Output row j is input column j.
                self.par_rows(&mut out, rows, |j, out_row| {
                    for (i, o) in out_row.iter_mut().enumerate() {
                        *o = a[i * cols + j];
                    }
                });
                out
            }
        };
        Ok(self.live.tensor(shape, Storage::Host(data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_matmul_with_transposes() {
        let cpu = CpuBackend::new();
        // A = [[1,2,3],[4,5,6]] (2x3), B = A^T (3x2).
        let a = cpu
            .upload(vec![1., 2., 3., 4., 5., 6.], Shape::new(2, 3))
            .unwrap();
        let at = cpu
            .upload(vec![1., 4., 2., 5., 3., 6.], Shape::new(3, 2))
            .unwrap();
        let expect = [14., 32., 32., 77.];
        for (x, y, ta, tb) in [
            (&a, &at, false, false),
            (&at, &at, true, false),
            (&a, &a, false, true),
            (&at, &a, true, true),
        ] {
            let c = cpu
                .execute(
                    TensorOp::Matmul {
                        trans_a: ta,
                        trans_b: tb,
                    },
                    &[x, y],
                )
                .unwrap();
            let mut out = [0.0; 4];
            cpu.read_into(&c, &mut out).unwrap();
            assert_eq!(out, expect, "ta={ta} tb={tb}");
        }
    }

    #[test]
    fn bad_labels_give_nan_rows() {
        let cpu = CpuBackend::new();
        let logits = cpu
            .upload(vec![0.0, 1.0, 2.0, 3.0], Shape::new(2, 2))
            .unwrap();
        let labels = cpu.upload(vec![1.0, 7.0], Shape::new(2, 1)).unwrap();
        let loss = cpu
            .execute(
                TensorOp::SoftmaxXent(XentReduction::PerRow),
                &[&logits, &labels],
            )
            .unwrap();
        let mut out = [0.0; 2];
        cpu.read_into(&loss, &mut out).unwrap();
        assert!((out[0] - (1.0f32 + (-1.0f32).exp()).ln()).abs() < 1e-6);
        assert!(out[1].is_nan());
    }

    #[test]
    fn read_into_short_buffer_is_an_error() {
        let cpu = CpuBackend::new();
        let t = cpu.upload(vec![1.0; 6], Shape::new(2, 3)).unwrap();
        let err = cpu.read_into(&t, &mut [0.0; 5]).unwrap_err();
        assert!(matches!(
            err,
            ComputeError::BufferTooSmall { needed: 6, got: 5 }
        ));
    }
}
