// Transpose: out (cols x rows) = a (rows x cols)^T. Each workgroup moves one 16 x 16 tile
// through workgroup memory so that both the reads and the writes are coalesced; the extra
// column of padding keeps the column-wise reads free of bank conflicts.

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

const T: u32 = 16u;
var<workgroup> tile: array<f32, 272>; // T * (T + 1)

@compute @workgroup_size(16, 16, 1)
fn transpose(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tiles_c = (p.cols + T - 1u) / T;
    let t = wg.y * p.groups_x + wg.x;
    // Uniform across the workgroup, so the barrier stays in uniform control flow.
    if (t >= tiles_c * ((p.rows + T - 1u) / T)) {
        return;
    }
    let r0 = (t / tiles_c) * T;
    let c0 = (t % tiles_c) * T;
    let r = r0 + lid.y;
    let c = c0 + lid.x;
    if (r < p.rows && c < p.cols) {
        tile[lid.y * (T + 1u) + lid.x] = a[r * p.cols + c];
    }
    workgroupBarrier();
    // Output row c0 + lid.y holds input column c0 + lid.y.
    let orow = c0 + lid.y;
    let ocol = r0 + lid.x;
    if (orow < p.cols && ocol < p.rows) {
        out[orow * p.rows + ocol] = tile[lid.x * (T + 1u) + lid.y];
    }
}
