//! Checking a run whose outputs are not bit-stable (a GPU's) against the deterministic CPU
//! backend: `host submit --verify-within TOL`.
//!
//! The task runs once as it is (wherever it is placed, or on `--on`), then once deterministic
//! on another peer. The outputs agree when they are the same blocks, or when each pair of
//! outputs decodes to the same values within `TOL`: `|a − b| ≤ TOL · (1 + |b|)`, NaN only
//! against NaN, an infinity only against the same infinity. Binary outputs are read as
//! little-endian f32 words (same length, every word close); text outputs (printable ASCII,
//! like `loss_sum=0.25 count=449`) as tokens, numbers close and everything else identical. A
//! GPU's reduction order and transcendentals differ from the CPU's, so its results differ in
//! their last bits; a wrong result differs by far more.
//!
//! When they disagree, a second deterministic run on a third peer decides: if it gives the
//! first deterministic run's blocks, the checked run's peer is marked faulty and the
//! deterministic outputs are the answer; if it agrees with the checked run within the
//! tolerance, the first deterministic peer is the faulty one. Otherwise there is no answer.

use shoal_p2p::PeerId;

use super::Node;
use crate::{
    runtime::{FailureKind, TaskFailure, TaskReport, TaskSpec},
    sched::{Placed, Reporter},
    store::Cid,
};

/// The widest tolerance accepted: past it, "within" would accept anything.
pub const MAX_TOLERANCE: f32 = 0.1;

/// Whether `a` is within `tolerance` of the reference `b`.
fn close(a: f64, b: f64, tolerance: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        a.is_nan() && b.is_nan()
    } else if a.is_infinite() || b.is_infinite() {
        a == b
    } else {
        (a - b).abs() <= tolerance * (1.0 + b.abs())
    }
}

/// Printable ASCII text (with whitespace): compared as tokens, not as f32 words.
fn is_text(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
}

