//! The deterministic cpu backend: every result bit-identical on every machine, for verified
//! results (two peers run one task and compare the hashes of its outputs).
//!
//! [`CpuBackend`]'s results depend on the machine: gemm picks its kernel by ISA (AVX2 or
//! AVX-512, FMA or not) and sums the inner dimension in blocks that depend on it, and `exp` or
//! `tanh` come from the platform libm, which glibc picks by CPU at run time. Here each output
//! is one fixed sequence of IEEE-754 f32 operations, listed on [`DeterministicCpuBackend`].
//!
//! Threads split only outputs, never a reduction. The fast path computes many outputs at once:
//! SIMD across columns, and matmul in register tiles of packed operands, blocked over the
//! inner dimension, compiled for AVX2 or AVX-512 where the CPU has them. The plain path
//! computes outputs one at a time. Neither changes an output's own sequence, so the two give
//! the same bits and each checks the other.
//!
//! Tensors, worker threads and CPU charging are a [`CpuBackend`]'s: this backend owns one for
//! its storage and its pool, and replaces its kernels.

use std::{borrow::Cow, num::NonZeroUsize, ops::Range, thread};

use super::{
    Backend, BackendKind, BinaryOp, ComputeError, CpuBackend, OpBudget, ReduceAxis, ReduceOp,
    Shape, Tensor, TensorOp, UnaryOp, XentReduction, check_inputs,
    cpu::{BLOCK_ELEMS, PARALLEL_MIN_ELEMS, label_index},
};

/// Lanes of the one summation order of a row: enough independent sums to fill an AVX-512
/// register, so the fast path vectorises them.
const LANES: usize = 16;
/// Below this many multiply-adds a matmul runs on the calling thread: sharing out costs more.
const MATMUL_PARALLEL_MIN: usize = 64 * 64 * 64;
/// A fast matmul's unit of work: a tile of output rows and columns. Each worker packs its
/// tile's operands (a tile's rows of `op(A)` stay in L2 while they are reused), so a tile must
/// be large enough for packing to be a small share of it: 96 x 256 tiles took about 1.4
/// times as long at n = 1024. Both are multiples of every kernel's register tile (at most 8 x 32).
const TILE_ROWS: usize = 192;
const TILE_COLS: usize = 512;
/// Depth of one block of the inner dimension, over which a tile's packed operands are reused
/// (128 to 512 measured the same). Workers check the budget between blocks.
const DEPTH_BLOCK: usize = 256;

/// A CPU backend whose every result is bit-identical whatever the CPU's ISA (SSE2, AVX2 or
/// AVX-512, FMA or not), the thread count and the blocking, with [`CpuBackend`]'s semantics.
///
/// Each output element is one fixed sequence of IEEE-754 f32 operations, set by the op and
/// the shapes alone:
/// - matmul: `c = 0; for p in 0..k { c += a[i][p] * b[p][j] }`, multiply and add rounded
///   apart (Rust never contracts `x * y + z` into an FMA, and nothing here calls `mul_add`);
/// - a reduction along a row (sum or mean along axis 1, softmax's max and sum, the mean loss
///   over rows): 16 lanes, lane `l` taking elements `l, l + 16, l + 32, …` in turn from 0 (or
///   from -inf for the max), then lane `l + 8` folded into lane `l`, then `l + 4`, `l + 2`
///   and `l + 1`;
/// - a reduction along a column (axis 0): the rows in order;
/// - `exp`, `ln` and `tanh` from the pure-Rust `libm` crate, never the platform's;
/// - a mean multiplies the sum by `1 / count`; the mean loss divides its sum by the rows;
/// - relu is `if x > 0 { x } else { 0 }`, so -0 and NaN give +0.
///
/// Every NaN written is the canonical quiet NaN (`0x7fc0_0000`): which payload survives an
/// operation on two NaNs depends on the operand order the compiler picked, and the NaN an
/// invalid operation makes differs between architectures (x86's is negative, Arm's positive).
///
/// ```
/// use shoal_host::compute::{Backend, DeterministicCpuBackend, OpBudget, Shape, TensorOp};
///
/// # fn main() -> Result<(), shoal_host::compute::ComputeError> {
/// let (fast, plain) = (DeterministicCpuBackend::new(), DeterministicCpuBackend::with(1, false));
/// let bits = |backend: &DeterministicCpuBackend| -> Result<Vec<u32>, _> {
///     let a = backend.upload((0..12).map(|i| i as f32 / 7.0).collect(), Shape::new(3, 4))?;
///     let op = TensorOp::Matmul { trans_a: false, trans_b: true };
///     let c = backend.execute(op, &[&a, &a], &OpBudget::unlimited())?;
///     let mut out = [0.0; 9];
///     backend.read_into(&c, &mut out)?;
///     Ok::<_, shoal_host::compute::ComputeError>(out.map(f32::to_bits).to_vec())
/// };
/// assert_eq!(bits(&fast)?, bits(&plain)?);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct DeterministicCpuBackend {
    name: String,
    threads: usize,
    kernel: Kernel,
    /// Storage, live bytes and worker threads; its own kernels are never called.
    cpu: CpuBackend,
}

