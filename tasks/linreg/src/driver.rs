//! The `train` driver: `train_kit`'s round loop ([`train_kit::driver`]) over this module's
//! `grad` and `eval`, in sync mode only (there is no `step` task: `mode=local` is refused).
//!
//! **Checkpoint**: `train_kit`'s layout ([`train_kit::checkpoint`]) with magic `LRC1`:
//! `LRC1`, `round` (u32), `seed` (u64), the driver's RNG state (u64, never drawn from in sync
//! mode), then a whole parameter file (`LRP1`, see [`format`](mod@crate::format));
//! little-endian.
//!
//! **Rounds**: the `key=value` lines of [`train_kit::report`], where `loss` is the mean of
//! `½·(x·w + b − y)²` over the training rows at the round's starting parameters, and
//! `accuracy` is R² on `test` (1 a perfect fit, 0 no better than the mean, negative worse;
//! with zero weights it is at or below 0). The report ends with
//! `test count=… loss=… accuracy=<R²>`.

use shoal::{Ctx, Error};
use train_kit::{Stats, Trainer};

use crate::format::{self, Params};

/// The magic that starts a checkpoint.
pub const CHECKPOINT_MAGIC: [u8; 4] = *b"LRC1";

/// Parameters, rounds completed and RNG state: enough to resume a run.
pub type Checkpoint = train_kit::Checkpoint<LinReg>;

/// The linear model's formats, as the driver needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinReg;

impl Trainer for LinReg {
    type Params = Params;
    const CHECKPOINT_MAGIC: [u8; 4] = CHECKPOINT_MAGIC;
    /// Stable: the loss's curvature is at most about 1 (see [`crate::model`]).
    const DEFAULT_LR: f32 = 1.0;

    fn encode_params(params: &Params) -> Result<Vec<u8>, Error> {
        params.encode()
    }

    fn decode_params(bytes: &[u8]) -> Result<Params, Error> {
        Params::decode(bytes)
    }

    fn values(params: &Params) -> &[f32] {
        &params.values
    }

    fn values_mut(params: &mut Params) -> &mut [f32] {
        &mut params.values
    }

    fn mismatch(params: &Params, result: &Params) -> Option<String> {
        (result.features() != params.features()).then(|| {
            format!(
                "returned {} features, the model has {}",
                result.features(),
                params.features()
            )
        })
    }

    fn decode_stats(bytes: &[u8]) -> Result<Stats, Error> {
        let stats = format::Stats::decode(bytes)?;
        Ok(Stats {
            count: stats.count,
            loss_sum: stats.loss_sum,
            accuracy: stats.r2(),
        })
    }
}

/// The `train` task; see the module docs and the table in the crate docs.
///
/// # Errors
/// Bad arguments or inputs (`mode=local` among them), a refused spawn, or the first subtask
/// failure, named by round, task and shard.
pub fn train(ctx: &mut Ctx) -> Result<(), Error> {
    train_kit::train::<LinReg>(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn checkpoints_are_lrc1() {
        let cp = Checkpoint {
            round: 3,
            seed: 5,
            rng: Rng::new(5).state(),
            params: Params {
                values: vec![0.5, 0.25],
            },
        };
        let bytes = cp.encode().unwrap();
        assert_eq!(&bytes[..8], b"LRC1\x03\x00\x00\x00");
        assert_eq!(&bytes[24..28], b"LRP1");
        assert_eq!(Checkpoint::decode(&bytes).unwrap(), cp);
        assert!(Checkpoint::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn eval_stats_report_r2_as_accuracy() {
        let eval = LinReg::decode_stats(b"count=4 loss_sum=1 sst=8 r2=0.75\n").unwrap();
        assert_eq!(eval.accuracy, Some(0.75));
        assert_eq!(eval.loss(), 0.25);
        let grad = LinReg::decode_stats(b"count=4 loss_sum=1\n").unwrap();
        assert_eq!(grad.accuracy, None);
    }
}
