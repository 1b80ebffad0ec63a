//! Noop tasks per second through the full runtime (store lookup, compiled-module cache,
//! fresh WASI context and Store per task, instantiate, call), on one slot and on all slots,
//! plus the per-task p50 cost, each against a bare wasmtime harness measured in the same run.
//!
//! The bare harness is what any wasmtime embedder pays at least: the same noop module,
//! compiled once, pre-linked against wasi-common (`InstancePre`), and per call a fresh
//! `WasiCtx` and `Store`, instantiate, call the task export. No limits, no clocks, no logs,
//! no queue. It runs twice: with wasmtime's default config, and with the runtime's own engine
//! config (`runtime_config`, kept in step with `Runtime::new` by hand), the floor for the
//! runtime's own work. Rounds alternate between the runtime and the harness so that a noisy neighbour on
//! the machine hits both alike; each ratio is taken within a round, and medians are reported.
//!
//! `cargo bench --profile dev -p shoal-host --bench runtime`
//!
//! `SHOAL_BENCH_PROFILE=direct` (or `=slots`) runs only `run_blocking` (or `Runtime::run` on one
//! slot) for 10 s, for a profiler.

use std::{sync::Arc, time::Instant};

use shoal_host::{
    runtime::{Runtime, RuntimeConfig, TaskSpec, engine_config},
    store::BlockStore,
};
use wasi_common::{WasiCtx, sync::WasiCtxBuilder};
use wasmtime::{Engine, ExternType, InstancePre, Linker, Module, Store, Val};

const TASKS: usize = 20_000;
const ROUNDS: usize = 7;

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
    let spec = TaskSpec::new(module);
    assert!(rt.run_blocking(&spec).result.is_ok(), "noop runs");
    (dir, rt, spec)
}

/// The bare wasmtime + wasi-common harness: the floor for one noop call.
struct Bare {
    engine: Engine,
    pre: InstancePre<WasiCtx>,
    export: String,
    initialize: bool,
}

impl Bare {
    /// With wasmtime's default config, or with the runtime's own engine config (`pooled`:
    /// the pooling allocator, resident memories, epoch interruption) so that the difference
    /// to the runtime is the runtime's own per-task work alone.
    fn new(pooled: bool) -> Self {
        let engine = match pooled {
            false => Engine::default(),
            true => Engine::new(&engine_config(1, RuntimeConfig::default().max_wasm_stack))
                .expect("engine"),
        };
        let module = Module::from_file(&engine, shoal_task_artifacts::NOOP).expect("compile");
        let mut linker = Linker::new(&engine);
        wasi_common::sync::add_to_linker(&mut linker, |cx: &mut WasiCtx| cx).expect("wasi");
        let export = module
            .exports()
            .map(|e| e.name().to_owned())
            .find(|n| n.starts_with(shoal::abi::TASK_EXPORT_PREFIX))
            .expect("a task export");
        let initialize = module.get_export("_initialize").is_some();
        // `shoal_v1` imports answer zero (no args, no inputs): the noop reads its args once.
        for import in module.imports() {
            if let (shoal::abi::IMPORT_MODULE, ExternType::Func(ty)) =
                (import.module(), import.ty())
            {
                let zeros: Vec<Val> = ty
                    .results()
                    .map(|t| t.default_value().expect("a numeric result"))
                    .collect();
                linker
                    .func_new(import.module(), import.name(), ty, move |_, _, out| {
                        out.clone_from_slice(&zeros);
                        Ok(())
                    })
                    .expect("stub");
            }
        }
        let pre = linker.instantiate_pre(&module).expect("link");
        let bare = Self {
            engine,
            pre,
            export,
            initialize,
        };
        assert_eq!(bare.call(), shoal::abi::TASK_OK, "bare noop runs");
        bare
    }

    /// One task: fresh WASI context and Store, instantiate, call.
    fn call(&self) -> i32 {
        let mut store = Store::new(&self.engine, WasiCtxBuilder::new().build());
        // Epochs only tick where the engine counts them (the pooled config); never reached.
        store.set_epoch_deadline(u64::MAX);
        let instance = self.pre.instantiate(&mut store).expect("instantiate");
        if self.initialize {
            instance
                .get_typed_func::<(), ()>(&mut store, "_initialize")
                .expect("_initialize")
                .call(&mut store, ())
                .expect("initialize");
        }
        instance
            .get_typed_func::<(), i32>(&mut store, &self.export)
            .expect("task")
            .call(&mut store, ())
            .expect("call")
    }
}

