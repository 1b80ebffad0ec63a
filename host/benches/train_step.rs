//! The sandbox tax on a training step: the mlp-digits `grad` task (64→64→10, the whole 1,346-row
//! training set as one shard) run through the runtime, next to the same tensor ops called
//! directly on the same cpu backend (upload the parameters and the shard, forward, backward,
//! read the gradient back). Interleaved rounds, medians, one run:
//!
//! - `native ops`: the step's kernels only, as a training loop with resident data pays;
//! - `guest task`: the whole `grad` task: reading its inputs from the store, decoding them,
//!   uploading, the same ops through the ABI, reading the gradient back and storing it.
//!
//! Then the resident loop that local mode runs: the `step` task taking H minibatch steps
//! (copy the batch's rows, upload them, forward, backward, update the resident parameters,
//! read the loss back) next to the same loop natively, for several H and batch sizes. Its
//! fixed costs (inputs, decoding, the output) are the `grad` task's; what grows with H is the
//! per-op ABI crossing, so the ratio shows what the sandbox costs a training loop.
//!
//! `cargo bench --profile dev -p shoal-host --bench train_step`

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use shoal_host::{
    compute::{
        CpuBackend, DeviceChoice, ReduceAxis, ReduceOp, Shape, TensorTable, UnaryOp, XentReduction,
    },
    runtime::{Limits, Runtime, RuntimeConfig, TaskSpec},
    store::{BlockStore, Cid},
};

const ROUNDS: usize = 15;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn spec(module: Cid, task: &str, inputs: Vec<(String, Cid)>, args: &[(&str, &str)]) -> TaskSpec {
    TaskSpec {
        module,
        task: Some(task.into()),
        inputs,
        args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        limits: Limits::default(),
        depth: 0,
        deterministic: false,
        tenant: None,
    }
}

