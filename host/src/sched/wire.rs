//! Conversions between the runtime's task types and the `/shoal/task/1` messages.

use std::time::Duration;

use shoal_p2p::{BlockId, FailureKind as WireKind, PeerId, TaskLimits, TaskOutcome};

use crate::{
    runtime::{FailureKind, Limits, Logs, TaskFailure, TaskReport, TaskSpec, TaskStats},
    store::Cid,
};

/// A task spec as sent to another peer.
pub fn spec_to_wire(spec: &TaskSpec) -> shoal_p2p::TaskSpec {
    shoal_p2p::TaskSpec {
        module: BlockId(spec.module.0),
        entry: spec.task.clone().unwrap_or_default(),
        inputs: spec
            .inputs
            .iter()
            .map(|(n, c)| (n.clone(), BlockId(c.0)))
            .collect(),
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
        module: Cid(spec.module.0),
        task: (!spec.entry.is_empty()).then_some(spec.entry),
        inputs: spec
            .inputs
            .into_iter()
            .map(|(n, c)| (n, Cid(c.0)))
            .collect(),
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
pub(super) fn report_to_wire(report: TaskReport, me: PeerId) -> TaskOutcome {
    let logs = report.logs.to_string();
    match report.result {
        Ok(outputs) => TaskOutcome::Ok {
            outputs: outputs
                .into_iter()
                .map(|(n, c)| (n, BlockId(c.0)))
                .collect(),
            logs,
            stats: shoal_p2p::TaskStats {
                wall_ms: u64::try_from(report.stats.wall.as_millis()).unwrap_or(u64::MAX),
                peak_memory_bytes: report.stats.peak_memory,
                backend: String::new(),
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
            result: Ok(outputs.into_iter().map(|(n, c)| (n, Cid(c.0))).collect()),
            logs: logs(text),
            stats: TaskStats {
                wall: Duration::from_millis(stats.wall_ms),
                peak_memory: stats.peak_memory_bytes,
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
