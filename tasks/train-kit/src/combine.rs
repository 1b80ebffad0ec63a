//! Combining the shards' results: a weighted mean, three robust aggregators, and the SGD step.
//! The vectors are a model's parameters (thousands to a few hundred thousand floats), so
//! plain Rust in the driver is fast enough, and accumulating in f64 in shard order keeps a run
//! deterministic.
//!
//! [`Combine`] is the `train` driver's `combine` argument:
//!
//! - `mean` ([`weighted_mean`]): `Σ w_j · x_j / Σ w_j`. One part scaled ×−100 moves it
//!   anywhere: a single lying worker controls the result.
//! - `median` ([`median`]): the coordinate-wise median.
//! - `trimmed` ([`trimmed_mean`]): per coordinate, drop the `trim` fraction (default 0.2) of
//!   the parts from each end, at least one each side from 3 parts on, and average the rest.
//! - `centered_clip` ([`centered_clip`]): CenteredClip (Karimireddy, He and Jaggi, *Learning
//!   from History for Byzantine Robust Optimization*, ICML 2021): from the coordinate-wise
//!   median `v`, `iters` times `v ← v + Σ_j clip_τ(x_j − v) / n`, where `clip_τ(d)` scales
//!   `d` down to L2 norm `τ` when it is longer. `τ` (`tau`) defaults to the median of
//!   `‖x_j − median‖`, so at least half the parts are not clipped in the first iteration.
//!
//! The robust combines give **every part one vote** and ignore the weights (they still must
//! not sum to zero): in sync mode a part's weight is its worker's own claim (its `stats`
//! count), and a liar would claim a huge one. With the near-equal shards `split` makes, that
//! is the weighted mean's result up to the shards' size differences. Each one bounds how far a
//! minority of arbitrary parts (any values, NaN and infinities included) can move the result:
//! the median and the trimmed mean stay within the honest parts' range on every coordinate
//! while the liars are fewer than half (median) or than the trimmed count (trimmed); a
//! CenteredClip iteration moves by at most `τ · liars / n` towards them. None of them can
//! tell a liar whose gradient looks like an honest one (small, plausible, wrong) from an
//! honest worker.

use std::fmt;

use shoal::Error;

/// How the driver combines a round's parts (gradients in sync mode, parameters in local
/// mode); see the module docs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Combine {
    /// The weighted mean.
    Mean,
    /// The coordinate-wise median.
    Median,
    /// The coordinate-wise trimmed mean.
    Trimmed {
        /// The fraction of the parts dropped from each end, in `[0, 0.5)`.
        trim: f64,
    },
    /// CenteredClip from the coordinate-wise median.
    CenteredClip {
        /// The clip radius; `None`: the median of the parts' distances to the median.
        tau: Option<f64>,
        /// Iterations.
        iters: u32,
    },
}

/// `trim` when the argument is not given.
pub const DEFAULT_TRIM: f64 = 0.2;
/// CenteredClip's iterations when `clip_iters` is not given.
pub const DEFAULT_CLIP_ITERS: u32 = 3;
/// The most CenteredClip iterations accepted.
pub const MAX_CLIP_ITERS: u32 = 100;

