//! The sandbox against hostile modules: each ends with its own typed, human-readable failure
//! within its limits, and the same runtime then runs `hello` correctly.
//!
//! Where a Rust guest cannot say precisely enough what a test needs (two memories, a huge
//! table, code with no loop in it), the module is written here as WAT.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use shoal::abi::ErrorCode;
use shoal_host::{
    compute::DeviceChoice,
    runtime::{
        FailureKind, Limits, MAX_TASK_MEMORY, MIB, Runtime, RuntimeConfig, TaskReport, TaskSpec,
    },
    store::{BlockStore, Cid},
};
use shoal_task_artifacts as wasm;
use tempfile::TempDir;

use crate::util::{
    assert_hello_works, logged, most_asleep_at_once, runtime, spec, wat_spec, with_args,
};

fn run_hostile(path: &str, limits: Limits) -> TaskReport {
    let (_dir, rt) = runtime(1);
    let mut spec = spec(&rt, path, &[]);
    spec.limits = limits;
    let started = Instant::now();
    let report = rt.run_blocking(&spec);
    assert!(
        started.elapsed() < spec.limits.timeout + Duration::from_secs(2),
        "{path} overran its limit"
    );
    assert_hello_works(&rt);
    report
}

fn expect_failure(report: &TaskReport, kind: FailureKind, message: &str) {
    let failure = report.result.as_ref().expect_err("hostile task must fail");
    assert_eq!(failure.kind, kind, "{failure}\nlogs: {}", report.logs);
    assert!(
        failure.message.contains(message),
        "`{}` lacks `{message}`",
        failure.message
    );
}

fn short() -> Limits {
    Limits {
        timeout: Duration::from_secs(1),
        cpu_budget: Duration::from_secs(1),
        ..Limits::default()
    }
}

/// A runtime whose tensors run on the cpu backend: tests that make tensor calls must not
/// spend their time probing for a GPU.
fn cpu_runtime(slots: usize) -> (TempDir, Runtime) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(BlockStore::open(dir.path()).expect("store opens"));
    let config = RuntimeConfig {
        slots,
        device: DeviceChoice::Cpu,
        ..RuntimeConfig::default()
    };
    (dir, Runtime::new(store, config).expect("runtime"))
}

fn expect_ok(report: &TaskReport) -> &[(String, Cid)] {
    report
        .result
        .as_deref()
        .unwrap_or_else(|f| panic!("{f}\nlogs: {}", report.logs))
}

#[test]
fn infinite_loop_times_out() {
    let report = run_hostile(wasm::HOSTILE_LOOP, short());
    expect_failure(
        &report,
        FailureKind::Timeout,
        "exceeded its 1 s wall-time limit",
    );
}

/// The wall-time limit is far off, so only the CPU budget can stop the loop, however slowly
/// the shared cores give it CPU.
#[test]
fn cpu_budget_is_enforced_separately() {
    let limits = Limits {
        timeout: Duration::from_secs(20),
        cpu_budget: Duration::from_millis(300),
        ..Limits::default()
    };
    let report = run_hostile(wasm::HOSTILE_LOOP, limits);
    expect_failure(
        &report,
        FailureKind::Timeout,
        "exceeded its 300 ms CPU budget",
    );
    assert!(
        report.stats.cpu >= Duration::from_millis(300),
        "{:?}",
        report.stats
    );
}

#[test]
fn memory_bomb_hits_its_memory_limit() {
    let report = run_hostile(
        wasm::HOSTILE_MEMBOMB,
        Limits {
            memory_bytes: 64 * MIB,
            ..short()
        },
    );
    expect_failure(
        &report,
        FailureKind::OutOfMemory,
        "exceeded its 64 MiB memory limit",
    );
    assert!(report.stats.peak_memory <= 64 * MIB && report.stats.peak_memory > 32 * MIB);
}

#[test]
fn unbounded_recursion_overflows_the_wasm_stack() {
    let report = run_hostile(wasm::HOSTILE_RECURSION, short());
    expect_failure(
        &report,
        FailureKind::Trap,
        "stack overflow: the task exceeded its 512 KiB wasm stack",
    );
}

/// The `shoal_v1` imports with no pointer argument, so nothing for `hostile-badptr` to make
/// bad. Every other import the host defines must be covered there.
const TAKES_NO_POINTER: [&str; 5] = [
    "args_len",
    "input_count",
    "input_len",
    "tensor_free",
    "tensor_op",
];

