//! The disk's own durable write, the ceiling for the benches that store durably (`store`,
//! `mesh`), and the `sync` that starts each durable write from an idle disk.
//!
//! Nothing a bench writes is deleted before it ends: this VM's ext4 has no journal and is
//! mounted with `discard`, and a file created within minutes of many deletions waits on a
//! search past the inodes just freed (up to half of a fetch's CPU in one profile), a cost of
//! the bench's deleting, not of storing.

use std::{io::Write, os::unix::fs::OpenOptionsExt, path::Path, time::Instant};

/// Flushes everything written so far (`sync`), so that the next durable write does not pay
/// for the earlier ones' writeback.
pub fn settle() {
    let synced = std::process::Command::new("sync").status();
    assert!(synced.is_ok_and(|s| s.success()), "sync failed");
}

/// The disk's durable write speed in `dir`, the faster of two ways to write: `data` to a new
/// file in 1 MiB writes, then one `fdatasync`, once through the page cache (as
/// `dd conv=fdatasync` measures it) and once past it (`O_DIRECT`, as `dd oflag=direct`).
/// On the development VM the first pays a hypervisor fault for each fresh page of page cache
/// and moves 360 MB/s to 1.5 GB/s from one run to the next; the second moves 1.5-1.8 GB/s.
/// The files are kept (see above).
pub fn disk_mbps(dir: &Path, data: &[u8]) -> DiskSpeed {
    DiskSpeed {
        buffered: write_mbps(dir, data, 0),
        direct: write_mbps(dir, data, libc::O_DIRECT),
    }
}

/// [`disk_mbps`]'s two measures.
#[derive(Debug, Clone, Copy)]
pub struct DiskSpeed {
    /// Through the page cache, MB/s.
    pub buffered: f64,
    /// Past it, MB/s.
    pub direct: f64,
}

impl DiskSpeed {
    /// The disk's ceiling: the faster way.
    pub fn best(self) -> f64 {
        self.buffered.max(self.direct)
    }
}

fn write_mbps(dir: &Path, data: &[u8], flags: i32) -> f64 {
    const MIB: usize = 1 << 20;
    let path = tempfile::NamedTempFile::new_in(dir)
        .expect("temp file")
        .into_temp_path()
        .keep()
        .expect("kept");
    // A direct write needs an aligned buffer: one reused 1 MiB, 4 KiB aligned.
    let mut buffer = vec![0u8; MIB + 4096];
    let start = buffer.as_ptr().align_offset(4096);
    let aligned = &mut buffer[start..start + MIB];
    let started = Instant::now();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(flags)
        .open(&path)
        .expect("create");
    for chunk in data.chunks(MIB) {
        assert_eq!(chunk.len(), MIB, "whole MiBs only");
        aligned.copy_from_slice(chunk);
        file.write_all(aligned).expect("write");
    }
    file.sync_data().expect("fdatasync");
    data.len() as f64 / 1e6 / started.elapsed().as_secs_f64()
}