/// Tasks/s and the p50 µs of `TASKS` calls of `one` on the calling thread.
fn timed(mut one: impl FnMut() -> bool) -> (f64, f64) {
    let mut lat: Vec<f64> = Vec::with_capacity(TASKS);
    let started = Instant::now();
    for _ in 0..TASKS {
        let t = Instant::now();
        let ok = one();
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(ok);
    }
    (TASKS as f64 / started.elapsed().as_secs_f64(), median(lat))
}

/// Tasks/s of the bare harness on `threads` threads at once, `TASKS` calls in all.
fn bare_threads(bare: &Bare, threads: usize) -> f64 {
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..TASKS / threads {
                    assert_eq!(bare.call(), shoal::abi::TASK_OK);
                }
            });
        }
    });
    (TASKS / threads * threads) as f64 / started.elapsed().as_secs_f64()
}

/// Tasks/s submitting TASKS tasks at once through `Runtime::run` (queue, slot threads, reply).
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
    let bare = Bare::new(false);
    let pooled = Bare::new(true);
    let (_d1, rt1, spec) = setup(1);
    if let Ok(what) = std::env::var("SHOAL_BENCH_PROFILE") {
        // For `perf record`: one path only, for about 10 s.
        let until = Instant::now() + std::time::Duration::from_secs(10);
        while Instant::now() < until {
            match what.as_str() {
                "slots" => drop(through_slots(&rt1, &spec, &tokio)),
                _ => assert!(rt1.run_blocking(&spec).result.is_ok()),
            }
        }
        return;
    }
    let (_d2, rt_all, spec_all) = setup(cores);

    // Rounds alternate between the harnesses and the runtime; every ratio is within a round.
    let mut rows: [Vec<f64>; 14] = Default::default();
    for _ in 0..ROUNDS {
        let (bare_rate, bare_p50) = timed(|| bare.call() == shoal::abi::TASK_OK);
        let (pooled_rate, pooled_p50) = timed(|| pooled.call() == shoal::abi::TASK_OK);
        let (direct, p50) = timed(|| rt1.run_blocking(&spec).result.is_ok());
        let one = through_slots(&rt1, &spec, &tokio);
        let all = through_slots(&rt_all, &spec_all, &tokio);
        let pooled_all = bare_threads(&pooled, cores);
        for (row, v) in rows.iter_mut().zip([
            bare_p50,
            pooled_p50,
            p50,
            bare_rate,
            pooled_rate,
            direct,
            one,
            all,
            pooled_all,
            direct / bare_rate,
            direct / pooled_rate,
            one / pooled_rate,
            all / one,
            pooled_all / pooled_rate,
        ]) {
            row.push(v);
        }
    }
    let [
        bare_p50,
        pooled_p50,
        p50,
        bare_rate,
        pooled_rate,
        direct,
        one,
        all,
        pooled_all,
        vs_bare,
        vs_pooled,
        one_vs_pooled,
        all_vs_one,
        pooled_scaling,
    ] = rows.map(median);
    println!("noop tasks, {TASKS} per round, median of {ROUNDS} rounds, {cores} cores");
    println!("  per-task p50, bare harness (default config):  {bare_p50:>7.1} us");
    println!("  per-task p50, bare harness (runtime's config): {pooled_p50:>6.1} us");
    println!("  per-task p50, runtime run_blocking:            {p50:>6.1} us");
    println!("  bare harness (default config), 1 thread:  {bare_rate:>7.0} tasks/s");
    println!("  bare harness (runtime's config), 1 thread: {pooled_rate:>6.0} tasks/s");
    println!(
        "  run_blocking on the calling thread:        {direct:>7.0} tasks/s \
         ({vs_bare:.2}x bare default, {vs_pooled:.2}x bare runtime-config)"
    );
    println!(
        "  Runtime::run, 1 slot:                      {one:>7.0} tasks/s \
         ({one_vs_pooled:.2}x bare runtime-config)"
    );
    println!(
        "  Runtime::run, {cores} slots:                     {all:>7.0} tasks/s ({all_vs_one:.2}x one slot)"
    );
    println!(
        "  bare harness (runtime's config), {cores} threads: {pooled_all:>6.0} tasks/s \
         ({pooled_scaling:.2}x one thread)"
    );
}
