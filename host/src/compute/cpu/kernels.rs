//! The cpu backend's f32 matmul kernels, picked at run time for the CPU they run on.
//!
//! - [`MatmulKernel::Avx512`], on x86-64 CPUs with `avx512f`: a blocked product (GotoBLAS /
//!   BLIS style) around an 8 x 32 register tile. For each block of [`KC`] steps of the inner
//!   dimension, up to [`NC`] columns of `op(B)` are packed into panels of 32 columns; then each
//!   panel of 8 rows of `op(A)` stays in L1 while the 8 x 32 blocks of the output are computed
//!   against every `B` panel in 16 zmm accumulators, each output block added to memory once
//!   per [`KC`] steps. The `A` panel is read where it is when `A` is row-major (8 rows of
//!   [`KC`] contiguous values); a transposed `A` (or an edge, padded with zeros) is packed
//!   first. Measured on a 2-core AMD EPYC (Zen 5): 1.6-1.8x gemm's AVX2 kernels on one core.
//! - [`MatmulKernel::Gemm`], everywhere else: the `gemm` crate, which picks its own kernels at
//!   run time (AVX2 with FMA on x86-64 CPUs that have them, NEON on aarch64, portable code
//!   elsewhere). On stable Rust it has no AVX-512 kernels of its own, and on AVX2 its kernels
//!   measured faster than a 6 x 16 AVX2 tile written like the AVX-512 one.
//!
//! The AVX-512 tile's inner loop is inline assembly rather than intrinsics: the host crate
//! builds with debug assertions in the profile that tests and benches use, and the intrinsics'
//! loads then carry precondition checks (and spills) into the hottest loop, which cost a
//! sixth of its speed.
//!
//! Everything here runs on the calling thread: the backend shares a product out in tiles.

/// The f32 matmul kernel the cpu backend runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MatmulKernel {
    /// This module's AVX-512 tile (x86-64 with `avx512f`).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// The `gemm` crate with its own run-time choice of kernel.
    Gemm,
}

impl MatmulKernel {
    /// The fastest kernel this CPU runs.
    pub(super) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Self::Avx512;
        }
        Self::Gemm
    }

    /// Every kernel this CPU runs, fastest first.
    #[cfg(test)]
    pub(super) fn supported() -> Vec<Self> {
        let mut kernels = vec![Self::detect()];
        if kernels[0] != Self::Gemm {
            kernels.push(Self::Gemm);
        }
        kernels
    }

    /// The instruction set the kernel runs on this CPU: `avx512`, `avx2` (gemm's AVX2 + FMA
    /// kernels), `neon` or `portable`.
    pub(super) fn isa(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => "avx512",
            Self::Gemm => gemm_isa(),
        }
    }
}

/// The kernels `gemm` picks on this CPU (it has no AVX-512 ones on stable Rust).
fn gemm_isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return "avx2";
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("neon") {
        return "neon";
    }
    "portable"
}

/// A read-only strided matrix: element `(r, c)` is at `ptr + r * rs + c * cs`.
#[derive(Clone, Copy, Debug)]
pub(super) struct MatRef {
    pub(super) ptr: *const f32,
    pub(super) rs: isize,
    pub(super) cs: isize,
}

impl MatRef {
    /// The view whose element `(0, 0)` is this one's `(r, c)`.
    ///
    /// # Safety
    ///
    /// `(r, c)` must lie inside the matrix.
    #[cfg(target_arch = "x86_64")]
    unsafe fn at(self, r: usize, c: usize) -> Self {
        // SAFETY: the caller keeps (r, c) inside the matrix, so the offset stays inside the
        // allocation it points into.
        let ptr = unsafe { self.ptr.offset(r as isize * self.rs + c as isize * self.cs) };
        Self { ptr, ..self }
    }
}