/// How outputs are grouped: one at a time, or many at once by a matmul kernel compiled for
/// some instruction set. Every choice gives the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// One output at a time, in scalar code.
    Plain,
    /// SIMD for the target's baseline (SSE2 on x86-64).
    Portable,
    /// SIMD for AVX2.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// SIMD for AVX-512.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    /// The widest fast kernel this CPU runs.
    fn fastest() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Self::Avx2;
            }
        }
        Self::Portable
    }

    fn label(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Portable => "portable simd",
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => "avx-512",
        }
    }

    fn fast(self) -> bool {
        self != Self::Plain
    }
}

impl Default for DeterministicCpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl DeterministicCpuBackend {
    /// A backend on every available core, with the fast kernels.
    pub fn new() -> Self {
        Self::with(
            thread::available_parallelism().map_or(1, NonZeroUsize::get),
            true,
        )
    }

    /// A backend with `threads` worker threads (at least one), on the fast kernels or the plain
    /// ones. Both give the same bits; the plain ones are there to check the fast ones.
    pub fn with(threads: usize, fast: bool) -> Self {
        let kernel = if fast {
            Kernel::fastest()
        } else {
            Kernel::Plain
        };
        Self::with_kernel(threads, kernel)
    }

    fn with_kernel(threads: usize, kernel: Kernel) -> Self {
        let threads = threads.max(1);
        Self {
            name: format!(
                "cpu deterministic ({threads} threads, {} kernels)",
                kernel.label()
            ),
            threads,
            kernel,
            cpu: CpuBackend::with_threads(threads),
        }
    }

    /// Fills `out`, viewed as rows of `row_len`, calling `f(row_index, row)`. Each row costs
    /// about `row_cost` simple steps; when the whole op is large, blocks of rows go to the
    /// worker threads.
    fn for_rows<F>(
        &self,
        out: &mut [f32],
        row_len: usize,
        row_cost: usize,
        budget: &OpBudget,
        f: F,
    ) -> Result<(), ComputeError>
    where
        F: Fn(usize, &mut [f32]) + Sync,
    {
        let (row_len, row_cost) = (row_len.max(1), row_cost.max(1));
        let fill = |first_row: usize, block: &mut [f32]| {
            for (i, row) in block.chunks_mut(row_len).enumerate() {
                f(first_row + i, row);
            }
        };
        let rows = out.len() / row_len;
        if rows.saturating_mul(row_cost) < PARALLEL_MIN_ELEMS {
            fill(0, out);
            return Ok(());
        }
        let rows_per_block = (BLOCK_ELEMS / row_cost).max(1);
        let blocks = out.chunks_mut(rows_per_block * row_len).enumerate();
        self.cpu.run_blocks(blocks, budget, |_, (b, block)| {
            fill(b * rows_per_block, block);
            Ok(())
        })
    }

    /// `f(a)` element-wise; `cols` is `a`'s row length.
    fn map<F>(
        &self,
        a: &[f32],
        cols: usize,
        budget: &OpBudget,
        f: F,
    ) -> Result<Vec<f32>, ComputeError>
    where
        F: Fn(f32) -> f32 + Sync,
    {
        let mut out = vec![0.0; a.len()];
        self.for_rows(&mut out, cols, cols, budget, |r, row| {
            for (o, &x) in row.iter_mut().zip(&a[r * cols..]) {
                *o = canonical(f(x));
            }
        })?;
        Ok(out)
    }

    /// `f(a, b)` element-wise, where `b` has `a`'s shape or is one row broadcast over `a`'s.
    fn zip<F>(
        &self,
        (a, b): (&[f32], &[f32]),
        cols: usize,
        budget: &OpBudget,
        f: F,
    ) -> Result<Vec<f32>, ComputeError>
    where
        F: Fn(f32, f32) -> f32 + Sync,
    {
        let mut out = vec![0.0; a.len()];
        let broadcast = b.len() != a.len();
        self.for_rows(&mut out, cols, cols, budget, |r, row| {
            let b_row = if broadcast { b } else { &b[r * cols..] };
            for ((o, &x), &y) in row.iter_mut().zip(&a[r * cols..]).zip(b_row) {
                *o = canonical(f(x, y));
            }
        })?;
        Ok(out)
    }

