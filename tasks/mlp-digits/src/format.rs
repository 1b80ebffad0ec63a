//! The task's file formats: parameters (and gradients, which share their layout), data
//! shards, and stats. Each is a plain byte string, so it is one block or file in the store.
//!
//! **Parameters** (`params`, and `grad`), little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `MLP1` |
//! | 4 | 4 | `inputs` (u32; 64 for digits) |
//! | 8 | 4 | `hidden` (u32) |
//! | 12 | 4 | `classes` (u32; 10 for digits) |
//! | 16 | 4·n | the body: n f32 values |
//!
//! The body is `W1` (`inputs × hidden`, row-major), `b1` (`hidden`), `W2` (`hidden ×
//! classes`, row-major), `b2` (`classes`): `n = inputs·hidden + hidden + hidden·classes +
//! classes`. The model is `logits = relu(x·W1 + b1)·W2 + b2` for a row `x`. A gradient has the
//! same header and layout, so combining gradients or parameters (sums, weighted means, SGD
//! updates) is element-wise over the bodies.
//!
//! **Shard** (`shard`, `test`), little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `DSH1` |
//! | 4 | 4 | `rows` (u32) |
//! | 8 | 4 | `features` (u32; 64 for digits) |
//! | 12 | 4·rows·(features+1) | the records |
//!
//! Each record is `features` f32 values (digits: the 8×8 pixels, row-major, scaled from
//! 0..=16 to [0, 1]) followed by the label, a class index stored as an f32 (0.0 to 9.0).
//!
//! **Stats** (`stats`): one line of UTF-8 text, space-separated `key=value` pairs, ending in
//! a newline: `count=449 loss_sum=1033.9 loss=2.3027` and, from `eval`,
//! ` correct=431 accuracy=0.9599`. `count` is the number of samples; `loss_sum` is the sum of
//! their losses (for `step`: of each batch's mean loss times its size), so shards combine by
//! adding `count`, `loss_sum` and `correct`; `loss` and `accuracy` are the derived means,
//! for people. Floats are written in Rust's shortest form that reads back exactly.

use std::ops::Range;
use train_kit::report::{pairs, value as value_of};

use shoal::Error;

use crate::rng::Rng;

/// The magic that starts a parameter or gradient file.
pub const PARAMS_MAGIC: [u8; 4] = *b"MLP1";
/// The magic that starts a shard file.
pub const SHARD_MAGIC: [u8; 4] = *b"DSH1";
/// Bytes before a parameter file's body.
pub const PARAMS_HEADER_LEN: usize = 16;
/// Bytes before a shard's records.
pub const SHARD_HEADER_LEN: usize = 12;
/// Features of a digits row: the 8×8 image.
pub const DIGITS_FEATURES: usize = 64;
/// Classes of the digits data: 0 to 9.
pub const DIGITS_CLASSES: usize = 10;

/// Reads the little-endian `u32` at `at`; the caller has checked the length.
fn u32_at(bytes: &[u8], at: usize) -> usize {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word) as usize
}

fn f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

fn push_u32(out: &mut Vec<u8>, value: usize, what: &str) -> Result<(), Error> {
    let value = u32::try_from(value).map_err(|_| Error::msg(format!("{what} {value} > u32")))?;
    out.extend_from_slice(&value.to_le_bytes());
    Ok(())
}

/// The shape of the model: `inputs → hidden → classes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Features per row.
    pub inputs: usize,
    /// Hidden units.
    pub hidden: usize,
    /// Output classes.
    pub classes: usize,
}

impl Dims {
    /// The digits model, `64 → hidden → 10`.
    pub fn digits(hidden: usize) -> Self {
        Self {
            inputs: DIGITS_FEATURES,
            hidden,
            classes: DIGITS_CLASSES,
        }
    }

