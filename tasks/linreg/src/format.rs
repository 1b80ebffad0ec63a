//! The task's file formats: parameters (and gradients, which share their layout), data
//! shards, and stats. Each is a plain byte string, so it is one file in the store.
//!
//! **Parameters** (`params`, and `grad`), little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `LRP1` |
//! | 4 | 4 | `features` (u32, at least 1) |
//! | 8 | 4·(features+1) | the weights `w` (`features` f32), then the bias `b` (one f32) |
//!
//! The model is `ŷ = x·w + b` for a row `x`. A gradient has the same header and layout, so
//! combining gradients (weighted means, SGD steps) is element-wise over the bodies.
//!
//! **Shard** (`shard0` …, `test`), little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `LRD1` |
//! | 4 | 4 | `rows` (u32, at least 1) |
//! | 8 | 4 | `features` (u32, at least 1) |
//! | 12 | 4·rows·features | `X`: the rows' features, f32, row-major |
//! | … | 4·rows | `y`: the rows' targets, f32 |
//!
//! `X` and `y` are separate blocks, not records, so each goes to the host's tensors as it
//! lies, without a gather in the task.
//!
//! **Stats** (`stats`): one line of UTF-8 text, space-separated `key=value` pairs, ending in
//! a newline: `count=500 loss_sum=0.0125 loss=0.000025 mse=0.00005` and, from `eval`,
//! ` sst=166.2 r2=0.9999`. `count` is the number of rows; `loss_sum` the sum of their losses
//! `½·(x·w + b − y)²`, so shards combine by adding both; `sst` is `Σ (y − ȳ)²` about the
//! shard's own mean. `loss`, `mse` (`2·loss`, the mean squared error) and `r2` (the
//! coefficient of determination, `1 − 2·loss_sum / sst`) are derived, for people, and ignored
//! when read. Floats are written in Rust's shortest form that reads back exactly.

use shoal::Error;
use train_kit::report::{pairs, value as value_of};

/// The magic that starts a parameter or gradient file.
pub const PARAMS_MAGIC: [u8; 4] = *b"LRP1";
/// The magic that starts a shard file.
pub const SHARD_MAGIC: [u8; 4] = *b"LRD1";
/// Bytes before a parameter file's body.
pub const PARAMS_HEADER_LEN: usize = 8;
/// Bytes before a shard's `X`.
pub const SHARD_HEADER_LEN: usize = 12;

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

fn u32_le(value: usize, what: &str) -> Result<[u8; 4], Error> {
    u32::try_from(value)
        .map(u32::to_le_bytes)
        .map_err(|_| Error::msg(format!("{what} {value} > u32")))
}

/// Parameters or a gradient: `features` weights, then the bias, flat.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// `w` then `b`: `features + 1` values.
    pub values: Vec<f32>,
}

impl Params {
    /// All zeros: `features` weights and the bias.
    pub fn zeros(features: usize) -> Self {
        Self {
            values: vec![0.0; features + 1],
        }
    }

    /// Features per row.
    pub fn features(&self) -> usize {
        self.values.len().saturating_sub(1)
    }

    /// The weights.
    pub fn w(&self) -> &[f32] {
        &self.values[..self.features()]
    }

    /// The bias.
    pub fn b(&self) -> f32 {
        self.values.last().copied().unwrap_or(0.0)
    }

    /// The file's bytes.
    ///
    /// # Errors
    /// No features, or more than fit a `u32`.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        if self.values.len() < 2 {
            return Err(Error::msg("parameters need at least one feature"));
        }
        let mut out = Vec::with_capacity(PARAMS_HEADER_LEN + 4 * self.values.len());
        out.extend_from_slice(&PARAMS_MAGIC);
        out.extend_from_slice(&u32_le(self.features(), "features")?);
        out.extend(self.values.iter().flat_map(|v| v.to_le_bytes()));
        Ok(out)
    }

    /// Reads a parameter or gradient file.
    ///
    /// # Errors
    /// A wrong magic, zero features, or a length that does not match the header.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() < PARAMS_HEADER_LEN || bytes[..4] != PARAMS_MAGIC {
            return Err(Error::msg("not a parameter file (no `LRP1` header)"));
        }
        let features = u32_at(bytes, 4);
        let body = &bytes[PARAMS_HEADER_LEN..];
        let expected = features.checked_add(1).and_then(|n| n.checked_mul(4));
        if features == 0 || expected != Some(body.len()) {
            return Err(Error::msg(format!(
                "parameter file for {features} features has a {}-byte body, expected {expected:?}",
                body.len()
            )));
        }
        Ok(Self {
            values: f32s(body).collect(),
        })
    }
}

