//! Tasks that spawn tasks, on real in-process nodes: a driver never deadlocks on its own
//! slot, its subtasks go through the scheduler, and every bound holds with a typed error.

use std::time::{Duration, Instant};

use shoal_host::{
    node::Node,
    runtime::{FailureKind, Limits, TaskReport, TaskSpec},
};
use shoal_task_artifacts as wasm;

use crate::util::node;

/// Runs task `task` of the fanout module on `node`'s mesh with these arguments.
async fn drive(node: &Node, task: &str, args: &[(&str, &str)]) -> TaskReport {
    drive_with(node, task, args, Duration::from_secs(60)).await
}

/// [`drive`] with this CPU budget, which the task shares with its subtasks.
async fn drive_with(node: &Node, task: &str, args: &[(&str, &str)], cpu: Duration) -> TaskReport {
    let spec = TaskSpec {
        module: node.put_path(wasm::FANOUT.into(), false).await.unwrap(),
        task: Some(task.into()),
        inputs: vec![],
        args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        limits: Limits {
            timeout: Duration::from_secs(60),
            cpu_budget: cpu,
            ..Limits::default()
        },
        depth: 0,
        deterministic: false,
        tenant: None,
    };
    node.submit(spec, None).await.report
}

fn output(node: &Node, report: &TaskReport, name: &str) -> String {
    let outputs = report
        .result
        .as_ref()
        .unwrap_or_else(|f| panic!("{f}\nlogs: {}", report.logs));
    let cid = outputs
        .iter()
        .find(|(n, _)| n == name)
        .expect("the output")
        .1;
    String::from_utf8(node.store().read_file(&cid).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_with_100_subtasks_finishes_on_a_one_slot_mesh() {
    let root = tempfile::tempdir().unwrap();
    let node = node(root.path(), "one", 1).await;
    // The driver holds the only slot while it waits, 16 subtasks at a time: only lending
    // the slot while it blocks lets its subtasks run.
    let report = drive(&node, "fanout", &[("n", "100")]).await;
    let expected: u64 = (0..100u64).map(|i| i * i).sum();
    assert_eq!(output(&node, &report, "sum"), expected.to_string());
    assert_eq!(node.capacity().free_slots, 1, "the slot came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_stops_at_the_depth_limit_and_the_node_serves_on() {
    let root = tempfile::tempdir().unwrap();
    let node = node(root.path(), "one", 1).await;
    // Each level may reserve 1/16 of what its parent has left: with a 60 s budget the
    // shared CPU runs out three levels down.
    let report = drive(&node, "bomb", &[]).await;
    let failure = report.result.expect_err("the bomb is stopped");
    assert_eq!(failure.kind, FailureKind::TaskError, "{failure}");
    assert!(
        failure.message.contains("or the shared CPU budget"),
        "{failure}"
    );
    // With a week of CPU to share, the depth limit stops it.
    let week = shoal_host::runtime::MAX_TASK_TIME;
    let report = drive_with(&node, "bomb", &[], week).await;
    let failure = report.result.expect_err("the bomb is stopped");
    assert_eq!(failure.kind, FailureKind::TaskError, "{failure}");
    assert!(
        failure.message.contains("nesting depth limit of 4"),
        "{failure}"
    );
    assert_eq!(
        failure.message.matches("subtask failed").count(),
        4,
        "{failure}"
    );
    let report = drive(&node, "fanout", &[("n", "3")]).await;
    assert_eq!(output(&node, &report, "sum"), "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_subtask_is_a_typed_trap_at_once() {
    let root = tempfile::tempdir().unwrap();
    let node = node(root.path(), "one", 2).await;
    let started = Instant::now();
    let report = drive(&node, "fanout", &[("n", "4"), ("crash", "1")]).await;
    let failure = report.result.expect_err("the driver fails");
    assert_eq!(failure.kind, FailureKind::TaskError, "{failure}");
    assert!(
        failure.message.contains("subtask failed (Trap)"),
        "{failure}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "no hang");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_and_cids_are_the_tasks_own() {
    let root = tempfile::tempdir().unwrap();
    let node = node(root.path(), "one", 1).await;
    let report = drive(&node, "rules", &[]).await;
    assert_eq!(output(&node, &report, "ok"), "ok", "{}", report.logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_spreads_its_subtasks_over_the_mesh() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (
        node(root.path(), "a", 1).await,
        node(root.path(), "b", 1).await,
    );
    let addr = b.net().listen_addrs().await.unwrap()[0].clone();
    a.net().dial(addr).await.unwrap();
    let report = drive(&a, "fanout", &[("n", "12")]).await;
    let expected: u64 = (0..12u64).map(|i| i * i).sum();
    assert_eq!(output(&a, &report, "sum"), expected.to_string());
}