/// Every pointer argument of every host call, given pointers outside guest memory with every
/// other argument valid, is answered with exactly `BadPointer`, and the same calls with good
/// pointers succeed. The list of calls is checked against the host's own list of imports, so
/// a new import fails this test until the guest covers it.
/// A mesh where every subtask succeeds at once with no outputs, and every fetch is a no-op:
/// enough for a task to hold a finished subtask's handle without a network.
struct InstantMesh;

impl shoal_host::runtime::Mesh for InstantMesh {
    fn submit(
        &self,
        _: TaskSpec,
        _: u32,
        _: tokio_util::sync::CancellationToken,
        done: Box<dyn FnOnce(TaskReport) + Send>,
    ) {
        done(TaskReport {
            result: Ok(vec![]),
            logs: Default::default(),
            stats: Default::default(),
        });
    }

    fn written(&self, _: Cid, _: &[u8]) {}

    fn may_store(&self, _: &[u8], _: u64) -> Result<(), String> {
        Ok(())
    }

    fn fetch(&self, _: Cid, _: Option<&[u8]>, _: std::time::Instant) -> Result<(), String> {
        Ok(())
    }
}

#[test]
fn bad_pointers_are_rejected_by_every_host_call() {
    let (_dir, rt) = cpu_runtime(1);
    rt.attach_mesh(Arc::new(InstantMesh));
    let mut spec = spec(&rt, wasm::HOSTILE_BADPTR, &[("in", b"payload")]);
    spec.limits = short();
    let report = rt.run_blocking(&spec);
    let outputs = expect_ok(&report);
    let names: Vec<_> = outputs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["in"], "only the control call may write an output");

    let mut rejected: BTreeMap<&str, usize> = BTreeMap::new();
    for line in logged(&report, "badptr ") {
        let (call, code) = line.rsplit_once(" -> ").expect("`CALL -> CODE`");
        assert_eq!(
            code.parse::<i32>().ok().and_then(ErrorCode::from_code),
            Some(ErrorCode::BadPointer),
            "{call} answered {code}\nlogs: {}",
            report.logs
        );
        let import = call.split(' ').next().expect("an import name");
        *rejected.entry(import).or_default() += 1;
    }
    let mut controls = BTreeSet::new();
    for line in logged(&report, "control ") {
        let (import, code) = line.rsplit_once(" -> ").expect("`IMPORT -> CODE`");
        assert!(
            code.parse::<i32>().is_ok_and(|c| c >= 0),
            "{import} with good pointers answered {code}, so its bad-pointer answers prove nothing"
        );
        controls.insert(import);
    }

    let host = rt.host_imports();
    for name in TAKES_NO_POINTER {
        assert!(
            host.iter().any(|h| h == name),
            "`{name}` is not a host import"
        );
    }
    let with_pointers: BTreeSet<&str> = host
        .iter()
        .map(String::as_str)
        .filter(|h| !TAKES_NO_POINTER.contains(h))
        .collect();
    assert_eq!(
        rejected.keys().copied().collect::<BTreeSet<_>>(),
        with_pointers,
        "host imports given bad pointers vs those that take pointers: cover a new import in \
         tasks/hostile/badptr (or, if it has no pointer argument, list it in TAKES_NO_POINTER)"
    );
    assert_eq!(
        controls, with_pointers,
        "every covered import needs a control call"
    );
    for (import, calls) in rejected {
        assert!(calls >= 5, "{import}: only {calls} bad calls");
    }
}

#[test]
fn wasi_cannot_open_etc_passwd() {
    let report = run_hostile(wasm::HOSTILE_PASSWD, short());
    expect_failure(
        &report,
        FailureKind::TaskError,
        "could not open /etc/passwd",
    );
    assert!(!report.logs.text.contains("root:"));
    assert!(
        report.logs.text.contains("open /etc/passwd:"),
        "{}",
        report.logs
    );
}

#[test]
fn log_flood_is_capped_and_times_out() {
    let report = run_hostile(wasm::HOSTILE_LOGFLOOD, short());
    expect_failure(&report, FailureKind::Timeout, "wall-time limit");
    assert!(report.logs.text.len() <= report.logs.limit);
    assert!(report.logs.dropped_bytes > 0);
    assert!(
        report
            .logs
            .to_string()
            .contains("exceeded its 256 KiB log limit")
    );
}

