//! The driver's report: one `key=value` line per round, sent as a progress record as the
//! round ends and kept in the `report` output, then a `test …` line for the final parameters.
//! `host train` parses these lines (only `round`, `loss` and `seconds` are required there):
//!
//! `round=1 loss=2.30 accuracy=0.11 samples=1347 peers=3 seconds=0.041 transfer=0.004
//! compute=0.021 checkpoint=0.001 coordination=0.015 bytes=48216 combine=mean checkpoint_cid=…`
//!
//! - `loss`: the mean over all shards' samples (sync: at the parameters before the round's
//!   step; local: of the minibatches the round saw);
//! - `accuracy`: on `test`, at the parameters the round started from (an `eval` subtask
//!   beside the round's others), on rounds that are multiples of `eval_every` (0: never), and
//!   only where the trainer's `eval` reports one (each trainer says what it means);
//! - `samples`: rows the round's gradients or local steps went through; `peers`: distinct
//!   peers that ran its subtasks;
//! - the round's `seconds`, split: `transfer`, the slowest subtask's fetch of its inputs plus
//!   the driver's reads of the results; `compute`, the slowest subtask's run plus the
//!   driver's combine and update; `checkpoint`, storing the parameters object and the
//!   checkpoint; `coordination`, the rest (placement, messages, queues). The slowest fetch
//!   and the slowest run may be different subtasks', so this is the round's critical path
//!   only approximately;
//! - `bytes`: what the round moved at most: the parameters to each subtask and every result
//!   read back (a subtask on the driver's own node moves nothing over the network);
//! - `combine`: how the round's results were combined (the driver's `combine` argument:
//!   `mean`, `median`, `trimmed` or `centered_clip`);
//! - `checkpoint_cid`: the round's checkpoint object, which the submitter can fetch and keep.
//!
//! The report ends with `test count=450 loss=0.21 accuracy=0.95` for the final parameters
//! (`accuracy=NaN` where the trainer's `eval` reports none).

use shoal::{Cid, Error};

/// The `key=value` pairs of a stats text (what a trainer's `grad` and `eval` write), in order.
///
/// # Errors
/// Text that is not UTF-8, or a pair without `=`.
pub fn pairs(bytes: &[u8]) -> Result<Vec<(&str, &str)>, Error> {
    let text = std::str::from_utf8(bytes).map_err(|e| Error::msg(format!("stats: {e}")))?;
    text.split_whitespace()
        .map(|pair| {
            pair.split_once('=')
                .ok_or_else(|| Error::msg(format!("stats: `{pair}` is not key=value")))
        })
        .collect()
}

/// `value` of `key` in a stats text, parsed.
///
/// # Errors
/// A value that does not parse, naming the pair.
pub fn value<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, Error>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e| Error::msg(format!("stats `{key}={value}`: {e}")))
}

/// What the driver reads from a subtask's `stats`: each trainer decodes its own format into
/// this.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Samples.
    pub count: u64,
    /// The sum of their losses, so that shards combine by adding.
    pub loss_sum: f64,
    /// A held-out score in the report's `accuracy` field (`eval` only; the trainer says what
    /// it means).
    pub accuracy: Option<f64>,
}

impl Stats {
    /// The mean loss (NaN for no samples).
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.count as f64
    }
}

/// What one round did and where its time went (see the module docs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Round {
    /// The round's number.
    pub round: u32,
    /// Mean loss over the round's samples.
    pub loss: f64,
    /// Held-out accuracy at the round's starting parameters, if evaluated.
    pub accuracy: Option<f64>,
    /// Rows the round trained on.
    pub samples: u64,
    /// Distinct peers that ran its subtasks.
    pub peers: usize,
    /// Its wall time, and that split four ways, in seconds.
    pub seconds: f64,
    /// Fetching inputs and reading results.
    pub transfer: f64,
    /// Subtask runs and the driver's combine.
    pub compute: f64,
    /// Storing the parameters and the checkpoint.
    pub checkpoint: f64,
    /// Bytes moved at most.
    pub bytes: u64,
    /// The combine that ran (the `combine` argument's value).
    pub combine: Option<&'static str>,
    /// The checkpoint object's CID.
    pub checkpoint_cid: Option<Cid>,
}

impl Round {
    /// The round's line: `key=value` pairs, as the module docs list them.
    pub fn line(&self) -> String {
        let mut line = format!("round={} loss={}", self.round, self.loss);
        if let Some(accuracy) = self.accuracy {
            line.push_str(&format!(" accuracy={accuracy}"));
        }
        let coordination = (self.seconds - self.transfer - self.compute - self.checkpoint).max(0.0);
        line.push_str(&format!(
            " samples={} peers={} seconds={:.4} transfer={:.4} compute={:.4} checkpoint={:.4} \
             coordination={coordination:.4} bytes={}",
            self.samples,
            self.peers,
            self.seconds,
            self.transfer,
            self.compute,
            self.checkpoint,
            self.bytes
        ));
        if let Some(combine) = self.combine {
            line.push_str(&format!(" combine={combine}"));
        }
        if let Some(cid) = self.checkpoint_cid {
            line.push_str(&format!(" checkpoint_cid={cid}"));
        }
        line
    }
}

/// The report's last line, from `eval`'s stats on the test shard.
pub fn test_line(stats: &Stats) -> String {
    format!(
        "test count={} loss={} accuracy={}",
        stats.count,
        stats.loss(),
        stats.accuracy.unwrap_or(f64::NAN)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_are_key_value() {
        let round = Round {
            round: 3,
            loss: 0.25,
            accuracy: Some(0.5),
            samples: 10,
            peers: 2,
            seconds: 0.0414,
            transfer: 0.01,
            compute: 0.02,
            checkpoint: 0.001,
            bytes: 99,
            combine: None,
            checkpoint_cid: None,
        };
        assert_eq!(
            round.line(),
            "round=3 loss=0.25 accuracy=0.5 samples=10 peers=2 seconds=0.0414 transfer=0.0100 \
             compute=0.0200 checkpoint=0.0010 coordination=0.0104 bytes=99"
        );
        let bare = Round {
            accuracy: None,
            combine: Some("median"),
            checkpoint_cid: Some(Cid([7; 32])),
            ..round
        };
        let line = bare.line();
        assert!(line.starts_with("round=3 loss=0.25 samples=10 "), "{line}");
        assert!(
            line.ends_with(&format!(
                " bytes=99 combine=median checkpoint_cid={}",
                Cid([7; 32])
            )),
            "{line}"
        );
        let stats = Stats {
            count: 4,
            loss_sum: 1.0,
            accuracy: Some(3.0 / 4.0),
        };
        assert_eq!(test_line(&stats), "test count=4 loss=0.25 accuracy=0.75");
        let none = Stats {
            accuracy: None,
            ..stats
        };
        assert_eq!(test_line(&none), "test count=4 loss=0.25 accuracy=NaN");
    }
}