impl Combine {
    /// Reads the combine from the driver's arguments: `combine` (`mean`, `median`,
    /// `trimmed`, `centered_clip`; default `mean`), `trim` (0.2), `tau` (the median distance)
    /// and `clip_iters` (3). `arg` looks an argument up.
    ///
    /// # Errors
    /// An unknown combine, a value that does not parse or is out of range, or an argument
    /// that belongs to another combine.
    pub fn from_args<'a>(arg: impl Fn(&str) -> Option<&'a str>) -> Result<Self, Error> {
        fn parse<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, Error>
        where
            T::Err: fmt::Display,
        {
            v.parse()
                .map_err(|e| Error::msg(format!("argument `{key}={v}`: {e}")))
        }
        let combine = match arg("combine").unwrap_or("mean") {
            "mean" => Self::Mean,
            "median" => Self::Median,
            "trimmed" => {
                let trim = match arg("trim") {
                    Some(v) => parse("trim", v)?,
                    None => DEFAULT_TRIM,
                };
                if !(0.0..0.5).contains(&trim) {
                    return Err(Error::msg(format!("trim={trim}: expected 0 ≤ trim < 0.5")));
                }
                Self::Trimmed { trim }
            }
            "centered_clip" => {
                let tau: Option<f64> = arg("tau").map(|v| parse("tau", v)).transpose()?;
                if let Some(tau) = tau.filter(|t| !(t.is_finite() && *t > 0.0)) {
                    return Err(Error::msg(format!("tau={tau}: expected a positive number")));
                }
                let iters = match arg("clip_iters") {
                    Some(v) => parse("clip_iters", v)?,
                    None => DEFAULT_CLIP_ITERS,
                };
                if !(1..=MAX_CLIP_ITERS).contains(&iters) {
                    return Err(Error::msg(format!(
                        "clip_iters={iters}: expected 1 to {MAX_CLIP_ITERS}"
                    )));
                }
                Self::CenteredClip { tau, iters }
            }
            other => {
                return Err(Error::msg(format!(
                    "combine={other}: expected `mean`, `median`, `trimmed` or `centered_clip`"
                )));
            }
        };
        let stray = match combine {
            Self::Trimmed { .. } => ["tau", "clip_iters"].as_slice(),
            Self::CenteredClip { .. } => &["trim"],
            Self::Mean | Self::Median => &["trim", "tau", "clip_iters"],
        };
        if let Some(key) = stray.iter().find(|k| arg(k).is_some()) {
            return Err(Error::msg(format!(
                "argument `{key}` does not apply to combine={}",
                combine.name()
            )));
        }
        Ok(combine)
    }

    /// The `combine` argument's value that selects this.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::Median => "median",
            Self::Trimmed { .. } => "trimmed",
            Self::CenteredClip { .. } => "centered_clip",
        }
    }

    /// Combines `parts` (weight, values); see the module docs.
    ///
    /// # Errors
    /// No parts, a zero total weight, or parts of different lengths.
    pub fn combine(&self, parts: &[(u64, &[f32])]) -> Result<Vec<f32>, Error> {
        match *self {
            Self::Mean => weighted_mean(parts),
            Self::Median => median(parts),
            Self::Trimmed { trim } => trimmed_mean(parts, trim),
            Self::CenteredClip { tau, iters } => centered_clip(parts, tau, iters),
        }
    }
}

impl fmt::Display for Combine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mean | Self::Median => f.write_str(self.name()),
            Self::Trimmed { trim } => write!(f, "trimmed (trim {trim})"),
            Self::CenteredClip {
                tau: Some(tau),
                iters,
            } => write!(f, "centered_clip (tau {tau}, {iters} iterations)"),
            Self::CenteredClip { tau: None, iters } => {
                write!(
                    f,
                    "centered_clip (tau: median distance, {iters} iterations)"
                )
            }
        }
    }
}

/// Checks what every combine needs: at least one part, a nonzero total weight, one length.
/// Returns that length.
fn check(parts: &[(u64, &[f32])]) -> Result<usize, Error> {
    let Some((_, first)) = parts.first() else {
        return Err(Error::msg("nothing to combine"));
    };
    if parts.iter().all(|(w, _)| *w == 0) {
        return Err(Error::msg("the weights sum to zero"));
    }
    if let Some((_, bad)) = parts.iter().find(|(_, v)| v.len() != first.len()) {
        return Err(Error::msg(format!(
            "cannot combine {} values with {}",
            bad.len(),
            first.len()
        )));
    }
    Ok(first.len())
}

/// `Σ w_j · v_j / Σ w_j`, element-wise, accumulated in f64 in the order given so that the
/// result depends only on the inputs and their order.
///
/// # Errors
/// No parts, a zero total weight, or parts of different lengths.
pub fn weighted_mean(parts: &[(u64, &[f32])]) -> Result<Vec<f32>, Error> {
    let len = check(parts)?;
    let total: f64 = parts.iter().map(|(w, _)| *w as f64).sum();
    let mut sum = vec![0f64; len];
    for (w, values) in parts {
        let w = *w as f64;
        for (s, v) in sum.iter_mut().zip(values.iter()) {
            *s += w * f64::from(*v);
        }
    }
    Ok(sum.into_iter().map(|s| (s / total) as f32).collect())
}