/// Rows of data: `x` is `rows × features` row-major, `y` one target per row.
#[derive(Clone, Debug, PartialEq)]
pub struct Shard {
    /// Features per row.
    pub features: usize,
    /// The rows' features, row-major.
    pub x: Vec<f32>,
    /// The rows' targets.
    pub y: Vec<f32>,
}

impl Shard {
    /// The number of rows.
    pub fn rows(&self) -> usize {
        self.y.len()
    }

    /// The bytes of a shard of `rows` × `features`, `X` and `y` zeroed, and where `X` and
    /// `y` start: [`crate::data`] fills them in place, so a shard never exists twice.
    ///
    /// # Errors
    /// A zero dimension, or sizes that do not fit the format.
    pub fn zeroed_file(rows: usize, features: usize) -> Result<(Vec<u8>, usize, usize), Error> {
        let x_len = rows
            .checked_mul(features)
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| Error::msg("shard too large"))?;
        if rows == 0 || features == 0 {
            return Err(Error::msg(format!(
                "a shard of {rows} rows × {features} features is empty"
            )));
        }
        let mut out = Vec::with_capacity(SHARD_HEADER_LEN + x_len + 4 * rows);
        out.extend_from_slice(&SHARD_MAGIC);
        out.extend_from_slice(&u32_le(rows, "rows")?);
        out.extend_from_slice(&u32_le(features, "features")?);
        out.resize(SHARD_HEADER_LEN + x_len + 4 * rows, 0);
        Ok((out, SHARD_HEADER_LEN, SHARD_HEADER_LEN + x_len))
    }

    /// The file's bytes.
    ///
    /// # Errors
    /// As [`Shard::zeroed_file`], or `x` that is not `rows × features`.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        if Some(self.x.len()) != self.rows().checked_mul(self.features) {
            return Err(Error::msg("x is not rows × features"));
        }
        let (mut out, x_at, y_at) = Self::zeroed_file(self.rows(), self.features)?;
        for (dst, v) in out[x_at..y_at].chunks_exact_mut(4).zip(&self.x) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
        for (dst, v) in out[y_at..].chunks_exact_mut(4).zip(&self.y) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
        Ok(out)
    }

    /// Reads a shard file.
    ///
    /// # Errors
    /// A wrong magic, a zero dimension, or a length that does not match the header.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() < SHARD_HEADER_LEN || bytes[..4] != SHARD_MAGIC {
            return Err(Error::msg("not a shard file (no `LRD1` header)"));
        }
        let rows = u32_at(bytes, 4);
        let features = u32_at(bytes, 8);
        let body = &bytes[SHARD_HEADER_LEN..];
        let x_len = rows.checked_mul(features).and_then(|n| n.checked_mul(4));
        let expected = x_len.and_then(|n| n.checked_add(4 * rows));
        let Some(x_len) =
            x_len.filter(|_| rows > 0 && features > 0 && expected == Some(body.len()))
        else {
            return Err(Error::msg(format!(
                "shard of {rows} rows × {features} features has a {}-byte body",
                body.len()
            )));
        };
        let (x, y) = body.split_at(x_len);
        Ok(Self {
            features,
            x: f32s(x).collect(),
            y: f32s(y).collect(),
        })
    }
}

/// Row count, loss sum and (from `eval`) the targets' spread; see the module docs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Rows.
    pub count: u64,
    /// `Σ ½·(x·w + b − y)²`.
    pub loss_sum: f64,
    /// `Σ (y − ȳ)²` (`eval` only).
    pub sst: Option<f64>,
}