fn output(rt: &Runtime, spec: &TaskSpec, name: &str) -> Cid {
    let report = rt.run_blocking(spec);
    let outputs = report
        .result
        .unwrap_or_else(|f| panic!("{f}\n{}", report.logs));
    outputs.iter().find(|(n, _)| n == name).expect("output").1
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(BlockStore::open(dir.path()).expect("store"));
    let config = RuntimeConfig {
        slots: 1,
        device: DeviceChoice::Cpu,
        ..RuntimeConfig::default()
    };
    let rt = Runtime::new(store.clone(), config).expect("runtime");
    let module = store
        .put_file(std::fs::File::open(shoal_task_artifacts::MLP_DIGITS).expect("module"))
        .expect("put module");
    let csv_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tasks/data/digits.csv.gz");
    let csv = store
        .put_file(std::fs::File::open(csv_path).expect("digits"))
        .expect("put csv");
    let split = spec(
        module,
        "split",
        vec![("csv".into(), csv)],
        &[("shards", "1")],
    );
    let shard = output(&rt, &split, "shard0");
    let params = output(
        &rt,
        &spec(module, "init", vec![], &[("hidden", "64")]),
        "params",
    );
    let grad = spec(
        module,
        "grad",
        vec![("params".into(), params), ("shard".into(), shard)],
        &[],
    );

    // The same step natively: decode the formats (MLP1 and DSH1 headers) and run the ops.
    let p = store.read_file(&params).expect("params");
    let s = store.read_file(&shard).expect("shard");
    let dim = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("u32"));
    let (inputs, hidden, classes) = (dim(&p, 4), dim(&p, 8), dim(&p, 12));
    let body = f32s(&p[16..]);
    let (w1, rest) = body.split_at((inputs * hidden) as usize);
    let (b1, rest) = rest.split_at(hidden as usize);
    let (w2, b2) = rest.split_at((hidden * classes) as usize);
    let (rows, features) = (dim(&s, 4), dim(&s, 8));
    let records = f32s(&s[12..]);
    let x: Vec<f32> = records
        .chunks_exact(features as usize + 1)
        .flat_map(|r| r[..features as usize].to_vec())
        .collect();
    let y: Vec<f32> = records
        .chunks_exact(features as usize + 1)
        .map(|r| r[features as usize])
        .collect();
    let native = || {
        let mut t = TensorTable::new(Arc::new(CpuBackend::new()), 1 << 30);
        let up = |t: &mut TensorTable, v: &[f32], r: u32, c: u32| {
            t.create(v.to_vec(), Shape::new(r, c)).expect("upload")
        };
        let (w1, b1) = (up(&mut t, w1, inputs, hidden), up(&mut t, b1, 1, hidden));
        let (w2, b2) = (up(&mut t, w2, hidden, classes), up(&mut t, b2, 1, classes));
        let (x, y) = (up(&mut t, &x, rows, features), up(&mut t, &y, rows, 1));
        let z1 = t
            .matmul(x, w1, false, false)
            .and_then(|h| t.add(h, b1))
            .expect("z1");
        let a1 = t.activation(UnaryOp::Relu, z1).expect("a1");
        let logits = t
            .matmul(a1, w2, false, false)
            .and_then(|h| t.add(h, b2))
            .expect("logits");
        let loss = t
            .softmax_xent(logits, y, XentReduction::Mean)
            .expect("loss");
        let dlogits = t.softmax_xent_backward(logits, y).expect("dlogits");
        let gw2 = t.matmul(a1, dlogits, true, false).expect("gw2");
        let gb2 = t
            .reduce(ReduceOp::Sum, ReduceAxis::Axis0, dlogits)
            .expect("gb2");
        let da1 = t.matmul(dlogits, w2, false, true).expect("da1");
        let dz1 = t.activation_grad(UnaryOp::Relu, z1, da1).expect("dz1");
        let gw1 = t.matmul(x, dz1, true, false).expect("gw1");
        let gb1 = t
            .reduce(ReduceOp::Sum, ReduceAxis::Axis0, dz1)
            .expect("gb1");
        for h in [loss, gw1, gb1, gw2, gb2] {
            std::hint::black_box(t.read(h).expect("read back"));
        }
    };

    native();
    output(&rt, &grad, "grad"); // compile and warm the module cache
    let (mut guest, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let started = Instant::now();
        output(&rt, &grad, "grad");
        guest.push(started.elapsed());
        let started = Instant::now();
        native();
        direct.push(started.elapsed());
    }
    let (guest, direct) = (median(guest), median(direct));
    println!(
        "mlp-digits grad step, {rows} rows, 64-{hidden}-{classes}, cpu backend, median of {ROUNDS}:"
    );
    println!("  native ops  {:8.2} ms", direct.as_secs_f64() * 1e3);
    println!(
        "  guest task  {:8.2} ms   ({:.2}x native)",
        guest.as_secs_f64() * 1e3,
        guest.as_secs_f64() / direct.as_secs_f64()
    );

    // The resident loop: H steps of `batch` rows, natively, as the `step` task runs them.
    let native_steps = |steps: usize, batch: usize| {
        let mut t = TensorTable::new(Arc::new(CpuBackend::new()), 1 << 30);
        let up = |t: &mut TensorTable, v: &[f32], r: u32, c: u32| {
            t.create(v.to_vec(), Shape::new(r, c)).expect("upload")
        };
        let mut p = [
            up(&mut t, w1, inputs, hidden),
            up(&mut t, b1, 1, hidden),
            up(&mut t, w2, hidden, classes),
            up(&mut t, b2, 1, classes),
        ];
        let f = features as usize;
        let mut next = 0;
        for _ in 0..steps {
            // The task copies the batch's rows out of its shard: so does this loop.
            let take: Vec<usize> = (next..next + batch).map(|i| i % rows as usize).collect();
            next += batch;
            let bx: Vec<f32> = take
                .iter()
                .flat_map(|&i| x[i * f..(i + 1) * f].to_vec())
                .collect();
            let by: Vec<f32> = take.iter().map(|&i| y[i]).collect();
            let b = batch as u32;
            let (bx, by) = (up(&mut t, &bx, b, features), up(&mut t, &by, b, 1));
            let h = t.matmul(bx, p[0], false, false).expect("h");
            let z1 = t.add(h, p[1]).expect("z1");
            let a1 = t.activation(UnaryOp::Relu, z1).expect("a1");
            let o = t.matmul(a1, p[2], false, false).expect("o");
            let logits = t.add(o, p[3]).expect("logits");
            let loss = t
                .softmax_xent(logits, by, XentReduction::Mean)
                .expect("loss");
            std::hint::black_box(t.read(loss).expect("read the loss"));
            let dlogits = t.softmax_xent_backward(logits, by).expect("dlogits");
            let gw2 = t.matmul(a1, dlogits, true, false).expect("gw2");
            let gb2 = t
                .reduce(ReduceOp::Sum, ReduceAxis::Axis0, dlogits)
                .expect("gb2");
            let da1 = t.matmul(dlogits, p[2], false, true).expect("da1");
            let dz1 = t.activation_grad(UnaryOp::Relu, z1, da1).expect("dz1");
            let gw1 = t.matmul(bx, dz1, true, false).expect("gw1");
            let gb1 = t
                .reduce(ReduceOp::Sum, ReduceAxis::Axis0, dz1)
                .expect("gb1");
            let grads = [gw1, gb1, gw2, gb2];
            let stepped: Vec<u32> = (0..4)
                .map(|i| t.axpy(-0.1, grads[i], p[i]).expect("sgd"))
                .collect();
            for h in [bx, by, h, z1, a1, o, logits, loss, dlogits, da1, dz1]
                .into_iter()
                .chain(grads)
                .chain(p)
            {
                t.free(h).expect("free");
            }
            p.copy_from_slice(&stepped);
        }
        for h in p {
            std::hint::black_box(t.read(h).expect("read the parameters back"));
        }
    };
    println!("mlp-digits local steps (the `step` task), same shard and model, median of {ROUNDS}:");
    for (steps, batch) in [(10, 32), (100, 32), (400, 32), (100, 256)] {
        let (steps_s, batch_s) = (steps.to_string(), batch.to_string());
        let step = spec(
            module,
            "step",
            vec![("params".into(), params), ("shard".into(), shard)],
            &[("steps", &steps_s), ("batch", &batch_s), ("lr", "0.1")],
        );
        output(&rt, &step, "params");
        native_steps(steps, batch);
        let (mut guest, mut direct) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let started = Instant::now();
            output(&rt, &step, "params");
            guest.push(started.elapsed());
            let started = Instant::now();
            native_steps(steps, batch);
            direct.push(started.elapsed());
        }
        let (guest, direct) = (median(guest), median(direct));
        println!(
            "  H {steps:>3}, batch {batch:>3}: native {:7.2} ms, guest task {:7.2} ms ({:.2}x)",
            direct.as_secs_f64() * 1e3,
            guest.as_secs_f64() * 1e3,
            guest.as_secs_f64() / direct.as_secs_f64()
        );
    }
}
