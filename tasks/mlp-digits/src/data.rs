//! The digits data: parsing the CSV, and the stratified split into a held-out test set and
//! training shards.

use shoal::Error;

use crate::{
    format::{DIGITS_CLASSES, DIGITS_FEATURES, Shard},
    rng::Rng,
};

/// The largest pixel value in the CSV; features are scaled by it into [0, 1].
const MAX_PIXEL: f32 = 16.0;

/// Parses the digits CSV: one row per line, 64 pixels (0 to 16) then the label (0 to 9),
/// comma-separated; blank lines are skipped. Pixels are scaled to [0, 1].
///
/// # Errors
/// Text that is not UTF-8, or a line with the wrong field count or a value out of range,
/// named by its line number.
pub fn parse_csv(text: &[u8]) -> Result<Shard, Error> {
    let text = std::str::from_utf8(text).map_err(|e| Error::msg(format!("digits csv: {e}")))?;
    let mut shard = Shard {
        features: DIGITS_FEATURES,
        x: Vec::new(),
        labels: Vec::new(),
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: String| Error::msg(format!("digits csv line {}: {why}", n + 1));
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != DIGITS_FEATURES + 1 {
            return Err(bad(format!(
                "{} fields, expected {}",
                fields.len(),
                DIGITS_FEATURES + 1
            )));
        }
        let mut values = Vec::with_capacity(fields.len());
        for field in &fields {
            let v: u8 = field
                .trim()
                .parse()
                .map_err(|e| bad(format!("`{field}`: {e}")))?;
            values.push(v);
        }
        let label = values[DIGITS_FEATURES];
        if usize::from(label) >= DIGITS_CLASSES {
            return Err(bad(format!("label {label} is not a digit")));
        }
        if let Some(p) = values[..DIGITS_FEATURES]
            .iter()
            .find(|&&p| f32::from(p) > MAX_PIXEL)
        {
            return Err(bad(format!("pixel {p} is above {MAX_PIXEL}")));
        }
        shard.x.extend(
            values[..DIGITS_FEATURES]
                .iter()
                .map(|&p| f32::from(p) / MAX_PIXEL),
        );
        shard.labels.push(u32::from(label));
    }
    Ok(shard)
}

/// A held-out test set and the training shards.
#[derive(Debug)]
pub struct Split {
    /// The held-out rows.
    pub test: Shard,
    /// The training rows, dealt into shards.
    pub train: Vec<Shard>,
}

