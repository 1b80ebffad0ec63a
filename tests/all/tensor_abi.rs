//! Tensors through the `shoal_v1` ABI, end to end: the `matmul` task (product on the host)
//! against `matmul-wasm` (product in wasm) on the cpu backend and on wgpu forced onto the
//! software adapter, and hostile tensor use, each with a typed error, after which the same
//! runtime still runs `hello`.
//!
//! The GPU test fails (never skips) when no wgpu adapter is usable; on Debian,
//! `mesa-vulkan-drivers` provides lavapipe.

use std::time::Duration;

use shoal::abi::{ErrorCode, TensorOp};
use shoal_host::{
    compute::{Backend, CpuBackend, DeviceChoice},
    runtime::{FailureKind, Limits, MIB, Runtime, TaskReport, TaskSpec},
};
use shoal_task_artifacts as wasm;

use crate::{
    compute::{cpu_after, process_cpu},
    util::{assert_hello_works, runtime_on, software_gpu, spec, with_args},
};

/// Runs a task that must succeed and returns its output `c` as f32s, with the report.
fn product(rt: &Runtime, spec: &TaskSpec) -> (Vec<f32>, TaskReport) {
    let report = rt.run_blocking(spec);
    let outputs = report
        .result
        .clone()
        .unwrap_or_else(|f| panic!("task failed: {f}\nlogs: {}", report.logs));
    let (name, cid) = &outputs[0];
    assert_eq!(name, "c");
    let bytes = rt.store().read_file(cid).expect("output stored");
    let values = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (values, report)
}

/// `|host - wasm| <= 1e-5 * (1 + n)`: entries of [-1, 1) matrices, summed over `n` terms in
/// different orders.
fn assert_close(host: &[f32], wasm: &[f32], n: usize) {
    assert_eq!(host.len(), n * n);
    assert_eq!(wasm.len(), n * n);
    let tol = 1e-5 * (1.0 + n as f32);
    for (i, (h, w)) in host.iter().zip(wasm).enumerate() {
        assert!(
            (h - w).abs() <= tol,
            "c[{i}]: host {h} vs wasm {w} (tolerance {tol})"
        );
    }
}

/// The host product equals the wasm product for seeded matrices of awkward sizes, and for
/// matrices given as inputs; every tensor task reports that it ran on `backend`.
fn host_matches_wasm(rt: &Runtime, backend: &str) {
    for (n, seed) in [("1", "3"), ("67", "5"), ("128", "9")] {
        let args = [("n", n), ("seed", seed)];
        let (want, wasm_report) = product(rt, &with_args(spec(rt, wasm::MATMUL_WASM, &[]), &args));
        let (got, report) = product(rt, &with_args(spec(rt, wasm::MATMUL, &[]), &args));
        assert_close(&got, &want, n.parse().expect("n"));
        assert_eq!(
            wasm_report.stats.backend, None,
            "matmul-wasm uses no tensors"
        );
        assert_eq!(
            report.stats.backend.as_deref(),
            Some(backend),
            "matmul ran on another backend"
        );
    }
    let n = 5;
    let a: Vec<u8> = (0..n * n)
        .flat_map(|i| (i as f32 * 0.25 - 3.0).to_le_bytes())
        .collect();
    let b: Vec<u8> = (0..n * n)
        .flat_map(|i| (1.5 - i as f32 * 0.125).to_le_bytes())
        .collect();
    let inputs: [(&str, &[u8]); 2] = [("a", &a), ("b", &b)];
    let (want, _) = product(
        rt,
        &with_args(spec(rt, wasm::MATMUL_WASM, &inputs), &[("n", "5")]),
    );
    let (got, report) = product(
        rt,
        &with_args(spec(rt, wasm::MATMUL, &inputs), &[("n", "5")]),
    );
    assert_close(&got, &want, n);
    assert_eq!(report.stats.backend.as_deref(), Some(backend));
    assert_hello_works(rt);
}

/// `--device cpu`: the native kernels, named as the cpu backend names itself.
#[test]
fn matmul_task_matches_wasm_on_cpu() {
    let (_dir, rt) = runtime_on(DeviceChoice::Cpu, false);
    host_matches_wasm(&rt, CpuBackend::new().name());
}