/// Calls `f(i, column)` for each coordinate `i` with that coordinate's values over the parts,
/// sorted by [`f64::total_cmp`] (NaNs at the ends: negative ones first, positive ones last).
fn sorted_columns(parts: &[(u64, &[f32])], len: usize, mut f: impl FnMut(usize, &[f64])) {
    let mut column = vec![0f64; parts.len()];
    for i in 0..len {
        for (c, (_, values)) in column.iter_mut().zip(parts) {
            *c = f64::from(values[i]);
        }
        column.sort_unstable_by(f64::total_cmp);
        f(i, &column);
    }
}

/// The median of sorted values: the middle one, or the mean of the middle two.
fn middle(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// The coordinate-wise median in f64, every part one vote (the mean of the middle two for an
/// even count).
fn median_f64(parts: &[(u64, &[f32])], len: usize) -> Vec<f64> {
    let mut out = vec![0f64; len];
    sorted_columns(parts, len, |i, column| out[i] = middle(column));
    out
}

/// The coordinate-wise median, every part one vote (the weights are only checked); for an
/// even count the mean of the middle two.
///
/// # Errors
/// As [`weighted_mean`].
pub fn median(parts: &[(u64, &[f32])]) -> Result<Vec<f32>, Error> {
    let len = check(parts)?;
    Ok(median_f64(parts, len)
        .into_iter()
        .map(|v| v as f32)
        .collect())
}

/// How many parts [`trimmed_mean`] drops from each end of `n`: `⌊trim · n⌋`, at least 1 from
/// 3 parts on, and always leaving at least one part.
pub fn trimmed_count(n: usize, trim: f64) -> usize {
    let k = (trim.clamp(0.0, 0.5) * n as f64).floor() as usize;
    let k = if n >= 3 { k.max(1) } else { k };
    k.min(n.saturating_sub(1) / 2)
}

/// The coordinate-wise trimmed mean: per coordinate, the parts' values sorted, the
/// [`trimmed_count`] lowest and highest dropped and the rest averaged in f64, every part one
/// vote (the weights are only checked).
///
/// # Errors
/// As [`weighted_mean`].
pub fn trimmed_mean(parts: &[(u64, &[f32])], trim: f64) -> Result<Vec<f32>, Error> {
    let len = check(parts)?;
    let k = trimmed_count(parts.len(), trim);
    let mut out = vec![0f32; len];
    sorted_columns(parts, len, |i, column| {
        let kept = &column[k..column.len() - k];
        out[i] = (kept.iter().sum::<f64>() / kept.len() as f64) as f32;
    });
    Ok(out)
}

/// CenteredClip: from the coordinate-wise median `v` (f64), `iters` times
/// `v ← v + Σ_j c_j · (x_j − v) / n` with `c_j = min(1, τ / ‖x_j − v‖)`, every part one vote
/// (the weights are only checked). `tau` `None` takes the median over the parts of
/// `‖x_j − median‖`. A part whose distance is not finite (NaN or infinite values) pulls with
/// `c_j = 0`: it has no direction to clip.
///
/// # Errors
/// As [`weighted_mean`].
pub fn centered_clip(
    parts: &[(u64, &[f32])],
    tau: Option<f64>,
    iters: u32,
) -> Result<Vec<f32>, Error> {
    let len = check(parts)?;
    let mut v = median_f64(parts, len);
    let distances = |v: &[f64]| -> Vec<f64> {
        parts
            .iter()
            .map(|(_, x)| {
                x.iter()
                    .zip(v)
                    .map(|(x, v)| (f64::from(*x) - v).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .collect()
    };
    let tau = match tau {
        Some(tau) => tau,
        None => {
            // A NaN distance sorts as the farthest, whatever its sign bit.
            let mut d: Vec<f64> = distances(&v)
                .into_iter()
                .map(|d| if d.is_nan() { f64::INFINITY } else { d })
                .collect();
            d.sort_unstable_by(f64::total_cmp);
            middle(&d)
        }
    };
    let n = parts.len() as f64;
    let mut step = vec![0f64; len];
    for _ in 0..iters {
        step.iter_mut().for_each(|s| *s = 0.0);
        for ((_, x), d) in parts.iter().zip(distances(&v)) {
            let c = if !d.is_finite() {
                0.0
            } else if d <= tau {
                1.0
            } else {
                tau / d
            };
            if c == 0.0 {
                continue;
            }
            for ((s, x), v) in step.iter_mut().zip(x.iter()).zip(&v) {
                *s += c * (f64::from(*x) - v);
            }
        }
        for (v, s) in v.iter_mut().zip(&step) {
            *v += s / n;
        }
    }
    Ok(v.into_iter().map(|v| v as f32).collect())
}

/// One SGD step in place: `params -= lr · grad`.
pub fn sgd_update(params: &mut [f32], grad: &[f32], lr: f32) {
    for (p, g) in params.iter_mut().zip(grad) {
        *p -= lr * g;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::Rng;

    const ROBUST: [Combine; 3] = [
        Combine::Median,
        Combine::Trimmed { trim: DEFAULT_TRIM },
        Combine::CenteredClip {
            tau: None,
            iters: DEFAULT_CLIP_ITERS,
        },
    ];

    /// `n` honest parts of `len` values: a shared signal in ±1 plus per-part noise in
    /// ±`noise`, from `seed`.
    fn honest(n: usize, len: usize, noise: f32, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = Rng::new(seed);
        let signal: Vec<f32> = (0..len).map(|_| 2.0 * rng.next_f32() - 1.0).collect();
        (0..n)
            .map(|_| {
                signal
                    .iter()
                    .map(|s| s + noise * (2.0 * rng.next_f32() - 1.0))
                    .collect()
            })
            .collect()
    }

    fn weighted(parts: &[Vec<f32>]) -> Vec<(u64, &[f32])> {
        parts.iter().map(|p| (1, p.as_slice())).collect()
    }

    /// `max |a − b|`, NaN if any difference is.
    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0f32, |m, (a, b)| {
            let d = (a - b).abs();
            if d.is_nan() || d > m { d } else { m }
        })
    }

    fn all() -> impl Iterator<Item = Combine> {
        std::iter::once(Combine::Mean).chain(ROBUST)
    }

    #[test]
    fn weighted_mean_weights_and_is_exact_for_one_part() {
        let a = [1.0f32, 2.0, -3.0];
        let b = [3.0f32, 0.0, 1.0];
        let mean = weighted_mean(&[(1, &a), (3, &b)]).unwrap();
        assert_eq!(mean, vec![2.5, 0.5, 0.0]);
        let odd = [0.1f32, 1e-7, 12345.678];
        assert_eq!(weighted_mean(&[(449, &odd)]).unwrap(), odd.to_vec());
        assert!(weighted_mean(&[]).is_err());
        assert!(weighted_mean(&[(0, &a)]).is_err());
        assert!(weighted_mean(&[(1, &a), (1, &a[..2])]).is_err());
    }

    #[test]
    fn every_combine_checks_its_parts_and_returns_one_part_unchanged() {
        let a = [1.0f32, 2.0, -3.0];
        let odd = [0.1f32, 1e-7, 12345.678];
        for c in all() {
            assert_eq!(c.combine(&[(449, &odd)]).unwrap(), odd.to_vec(), "{c}");
            assert!(c.combine(&[]).is_err(), "{c}");
            assert!(c.combine(&[(0, &a), (0, &a)]).is_err(), "{c}");
            assert!(c.combine(&[(1, &a), (1, &a[..2])]).is_err(), "{c}");
            let same = c.combine(&[(1, &a), (5, &a), (2, &a)]).unwrap();
            assert_eq!(same, a.to_vec(), "{c}: identical parts");
        }
    }

    #[test]
    fn robust_combines_are_the_order_statistics_they_claim() {
        let parts: [&[f32]; 5] = [
            &[5.0, -1.0],
            &[1.0, 0.0],
            &[2.0, 9.0],
            &[4.0, 1.0],
            &[3.0, 2.0],
        ];
        let parts: Vec<(u64, &[f32])> = parts.iter().map(|p| (1, *p)).collect();
        assert_eq!(median(&parts).unwrap(), vec![3.0, 1.0]);
        assert_eq!(median(&parts[..4]).unwrap(), vec![3.0, 0.5]);
        // 5 parts, trim 0.2: one from each end.
        assert_eq!(trimmed_mean(&parts, 0.2).unwrap(), vec![3.0, 1.0]);
        assert_eq!(trimmed_mean(&parts, 0.0).unwrap(), vec![3.0, 1.0]);
        assert_eq!(trimmed_mean(&parts[1..4], 0.0).unwrap(), vec![2.0, 1.0]);
        assert_eq!(trimmed_mean(&parts[..2], 0.4).unwrap(), vec![3.0, -0.5]);
        // The weights are every part's own claim: the robust combines ignore them.
        let heavy: Vec<(u64, &[f32])> = parts
            .iter()
            .enumerate()
            .map(|(i, (_, p))| (if i == 2 { 1 << 40 } else { 1 }, *p))
            .collect();
        for c in ROBUST {
            assert_eq!(
                c.combine(&heavy).unwrap(),
                c.combine(&parts).unwrap(),
                "{c}"
            );
        }
        // The trimmed counts: ⌊trim·n⌋, at least 1 each side from 3 parts, one part kept.
        let counts: Vec<usize> = [1, 2, 3, 4, 5, 10, 16]
            .map(|n| trimmed_count(n, 0.2))
            .to_vec();
        assert_eq!(counts, [0, 0, 1, 1, 1, 2, 3]);
        assert_eq!(trimmed_count(16, 0.49), 7);
        assert_eq!(trimmed_count(4, 0.0), 1);
    }

    /// Without outliers the robust combines land on the mean: exactly for symmetric parts,
    /// and within the parts' noise for random ones.
    #[test]
    fn robust_combines_equal_the_mean_without_outliers() {
        let symmetric = [
            vec![1.0f32, -2.0, 0.5],
            vec![0.0, -1.0, 0.25],
            vec![2.0, -3.0, 0.75],
        ];
        let mean = weighted_mean(&weighted(&symmetric)).unwrap();
        for c in ROBUST {
            assert_eq!(c.combine(&weighted(&symmetric)).unwrap(), mean, "{c}");
        }
        for (n, seed) in [(3, 1), (5, 2), (16, 3)] {
            let noise = 0.01;
            let parts = honest(n, 4_810, noise, seed);
            let mean = weighted_mean(&weighted(&parts)).unwrap();
            for c in ROBUST {
                let got = c.combine(&weighted(&parts)).unwrap();
                let diff = max_diff(&got, &mean);
                assert!(diff < noise, "{c}, {n} parts: max |Δ| {diff} from the mean");
            }
            // CenteredClip with a radius no part exceeds is the mean after one iteration
            // (up to rounding).
            let cc = centered_clip(&weighted(&parts), Some(1e9), 1).unwrap();
            assert!(max_diff(&cc, &mean) < 1e-6, "{}", max_diff(&cc, &mean));
        }
    }

    /// One part of five scaled ×−100: the mean goes with it, the robust combines stay near the
    /// honest parts' mean. Likewise for a part of NaNs or infinities, which the mean cannot
    /// survive at all.
    #[test]
    fn one_part_scaled_by_minus_100_does_not_move_the_robust_combines() {
        let noise = 0.01;
        let mut parts = honest(5, 4_810, noise, 7);
        let clean = weighted_mean(&weighted(&parts[1..])).unwrap();
        let scale = clean.iter().fold(0f32, |m, v| m.max(v.abs()));
        for liar in [
            parts[0].iter().map(|v| -100.0 * v).collect::<Vec<f32>>(),
            vec![f32::NAN; 4_810],
            vec![f32::INFINITY; 4_810],
            (0..4_810)
                .map(|i| if i % 2 == 0 { f32::NEG_INFINITY } else { 1e30 })
                .collect(),
        ] {
            parts[0] = liar;
            let mean = weighted_mean(&weighted(&parts)).unwrap();
            let moved = max_diff(&mean, &clean);
            assert!(
                moved.is_nan() || moved > 10.0 * scale,
                "the mean moved only {moved}"
            );
            for c in ROBUST {
                let got = c.combine(&weighted(&parts)).unwrap();
                let diff = max_diff(&got, &clean);
                assert!(
                    diff < 2.0 * noise,
                    "{c}: max |Δ| {diff} from the honest mean (liar {})",
                    parts[0][0]
                );
            }
        }
    }

    /// Everything from the same inputs gives the same bits.
    #[test]
    fn combines_are_deterministic() {
        let mut parts = honest(6, 1_000, 0.1, 11);
        parts[3].iter_mut().for_each(|v| *v *= -50.0);
        for c in all() {
            let a = c.combine(&weighted(&parts)).unwrap();
            let b = c.combine(&weighted(&parts.clone())).unwrap();
            assert!(
                a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{c}"
            );
        }
    }

    #[test]
    fn combine_arguments_parse_and_reject_nonsense() {
        let parse = |args: &[(&str, &str)]| {
            let args: Vec<(String, String)> = args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Combine::from_args(|key| args.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()))
                .map_err(|e| e.to_string())
        };
        assert_eq!(parse(&[]), Ok(Combine::Mean));
        assert_eq!(parse(&[("combine", "median")]), Ok(Combine::Median));
        assert_eq!(
            parse(&[("combine", "trimmed")]),
            Ok(Combine::Trimmed { trim: 0.2 })
        );
        assert_eq!(
            parse(&[("combine", "trimmed"), ("trim", "0.3")]),
            Ok(Combine::Trimmed { trim: 0.3 })
        );
        assert_eq!(
            parse(&[("combine", "centered_clip")]),
            Ok(Combine::CenteredClip {
                tau: None,
                iters: 3
            })
        );
        assert_eq!(
            parse(&[
                ("combine", "centered_clip"),
                ("tau", "0.5"),
                ("clip_iters", "7")
            ]),
            Ok(Combine::CenteredClip {
                tau: Some(0.5),
                iters: 7
            })
        );
        for (args, error) in [
            (&[("combine", "krum")][..], "combine=krum: expected"),
            (&[("combine", "trimmed"), ("trim", "0.5")], "trim=0.5"),
            (
                &[("combine", "trimmed"), ("trim", "x")],
                "argument `trim=x`",
            ),
            (&[("combine", "centered_clip"), ("tau", "0")], "tau=0"),
            (&[("combine", "centered_clip"), ("tau", "NaN")], "tau=NaN"),
            (
                &[("combine", "centered_clip"), ("clip_iters", "0")],
                "clip_iters=0",
            ),
            (&[("trim", "0.1")], "`trim` does not apply to combine=mean"),
            (
                &[("combine", "trimmed"), ("tau", "1")],
                "`tau` does not apply",
            ),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(error), "{args:?}: {err}");
        }
        assert_eq!(
            Combine::CenteredClip {
                tau: None,
                iters: 3
            }
            .to_string(),
            "centered_clip (tau: median distance, 3 iterations)"
        );
    }

    #[test]
    fn sgd_update_steps_against_the_gradient() {
        let mut p = vec![1.0f32, -1.0];
        sgd_update(&mut p, &[2.0, -4.0], 0.5);
        assert_eq!(p, vec![0.0, 1.0]);
    }

    /// The cost of each combine per round for the mlp-digits parameters (64-64-10: 4,810
    /// floats), 3 and 16 parts: the median of 51 timed runs after 5 warm-ups. Run with
    /// `cargo test --release -p train-kit -- --ignored --nocapture combine_cost`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn combine_cost_per_round() {
        for n in [3, 16] {
            let mut parts = honest(n, 4_810, 0.01, 5);
            parts[0].iter_mut().for_each(|v| *v *= -50.0);
            let parts = weighted(&parts);
            for c in all() {
                let mut times: Vec<f64> = (0..56)
                    .map(|_| {
                        let started = Instant::now();
                        std::hint::black_box(c.combine(std::hint::black_box(&parts)).unwrap());
                        started.elapsed().as_secs_f64() * 1e6
                    })
                    .skip(5)
                    .collect();
                times.sort_unstable_by(f64::total_cmp);
                println!(
                    "combine {:<14} 4810 floats × {n:>2} parts: median {:>8.1} µs (min {:.1}, max {:.1})",
                    c.name(),
                    times[times.len() / 2],
                    times[0],
                    times[times.len() - 1]
                );
            }
        }
    }
}