/// Splits `data` with a fixed `seed`, stratified by label: each class's rows are shuffled
/// and `round(test_fraction · class size)` of them held out as the test set; the remaining
/// rows are dealt class by class, round-robin, into `shards` shards, so every shard has each
/// class in about the same proportion and the shard sizes differ by at most one. Each shard
/// and the test set are then shuffled.
///
/// # Errors
/// `test_fraction` outside (0, 1), no shards, or fewer training rows than shards, or an
/// empty test set.
pub fn split(data: &Shard, shards: usize, test_fraction: f64, seed: u64) -> Result<Split, Error> {
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(Error::msg(format!(
            "test_fraction {test_fraction} is not between 0 and 1"
        )));
    }
    if shards == 0 {
        return Err(Error::msg("shards must be at least 1"));
    }
    let mut rng = Rng::new(seed);
    let classes = data.labels.iter().max().map_or(0, |&l| l as usize + 1);
    let mut test = Vec::new();
    let mut train = Vec::new();
    for class in 0..classes {
        let mut rows: Vec<usize> = (0..data.rows())
            .filter(|&i| data.labels[i] as usize == class)
            .collect();
        rng.shuffle(&mut rows);
        let held = (rows.len() as f64 * test_fraction).round() as usize;
        test.extend_from_slice(&rows[..held]);
        train.extend_from_slice(&rows[held..]);
    }
    if test.is_empty() || train.len() < shards {
        return Err(Error::msg(format!(
            "{} rows make {} test rows and {} training rows: too few for {shards} shard(s)",
            data.rows(),
            test.len(),
            train.len()
        )));
    }
    let mut dealt = vec![Vec::new(); shards];
    for (i, row) in train.into_iter().enumerate() {
        dealt[i % shards].push(row);
    }
    rng.shuffle(&mut test);
    let train = dealt
        .into_iter()
        .map(|mut rows| {
            rng.shuffle(&mut rows);
            data.select(&rows)
        })
        .collect();
    Ok(Split {
        test: data.select(&test),
        train,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gzip::gunzip;

    fn digits() -> Shard {
        let csv = gunzip(include_bytes!("../../data/digits.csv.gz"), 1 << 24).unwrap();
        parse_csv(&csv).unwrap()
    }

    fn class_counts(shard: &Shard) -> Vec<usize> {
        let mut counts = vec![0; DIGITS_CLASSES];
        for &l in &shard.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    #[test]
    fn parses_the_shipped_csv() {
        let data = digits();
        assert_eq!(data.rows(), 1797);
        assert_eq!(data.labels[..3], [0, 1, 2]);
        assert_eq!(data.row(0)[2], 5.0 / 16.0);
        assert!(data.x.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(
            class_counts(&data)
                .iter()
                .all(|&n| (174..=183).contains(&n))
        );
    }

    #[test]
    fn bad_lines_name_their_number() {
        let mut line = vec!["0"; 65].join(",");
        assert_eq!(
            parse_csv(format!("{line}\n\n{line}\r\n").as_bytes())
                .unwrap()
                .rows(),
            2
        );
        line.push_str(",1");
        let err = parse_csv(format!("\n{line}").as_bytes()).unwrap_err();
        assert!(err.to_string().contains("line 2: 66 fields"), "{err}");
        let label = format!("{},10", vec!["0"; 64].join(","));
        assert!(parse_csv(label.as_bytes()).is_err());
        let pixel = format!("17,{},1", vec!["0"; 63].join(","));
        assert!(parse_csv(pixel.as_bytes()).is_err());
    }

    #[test]
    fn split_is_stratified_disjoint_and_fixed_by_seed() {
        let data = digits();
        let split = split(&data, 3, 0.25, 0).unwrap();
        let total = class_counts(&data);
        let held = class_counts(&split.test);
        for (c, (&n, &h)) in total.iter().zip(&held).enumerate() {
            assert_eq!(h, (n as f64 * 0.25).round() as usize, "class {c}");
        }
        // Rounding per class keeps the whole within half a row per class of 25%.
        assert!(
            (445..=455).contains(&split.test.rows()),
            "{}",
            split.test.rows()
        );
        let sizes: Vec<usize> = split.train.iter().map(Shard::rows).collect();
        assert_eq!(sizes.iter().sum::<usize>() + split.test.rows(), 1797);
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
        for shard in &split.train {
            let counts = class_counts(shard);
            assert!(counts.iter().all(|&n| (43..=46).contains(&n)), "{counts:?}");
        }
        // Every row lands exactly once: compare the multisets of (label, pixels) records.
        let mut all: Vec<Vec<u8>> = Vec::new();
        for shard in split.train.iter().chain([&split.test]) {
            all.extend((0..shard.rows()).map(|i| record(shard, i)));
        }
        let mut want: Vec<Vec<u8>> = (0..data.rows()).map(|i| record(&data, i)).collect();
        all.sort();
        want.sort();
        assert_eq!(all, want);
        let again = super::split(&data, 3, 0.25, 0).unwrap();
        assert_eq!(again.test, split.test);
        assert_ne!(super::split(&data, 3, 0.25, 1).unwrap().test, split.test);
    }

    fn record(shard: &Shard, i: usize) -> Vec<u8> {
        let mut r: Vec<u8> = shard.row(i).iter().map(|&v| (v * 16.0) as u8).collect();
        r.push(shard.labels[i] as u8);
        r
    }

    #[test]
    fn bad_split_arguments_are_errors() {
        let data = digits();
        assert!(split(&data, 0, 0.25, 0).is_err());
        assert!(split(&data, 3, 1.0, 0).is_err());
        assert!(split(&data, 3, f64::NAN, 0).is_err());
        assert!(split(&data.select(&[0, 1]), 3, 0.25, 0).is_err());
    }
}
