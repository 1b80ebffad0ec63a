//! Writing a block to a new file past the page cache (`O_DIRECT`), where the filesystem
//! allows it.
//!
//! Every block is synced as soon as it is written, and a fetched block is seldom read back
//! soon, so the page cache only adds a copy of every byte into fresh pages. On the
//! development VM each fresh page costs a fault in the hypervisor: `dd` of 256 MiB with
//! `fdatasync` spent 0.13-0.63 s of system time buffered and 0.02-0.03 s direct, and a
//! 256 MiB fetch spent 43% of its CPU in that copy (BENCHMARKS.md). A filesystem that refuses
//! `O_DIRECT` (tmpfs) gets a buffered write instead; so do small blocks, for which padding to
//! the alignment costs more than the copy.

use std::{
    cell::RefCell,
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

/// What `O_DIRECT` needs aligned: the buffer's address, and each write's offset and length.
/// 4 KiB covers both 512-byte and 4 KiB logical sectors.
const ALIGN: usize = 4096;
/// Blocks smaller than this go through the page cache.
const DIRECT_MIN: usize = 64 * 1024;

thread_local! {
    /// The aligned copy of the block being written, one per writer thread.
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Creates (or truncates) `path` holding `bytes`, unsynced: the caller syncs it.
///
/// # Errors
/// Any error of creating or writing the file.
pub(super) fn create_with(path: &Path, bytes: &[u8]) -> io::Result<File> {
    if bytes.len() >= DIRECT_MIN {
        match create_direct(path, bytes) {
            Ok(file) => return Ok(file),
            // This filesystem or alignment takes no direct writes: the page cache, then.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    Ok(file)
}

/// `bytes` padded to [`ALIGN`] from an aligned buffer in one direct write, then the file cut
/// back to their length.
fn create_direct(path: &Path, bytes: &[u8]) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let padded = bytes.len().next_multiple_of(ALIGN);
    BUFFER.with_borrow_mut(|buffer| {
        if buffer.len() < padded + ALIGN {
            *buffer = vec![0; padded + ALIGN];
        }
        let start = buffer.as_ptr().align_offset(ALIGN);
        let aligned = buffer
            .get_mut(start..start + padded)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let (data, pad) = aligned.split_at_mut(bytes.len());
        data.copy_from_slice(bytes);
        pad.fill(0);
        file.write_all(aligned)
    })?;
    file.set_len(bytes.len() as u64)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_and_buffered_writes_hold_exactly_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 100, DIRECT_MIN - 1, DIRECT_MIN, DIRECT_MIN + 1, 1 << 20] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let path = dir.path().join(format!("b{len}"));
            let file = create_with(&path, &bytes).unwrap();
            file.sync_data().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "{len} bytes");
        }
    }

    /// The direct path itself, wherever the filesystem takes `O_DIRECT` (ext4 here); a
    /// filesystem that refuses it at open (tmpfs) is the buffered path's case above.
    #[test]
    fn a_direct_write_of_an_unaligned_length_is_cut_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..(1 << 20) - 7).map(|i| (i % 253) as u8).collect();
        let path = dir.path().join("direct");
        match create_direct(&path, &bytes) {
            Ok(file) => {
                file.sync_data().unwrap();
                assert_eq!(std::fs::read(&path).unwrap(), bytes);
            }
            Err(e) => {
                let refused = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(dir.path().join("probe"))
                    .is_err();
                assert!(refused, "the filesystem takes O_DIRECT, yet: {e}");
            }
        }
    }
}
