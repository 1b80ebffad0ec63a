//! The native CPU backend: matmul through the fastest kernel this CPU runs (see [`kernels`]:
//! an AVX-512 tile where the CPU has AVX-512, the `gemm` crate elsewhere), the rest as plain
//! loops.
//!
//! Large ops are cut into blocks that the backend's worker threads take in turn while the
//! calling thread waits. Each worker charges its own CPU time to the op's [`OpBudget`] and
//! checks it before every block, so the task pays for every thread that worked for it, and an
//! op whose task is out of time or CPU stops within one block (a few ms) instead of running on.

use std::{
    num::NonZeroUsize,
    ops::Range,
    sync::{Mutex, OnceLock, PoisonError},
    thread,
    time::Duration,
};

use super::{
    Backend, BackendKind, BinaryOp, ComputeError, LiveBytes, OpBudget, ReduceAxis, ReduceOp, Shape,
    Storage, Tensor, TensorOp, UnaryOp, XentReduction, budget::thread_cpu_time, check_inputs,
    pool::Pool,
};

mod kernels;

use kernels::{MatRef, MatmulKernel};

/// Below this many multiply-adds a matmul runs on the calling thread: sharing out costs more.
const GEMM_PARALLEL_MIN_FLOPS: usize = 64 * 64 * 64;
/// Below this many output elements the other kernels run on the calling thread.
pub(super) const PARALLEL_MIN_ELEMS: usize = 1 << 17;
/// Output elements per block of the element-wise kernels (well under a millisecond).
pub(super) const BLOCK_ELEMS: usize = 1 << 16;
/// A matmul block: a tile of output rows and columns over a slice of the inner dimension,
/// at most 2^28 multiply-adds (a few ms on one core). Tiles this large keep the kernels'
/// repacking of their operands, once per tile, to a few percent of the work. Both sizes are
/// multiples of the AVX-512 kernel's 8 x 32 register tile.
const TILE_ROWS: usize = 256;
const TILE_COLS: usize = 256;
const TILE_DEPTH: usize = 2048;

/// Native CPU kernels. Tensors live in host memory.
#[derive(Debug)]
pub struct CpuBackend {
    name: String,
    threads: usize,
    /// The matmul kernel, picked for this CPU when the backend is made.
    kernel: MatmulKernel,
    live: LiveBytes,
    /// Started on the first op large enough to share out.
    pool: OnceLock<Pool>,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

/// A worker thread's account with its op's budget.
pub(super) struct Worker<'b> {
    budget: &'b OpBudget,
    /// The thread's CPU time when it last charged.
    charged: Duration,
}

impl Worker<'_> {
    /// Charges the CPU this thread used since its last charge.
    fn charge(&mut self) {
        let now = thread_cpu_time();
        self.budget.charge(now.saturating_sub(self.charged));
        self.charged = now;
    }

    /// Charges, then errs if the op must stop.
    pub(super) fn checkpoint(&mut self) -> Result<(), ComputeError> {
        self.charge();
        self.budget.check()
    }
}

/// A matmul's output, written by several threads, each only into its own tiles.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: `matmul` writes through it only from the workers of one `run_blocks` call, into
// disjoint tiles, while the buffer it points into is alive and not otherwise borrowed.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer, taken by method so closures capture the whole (`Sync`) wrapper.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

impl CpuBackend {
    /// A backend using every available core.
    pub fn new() -> Self {
        Self::with_threads(thread::available_parallelism().map_or(1, NonZeroUsize::get))
    }

    /// A backend with `threads` worker threads (at least one), and the fastest matmul kernel
    /// this CPU runs; `SHOAL_CPU_MATMUL=gemm` in the environment picks the `gemm` crate's
    /// kernels instead (to compare them, or to keep 512-bit code off CPUs that slow their
    /// clocks for it).
    pub(super) fn with_threads(threads: usize) -> Self {
        let kernel = match std::env::var("SHOAL_CPU_MATMUL").as_deref() {
            Ok("gemm") => MatmulKernel::Gemm,
            _ => MatmulKernel::detect(),
        };
        Self::with_kernel(threads, kernel)
    }

    /// A backend with `threads` worker threads (at least one) and matmul `kernel`, which must
    /// run on this CPU.
    fn with_kernel(threads: usize, kernel: MatmulKernel) -> Self {
        let threads = threads.max(1);
        Self {
            name: format!("cpu ({}, {threads} threads)", kernel.isa()),
            threads,
            kernel,
            live: LiveBytes::default(),
            pool: OnceLock::new(),
        }
    }