    /// `op(A) @ op(B)` for host operands whose shapes `output_shape` has already checked
    /// against `out`.
    fn matmul(
        &self,
        (lhs, rhs): (&[f32], &[f32]),
        (a, b): (Shape, Shape),
        (trans_a, trans_b): (bool, bool),
        out: Shape,
        budget: &OpBudget,
    ) -> Result<Vec<f32>, ComputeError> {
        let (m, n) = (out.rows as usize, out.cols as usize);
        let k = if trans_a { a.rows } else { a.cols } as usize;
        // Row-major X (r x c) has row stride c, column stride 1; its transpose, viewed in
        // place, swaps the two.
        let strides = |transposed: bool, cols: u32| {
            if transposed {
                (1, cols as usize)
            } else {
                (cols as usize, 1)
            }
        };
        let ops = Operands {
            lhs,
            lhs_strides: strides(trans_a, a.cols),
            rhs,
            rhs_strides: strides(trans_b, b.cols),
            k,
        };
        let mut dst = vec![0.0f32; m * n];
        if self.kernel == Kernel::Plain {
            self.matmul_plain(&ops, &mut dst, (m, n), budget)?;
            return Ok(dst);
        }
        if m.saturating_mul(n).saturating_mul(k) < MATMUL_PARALLEL_MIN {
            let mut tile = Tile {
                rows: 0..m,
                cols: 0..n,
                out: dst.chunks_mut(n).collect(),
            };
            self.product(&ops, &mut tile, &mut || Ok(()))?;
            return Ok(dst);
        }
        // Each worker owns whole output tiles (the rows' slices of its tile), so writes are
        // disjoint; it walks the inner dimension in blocks, checking the budget between them.
        let tiles_across = n.div_ceil(TILE_COLS);
        // Shorter tiles where the output is too small to give every worker two; still whole
        // register tiles.
        let tile_rows = TILE_ROWS
            .min(m.div_ceil((2 * self.threads).div_ceil(tiles_across)))
            .next_multiple_of(8);
        let tiles_down = m.div_ceil(tile_rows);
        let span = |i: usize, step: usize, end: usize| i * step..((i + 1) * step).min(end);
        let mut tiles: Vec<Tile<'_>> = (0..tiles_down * tiles_across)
            .map(|t| Tile {
                rows: span(t / tiles_across, tile_rows, m),
                cols: span(t % tiles_across, TILE_COLS, n),
                out: Vec::with_capacity(tile_rows),
            })
            .collect();
        for (i, row) in dst.chunks_mut(n).enumerate() {
            for (tj, piece) in row.chunks_mut(TILE_COLS).enumerate() {
                tiles[(i / tile_rows) * tiles_across + tj].out.push(piece);
            }
        }
        self.cpu
            .run_blocks(tiles.into_iter(), budget, |worker, mut tile| {
                self.product(&ops, &mut tile, &mut || worker.checkpoint())
            })?;
        Ok(dst)
    }

    /// The plain matmul: each output is the dot product of a row of `op(A)` and a column of
    /// `op(B)`, both first laid out as contiguous rows.
    fn matmul_plain(
        &self,
        ops: &Operands<'_>,
        dst: &mut [f32],
        (m, n): (usize, usize),
        budget: &OpBudget,
    ) -> Result<(), ComputeError> {
        let k = ops.k;
        let lhs_rows: Cow<'_, [f32]> = if ops.lhs_strides.1 == 1 {
            Cow::Borrowed(ops.lhs)
        } else {
            Cow::Owned((0..m * k).map(|x| ops.lhs_at(x / k, x % k)).collect())
        };
        let rhs_columns: Cow<'_, [f32]> = if ops.rhs_strides.0 == 1 {
            Cow::Borrowed(ops.rhs)
        } else {
            Cow::Owned((0..n * k).map(|x| ops.rhs_at(x % k, x / k)).collect())
        };
        self.for_rows(dst, n, n * k, budget, |i, row| {
            let lhs_row = &lhs_rows[i * k..(i + 1) * k];
            for (out, rhs_column) in row.iter_mut().zip(rhs_columns.chunks_exact(k)) {
                let mut c = 0.0f32;
                for (&x, &y) in lhs_row.iter().zip(rhs_column) {
                    c += x * y;
                }
                *out = canonical(c);
            }
        })
    }

    /// Fills `tile` with its part of `op(A) @ op(B)` on the fast kernel for this CPU, calling
    /// `checkpoint` between blocks of the inner dimension.
    fn product(
        &self,
        ops: &Operands<'_>,
        tile: &mut Tile<'_>,
        checkpoint: &mut dyn FnMut() -> Result<(), ComputeError>,
    ) -> Result<(), ComputeError> {
        match self.kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
                // SAFETY: this CPU has AVX-512F, checked just above.
                unsafe { product_avx512(ops, tile, checkpoint) }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 if std::arch::is_x86_feature_detected!("avx2") => {
                // SAFETY: this CPU has AVX2, checked just above.
                unsafe { product_avx2(ops, tile, checkpoint) }
            }
            _ => product::<1, 32>(ops, tile, checkpoint),
        }
    }

    /// Sums `a` (`rows x cols`) along axis 0: each column's rows in order. Blocks of columns
    /// go to the worker threads when `a` is large.
    fn sum_columns(
        &self,
        a: &[f32],
        (rows, cols): (usize, usize),
        budget: &OpBudget,
    ) -> Result<Vec<f32>, ComputeError> {
        let fast = self.kernel.fast();
        let fill = |first: usize, sums: &mut [f32]| {
            let width = sums.len();
            if fast {
                // Row by row, a whole row of sums at once.
                for row in a.chunks_exact(cols) {
                    for (s, &x) in sums.iter_mut().zip(&row[first..first + width]) {
                        *s += x;
                    }
                }
            } else {
                for (c, s) in sums.iter_mut().enumerate() {
                    *s = a[first + c..].iter().step_by(cols).fold(0.0, |s, &x| s + x);
                }
            }
        };
        let mut sums = vec![0.0f32; cols];
        if a.len() < PARALLEL_MIN_ELEMS {
            fill(0, &mut sums);
            return Ok(sums);
        }
        let cols_per_block = (BLOCK_ELEMS / rows).next_multiple_of(LANES).max(LANES);
        let blocks = sums.chunks_mut(cols_per_block).enumerate();
        self.cpu.run_blocks(blocks, budget, |_, (b, block)| {
            fill(b * cols_per_block, block);
            Ok(())
        })?;
        Ok(sums)
    }

    /// Each row's softmax cross-entropy: `max + ln(sum_j exp(x_j - max)) - x_label`, NaN
    /// where the label is not a class index.
    fn xent_rows(
        &self,
        logits: &[f32],
        labels: &[f32],
        cols: usize,
        budget: &OpBudget,
    ) -> Result<Vec<f32>, ComputeError> {
        let fast = self.kernel.fast();
        let mut loss = vec![0.0; labels.len()];
        self.for_rows(&mut loss, 1, cols, budget, |r, out| {
            let row = &logits[r * cols..(r + 1) * cols];
            let max = reduce_row(row, fast, f32::NEG_INFINITY, |x| x, max_of);
            let sum = reduce_row(row, fast, 0.0, |x| libm::expf(x - max), add);
            out[0] = match label_index(labels[r], cols) {
                Some(l) => canonical(max + libm::logf(sum) - row[l]),
                None => CANONICAL_NAN,
            };
        })?;
        Ok(loss)
    }

    /// `(softmax(x) - onehot(label)) / rows` per row, NaN rows where the label is not a class
    /// index.
    fn xent_grad(
        &self,
        logits: &[f32],
        labels: &[f32],
        cols: usize,
        budget: &OpBudget,
    ) -> Result<Vec<f32>, ComputeError> {
        let fast = self.kernel.fast();
        let inv_rows = 1.0 / labels.len() as f32;
        let mut grad = vec![0.0; logits.len()];
        self.for_rows(&mut grad, cols, cols, budget, |r, out| {
            let row = &logits[r * cols..(r + 1) * cols];
            let max = reduce_row(row, fast, f32::NEG_INFINITY, |x| x, max_of);
            for (o, &x) in out.iter_mut().zip(row) {
                *o = libm::expf(x - max);
            }
            // The same sum, in the same order, as the forward loss's.
            let sum = reduce_row(out, fast, 0.0, |x| x, add);
            let label = label_index(labels[r], cols);
            for (j, o) in out.iter_mut().enumerate() {
                let onehot = if label == Some(j) { 1.0 } else { 0.0 };
                *o = match label {
                    Some(_) => canonical((*o / sum - onehot) * inv_rows),
                    None => CANONICAL_NAN,
                };
            }
        })?;
        Ok(grad)
    }
}

