// Element-wise arithmetic over `len` f32 values.
//
// add/sub/mul: out = a op b, where b has len values or `aux` values (a 1 x cols row that is
// broadcast over every row of a). scale: out = alpha * a. axpy: out = alpha * a + b.

struct Params {
    len: u32,
    rows: u32,
    cols: u32,
    k: u32,
    alpha: f32,
    flags: u32,
    groups_x: u32, // workgroups along x in the dispatch grid (the grid is flattened)
    aux: u32,      // number of values in b
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn element(wg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wg.y * p.groups_x + wg.x) * 256u + lid.x;
}

@compute @workgroup_size(256, 1, 1)
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wg, lid);
    if (i < p.len) {
        out[i] = a[i] + b[i % p.aux];
    }
}

@compute @workgroup_size(256, 1, 1)
fn sub(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wg, lid);
    if (i < p.len) {
        out[i] = a[i] - b[i % p.aux];
    }
}

@compute @workgroup_size(256, 1, 1)
fn mul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wg, lid);
    if (i < p.len) {
        out[i] = a[i] * b[i % p.aux];
    }
}

@compute @workgroup_size(256, 1, 1)
fn scale(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wg, lid);
    if (i < p.len) {
        out[i] = p.alpha * a[i];
    }
}

@compute @workgroup_size(256, 1, 1)
fn axpy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wg, lid);
    if (i < p.len) {
        out[i] = fma(p.alpha, a[i], b[i]);
    }
}
