// Matrix multiply: out (m x n) = op(A) (m x k) @ op(B) (k x n), f32, row-major.
//
// flags bit 0: A is stored transposed (k x m); bit 1: B is stored transposed (n x k).
//
// Each workgroup computes one TM x TN tile of the output. Per step of TK along k, the 256
// invocations cooperatively stage a TM x TK slab of op(A) and a TK x TN slab of op(B) in
// workgroup memory (coalesced global reads whatever the transpose flags), then each
// invocation accumulates an RM x RN block of outputs in registers from workgroup memory only.
// Outputs are strided by WG so that neighbouring invocations touch neighbouring columns.

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

const WG: u32 = 16u;           // invocations per side of the workgroup
const RM: u32 = 4u;            // output rows per invocation
const RN: u32 = 4u;            // output columns per invocation
const TM: u32 = 64u;           // WG * RM
const TN: u32 = 64u;           // WG * RN
const TK: u32 = 16u;
const THREADS: u32 = 256u;     // WG * WG
const LOADS_A: u32 = 4u;       // TM * TK / THREADS
const LOADS_B: u32 = 4u;       // TK * TN / THREADS

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// a_tile[kk * TM + i] = op(A)[row0 + i][k0 + kk]; b_tile[kk * TN + j] = op(B)[k0 + kk][col0 + j].
var<workgroup> a_tile: array<f32, 1024>;
var<workgroup> b_tile: array<f32, 1024>;

@compute @workgroup_size(16, 16, 1)
fn matmul(
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

    var acc: array<f32, 16>; // RM * RN, zero-initialised
    var a_reg: array<f32, 4>;
    var b_reg: array<f32, 4>;

    for (var k0 = 0u; k0 < k; k0 += TK) {
        for (var e = 0u; e < LOADS_A; e++) {
            let idx = flat + e * THREADS;
            // Walk the contiguous direction of the stored matrix with consecutive invocations.
            var i: u32;
            var kk: u32;
            if (trans_a) {
                i = idx % TM;
                kk = idx / TM;
            } else {
                i = idx / TK;
                kk = idx % TK;
            }
            let gi = row0 + i;
            let gk = k0 + kk;
            var v = 0.0;
            if (gi < m && gk < k) {
                if (trans_a) {
                    v = a[gk * m + gi];
                } else {
                    v = a[gi * k + gk];
                }
            }
            a_tile[kk * TM + i] = v;
        }
        for (var e = 0u; e < LOADS_B; e++) {
            let idx = flat + e * THREADS;
            var j: u32;
            var kk: u32;
            if (trans_b) {
                j = idx / TK;
                kk = idx % TK;
            } else {
                j = idx % TN;
                kk = idx / TN;
            }
            let gj = col0 + j;
            let gk = k0 + kk;
            var w = 0.0;
            if (gj < n && gk < k) {
                if (trans_b) {
                    w = b[gj * k + gk];
                } else {
                    w = b[gk * n + gj];
                }
            }
            b_tile[kk * TN + j] = w;
        }
        workgroupBarrier();

        for (var kk = 0u; kk < TK; kk++) {
            for (var r = 0u; r < RM; r++) {
                a_reg[r] = a_tile[kk * TM + ty + r * WG];
            }
            for (var c = 0u; c < RN; c++) {
                b_reg[c] = b_tile[kk * TN + tx + c * WG];
            }
            for (var r = 0u; r < RM; r++) {
                for (var c = 0u; c < RN; c++) {
                    acc[r * RN + c] = fma(a_reg[r], b_reg[c], acc[r * RN + c]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var r = 0u; r < RM; r++) {
        let gi = row0 + ty + r * WG;
        for (var c = 0u; c < RN; c++) {
            let gj = col0 + tx + c * WG;
            if (gi < m && gj < n) {
                out[gi * n + gj] = acc[r * RN + c];
            }
        }
    }
}