/// The one NaN this backend writes: quiet, positive, no payload.
const CANONICAL_NAN: f32 = f32::from_bits(0x7fc0_0000);

/// `x`, with any NaN replaced by [`CANONICAL_NAN`].
#[inline(always)]
fn canonical(x: f32) -> f32 {
    if x.is_nan() { CANONICAL_NAN } else { x }
}

fn add(x: f32, y: f32) -> f32 {
    x + y
}

/// The larger of two values; NaN `y` loses, and of equal values the first is kept.
fn max_of(x: f32, y: f32) -> f32 {
    if y > x { y } else { x }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + libm::expf(-x))
}

/// Reduces a row in the backend's one order for rows: [`LANES`] lanes start at `init`, lane
/// `l` combines `map(x[l])`, `map(x[l + LANES])`, … in turn, and the lanes are then folded by
/// [`fold_lanes`]. The fast path steps every lane at once, the plain one an element at a
/// time; the order is the same.
#[inline(always)]
fn reduce_row(
    x: &[f32],
    fast: bool,
    init: f32,
    map: impl Fn(f32) -> f32,
    combine: impl Fn(f32, f32) -> f32,
) -> f32 {
    let mut lanes = [init; LANES];
    if fast {
        let (steps, rest) = x.as_chunks::<LANES>();
        for step in steps {
            for (lane, &v) in lanes.iter_mut().zip(step) {
                *lane = combine(*lane, map(v));
            }
        }
        for (lane, &v) in lanes.iter_mut().zip(rest) {
            *lane = combine(*lane, map(v));
        }
    } else {
        for (i, &v) in x.iter().enumerate() {
            let lane = &mut lanes[i % LANES];
            *lane = combine(*lane, map(v));
        }
    }
    fold_lanes(lanes, combine)
}

/// Folds the lanes in halves: lane `l + 8` into lane `l`, then `l + 4`, `l + 2`, `l + 1`.
fn fold_lanes(mut lanes: [f32; LANES], combine: impl Fn(f32, f32) -> f32) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        let (low, high) = lanes.split_at_mut(width);
        for (l, &h) in low.iter_mut().zip(&high[..width]) {
            *l = combine(*l, h);
        }
        width /= 2;
    }
    lanes[0]
}

