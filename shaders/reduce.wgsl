// Sum along one axis of a rows x cols tensor, times `alpha` (1 for sum, 1/count for mean).
//
// sum_axis0: out (1 x cols), one invocation per column walking down the rows, so
// neighbouring invocations read neighbouring addresses.
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

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256, 1, 1)
fn sum_axis0(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let col = (wg.y * p.groups_x + wg.x) * 256u + lid.x;
    if (col >= p.cols) {
        return;
    }
    var s = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        s += a[r * p.cols + col];
    }
    out[col] = s * p.alpha;
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