/// `dst = A @ B`, or `dst += A @ B` when `accumulate`, for `A` `m x k`, `B` `k x n` and `dst`
/// `m x n` at row stride `ld` (column stride 1), with `kernel`.
///
/// # Safety
///
/// `a` must be readable at every element of an `m x k` matrix, `b` at every element of a
/// `k x n` one, and `dst` writable at every element of an `m x n` one at row stride `ld`,
/// overlapping neither and accessed by nothing else during the call. `kernel` must run on
/// this CPU ([`MatmulKernel::detect`] or `Gemm`).
pub(super) unsafe fn matmul(
    kernel: MatmulKernel,
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    ld: usize,
    accumulate: bool,
    a: MatRef,
    b: MatRef,
) {
    if m == 0 || n == 0 {
        return;
    }
    match kernel {
        #[cfg(target_arch = "x86_64")]
        MatmulKernel::Avx512 => {
            if k == 0 {
                if !accumulate {
                    for r in 0..m {
                        // SAFETY: row r < m of dst holds n writable values (the contract).
                        unsafe { std::ptr::write_bytes(dst.add(r * ld), 0, n) };
                    }
                }
                return;
            }
            let product = Product {
                m,
                n,
                k,
                dst,
                ld,
                accumulate,
                a,
                b,
            };
            // SAFETY: the caller's contract, and the kernel runs on this CPU, so it has
            // avx512f.
            unsafe { blocked(&product) }
        }
        // SAFETY: the caller's contract covers gemm's: the shapes, strides and buffers are
        // gemm's (dst at row stride ld, column stride 1), with nothing aliasing dst.
        MatmulKernel::Gemm => unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst,
                1,
                ld as isize,
                accumulate,
                a.ptr,
                a.cs,
                a.rs,
                b.ptr,
                b.cs,
                b.rs,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        },
    }
}

/// One call's operands, as [`matmul`] takes them.
#[cfg(target_arch = "x86_64")]
struct Product {
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    ld: usize,
    accumulate: bool,
    a: MatRef,
    b: MatRef,
}

/// Rows and columns of the register tile.
#[cfg(target_arch = "x86_64")]
const MR: usize = 8;
#[cfg(target_arch = "x86_64")]
const NR: usize = 32;
/// Steps of the inner dimension per block: one `MR x KC` panel of `A` (8 KiB) stays in L1,
/// `KC x NR` of `B` (32 KiB) is read from L2 per tile. (8 x 32 measured at least as fast as 12 x 32
/// and 14 x 32 tiles, and wastes no rows on tiles of 256.)
#[cfg(target_arch = "x86_64")]
const KC: usize = 256;
/// Columns of `B` packed at once: `KC x NC` values (512 KiB) stay in L2.
#[cfg(target_arch = "x86_64")]
const NC: usize = 512;