/// A matmul's operands in place: `op(A)` (`m x k`) and `op(B)` (`k x n`) as strided views of
/// the row-major inputs.
struct Operands<'a> {
    lhs: &'a [f32],
    /// Row and column stride of `op(A)` in `lhs`.
    lhs_strides: (usize, usize),
    rhs: &'a [f32],
    /// Row and column stride of `op(B)` in `rhs`.
    rhs_strides: (usize, usize),
    /// The inner dimension.
    k: usize,
}

impl Operands<'_> {
    /// `op(A)[i][p]`.
    #[inline(always)]
    fn lhs_at(&self, i: usize, p: usize) -> f32 {
        self.lhs[i * self.lhs_strides.0 + p * self.lhs_strides.1]
    }

    /// `op(B)[p][j]`.
    #[inline(always)]
    fn rhs_at(&self, p: usize, j: usize) -> f32 {
        self.rhs[p * self.rhs_strides.0 + j * self.rhs_strides.1]
    }
}

/// One worker's share of a matmul's output: `rows x cols` of it, one slice per row.
struct Tile<'d> {
    rows: Range<usize>,
    cols: Range<usize>,
    out: Vec<&'d mut [f32]>,
}

/// [`product`] compiled for AVX-512: 8 x 32 accumulators, two 512-bit registers per row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn product_avx512(
    ops: &Operands<'_>,
    tile: &mut Tile<'_>,
    checkpoint: &mut dyn FnMut() -> Result<(), ComputeError>,
) -> Result<(), ComputeError> {
    product::<8, 32>(ops, tile, checkpoint)
}

/// [`product`] compiled for AVX2: 2 x 32 accumulators, four 256-bit registers per row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn product_avx2(
    ops: &Operands<'_>,
    tile: &mut Tile<'_>,
    checkpoint: &mut dyn FnMut() -> Result<(), ComputeError>,
) -> Result<(), ComputeError> {
    product::<2, 32>(ops, tile, checkpoint)
}

/// `tile = op(A)[rows] @ op(B)[.., cols]`, in register tiles of `MR x NR` outputs.
///
/// The SIMD comes from LLVM's loop vectoriser, which takes the `NR` loop of [`accumulate`]
/// when `NR` is 32; with 16 or fewer it unrolls that loop instead and the tile ends up
/// scalar, several times slower (measured with AVX2, AVX-512 and SSE2). `MR` was measured
/// per ISA.
///
/// For each block of the inner dimension, the tile's rows of `op(A)` are packed into panels of
/// `MR` rows and its columns of `op(B)` into panels of `NR` columns (zero-padded at the edges;
/// the padding's outputs are never stored), then each `MR x NR` block of outputs is loaded,
/// stepped through the block's depth in order, and stored. The first block starts from 0, so
/// every output is `0 + a_0 b_0 + a_1 b_1 + …` in order, whatever `MR`, `NR` and the tiling.
#[inline(always)]
fn product<const MR: usize, const NR: usize>(
    ops: &Operands<'_>,
    tile: &mut Tile<'_>,
    checkpoint: &mut dyn FnMut() -> Result<(), ComputeError>,
) -> Result<(), ComputeError> {
    let (rows, cols) = (tile.rows.clone(), tile.cols.clone());
    let (panels_down, panels_across) = (rows.len().div_ceil(MR), cols.len().div_ceil(NR));
    let depth_max = DEPTH_BLOCK.min(ops.k);
    let mut lhs_pack = vec![0.0f32; panels_down * MR * depth_max];
    let mut rhs_pack = vec![0.0f32; panels_across * NR * depth_max];
    for (block, start) in (0..ops.k).step_by(DEPTH_BLOCK).enumerate() {
        if block > 0 {
            checkpoint()?;
        }
        let depth = start..(start + DEPTH_BLOCK).min(ops.k);
        let kc = depth.len();
        let lhs_pack = &mut lhs_pack[..panels_down * MR * kc];
        let rhs_pack = &mut rhs_pack[..panels_across * NR * kc];
        pack_lhs::<MR>(ops, rows.clone(), depth.clone(), lhs_pack);
        pack_rhs::<NR>(ops, depth, cols.clone(), rhs_pack);
        for (pj, rhs_panel) in rhs_pack.chunks_exact(NR * kc).enumerate() {
            let (c0, nr) = (pj * NR, NR.min(cols.len() - pj * NR));
            for (pi, lhs_panel) in lhs_pack.chunks_exact(MR * kc).enumerate() {
                let (r0, mr) = (pi * MR, MR.min(rows.len() - pi * MR));
                let mut c = [[0.0f32; NR]; MR];
                let out_rows = &mut tile.out[r0..r0 + mr];
                // Whole rows of the register tile copy as a few vector moves, partial ones
                // at the right edge through memcpy.
                if block > 0 {
                    for (c_row, out_row) in c.iter_mut().zip(out_rows.iter()) {
                        if nr == NR {
                            c_row.copy_from_slice(&out_row[c0..c0 + NR]);
                        } else {
                            c_row[..nr].copy_from_slice(&out_row[c0..c0 + nr]);
                        }
                    }
                }
                accumulate::<MR, NR>(lhs_panel, rhs_panel, &mut c);
                for (c_row, out_row) in c.iter().zip(out_rows) {
                    if nr == NR {
                        out_row[c0..c0 + NR].copy_from_slice(c_row);
                    } else {
                        out_row[c0..c0 + nr].copy_from_slice(&c_row[..nr]);
                    }
                }
            }
        }
    }
    for row in &mut tile.out {
        for x in row.iter_mut() {
            *x = canonical(*x);
        }
    }
    Ok(())
}

