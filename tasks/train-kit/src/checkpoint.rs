//! Checkpoints: enough to resume a run. One layout for every trainer, each behind its own
//! magic ([`Trainer::CHECKPOINT_MAGIC`]), little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | the trainer's magic (`MCK1` for mlp-digits, `LRC1` for linreg) |
//! | 4 | 4 | `round` (u32): rounds completed |
//! | 8 | 8 | `seed` (u64): the run's `seed` argument |
//! | 16 | 8 | `rng` (u64): the driver's [`Rng`](crate::Rng) state after that round |
//! | 24 | … | the parameters, a whole parameter file in the trainer's format |
//!
//! Plain SGD keeps no optimizer state, so there is none to store. The driver's RNG draws each
//! local-mode `step` subtask's seed (one draw per shard per round, in shard order), so
//! resuming from `rng` replays the same seeds; a sync-only run never draws from it.

use std::fmt;

use shoal::Error;

use crate::Trainer;

/// Bytes before a checkpoint's parameter file.
pub const CHECKPOINT_HEADER_LEN: usize = 24;

/// Parameters, rounds completed and RNG state of a run of trainer `T` (see the module docs).
pub struct Checkpoint<T: Trainer> {
    /// Rounds completed.
    pub round: u32,
    /// The run's `seed` argument.
    pub seed: u64,
    /// The driver's RNG state after `round`.
    pub rng: u64,
    /// The parameters after `round`.
    pub params: T::Params,
}

// By hand: derives would ask `T` itself, a marker type, for the traits.
impl<T: Trainer> Clone for Checkpoint<T> {
    fn clone(&self) -> Self {
        Self {
            params: self.params.clone(),
            ..*self
        }
    }
}

impl<T: Trainer> fmt::Debug for Checkpoint<T>
where
    T::Params: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("round", &self.round)
            .field("seed", &self.seed)
            .field("rng", &self.rng)
            .field("params", &self.params)
            .finish()
    }
}

impl<T: Trainer> PartialEq for Checkpoint<T>
where
    T::Params: PartialEq,
{
    fn eq(&self, other: &Self) -> bool {
        (self.round, self.seed, self.rng) == (other.round, other.seed, other.rng)
            && self.params == other.params
    }
}

impl<T: Trainer> Checkpoint<T> {
    /// The checkpoint's bytes.
    ///
    /// # Errors
    /// As [`Trainer::encode_params`].
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let params = T::encode_params(&self.params)?;
        let mut out = Vec::with_capacity(CHECKPOINT_HEADER_LEN + params.len());
        out.extend_from_slice(&T::CHECKPOINT_MAGIC);
        out.extend_from_slice(&self.round.to_le_bytes());
        out.extend_from_slice(&self.seed.to_le_bytes());
        out.extend_from_slice(&self.rng.to_le_bytes());
        out.extend_from_slice(&params);
        Ok(out)
    }

    /// Reads a checkpoint.
    ///
    /// # Errors
    /// A wrong magic, a short header, or a bad parameter file.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() < CHECKPOINT_HEADER_LEN || bytes[..4] != T::CHECKPOINT_MAGIC {
            return Err(Error::msg(format!(
                "not a checkpoint (no `{}` header)",
                String::from_utf8_lossy(&T::CHECKPOINT_MAGIC)
            )));
        }
        let u64_at = |at: usize| {
            let mut word = [0; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(word)
        };
        let mut round = [0; 4];
        round.copy_from_slice(&bytes[4..8]);
        Ok(Self {
            round: u32::from_le_bytes(round),
            seed: u64_at(8),
            rng: u64_at(16),
            params: T::decode_params(&bytes[CHECKPOINT_HEADER_LEN..])
                .map_err(|e| Error::msg(format!("checkpoint: {e}")))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Rng, Stats};

    /// A trainer whose parameters are a count-prefixed list of floats.
    struct Floats;

    impl Trainer for Floats {
        type Params = Vec<f32>;
        const CHECKPOINT_MAGIC: [u8; 4] = *b"TST1";
        const DEFAULT_LR: f32 = 0.1;

        fn encode_params(params: &Vec<f32>) -> Result<Vec<u8>, Error> {
            let mut out = (params.len() as u32).to_le_bytes().to_vec();
            out.extend(params.iter().flat_map(|v| v.to_le_bytes()));
            Ok(out)
        }

        fn decode_params(bytes: &[u8]) -> Result<Vec<f32>, Error> {
            let (len, body) = bytes.split_at_checked(4).ok_or(Error::msg("short"))?;
            let len = u32::from_le_bytes(len.try_into().map_err(|_| Error::msg("short"))?);
            if body.len() != 4 * len as usize {
                return Err(Error::msg("bad length"));
            }
            Ok(body
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        }

        fn values(params: &Vec<f32>) -> &[f32] {
            params
        }

        fn values_mut(params: &mut Vec<f32>) -> &mut [f32] {
            params
        }

        fn mismatch(params: &Vec<f32>, result: &Vec<f32>) -> Option<String> {
            (params.len() != result.len()).then(|| "wrong length".to_owned())
        }

        fn decode_stats(_: &[u8]) -> Result<Stats, Error> {
            Ok(Stats::default())
        }
    }

    #[test]
    fn checkpoint_round_trips_behind_the_trainers_magic() {
        let cp = Checkpoint::<Floats> {
            round: 7,
            seed: 42,
            rng: Rng::new(42).state(),
            params: vec![1.5, -2.0],
        };
        let bytes = cp.encode().unwrap();
        assert_eq!(&bytes[..8], b"TST1\x07\x00\x00\x00");
        assert_eq!(&bytes[8..16], &42u64.to_le_bytes());
        assert_eq!(&bytes[16..24], &cp.rng.to_le_bytes());
        assert_eq!(&bytes[24..28], &2u32.to_le_bytes());
        assert_eq!(Checkpoint::<Floats>::decode(&bytes).unwrap(), cp.clone());
        let err = Checkpoint::<Floats>::decode(b"MCK1xxxxxxxxxxxxxxxxxxxxxxxx").unwrap_err();
        assert_eq!(err.to_string(), "not a checkpoint (no `TST1` header)");
        assert!(Checkpoint::<Floats>::decode(&bytes[..20]).is_err());
        let err = Checkpoint::<Floats>::decode(&bytes[..bytes.len() - 1]).unwrap_err();
        assert_eq!(err.to_string(), "checkpoint: bad length");
    }
}
