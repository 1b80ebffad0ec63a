//! Noop tasks per second through the full runtime (store lookup, compiled-module cache,
//! fresh WASI context and Store per task, instantiate, call), on one slot and on all slots,
//! plus the per-task p50 cost.
//!
//! `cargo bench -p shoal-host --bench runtime`

use std::{sync::Arc, time::Instant};

use shoal_host::{
    runtime::{Limits, Runtime, RuntimeConfig, TaskSpec},
    store::BlockStore,
};

const TASKS: usize = 20_000;
const ROUNDS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn setup(slots: usize) -> (tempfile::TempDir, Runtime, TaskSpec) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(BlockStore::open(dir.path()).expect("store"));
    let module = store
        .put_file(std::fs::File::open(shoal_task_artifacts::NOOP).expect("noop.wasm"))
        .expect("put");
    let rt = Runtime::new(
        store,
        RuntimeConfig {
            slots,
            ..RuntimeConfig::default()
        },
    )
    .expect("runtime");
    let spec = TaskSpec {
        module,
        task: None,
        inputs: vec![],
        args: vec![],
        limits: Limits::default(),
        depth: 0,
        deterministic: false,
        tenant: None,
    };
    assert!(rt.run_blocking(&spec).result.is_ok(), "noop runs");
    (dir, rt, spec)
}

/// Tasks/s submitting TASKS tasks at once through `Runtime::run` (slots + blocking pool).
fn through_slots(rt: &Runtime, spec: &TaskSpec, tokio: &tokio::runtime::Runtime) -> f64 {
    tokio.block_on(async {
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..TASKS {
            let (rt, spec) = (rt.clone(), spec.clone());
            set.spawn(async move { rt.run(spec).await.result.is_ok() });
        }
        let mut ok = 0;
        while let Some(r) = set.join_next().await {
            ok += usize::from(r.unwrap_or(false));
        }
        assert_eq!(ok, TASKS);
        TASKS as f64 / started.elapsed().as_secs_f64()
    })
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");

    // Per-task cost on the calling thread: p50 of each run_blocking.
    let (_d1, rt1, spec) = setup(1);
    let mut p50s = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..ROUNDS {
        let mut lat: Vec<f64> = Vec::with_capacity(TASKS);
        let started = Instant::now();
        for _ in 0..TASKS {
            let t = Instant::now();
            let r = rt1.run_blocking(&spec);
            lat.push(t.elapsed().as_secs_f64() * 1e6);
            assert!(r.result.is_ok());
        }
        direct.push(TASKS as f64 / started.elapsed().as_secs_f64());
        p50s.push(median(lat));
    }
    let one_slot: Vec<f64> = (0..ROUNDS)
        .map(|_| through_slots(&rt1, &spec, &tokio))
        .collect();
    let (_d2, rt_all, spec_all) = setup(cores);
    let all_slots: Vec<f64> = (0..ROUNDS)
        .map(|_| through_slots(&rt_all, &spec_all, &tokio))
        .collect();

    let (p50, direct, one, all) = (
        median(p50s),
        median(direct),
        median(one_slot),
        median(all_slots),
    );
    println!("noop tasks, {TASKS} per round, median of {ROUNDS} rounds, {cores} cores");
    println!("  per-task cost p50 (instantiate + call + teardown): {p50:.1} us");
    println!("  run_blocking on the calling thread:  {direct:>9.0} tasks/s");
    println!("  Runtime::run, 1 slot:                {one:>9.0} tasks/s");
    println!(
        "  Runtime::run, {cores} slots:               {all:>9.0} tasks/s ({:.2}x one slot)",
        all / one
    );
}