/// Packs `op(A)[rows, depth]` into panels of `MR` rows, each stored depth-major
/// (`panel[p * MR + r]`), zero past the last row.
#[inline(always)]
fn pack_lhs<const MR: usize>(
    ops: &Operands<'_>,
    rows: Range<usize>,
    depth: Range<usize>,
    pack: &mut [f32],
) {
    let kc = depth.len();
    let (row_stride, col_stride) = ops.lhs_strides;
    for (pi, panel) in pack.chunks_exact_mut(MR * kc).enumerate() {
        let first = rows.start + pi * MR;
        let valid = MR.min(rows.end - first);
        let (steps, _) = panel.as_chunks_mut::<MR>();
        if row_stride == 1 {
            // A is stored transposed: a column of op(A) is contiguous, so is a step.
            for (p, step) in depth.clone().zip(steps.iter_mut()) {
                step[..valid].copy_from_slice(&ops.lhs[p * col_stride + first..][..valid]);
                step[valid..].fill(0.0);
            }
        } else {
            // A row of op(A) is contiguous (column stride 1): deal it out across the steps.
            for r in 0..MR {
                if r < valid {
                    let row = &ops.lhs[(first + r) * row_stride + depth.start..][..kc];
                    for (step, &x) in steps.iter_mut().zip(row) {
                        step[r] = x;
                    }
                } else {
                    steps.iter_mut().for_each(|step| step[r] = 0.0);
                }
            }
        }
    }
}

/// Packs `op(B)[depth, cols]` into panels of `NR` columns, each stored depth-major
/// (`panel[p * NR + c]`), zero past the last column.
#[inline(always)]
fn pack_rhs<const NR: usize>(
    ops: &Operands<'_>,
    depth: Range<usize>,
    cols: Range<usize>,
    pack: &mut [f32],
) {
    let kc = depth.len();
    let (row_stride, col_stride) = ops.rhs_strides;
    for (pj, panel) in pack.chunks_exact_mut(NR * kc).enumerate() {
        let first = cols.start + pj * NR;
        let valid = NR.min(cols.end - first);
        let (steps, _) = panel.as_chunks_mut::<NR>();
        if col_stride == 1 {
            // A row of op(B) is contiguous, so is a step.
            for (p, step) in depth.clone().zip(steps.iter_mut()) {
                step[..valid].copy_from_slice(&ops.rhs[p * row_stride + first..][..valid]);
                step[valid..].fill(0.0);
            }
        } else {
            // B is stored transposed (row stride 1): deal each column out across the steps.
            for c in 0..NR {
                if c < valid {
                    let column = &ops.rhs[(first + c) * col_stride + depth.start..][..kc];
                    for (step, &x) in steps.iter_mut().zip(column) {
                        step[c] = x;
                    }
                } else {
                    steps.iter_mut().for_each(|step| step[c] = 0.0);
                }
            }
        }
    }
}

/// `c[r][j] += lhs[p][r] * rhs[p][j]` for each step `p` of the packed panels, in order: the
/// register tile, every output's own sequence unchanged.
#[inline(always)]
fn accumulate<const MR: usize, const NR: usize>(
    lhs_panel: &[f32],
    rhs_panel: &[f32],
    c: &mut [[f32; NR]; MR],
) {
    // A local copy the compiler keeps in registers for the whole loop.
    let mut acc = *c;
    let (lhs_steps, _) = lhs_panel.as_chunks::<MR>();
    let (rhs_steps, _) = rhs_panel.as_chunks::<NR>();
    for (x, y) in lhs_steps.iter().zip(rhs_steps) {
        for (acc_row, &xr) in acc.iter_mut().zip(x) {
            for (s, &yj) in acc_row.iter_mut().zip(y) {
                *s += xr * yj;
            }
        }
    }
    *c = acc;
}

