//! Disk space: what a filesystem has free, the store's default size limit, and sizes as people
//! read them.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path};

const GIB: u64 = 1 << 30;
/// The default limit never goes below this, so a node on a nearly full disk still caches a
/// few tasks' inputs (a put then fails with the OS's "no space" rather than a tiny limit).
pub const DEFAULT_LIMIT_FLOOR: u64 = GIB;
/// The default limit never goes above this: two of the largest files (just under 32 GiB
/// each). A node does not quietly take hundreds of GB of a big disk; `--store-limit` raises it.
pub const DEFAULT_LIMIT_CAP: u64 = 64 * GIB;

/// Bytes an unprivileged process may still write on the filesystem holding `dir`.
///
/// # Errors
/// The OS error of `statvfs` (for example, `dir` does not exist).
pub fn available(dir: &Path) -> io::Result<u64> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `st` points to
    // writable memory of the right type, which statvfs fills when it returns 0.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::useless_conversion)] // the field widths differ between targets
    Ok(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
}

/// The default store limit: what the store already holds plus half of what its filesystem has
/// free, between [`DEFAULT_LIMIT_FLOOR`] and [`DEFAULT_LIMIT_CAP`]. Half, because a file got
/// out of the store (`host get`) usually lands on the same disk and needs its size again.
pub fn default_limit(used: u64, free: u64) -> u64 {
    used.saturating_add(free / 2)
        .clamp(DEFAULT_LIMIT_FLOOR, DEFAULT_LIMIT_CAP)
}

/// A size as people read it: "512 bytes", "1.5 MiB", "10 GiB".
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(fmt_bytes(512), "512 bytes");
        assert_eq!(fmt_bytes(1536 << 10), "1.5 MiB");
        assert_eq!(fmt_bytes(10 * GIB), "10 GiB");
    }

    #[test]
    fn default_limit_is_clamped() {
        assert_eq!(default_limit(0, 0), DEFAULT_LIMIT_FLOOR);
        assert_eq!(default_limit(GIB, 8 * GIB), 5 * GIB);
        assert_eq!(default_limit(0, 1 << 50), DEFAULT_LIMIT_CAP);
    }

    #[test]
    fn available_reports_a_real_filesystem_and_fails_on_a_missing_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available(dir.path()).unwrap() > 0);
        assert!(available(&dir.path().join("missing")).is_err());
    }
}
