//! A tiny deterministic PRNG (xorshift64*), so that initialisation, splits and batch order
//! depend only on a seed and are the same natively and in wasm.

/// xorshift64*: small, fast, and good enough for shuffles and uniform initial weights.
/// Its whole state is one `u64` ([`Rng::state`]), so a checkpoint can carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator for `seed`; every seed, 0 included, gives a valid non-zero state.
    pub fn new(seed: u64) -> Self {
        // SplitMix64's finaliser spreads nearby seeds apart; `| 1` keeps the state non-zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self {
            state: (z ^ (z >> 31)) | 1,
        }
    }

    /// Resumes from a state saved with [`Rng::state`].
    pub fn from_state(state: u64) -> Self {
        Self { state: state | 1 }
    }

    /// The current state.
    pub fn state(&self) -> u64 {
        self.state
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`, from the top 24 bits (exact in f32).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `0..n` (`n > 0`); the bias of the modulo is below 2^-32 for any `n` we use.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_state_resumes() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let first: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        assert_eq!(first, (0..5).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(first[0], Rng::new(8).next_u64());
        let mut resumed = Rng::from_state(a.state());
        assert_eq!(resumed.next_u64(), a.next_u64());
    }

    #[test]
    fn floats_in_range_and_shuffle_is_a_permutation() {
        let mut rng = Rng::new(0);
        assert!(
            (0..1000)
                .map(|_| rng.next_f32())
                .all(|x| (0.0..1.0).contains(&x))
        );
        let mut v: Vec<usize> = (0..50).collect();
        rng.shuffle(&mut v);
        assert_ne!(v, (0..50).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..50).collect::<Vec<_>>());
    }
}
