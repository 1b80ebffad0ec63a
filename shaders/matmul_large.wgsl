// Matrix multiply for large outputs: the op and Params of matmul.wgsl, out (m x n) =
// op(A) (m x k) @ op(B) (k x n), f32, row-major; flags bit 0: A stored transposed (k x m),
// bit 1: B stored transposed (n x k).
//
// Why a second kernel: matmul.wgsl's invocations each read 8 values from workgroup memory for
// 16 multiply-adds, and on a GPU that read traffic, not the arithmetic, sets the pace. Here
// each of the 256 invocations holds an 8 x 8 block of a 128 x 128 output tile and reads its
// operands as four vec4s per step of k: 64 multiply-adds per 4 reads. The next k-slab's global
// loads are issued before the current slab's arithmetic, so their latency hides behind it.
// Small outputs keep the 64 x 64 kernel: at 128 x 128 they would leave most of a GPU idle.
//
// Invocation (tx, ty) computes rows {ty*4 .. ty*4+3} and {64+ty*4 .. 64+ty*4+3} of the tile,
// and the same pattern of columns with tx, so a warp's vec4 reads are contiguous.
//
// Registers are indexed with literals only (the loads and the accumulators are written out),
// so they stay in registers whether or not a driver unrolls the loops: a register array
// indexed in a loop that is not unrolled moves to slow local memory.

struct Params {
    len: u32,
    rows: u32, // m
    cols: u32, // n
    k: u32,
    alpha: f32,
    flags: u32,
    groups_x: u32, // workgroups along x in the dispatch grid (the grid is flattened)
    aux: u32,
}

const WG: u32 = 16u;       // invocations per side of the workgroup
const TM: u32 = 128u;      // output tile rows
const TN: u32 = 128u;      // output tile columns
const TK: u32 = 8u;        // k per slab
const THREADS: u32 = 256u; // WG * WG
// A slab row in workgroup memory: TM values and 4 of padding, so that the transposing stores
// of a row-major A (8 consecutive invocations walk k) land in distinct banks.
const STRIDE4: u32 = 33u;  // (TM + 4) / 4, in vec4s

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// a_tile[kk][i / 4][i % 4] = op(A)[row0 + i][k0 + kk]; b_tile likewise with op(B)[k0 + kk][col0 + j].
var<workgroup> a_tile: array<vec4<f32>, 264>; // TK * STRIDE4
var<workgroup> b_tile: array<vec4<f32>, 264>;

// op(A)[gi][gk], or 0 outside A.
fn fetch_a(gi: u32, gk: u32, trans_a: bool) -> f32 {
    if (gi >= p.rows || gk >= p.k) {
        return 0.0;
    }
    if (trans_a) {
        return a[gk * p.rows + gi];
    }
    return a[gi * p.k + gk];
}

// op(B)[gk][gj], or 0 outside B.
fn fetch_b(gk: u32, gj: u32, trans_b: bool) -> f32 {
    if (gj >= p.cols || gk >= p.k) {
        return 0.0;
    }
    if (trans_b) {
        return b[gj * p.k + gk];
    }
    return b[gk * p.cols + gj];
}

// An invocation's share of a slab: 4 elements at (x0 + e * dx, kk0 + e * dk), e = 0..3, x a
// tile row (A) or column (B).
struct Share {
    x0: u32,
    kk0: u32,
    dx: u32,
    dk: u32,
}

// Element flat + e * THREADS of a slab, in the stored matrix's order, so that consecutive
// invocations walk its contiguous direction: along k when k is contiguous (`along_k`),
// else along the tile's rows or columns.
fn share(flat: u32, along_k: bool) -> Share {
    if (along_k) {
        return Share(flat / TK, flat % TK, THREADS / TK, 0u);
    }
    return Share(flat % TM, flat / TM, 0u, THREADS / TM);
}

fn load_a(s: Share, row0: u32, k0: u32, trans_a: bool) -> vec4<f32> {
    let i = row0 + s.x0;
    let kk = k0 + s.kk0;
    return vec4<f32>(
        fetch_a(i, kk, trans_a),
        fetch_a(i + s.dx, kk + s.dk, trans_a),
        fetch_a(i + 2u * s.dx, kk + 2u * s.dk, trans_a),
        fetch_a(i + 3u * s.dx, kk + 3u * s.dk, trans_a),
    );
}

fn load_b(s: Share, col0: u32, k0: u32, trans_b: bool) -> vec4<f32> {
    let j = col0 + s.x0;
    let kk = k0 + s.kk0;
    return vec4<f32>(
        fetch_b(kk, j, trans_b),
        fetch_b(kk + s.dk, j + s.dx, trans_b),
        fetch_b(kk + 2u * s.dk, j + 2u * s.dx, trans_b),
        fetch_b(kk + 3u * s.dk, j + 3u * s.dx, trans_b),
    );
}

fn put_a(x: u32, kk: u32, v: f32) {
    a_tile[kk * STRIDE4 + x / 4u][x % 4u] = v;
}

fn put_b(x: u32, kk: u32, v: f32) {
    b_tile[kk * STRIDE4 + x / 4u][x % 4u] = v;
}

fn store_a(s: Share, v: vec4<f32>) {
    put_a(s.x0, s.kk0, v.x);
    put_a(s.x0 + s.dx, s.kk0 + s.dk, v.y);
    put_a(s.x0 + 2u * s.dx, s.kk0 + 2u * s.dk, v.z);
    put_a(s.x0 + 3u * s.dx, s.kk0 + 3u * s.dk, v.w);
}

