//! Garbage collection and usage: mark every block reachable from a pin or a lease (through
//! manifests, so a file's chunks are kept with it), then sweep the rest, oldest first.
//!
//! GC runs with the store's state locked, and the three ways a block becomes needed take that
//! lock too: a lease is registered, a pin is recorded, a staged block is renamed into
//! `blocks/`. So a GC sees either the whole of such a step or none of it. A put takes its
//! lease on each block *before* it looks whether the block is already stored or writes it,
//! which is why no grace period is needed: a block a put relies on is leased before GC could
//! find it unreferenced, with no clock involved.

use std::{
    collections::HashSet,
    fs::{self, File},
    io,
    path::{Path, PathBuf},
    time::SystemTime,
};

use super::{
    BlockStore, Cid, Manifest, State, StoreError,
    block::BlockKind,
    io_err,
    pins::{self, PinClass, lock},
    read_full,
};

/// What a GC run should free.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GcMode {
    /// Every block that no pin or lease reaches.
    All,
    /// At least this many bytes if it can, oldest unreferenced blocks first, and no more
    /// blocks than that takes.
    Free(u64),
}

/// What a GC run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    /// Blocks removed.
    pub freed_blocks: u64,
    /// Bytes removed.
    pub freed_bytes: u64,
    /// Blocks left in the store.
    pub kept_blocks: u64,
    /// Bytes left in the store.
    pub kept_bytes: u64,
    /// Pins dropped because their retention ended ([`PinClass::RemoteOutput`]).
    pub expired_pins: u64,
}

/// How full the store is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreUsage {
    /// Bytes of blocks stored (their lengths; the filesystem rounds each file up a little).
    pub used: u64,
    /// The store's size limit in bytes.
    pub limit: u64,
    /// Bytes of stored blocks that pins reach (GC never frees them).
    pub pinned: u64,
    /// Blocks stored.
    pub blocks: u64,
}

/// A block file found under `blocks/`.
pub(super) struct BlockFile {
    pub cid: Cid,
    pub path: PathBuf,
    pub len: u64,
    pub written: SystemTime,
}

