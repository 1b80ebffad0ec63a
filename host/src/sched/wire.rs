//! The one place where the runtime's task types meet their `/shoal/task/5` mirrors. The p2p
//! crate knows nothing of the host, so the wire keeps its own copy of a spec, a report and a
//! failure kind; each converts here, both ways, and the tests below prove it lossless.

use std::time::Duration;

use shoal_p2p::{Credential, FailureKind as WireKind, PeerId, TaskAuth, TaskLimits, TaskOutcome};

use crate::runtime::{
    FailureKind, Limits, Logs, MAX_TASK_MEMORY, TaskFailure, TaskReport, TaskSpec, TaskStats,
};

/// The longest wall time or CPU budget a peer may ask of this node.
const MAX_REMOTE_TIME: Duration = Duration::from_secs(3600);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn limits_to_wire(limits: &Limits) -> TaskLimits {
    TaskLimits {
        memory_bytes: limits.memory_bytes,
        timeout_ms: millis(limits.timeout),
        cpu_budget_ms: millis(limits.cpu_budget),
    }
}

/// What a sender may choose, within this node's caps; everything else is this node's default.
fn limits_from_wire(limits: TaskLimits) -> Limits {
    let time = |ms: u64| Duration::from_millis(ms).clamp(Duration::from_millis(1), MAX_REMOTE_TIME);
    Limits {
        memory_bytes: limits.memory_bytes.min(MAX_TASK_MEMORY),
        timeout: time(limits.timeout_ms),
        cpu_budget: time(limits.cpu_budget_ms),
        ..Limits::default()
    }
}

fn kind_to_wire(kind: FailureKind) -> WireKind {
    match kind {
        FailureKind::Trap => WireKind::Trap,
        FailureKind::OutOfMemory => WireKind::OutOfMemory,
        FailureKind::Timeout => WireKind::Timeout,
        FailureKind::BadModule => WireKind::BadModule,
        FailureKind::BadInput => WireKind::BadInput,
        FailureKind::Denied => WireKind::Denied,
        FailureKind::TaskError => WireKind::TaskError,
        FailureKind::Lost => WireKind::Lost,
    }
}

/// `Busy` is the scheduler's to retry before it gets here; as a result it means the task was
/// never run, so it reads as lost. `Other` (the protocol's own failure) reads as an error.
fn kind_from_wire(kind: WireKind) -> FailureKind {
    match kind {
        WireKind::Trap => FailureKind::Trap,
        WireKind::OutOfMemory => FailureKind::OutOfMemory,
        WireKind::Timeout => FailureKind::Timeout,
        WireKind::BadModule => FailureKind::BadModule,
        WireKind::BadInput => FailureKind::BadInput,
        WireKind::Denied => FailureKind::Denied,
        WireKind::TaskError | WireKind::Other => FailureKind::TaskError,
        WireKind::Lost | WireKind::Busy => FailureKind::Lost,
    }
}

fn stats_to_wire(stats: TaskStats, me: PeerId) -> shoal_p2p::TaskStats {
    shoal_p2p::TaskStats {
        wall_us: micros(stats.wall),
        cpu_us: micros(stats.cpu),
        peak_memory_bytes: stats.peak_memory,
        cached_module: stats.cached_module,
        backend: stats.backend.unwrap_or_default(),
        limits: limits_to_wire(&stats.limits),
        executed_by: me.to_string(),
        fetch_us: micros(stats.fetch),
    }
}

fn stats_from_wire(stats: shoal_p2p::TaskStats) -> TaskStats {
    TaskStats {
        wall: Duration::from_micros(stats.wall_us),
        cpu: Duration::from_micros(stats.cpu_us),
        peak_memory: stats.peak_memory_bytes,
        cached_module: stats.cached_module,
        backend: (!stats.backend.is_empty()).then_some(stats.backend),
        limits: limits_from_wire(stats.limits),
        executed_by: (!stats.executed_by.is_empty()).then_some(stats.executed_by),
        fetch: Duration::from_micros(stats.fetch_us),
    }
}