impl Backend for DeterministicCpuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn live_bytes(&self) -> u64 {
        self.cpu.live_bytes()
    }

    fn upload(&self, data: Vec<f32>, shape: Shape) -> Result<Tensor, ComputeError> {
        self.cpu.upload(data, shape)
    }

    fn read_into(&self, tensor: &Tensor, out: &mut [f32]) -> Result<(), ComputeError> {
        self.cpu.read_into(tensor, out)
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
        let a = self.cpu.host(inputs[0])?;
        let b = match inputs.get(1) {
            Some(t) => self.cpu.host(t)?,
            None => a,
        };
        let (rows, cols) = (inputs[0].shape.rows as usize, inputs[0].shape.cols as usize);
        let fast = self.kernel.fast();
        let data = match op {
            TensorOp::Matmul { trans_a, trans_b } => self.matmul(
                (a, b),
                (inputs[0].shape, inputs[1].shape),
                (trans_a, trans_b),
                shape,
                budget,
            )?,
            // A 1 x cols `b` is broadcast over a's rows.
            TensorOp::Binary(BinaryOp::Add) => self.zip((a, b), cols, budget, |x, y| x + y)?,
            TensorOp::Binary(BinaryOp::Sub) => self.zip((a, b), cols, budget, |x, y| x - y)?,
            TensorOp::Binary(BinaryOp::Mul) => self.zip((a, b), cols, budget, |x, y| x * y)?,
            TensorOp::Scale { alpha } => self.map(a, cols, budget, |x| alpha * x)?,
            TensorOp::Axpy { alpha } => self.zip((a, b), cols, budget, |x, y| alpha * x + y)?,
            TensorOp::Activation(UnaryOp::Relu) => {
                self.map(a, cols, budget, |x| if x > 0.0 { x } else { 0.0 })?
            }
            TensorOp::Activation(UnaryOp::Sigmoid) => self.map(a, cols, budget, sigmoid)?,
            TensorOp::Activation(UnaryOp::Tanh) => self.map(a, cols, budget, libm::tanhf)?,
            TensorOp::ActivationGrad(UnaryOp::Relu) => {
                self.zip((a, b), cols, budget, |x, dy| if x > 0.0 { dy } else { 0.0 })?
            }
            TensorOp::ActivationGrad(UnaryOp::Sigmoid) => {
                self.zip((a, b), cols, budget, |x, dy| {
                    let s = sigmoid(x);
                    dy * s * (1.0 - s)
                })?
            }
            TensorOp::ActivationGrad(UnaryOp::Tanh) => {
                self.zip((a, b), cols, budget, |x, dy| {
                    let t = libm::tanhf(x);
                    dy * (1.0 - t * t)
                })?
            }
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
                        let mut sums = self.sum_columns(a, (rows, cols), budget)?;
                        sums.iter_mut().for_each(|s| *s = canonical(*s * factor));
                        sums
                    }
                    ReduceAxis::Axis1 => {
                        let mut out = vec![0.0; rows];
                        self.for_rows(&mut out, 1, cols, budget, |r, o| {
                            let sum =
                                reduce_row(&a[r * cols..(r + 1) * cols], fast, 0.0, |x| x, add);
                            o[0] = canonical(sum * factor);
                        })?;
                        out
                    }
                }
            }
            TensorOp::SoftmaxXent(reduction) => {
                let loss = self.xent_rows(a, b, cols, budget)?;
                match reduction {
                    XentReduction::PerRow => loss,
                    XentReduction::Mean => {
                        let sum = reduce_row(&loss, fast, 0.0, |x| x, add);
                        vec![canonical(sum / rows as f32)]
                    }
                }
            }
            TensorOp::SoftmaxXentGrad => self.xent_grad(a, b, cols, budget)?,
            TensorOp::Transpose => {
                let mut out = vec![0.0; len];
                // Output row j is input column j.
                self.for_rows(&mut out, rows, rows, budget, |j, out_row| {
                    for (o, &x) in out_row.iter_mut().zip(a[j..].iter().step_by(cols)) {
                        *o = canonical(x);
                    }
                })?;
                out
            }
        };
        self.cpu.upload(data, shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain kernels, and every fast one this CPU can run.
    fn kernels() -> Vec<Kernel> {
        #[allow(unused_mut)]
        let mut kernels = vec![Kernel::Plain, Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                kernels.push(Kernel::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                kernels.push(Kernel::Avx512);
            }
        }
        kernels
    }

    /// Values in [-1, 1], a few of them zero, from a fixed LCG.
    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761) | 1;
        (0..len)
            .map(|i| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                if i % 97 == 5 {
                    0.0
                } else {
                    (s >> 8) as f32 / (1 << 23) as f32 - 1.0
                }
            })
            .collect()
    }

    /// An op and its inputs' data and shapes.
    type Case = (TensorOp, Vec<(Vec<f32>, Shape)>);

    fn run(
        backend: &DeterministicCpuBackend,
        op: TensorOp,
        inputs: &[(Vec<f32>, Shape)],
    ) -> Vec<u32> {
        let tensors: Vec<Tensor> = inputs
            .iter()
            .map(|(data, shape)| backend.upload(data.clone(), *shape).unwrap())
            .collect();
        let refs: Vec<&Tensor> = tensors.iter().collect();
        let out = backend.execute(op, &refs, &OpBudget::unlimited()).unwrap();
        let mut data = vec![0.0; out.shape().elements().unwrap()];
        backend.read_into(&out, &mut data).unwrap();
        data.into_iter().map(f32::to_bits).collect()
    }

    /// Every kernel, on one thread or three, gives the plain kernel's bits: over edge panels,
    /// several tiles and depth blocks, every transpose, and the row reductions.
    #[test]
    fn every_kernel_gives_the_plain_bits() {
        let reference = DeterministicCpuBackend::with_kernel(2, Kernel::Plain);
        let mut cases: Vec<Case> = Vec::new();
        for (m, k, n) in [
            (1, 1, 1),
            (7, 3, 5),
            (37, 53, 29),
            (97, 300, 259),
            (200, 513, 70),
            // Past a whole output tile both ways, and three depth blocks.
            (400, 600, 530),
        ] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                if m * k * n > 1 << 24 && ta != tb {
                    continue; // the reference is slow, and the smaller shapes mix transposes
                }
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
                let op = TensorOp::Matmul {
                    trans_a: ta,
                    trans_b: tb,
                };
                let a = values((m * k) as usize, m + k);
                let b = values((k * n) as usize, k * n);
                cases.push((op, vec![(a, sa), (b, sb)]));
            }
        }
        for (r, c) in [(1, 1), (3, 15), (5, 17), (9, 1000), (600, 300)] {
            let x: Vec<f32> = values(r * c, 7).iter().map(|v| v * 9.0).collect();
            let shape = Shape::new(r as u32, c as u32);
            let labels: Vec<f32> = (0..r).map(|i| (i * 7 % c) as f32).collect();
            let labeled = vec![(x.clone(), shape), (labels, Shape::new(r as u32, 1))];
            for axis in [ReduceAxis::Axis0, ReduceAxis::Axis1] {
                let op = TensorOp::Reduce {
                    op: ReduceOp::Mean,
                    axis,
                };
                cases.push((op, vec![(x.clone(), shape)]));
            }
            cases.push((TensorOp::SoftmaxXent(XentReduction::Mean), labeled.clone()));
            cases.push((
                TensorOp::SoftmaxXent(XentReduction::PerRow),
                labeled.clone(),
            ));
            cases.push((TensorOp::SoftmaxXentGrad, labeled));
        }
        let want: Vec<Vec<u32>> = cases
            .iter()
            .map(|(op, inputs)| run(&reference, *op, inputs))
            .collect();
        for kernel in kernels() {
            for threads in [1, 3] {
                let backend = DeterministicCpuBackend::with_kernel(threads, kernel);
                for ((op, inputs), want) in cases.iter().zip(&want) {
                    let shapes: Vec<Shape> = inputs.iter().map(|(_, s)| *s).collect();
                    assert!(
                        run(&backend, *op, inputs) == *want,
                        "{}: {op:?} on {shapes:?} differs from the plain kernel",
                        backend.name()
                    );
                }
            }
        }
    }

    /// Each product is rounded before it is added: with an FMA, `-(1 + 2^-11) + a * a` for
    /// `a = 1 + 2^-12` would keep the `2^-24` that rounding `a * a` drops.
    #[test]
    fn products_round_before_they_add() {
        let a = 1.0 + 2f32.powi(-12);
        let (m, n) = (37, 37);
        let lhs: Vec<f32> = (0..m).flat_map(|_| [-(1.0 + 2f32.powi(-11)), a]).collect();
        let rhs: Vec<f32> = [vec![1.0; n], vec![a; n]].concat();
        let inputs = [
            (lhs, Shape::new(m as u32, 2)),
            (rhs, Shape::new(2, n as u32)),
        ];
        let op = TensorOp::Matmul {
            trans_a: false,
            trans_b: false,
        };
        for kernel in kernels() {
            let backend = DeterministicCpuBackend::with_kernel(2, kernel);
            assert_eq!(
                run(&backend, op, &inputs),
                vec![0; m * n],
                "{}",
                backend.name()
            );
        }
    }

    #[test]
    fn rows_sum_in_lanes() {
        // 1e8 swallows any 1 added to it, so the order shows. In lanes, 1e8 and -1e8 meet in
        // lane 0 before its one other element, and the 37 ones elsewhere all count: 38. In
        // sequence, the 15 ones after 1e8 would vanish: 23.
        let mut x = vec![1.0f32; 40];
        x[0] = 1e8;
        x[16] = -1e8;
        for fast in [false, true] {
            assert_eq!(reduce_row(&x, fast, 0.0, |v| v, add), 38.0);
        }
        assert_eq!(
            reduce_row(&[], true, f32::NEG_INFINITY, |v| v, max_of),
            f32::NEG_INFINITY
        );
    }

    #[test]
    fn nans_are_canonical() {
        let backend = DeterministicCpuBackend::with(1, true);
        let odd_nan = f32::from_bits(0xffc0_1234);
        let x = vec![(vec![odd_nan, 1.0, f32::INFINITY, 2.0], Shape::new(2, 2))];
        for op in [
            TensorOp::Scale { alpha: 2.0 },
            TensorOp::Transpose,
            TensorOp::Reduce {
                op: ReduceOp::Sum,
                axis: ReduceAxis::Axis0,
            },
        ] {
            let out = run(&backend, op, &x);
            assert_eq!(out[0], 0x7fc0_0000, "{op:?}");
        }
        let zero_times_inf = run(
            &backend,
            TensorOp::Binary(BinaryOp::Mul),
            &[
                (vec![0.0], Shape::new(1, 1)),
                (vec![f32::INFINITY], Shape::new(1, 1)),
            ],
        );
        assert_eq!(zero_times_inf, vec![0x7fc0_0000]);
    }
}
