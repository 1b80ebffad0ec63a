//! The bytes the benches store and move: pseudo-random, so that nothing on the way (a
//! filesystem, a transport) can compress them, and the same in every run.

/// `len` bytes (a multiple of 8) from an xorshift generator started at `seed`.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..len / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect()
}