#[test]
fn sleeping_in_a_host_call_still_times_out() {
    let report = run_hostile(wasm::HOSTILE_SLEEP, short());
    expect_failure(
        &report,
        FailureKind::Timeout,
        "exceeded its 1 s wall-time limit",
    );
    assert!(
        report.stats.wall < Duration::from_millis(1500),
        "{:?}",
        report.stats.wall
    );
}

#[test]
fn trap_is_reported() {
    let report = run_hostile(wasm::HOSTILE_TRAP, short());
    expect_failure(&report, FailureKind::Trap, "unreachable");
}

#[test]
fn module_without_a_task_is_a_bad_module() {
    let report = run_hostile(wasm::HOSTILE_NOEXPORT, short());
    expect_failure(&report, FailureKind::BadModule, "exports no task");
}

#[test]
fn bytes_that_are_not_wasm_are_a_bad_module() {
    let (_dir, rt) = runtime(1);
    let mut spec = spec(&rt, wasm::HELLO, &[]);
    spec.module = rt.store().put_bytes(b"#!/bin/sh\necho not wasm\n").unwrap();
    let report = rt.run_blocking(&spec);
    expect_failure(&report, FailureKind::BadModule, "not a valid wasm module");
    assert_hello_works(&rt);
}

#[test]
fn unknown_task_name_lists_the_real_ones() {
    let (_dir, rt) = runtime(1);
    let mut spec = spec(&rt, wasm::HELLO, &[("name", b"x")]);
    spec.task = Some("nope".into());
    expect_failure(
        &rt.run_blocking(&spec),
        FailureKind::BadModule,
        "no task named `nope` (its tasks: hello)",
    );
}

#[test]
fn missing_input_is_the_tasks_error_and_names_the_input() {
    let (_dir, rt) = runtime(1);
    let report = rt.run_blocking(&spec(&rt, wasm::HELLO, &[]));
    expect_failure(&report, FailureKind::TaskError, "input `name`");
}

#[test]
fn hello_reads_input_and_args_and_writes_output() {
    let (_dir, rt) = runtime(1);
    let mut spec = spec(&rt, wasm::HELLO, &[("name", b"Ada")]);
    spec.args = vec![("punct".into(), "?".into())];
    let report = rt.run_blocking(&spec);
    let outputs = report.result.expect("hello runs");
    assert_eq!(rt.store().read_file(&outputs[0].1).unwrap(), b"Hello, Ada?");
    assert!(
        report.logs.text.contains("[info] greeted Ada"),
        "{}",
        report.logs
    );
    assert!(
        rt.run_blocking(&spec).stats.cached_module,
        "second run uses the compiled-module cache"
    );
}

#[test]
fn matmul_wasm_reads_large_inputs_across_chunks() {
    let (_dir, rt) = runtime(1);
    let n = 600; // 1.44 MB per matrix: two chunks each
    let a: Vec<u8> = (0..n * n)
        .flat_map(|i| ((i % 7) as f32).to_le_bytes())
        .collect();
    let b: Vec<u8> = (0..n * n)
        .flat_map(|i| if i % (n + 1) == 0 { 1f32 } else { 0f32 }.to_le_bytes())
        .collect();
    let mut spec = spec(&rt, wasm::MATMUL_WASM, &[("a", &a), ("b", &b)]);
    spec.args = vec![("n".into(), n.to_string())];
    let report = rt.run_blocking(&spec);
    let outputs = report
        .result
        .unwrap_or_else(|f| panic!("{f}\n{}", report.logs));
    assert_eq!(rt.store().read_file(&outputs[0].1).unwrap(), a, "A × I = A");
}

/// More tasks than slots, each asleep for a while: the most that are ever asleep at once is
/// the slot count, measured from the tasks' own wall-clock logs (not the runtime's counters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_run_tasks_concurrently_and_all_finish() {
    const SLOTS: usize = 2;
    let (_dir, rt) = runtime(SLOTS);
    let spec = with_args(spec(&rt, wasm::HOSTILE_SLEEP, &[]), &[("ms", "100")]);
    let runs: Vec<_> = (0..4 * SLOTS)
        .map(|_| {
            tokio::spawn({
                let (rt, spec) = (rt.clone(), spec.clone());
                async move { rt.run(spec).await }
            })
        })
        .collect();
    let mut reports = Vec::new();
    for run in runs {
        reports.push(run.await.expect("task joins"));
    }
    assert_eq!(
        most_asleep_at_once(&reports),
        SLOTS,
        "tasks asleep at once with {SLOTS} slots"
    );
    assert_eq!(rt.free_slots(), SLOTS);
    assert_eq!(rt.queue_len(), 0);
}