/// Every block under `blocks/<xx>/<cid hex>`; files with other names are not blocks and are
/// left alone. Blocks that vanish during the walk are skipped.
pub(super) fn walk_blocks(blocks: &Path) -> io::Result<Vec<BlockFile>> {
    let mut out = Vec::new();
    for fan in fs::read_dir(blocks)? {
        let fan = fan?;
        if !fan.file_type()?.is_dir() {
            continue;
        }
        for entry in fs::read_dir(fan.path())? {
            let entry = entry?;
            let Some(cid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Cid>().ok())
            else {
                continue;
            };
            let meta = match entry.metadata() {
                Ok(meta) if meta.is_file() => meta,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            out.push(BlockFile {
                cid,
                path: entry.path(),
                len: meta.len(),
                written: meta.modified()?,
            });
        }
    }
    Ok(out)
}

impl BlockStore {
    /// Removes blocks that no pin or lease reaches; see [`GcMode`]. Expired
    /// [`PinClass::RemoteOutput`] pins are dropped first.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the blocks or pins cannot be listed or a pin removed.
    pub fn gc(&self, mode: GcMode) -> Result<GcReport, StoreError> {
        let mut state = lock(&self.state);
        self.gc_locked(&mut state, mode)
    }

    /// How full the store is. Reads the manifests of pinned files to count what they reach.
    pub fn usage(&self) -> StoreUsage {
        let (used, limit, blocks, roots) = {
            let state = lock(&self.state);
            let roots: Vec<Cid> = state.pins.keys().map(|(_, cid)| *cid).collect();
            (state.used, state.limit, state.blocks, roots)
        };
        let pinned = self
            .reachable(roots)
            .iter()
            .filter_map(|cid| fs::metadata(self.path_of(cid)).ok())
            .map(|m| m.len())
            .sum();
        StoreUsage {
            used,
            limit,
            pinned,
            blocks,
        }
    }

    pub(super) fn gc_locked(
        &self,
        state: &mut State,
        mode: GcMode,
    ) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let now = SystemTime::now();
        let expired: Vec<(PinClass, Cid)> = state
            .pins
            .iter()
            .filter(|((class, _), since)| {
                *class == PinClass::RemoteOutput
                    && now.duration_since(**since).unwrap_or_default() >= self.retention
            })
            .map(|(key, _)| *key)
            .collect();
        for (class, cid) in expired {
            pins::remove(&self.pins_dir, &cid, class)
                .map_err(io_err(format!("removing the expired pin of {cid}")))?;
            state.pins.remove(&(class, cid));
            report.expired_pins += 1;
        }

        let roots = state
            .pins
            .keys()
            .map(|(_, cid)| *cid)
            .chain(state.leases.keys().copied());
        let marked = self.reachable(roots);
        let mut files = walk_blocks(&self.blocks).map_err(io_err("listing blocks for GC"))?;
        report.kept_blocks = files.len() as u64;
        report.kept_bytes = files.iter().map(|f| f.len).sum();
        files.retain(|f| !marked.contains(&f.cid));
        let target = match mode {
            GcMode::All => u64::MAX,
            GcMode::Free(bytes) => {
                files.sort_by_key(|f| f.written);
                bytes
            }
        };
        if !files.is_empty() {
            // Files are found complete only under a lease, which waits for this GC's lock
            // and keeps its file's blocks from it.
            self.forget_complete();
        }
        for file in files {
            if report.freed_bytes >= target {
                break;
            }
            match fs::remove_file(&file.path) {
                Ok(()) => {
                    report.freed_blocks += 1;
                    report.freed_bytes += file.len;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(cid = %file.cid, error = %e, "GC could not remove a block");
                    continue;
                }
            }
            report.kept_blocks -= 1;
            report.kept_bytes -= file.len;
        }
        // The walk saw every committed block (commits also hold the lock), so the counts are
        // exact again, whatever drift there was.
        state.used = report.kept_bytes;
        state.blocks = report.kept_blocks;
        if report.freed_blocks > 0 {
            super::grants_lock(&self.grants).sweep(|file| !self.has_block(file));
        }
        if report.freed_blocks > 0 || report.expired_pins > 0 {
            tracing::info!(?report, "store GC");
        }
        Ok(report)
    }

    /// The roots and, for each root that is a stored, intact manifest, its chunks. A corrupt
    /// manifest marks nothing beyond itself; reading it later quarantines it.
    fn reachable(&self, roots: impl IntoIterator<Item = Cid>) -> HashSet<Cid> {
        let mut marked = HashSet::new();
        for root in roots {
            if !marked.insert(root) {
                continue;
            }
            if let Some(manifest) = self.manifest_for_gc(&root) {
                marked.extend(manifest.chunks);
            }
        }
        marked
    }

    /// The manifest stored under `cid`, if it is one; reads only the first bytes of other
    /// blocks.
    fn manifest_for_gc(&self, cid: &Cid) -> Option<Manifest> {
        let path = self.path_of(cid);
        let mut head = [0u8; 8];
        let n = read_full(&mut File::open(&path).ok()?, &mut head).ok()?;
        if BlockKind::of(&head[..n]) != BlockKind::Manifest {
            return None;
        }
        let bytes = fs::read(&path).ok()?;
        if !cid.matches(&bytes) {
            tracing::warn!(%cid, "GC found a corrupt manifest; its chunks are not kept for it");
            return None;
        }
        Manifest::decode(&bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Read,
        sync::atomic::{AtomicBool, Ordering::Relaxed},
        time::Duration,
    };

    use super::*;
    use crate::store::{CHUNK_SIZE, StoreConfig, Verified, block};

    const MIB: u64 = 1 << 20;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        // Distinct chunks: the chunk index is mixed in, so no two chunks dedup.
        (0..len)
            .map(|i| (i as u8) ^ seed ^ ((i / CHUNK_SIZE) as u8).wrapping_mul(97))
            .collect()
    }

    fn open(dir: &Path) -> BlockStore {
        BlockStore::open(dir).unwrap()
    }

    fn file_blocks(store: &BlockStore, cid: &Cid) -> Vec<Cid> {
        let mut out = store.manifest(cid).unwrap().chunks;
        out.push(*cid);
        out
    }

    fn on_disk(store: &BlockStore) -> (u64, u64) {
        let files = walk_blocks(&store.blocks).unwrap();
        (files.len() as u64, files.iter().map(|f| f.len).sum())
    }

    #[test]
    fn gc_frees_unpinned_blocks_and_keeps_every_block_of_a_pinned_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let kept_data = data(3 * CHUNK_SIZE + 10, 1);
        let kept = store
            .put_file_pinned(&kept_data[..], PinClass::User)
            .unwrap();
        let gone = store.put_bytes(&data(2 * CHUNK_SIZE, 2)).unwrap();
        let gone_blocks = file_blocks(&store, &gone);
        let (_, before) = on_disk(&store);

        let report = store.gc(GcMode::All).unwrap();

        assert_eq!(report.freed_blocks, 3, "2 chunks and a manifest");
        assert!(gone_blocks.iter().all(|b| !store.has_block(b)));
        assert!(
            file_blocks(&store, &kept)
                .iter()
                .all(|b| store.has_block(b))
        );
        assert_eq!(store.read_file(&kept).unwrap(), kept_data);
        assert_eq!(report.kept_blocks, 5, "4 chunks and a manifest");
        assert_eq!(report.kept_bytes + report.freed_bytes, before);
        assert_eq!((report.kept_blocks, report.kept_bytes), on_disk(&store));
        assert!(matches!(
            store.read_file(&gone),
            Err(StoreError::NotFound(_))
        ));
    }

    /// Yields `good` bytes, then fails.
    struct FailsAfter {
        good: usize,
    }

    impl Read for FailsAfter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.good == 0 {
                return Err(io::Error::other("the disk under the source died"));
            }
            let n = buf.len().min(self.good);
            buf[..n].fill(0x5a);
            self.good -= n;
            Ok(n)
        }
    }

    #[test]
    fn an_interrupted_put_leaves_nothing_after_gc() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let err = store
            .put_file(FailsAfter {
                good: 3 * CHUNK_SIZE,
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err}");
        // An interrupted fetch: chunks stored, their manifest never.
        let orphan = block::data_block(b"orphan chunk");
        store
            .put_verified_batch(&[Verified::new(orphan.clone())])
            .unwrap();
        store.gc(GcMode::All).unwrap();
        assert_eq!(on_disk(&store), (0, 0));
        assert_eq!(fs::read_dir(&store.tmp).unwrap().count(), 0);
        let usage = store.usage();
        assert_eq!((usage.used, usage.blocks, usage.pinned), (0, 0, 0));
        assert_eq!(
            pins::lock(&store.state).reserved,
            0,
            "no room stays reserved"
        );
    }

    #[test]
    fn the_limit_collects_unpinned_blocks_then_refuses_with_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            limit_bytes: Some(3 * MIB + 4096),
            ..StoreConfig::default()
        };
        let store = BlockStore::open_with(dir.path(), config).unwrap();
        store
            .put_file_pinned(&data(2 * CHUNK_SIZE, 1)[..], PinClass::User)
            .unwrap();
        let cache = store.put_bytes(&data(CHUNK_SIZE / 2, 2)).unwrap();

        // Room for a 1 MiB file exists only once the unpinned one is collected.
        let third = data(CHUNK_SIZE, 3);
        let cid = store
            .put_file_pinned(&third[..], PinClass::Submitted)
            .unwrap();
        assert!(
            store.read_file(&cache).is_err(),
            "the unpinned file made room"
        );
        assert_eq!(store.read_file(&cid).unwrap(), third);
        store.gc(GcMode::All).unwrap();

        let before = store.usage();
        let err = store.put_bytes(&data(CHUNK_SIZE, 4)).unwrap_err();
        match &err {
            StoreError::Full {
                limit,
                used,
                needed,
            } => {
                assert_eq!(*limit, 3 * MIB + 4096);
                assert_eq!(*used, before.used);
                assert_eq!(*needed, MIB + 1);
            }
            other => panic!("expected Full, got {other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.starts_with("the store is full: its 3 MiB limit"),
            "{msg}"
        );
        assert!(msg.contains("--store-limit"), "{msg}");
        assert_eq!(store.usage(), before, "a refused put stores nothing");
        assert_eq!(pins::lock(&store.state).reserved, 0);
    }

    #[test]
    fn pins_survive_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let file = data(CHUNK_SIZE + 1, 5);
        let (user, checkpoint) = {
            let store = open(dir.path());
            let user = store.put_file_pinned(&file[..], PinClass::User).unwrap();
            let checkpoint = store.put_bytes(b"weights").unwrap();
            store.pin(&checkpoint, PinClass::Checkpoint).unwrap();
            store.put_bytes(b"cache").unwrap();
            (user, checkpoint)
        };
        let store = open(dir.path());
        let mut pinned: Vec<_> = store.pins().iter().map(|p| (p.class, p.cid)).collect();
        pinned.sort();
        assert_eq!(
            pinned,
            vec![(PinClass::User, user), (PinClass::Checkpoint, checkpoint)]
        );
        assert_eq!(store.gc(GcMode::All).unwrap().freed_blocks, 2);
        assert_eq!(store.read_file(&user).unwrap(), file);
        assert_eq!(store.read_file(&checkpoint).unwrap(), b"weights");

        assert!(store.unpin(&user, PinClass::User).unwrap());
        assert!(!store.unpin(&user, PinClass::User).unwrap());
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.pins().len(), 1);
        store.gc(GcMode::All).unwrap();
        assert!(!store.has_block(&user));
    }

    #[test]
    fn a_lease_protects_blocks_from_gc_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let file = store.put_bytes(&data(2 * CHUNK_SIZE + 3, 6)).unwrap();
        let lease = store.lease(&[file]);
        let second = store.lease(&[file]);
        assert_eq!(store.gc(GcMode::All).unwrap().freed_blocks, 0);
        drop(lease);
        assert_eq!(
            store.gc(GcMode::All).unwrap().freed_blocks,
            0,
            "one lease still holds it"
        );
        assert!(store.read_file(&file).is_ok());
        drop(second);
        assert_eq!(store.gc(GcMode::All).unwrap().freed_blocks, 4);
        assert!(pins::lock(&store.state).leases.is_empty());
    }

    #[test]
    fn put_file_in_keeps_its_blocks_in_the_callers_lease() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut lease = store.lease(&[]);
        let cid = store.put_file_in(&b"task output"[..], &mut lease).unwrap();
        assert!(lease.cids().contains(&cid));
        assert_eq!(store.gc(GcMode::All).unwrap().freed_blocks, 0);
        store.pin(&cid, PinClass::Submitted).unwrap();
        drop(lease);
        assert_eq!(store.gc(GcMode::All).unwrap().freed_blocks, 0);
    }

    #[test]
    fn usage_is_accurate_after_puts_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        assert_eq!((store.usage().used, store.usage().blocks), (0, 0));
        let pinned = store
            .put_file_pinned(&data(CHUNK_SIZE + 7, 7)[..], PinClass::User)
            .unwrap();
        store.put_bytes(&data(3 * CHUNK_SIZE, 8)).unwrap();
        // Stored twice: counted once.
        store.put_bytes(&data(3 * CHUNK_SIZE, 8)).unwrap();
        let usage = store.usage();
        assert_eq!((usage.blocks, usage.used), on_disk(&store));
        assert_eq!(usage.blocks, 3 + 4);
        let pinned_bytes: u64 = file_blocks(&store, &pinned)
            .iter()
            .map(|b| store.get_block(b).unwrap().len() as u64)
            .sum();
        assert_eq!(usage.pinned, pinned_bytes);
        assert_eq!(pinned_bytes, CHUNK_SIZE as u64 + 7 + 2 + 20 + 2 * 32);

        store.gc(GcMode::All).unwrap();
        let usage = store.usage();
        assert_eq!((usage.blocks, usage.used), (3, pinned_bytes));
        assert_eq!(usage.pinned, pinned_bytes);
        let reopened = {
            drop(store);
            open(dir.path()).usage()
        };
        assert_eq!(
            (reopened.used, reopened.blocks, reopened.pinned),
            (usage.used, usage.blocks, usage.pinned),
            "the scan at open finds the same"
        );
    }

    #[test]
    fn gc_free_removes_the_oldest_blocks_first_and_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let old = store.put_bytes(b"old").unwrap();
        let new = store.put_bytes(b"new").unwrap();
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        for cid in file_blocks(&store, &old) {
            File::options()
                .write(true)
                .open(store.path_of(&cid))
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        let report = store.gc(GcMode::Free(1)).unwrap();
        assert_eq!(report.freed_blocks, 1);
        assert!(store.read_file(&old).is_err());
        assert_eq!(store.read_file(&new).unwrap(), b"new");
    }

    #[test]
    fn remote_outputs_are_kept_for_their_retention_then_collected() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            remote_output_retention: Duration::from_secs(3600),
            ..StoreConfig::default()
        };
        let store = BlockStore::open_with(dir.path(), config).unwrap();
        let out = store
            .put_file_pinned(&b"their result"[..], PinClass::RemoteOutput)
            .unwrap();
        assert_eq!(store.gc(GcMode::All).unwrap().expired_pins, 0);
        assert!(store.read_file(&out).is_ok());
        drop(store);

        let config = StoreConfig {
            remote_output_retention: Duration::ZERO,
            ..StoreConfig::default()
        };
        let store = BlockStore::open_with(dir.path(), config).unwrap();
        let report = store.gc(GcMode::All).unwrap();
        assert_eq!((report.expired_pins, report.freed_blocks), (1, 2));
        assert!(store.pins().is_empty());
        assert_eq!(
            fs::read_dir(store.pins_dir.join("remote-output"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn puts_racing_a_gc_loop_lose_no_block() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        /// Stops the GC loop however the puts end, a failed assertion included.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Relaxed);
            }
        }
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !done.load(Relaxed) {
                    store.gc(GcMode::All).unwrap();
                }
            });
            let _stop = Stop(&done);
            for seed in 0..6u8 {
                let bytes = data(2 * CHUNK_SIZE + 100, seed);
                // Half of them are already stored, unpinned: the put dedups against blocks
                // the GC loop is trying to remove.
                if seed % 2 == 0 {
                    store.put_bytes(&bytes).unwrap();
                }
                let cid = store.put_file_pinned(&bytes[..], PinClass::User).unwrap();
                assert_eq!(store.read_file(&cid).unwrap(), bytes);
            }
        });
        store.gc(GcMode::All).unwrap();
        assert_eq!(store.pins().len(), 6);
        for pin in store.pins() {
            assert!(store.read_file(&pin.cid).is_ok());
        }
    }
}