    /// The instruction set the matmul kernel runs: `avx512` (this crate's AVX-512 kernel),
    /// or what the `gemm` crate runs on CPUs without AVX-512: `avx2` (AVX2 with FMA), `neon`
    /// or `portable`. It is also in the backend's [`name`](Backend::name).
    pub fn matmul_isa(&self) -> &'static str {
        self.kernel.isa()
    }

    pub(super) fn host<'t>(&self, tensor: &'t Tensor) -> Result<&'t [f32], ComputeError> {
        match &tensor.storage {
            Storage::Host(data) => Ok(data),
            Storage::Device(_) => Err(ComputeError::WrongBackend {
                tensor: "gpu",
                backend: "cpu",
            }),
        }
    }

    /// Runs `work` on every block, on pool threads that take blocks in turn; the calling
    /// thread only waits, so all of the work's CPU is charged to `budget`. Workers
    /// check `budget` before every block (and `work` may check it between parts of one) and
    /// stop taking blocks once it fails: the op then fails with that error.
    pub(super) fn run_blocks<T: Send>(
        &self,
        blocks: impl ExactSizeIterator<Item = T> + Send,
        budget: &OpBudget,
        work: impl Fn(&mut Worker<'_>, T) -> Result<(), ComputeError> + Sync,
    ) -> Result<(), ComputeError> {
        let workers = self.threads.min(blocks.len()).max(1);
        let queue = Mutex::new(blocks);
        let failure = OnceLock::new();
        let pool = self.pool.get_or_init(|| Pool::new(self.threads));
        pool.broadcast(workers, &|| {
            let mut worker = Worker {
                budget,
                charged: thread_cpu_time(),
            };
            let result = loop {
                if let Err(e) = worker.checkpoint() {
                    break Err(e);
                }
                let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
                match next {
                    Some(block) => {
                        if let Err(e) = work(&mut worker, block) {
                            break Err(e);
                        }
                    }
                    None => break Ok(()),
                }
            };
            worker.charge();
            if let Err(e) = result {
                // The first failure is the op's; the others stopped for the same cause.
                let _ = failure.set(e);
            }
        });
        failure.into_inner().map_or(Ok(()), Err)
    }

    /// Fills `out`, viewed as rows of `row_len`, calling `f(row_index, row)`; in blocks of
    /// rows on worker threads when `out` is large.
    fn par_rows<F>(
        &self,
        out: &mut [f32],
        row_len: usize,
        budget: &OpBudget,
        f: F,
    ) -> Result<(), ComputeError>
    where
        F: Fn(usize, &mut [f32]) + Sync,
    {
        let row_len = row_len.max(1);
        let fill = |first_row: usize, block: &mut [f32]| {
            for (i, row) in block.chunks_mut(row_len).enumerate() {
                f(first_row + i, row);
            }
        };
        if out.len() < PARALLEL_MIN_ELEMS {
            fill(0, out);
            return Ok(());
        }
        let rows_per_block = (BLOCK_ELEMS / row_len).max(1);
        let blocks = out.chunks_mut(rows_per_block * row_len).enumerate();
        self.run_blocks(blocks, budget, |_, (b, block)| {
            fill(b * rows_per_block, block);
            Ok(())
        })
    }

    /// Element-wise map into a fresh buffer.
    fn map_elems<F>(&self, len: usize, budget: &OpBudget, f: F) -> Result<Vec<f32>, ComputeError>
    where
        F: Fn(usize) -> f32 + Sync,
    {
        let mut out = vec![0.0; len];
        self.par_rows(&mut out, BLOCK_ELEMS, budget, |chunk, values| {
            let base = chunk * BLOCK_ELEMS;
            for (i, v) in values.iter_mut().enumerate() {
                *v = f(base + i);
            }
        })?;
        Ok(out)
    }

    /// `f(a, b)` element by element into a fresh buffer, for `b` as long as `a` or one row of
    /// `cols` values broadcast over a's rows. Slices rather than indices (and no `i % len`
    /// per element), so the loops vectorise: 10x faster than the indexed map.
    fn zip_elems<F>(
        &self,
        a: &[f32],
        b: &[f32],
        cols: usize,
        budget: &OpBudget,
        f: F,
    ) -> Result<Vec<f32>, ComputeError>
    where
        F: Fn(f32, f32) -> f32 + Sync,
    {
        let mut out = vec![0.0; a.len()];
        if b.len() == a.len() {
            self.par_rows(&mut out, BLOCK_ELEMS, budget, |chunk, values| {
                let base = chunk * BLOCK_ELEMS;
                let (a, b) = (&a[base..], &b[base..]);
                for ((o, &x), &y) in values.iter_mut().zip(a).zip(b) {
                    *o = f(x, y);
                }
            })?;
        } else {
            self.par_rows(&mut out, cols, budget, |r, row| {
                for ((o, &x), &y) in row.iter_mut().zip(&a[r * cols..]).zip(b) {
                    *o = f(x, y);
                }
            })?;
        }
        Ok(out)
    }

    /// `op(A) @ op(B)` for host operands whose shapes `output_shape` has already checked
    /// against `out`.
    fn matmul(
        &self,
        inputs: (&Tensor, &Tensor),
        flags: (bool, bool),
        out: Shape,
        budget: &OpBudget,
    ) -> Result<Vec<f32>, ComputeError> {
        let (lhs, rhs) = (self.host(inputs.0)?, self.host(inputs.1)?);
        let (a, b) = (inputs.0.shape, inputs.1.shape);
        let (ta, tb) = flags;
        let (m, n) = (out.rows as usize, out.cols as usize);
        let k = if ta { a.rows } else { a.cols } as usize;
        let (a_cols, b_cols) = (a.cols as isize, b.cols as isize);
        // Row-major X (r x c) has row stride c, column stride 1; its transpose, viewed in place,
        // swaps the two.
        let (lhs_rs, lhs_cs) = if ta { (1, a_cols) } else { (a_cols, 1) };
        let (rhs_rs, rhs_cs) = if tb { (1, b_cols) } else { (b_cols, 1) };
        let mut dst = vec![0.0f32; m * n];
        let shared = SharedOut(dst.as_mut_ptr());
        let kernel = self.kernel;
        // dst[rows, cols] = op(A)[rows, depth] @ op(B)[depth, cols], added to what is there
        // unless `depth` starts at 0; on the calling thread.
        let product = |rows: Range<usize>, cols: Range<usize>, depth: Range<usize>| {
            let at = |row: usize, col: usize, rs: isize, cs: isize| {
                row as isize * rs + col as isize * cs
            };
            // SAFETY: `dst` holds m*n values at row stride n, column stride 1, and the ranges
            // lie inside 0..m, 0..n and 0..k. `lhs` holds the m x k operand op(A):
            // untransposed A is m x k (strides k = a_cols, 1), transposed A is stored k x m
            // and read at strides (1, a_cols = m); both stay inside its a.rows * a.cols
            // values. The same holds for `rhs` (k x n). The shapes were checked by
            // `output_shape`. No pointer aliases another (dst is fresh), and concurrent calls
            // write disjoint tiles of dst (see below) while `dst` is not otherwise borrowed.
            // `kernel` was picked for this CPU.
            unsafe {
                let lhs = MatRef {
                    ptr: lhs
                        .as_ptr()
                        .offset(at(rows.start, depth.start, lhs_rs, lhs_cs)),
                    rs: lhs_rs,
                    cs: lhs_cs,
                };
                let rhs = MatRef {
                    ptr: rhs
                        .as_ptr()
                        .offset(at(depth.start, cols.start, rhs_rs, rhs_cs)),
                    rs: rhs_rs,
                    cs: rhs_cs,
                };
                kernels::matmul(
                    kernel,
                    (rows.len(), cols.len(), depth.len()),
                    shared.ptr().add(rows.start * n + cols.start),
                    n,
                    depth.start > 0,
                    lhs,
                    rhs,
                );
            }
        };
        if m.saturating_mul(n).saturating_mul(k) < GEMM_PARALLEL_MIN_FLOPS {
            product(0..m, 0..n, 0..k);
            return Ok(dst);
        }
        // Each worker owns whole output tiles (so their writes are disjoint), and walks the
        // inner dimension of its tile in slices, checking the budget between them.
        let span = |i: usize, step: usize, end: usize| i * step..((i + 1) * step).min(end);
        let tiles_across = n.div_ceil(TILE_COLS);
        // Shorter tiles where the output is too small to give every worker two (whole
        // register tiles of rows where there are enough).
        let tile_rows = TILE_ROWS.min(
            m.div_ceil((2 * self.threads).div_ceil(tiles_across))
                .next_multiple_of(8),
        );
        let tiles_down = m.div_ceil(tile_rows);
        let tiles = (0..tiles_down * tiles_across).map(|t| (t / tiles_across, t % tiles_across));
        self.run_blocks(tiles, budget, |worker, (ti, tj)| {
            for d in 0..k.div_ceil(TILE_DEPTH) {
                if d > 0 {
                    worker.checkpoint()?;
                }
                product(
                    span(ti, tile_rows, m),
                    span(tj, TILE_COLS, n),
                    span(d, TILE_DEPTH, k),
                );
            }
            Ok(())
        })?;
        Ok(dst)
    }

    fn softmax_xent_rows(
        &self,
        logits: &[f32],
        labels: &[f32],
        cols: usize,
        budget: &OpBudget,
    ) -> Result<Vec<f32>, ComputeError> {
        let rows = labels.len();
        let mut loss = vec![0.0; rows];
        self.par_rows(&mut loss, 1, budget, |r, out| {
            let row = &logits[r * cols..(r + 1) * cols];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
            out[0] = match label_index(labels[r], cols) {
                Some(l) => max + sum.ln() - row[l],
                None => f32::NAN,
            };
        })?;
        Ok(loss)
    }
}