/// The 1025th output is refused with `QuotaExceeded`, and the host's log names the quota.
#[test]
fn outputs_are_capped_at_1024_per_task() {
    assert_eq!(Limits::default().outputs, 1024);
    let (_dir, rt) = runtime(1);
    let report = rt.run_blocking(&spec(&rt, wasm::HOSTILE_OUTPUTS, &[]));
    expect_failure(
        &report,
        FailureKind::TaskError,
        &format!("output `o1024`: {}", ErrorCode::QuotaExceeded),
    );
    assert_eq!(logged(&report, "wrote "), ["1024 outputs of 1 bytes"]);
    assert!(
        report.logs.text.contains(
            "[host] output `o1024` refused: the task's output quota is 1024 outputs and 1024 MiB"
        ),
        "{}",
        report.logs
    );
    assert_hello_works(&rt);
}

/// The output byte cap: by default an output one byte over 1 GiB is refused before the host
/// reads any of it (the module's memory is reserved, never touched); and with the cap set
/// lower, outputs that exactly fill it are kept and the next byte is refused.
#[test]
fn output_bytes_are_capped_at_1_gib_in_all() {
    assert_eq!(Limits::default().output_bytes, 1024 * MIB);
    let (_dir, rt) = runtime(1);
    // 16385 pages: 1 GiB + 64 KiB. The name `big` sits at 0 and the CID goes to 16.
    let mut big = wat_spec(
        &rt,
        r#"(module
            (import "shoal_v1" "output_write"
                (func $output_write (param i32 i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 16385)
            (data (i32.const 0) "big")
            (func (export "shoal_task:big") (result i32)
                (if (i32.ne (call $output_write (i32.const 0) (i32.const 3)
                                (i32.const 0) (i32.const 0x40000001) (i32.const 16))
                            (i32.const -7))
                    (then unreachable))
                (i32.const 0)))"#,
    );
    big.limits.memory_bytes = 2048 * MIB;
    let report = rt.run_blocking(&big);
    assert!(expect_ok(&report).is_empty(), "nothing was stored");
    assert!(
        report.logs.text.contains(
            "[host] output `big` refused: the task's output quota is 1024 outputs and 1024 MiB"
        ),
        "{}",
        report.logs
    );

    let mut spec = with_args(
        spec(&rt, wasm::HOSTILE_OUTPUTS, &[]),
        &[("size", &(256 * 1024).to_string())],
    );
    spec.limits.output_bytes = MIB;
    let report = rt.run_blocking(&spec);
    expect_failure(
        &report,
        FailureKind::TaskError,
        &format!("output `o4`: {}", ErrorCode::QuotaExceeded),
    );
    assert_eq!(logged(&report, "wrote "), ["4 outputs of 262144 bytes"]);
    assert!(
        report
            .logs
            .text
            .contains("output quota is 1024 outputs and 1 MiB"),
        "{}",
        report.logs
    );
}

/// A spec may ask for more than 4 GiB, but a task never gets more: its memory (32-bit, or
/// 64-bit, which could name more) grows to exactly 4 GiB and no further, and running out there
/// is `OutOfMemory` naming the 4 GiB ceiling. The pages are reserved, never touched.
#[test]
fn memory_is_capped_at_4_gib_whatever_the_spec_asks() {
    assert_eq!(MAX_TASK_MEMORY, 4096 * MIB);
    let (_dir, rt) = runtime(1);
    for index in ["i32", "i64"] {
        let mut spec = wat_spec(
            &rt,
            &format!(
                r#"(module
                    (memory (export "memory") {index} 1)
                    (func (export "shoal_task:grow") (result i32)
                        (if ({index}.ne (memory.grow ({index}.const 65535)) ({index}.const 1))
                            (then unreachable))
                        (if ({index}.ne (memory.grow ({index}.const 1)) ({index}.const -1))
                            (then unreachable))
                        ;; Out of memory, as an allocator would be.
                        unreachable))"#
            ),
        );
        spec.limits.memory_bytes = 2 * MAX_TASK_MEMORY;
        let report = rt.run_blocking(&spec);
        expect_failure(
            &report,
            FailureKind::OutOfMemory,
            "exceeded its 4096 MiB memory limit",
        );
        assert_eq!(report.stats.peak_memory, MAX_TASK_MEMORY, "{index} memory");
    }
    assert_hello_works(&rt);
}