/// Logs as received: the executor already capped them.
fn logs_from_wire(text: String) -> Logs {
    Logs {
        limit: text.len(),
        text,
        dropped_bytes: 0,
    }
}

/// A task spec as sent to another peer; a nonzero `progress` token asks for its progress
/// records.
pub fn spec_to_wire(spec: &TaskSpec, progress: u64) -> shoal_p2p::TaskSpec {
    shoal_p2p::TaskSpec {
        module: spec.module,
        entry: spec.task.clone().unwrap_or_default(),
        inputs: spec.inputs.clone(),
        args: spec.args.clone(),
        limits: limits_to_wire(&spec.limits),
        depth: spec.depth,
        progress,
        deterministic: spec.deterministic,
        sources: Vec::new(),
        auth: Box::new(TaskAuth {
            credential: credential_of(spec).unwrap_or_default(),
            ..TaskAuth::default()
        }),
    }
}

/// The credential a received task keeps as [`TaskSpec::tenant`]: its tenant, and the chain
/// that ends at this node, which lets it fetch the tenant's blocks and submit the task's
/// subtasks in the tenant's name. `None` for this node's own tasks.
pub fn credential_of(spec: &TaskSpec) -> Option<Credential> {
    postcard::from_bytes(spec.tenant.as_deref()?).ok()
}

/// A task spec received from another peer.
pub fn spec_from_wire(spec: shoal_p2p::TaskSpec) -> TaskSpec {
    TaskSpec {
        module: spec.module,
        task: (!spec.entry.is_empty()).then_some(spec.entry),
        inputs: spec.inputs,
        args: spec.args,
        limits: limits_from_wire(spec.limits),
        depth: spec.depth,
        deterministic: spec.deterministic,
        tenant: (!spec.auth.credential.tenant.is_empty())
            .then(|| postcard::to_stdvec(&spec.auth.credential).ok())
            .flatten(),
    }
}

/// A local report as sent back to the submitter.
pub fn report_to_wire(report: TaskReport, me: PeerId) -> TaskOutcome {
    let logs = report.logs.to_string();
    let stats = stats_to_wire(report.stats, me);
    match report.result {
        Ok(outputs) => TaskOutcome::Ok {
            outputs,
            logs,
            stats,
        },
        Err(f) => TaskOutcome::Failed {
            kind: kind_to_wire(f.kind),
            message: f.message,
            logs,
            stats,
        },
    }
}

