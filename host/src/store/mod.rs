//! The on-disk block store: blake3-named blocks under `<data-dir>/blocks`.
//!
//! Trade-offs (see also the manifest format in [`manifest`]):
//! - One file per block, fanned out by the first two hex digits, so that no directory grows
//!   past a few thousand entries and a block can be served with one `read`.
//! - Writes go to a temp file, are fsynced, then renamed into place: a crash leaves either no
//!   block or a whole one, never a torn one. Touched directories are fsynced once per put.
//! - Every read is verified against the name. A block that fails is moved to `quarantine/`
//!   and reported, never returned, so a later fetch from the mesh can replace it.
//! - The data dir is locked for the life of the store: two nodes never share one.

pub mod manifest;

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

pub use manifest::{CHUNK_SIZE, MAX_FILE_LEN, Manifest, ManifestError};
pub use shoal::abi::{Cid, MAX_BLOCK_LEN, ParseCidError};

/// What can go wrong in the block store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process holds the data dir.
    #[error(
        "data dir {path} is in use by another Shoal process (its lock file is held); use another --data-dir"
    )]
    Locked {
        /// The data dir.
        path: PathBuf,
    },
    /// The block is not in this store.
    #[error("block {0} is not in the local store")]
    NotFound(Cid),
    /// The block's bytes do not hash to its name.
    #[error(
        "block {cid} is corrupt on disk (its bytes hash to {actual}); it was quarantined and not returned"
    )]
    Corrupt {
        /// The name it was stored under.
        cid: Cid,
        /// What its bytes hash to.
        actual: Cid,
    },
    /// The CID names a block that is not a file manifest.
    #[error("{cid} is not a file: {source}")]
    NotAFile {
        /// The CID asked for.
        cid: Cid,
        /// Why its block is not a manifest.
        source: ManifestError,
    },
    /// A chunk's length disagrees with its manifest.
    #[error("chunk {index} of file {file} has {actual} bytes, its manifest says {expected}")]
    ChunkLength {
        /// The file's CID.
        file: Cid,
        /// Chunk index.
        index: usize,
        /// Length the manifest implies.
        expected: usize,
        /// Length found.
        actual: usize,
    },
    /// A block over [`MAX_BLOCK_LEN`].
    #[error("block of {len} bytes exceeds the {MAX_BLOCK_LEN}-byte block limit")]
    BlockTooLarge {
        /// Its length.
        len: usize,
    },
    /// A file over [`MAX_FILE_LEN`].
    #[error("file exceeds the {MAX_FILE_LEN}-byte file limit")]
    FileTooLarge,
    /// A filesystem error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What the store was doing.
        what: String,
        /// The OS error (for example "No space left on device").
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

/// A content-addressed block store in a locked data dir.
#[derive(Debug)]
pub struct BlockStore {
    blocks: PathBuf,
    tmp: PathBuf,
    quarantine: PathBuf,
    tmp_counter: AtomicU64,
    // Held for the store's lifetime; the OS drops the lock with the file.
    _lock: File,
}