    /// The body's length in f32 values, `None` on overflow.
    fn checked_len(&self) -> Option<usize> {
        let w1 = self.inputs.checked_mul(self.hidden)?;
        let w2 = self.hidden.checked_mul(self.classes)?;
        w1.checked_add(self.hidden)?
            .checked_add(w2)?
            .checked_add(self.classes)
    }

    /// The body's length in f32 values (`usize::MAX` where that overflows: such dims never
    /// decode, and `init` bounds `hidden` far below).
    pub fn param_count(&self) -> usize {
        self.checked_len().unwrap_or(usize::MAX)
    }

    /// Where `W1` sits in the body.
    pub fn w1(&self) -> Range<usize> {
        0..self.inputs * self.hidden
    }

    /// Where `b1` sits in the body.
    pub fn b1(&self) -> Range<usize> {
        let start = self.w1().end;
        start..start + self.hidden
    }

    /// Where `W2` sits in the body.
    pub fn w2(&self) -> Range<usize> {
        let start = self.b1().end;
        start..start + self.hidden * self.classes
    }

    /// Where `b2` sits in the body.
    pub fn b2(&self) -> Range<usize> {
        let start = self.w2().end;
        start..start + self.classes
    }
}

/// Parameters or a gradient: the dims and the flat body (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// The model's shape.
    pub dims: Dims,
    /// `W1, b1, W2, b2`, flat.
    pub values: Vec<f32>,
}

impl Params {
    /// Glorot-uniform weights (`±sqrt(6 / (fan_in + fan_out))`) and zero biases, from `seed`.
    pub fn glorot(dims: Dims, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut values = vec![0.0; dims.param_count()];
        for (range, fan_in, fan_out) in [
            (dims.w1(), dims.inputs, dims.hidden),
            (dims.w2(), dims.hidden, dims.classes),
        ] {
            let limit = (6.0 / (fan_in + fan_out) as f32).sqrt();
            for v in &mut values[range] {
                *v = (2.0 * rng.next_f32() - 1.0) * limit;
            }
        }
        Self { dims, values }
    }

    /// The file's bytes.
    ///
    /// # Errors
    /// If a dimension does not fit a `u32`.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(PARAMS_HEADER_LEN + 4 * self.values.len());
        out.extend_from_slice(&PARAMS_MAGIC);
        push_u32(&mut out, self.dims.inputs, "inputs")?;
        push_u32(&mut out, self.dims.hidden, "hidden")?;
        push_u32(&mut out, self.dims.classes, "classes")?;
        out.extend(self.values.iter().flat_map(|v| v.to_le_bytes()));
        Ok(out)
    }

    /// Reads a parameter or gradient file.
    ///
    /// # Errors
    /// A wrong magic, a zero dimension, or a length that does not match the header.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() < PARAMS_HEADER_LEN || bytes[..4] != PARAMS_MAGIC {
            return Err(Error::msg("not a parameter file (no `MLP1` header)"));
        }
        let dims = Dims {
            inputs: u32_at(bytes, 4),
            hidden: u32_at(bytes, 8),
            classes: u32_at(bytes, 12),
        };
        let body = &bytes[PARAMS_HEADER_LEN..];
        let expected = dims.checked_len().and_then(|n| n.checked_mul(4));
        if dims.inputs == 0 || dims.hidden == 0 || dims.classes == 0 {
            return Err(Error::msg(format!(
                "parameter file has a zero dimension: {dims:?}"
            )));
        }
        if expected != Some(body.len()) {
            return Err(Error::msg(format!(
                "parameter file for {dims:?} has a {}-byte body, expected {expected:?}",
                body.len()
            )));
        }
        Ok(Self {
            dims,
            values: f32s(body).collect(),
        })
    }

    /// `W1`, `inputs × hidden` row-major.
    pub fn w1(&self) -> &[f32] {
        &self.values[self.dims.w1()]
    }

    /// `b1`.
    pub fn b1(&self) -> &[f32] {
        &self.values[self.dims.b1()]
    }

    /// `W2`, `hidden × classes` row-major.
    pub fn w2(&self) -> &[f32] {
        &self.values[self.dims.w2()]
    }

    /// `b2`.
    pub fn b2(&self) -> &[f32] {
        &self.values[self.dims.b2()]
    }
}