/// A remote outcome as a local report.
pub fn report_from_wire(outcome: TaskOutcome) -> TaskReport {
    let most = Limits::default().outputs;
    let (result, logs, stats) = match outcome {
        // A remote task runs with the default output count: a report of more is a lie, and
        // its outputs are not taken (nor remembered, nor pinned).
        TaskOutcome::Ok { outputs, logs, .. } if outputs.len() > most => {
            let message = format!(
                "the executor reported {} outputs; a task writes at most {most}",
                outputs.len()
            );
            (
                Err(TaskFailure::new(FailureKind::Lost, message)),
                logs,
                shoal_p2p::TaskStats::default(),
            )
        }
        TaskOutcome::Ok {
            outputs,
            logs,
            stats,
        } => (Ok(outputs), logs, stats),
        TaskOutcome::Failed {
            kind,
            message,
            logs,
            stats,
        } => {
            let kind = kind_from_wire(kind);
            (Err(TaskFailure { kind, message }), logs, stats)
        }
    };
    TaskReport {
        result,
        logs: logs_from_wire(logs),
        stats: stats_from_wire(stats),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Cid;

    const KINDS: [FailureKind; 8] = [
        FailureKind::Trap,
        FailureKind::OutOfMemory,
        FailureKind::Timeout,
        FailureKind::BadModule,
        FailureKind::BadInput,
        FailureKind::Denied,
        FailureKind::TaskError,
        FailureKind::Lost,
    ];

    fn report(result: Result<Vec<(String, Cid)>, TaskFailure>) -> TaskReport {
        TaskReport {
            result,
            logs: Logs {
                text: "[info] hi\n".into(),
                limit: 10,
                dropped_bytes: 0,
            },
            stats: TaskStats {
                wall: Duration::from_micros(12_345),
                cpu: Duration::from_micros(6_789),
                peak_memory: 1 << 20,
                cached_module: true,
                backend: Some("cpu (gemm, 2 threads)".into()),
                limits: Limits {
                    memory_bytes: 64 << 20,
                    timeout: Duration::from_secs(5),
                    cpu_budget: Duration::from_secs(2),
                    ..Limits::default()
                },
                executed_by: None,
                fetch: Duration::from_micros(321),
            },
        }
    }

    /// Every field survives the wire, and the executor names itself.
    fn assert_round_trips(sent: TaskReport) {
        let me = PeerId::random();
        let back = report_from_wire(report_to_wire(sent.clone(), me));
        let expected = TaskStats {
            executed_by: Some(me.to_string()),
            ..sent.stats
        };
        assert_eq!(back.result, sent.result);
        assert_eq!(back.logs, sent.logs);
        assert_eq!(back.stats, expected);
    }

    #[test]
    fn reports_and_every_failure_kind_round_trip() {
        assert_round_trips(report(Ok(vec![("out".into(), Cid([7; 32]))])));
        for kind in KINDS {
            assert_round_trips(report(Err(TaskFailure {
                kind,
                message: format!("{kind} happened"),
            })));
        }
    }

    #[test]
    fn a_report_of_more_outputs_than_a_task_may_write_is_not_taken() {
        let most = Limits::default().outputs;
        let outcome = |n: usize| TaskOutcome::Ok {
            outputs: (0..n).map(|i| (i.to_string(), Cid([1; 32]))).collect(),
            logs: String::new(),
            stats: shoal_p2p::TaskStats::default(),
        };
        assert!(report_from_wire(outcome(most)).result.is_ok());
        let failure = report_from_wire(outcome(most + 1)).result.unwrap_err();
        assert_eq!(failure.kind, FailureKind::Lost);
        assert_eq!(
            failure.message,
            format!(
                "the executor reported {} outputs; a task writes at most {most}",
                most + 1
            )
        );
    }

    #[test]
    fn specs_round_trip() {
        let spec = TaskSpec {
            module: Cid([1; 32]),
            task: Some("train".into()),
            inputs: vec![("x".into(), Cid([2; 32]))],
            args: vec![("lr".into(), "0.1".into())],
            limits: report(Ok(vec![])).stats.limits,
            depth: 0,
            deterministic: false,
            tenant: None,
        };
        assert_eq!(spec_from_wire(spec_to_wire(&spec, 9)), spec);
        let deterministic = TaskSpec {
            deterministic: true,
            depth: 3,
            ..spec
        };
        assert_eq!(
            spec_from_wire(spec_to_wire(&deterministic, 0)),
            deterministic
        );
    }

    #[test]
    fn limits_from_the_wire_are_clamped_to_the_nodes_caps() {
        let mut spec = spec_to_wire(&TaskSpec::new(Cid([1; 32])), 0);
        spec.limits = TaskLimits {
            memory_bytes: 64 * MAX_TASK_MEMORY,
            timeout_ms: u64::MAX,
            cpu_budget_ms: 0,
        };
        let limits = spec_from_wire(spec).limits;
        assert_eq!(limits.memory_bytes, MAX_TASK_MEMORY, "4 GiB at most");
        assert_eq!(limits.timeout, MAX_REMOTE_TIME, "an hour at most");
        assert_eq!(limits.cpu_budget, Duration::from_millis(1));
    }
}