impl BlockStore {
    /// Opens (creating if needed) the store in `data_dir` and locks it.
    ///
    /// # Errors
    /// [`StoreError::Locked`] if another process holds the dir, [`StoreError::Io`] if it
    /// cannot be created.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let blocks = data_dir.join("blocks");
        let tmp = data_dir.join("tmp");
        let quarantine = data_dir.join("quarantine");
        for dir in [&blocks, &tmp, &quarantine] {
            fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        let lock_path = data_dir.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(format!("opening {}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: data_dir.to_path_buf(),
                });
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(io_err(format!("locking {}", lock_path.display()))(e));
            }
        }
        // Temp files left by a crash are garbage: their blocks were never renamed into place.
        if let Ok(entries) = fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            blocks,
            tmp,
            quarantine,
            tmp_counter: AtomicU64::new(0),
            _lock: lock,
        })
    }

    fn path_of(&self, cid: &Cid) -> PathBuf {
        let hex = cid.to_hex();
        self.blocks.join(&hex[..2]).join(hex)
    }

    /// Whether the block is present (not verified).
    pub fn has_block(&self, cid: &Cid) -> bool {
        self.path_of(cid).is_file()
    }

    /// Writes a block to a temp file, unsynced; [`BlockStore::commit`] makes it durable.
    fn stage(&self, bytes: &[u8], batch: &mut Batch) -> Result<Cid, StoreError> {
        if bytes.len() > MAX_BLOCK_LEN {
            return Err(StoreError::BlockTooLarge { len: bytes.len() });
        }
        let cid = Cid::of(bytes);
        let path = self.path_of(&cid);
        if batch.staged.iter().any(|(_, p)| *p == path)
            || (path.is_file() && self.get_block(&cid).is_ok())
        {
            return Ok(cid);
        }
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!(
            "{}-{n}-{}",
            std::process::id(),
            &cid.to_hex()[..16]
        ));
        let write = || -> io::Result<File> {
            let mut file = File::create(&tmp)?;
            file.write_all(bytes)?;
            Ok(file)
        };
        match write() {
            Ok(file) => {
                batch.files.push(file);
                batch.staged.push((tmp, path));
                Ok(cid)
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(io_err(format!("writing block {cid}"))(e))
            }
        }
    }

    /// Makes staged blocks durable, then renames them into place: a rename never exposes
    /// bytes that are not on disk. The fsyncs of a batch run on several threads, since the
    /// disk's flush latency, not its bandwidth, is what a chunked put waits on.
    fn commit(&self, batch: Batch, dirs: &mut BTreeSet<PathBuf>) -> Result<(), StoreError> {
        let Batch { files, staged } = batch;
        let cleanup = |staged: &[(PathBuf, PathBuf)]| {
            staged
                .iter()
                .for_each(|(tmp, _)| drop(fs::remove_file(tmp)))
        };
        let per_thread = files.len().div_ceil(SYNC_THREADS).max(1);
        let synced = std::thread::scope(|scope| {
            let workers: Vec<_> = files
                .chunks(per_thread)
                .map(|group| scope.spawn(move || group.iter().try_for_each(File::sync_data)))
                .collect();
            workers.into_iter().try_for_each(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(io::Error::other("fsync thread panicked")))
            })
        });
        if let Err(e) = synced {
            cleanup(&staged);
            return Err(io_err("syncing new blocks to disk")(e));
        }
        for (i, (tmp, path)) in staged.iter().enumerate() {
            let dir = path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| self.blocks.clone());
            let moved = fs::create_dir_all(&dir).and_then(|()| fs::rename(tmp, path));
            if let Err(e) = moved {
                cleanup(&staged[i..]);
                return Err(io_err(format!("storing block {}", path.display()))(e));
            }
            dirs.insert(dir);
        }
        Ok(())
    }

    /// Stores blocks fetched under CIDs someone named, idempotently, synced as one batch;
    /// refuses (and stores none of) a batch where any block does not hash to its name.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for the first block that does not match; I/O errors.
    pub fn put_verified_batch(&self, blocks: &[(Cid, Vec<u8>)]) -> Result<(), StoreError> {
        for (cid, bytes) in blocks {
            let actual = Cid::of(bytes);
            if actual != *cid {
                return Err(StoreError::Corrupt { cid: *cid, actual });
            }
        }
        let mut batch = Batch::default();
        for (_, bytes) in blocks {
            self.stage(bytes, &mut batch)?;
        }
        let mut dirs = BTreeSet::new();
        self.commit(batch, &mut dirs)?;
        self.sync_dirs(&dirs)
    }

    fn sync_dirs(&self, dirs: &BTreeSet<PathBuf>) -> Result<(), StoreError> {
        for dir in dirs {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(format!("syncing {}", dir.display())))?;
        }
        Ok(())
    }

    /// Reads one block and verifies it against its name.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], or [`StoreError::Corrupt`] (the block is then quarantined).
    pub fn get_block(&self, cid: &Cid) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(cid);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(*cid));
            }
            Err(e) => return Err(io_err(format!("reading block {cid}"))(e)),
        };
        let actual = Cid::of(&bytes);
        if actual != *cid {
            let _ = fs::rename(&path, self.quarantine.join(cid.to_hex()));
            tracing::warn!(%cid, %actual, "quarantined a corrupt block");
            return Err(StoreError::Corrupt { cid: *cid, actual });
        }
        Ok(bytes)
    }

    /// Stores a file of any size read from `reader`: its chunks, then its manifest. Returns
    /// the file's CID (the manifest's).
    ///
    /// # Errors
    /// [`StoreError::FileTooLarge`] past [`MAX_FILE_LEN`]; [`StoreError::Io`] on read or
    /// write errors.
    pub fn put_file(&self, mut reader: impl Read) -> Result<Cid, StoreError> {
        let mut dirs = BTreeSet::new();
        let mut chunks = Vec::new();
        let mut len = 0u64;
        let mut buf = vec![0u8; CHUNK_SIZE];
        let mut batch = Batch::default();
        loop {
            let n =
                read_full(&mut reader, &mut buf).map_err(io_err("reading the file to store"))?;
            if n == 0 {
                break;
            }
            if chunks.len() == manifest::MAX_CHUNKS {
                return Err(StoreError::FileTooLarge);
            }
            chunks.push(self.stage(&buf[..n], &mut batch)?);
            if batch.staged.len() >= SYNC_BATCH {
                self.commit(std::mem::take(&mut batch), &mut dirs)?;
            }
            len += n as u64;
            if n < CHUNK_SIZE {
                break;
            }
        }
        let manifest = Manifest { len, chunks };
        let cid = self.stage(&manifest.encode(), &mut batch)?;
        self.commit(batch, &mut dirs)?;
        self.sync_dirs(&dirs)?;
        Ok(cid)
    }

    /// Stores `bytes` as a file; see [`BlockStore::put_file`].
    ///
    /// # Errors
    /// As [`BlockStore::put_file`].
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Cid, StoreError> {
        self.put_file(bytes)
    }

    /// Reads and decodes a file's manifest.
    ///
    /// # Errors
    /// [`StoreError::NotAFile`] if the CID names a chunk; read errors as [`BlockStore::get_block`].
    pub fn manifest(&self, cid: &Cid) -> Result<Manifest, StoreError> {
        let bytes = self.get_block(cid)?;
        Manifest::decode(&bytes).map_err(|source| StoreError::NotAFile { cid: *cid, source })
    }

    /// Reads chunk `index` of a file, verified and length-checked.
    ///
    /// # Errors
    /// As [`BlockStore::get_block`], plus [`StoreError::ChunkLength`].
    pub fn read_chunk(
        &self,
        file: &Cid,
        manifest: &Manifest,
        index: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let bytes = self.get_block(&manifest.chunks[index])?;
        let expected = manifest.chunk_len(index);
        if bytes.len() != expected {
            return Err(StoreError::ChunkLength {
                file: *file,
                index,
                expected,
                actual: bytes.len(),
            });
        }
        Ok(bytes)
    }

    /// Writes a whole file to `writer`, verifying each chunk; returns its length.
    ///
    /// # Errors
    /// As [`BlockStore::read_chunk`], plus [`StoreError::Io`] on write errors.
    pub fn write_file(&self, cid: &Cid, mut writer: impl Write) -> Result<u64, StoreError> {
        let manifest = self.manifest(cid)?;
        for index in 0..manifest.chunks.len() {
            let chunk = self.read_chunk(cid, &manifest, index)?;
            writer
                .write_all(&chunk)
                .map_err(io_err(format!("writing file {cid}")))?;
        }
        writer
            .flush()
            .map_err(io_err(format!("writing file {cid}")))?;
        Ok(manifest.len)
    }

    /// Writes a whole file to `dest` atomically: into a temp file beside it, then renamed over
    /// it, so `dest` is either untouched or complete. A CID that is not a readable file fails
    /// before anything is created.
    ///
    /// # Errors
    /// As [`BlockStore::write_file`], plus [`StoreError::Io`] when `dest` cannot be written.
    pub fn export(&self, cid: &Cid, dest: &Path) -> Result<u64, StoreError> {
        self.manifest(cid)?;
        let tmp = dest.with_extension("shoal-partial");
        let file = File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        let written = self
            .write_file(cid, io::BufWriter::new(&file))
            .and_then(|len| {
                file.sync_data()
                    .map_err(io_err(format!("writing {}", tmp.display())))?;
                fs::rename(&tmp, dest).map_err(io_err(format!("writing {}", dest.display())))?;
                Ok(len)
            });
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    /// Reads a whole file into memory.
    ///
    /// # Errors
    /// As [`BlockStore::write_file`].
    pub fn read_file(&self, cid: &Cid) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        self.write_file(cid, &mut out)?;
        Ok(out)
    }

    /// The CIDs of a file's blocks that are not in this store (the manifest first, if it is
    /// missing, since the chunks cannot be known without it).
    ///
    /// # Errors
    /// As [`BlockStore::manifest`], except that a missing manifest is reported as missing.
    pub fn missing_blocks(&self, cid: &Cid) -> Result<Vec<Cid>, StoreError> {
        match self.manifest(cid) {
            Ok(m) => Ok(m
                .chunks
                .into_iter()
                .filter(|c| !self.has_block(c))
                .collect()),
            Err(StoreError::NotFound(_)) => Ok(vec![*cid]),
            Err(e) => Err(e),
        }
    }
}

