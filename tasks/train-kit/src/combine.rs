//! Combining the shards' results: a weighted mean and an SGD step. The vectors are a model's
//! parameters (thousands to a few hundred thousand floats), so plain Rust in the driver is
//! fast enough, and accumulating in f64 in shard order keeps a run deterministic.

use shoal::Error;

/// `Σ w_j · v_j / Σ w_j`, element-wise, accumulated in f64 in the order given so that the
/// result depends only on the inputs and their order.
///
/// # Errors
/// No parts, a zero total weight, or parts of different lengths.
pub fn weighted_mean(parts: &[(u64, &[f32])]) -> Result<Vec<f32>, Error> {
    let Some((_, first)) = parts.first() else {
        return Err(Error::msg("nothing to average"));
    };
    let total: u64 = parts.iter().map(|(w, _)| w).sum();
    if total == 0 {
        return Err(Error::msg("the weights sum to zero"));
    }
    if let Some((_, bad)) = parts.iter().find(|(_, v)| v.len() != first.len()) {
        return Err(Error::msg(format!(
            "cannot average {} values with {}",
            bad.len(),
            first.len()
        )));
    }
    let mut sum = vec![0f64; first.len()];
    for (w, values) in parts {
        let w = *w as f64;
        for (s, v) in sum.iter_mut().zip(values.iter()) {
            *s += w * f64::from(*v);
        }
    }
    let total = total as f64;
    Ok(sum.into_iter().map(|s| (s / total) as f32).collect())
}

/// One SGD step in place: `params -= lr · grad`.
pub fn sgd_update(params: &mut [f32], grad: &[f32], lr: f32) {
    for (p, g) in params.iter_mut().zip(grad) {
        *p -= lr * g;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn sgd_update_steps_against_the_gradient() {
        let mut p = vec![1.0f32, -1.0];
        sgd_update(&mut p, &[2.0, -4.0], 0.5);
        assert_eq!(p, vec![0.0, 1.0]);
    }
}