/// Labelled rows: `x` is `rows × features` row-major, `labels` one class index per row.
#[derive(Clone, Debug, PartialEq)]
pub struct Shard {
    /// Features per row.
    pub features: usize,
    /// The rows' features, row-major.
    pub x: Vec<f32>,
    /// The rows' classes.
    pub labels: Vec<u32>,
}

impl Shard {
    /// The number of rows.
    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    /// Row `i`'s features.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.features..(i + 1) * self.features]
    }

    /// The rows at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Shard {
        Shard {
            features: self.features,
            x: indices
                .iter()
                .flat_map(|&i| self.row(i).iter().copied())
                .collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// The file's bytes.
    ///
    /// # Errors
    /// If a dimension does not fit a `u32`.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(SHARD_HEADER_LEN + 4 * (self.x.len() + self.labels.len()));
        out.extend_from_slice(&SHARD_MAGIC);
        push_u32(&mut out, self.rows(), "rows")?;
        push_u32(&mut out, self.features, "features")?;
        for (i, &label) in self.labels.iter().enumerate() {
            out.extend(self.row(i).iter().flat_map(|v| v.to_le_bytes()));
            out.extend_from_slice(&(label as f32).to_le_bytes());
        }
        Ok(out)
    }

    /// Reads a shard file.
    ///
    /// # Errors
    /// A wrong magic, zero features, a length that does not match the header, or a label
    /// that is not a whole number in `0..2^24`.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() < SHARD_HEADER_LEN || bytes[..4] != SHARD_MAGIC {
            return Err(Error::msg("not a shard file (no `DSH1` header)"));
        }
        let rows = u32_at(bytes, 4);
        let features = u32_at(bytes, 8);
        let record = features
            .checked_add(1)
            .and_then(|n| n.checked_mul(4))
            .filter(|_| features > 0);
        let body = &bytes[SHARD_HEADER_LEN..];
        let Some(record) = record.filter(|r| rows.checked_mul(*r) == Some(body.len())) else {
            return Err(Error::msg(format!(
                "shard of {rows} rows × {features} features has a {}-byte body",
                body.len()
            )));
        };
        let mut shard = Shard {
            features,
            x: Vec::with_capacity(rows * features),
            labels: Vec::with_capacity(rows),
        };
        for (i, rec) in body.chunks_exact(record).enumerate() {
            let mut values = f32s(rec);
            shard.x.extend(values.by_ref().take(features));
            let label = values.next().unwrap_or(f32::NAN);
            if !(0.0..16_777_216.0).contains(&label) || label.fract() != 0.0 {
                return Err(Error::msg(format!("shard row {i} has label {label}")));
            }
            shard.labels.push(label as u32);
        }
        Ok(shard)
    }
}

/// Sample count, loss sum and (from `eval`) correct predictions; see the module docs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Samples.
    pub count: u64,
    /// The sum of their losses.
    pub loss_sum: f64,
    /// Samples whose largest logit is their label (`eval` only).
    pub correct: Option<u64>,
}