/// 64 bytes of f32s, so that packed panels start on cache lines and no 512-bit load of `B`
/// straddles two.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// This thread's packing buffers (an `A` panel, a `B` block), kept between products:
    /// at most 8 KiB and 512 KiB (256 KiB with the backend's tiles) per thread.
    static PACKED: std::cell::RefCell<(Vec<f32>, Vec<Line>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The blocked product with the AVX-512 tile.
///
/// # Safety
///
/// As [`matmul`], with `k > 0` and avx512f present.
#[cfg(target_arch = "x86_64")]
unsafe fn blocked(product: &Product) {
    PACKED.with(|cell| {
        // A re-entrant call (none today) would find the buffers taken: it packs into fresh
        // ones instead.
        let mut fresh = (Vec::new(), Vec::new());
        let mut held = cell.try_borrow_mut();
        let (pa, pb) = match &mut held {
            Ok(buffers) => &mut **buffers,
            Err(_) => &mut fresh,
        };
        let kc = KC.min(product.k);
        let nc = NC.min(product.n.next_multiple_of(NR));
        pa.resize(MR * kc, 0.0);
        pb.resize(kc * nc / 16, Line([0.0; 16]));
        // SAFETY: a Line is 16 f32s with no padding, so the Vec's lines are kc * nc f32s.
        let pb = unsafe { std::slice::from_raw_parts_mut(pb.as_mut_ptr().cast::<f32>(), kc * nc) };
        // SAFETY: the caller's contract; the buffers hold the largest blocks.
        unsafe { blocked_in(product, pa, pb) };
    });
}

/// # Safety
///
/// As [`blocked`], with `pa` holding `MR * min(KC, k)` values and `pb`
/// `min(KC, k) * min(NC, n rounded up to NR)`, 64-byte aligned.
#[cfg(target_arch = "x86_64")]
unsafe fn blocked_in(product: &Product, pa: &mut [f32], pb: &mut [f32]) {
    let Product {
        m,
        n,
        k,
        dst,
        ld,
        accumulate,
        a,
        b,
    } = *product;
    let mut edge = [0.0f32; MR * NR];
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let add = accumulate || pc > 0;
            // SAFETY: (pc, jc) lies inside B, and the block is its kc x nc from there.
            unsafe { pack_b(b.at(pc, jc), kc, nc, pb) };
            for ir in (0..m).step_by(MR) {
                let mr = MR.min(m - ir);
                // SAFETY: (ir, pc) lies inside A.
                let block = unsafe { a.at(ir, pc) };
                let panel_a = if mr == MR && block.cs == 1 {
                    // Whole rows of a row-major A: the kernel reads them where they are
                    // (8 rows of kc contiguous values, which stay in L1).
                    APanel {
                        ptr: block.ptr,
                        row: block.rs * 4,
                        step: 4,
                    }
                } else {
                    // SAFETY: the panel is the mr x kc block of A from (ir, pc).
                    unsafe { pack_a(block, mr, kc, pa) };
                    APanel {
                        ptr: pa.as_ptr(),
                        row: 4,
                        step: 4 * MR as isize,
                    }
                };
                for jr in (0..nc).step_by(NR) {
                    let nr = NR.min(nc - jr);
                    let panel = pb[jr * kc..].as_ptr();
                    // SAFETY: (ir, jc + jr) lies inside dst.
                    let out = unsafe { dst.add(ir * ld + jc + jr) };
                    if mr == MR && nr == NR {
                        // SAFETY: `panel_a` reaches kc steps of MR values (A's own rows, or
                        // `pa`), `pb` holds kc * NR values from panel jr / NR on, the whole
                        // tile lies inside dst, and the caller has checked for avx512f.
                        unsafe { tile_8x32(kc, panel_a, panel, out, ld, add) };
                        continue;
                    }
                    // An edge: the zero-padded tile goes to `edge`, its real part to dst.
                    // SAFETY: as above, with `edge` holding MR rows of NR values.
                    unsafe { tile_8x32(kc, panel_a, panel, edge.as_mut_ptr(), NR, false) };
                    for (i, row) in edge.chunks_exact(NR).take(mr).enumerate() {
                        // SAFETY: row i < mr of the tile, columns below nr, lie inside dst,
                        // which nothing else accesses during the call.
                        let out = unsafe { std::slice::from_raw_parts_mut(out.add(i * ld), nr) };
                        if add {
                            out.iter_mut().zip(row).for_each(|(o, &t)| *o += t);
                        } else {
                            out.copy_from_slice(&row[..nr]);
                        }
                    }
                }
            }
        }
    }
}

/// Where the micro-kernel reads `A`: row `i` of step `p` is at byte offset
/// `i * row + p * step` from `ptr`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct APanel {
    ptr: *const f32,
    row: isize,
    step: isize,
}