/// One memory per task: a module declaring a second one is refused before it runs.
#[test]
fn a_second_memory_is_a_bad_module() {
    let (_dir, rt) = runtime(1);
    let report = rt.run_blocking(&wat_spec(
        &rt,
        r#"(module
            (memory (export "memory") 1)
            (memory 1)
            (func (export "shoal_task:two") (result i32) (i32.const 0)))"#,
    ));
    expect_failure(
        &report,
        FailureKind::BadModule,
        "defined memories count of 2 exceeds the per-instance limit of 1",
    );
    assert_hello_works(&rt);
}

/// One table per task: a module declaring a second one is refused before it runs.
#[test]
fn a_second_table_is_a_bad_module() {
    let (_dir, rt) = runtime(1);
    let report = rt.run_blocking(&wat_spec(
        &rt,
        r#"(module
            (memory (export "memory") 1)
            (table 1 funcref)
            (table 1 funcref)
            (func (export "shoal_task:two") (result i32) (i32.const 0)))"#,
    ));
    expect_failure(
        &report,
        FailureKind::BadModule,
        "defined tables count of 2 exceeds the per-instance limit of 1",
    );
    assert_hello_works(&rt);
}

/// Tables hold at most 100,000 elements: a module may declare exactly that many, one more is
/// refused before it runs, and growing past it at run time is refused.
#[test]
fn tables_are_capped_at_100_000_elements() {
    let (_dir, rt) = runtime(1);
    let table = |elements: u32| {
        wat_spec(
            &rt,
            &format!(
                r#"(module
                    (memory (export "memory") 1)
                    (table {elements} funcref)
                    (func (export "shoal_task:table") (result i32)
                        ;; The last slot is usable; growing by one more is refused.
                        (table.set (i32.const {last}) (ref.null func))
                        (if (i32.ne (table.grow (ref.null func) (i32.const 1)) (i32.const -1))
                            (then unreachable))
                        (i32.const 0)))"#,
                last = elements - 1
            ),
        )
    };
    let report = rt.run_blocking(&table(100_000));
    expect_ok(&report);
    let report = rt.run_blocking(&table(100_001));
    expect_failure(
        &report,
        FailureKind::BadModule,
        "minimum element size of 100001 which exceeds the limit of 100000",
    );
    assert_hello_works(&rt);
}

/// WASI gives a task no environment, no arguments, an empty stdin, no preopened directories
/// and no sockets: every socket call on every low descriptor fails with `EBADF`.
#[test]
fn wasi_has_no_env_args_stdin_preopens_or_sockets() {
    const EBADF: &str = "8";
    let (_dir, rt) = runtime(1);
    let spec = with_args(spec(&rt, wasm::HOSTILE_WASI, &[]), &[("not", "in argv")]);
    let report = rt.run_blocking(&spec);
    expect_ok(&report);
    assert_eq!(logged(&report, "env "), ["0"]);
    assert_eq!(logged(&report, "args "), ["0"]);
    assert_eq!(logged(&report, "stdin "), ["0"]);
    let mut probes = 0;
    for call in [
        "fd_prestat_get",
        "sock_accept",
        "sock_recv",
        "sock_send",
        "sock_shutdown",
    ] {
        for line in logged(&report, &format!("{call} ")) {
            let (fd, errno) = line.split_once(" -> ").expect("`FD -> ERRNO`");
            assert_eq!(errno, EBADF, "{call}({fd})\nlogs: {}", report.logs);
            probes += 1;
        }
    }
    assert_eq!(probes, 50, "{}", report.logs);
}

/// An input the store does not have is `BadInput`, naming the input, before the task runs.
#[test]
fn an_input_missing_from_the_store_is_bad_input() {
    let (_dir, rt) = runtime(1);
    let mut spec = spec(&rt, wasm::HELLO, &[]);
    spec.inputs = vec![("name".into(), Cid::of(b"never stored"))];
    let report = rt.run_blocking(&spec);
    expect_failure(&report, FailureKind::BadInput, "input `name`");
    assert!(report.logs.text.is_empty(), "the task ran: {}", report.logs);
}