impl Stats {
    /// The mean loss, `½·MSE` (NaN for no rows).
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.count as f64
    }

    /// The mean squared error.
    pub fn mse(&self) -> f64 {
        2.0 * self.loss()
    }

    /// R², the fraction of the targets' variance the model explains: 1 is a perfect fit, 0
    /// no better than predicting the mean, below 0 worse. `None` without `sst`, or when the
    /// targets do not vary.
    pub fn r2(&self) -> Option<f64> {
        self.sst
            .filter(|&sst| sst > 0.0)
            .map(|sst| 1.0 - 2.0 * self.loss_sum / sst)
    }

    /// The one-line text form.
    pub fn encode(&self) -> String {
        let mut line = format!(
            "count={} loss_sum={} loss={} mse={}",
            self.count,
            self.loss_sum,
            self.loss(),
            self.mse()
        );
        if let Some(sst) = self.sst {
            line.push_str(&format!(" sst={sst}"));
        }
        if let Some(r2) = self.r2() {
            line.push_str(&format!(" r2={r2}"));
        }
        line.push('\n');
        line
    }

    /// Reads the text form; derived fields (`loss`, `mse`, `r2`) and unknown keys are
    /// ignored.
    ///
    /// # Errors
    /// Text that is not UTF-8, a pair without `=`, a value that does not parse, or no
    /// `count` or `loss_sum`.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let (mut count, mut loss_sum, mut sst) = (None, None, None);
        for (key, value) in pairs(bytes)? {
            match key {
                "count" => count = Some(value_of(key, value)?),
                "loss_sum" => loss_sum = Some(value_of(key, value)?),
                "sst" => sst = Some(value_of(key, value)?),
                _ => {}
            }
        }
        Ok(Self {
            count: count.ok_or_else(|| Error::msg("stats without `count`"))?,
            loss_sum: loss_sum.ok_or_else(|| Error::msg("stats without `loss_sum`"))?,
            sst,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_round_trip_and_layout() {
        let p = Params {
            values: vec![1.0, -2.0, 0.5],
        };
        assert_eq!((p.features(), p.w(), p.b()), (2, &[1.0, -2.0][..], 0.5));
        let bytes = p.encode().unwrap();
        assert_eq!(&bytes[..8], b"LRP1\x02\x00\x00\x00");
        assert_eq!(bytes.len(), PARAMS_HEADER_LEN + 12);
        assert_eq!(&bytes[16..], &0.5f32.to_le_bytes());
        assert_eq!(Params::decode(&bytes).unwrap(), p);
        assert!(Params::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Params::decode(b"MLP1\x02\x00\x00\x00").is_err());
        let mut huge = bytes[..PARAMS_HEADER_LEN].to_vec();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Params::decode(&huge).is_err());
        assert!(Params::decode(b"LRP1\x00\x00\x00\x00\x00\x00\x00\x00").is_err());
        assert!(Params { values: vec![1.0] }.encode().is_err());
        assert_eq!(Params::zeros(3).values, vec![0.0; 4]);
    }

    #[test]
    fn shard_round_trip_and_layout() {
        let shard = Shard {
            features: 2,
            x: vec![0.0, 0.5, 1.0, -0.25],
            y: vec![3.0, -9.0],
        };
        let bytes = shard.encode().unwrap();
        assert_eq!(&bytes[..12], b"LRD1\x02\x00\x00\x00\x02\x00\x00\x00");
        assert_eq!(bytes.len(), SHARD_HEADER_LEN + 4 * (4 + 2));
        // X as a block, then y.
        assert_eq!(&bytes[12..16], &0.0f32.to_le_bytes());
        assert_eq!(&bytes[24..28], &(-0.25f32).to_le_bytes());
        assert_eq!(&bytes[28..32], &3.0f32.to_le_bytes());
        assert_eq!(Shard::decode(&bytes).unwrap(), shard);
        assert!(Shard::decode(&bytes[..bytes.len() - 4]).is_err());
        let mut no_rows = bytes.clone();
        no_rows[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert!(Shard::decode(&no_rows[..12]).is_err());
        let mut huge = bytes;
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Shard::decode(&huge).is_err());
    }

    #[test]
    fn stats_round_trip() {
        let s = Stats {
            count: 4,
            loss_sum: 1.0,
            sst: Some(8.0),
        };
        assert_eq!(
            s.encode(),
            "count=4 loss_sum=1 loss=0.25 mse=0.5 sst=8 r2=0.75\n"
        );
        assert_eq!(Stats::decode(s.encode().as_bytes()).unwrap(), s);
        let plain = Stats { sst: None, ..s };
        assert_eq!(plain.encode(), "count=4 loss_sum=1 loss=0.25 mse=0.5\n");
        assert_eq!(Stats::decode(plain.encode().as_bytes()).unwrap(), plain);
        assert_eq!(
            Stats {
                sst: Some(0.0),
                ..plain
            }
            .r2(),
            None
        );
        assert!(Stats::decode(b"count=1").is_err());
        assert!(Stats::decode(b"count=1 loss_sum=x").is_err());
    }
}