/// Packs the `mr x kc` block at `a` into `dst` as `kc` steps of `MR` values (rows past `mr`
/// are zero).
///
/// # Safety
///
/// `a` is readable at every element of an `mr x kc` block; `dst` holds `MR * kc` values.
#[cfg(target_arch = "x86_64")]
unsafe fn pack_a(a: MatRef, mr: usize, kc: usize, dst: &mut [f32]) {
    let dst = &mut dst[..MR * kc];
    if mr < MR {
        dst.fill(0.0);
    }
    if a.cs == 1 {
        // Rows are contiguous: read each along.
        for i in 0..mr {
            // SAFETY: row i < mr of the block holds kc readable values at stride 1.
            let row = unsafe { std::slice::from_raw_parts(a.ptr.offset(i as isize * a.rs), kc) };
            for (step, &x) in dst.chunks_exact_mut(MR).zip(row) {
                step[i] = x;
            }
        }
    } else if a.rs == 1 {
        // Columns are contiguous (a transposed operand): each step is a copy.
        for (p, step) in dst.chunks_exact_mut(MR).enumerate() {
            // SAFETY: column p < kc of the block holds mr readable values at stride 1.
            let col = unsafe { std::slice::from_raw_parts(a.ptr.offset(p as isize * a.cs), mr) };
            step[..mr].copy_from_slice(col);
        }
    } else {
        for (p, step) in dst.chunks_exact_mut(MR).enumerate() {
            for (i, d) in step[..mr].iter_mut().enumerate() {
                // SAFETY: (i, p) lies inside the mr x kc block.
                *d = unsafe { *a.ptr.offset(i as isize * a.rs + p as isize * a.cs) };
            }
        }
    }
}

/// Packs the `kc x nc` block at `b` into `dst` as panels of `NR` columns, each `kc` steps of
/// `NR` values (columns past `nc` are zero).
///
/// # Safety
///
/// `b` is readable at every element of a `kc x nc` block; `dst` holds `kc * nc` values,
/// `nc` rounded up to `NR`.
#[cfg(target_arch = "x86_64")]
unsafe fn pack_b(b: MatRef, kc: usize, nc: usize, dst: &mut [f32]) {
    let panels = nc.div_ceil(NR);
    let dst = &mut dst[..panels * NR * kc];
    if !nc.is_multiple_of(NR) {
        dst[(panels - 1) * NR * kc..].fill(0.0);
    }
    if b.cs == 1 {
        // Rows are contiguous: read each along once, its parts going to every panel.
        for p in 0..kc {
            // SAFETY: row p < kc of the block holds nc readable values at stride 1.
            let row = unsafe { std::slice::from_raw_parts(b.ptr.offset(p as isize * b.rs), nc) };
            for (j, part) in row.chunks(NR).enumerate() {
                let at = j * NR * kc + p * NR;
                dst[at..at + part.len()].copy_from_slice(part);
            }
        }
    } else {
        // Columns are contiguous (a transposed operand): fill each panel a step at a time,
        // reading its columns side by side (each moves one value along per step, so the
        // panel's columns stay in L1 between steps).
        for (panel, j0) in dst.chunks_exact_mut(NR * kc).zip((0..nc).step_by(NR)) {
            let nr = NR.min(nc - j0);
            let mut cols = [b.ptr; NR];
            for (j, col) in cols.iter_mut().enumerate().take(nr) {
                // SAFETY: column j0 + j < nc of the block is readable.
                *col = unsafe { b.ptr.offset((j0 + j) as isize * b.cs) };
            }
            for step in panel.chunks_exact_mut(NR) {
                for (d, col) in step.iter_mut().zip(&mut cols).take(nr) {
                    // SAFETY: each column pointer stays on its column, inside the block: it
                    // reads kc values, moving one row (rs) along after each.
                    unsafe {
                        *d = **col;
                        *col = col.offset(b.rs);
                    }
                }
            }
        }
    }
}