/// `--device gpu` with software allowed: the tasks run the shaders on wgpu over the software
/// adapter (lavapipe), the same one a `GpuBackend` opened here finds.
#[test]
fn matmul_task_matches_wasm_on_software_gpu() {
    let expected = software_gpu();
    assert!(
        expected.is_software(),
        "{} is a hardware GPU: this test is for the software adapter",
        expected.name()
    );
    assert!(expected.name().starts_with("wgpu "), "{}", expected.name());
    let (_dir, rt) = runtime_on(DeviceChoice::Gpu, true);
    // The first tensor call starts the device; with no adapter the task fails with
    // `Unavailable`, and so does this test, naming the reason from the task's log.
    host_matches_wasm(&rt, expected.name());
}

fn run_hostile(task: &str, limits: Limits) -> TaskReport {
    let (_dir, rt) = runtime_on(DeviceChoice::Cpu, false);
    let mut spec = spec(&rt, wasm::HOSTILE_TENSORS, &[]);
    spec.task = Some(task.into());
    spec.limits = limits;
    let report = rt.run_blocking(&spec);
    assert_hello_works(&rt);
    report
}

/// The task failed with its own error, which names `code`; the host accepted nothing.
fn expect_code(report: &TaskReport, code: ErrorCode) {
    let failure = report.result.as_ref().expect_err("hostile task must fail");
    assert_eq!(
        failure.kind,
        FailureKind::TaskError,
        "{failure}\nlogs: {}",
        report.logs
    );
    assert!(
        !failure.message.contains("ACCEPTED"),
        "{failure}\nlogs: {}",
        report.logs
    );
    assert!(
        failure.message.contains(&code.to_string()),
        "`{}` does not name {code}",
        failure.message
    );
}

#[test]
fn forged_and_foreign_handles_are_bad_handles() {
    let report = run_hostile("foreign_handle", Limits::default());
    expect_code(&report, ErrorCode::BadHandle);
    assert!(
        report.logs.text.contains("belongs to another task's table"),
        "logs: {}",
        report.logs
    );
}

#[test]
fn freed_handles_are_dead() {
    expect_code(
        &run_hostile("use_after_free", Limits::default()),
        ErrorCode::BadHandle,
    );
}

#[test]
fn shape_mismatch_is_typed_and_logged() {
    let report = run_hostile("shape_mismatch", Limits::default());
    expect_code(&report, ErrorCode::ShapeMismatch);
    let failure = report.result.as_ref().expect_err("fails");
    assert!(failure.message.starts_with("tensor matmul: "), "{failure}");
    assert!(
        report
            .logs
            .text
            .contains("[host] tensor_op matmul: shapes 3x4 and 5x6 do not fit matmul"),
        "logs: {}",
        report.logs
    );
}

#[test]
fn quota_bomb_gets_quota_exceeded() {
    let limits = Limits {
        tensor_bytes: 100 * MIB,
        ..Limits::default()
    };
    let report = run_hostile("quota_bomb", limits);
    expect_code(&report, ErrorCode::QuotaExceeded);
    // 6 tensors of 16 MiB fit in 100 MiB; the 7th is refused.
    assert!(
        report.logs.text.contains("refused after 6 tensors"),
        "logs: {}",
        report.logs
    );
    assert!(
        report.logs.text.contains("device-memory quota"),
        "logs: {}",
        report.logs
    );
}

#[test]
fn huge_dims_are_too_large() {
    expect_code(
        &run_hostile("huge_dims", Limits::default()),
        ErrorCode::TooLarge,
    );
}

#[test]
fn unknown_op_codes_are_invalid_arguments() {
    let report = run_hostile("bad_op_code", Limits::default());
    expect_code(&report, ErrorCode::InvalidArgument);
    assert!(
        report
            .logs
            .text
            .contains("[host] tensor_op: unknown op code 99"),
        "logs: {}",
        report.logs
    );
}

#[test]
fn each_task_gets_a_fresh_tensor_quota() {
    // Every run may fill the quota again: tables are per task, and go with their task.
    let (_dir, rt) = runtime_on(DeviceChoice::Cpu, false);
    let mut spec = spec(&rt, wasm::HOSTILE_TENSORS, &[]);
    spec.task = Some("quota_bomb".into());
    spec.limits.tensor_bytes = 40 * MIB;
    for _ in 0..3 {
        let report = rt.run_blocking(&spec);
        expect_code(&report, ErrorCode::QuotaExceeded);
        assert!(
            report.logs.text.contains("refused after 2 tensors"),
            "logs: {}",
            report.logs
        );
    }
    assert_hello_works(&rt);
}

