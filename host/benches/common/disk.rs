//! The disk's own durable write, the ceiling for the benches that store durably (`store`,
//! `mesh`), and the `sync` that starts each durable write from an idle disk.
//!
//! Nothing a bench writes is deleted before it ends: this VM's ext4 has no journal and is
//! mounted with `discard`, and a file created within minutes of many deletions waits on a
//! search past the inodes just freed (up to half of a fetch's CPU in one profile), a cost of
//! the bench's deleting, not of storing.

use std::{io::Write, path::Path, time::Instant};

/// Flushes everything written so far (`sync`), so that the next durable write does not pay
/// for the earlier ones' writeback.
pub fn settle() {
    let synced = std::process::Command::new("sync").status();
    assert!(synced.is_ok_and(|s| s.success()), "sync failed");
}

/// The disk's durable write speed in `dir`, as `dd conv=fdatasync` measures it: `data` written
/// to a new file in 1 MiB writes, then one `fdatasync`. The file is kept (see above).
pub fn disk_mbps(dir: &Path, data: &[u8]) -> f64 {
    let path = tempfile::NamedTempFile::new_in(dir)
        .expect("temp file")
        .into_temp_path()
        .keep()
        .expect("kept");
    let start = Instant::now();
    let mut file = std::fs::File::create(&path).expect("create");
    for chunk in data.chunks(1 << 20) {
        file.write_all(chunk).expect("write");
    }
    file.sync_data().expect("fdatasync");
    data.len() as f64 / 1e6 / start.elapsed().as_secs_f64()
}
