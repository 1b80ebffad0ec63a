//! The data the benches store, move and multiply: pseudo-random, so that nothing on the way
//! (a filesystem, a transport) can compress it, and the same in every run.

// Each bench takes the part it needs.
#![allow(dead_code)]

/// An xorshift generator started at `seed` (not 0): its words after the seed.
fn xorshift(seed: u64) -> impl Iterator<Item = u64> {
    std::iter::successors(Some(seed), |&s| {
        let s = s ^ (s << 13);
        let s = s ^ (s >> 7);
        Some(s ^ (s << 17))
    })
    .skip(1)
}

/// `len` bytes (a multiple of 8) from an xorshift generator started at `seed`.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    xorshift(seed)
        .take(len / 8)
        .flat_map(u64::to_le_bytes)
        .collect()
}

/// `len` values in [-1, 1) from an xorshift generator started at `seed`: tensor operands.
pub fn pseudo_random_f32(len: usize, seed: u64) -> Vec<f32> {
    xorshift(seed)
        .take(len)
        .map(|s| (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        .collect()
}
