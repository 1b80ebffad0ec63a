//! Parsers for command-line values: sizes, durations, `NAME=VALUE` pairs.

use std::time::Duration;

/// Parses `64MiB`, `256M`, `1GiB`, `4096` (bytes) and friends.
pub fn size(s: &str) -> Result<u64, String> {
    let (n, unit) = number_and_unit(s)
        .ok_or_else(|| format!("`{s}` is not a size; try 64MiB, 1GiB or 4096"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{s}`; use KiB, MiB or GiB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{s}` is too large"))
}

/// Parses a task's `--memory`: a size no larger than the runtime's ceiling.
pub fn task_memory(s: &str) -> Result<u64, String> {
    shoal_host::control::check_memory(size(s)?).map_err(|e| e.to_string())
}

/// Parses a task's `--timeout`: a duration no longer than the runtime's ceiling.
pub fn task_time(s: &str) -> Result<Duration, String> {
    use shoal_host::runtime::{MAX_TASK_TIME, limits::fmt_duration};
    let d = duration(s)?;
    if d > MAX_TASK_TIME {
        return Err(format!(
            "`{s}` is over the {} task time limit",
            fmt_duration(MAX_TASK_TIME)
        ));
    }
    Ok(d)
}

/// Parses `join --slots`: at most the runtime's ceiling.
pub fn slots(s: &str) -> Result<usize, String> {
    use shoal_host::runtime::MAX_SLOTS;
    match s.trim().parse::<usize>() {
        Ok(n) if n <= MAX_SLOTS => Ok(n),
        _ => Err(format!("`{s}` is not a slot count from 0 to {MAX_SLOTS}")),
    }
}

/// Parses `--verify-within`: a relative tolerance above 0 and at most
/// [`shoal_host::node::MAX_TOLERANCE`].
pub fn tolerance(s: &str) -> Result<f32, String> {
    use shoal_host::node::MAX_TOLERANCE;
    match s.trim().parse::<f32>() {
        Ok(t) if t > 0.0 && t <= MAX_TOLERANCE => Ok(t),
        _ => Err(format!(
            "`{s}` is not a tolerance above 0 and at most {MAX_TOLERANCE} (e.g. 1e-4)"
        )),
    }
}

/// Parses `500ms`, `30s`, `2m`, `1h`, or plain seconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = number_and_unit(s)
        .ok_or_else(|| format!("`{s}` is not a duration; try 500ms, 30s or 2m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{s}`; use ms, s, m or h"
            ));
        }
    };
    if d.is_zero() {
        return Err("a time limit must be above zero".into());
    }
    Ok(d)
}

/// Leading digits as a number, and the rest trimmed: `64 MiB` is `(64, "MiB")`.
fn number_and_unit(s: &str) -> Option<(u64, &str)> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    Some((num.parse().ok()?, unit.trim()))
}

/// Parses `NAME=VALUE`; the name must be non-empty.
pub fn pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not NAME=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(size("64MiB"), Ok(64 << 20));
        assert_eq!(size("1g"), Ok(1 << 30));
        assert_eq!(size("4096"), Ok(4096));
        assert!(size("lots").is_err());
        assert!(size("3 parsecs").is_err());
        assert_eq!(task_memory("4GiB"), Ok(4 << 30));
        assert!(
            task_memory("5GiB")
                .unwrap_err()
                .contains("5120 MiB is over the 4096 MiB task memory limit")
        );
        assert_eq!(task_time("2h"), Ok(Duration::from_secs(7200)));
        assert!(task_time("99999999999h").unwrap_err().contains("over the"));
        assert_eq!(slots("0"), Ok(0));
        assert!(slots("18446744073709551615").is_err());
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert!(duration("0s").is_err());
        assert_eq!(pair("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(pair("=x").is_err());
    }
}