/// Every `shoal_v1` import, with its parameter types in WAT. Checked against the host's list.
const ABI: [(&str, &str); 23] = [
    ("args_len", ""),
    ("args_read", "i32 i32"),
    ("input_cid", "i32 i32"),
    ("input_count", ""),
    ("input_find", "i32 i32"),
    ("input_len", "i32"),
    ("input_name", "i32 i32 i32"),
    ("input_read", "i32 i64 i32 i32"),
    ("log", "i32 i32 i32"),
    ("object_open", "i32"),
    ("object_put", "i32 i32 i32"),
    ("output_write", "i32 i32 i32 i32 i32"),
    ("progress", "i32 i32"),
    ("self_module", "i32"),
    ("set_error", "i32 i32"),
    ("spawn", "i32 i32"),
    ("subtask_result", "i32 i32 i32"),
    ("subtask_wait", "i32 i32"),
    ("tensor_create", "i32 i32 i32 i32"),
    ("tensor_free", "i32"),
    ("tensor_op", "i32 i32 f32 i32 i32"),
    ("tensor_read", "i32 i32 i32"),
    ("tensor_shape", "i32 i32"),
];

/// Bytes of randomness each burn asks WASI for: CPU time spent in a host call that does not
/// check the clock.
const BURN_BYTES: u32 = 4 << 20;
/// Burns (each followed by the call under test) in each task: far more time than its limit.
const BURNS: usize = 200;

/// One task per import, `shoal_task:NAME`: straight-line code (no loop, no call into wasm, so
/// no epoch check after entry) that alternates a long `random_get` with a call to the import.
fn clock_module() -> String {
    let mut wat = String::from(
        "(module\n(import \"wasi_snapshot_preview1\" \"random_get\" \
         (func $burn (param i32 i32) (result i32)))\n",
    );
    for (name, params) in ABI {
        wat += &format!(
            "(import \"shoal_v1\" \"{name}\" (func ${name} (param {params}) (result i32)))\n"
        );
    }
    wat += &format!("(memory (export \"memory\") {})\n", BURN_BYTES / 65536 + 1);
    for (name, params) in ABI {
        let zeros: String = params
            .split_whitespace()
            .map(|t| format!(" ({t}.const 0)"))
            .collect();
        let step = format!(
            "(drop (call $burn (i32.const 0) (i32.const {BURN_BYTES})))\n\
             (drop (call ${name}{zeros}))\n"
        );
        wat += &format!(
            "(func (export \"shoal_task:{name}\") (result i32)\n{}(i32.const 0))\n",
            step.repeat(BURNS)
        );
    }
    wat + ")"
}

/// A task past its deadline is stopped by whichever `shoal_v1` call it makes next. Each task
/// spends its time in a host call that never checks the clock and runs no loop, so wasm's
/// epoch checks never fire: only the import's own clock check can stop it. The host's list of
/// imports must match [`ABI`], so a new import is tested too.
#[test]
fn every_host_call_checks_the_clock() {
    let (_dir, rt) = cpu_runtime(1);
    assert_eq!(
        rt.host_imports(),
        ABI.map(|(name, _)| name),
        "the host's imports vs ABI in this test: add a new import to ABI"
    );
    let module = wat_spec(&rt, &clock_module());
    let run = |name: &str, timeout: Duration| {
        let mut spec = module.clone();
        spec.task = Some(name.to_owned());
        spec.limits.timeout = timeout;
        rt.run_blocking(&spec)
    };
    let limit = Duration::from_millis(50);
    // One run with time to spare compiles the module, so each timed run starts well before
    // its deadline, and shows that a run lasts far longer than the limit: if a call did not
    // check the clock, its task would finish.
    let full = run("args_len", Duration::from_secs(20));
    expect_ok(&full);
    assert!(
        full.stats.wall > 3 * limit,
        "burning is too fast for this test: {:?}",
        full.stats.wall
    );
    for (name, _) in ABI {
        let report = run(name, limit);
        assert!(
            report.result.is_err(),
            "`{name}` let a task run {:?} past its 50 ms limit",
            report.stats.wall
        );
        expect_failure(
            &report,
            FailureKind::Timeout,
            "exceeded its 50 ms wall-time limit",
        );
    }
}

#[test]
fn limits_past_the_ceilings_are_clamped_not_a_panic() {
    use shoal_host::runtime::MAX_TASK_TIME;
    let (_dir, rt) = runtime(1);
    let mut spec = spec(&rt, wasm::HELLO, &[("name", b"Ada")]);
    spec.limits.timeout = Duration::MAX;
    spec.limits.cpu_budget = Duration::MAX;
    let report = rt.run_blocking(&spec);
    assert!(report.result.is_ok(), "{:?}", report.result);
    assert_eq!(report.stats.limits.timeout, MAX_TASK_TIME);
    assert_eq!(report.stats.limits.cpu_budget, MAX_TASK_TIME);
}
