//! The sandbox against hostile modules: each ends with its own typed, human-readable failure
//! within its limits, and the same runtime then runs `hello` correctly.

use std::time::{Duration, Instant};

use shoal_host::runtime::{FailureKind, Limits, MIB, TaskReport};
use shoal_task_artifacts as wasm;

use crate::util::{assert_hello_works, runtime, spec};

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

#[test]
fn infinite_loop_times_out() {
    let report = run_hostile(wasm::HOSTILE_LOOP, short());
    expect_failure(
        &report,
        FailureKind::Timeout,
        "exceeded its 1 s wall-time limit",
    );
}

#[test]
fn cpu_budget_is_enforced_separately() {
    let limits = Limits {
        cpu_budget: Duration::from_millis(300),
        ..short()
    };
    let report = run_hostile(wasm::HOSTILE_LOOP, limits);
    expect_failure(
        &report,
        FailureKind::Timeout,
        "exceeded its 300 ms CPU budget",
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

#[test]
fn bad_pointers_are_rejected_by_every_host_call() {
    let report = run_hostile(wasm::HOSTILE_BADPTR, short());
    assert!(
        report.result.is_ok(),
        "{:?}\nlogs: {}",
        report.result,
        report.logs
    );
    assert!(
        report.logs.text.contains("host rejected all 36 bad calls"),
        "{}",
        report.logs
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_run_tasks_concurrently_and_all_finish() {
    let (_dir, rt) = runtime(2);
    let spec = spec(&rt, wasm::NOOP, &[]);
    let runs: Vec<_> = (0..64)
        .map(|_| {
            tokio::spawn({
                let (rt, spec) = (rt.clone(), spec.clone());
                async move { rt.run(spec).await }
            })
        })
        .collect();
    for run in runs {
        assert!(run.await.unwrap().result.is_ok());
    }
    assert_eq!(rt.free_slots(), 2);
}
