// Sum along one axis of a rows x cols tensor, times `alpha` (1 for sum, 1/count for mean).
//
// sum_axis0: out (1 x cols). A workgroup takes COLUMNS columns: its LANES lanes each walk
// every LANES-th row (neighbouring invocations read neighbouring columns), then the lanes'
// sums are added in workgroup memory. With one invocation per column walking every row, a
// tall tensor of 4096 columns ran on 16 workgroups and left most of a GPU idle.
// sum_axis1: out (rows x 1), one workgroup per row: a strided partial sum per invocation,
// then a tree reduction in workgroup memory.

struct Params {
    len: u32,
    rows: u32,
    cols: u32,
    k: u32,
    alpha: f32,
    flags: u32,
    groups_x: u32, // workgroups along x in the dispatch grid (the grid is flattened)
    aux: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const COLUMNS: u32 = 16u; // columns per sum_axis0 workgroup (SUM_AXIS0_COLUMNS in gpu.rs)
const LANES: u32 = 16u;   // 256 / COLUMNS

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256, 1, 1)
fn sum_axis0(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let group = wg.y * p.groups_x + wg.x;
    // Uniform across the workgroup, so the barriers below stay in uniform control flow.
    if (group * COLUMNS >= p.cols) {
        return;
    }
    let c = lid.x % COLUMNS;
    let lane = lid.x / COLUMNS;
    let col = group * COLUMNS + c;
    var s = 0.0;
    if (col < p.cols) {
        for (var r = lane; r < p.rows; r += LANES) {
            s += a[r * p.cols + col];
        }
    }
    // partial[lane * COLUMNS + c]: add the lanes' sums of each column, halving the lanes.
    partial[lid.x] = s;
    workgroupBarrier();
    for (var stride = 8u; stride > 0u; stride >>= 1u) {
        if (lane < stride) {
            partial[lid.x] += partial[lid.x + stride * COLUMNS];
        }
        workgroupBarrier();
    }
    if (lane == 0u && col < p.cols) {
        out[col] = partial[c] * p.alpha;
    }
}

@compute @workgroup_size(256, 1, 1)
fn sum_axis1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wg.y * p.groups_x + wg.x;
    // Uniform across the workgroup, so the barriers below stay in uniform control flow.
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    var s = 0.0;
    for (var c = lid.x; c < p.cols; c += 256u) {
        s += a[base + c];
    }
    partial[lid.x] = s;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if (lid.x < stride) {
            partial[lid.x] += partial[lid.x + stride];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        out[row] = partial[0] * p.alpha;
    }
}
