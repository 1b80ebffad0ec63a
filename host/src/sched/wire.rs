//! Conversions between the runtime's task types and the `/shoal/task/1` messages.

use std::time::Duration;

use shoal_p2p::{FailureKind as WireKind, PeerId, TaskLimits, TaskOutcome};

use crate::runtime::{FailureKind, Limits, Logs, TaskFailure, TaskReport, TaskSpec, TaskStats};

/// A task spec as sent to another peer.
pub fn spec_to_wire(spec: &TaskSpec) -> shoal_p2p::TaskSpec {
    shoal_p2p::TaskSpec {
        module: spec.module,
        entry: spec.task.clone().unwrap_or_default(),
        inputs: spec.inputs.clone(),
        args: spec.args.clone(),
        limits: TaskLimits {
            memory_bytes: spec.limits.memory_bytes,
            timeout_ms: u64::try_from(spec.limits.timeout.as_millis()).unwrap_or(u64::MAX),
        },
    }
}

/// A task spec received from another peer. The sender chooses memory and time within the
/// node's own caps; everything else gets this node's defaults.
pub fn spec_from_wire(spec: shoal_p2p::TaskSpec) -> TaskSpec {
    let defaults = Limits::default();
    let timeout = Duration::from_millis(spec.limits.timeout_ms.clamp(1, 3_600_000));
    TaskSpec {
        module: spec.module,
        task: (!spec.entry.is_empty()).then_some(spec.entry),
        inputs: spec.inputs,
        args: spec.args,
        limits: Limits {
            memory_bytes: spec
                .limits
                .memory_bytes
                .min(crate::runtime::MAX_TASK_MEMORY),
            timeout,
            cpu_budget: timeout,
            ..defaults
        },
    }
}

/// A local report as sent back to the submitter.
pub fn report_to_wire(report: TaskReport, me: PeerId) -> TaskOutcome {
    let logs = report.logs.to_string();
    match report.result {
        Ok(outputs) => TaskOutcome::Ok {
            outputs,
            logs,
            stats: shoal_p2p::TaskStats {
                wall_ms: u64::try_from(report.stats.wall.as_millis()).unwrap_or(u64::MAX),
                peak_memory_bytes: report.stats.peak_memory,
                backend: report.stats.backend.unwrap_or_default(),
                executed_by: me.to_string(),
            },
        },
        Err(f) => {
            let kind = match f.kind {
                FailureKind::Trap => WireKind::Trap,
                FailureKind::OutOfMemory => WireKind::OutOfMemory,
                FailureKind::Timeout => WireKind::Timeout,
                FailureKind::BadModule => WireKind::BadModule,
                FailureKind::Denied => WireKind::Denied,
                FailureKind::Lost | FailureKind::BadInput => WireKind::Lost,
                _ => WireKind::Other,
            };
            TaskOutcome::Failed {
                kind,
                message: f.message,
                logs,
            }
        }
    }
}

/// A remote outcome as a local report.
pub fn report_from_wire(outcome: TaskOutcome) -> TaskReport {
    let logs = |text: String| Logs {
        limit: text.len(),
        text,
        dropped_bytes: 0,
    };
    match outcome {
        TaskOutcome::Ok {
            outputs,
            logs: text,
            stats,
        } => TaskReport {
            result: Ok(outputs),
            logs: logs(text),
            stats: TaskStats {
                wall: Duration::from_millis(stats.wall_ms),
                peak_memory: stats.peak_memory_bytes,
                backend: (!stats.backend.is_empty()).then_some(stats.backend),
                executed_by: Some(stats.executed_by),
                ..TaskStats::default()
            },
        },
        TaskOutcome::Failed {
            kind,
            message,
            logs: text,
        } => {
            let kind = match kind {
                WireKind::Trap => FailureKind::Trap,
                WireKind::OutOfMemory => FailureKind::OutOfMemory,
                WireKind::Timeout => FailureKind::Timeout,
                WireKind::BadModule => FailureKind::BadModule,
                WireKind::Denied => FailureKind::Denied,
                WireKind::Lost | WireKind::Busy => FailureKind::Lost,
                _ => FailureKind::TaskError,
            };
            TaskReport {
                result: Err(TaskFailure { kind, message }),
                logs: logs(text),
                stats: TaskStats::default(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{runtime::MAX_TASK_MEMORY, store::Cid};

    #[test]
    fn a_remote_report_keeps_outputs_logs_and_stats() {
        let me = PeerId::random();
        let report = TaskReport {
            result: Ok(vec![("out".into(), Cid([7; 32]))]),
            logs: Logs {
                text: "[info] hi\n".into(),
                limit: 1024,
                dropped_bytes: 0,
            },
            stats: TaskStats {
                wall: Duration::from_millis(12),
                peak_memory: 1 << 20,
                backend: Some("cpu".into()),
                ..TaskStats::default()
            },
        };
        let back = report_from_wire(report_to_wire(report.clone(), me));
        assert_eq!(back.result, report.result);
        assert_eq!(back.logs.text, report.logs.text);
        assert_eq!(back.stats.wall, report.stats.wall);
        assert_eq!(back.stats.peak_memory, report.stats.peak_memory);
        assert_eq!(back.stats.backend, report.stats.backend);
        assert_eq!(back.stats.executed_by, Some(me.to_string()));
    }

    #[test]
    fn limits_from_the_wire_are_clamped_to_the_nodes_caps() {
        let mut spec = spec_to_wire(&TaskSpec {
            module: Cid([1; 32]),
            task: None,
            inputs: vec![],
            args: vec![],
            limits: Limits::default(),
        });
        spec.limits.memory_bytes = 64 * MAX_TASK_MEMORY;
        spec.limits.timeout_ms = u64::MAX;
        let limits = spec_from_wire(spec.clone()).limits;
        assert_eq!(limits.memory_bytes, MAX_TASK_MEMORY, "4 GiB at most");
        assert_eq!(limits.timeout, Duration::from_secs(3600), "an hour at most");
        spec.limits.timeout_ms = 0;
        assert_eq!(
            spec_from_wire(spec).limits.timeout,
            Duration::from_millis(1)
        );
    }
}