impl Stats {
    /// The mean loss (NaN for no samples).
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.count as f64
    }

    /// The fraction predicted right, when known.
    pub fn accuracy(&self) -> Option<f64> {
        self.correct.map(|c| c as f64 / self.count as f64)
    }

    /// The one-line text form.
    pub fn encode(&self) -> String {
        let mut line = format!(
            "count={} loss_sum={} loss={}",
            self.count,
            self.loss_sum,
            self.loss()
        );
        if let (Some(correct), Some(accuracy)) = (self.correct, self.accuracy()) {
            line.push_str(&format!(" correct={correct} accuracy={accuracy}"));
        }
        line.push('\n');
        line
    }

    /// Reads the text form; derived fields (`loss`, `accuracy`) and unknown keys are ignored.
    ///
    /// # Errors
    /// Text that is not UTF-8, a pair without `=`, a value that does not parse, or no
    /// `count` or `loss_sum`.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let (mut count, mut loss_sum, mut correct) = (None, None, None);
        for (key, value) in pairs(bytes)? {
            match key {
                "count" => count = Some(value_of(key, value)?),
                "loss_sum" => loss_sum = Some(value_of(key, value)?),
                "correct" => correct = Some(value_of(key, value)?),
                _ => {}
            }
        }
        Ok(Self {
            count: count.ok_or_else(|| Error::msg("stats without `count`"))?,
            loss_sum: loss_sum.ok_or_else(|| Error::msg("stats without `loss_sum`"))?,
            correct,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_round_trip_and_layout() {
        let dims = Dims {
            inputs: 3,
            hidden: 2,
            classes: 4,
        };
        let p = Params::glorot(dims, 5);
        assert_eq!(p.values.len(), 3 * 2 + 2 + 2 * 4 + 4);
        assert_eq!(
            (p.w1().len(), p.b1(), p.w2().len(), p.b2()),
            (6, &[0.0; 2][..], 8, &[0.0; 4][..])
        );
        let limit = (6.0f32 / 5.0).sqrt();
        assert!(p.w1().iter().all(|w| w.abs() <= limit && *w != 0.0));
        let bytes = p.encode().unwrap();
        assert_eq!(bytes.len(), PARAMS_HEADER_LEN + 4 * p.values.len());
        assert_eq!(&bytes[..8], b"MLP1\x03\x00\x00\x00");
        assert_eq!(Params::decode(&bytes).unwrap(), p);
        assert_eq!(Params::glorot(dims, 5), p);
        assert_ne!(Params::glorot(dims, 6), p);
    }

    #[test]
    fn bad_params_are_errors() {
        let bytes = Params::glorot(Dims::digits(4), 1).encode().unwrap();
        assert!(Params::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Params::decode(b"MLP2").is_err());
        let mut huge = bytes[..PARAMS_HEADER_LEN].to_vec();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Params::decode(&huge).is_err());
        let mut zero = bytes.clone();
        zero[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert!(Params::decode(&zero).is_err());
    }

    #[test]
    fn shard_round_trip_and_errors() {
        let shard = Shard {
            features: 2,
            x: vec![0.0, 0.5, 1.0, 0.25],
            labels: vec![3, 9],
        };
        let bytes = shard.encode().unwrap();
        assert_eq!(bytes.len(), SHARD_HEADER_LEN + 2 * 3 * 4);
        assert_eq!(Shard::decode(&bytes).unwrap(), shard);
        assert_eq!(shard.select(&[1]).x, vec![1.0, 0.25]);
        assert!(Shard::decode(&bytes[..bytes.len() - 4]).is_err());
        let mut bad_label = bytes.clone();
        let at = bytes.len() - 4;
        bad_label[at..].copy_from_slice(&2.5f32.to_le_bytes());
        assert!(Shard::decode(&bad_label).is_err());
        let mut no_features = bytes;
        no_features[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert!(Shard::decode(&no_features).is_err());
    }

    #[test]
    fn stats_round_trip() {
        let s = Stats {
            count: 3,
            loss_sum: 0.1 + 0.2,
            correct: Some(2),
        };
        let text = s.encode();
        assert!(
            text.starts_with("count=3 loss_sum=0.30000000000000004 loss=0.1"),
            "{text}"
        );
        assert!(
            text.ends_with("correct=2 accuracy=0.6666666666666666\n"),
            "{text}"
        );
        assert_eq!(Stats::decode(text.as_bytes()).unwrap(), s);
        let plain = Stats { correct: None, ..s };
        assert_eq!(Stats::decode(plain.encode().as_bytes()).unwrap(), plain);
        assert!(Stats::decode(b"count=1").is_err());
        assert!(Stats::decode(b"count=x loss_sum=1").is_err());
    }
}