/// Blocks staged before they are synced and renamed, when storing a file.
const SYNC_BATCH: usize = 64;
/// Threads that fsync one batch.
const SYNC_THREADS: usize = 8;

/// Blocks written to temp files and not yet synced or renamed into place.
#[derive(Default)]
struct Batch {
    files: Vec<File>,
    /// (temp path, final path)
    staged: Vec<(PathBuf, PathBuf)>,
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn bytes_of(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn round_trip(store: &BlockStore, data: &[u8]) {
        let cid = store.put_bytes(data).unwrap();
        assert_eq!(store.read_file(&cid).unwrap(), data);
        let m = store.manifest(&cid).unwrap();
        assert_eq!(m.len, data.len() as u64);
        assert_eq!(m.chunks.len(), data.len().div_ceil(CHUNK_SIZE));
    }

    #[test]
    fn chunk_boundaries_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        for len in [
            0,
            1,
            CHUNK_SIZE - 1,
            CHUNK_SIZE,
            CHUNK_SIZE + 1,
            3 * CHUNK_SIZE + 7,
        ] {
            round_trip(&store, &bytes_of(len, len as u8));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn random_sizes_round_trip(len in 0usize..(3 * CHUNK_SIZE), seed: u8) {
            let dir = tempfile::tempdir().unwrap();
            let store = BlockStore::open(dir.path()).unwrap();
            round_trip(&store, &bytes_of(len, seed));
        }
    }

    #[test]
    fn same_file_twice_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        let data = bytes_of(2 * CHUNK_SIZE + 5, 9);
        let a = store.put_bytes(&data).unwrap();
        let count = || walk_files(&dir.path().join("blocks"));
        let before = count();
        let b = store.put_bytes(&data).unwrap();
        assert_eq!(a, b);
        assert_eq!(count(), before);
        // bytes_of repeats every 256 bytes, so both full chunks are the same block.
        assert_eq!(before, 3, "2 distinct chunks + 1 manifest");
    }

