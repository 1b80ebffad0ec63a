// Activations and their gradients over `len` f32 values.
//
// relu/sigmoid/tanh_forward: out = f(a). *_grad: out = b * f'(a), where a is the
// pre-activation input and b the upstream gradient.

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

fn element(wg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wg.y * p.groups_x + wg.x) * 256u + lid.x;
}

fn sigmoid(x: f32) -> f32 {
    // exp(-x) overflows to +inf for very negative x, which gives the right limit, 0.
    return 1.0 / (1.0 + exp(-x));
}

fn stable_tanh(x: f32) -> f32 {
    // Saturates to +-1 instead of inf/inf = NaN when exp overflows.
    return 1.0 - 2.0 / (exp(2.0 * x) + 1.0);
}

@compute @workgroup_size(256, 1, 1)
fn relu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wg, lid);
    if (i < p.len) {
        out[i] = max(a[i], 0.0);
    }
}

@compute @workgroup_size(256, 1, 1)
fn relu_grad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wg, lid);
    if (i < p.len) {
        out[i] = select(0.0, b[i], a[i] > 0.0);
    }
}

@compute @workgroup_size(256, 1, 1)
fn sigmoid_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wg, lid);
    if (i < p.len) {
        out[i] = sigmoid(a[i]);
    }
}

@compute @workgroup_size(256, 1, 1)
fn sigmoid_grad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wg, lid);
    if (i < p.len) {
        let s = sigmoid(a[i]);
        out[i] = b[i] * s * (1.0 - s);
    }
}

@compute @workgroup_size(256, 1, 1)
fn tanh_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wg, lid);
    if (i < p.len) {
        out[i] = stable_tanh(a[i]);
    }
}

@compute @workgroup_size(256, 1, 1)
fn tanh_grad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wg, lid);
    if (i < p.len) {
        let t = stable_tanh(a[i]);
        out[i] = b[i] * (1.0 - t * t);
    }
}