/// A task that makes one `n x n` tensor and multiplies it by itself until something stops
/// it: on two cores one product takes about a second at n = 4096.
fn matmul_forever(rt: &Runtime, n: u32) -> TaskSpec {
    let (code, param, alpha) = TensorOp::Matmul {
        trans_a: false,
        trans_b: false,
    }
    .encode();
    let bytes = n * n * 4;
    let wat = format!(
        r#"(module
            (import "shoal_v1" "tensor_create" (func $create (param i32 i32 i32 i32) (result i32)))
            (import "shoal_v1" "tensor_op" (func $op (param i32 i32 f32 i32 i32) (result i32)))
            (import "shoal_v1" "tensor_free" (func $free (param i32) (result i32)))
            (memory (export "memory") {pages})
            (func (export "shoal_task:matmul_forever") (result i32)
                (local $a i32) (local $c i32)
                (local.set $a (call $create (i32.const {n}) (i32.const {n}) (i32.const 0)
                                            (i32.const {bytes})))
                (if (i32.lt_s (local.get $a) (i32.const 0)) (then (return (local.get $a))))
                (loop $again
                    (local.set $c (call $op (i32.const {code}) (i32.const {param})
                                            (f32.const {alpha}) (local.get $a) (local.get $a)))
                    (if (i32.lt_s (local.get $c) (i32.const 0)) (then (return (local.get $c))))
                    (drop (call $free (local.get $c)))
                    (br $again))
                (i32.const 0)))"#,
        pages = bytes.div_ceil(65536),
    );
    let module = wat::parse_str(&wat).unwrap_or_else(|e| panic!("bad WAT: {e}\n{wat}"));
    TaskSpec::new(rt.store().put_bytes(&module).expect("put module"))
}

/// The task failed for `limit`, said so as the runtime says it, and no thread kept
/// computing for it once it returned.
fn expect_stopped(report: &TaskReport, message: &str) {
    let failure = report
        .result
        .as_ref()
        .expect_err("the task must be stopped");
    assert_eq!(
        failure.kind,
        FailureKind::Timeout,
        "{failure}\nlogs: {}",
        report.logs
    );
    assert_eq!(failure.message, message, "logs: {}", report.logs);
    let idle = cpu_after(Duration::from_millis(200));
    assert!(
        idle < Duration::from_millis(20),
        "{idle:?} of CPU in the 200 ms after the task returned"
    );
}

/// Every limit holds at the host boundary, wall time first: a tensor op of seconds under a
/// 300 ms limit stops within one block of the deadline (a few ms; 200 ms allowed here for
/// a loaded machine), and the task fails for its wall-time limit.
#[test]
fn tensor_op_stops_at_the_wall_time_limit() {
    let (_dir, rt) = runtime_on(DeviceChoice::Cpu, false);
    let mut spec = matmul_forever(&rt, 4096);
    let limit = Duration::from_millis(300);
    spec.limits.timeout = limit;
    let report = rt.run_blocking(&spec);
    eprintln!("wall {:?}, cpu {:?}", report.stats.wall, report.stats.cpu);
    expect_stopped(&report, "task exceeded its 300 ms wall-time limit");
    let bound = limit + Duration::from_millis(200);
    assert!(
        report.stats.wall <= bound,
        "the task ran {:?}, over {bound:?}",
        report.stats.wall
    );
    assert_hello_works(&rt);
}

/// The CPU budget counts every thread that works for the task: the op's worker threads
/// (while the task's own thread waits for them) use it up, the op stops within a block of
/// it, and the task's reported CPU is what the process used while it ran.
#[test]
fn tensor_op_threads_count_against_the_cpu_budget() {
    let (_dir, rt) = runtime_on(DeviceChoice::Cpu, false);
    let mut spec = matmul_forever(&rt, 4096);
    let budget = Duration::from_millis(300);
    spec.limits.cpu_budget = budget;
    // Were the workers' CPU not charged, the wall-time limit would end it: keep that short.
    spec.limits.timeout = Duration::from_secs(10);
    let before = process_cpu();
    let report = rt.run_blocking(&spec);
    let process = process_cpu() - before;
    let (wall, cpu) = (report.stats.wall, report.stats.cpu);
    eprintln!("wall {wall:?}, task cpu {cpu:?}, process cpu {process:?}");
    expect_stopped(&report, "task exceeded its 300 ms CPU budget");
    assert!(cpu > budget, "the task used {cpu:?} of its {budget:?}");
    assert!(
        cpu >= process.mul_f64(0.8),
        "the task was charged {cpu:?} of the {process:?} the process used"
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpu <= budget + Duration::from_millis(100) * threads as u32,
        "the op ran on to {cpu:?}"
    );
    assert_hello_works(&rt);
}