    fn walk_files(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| {
                if e.path().is_dir() {
                    walk_files(&e.path())
                } else {
                    1
                }
            })
            .sum()
    }

    #[test]
    fn a_block_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cid = BlockStore::open(dir.path())
            .unwrap()
            .put_bytes(b"durable")
            .unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        assert_eq!(store.read_file(&cid).unwrap(), b"durable");
    }

    #[test]
    fn corrupt_block_is_reported_and_quarantined_never_returned() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        let cid = store.put_bytes(b"precious bytes").unwrap();
        let chunk = store.manifest(&cid).unwrap().chunks[0];
        fs::write(store.path_of(&chunk), b"precious bytez").unwrap();
        let err = store.read_file(&cid).unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt { cid: c, .. } if c == chunk),
            "{err}"
        );
        assert!(err.to_string().contains("corrupt"));
        assert!(!store.has_block(&chunk), "moved out of blocks/");
        let quarantined: Vec<Vec<u8>> = fs::read_dir(&store.quarantine)
            .unwrap()
            .flatten()
            .map(|e| fs::read(e.path()).unwrap())
            .collect();
        assert_eq!(
            quarantined,
            vec![b"precious bytez".to_vec()],
            "the bad copy is kept in quarantine/ for inspection"
        );
        // Putting the file again heals it.
        store.put_bytes(b"precious bytes").unwrap();
        assert_eq!(store.read_file(&cid).unwrap(), b"precious bytes");
    }

    #[test]
    fn leftover_temp_files_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let cid = BlockStore::open(dir.path())
            .unwrap()
            .put_bytes(b"kept")
            .unwrap();
        // What a crash between write and rename leaves behind.
        fs::write(dir.path().join("tmp").join("4242-0-deadbeef"), b"torn").unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        assert_eq!(walk_files(&store.tmp), 0, "tmp/ is emptied on open");
        assert_eq!(store.read_file(&cid).unwrap(), b"kept");
    }

    #[test]
    fn a_failed_put_exposes_no_block_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        let bytes = b"never half-written";
        let chunk_path = store.path_of(&Cid::of(bytes));
        // A file where the block's fan-out directory must go: the rename into place fails
        // after the data was written and synced (root ignores permissions, so no chmod).
        let fan_out = chunk_path.parent().unwrap();
        fs::write(fan_out, b"in the way").unwrap();
        let err = store.put_bytes(bytes).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err}");
        assert!(!store.has_block(&Cid::of(bytes)));
        assert_eq!(walk_files(&store.tmp), 0, "the staged temp file is removed");
        fs::remove_file(fan_out).unwrap();
        let cid = store.put_bytes(bytes).unwrap();
        assert_eq!(store.read_file(&cid).unwrap(), bytes);
        assert_eq!(walk_files(&store.tmp), 0);
    }

    #[test]
    fn second_open_of_a_locked_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = BlockStore::open(dir.path()).unwrap();
        let err = BlockStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("in use by another"));
    }

    #[test]
    fn chunk_cid_is_not_a_file_and_wrong_cid_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        let cid = store.put_bytes(b"abc").unwrap();
        let chunk = store.manifest(&cid).unwrap().chunks[0];
        assert!(matches!(
            store.read_file(&chunk),
            Err(StoreError::NotAFile { .. })
        ));
        assert!(matches!(
            store.read_file(&Cid([1; 32])),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.put_verified_batch(&[(Cid([1; 32]), b"abc".to_vec())]),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