fn store_b(s: Share, v: vec4<f32>) {
    put_b(s.x0, s.kk0, v.x);
    put_b(s.x0 + s.dx, s.kk0 + s.dk, v.y);
    put_b(s.x0 + 2u * s.dx, s.kk0 + 2u * s.dk, v.z);
    put_b(s.x0 + 3u * s.dx, s.kk0 + 3u * s.dk, v.w);
}

// out[gi][gj .. gj + 3] = v, within the output.
fn write4(gi: u32, gj: u32, v: vec4<f32>) {
    let m = p.rows;
    let n = p.cols;
    if (gi >= m) {
        return;
    }
    let at = gi * n + gj;
    if (gj < n) {
        out[at] = v.x;
    }
    if (gj + 1u < n) {
        out[at + 1u] = v.y;
    }
    if (gj + 2u < n) {
        out[at + 2u] = v.z;
    }
    if (gj + 3u < n) {
        out[at + 3u] = v.w;
    }
}

@compute @workgroup_size(16, 16, 1)
fn matmul_large(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let m = p.rows;
    let n = p.cols;
    let k = p.k;
    let tiles_n = (n + TN - 1u) / TN;
    let tile = wg.y * p.groups_x + wg.x;
    // Uniform across the workgroup, so the barriers below stay in uniform control flow.
    if (tile >= tiles_n * ((m + TM - 1u) / TM)) {
        return;
    }
    let row0 = (tile / tiles_n) * TM;
    let col0 = (tile % tiles_n) * TN;
    let tx = lid.x;
    let ty = lid.y;
    let flat = ty * WG + tx;
    let trans_a = (p.flags & 1u) != 0u;
    let trans_b = (p.flags & 2u) != 0u;
    // A row-major A is contiguous along k, a transposed B too.
    let sa = share(flat, !trans_a);
    let sb = share(flat, trans_b);

    var next_a = load_a(sa, row0, 0u, trans_a);
    var next_b = load_b(sb, col0, 0u, trans_b);
    var acc: array<vec4<f32>, 16>; // row r, column half h at r * 2 + h; zero-initialised
    for (var k0 = 0u; k0 < k; k0 += TK) {
        store_a(sa, next_a);
        store_b(sb, next_b);
        workgroupBarrier();

        // The next slab's loads, in flight during this slab's arithmetic.
        let k1 = k0 + TK;
        if (k1 < k) {
            next_a = load_a(sa, row0, k1, trans_a);
            next_b = load_b(sb, col0, k1, trans_b);
        }

        for (var kk = 0u; kk < TK; kk++) {
            let a_lo = a_tile[kk * STRIDE4 + ty];
            let a_hi = a_tile[kk * STRIDE4 + 16u + ty];
            let b_lo = b_tile[kk * STRIDE4 + tx];
            let b_hi = b_tile[kk * STRIDE4 + 16u + tx];
            acc[0] = fma(vec4<f32>(a_lo.x), b_lo, acc[0]);
            acc[1] = fma(vec4<f32>(a_lo.x), b_hi, acc[1]);
            acc[2] = fma(vec4<f32>(a_lo.y), b_lo, acc[2]);
            acc[3] = fma(vec4<f32>(a_lo.y), b_hi, acc[3]);
            acc[4] = fma(vec4<f32>(a_lo.z), b_lo, acc[4]);
            acc[5] = fma(vec4<f32>(a_lo.z), b_hi, acc[5]);
            acc[6] = fma(vec4<f32>(a_lo.w), b_lo, acc[6]);
            acc[7] = fma(vec4<f32>(a_lo.w), b_hi, acc[7]);
            acc[8] = fma(vec4<f32>(a_hi.x), b_lo, acc[8]);
            acc[9] = fma(vec4<f32>(a_hi.x), b_hi, acc[9]);
            acc[10] = fma(vec4<f32>(a_hi.y), b_lo, acc[10]);
            acc[11] = fma(vec4<f32>(a_hi.y), b_hi, acc[11]);
            acc[12] = fma(vec4<f32>(a_hi.z), b_lo, acc[12]);
            acc[13] = fma(vec4<f32>(a_hi.z), b_hi, acc[13]);
            acc[14] = fma(vec4<f32>(a_hi.w), b_lo, acc[14]);
            acc[15] = fma(vec4<f32>(a_hi.w), b_hi, acc[15]);
        }
        workgroupBarrier();
    }

    let gi = row0 + ty * 4u;
    let gj = col0 + tx * 4u;
    write4(gi, gj, acc[0]);
    write4(gi, gj + 64u, acc[1]);
    write4(gi + 1u, gj, acc[2]);
    write4(gi + 1u, gj + 64u, acc[3]);
    write4(gi + 2u, gj, acc[4]);
    write4(gi + 2u, gj + 64u, acc[5]);
    write4(gi + 3u, gj, acc[6]);
    write4(gi + 3u, gj + 64u, acc[7]);
    write4(gi + 64u, gj, acc[8]);
    write4(gi + 64u, gj + 64u, acc[9]);
    write4(gi + 65u, gj, acc[10]);
    write4(gi + 65u, gj + 64u, acc[11]);
    write4(gi + 66u, gj, acc[12]);
    write4(gi + 66u, gj + 64u, acc[13]);
    write4(gi + 67u, gj, acc[14]);
    write4(gi + 67u, gj + 64u, acc[15]);
}
