//! The `train` driver: data-parallel training of the MLP across the mesh, one subtask of this
//! same module per training shard per round. The loop is `train_kit`'s ([`train_kit::driver`]:
//! sync and local mode, arguments, the subtask protocol); this module gives it the MLP's file
//! formats ([`Mlp`]).
//!
//! **Checkpoint** (`checkpoint` output, and each round's object): `train_kit`'s layout
//! ([`train_kit::checkpoint`]) with magic `MCK1`, little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `MCK1` |
//! | 4 | 4 | `round` (u32): rounds completed |
//! | 8 | 8 | `seed` (u64): the run's `seed` argument |
//! | 16 | 8 | `rng` (u64): the driver's [`Rng`](crate::rng::Rng) state after that round |
//! | 24 | … | the parameters, a whole parameter file (`MLP1`, see [`format`](mod@crate::format)) |
//!
//! Input `resume` (a checkpoint) starts from it: its parameters, at its round + 1, with its
//! RNG state, which draws each local-mode `step` subtask's seed.
//!
//! **Rounds.** Each round's line is sent as a progress record and kept in the `report`
//! output: UTF-8 `key=value` pairs ([`train_kit::report`] defines every field),
//!
//! `round=1 loss=2.30 accuracy=0.11 samples=1347 peers=3 seconds=0.041 transfer=0.004
//! compute=0.021 checkpoint=0.001 coordination=0.015 bytes=48216 combine=mean checkpoint_cid=…`
//!
//! where `loss` is the mean cross-entropy and `accuracy` the held-out fraction classified
//! right. The report ends with `test count=450 loss=0.21 accuracy=0.95` for the final
//! parameters.

use shoal::{Ctx, Error};
use train_kit::{LocalShards, Stats, Trainer};

use crate::format::{Params, SHARD_HEADER_LEN, SHARD_MAGIC};

/// The magic that starts a checkpoint.
pub const CHECKPOINT_MAGIC: [u8; 4] = *b"MCK1";

/// Parameters, rounds completed and RNG state: enough to resume a run (see the module docs).
pub type Checkpoint = train_kit::Checkpoint<Mlp>;

/// The MLP's formats, as the driver needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mlp;

impl Trainer for Mlp {
    type Params = Params;
    const CHECKPOINT_MAGIC: [u8; 4] = CHECKPOINT_MAGIC;
    const DEFAULT_LR: f32 = 0.5;

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
        (result.dims != params.dims)
            .then(|| format!("returned {:?}, the model is {:?}", result.dims, params.dims))
    }

    fn decode_stats(bytes: &[u8]) -> Result<Stats, Error> {
        let stats = crate::format::Stats::decode(bytes)?;
        Ok(Stats {
            count: stats.count,
            loss_sum: stats.loss_sum,
            accuracy: stats.accuracy(),
        })
    }

    fn local_shards() -> Option<LocalShards> {
        Some(LocalShards {
            header_len: SHARD_HEADER_LEN,
            rows: shard_rows,
        })
    }
}

/// A shard's row count, from its header.
///
/// # Errors
/// If the header is not a shard's.
pub fn shard_rows(header: &[u8]) -> Result<u64, Error> {
    if header.len() < SHARD_HEADER_LEN || header[..4] != SHARD_MAGIC {
        return Err(Error::msg("not a shard file (no `DSH1` header)"));
    }
    let mut rows = [0; 4];
    rows.copy_from_slice(&header[4..8]);
    Ok(u64::from(u32::from_le_bytes(rows)))
}

/// The `train` task; see the module docs and the table in the crate docs.
///
/// # Errors
/// Bad arguments or inputs, a refused spawn, or the first subtask failure, named by round,
/// task and shard.
pub fn train(ctx: &mut Ctx) -> Result<(), Error> {
    train_kit::train::<Mlp>(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{format::Dims, rng::Rng};

    #[test]
    fn checkpoint_round_trips_and_rejects_garbage() {
        let cp = Checkpoint {
            round: 7,
            seed: 42,
            rng: Rng::new(42).state(),
            params: Params::glorot(Dims::digits(3), 1),
        };
        let bytes = cp.encode().unwrap();
        assert_eq!(&bytes[..8], b"MCK1\x07\x00\x00\x00");
        assert_eq!(&bytes[8..16], &42u64.to_le_bytes());
        assert_eq!(&bytes[24..28], b"MLP1");
        assert_eq!(Checkpoint::decode(&bytes).unwrap(), cp);
        assert!(Checkpoint::decode(&bytes[..20]).is_err());
        assert!(Checkpoint::decode(&bytes[..bytes.len() - 1]).is_err());
        let err = Checkpoint::decode(b"MLP1xxxxxxxxxxxxxxxxxxxxxxxx").unwrap_err();
        assert_eq!(err.to_string(), "not a checkpoint (no `MCK1` header)");
    }

    #[test]
    fn shard_rows_reads_the_header() {
        let mut header = b"DSH1".to_vec();
        header.extend_from_slice(&449u32.to_le_bytes());
        header.extend_from_slice(&64u32.to_le_bytes());
        assert_eq!(shard_rows(&header).unwrap(), 449);
        assert!(shard_rows(b"MLP1\x01\x00\x00\x00\x40\x00\x00\x00").is_err());
        assert!(shard_rows(b"DSH1").is_err());
    }

    #[test]
    fn stats_keep_count_loss_and_accuracy() {
        let text = crate::format::Stats {
            count: 4,
            loss_sum: 1.0,
            correct: Some(3),
        }
        .encode();
        let stats = Mlp::decode_stats(text.as_bytes()).unwrap();
        assert_eq!(
            train_kit::report::test_line(&stats),
            "test count=4 loss=0.25 accuracy=0.75"
        );
        let grad = Mlp::decode_stats(b"count=2 loss_sum=1\n").unwrap();
        assert_eq!((grad.count, grad.accuracy), (2, None));
    }
}