/// Why two text outputs differ beyond the tolerance, if they do: numbers within it, the
/// other tokens identical.
fn text_differs(checked: &str, reference: &str, tolerance: f32) -> Option<String> {
    let tokens = |s: &str| -> Vec<String> {
        s.split(|c: char| c.is_whitespace() || "=,:;()[]{}".contains(c))
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let (a, b) = (tokens(checked), tokens(reference));
    if a.len() != b.len() {
        return Some(format!("{} tokens against {}", a.len(), b.len()));
    }
    a.iter().zip(&b).find_map(|(x, y)| {
        let same = match (x.parse::<f64>(), y.parse::<f64>()) {
            (Ok(p), Ok(q)) => close(p, q, f64::from(tolerance)),
            _ => x == y,
        };
        (!same).then(|| format!("`{x}` where the deterministic run has `{y}`"))
    })
}

/// Why two outputs are not within the tolerance, if they are not.
fn differs(checked: &[u8], reference: &[u8], tolerance: f32) -> Option<String> {
    if checked == reference {
        return None;
    }
    if is_text(checked) && is_text(reference) {
        return text_differs(
            &String::from_utf8_lossy(checked),
            &String::from_utf8_lossy(reference),
            tolerance,
        );
    }
    if checked.len() != reference.len() {
        return Some(format!(
            "{} bytes against {} bytes",
            checked.len(),
            reference.len()
        ));
    }
    if !checked.len().is_multiple_of(4) {
        return Some("different bytes, and not a whole number of f32 words".into());
    }
    let word = |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (i, (a, b)) in checked
        .chunks_exact(4)
        .zip(reference.chunks_exact(4))
        .enumerate()
    {
        let (a, b) = (word(a), word(b));
        if !close(f64::from(a), f64::from(b), f64::from(tolerance)) {
            return Some(format!("f32 {i} is {a}, the deterministic run's {b}"));
        }
    }
    None
}

impl Node {
    /// The outputs of `placed`, fetched here, by name.
    async fn outputs_of(&self, placed: &Placed) -> Result<Vec<(String, Vec<u8>)>, String> {
        let outputs = placed.report.result.as_ref().map_err(|f| f.to_string())?;
        // Read whole into memory, so bounded first by what a task may write: a manifest may
        // declare 32 GiB of chunks this node already holds.
        let most = crate::runtime::Limits::default().output_bytes;
        let mut total = 0u64;
        let mut files = Vec::new();
        for (name, cid) in outputs {
            self.fetch_file(*cid, &[placed.peer])
                .await
                .map_err(|e| format!("output `{name}`: {e}"))?;
            let len = self
                .store()
                .manifest(cid)
                .map_err(|e| format!("output `{name}`: {e}"))?
                .len;
            total = total.saturating_add(len);
            if total > most {
                return Err(format!(
                    "the outputs come to over {most} bytes, more than a task may write"
                ));
            }
            let bytes = self
                .store()
                .read_file(cid)
                .map_err(|e| format!("output `{name}`: {e}"))?;
            files.push((name.clone(), bytes));
        }
        Ok(files)
    }

    /// Why `checked`'s outputs are not within `tolerance` of `reference`'s, if they are not.
    async fn disagreement(
        &self,
        checked: &Placed,
        reference: &Placed,
        tolerance: f32,
    ) -> Option<String> {
        let names = |p: &Placed| -> Option<Vec<(String, Cid)>> { p.report.result.clone().ok() };
        match (names(checked), names(reference)) {
            (Some(a), Some(b)) if a == b => return None,
            (Some(a), Some(b)) if a.iter().map(|o| &o.0).ne(b.iter().map(|o| &o.0)) => {
                return Some("their outputs have different names".into());
            }
            (Some(_), Some(_)) => {}
            _ => return Some("one of the runs failed".into()),
        }
        let (a, b) = match (
            self.outputs_of(checked).await,
            self.outputs_of(reference).await,
        ) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return Some(format!("cannot read the outputs: {e}")),
        };
        a.iter().zip(&b).find_map(|((name, x), (_, y))| {
            differs(x, y, tolerance).map(|why| format!("output `{name}`: {why}"))
        })
    }

    /// Runs `spec` as it is (on `on`, if given) and checks its outputs against a deterministic
    /// run on another peer within `tolerance`; see the module docs. The report is the answer's
    /// run; `verified_by` names the runs that agreed.
    pub async fn submit_checked(
        &self,
        spec: TaskSpec,
        on: Option<PeerId>,
        tolerance: f32,
        progress: Option<Reporter>,
    ) -> Placed {
        let me = self.peer_id();
        let fail = |kind, message: String| Placed {
            peer: me,
            report: TaskReport::failed(TaskFailure::new(kind, message)),
            verified_by: Vec::new(),
        };
        if !(tolerance > 0.0 && tolerance <= MAX_TOLERANCE) {
            return fail(
                FailureKind::Denied,
                format!(
                    "--verify-within {tolerance}: a tolerance above 0 and at most {MAX_TOLERANCE}"
                ),
            );
        }
        let checked = self
            .scheduler
            .submit_reporting(spec.clone(), on, progress)
            .await;
        if checked.report.result.is_err() {
            return checked;
        }
        let deterministic = TaskSpec {
            deterministic: true,
            ..spec
        };
        let reference = self
            .scheduler
            .submit_elsewhere(deterministic.clone(), &[checked.peer])
            .await;
        if reference.report.result.is_err() {
            return fail(
                FailureKind::Lost,
                format!(
                    "the deterministic check on {} did not answer: {}",
                    reference.peer,
                    reference
                        .report
                        .result
                        .err()
                        .map(|f| f.to_string())
                        .unwrap_or_default()
                ),
            );
        }
        let Some(why) = self.disagreement(&checked, &reference, tolerance).await else {
            return Placed {
                verified_by: vec![checked.peer, reference.peer],
                ..checked
            };
        };
        tracing::info!(checked = %checked.peer, reference = %reference.peer, "checked run disagrees ({why}); one more deterministic run");
        let tie = self
            .scheduler
            .submit_elsewhere(deterministic, &[checked.peer, reference.peer])
            .await;
        let same =
            |a: &Placed, b: &Placed| a.report.result.as_ref().ok() == b.report.result.as_ref().ok();
        if tie.report.result.is_ok() && same(&tie, &reference) {
            self.scheduler.mark_faulty(
                checked.peer,
                format!(
                    "its outputs were not within {tolerance} of two deterministic runs' ({why})"
                ),
            );
            return Placed {
                verified_by: vec![reference.peer, tie.peer],
                ..reference
            };
        }
        if tie.report.result.is_ok() && self.disagreement(&checked, &tie, tolerance).await.is_none()
        {
            self.scheduler.mark_faulty(
                reference.peer,
                "its deterministic outputs disagreed with another deterministic run's".into(),
            );
            return Placed {
                verified_by: vec![checked.peer, tie.peer],
                ..checked
            };
        }
        fail(
            FailureKind::TaskError,
            format!(
                "the checked run on {} and the deterministic runs on {} and {} did not agree: {why}",
                checked.peer, reference.peer, tie.peer
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn outputs_agree_within_the_tolerance_and_not_past_it() {
        let reference = bytes(&[1.0, -200.0, 0.0, f32::NAN, f32::INFINITY]);
        let close = bytes(&[
            1.0 + 1e-6,
            -200.0 * (1.0 + 1e-6),
            1e-7,
            f32::NAN,
            f32::INFINITY,
        ]);
        assert_eq!(differs(&close, &reference, 1e-5), None);
        let far = bytes(&[1.0, -200.1, 0.0, f32::NAN, f32::INFINITY]);
        assert_eq!(
            differs(&far, &reference, 1e-5).as_deref(),
            Some("f32 1 is -200.1, the deterministic run's -200")
        );
        let nan = bytes(&[1.0, -200.0, f32::NAN, f32::NAN, f32::INFINITY]);
        assert!(differs(&nan, &reference, 1e-5).is_some());
        let inf = bytes(&[1.0, -200.0, 0.0, f32::NAN, f32::NEG_INFINITY]);
        assert!(differs(&inf, &reference, 1e-5).is_some());
        assert!(differs(&reference[..8], &reference, 1e-5).is_some());
        assert_eq!(differs(b"same", b"same", 1e-5), None);
        assert!(differs(&[0xff, 1, 2], &[0xfe, 1, 2], 1e-5).is_some());
        // Text: numbers within the tolerance, the rest identical.
        assert_eq!(
            differs(
                b"loss_sum=0.2500001 count=449",
                b"loss_sum=0.25 count=449",
                1e-5
            ),
            None
        );
        assert_eq!(
            differs(b"loss_sum=0.26 count=449", b"loss_sum=0.25 count=449", 1e-5).as_deref(),
            Some("`0.26` where the deterministic run has `0.25`")
        );
        assert!(differs(b"loss=1 count=449", b"loss_sum=1 count=449", 1e-5).is_some());
    }
}
