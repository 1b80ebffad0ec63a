//! Verified runs (`--verify N`): the same deterministic task on N distinct peers, and the
//! tally of what they answered. The scheduler does the placing (`Scheduler::submit_verified`);
//! this file decides what the answers mean.
//!
//! A run's vote is what it says the task gave: its named outputs, or a failure the task
//! itself causes (a trap, its own error, running out of its memory limit, a bad module or
//! input), which a deterministic task causes the same way everywhere. A run that timed out,
//! was denied by the peer's policy or was lost casts no vote: those depend on the peer, not
//! on the task, so they prove nothing either way (and mark no one).
//!
//! An answer is agreed when at least two runs gave it and it has a strict majority of the
//! runs that voted. Peers that voted otherwise are the minority, and are marked faulty.

use super::Placed;
use crate::{
    runtime::{FailureKind, TaskReport},
    store::Cid,
};

/// The most runs one verified task may ask for (the extra tie-breaking run comes on top).
pub const MAX_VERIFY: u32 = shoal::abi::MAX_VERIFY;
/// Outputs named in a disagreement message, per run.
const SHOWN_OUTPUTS: usize = 4;

/// What a run says the task gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Vote {
    /// Its named outputs, in order.
    Outputs(Vec<(String, Cid)>),
    /// A failure the task itself caused.
    Failed(FailureKind),
}

/// A run's vote, if it cast one.
pub(super) fn vote(report: &TaskReport) -> Option<Vote> {
    match &report.result {
        Ok(outputs) => Some(Vote::Outputs(outputs.clone())),
        Err(f) => match f.kind {
            FailureKind::Trap
            | FailureKind::OutOfMemory
            | FailureKind::BadModule
            | FailureKind::BadInput
            | FailureKind::TaskError => Some(Vote::Failed(f.kind)),
            // Timeout, Denied, Lost and whatever comes later: the peer's doing, not the task's.
            _ => None,
        },
    }
}

/// The agreed vote, if there is one: given by at least two runs and by more than half of
/// those that voted.
pub(super) fn majority(runs: &[Placed]) -> Option<Vote> {
    let votes: Vec<Vote> = runs.iter().filter_map(|r| vote(&r.report)).collect();
    votes
        .iter()
        .find(|v| {
            let count = votes.iter().filter(|w| w == v).count();
            count >= 2 && count * 2 > votes.len()
        })
        .cloned()
}

/// Whether every run voted, and all the same way.
pub(super) fn unanimous(runs: &[Placed]) -> bool {
    let votes: Vec<Option<Vote>> = runs.iter().map(|r| vote(&r.report)).collect();
    votes.first().is_some_and(|first| first.is_some()) && votes.iter().all(|v| v == &votes[0])
}

/// A vote as one line: `out=1a2b…, log=3c4d…`, or the failure kind.
pub(super) fn describe(report: &TaskReport) -> String {
    match (&report.result, vote(report)) {
        (Ok(outputs), _) if outputs.is_empty() => "no outputs".to_owned(),
        (Ok(outputs), _) => {
            let mut shown: Vec<String> = outputs
                .iter()
                .take(SHOWN_OUTPUTS)
                .map(|(name, cid)| format!("{name}={cid}"))
                .collect();
            if outputs.len() > SHOWN_OUTPUTS {
                shown.push(format!("and {} more", outputs.len() - SHOWN_OUTPUTS));
            }
            shown.join(", ")
        }
        (Err(f), Some(_)) => format!("failed {}", f.kind),
        (Err(f), None) => format!("no answer ({}: {})", f.kind, first_line(&f.message)),
    }
}

/// Every run as `peer → what it said`, for a failure message.
pub(super) fn tally(runs: &[Placed]) -> String {
    runs.iter()
        .map(|r| format!("{} → {}", r.peer, describe(&r.report)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The runs whose vote differs from `agreed` (those that cast none are not among them).
pub(super) fn minority<'a>(runs: &'a [Placed], agreed: &Vote) -> Vec<&'a Placed> {
    runs.iter()
        .filter(|r| vote(&r.report).is_some_and(|v| &v != agreed))
        .collect()
}

fn first_line(s: &str) -> &str {
    let line = s.lines().next().unwrap_or_default();
    match line.char_indices().nth(160) {
        Some((cut, _)) => &line[..cut],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use shoal_p2p::PeerId;

    use super::*;
    use crate::runtime::TaskFailure;

    fn run(result: Result<Vec<(String, Cid)>, FailureKind>) -> Placed {
        Placed {
            peer: PeerId::random(),
            report: match result {
                Ok(outputs) => TaskReport {
                    result: Ok(outputs),
                    logs: Default::default(),
                    stats: Default::default(),
                },
                Err(kind) => TaskReport::failed(TaskFailure::new(kind, "why")),
            },
            verified_by: Vec::new(),
        }
    }

    fn out(byte: u8) -> Result<Vec<(String, Cid)>, FailureKind> {
        Ok(vec![("out".into(), Cid([byte; 32]))])
    }

    #[test]
    fn agreement_needs_two_votes_and_a_strict_majority() {
        let (a, b) = (out(1), out(2));
        let vote_a = Vote::Outputs(vec![("out".into(), Cid([1; 32]))]);
        let agreed = Some(vote_a.clone());
        assert!(unanimous(&[run(a.clone()), run(a.clone())]));
        assert!(!unanimous(&[run(a.clone()), run(b.clone())]));
        assert_eq!(majority(&[run(a.clone()), run(b.clone())]), None);
        let three = [run(a.clone()), run(b.clone()), run(a.clone())];
        assert_eq!(majority(&three), agreed);
        let wrong: Vec<PeerId> = minority(&three, &vote_a).iter().map(|r| r.peer).collect();
        assert_eq!(wrong, vec![three[1].peer]);
        // One honest answer is no majority, however the others fail to answer.
        let lost = Err(FailureKind::Lost);
        assert_eq!(majority(&[run(a.clone()), run(lost.clone())]), None);
        assert!(!unanimous(&[run(lost.clone()), run(lost.clone())]));
        // Runs that cast no vote are neither counted nor marked.
        let with_lost = [run(a.clone()), run(lost), run(a.clone())];
        assert_eq!(majority(&with_lost), agreed);
        assert!(minority(&with_lost, &vote_a).is_empty());
        // A three-way split has no majority.
        assert_eq!(majority(&[run(a), run(b), run(out(3))]), None);
    }

    #[test]
    fn a_deterministic_failure_is_a_vote_and_a_timeout_is_not() {
        let trap = Err(FailureKind::Trap);
        assert!(unanimous(&[run(trap.clone()), run(trap.clone())]));
        assert_eq!(
            majority(&[run(trap.clone()), run(trap), run(out(1))]),
            Some(Vote::Failed(FailureKind::Trap))
        );
        let timeout = run(Err(FailureKind::Timeout));
        assert_eq!(vote(&timeout.report), None);
        assert!(describe(&timeout.report).starts_with("no answer (Timeout"));
    }
}