/// `c[8 x 32] = a @ b` (or `+=` when `add`): `a` reaches `kc` steps of 8 values (see
/// [`APanel`]), the packed `b` holds `kc` steps of 32; `c` is at row stride `ldc`.
///
/// # Safety
///
/// `kc > 0`; `a` is readable at its 8 x kc values and `b` holds `kc * 32` values; `c` is
/// writable at 8 rows of 32 values at stride `ldc`; the CPU has avx512f.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_8x32(kc: usize, a: APanel, b: *const f32, c: *mut f32, ldc: usize, add: bool) {
    use std::arch::{
        asm,
        x86_64::{_mm512_add_ps, _mm512_loadu_ps, _mm512_setzero_ps, _mm512_storeu_ps},
    };
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let [
        [c00, c01],
        [c10, c11],
        [c20, c21],
        [c30, c31],
        [c40, c41],
        [c50, c51],
        [c60, c61],
        [c70, c71],
    ] = &mut acc;
    // Rows 0-3 of a step are read from `a0` + 0, 1, 2, 3 rows, rows 4-7 from `a4` = `a0` + 4
    // rows: x86 addresses scale an index by 1, 2, 4 or 8, so 3 rows is a register of its own.
    let (a0, row) = (a.ptr, a.row);
    // SAFETY: row 4 of the panel's first step is readable (the caller's contract).
    let a4 = unsafe { a0.byte_offset(4 * row) };
    // SAFETY: `a` reaches kc > 0 steps of 8 values and `b` holds kc steps of 32: each turn of
    // the loop reads one step of each and moves both on; the loop writes only registers.
    unsafe {
        asm!(
            "2:",
            "vmovups {b0}, [{b}]",
            "vmovups {b1}, [{b} + 64]",
            "vbroadcastss {x}, dword ptr [{a0}]",
            "vfmadd231ps {c00}, {x}, {b0}",
            "vfmadd231ps {c01}, {x}, {b1}",
            "vbroadcastss {x}, dword ptr [{a0} + {r1}]",
            "vfmadd231ps {c10}, {x}, {b0}",
            "vfmadd231ps {c11}, {x}, {b1}",
            "vbroadcastss {x}, dword ptr [{a0} + {r1}*2]",
            "vfmadd231ps {c20}, {x}, {b0}",
            "vfmadd231ps {c21}, {x}, {b1}",
            "vbroadcastss {x}, dword ptr [{a0} + {r3}]",
            "vfmadd231ps {c30}, {x}, {b0}",
            "vfmadd231ps {c31}, {x}, {b1}",
            "vbroadcastss {x}, dword ptr [{a4}]",
            "vfmadd231ps {c40}, {x}, {b0}",
            "vfmadd231ps {c41}, {x}, {b1}",
            "vbroadcastss {x}, dword ptr [{a4} + {r1}]",
            "vfmadd231ps {c50}, {x}, {b0}",
            "vfmadd231ps {c51}, {x}, {b1}",
            "vbroadcastss {x}, dword ptr [{a4} + {r1}*2]",
            "vfmadd231ps {c60}, {x}, {b0}",
            "vfmadd231ps {c61}, {x}, {b1}",
            "vbroadcastss {x}, dword ptr [{a4} + {r3}]",
            "vfmadd231ps {c70}, {x}, {b0}",
            "vfmadd231ps {c71}, {x}, {b1}",
            "add {a0}, {step}",
            "add {a4}, {step}",
            "add {b}, 128",
            "dec {k}",
            "jnz 2b",
            a0 = inout(reg) a0 => _,
            a4 = inout(reg) a4 => _,
            r1 = in(reg) row,
            r3 = in(reg) 3 * row,
            step = in(reg) a.step,
            b = inout(reg) b => _,
            k = inout(reg) kc => _,
            b0 = out(zmm_reg) _,
            b1 = out(zmm_reg) _,
            x = out(zmm_reg) _,
            c00 = inout(zmm_reg) *c00,
            c01 = inout(zmm_reg) *c01,
            c10 = inout(zmm_reg) *c10,
            c11 = inout(zmm_reg) *c11,
            c20 = inout(zmm_reg) *c20,
            c21 = inout(zmm_reg) *c21,
            c30 = inout(zmm_reg) *c30,
            c31 = inout(zmm_reg) *c31,
            c40 = inout(zmm_reg) *c40,
            c41 = inout(zmm_reg) *c41,
            c50 = inout(zmm_reg) *c50,
            c51 = inout(zmm_reg) *c51,
            c60 = inout(zmm_reg) *c60,
            c61 = inout(zmm_reg) *c61,
            c70 = inout(zmm_reg) *c70,
            c71 = inout(zmm_reg) *c71,
            options(nostack, readonly),
        );
    }
    for (i, row) in acc.iter().enumerate() {
        for (v, &sum) in row.iter().enumerate() {
            // SAFETY: c holds 8 rows of 32 writable values at stride ldc.
            unsafe {
                let out = c.add(i * ldc + v * 16);
                let sum = if add {
                    _mm512_add_ps(sum, _mm512_loadu_ps(out))
                } else {
                    sum
                };
                _mm512_storeu_ps(out, sum);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `op(A) @ op(B)` in f64, for row-major `a` (`m x k`, or `k x m` stored when `ta`) and
    /// `b` (`k x n`, or `n x k` when `tb`).
    fn reference(
        a: &[f32],
        b: &[f32],
        (m, n, k): (usize, usize, usize),
        (ta, tb): (bool, bool),
    ) -> Vec<f64> {
        let at = |i: usize, p: usize| f64::from(if ta { a[p * m + i] } else { a[i * k + p] });
        let bt = |p: usize, j: usize| f64::from(if tb { b[j * k + p] } else { b[p * n + j] });
        (0..m * n)
            .map(|x| (0..k).map(|p| at(x / n, p) * bt(p, x % n)).sum())
            .collect()
    }

    /// Every kernel this CPU runs, on awkward shapes, both transposes and accumulation,
    /// against the f64 reference.
    #[test]
    fn kernels_match_the_f64_reference() {
        let shapes = [
            (1, 1, 1),
            (17, 33, 9),
            (64, 64, 64),
            (130, 70, 257),
            (9, 600, 3),
        ];
        for kernel in MatmulKernel::supported() {
            for (m, n, k) in shapes {
                let a: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 7 % 23) as f32 - 11.0) / 13.0)
                    .collect();
                let b: Vec<f32> = (0..k * n)
                    .map(|i| ((i * 5 % 19) as f32 - 9.0) / 7.0)
                    .collect();
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    let expect = reference(&a, &b, (m, n, k), (ta, tb));
                    let (a_rs, a_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
                    let (b_rs, b_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
                    let lhs = MatRef {
                        ptr: a.as_ptr(),
                        rs: a_rs,
                        cs: a_cs,
                    };
                    let rhs = MatRef {
                        ptr: b.as_ptr(),
                        rs: b_rs,
                        cs: b_cs,
                    };
                    for accumulate in [false, true] {
                        // Row stride n + 3: the kernel must leave the gaps alone.
                        let ld = n + 3;
                        let mut dst = vec![0.5f32; m * ld];
                        // SAFETY: a is m x k (or k x m) and b k x n (or n x k) at the strides
                        // given; dst holds m rows of ld >= n values; nothing aliases.
                        unsafe {
                            matmul(
                                kernel,
                                (m, n, k),
                                dst.as_mut_ptr(),
                                ld,
                                accumulate,
                                lhs,
                                rhs,
                            );
                        }
                        let scale = (k as f64).sqrt().max(1.0);
                        for (x, &e) in expect.iter().enumerate() {
                            let (i, j) = (x / n, x % n);
                            let want = e + if accumulate { 0.5 } else { 0.0 };
                            let got = f64::from(dst[i * ld + j]);
                            assert!(
                                (got - want).abs() <= 1e-5 * scale * (1.0 + want.abs()),
                                "{kernel:?} {m}x{n}x{k} ta={ta} tb={tb} acc={accumulate} \
                                 at ({i}, {j}): {got} != {want}"
                            );
                        }
                        for (i, row) in dst.chunks(ld).enumerate() {
                            assert!(
                                row[n..].iter().all(|&g| g == 0.5),
                                "{kernel:?} wrote past row {i}"
                            );
                        }
                    }
                }
            }
        }
    }
}
