// Row softmax + cross-entropy over logits a (rows x cols) and labels b (rows x 1, class
// indices stored as f32). One workgroup per row; max and sum are tree reductions in
// workgroup memory. The max is subtracted before exp, so large logits do not overflow.
//
// xent_forward: out[row] = logsumexp(a[row]) - a[row][label].
// xent_backward: out[row][j] = (softmax(a[row])[j] - onehot(label)[j]) * alpha (alpha = 1/rows).
// A label that is not an integer in 0..cols gives NaN for its row.

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

var<workgroup> scratch: array<f32, 256>;

fn reduce_max(lid: u32, v: f32) -> f32 {
    scratch[lid] = v;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            scratch[lid] = max(scratch[lid], scratch[lid + stride]);
        }
        workgroupBarrier();
    }
    let r = scratch[0];
    workgroupBarrier(); // everyone has read scratch[0] before it is reused
    return r;
}

fn reduce_sum(lid: u32, v: f32) -> f32 {
    scratch[lid] = v;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            scratch[lid] += scratch[lid + stride];
        }
        workgroupBarrier();
    }
    let r = scratch[0];
    workgroupBarrier();
    return r;
}

// The row's max logit and sum of exp(x - max).
fn row_stats(lid: u32, base: u32) -> vec2<f32> {
    // Start from the first element rather than -inf, which WGSL has no literal for.
    var m = a[base];
    for (var c = lid; c < p.cols; c += 256u) {
        m = max(m, a[base + c]);
    }
    let row_max = reduce_max(lid, m);
    var s = 0.0;
    for (var c = lid; c < p.cols; c += 256u) {
        s += exp(a[base + c] - row_max);
    }
    return vec2<f32>(row_max, reduce_sum(lid, s));
}

// The label's class index, or cols if it is not an integer in 0..cols.
fn label_index(row: u32) -> u32 {
    let l = b[row];
    if (l >= 0.0 && l < f32(p.cols) && fract(l) == 0.0) {
        return u32(l);
    }
    return p.cols;
}

fn nan() -> f32 {
    // From a runtime value, so no compiler folds it into a constant-expression error.
    return bitcast<f32>(0x7fc00000u | (p.flags & 0u));
}

@compute @workgroup_size(256, 1, 1)
fn xent_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wg.y * p.groups_x + wg.x;
    // Uniform across the workgroup, so the barriers stay in uniform control flow.
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    let stats = row_stats(lid.x, base);
    if (lid.x == 0u) {
        let label = label_index(row);
        if (label < p.cols) {
            out[row] = stats.x + log(stats.y) - a[base + label];
        } else {
            out[row] = nan();
        }
    }
}

@compute @workgroup_size(256, 1, 1)
fn xent_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wg.y * p.groups_x + wg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    let stats = row_stats(lid.x, base);
    let label = label_index(row);
    let inv_sum = 1.0 / stats.y;
    for (var c = lid.x; c < p.cols; c += 256u) {
        if (label < p.cols) {
            let onehot = select(0.0, 1.0, c == label);
            out[base + c] = (exp(a[base + c] - stats.x) * inv_sum - onehot) * p.alpha;
        } else {
            out[base + c] = nan();
        }
    }
}