/// A label's class index, if it is an integer in `0..cols`.
pub(super) fn label_index(label: f32, cols: usize) -> Option<usize> {
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

    fn execute(
        &self,
        op: TensorOp,
        inputs: &[&Tensor],
        budget: &OpBudget,
    ) -> Result<Tensor, ComputeError> {
        let shape = check_inputs(op, inputs)?;
        budget.check()?;
        let len = shape.elements()?;
        let a = self.host(inputs[0])?;
        let b = match inputs.get(1) {
            Some(t) => self.host(t)?,
            None => a,
        };
        let (rows, cols) = (inputs[0].shape.rows as usize, inputs[0].shape.cols as usize);
        let data = match op {
            TensorOp::Matmul { trans_a, trans_b } => {
                self.matmul((inputs[0], inputs[1]), (trans_a, trans_b), shape, budget)?
            }
            // One call per op, so that each loop is compiled (and vectorised) for its own
            // arithmetic.
            TensorOp::Binary(BinaryOp::Add) => self.zip_elems(a, b, cols, budget, |x, y| x + y)?,
            TensorOp::Binary(BinaryOp::Sub) => self.zip_elems(a, b, cols, budget, |x, y| x - y)?,
            TensorOp::Binary(BinaryOp::Mul) => self.zip_elems(a, b, cols, budget, |x, y| x * y)?,
            TensorOp::Scale { alpha } => self.map_elems(len, budget, |i| alpha * a[i])?,
            TensorOp::Axpy { alpha } => self.map_elems(len, budget, |i| alpha * a[i] + b[i])?,
            TensorOp::Activation(UnaryOp::Relu) => {
                self.map_elems(len, budget, |i| a[i].max(0.0))?
            }
            TensorOp::Activation(UnaryOp::Sigmoid) => {
                self.map_elems(len, budget, |i| sigmoid(a[i]))?
            }
            TensorOp::Activation(UnaryOp::Tanh) => self.map_elems(len, budget, |i| a[i].tanh())?,
            TensorOp::ActivationGrad(UnaryOp::Relu) => {
                self.map_elems(len, budget, |i| if a[i] > 0.0 { b[i] } else { 0.0 })?
            }
            TensorOp::ActivationGrad(UnaryOp::Sigmoid) => self.map_elems(len, budget, |i| {
                let s = sigmoid(a[i]);
                b[i] * s * (1.0 - s)
            })?,
            TensorOp::ActivationGrad(UnaryOp::Tanh) => self.map_elems(len, budget, |i| {
                let t = a[i].tanh();
                b[i] * (1.0 - t * t)
            })?,
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
                        self.par_rows(&mut out, 1, budget, |r, o| {
                            o[0] = a[r * cols..(r + 1) * cols].iter().sum::<f32>() * factor;
                        })?;
                        out
                    }
                }
            }
            TensorOp::SoftmaxXent(reduction) => {
                let loss = self.softmax_xent_rows(a, b, cols, budget)?;
                match reduction {
                    XentReduction::PerRow => loss,
                    XentReduction::Mean => vec![loss.iter().sum::<f32>() / rows as f32],
                }
            }
            TensorOp::SoftmaxXentGrad => {
                let mut grad = vec![0.0; len];
                let inv_rows = 1.0 / rows as f32;
                self.par_rows(&mut grad, cols, budget, |r, out| {
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
                })?;
                grad
            }
            TensorOp::Transpose => {
                let mut out = vec![0.0; len];
                // Output row j is input column j.
                self.par_rows(&mut out, rows, budget, |j, out_row| {
                    for (i, o) in out_row.iter_mut().enumerate() {
                        *o = a[i * cols + j];
                    }
                })?;
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
                    &OpBudget::unlimited(),
                )
                .unwrap();
            let mut out = [0.0; 4];
            cpu.read_into(&c, &mut out).unwrap();
            assert_eq!(out, expect, "ta={ta} tb={tb}");
        }
    }

    /// Every matmul kernel this CPU runs, through the backend's tiles: several tiles across
    /// and down, and an inner dimension longer than one tile's slice of it.
    #[test]
    fn every_matmul_kernel_matches_the_reference_in_tiles() {
        let (m, n, k) = (20usize, 300usize, TILE_DEPTH + 3);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 13.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 19) as f32 - 9.0) / 7.0)
            .collect();
        for kernel in MatmulKernel::supported() {
            let cpu = CpuBackend::with_kernel(2, kernel);
            assert_eq!(cpu.matmul_isa(), kernel.isa());
            assert!(cpu.name().contains(kernel.isa()), "{}", cpu.name());
            for (ta, tb) in [(false, false), (true, true)] {
                // Stored transposed when the flag says so: the same logical operands.
                let stored = |x: &[f32], rows: usize, cols: usize, t: bool| {
                    if t {
                        (0..rows * cols)
                            .map(|i| x[(i % rows) * cols + i / rows])
                            .collect()
                    } else {
                        x.to_vec()
                    }
                };
                let shape = |rows: usize, cols: usize, t: bool| {
                    let (r, c) = if t { (cols, rows) } else { (rows, cols) };
                    Shape::new(r as u32, c as u32)
                };
                let x = cpu.upload(stored(&a, m, k, ta), shape(m, k, ta)).unwrap();
                let y = cpu.upload(stored(&b, k, n, tb), shape(k, n, tb)).unwrap();
                let c = cpu
                    .execute(
                        TensorOp::Matmul {
                            trans_a: ta,
                            trans_b: tb,
                        },
                        &[&x, &y],
                        &OpBudget::unlimited(),
                    )
                    .unwrap();
                let mut out = vec![0.0; m * n];
                cpu.read_into(&c, &mut out).unwrap();
                for (idx, &got) in out.iter().enumerate() {
                    let (i, j) = (idx / n, idx % n);
                    let want: f64 = (0..k)
                        .map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j]))
                        .sum();
                    assert!(
                        (f64::from(got) - want).abs() <= 1e-3 * (1.0 + want.abs()),
                        "{kernel:?} ta={ta} tb={tb} at ({i}, {j}): {got} != {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn binary_ops_elementwise_and_broadcast() {
        let cpu = CpuBackend::new();
        // Large enough to be shared out in blocks, with a row broadcast over 300 rows.
        let (rows, cols) = (300usize, 700usize);
        let a: Vec<f32> = (0..rows * cols).map(|i| (i % 13) as f32 - 6.0).collect();
        let b: Vec<f32> = (0..rows * cols).map(|i| (i % 7) as f32 * 0.5).collect();
        let row: Vec<f32> = (0..cols).map(|i| i as f32).collect();
        let x = cpu.upload(a.clone(), Shape::new(300, 700)).unwrap();
        let y = cpu.upload(b.clone(), Shape::new(300, 700)).unwrap();
        let r = cpu.upload(row.clone(), Shape::new(1, 700)).unwrap();
        type Op = fn(f32, f32) -> f32;
        let ops: [(BinaryOp, Op); 3] = [
            (BinaryOp::Add, |p, q| p + q),
            (BinaryOp::Sub, |p, q| p - q),
            (BinaryOp::Mul, |p, q| p * q),
        ];
        for (op, f) in ops {
            for (rhs, data) in [(&y, &b), (&r, &row)] {
                let out = cpu
                    .execute(TensorOp::Binary(op), &[&x, rhs], &OpBudget::unlimited())
                    .unwrap();
                let mut got = vec![0.0; rows * cols];
                cpu.read_into(&out, &mut got).unwrap();
                for (i, &g) in got.iter().enumerate() {
                    assert_eq!(g, f(a[i], data[i % data.len()]), "{op:?} at {i}");
                }
            }
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
                &OpBudget::unlimited(),
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
