//! The synthetic data: rows `x ~ U(-1, 1)^features` and targets `y = x·w* + b* + noise·z`
//! with `z ~ N(0, 1)`, all drawn from one seeded stream, so a seed names one data set.
//!
//! The stream's order: `w*` (`features` draws of `U(-1, 1)`), then `b*` (one more), then row
//! after row, each its `features` values and then its noise. `split` takes the `test` rows
//! first and then the training rows, cut into contiguous shards; so the training rows do not
//! depend on the number of shards, and N shards hold exactly the rows of 1.
//!
//! Every draw is exact arithmetic on the PRNG's bits, `y` is summed in f64 in feature order,
//! and the normal draw uses `libm`'s portable `log` and `cos`: the same seed gives the same
//! bytes natively and in wasm, on every host.

use shoal::Error;
use train_kit::Rng;

use crate::format::Shard;

/// Rows of each shard when `rows` are split `shards` ways as evenly as possible: the first
/// `rows % shards` shards have one row more.
pub fn shard_sizes(rows: usize, shards: usize) -> Vec<usize> {
    let (base, extra) = (rows / shards.max(1), rows % shards.max(1));
    (0..shards).map(|i| base + usize::from(i < extra)).collect()
}

/// `U(-1, 1)` from 24 random bits: exact in f32.
fn uniform(rng: &mut Rng) -> f32 {
    2.0 * rng.next_f32() - 1.0
}

/// A standard normal draw (Box–Muller, the cosine half).
fn normal(rng: &mut Rng) -> f64 {
    let scale = 1.0 / (1u64 << 53) as f64;
    // In (0, 1], so the logarithm is finite.
    let u1 = ((rng.next_u64() >> 11) + 1) as f64 * scale;
    let u2 = (rng.next_u64() >> 11) as f64 * scale;
    libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(2.0 * std::f64::consts::PI * u2)
}

/// The data set's stream: the true parameters, then rows on demand.
#[derive(Debug)]
pub struct Generator {
    rng: Rng,
    w: Vec<f32>,
    b: f32,
    noise: f64,
}

impl Generator {
    /// The data set of `seed` with `features` features and noise scale `noise`; draws
    /// `w*` and `b*`.
    pub fn new(seed: u64, features: usize, noise: f32) -> Self {
        let mut rng = Rng::new(seed);
        let w = (0..features).map(|_| uniform(&mut rng)).collect();
        let b = uniform(&mut rng);
        Self {
            rng,
            w,
            b,
            noise: f64::from(noise),
        }
    }

    /// The true weights `w*`.
    pub fn w(&self) -> &[f32] {
        &self.w
    }

    /// The true bias `b*`.
    pub fn b(&self) -> f32 {
        self.b
    }

    /// The stream's next `rows` rows, as a shard file (see [`format`](mod@crate::format)),
    /// written in place.
    ///
    /// # Errors
    /// As [`Shard::zeroed_file`].
    pub fn next_shard(&mut self, rows: usize) -> Result<Vec<u8>, Error> {
        let features = self.w.len();
        let (mut file, x_at, y_at) = Shard::zeroed_file(rows, features)?;
        let (head, ys) = file.split_at_mut(y_at);
        let xs = &mut head[x_at..];
        for (x_row, y) in xs
            .chunks_exact_mut(4 * features)
            .zip(ys.chunks_exact_mut(4))
        {
            let mut dot = 0f64;
            for (x, w) in x_row.chunks_exact_mut(4).zip(&self.w) {
                let v = uniform(&mut self.rng);
                dot += f64::from(v) * f64::from(*w);
                x.copy_from_slice(&v.to_le_bytes());
            }
            let target = dot + f64::from(self.b) + self.noise * normal(&mut self.rng);
            y.copy_from_slice(&(target as f32).to_le_bytes());
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_as_even_as_possible() {
        assert_eq!(shard_sizes(10, 3), vec![4, 3, 3]);
        assert_eq!(shard_sizes(9, 3), vec![3, 3, 3]);
        assert_eq!(shard_sizes(2, 2), vec![1, 1]);
        assert_eq!(shard_sizes(60000, 7).iter().sum::<usize>(), 60000);
    }

    #[test]
    fn rows_follow_the_model_and_the_noise_is_standard_normal() {
        let mut g = Generator::new(3, 4, 0.0);
        let shard = Shard::decode(&g.next_shard(100).unwrap()).unwrap();
        assert!(shard.x.iter().all(|v| (-1.0..1.0).contains(v)));
        for (row, y) in shard.x.chunks_exact(4).zip(&shard.y) {
            let want: f32 = row.iter().zip(g.w()).map(|(x, w)| x * w).sum::<f32>() + g.b();
            assert!((want - y).abs() < 1e-5, "{want} vs {y}");
        }
        let mut rng = Rng::new(1);
        let z: Vec<f64> = (0..20_000).map(|_| normal(&mut rng)).collect();
        let mean = z.iter().sum::<f64>() / z.len() as f64;
        let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / z.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}
