//! `C = A × B` for square f32 matrices, computed inside wasm: the baseline that the host's
//! compute path must beat.
//!
//! Inputs `a` and `b` (optional): `n × n` f32 little-endian, row-major. Without them the
//! task makes its own deterministic matrices from `--arg seed=S`. Argument `n` (default 256).
//! Output `c`: the product in the same format.

use shoal::{Ctx, Error, log};

/// A deterministic pseudo-random matrix in [-1, 1).
pub fn seeded_matrix(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n * n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Blocked i-k-j matmul: the inner loop runs along contiguous rows of B and C.
pub fn matmul(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    const BLOCK: usize = 64;
    let mut c = vec![0f32; n * n];
    for kk in (0..n).step_by(BLOCK) {
        let k_end = (kk + BLOCK).min(n);
        for i in 0..n {
            let c_row = &mut c[i * n..(i + 1) * n];
            for k in kk..k_end {
                let aik = a[i * n + k];
                let b_row = &b[k * n..(k + 1) * n];
                for (cj, bj) in c_row.iter_mut().zip(b_row) {
                    *cj += aik * bj;
                }
            }
        }
    }
    c
}

fn read_matrix(ctx: &Ctx, name: &str, n: usize) -> Result<Vec<f32>, Error> {
    let bytes = ctx.input(name)?;
    if bytes.len() != n * n * 4 {
        return Err(Error::msg(format!(
            "input `{name}` has {} bytes, expected {n}×{n} f32",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Multiplies two `n × n` matrices in wasm.
#[shoal::task]
fn matmul_wasm(ctx: &mut Ctx) -> Result<(), Error> {
    let n: usize = ctx.arg_or("n", 256)?;
    let seed: u64 = ctx.arg_or("seed", 1)?;
    let names = ctx.input_names();
    let (a, b) = if names.iter().any(|x| x == "a") {
        (read_matrix(ctx, "a", n)?, read_matrix(ctx, "b", n)?)
    } else {
        (seeded_matrix(n, seed), seeded_matrix(n, seed + 1))
    };
    let c = matmul(&a, &b, n);
    let bytes: Vec<u8> = c.iter().flat_map(|x| x.to_le_bytes()).collect();
    let trace: f64 = (0..n).map(|i| f64::from(c[i * n + i])).sum();
    let cid = ctx.output("c", &bytes)?;
    log!("{n}x{n} matmul in wasm: trace {trace:.4}, output {cid}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_naive_f64_product() {
        let n = 67;
        let (a, b) = (seeded_matrix(n, 3), seeded_matrix(n, 4));
        let c = matmul(&a, &b, n);
        for (i, j) in [(0, 0), (13, 66), (66, 5)] {
            let want: f64 = (0..n)
                .map(|k| f64::from(a[i * n + k]) * f64::from(b[k * n + j]))
                .sum();
            assert!((f64::from(c[i * n + j]) - want).abs() < 1e-4);
        }
    }
}
