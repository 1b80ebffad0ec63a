//! `C = A × B` for square f32 matrices, computed by the host through [`shoal::Tensor`]: the
//! same task as `matmul-wasm` (same arguments, inputs, seeded matrices and output), with the
//! product on the node's GPU or native CPU kernels instead of in wasm.
//!
//! Inputs `a` and `b` (optional): `n × n` f32 little-endian, row-major. Without them the
//! task makes its own deterministic matrices from `--arg seed=S`. Argument `n` (default 256).
//! Argument `reps` (default 1) repeats the product on the resident tensors, for benchmarks.
//! Output `c`: the product in the same format.

use shoal::{Ctx, Error, Tensor, log};

/// A deterministic pseudo-random matrix in [-1, 1): the same generator as `matmul-wasm`.
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

/// `A × B` on the host, `reps` times over the same resident tensors (the steady state of a
/// training loop, which keeps its weights on the device); returns the last product.
pub fn host_matmul(a: &[f32], b: &[f32], n: usize, reps: u32) -> Result<Vec<f32>, Error> {
    let a = Tensor::from_slice(n, n, a)?;
    let b = Tensor::from_slice(n, n, b)?;
    let mut c = a.matmul(&b)?;
    for _ in 1..reps {
        // Assigning frees the previous product's host tensor.
        c = a.matmul(&b)?;
    }
    c.to_vec()
}

/// Multiplies two `n × n` matrices on the host.
#[shoal::task]
fn matmul(ctx: &mut Ctx) -> Result<(), Error> {
    let n: usize = ctx.arg_or("n", 256)?;
    let seed: u64 = ctx.arg_or("seed", 1)?;
    let reps: u32 = ctx.arg_or("reps", 1)?;
    if reps == 0 {
        return Err(Error::msg("argument `reps` must be at least 1"));
    }
    let names = ctx.input_names();
    let (a, b) = if names.iter().any(|x| x == "a") {
        (read_matrix(ctx, "a", n)?, read_matrix(ctx, "b", n)?)
    } else {
        (seeded_matrix(n, seed), seeded_matrix(n, seed + 1))
    };
    let c = host_matmul(&a, &b, n, reps)?;
    let bytes: Vec<u8> = c.iter().flat_map(|x| x.to_le_bytes()).collect();
    let trace: f64 = (0..n).map(|i| f64::from(c[i * n + i])).sum();
    let cid = ctx.output("c", &bytes)?;
    log!("{n}x{n} matmul on the host: trace {trace:.4}, output {cid}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_naive_f64_product_natively() {
        let n = 37;
        let (a, b) = (seeded_matrix(n, 3), seeded_matrix(n, 4));
        let c = host_matmul(&a, &b, n, 2).expect("native tensors");
        for (i, j) in [(0, 0), (13, 36), (36, 5)] {
            let want: f64 = (0..n)
                .map(|k| f64::from(a[i * n + k]) * f64::from(b[k * n + j]))
                .sum();
            assert!((f64::from(c[i * n + j]) - want).abs() < 1e-4);
        }
    }

    #[test]
    fn runs_as_a_task_natively() {
        let run = shoal::testing::NativeHost::new()
            .arg("n", "8")
            .run(matmul)
            .expect("task runs");
        assert_eq!(run.output("c").map(<[u8]>::len), Some(8 * 8 * 4));
    }
}
