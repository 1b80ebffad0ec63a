//! The on-disk block store: blake3-named blocks under `<data-dir>/blocks`.
//!
//! Trade-offs (see also the block kinds in [`block`] and the manifest format in [`manifest`]):
//! - One file per block, fanned out by the first two hex digits, so that no directory grows
//!   past a few thousand entries and a block can be served with one `read`.
//! - Writes go to a temp file, are fsynced, then renamed into place: a crash leaves either no
//!   block or a whole one, never a torn one. Touched directories are fsynced once per put.
//!   Large blocks are written past the page cache (`direct.rs`): each is synced at once anyway.
//! - Every read is verified against the name. A block that fails is moved to `quarantine/`
//!   and reported, never returned, so a later fetch from the mesh can replace it.
//! - The data dir is locked for the life of the store: two nodes never share one.
//! - The store has a size limit ([`StoreConfig::limit_bytes`]). A block that would pass it is
//!   first made room for by GC of unpinned blocks ([`gc`]), then refused with
//!   [`StoreError::Full`]; space is reserved before a block is written, so the limit holds
//!   even for puts in parallel. What is kept is set by pins and leases ([`pins`]).

pub mod block;
mod direct;
pub mod gc;
pub mod grants;
pub mod manifest;
pub mod pins;
pub mod space;
pub mod writer;

use std::{
    collections::{BTreeSet, HashSet},
    fs::{self, File},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

pub use block::{BlockKind, DATA_HEADER_LEN, DATA_TAG};
pub use gc::{GcMode, GcReport, StoreUsage};
pub use grants::PUBLIC;
pub use manifest::{CHUNK_SIZE, MAX_FILE_LEN, Manifest, ManifestError};
pub use pins::{DEFAULT_REMOTE_OUTPUT_RETENTION, Lease, Pin, PinClass};
pub use shoal::abi::{Cid, MAX_BLOCK_LEN, ParseCidError, Verified};
use space::fmt_bytes;

const _: () = assert!(DATA_HEADER_LEN + CHUNK_SIZE <= MAX_BLOCK_LEN);

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
    /// A manifest lists a block that is not a data block (a manifest, or foreign bytes).
    #[error("chunk {index} of file {file} names block {cid}, which is not a data block")]
    NotAChunk {
        /// The file's CID.
        file: Cid,
        /// Chunk index.
        index: usize,
        /// The block listed.
        cid: Cid,
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
    /// The store's size limit leaves no room, even after GC of unpinned blocks.
    #[error(
        "the store is full: its {} limit is taken by {} of pinned, in-use or incoming blocks, and {} more did not fit; unpin files or raise --store-limit",
        fmt_bytes(*.limit), fmt_bytes(*.used), fmt_bytes(*.needed)
    )]
    Full {
        /// The limit in bytes.
        limit: u64,
        /// Bytes stored or reserved by writes in progress, after GC.
        used: u64,
        /// Bytes of the block that did not fit.
        needed: u64,
    },
    /// The destination's filesystem has less free space than the file needs; nothing was
    /// written.
    #[error(
        "not enough free space to write {}: the file is {} ({needed} bytes), its filesystem has {} free",
        path.display(), fmt_bytes(*.needed), fmt_bytes(*.available)
    )]
    NoSpace {
        /// Where the file was to be written.
        path: PathBuf,
        /// The file's length.
        needed: u64,
        /// Bytes free there.
        available: u64,
    },
    /// A filesystem error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What the store was doing.
        what: String,
        /// The OS error (for example "No space left on device").
        source: io::Error,
    },
}

/// The grants, whatever a panicking holder left: each change is one whole insert or remove.
fn lock_complete(complete: &Mutex<HashSet<Cid>>) -> std::sync::MutexGuard<'_, HashSet<Cid>> {
    complete
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn grants_lock(grants: &Mutex<grants::GrantMap>) -> std::sync::MutexGuard<'_, grants::GrantMap> {
    grants
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

/// How a store is opened.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The size limit in bytes; `None` takes [`space::default_limit`]: what the store holds
    /// plus half the free space of its filesystem at open, between 1 GiB and 64 GiB.
    pub limit_bytes: Option<u64>,
    /// How long [`PinClass::RemoteOutput`] pins last.
    pub remote_output_retention: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            limit_bytes: None,
            remote_output_retention: DEFAULT_REMOTE_OUTPUT_RETENTION,
        }
    }
}

/// The store's bookkeeping, behind one lock (see [`gc`] for why one).
#[derive(Debug)]
struct State {
    /// Bytes of blocks in `blocks/`.
    used: u64,
    /// Blocks in `blocks/`.
    blocks: u64,
    /// Bytes of blocks being written, not yet in `blocks/`.
    reserved: u64,
    limit: u64,
    leases: pins::LeaseCounts,
    pins: pins::PinMap,
}

/// A content-addressed block store in a locked data dir.
#[derive(Debug)]
pub struct BlockStore {
    blocks: PathBuf,
    tmp: PathBuf,
    quarantine: PathBuf,
    pins_dir: PathBuf,
    tmp_counter: AtomicU64,
    state: Arc<Mutex<State>>,
    retention: Duration,
    /// Who besides this node may read which file ([`grants`]); its own lock, so that
    /// serving a block never waits on a GC or a commit.
    grants: Mutex<grants::GrantMap>,
    /// Files every block of which [`BlockStore::missing_blocks`] found here, with none
    /// removed since: a task's module or input that is already here then costs no disk
    /// lookup. All are forgotten whenever a block goes (a GC, a quarantine), and a file when
    /// a read of it finds one of its blocks missing; a GC cannot remove a block while a lease
    /// holds its file, so a file is never found complete during a GC that then removes part
    /// of it.
    complete: Mutex<HashSet<Cid>>,
    // Held for the store's lifetime; the OS drops the lock with the file.
    _lock: File,
}

impl BlockStore {
    /// Opens (creating if needed) the store in `data_dir` with the default configuration and
    /// locks it.
    ///
    /// # Errors
    /// As [`BlockStore::open_with`].
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, StoreConfig::default())
    }

    /// Opens (creating if needed) the store in `data_dir`, locks it, loads its pins and counts
    /// its blocks.
    ///
    /// # Errors
    /// [`StoreError::Locked`] if another process holds the dir, [`StoreError::Io`] if it
    /// cannot be created or read.
    pub fn open_with(data_dir: &Path, config: StoreConfig) -> Result<Self, StoreError> {
        let blocks = data_dir.join("blocks");
        let tmp = data_dir.join("tmp");
        let quarantine = data_dir.join("quarantine");
        let pins_dir = data_dir.join("pins");
        for dir in [&blocks, &tmp, &quarantine, &pins_dir] {
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
        let grants_dir = data_dir.join("grants");
        let grants = grants::GrantMap::load(&grants_dir).map_err(io_err(format!(
            "reading grants in {}",
            grants_dir.display()
        )))?;
        let pins = pins::load(&pins_dir)
            .map_err(io_err(format!("reading pins in {}", pins_dir.display())))?;
        let found = gc::walk_blocks(&blocks)
            .map_err(io_err(format!("counting blocks in {}", blocks.display())))?;
        let used = found.iter().map(|f| f.len).sum();
        let limit = config
            .limit_bytes
            .unwrap_or_else(|| space::default_limit(used, space::available(data_dir).unwrap_or(0)));
        let state = State {
            used,
            blocks: found.len() as u64,
            reserved: 0,
            limit,
            leases: Default::default(),
            pins,
        };
        Ok(Self {
            blocks,
            tmp,
            quarantine,
            pins_dir,
            tmp_counter: AtomicU64::new(0),
            state: Arc::new(Mutex::new(state)),
            retention: config.remote_output_retention,
            grants: Mutex::new(grants),
            complete: Mutex::default(),
            _lock: lock,
        })
    }

    fn path_of(&self, cid: &Cid) -> PathBuf {
        let hex = cid.to_hex();
        self.blocks.join(&hex[..2]).join(hex)
    }

    /// Lets `reader` (a tenant's peer id, or [`PUBLIC`]) fetch file `file` from this node:
    /// its manifest and chunks. See [`grants`].
    ///
    /// # Errors
    /// [`StoreError::NotAFile`] and read errors of the manifest; [`StoreError::Io`] when the
    /// grant cannot be written.
    pub fn grant(&self, file: &Cid, reader: &str) -> Result<(), StoreError> {
        // Granted on every send of a task that uses it: the common case reads no manifest.
        if grants_lock(&self.grants).granted(file, reader) {
            return Ok(());
        }
        let len = self.manifest(file)?.len;
        grants_lock(&self.grants)
            .grant(file, len, reader)
            .map_err(io_err(format!("granting {file} to {reader}")))
    }

    /// Whether `reader` may fetch block `cid` of file `file` from this node: the file is
    /// granted to it (or public), and `cid` is the file's manifest or one of its chunks.
    pub fn may_read(&self, file: &Cid, cid: &Cid, reader: &str) -> bool {
        grants_lock(&self.grants).may_read(file, reader)
            && (cid == file || self.manifest(file).is_ok_and(|m| m.chunks.contains(cid)))
    }

    /// The files anyone may read here: announced by the node when it starts.
    pub fn public_files(&self) -> Vec<Cid> {
        grants_lock(&self.grants).files_of(PUBLIC)
    }

    /// The bytes of the files granted to `reader` here: its stored-bytes quota's measure.
    pub fn granted_bytes(&self, reader: &str) -> u64 {
        grants_lock(&self.grants).bytes_of(reader)
    }

    /// Whether the block is present (not verified).
    pub fn has_block(&self, cid: &Cid) -> bool {
        self.path_of(cid).is_file()
    }

    /// Whether every block of file `cid` is known to be here: found so by
    /// [`BlockStore::missing_blocks`], with no block removed since. Memory only; `false`
    /// says nothing.
    pub fn known_complete(&self, cid: &Cid) -> bool {
        lock_complete(&self.complete).contains(cid)
    }

    /// Forgets every file known complete: a block went.
    pub(crate) fn forget_complete(&self) {
        lock_complete(&self.complete).clear();
    }

    /// Forgets `file` as complete when reading it found one of its blocks missing (removed
    /// behind the store's back). Only that file: a peer asking for blocks that are not here
    /// must not wipe what is known of the others.
    fn forget_if_missing(&self, file: &Cid, error: &StoreError) {
        if matches!(error, StoreError::NotFound(_)) {
            lock_complete(&self.complete).remove(file);
        }
    }

    /// Whether file `file` is granted to `reader` itself (not only public). Memory only.
    pub fn granted(&self, file: &Cid, reader: &str) -> bool {
        grants_lock(&self.grants).granted(file, reader)
    }

    /// Holds `cids` (and, for file CIDs, their manifests and chunks) against GC until the
    /// returned guard drops. Take it before the work that needs the blocks: a running task's
    /// module and inputs, a fetch's file CID.
    pub fn lease(&self, cids: &[Cid]) -> Lease {
        Lease::new(self.state.clone(), cids)
    }

    /// Pins `cid` in `class`, durably; pinning again restarts its retention. A file's CID
    /// protects the whole file. The CID need not be stored yet.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the pin cannot be written.
    pub fn pin(&self, cid: &Cid, class: PinClass) -> Result<(), StoreError> {
        let now = SystemTime::now();
        pins::write(&self.pins_dir, cid, class, now).map_err(io_err(format!("pinning {cid}")))?;
        pins::lock(&self.state).pins.insert((class, *cid), now);
        Ok(())
    }

    /// Removes the pin of `cid` in `class`; returns whether there was one. Its blocks stay
    /// until a GC finds nothing else reaching them.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the pin cannot be removed.
    pub fn unpin(&self, cid: &Cid, class: PinClass) -> Result<bool, StoreError> {
        let mut state = pins::lock(&self.state);
        let on_disk =
            pins::remove(&self.pins_dir, cid, class).map_err(io_err(format!("unpinning {cid}")))?;
        Ok(state.pins.remove(&(class, *cid)).is_some() || on_disk)
    }

    /// Every pin, by class then CID.
    pub fn pins(&self) -> Vec<Pin> {
        pins::lock(&self.state)
            .pins
            .iter()
            .map(|(&(class, cid), &since)| Pin { cid, class, since })
            .collect()
    }

    /// Reserves room for a block of `len` bytes under the limit, collecting unpinned blocks
    /// first if it does not fit.
    fn reserve(&self, len: u64) -> Result<(), StoreError> {
        let mut state = pins::lock(&self.state);
        let wanted = state.used + state.reserved + len;
        if wanted > state.limit {
            let over = wanted - state.limit;
            if let Err(e) = self.gc_locked(&mut state, GcMode::Free(over)) {
                tracing::warn!(error = %e, "GC to make room failed");
            }
            if state.used + state.reserved + len > state.limit {
                return Err(StoreError::Full {
                    limit: state.limit,
                    used: state.used + state.reserved,
                    needed: len,
                });
            }
        }
        state.reserved += len;
        Ok(())
    }

    /// Writes a block already checked to hash to `cid` to a temp file, unsynced;
    /// [`BlockStore::commit`] makes it durable. The block is leased before anything else, so
    /// GC cannot remove a stored copy this put relies on.
    fn stage(
        &self,
        cid: Cid,
        bytes: &[u8],
        batch: &mut Batch<'_>,
        lease: &mut Lease,
    ) -> Result<Cid, StoreError> {
        if bytes.len() > MAX_BLOCK_LEN {
            return Err(StoreError::BlockTooLarge { len: bytes.len() });
        }
        lease.add(cid);
        let path = self.path_of(&cid);
        if batch.staged.iter().any(|s| s.path == path)
            || (path.is_file() && self.get_block(&cid).is_ok())
        {
            return Ok(cid);
        }
        let len = bytes.len() as u64;
        self.reserve(len)?;
        batch.reserved += len;
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!(
            "{}-{n}-{}",
            std::process::id(),
            &cid.to_hex()[..16]
        ));
        match direct::create_with(&tmp, bytes) {
            Ok(file) => {
                batch.files.push(file);
                batch.staged.push(Staged { tmp, path, len });
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
    /// disk's flush latency, not its bandwidth, is what a chunked put waits on. The renames
    /// hold the state lock, so a GC sees a block either staged or stored and counted.
    fn commit(&self, mut batch: Batch<'_>, dirs: &mut BTreeSet<PathBuf>) -> Result<(), StoreError> {
        let files = std::mem::take(&mut batch.files);
        let per_thread = files.len().div_ceil(SYNC_THREADS).max(1);
        let synced = std::thread::scope(|scope| {
            let mut groups = files.chunks(per_thread);
            let mine = groups.next();
            let workers: Vec<_> = groups
                .map(|group| scope.spawn(move || group.iter().try_for_each(File::sync_data)))
                .collect();
            // This thread syncs one group itself: a batch of one block starts no thread.
            let synced = mine.map_or(Ok(()), |group| group.iter().try_for_each(File::sync_data));
            workers.into_iter().fold(synced, |synced, w| {
                let joined = w
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("fsync thread panicked")));
                synced.and(joined)
            })
        });
        drop(files);
        // On error the batch's drop removes what is still staged and releases its room.
        synced.map_err(io_err("syncing new blocks to disk"))?;
        let mut state = pins::lock(&self.state);
        let mut staged = std::mem::take(&mut batch.staged).into_iter();
        while let Some(s) = staged.next() {
            let dir = s
                .path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| self.blocks.clone());
            let existed = s.path.is_file();
            if let Err(e) = fs::create_dir_all(&dir).and_then(|()| fs::rename(&s.tmp, &s.path)) {
                drop(state);
                let what = format!("storing block {}", s.path.display());
                batch.staged.push(s);
                batch.staged.extend(staged);
                return Err(io_err(what)(e));
            }
            state.reserved -= s.len;
            batch.reserved -= s.len;
            if !existed {
                state.used += s.len;
                state.blocks += 1;
            }
            dirs.insert(dir);
        }
        // Before the batch drops: its drop may take the lock.
        drop(state);
        Ok(())
    }

    /// Stores verified blocks (fetched under CIDs someone named), idempotently, synced as one
    /// batch. They are not hashed again: [`Verified`] is the proof. The caller's lease on the
    /// file keeps them once they are stored.
    ///
    /// # Errors
    /// [`StoreError::Full`]; I/O errors.
    pub fn put_verified_batch(&self, blocks: &[Verified]) -> Result<(), StoreError> {
        let mut dirs = BTreeSet::new();
        self.put_verified_unsynced(blocks, &mut dirs)?;
        self.sync_dirs(&dirs)
    }

    /// [`BlockStore::put_verified_batch`] up to the renames: each block is durable and in
    /// place, and the directories it went into are added to `dirs` for the caller to sync
    /// (a crash before that sync may lose a block, never show half of one).
    fn put_verified_unsynced(
        &self,
        blocks: &[Verified],
        dirs: &mut BTreeSet<PathBuf>,
    ) -> Result<(), StoreError> {
        let mut lease = self.lease(&[]);
        let mut batch = Batch::new(self);
        for block in blocks {
            self.stage(block.cid(), block.bytes(), &mut batch, &mut lease)?;
        }
        self.commit(batch, dirs)
    }

    /// Syncs directories that blocks were renamed into, on up to [`SYNC_THREADS`] threads:
    /// each sync waits on the disk's flush, so a file spread over 256 prefix directories
    /// would otherwise wait 256 times in a row.
    fn sync_dirs(&self, dirs: &BTreeSet<PathBuf>) -> Result<(), StoreError> {
        let dirs: Vec<&PathBuf> = dirs.iter().collect();
        let per_thread = dirs.len().div_ceil(SYNC_THREADS).max(1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = dirs
                .chunks(per_thread)
                .map(|group| {
                    scope.spawn(move || {
                        group.iter().try_for_each(|dir| {
                            File::open(dir)
                                .and_then(|d| d.sync_all())
                                .map_err(io_err(format!("syncing {}", dir.display())))
                        })
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(io_err("syncing directories")(io::Error::other(
                        "sync thread panicked",
                    )))
                })
            })
        })
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
            self.forget_complete();
            let mut state = pins::lock(&self.state);
            if fs::rename(&path, self.quarantine.join(cid.to_hex())).is_ok() {
                state.used = state.used.saturating_sub(bytes.len() as u64);
                state.blocks = state.blocks.saturating_sub(1);
            }
            tracing::warn!(%cid, %actual, "quarantined a corrupt block");
            return Err(StoreError::Corrupt { cid: *cid, actual });
        }
        Ok(bytes)
    }

    /// Stores a file of any size read from `reader`: its chunks, then its manifest. Returns
    /// the file's CID (the manifest's). Nothing pins it: pin it, or use
    /// [`BlockStore::put_file_pinned`] or [`BlockStore::put_file_in`], or a GC may remove it.
    ///
    /// # Errors
    /// As [`BlockStore::put_file_in`].
    pub fn put_file(&self, reader: impl Read) -> Result<Cid, StoreError> {
        self.put_file_in(reader, &mut self.lease(&[]))
    }

    /// Stores a file as [`BlockStore::put_file`] and pins it in `class` before its blocks are
    /// released to GC.
    ///
    /// # Errors
    /// As [`BlockStore::put_file_in`], and [`StoreError::Io`] if the pin cannot be written.
    pub fn put_file_pinned(&self, reader: impl Read, class: PinClass) -> Result<Cid, StoreError> {
        let mut lease = self.lease(&[]);
        let cid = self.put_file_in(reader, &mut lease)?;
        self.pin(&cid, class)?;
        Ok(cid)
    }

    /// Stores a file as [`BlockStore::put_file`], adding each of its blocks to `lease` before
    /// it is looked up or written, so they stay while the lease lives (a task's outputs until
    /// the task's caller pins them). An interrupted put leaves only chunks that no pin
    /// reaches, which GC removes once the lease is dropped.
    ///
    /// # Errors
    /// [`StoreError::FileTooLarge`] past [`MAX_FILE_LEN`]; [`StoreError::Full`] when the
    /// store's limit leaves no room after GC; [`StoreError::Io`] on read or write errors.
    pub fn put_file_in(&self, mut reader: impl Read, lease: &mut Lease) -> Result<Cid, StoreError> {
        // The chunks go through the same writer threads as a fetch's ([`writer`]), each
        // leased here before it is sent, so that GC leaves it until the manifest reaches it.
        let manifest = self.write_with(|writer| {
            let mut chunks = Vec::new();
            let mut len = 0u64;
            loop {
                let mut block = vec![0u8; DATA_HEADER_LEN + CHUNK_SIZE];
                block[0] = DATA_TAG;
                let n = read_full(&mut reader, &mut block[DATA_HEADER_LEN..])
                    .map_err(io_err("reading the file to store"))?;
                if n == 0 {
                    break;
                }
                if chunks.len() == manifest::MAX_CHUNKS {
                    return Err(StoreError::FileTooLarge);
                }
                block.truncate(DATA_HEADER_LEN + n);
                let block = Verified::new(block);
                lease.add(block.cid());
                chunks.push(block.cid());
                len += n as u64;
                // Not tokio's `blocking_send`: a put may be called on a runtime's thread (it
                // blocks on the disk there anyway), where that one panics.
                let sent = futures::executor::block_on(writer.send(block));
                if sent.is_err() || n < CHUNK_SIZE {
                    // A failed writer says why once the others have stopped.
                    break;
                }
            }
            Ok(Manifest { len, chunks })
        })?;
        // The chunks are durable and in place: now the manifest that names them.
        let manifest = Verified::new(manifest.encode());
        lease.add(manifest.cid());
        self.put_verified_batch(std::slice::from_ref(&manifest))?;
        Ok(manifest.cid())
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
    /// [`StoreError::NotAFile`] if the CID names a data block (whatever its content) or
    /// anything else that is not a manifest; read errors as [`BlockStore::get_block`].
    pub fn manifest(&self, cid: &Cid) -> Result<Manifest, StoreError> {
        let bytes = self
            .get_block(cid)
            .inspect_err(|e| self.forget_if_missing(cid, e))?;
        Manifest::decode(&bytes).map_err(|source| StoreError::NotAFile { cid: *cid, source })
    }

    /// Chunk `index` of a file as its whole data block (tag included), verified, checked to be
    /// a data block and length-checked against the manifest.
    fn chunk_block(
        &self,
        file: &Cid,
        manifest: &Manifest,
        index: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let cid = manifest.chunks[index];
        let bytes = self
            .get_block(&cid)
            .inspect_err(|e| self.forget_if_missing(file, e))?;
        let Some(payload) = block::data_payload(&bytes) else {
            return Err(StoreError::NotAChunk {
                file: *file,
                index,
                cid,
            });
        };
        let expected = manifest.chunk_len(index);
        if payload.len() != expected {
            return Err(StoreError::ChunkLength {
                file: *file,
                index,
                expected,
                actual: payload.len(),
            });
        }
        Ok(bytes)
    }

    /// Reads chunk `index` of a file: its bytes without the data tag, verified, checked to be
    /// a data block and length-checked.
    ///
    /// # Errors
    /// As [`BlockStore::get_block`], plus [`StoreError::NotAChunk`] and
    /// [`StoreError::ChunkLength`].
    pub fn read_chunk(
        &self,
        file: &Cid,
        manifest: &Manifest,
        index: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let mut bytes = self.chunk_block(file, manifest, index)?;
        bytes.drain(..DATA_HEADER_LEN);
        Ok(bytes)
    }

    /// Writes a whole file to `writer`, verifying each chunk; returns its length.
    ///
    /// # Errors
    /// As [`BlockStore::read_chunk`], plus [`StoreError::Io`] on write errors.
    pub fn write_file(&self, cid: &Cid, writer: impl Write) -> Result<u64, StoreError> {
        let manifest = self.manifest(cid)?;
        self.write_chunks(cid, &manifest, writer)
    }

    fn write_chunks(
        &self,
        cid: &Cid,
        manifest: &Manifest,
        mut writer: impl Write,
    ) -> Result<u64, StoreError> {
        for index in 0..manifest.chunks.len() {
            let block = self.chunk_block(cid, manifest, index)?;
            writer
                .write_all(&block[DATA_HEADER_LEN..])
                .map_err(io_err(format!("writing file {cid}")))?;
        }
        writer
            .flush()
            .map_err(io_err(format!("writing file {cid}")))?;
        Ok(manifest.len)
    }

    /// Writes a whole file to `dest` atomically: into a temp file beside it, then renamed over
    /// it, so `dest` is either untouched or complete. A CID that is not a readable file, or a
    /// file longer than the free space of `dest`'s filesystem, fails before anything is
    /// created.
    ///
    /// # Errors
    /// As [`BlockStore::write_file`], plus [`StoreError::NoSpace`], and [`StoreError::Io`]
    /// when `dest` cannot be written.
    pub fn export(&self, cid: &Cid, dest: &Path) -> Result<u64, StoreError> {
        self.export_checked(cid, dest, space::available)
    }

    /// [`BlockStore::export`], with the free space of a directory measured by `free`.
    fn export_checked(
        &self,
        cid: &Cid,
        dest: &Path,
        free: impl FnOnce(&Path) -> io::Result<u64>,
    ) -> Result<u64, StoreError> {
        let manifest = self.manifest(cid)?;
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let available =
            free(dir).map_err(io_err(format!("measuring free space in {}", dir.display())))?;
        if manifest.len > available {
            return Err(StoreError::NoSpace {
                path: dest.to_path_buf(),
                needed: manifest.len,
                available,
            });
        }
        let tmp = dest.with_extension("shoal-partial");
        let file = File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        let written = self
            .write_chunks(cid, &manifest, io::BufWriter::new(&file))
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
        /// Files remembered complete; past this, the memory starts over.
        const MAX_COMPLETE: usize = 1 << 16;
        if self.known_complete(cid) {
            return Ok(Vec::new());
        }
        let missing: Vec<Cid> = match self.manifest(cid) {
            Ok(m) => m
                .chunks
                .into_iter()
                .filter(|c| !self.has_block(c))
                .collect(),
            Err(StoreError::NotFound(_)) => return Ok(vec![*cid]),
            Err(e) => return Err(e),
        };
        if missing.is_empty() {
            let mut complete = lock_complete(&self.complete);
            if complete.len() >= MAX_COMPLETE {
                complete.clear();
            }
            complete.insert(*cid);
        }
        Ok(missing)
    }
}

/// Threads that fsync one batch.
const SYNC_THREADS: usize = 8;

/// A block written to a temp file and not yet renamed into place.
struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    len: u64,
}

/// Blocks written to temp files and not yet synced or renamed into place, with the room
/// reserved for them. Dropping it removes what is still staged and releases the room, so a
/// put that fails midway leaves no temp file and no reservation.
struct Batch<'s> {
    store: &'s BlockStore,
    files: Vec<File>,
    staged: Vec<Staged>,
    reserved: u64,
}

impl<'s> Batch<'s> {
    fn new(store: &'s BlockStore) -> Self {
        Self {
            store,
            files: Vec::new(),
            staged: Vec::new(),
            reserved: 0,
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.files.clear();
        for s in &self.staged {
            let _ = fs::remove_file(&s.tmp);
        }
        if self.reserved > 0 {
            let mut state = pins::lock(&self.store.state);
            state.reserved = state.reserved.saturating_sub(self.reserved);
        }
    }
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
        let chunk = Cid::of(&block::data_block(bytes));
        let chunk_path = store.path_of(&chunk);
        // A file where the block's fan-out directory must go: the rename into place fails
        // after the data was written and synced (root ignores permissions, so no chmod).
        let fan_out = chunk_path.parent().unwrap();
        fs::write(fan_out, b"in the way").unwrap();
        let err = store.put_bytes(bytes).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err}");
        assert!(!store.has_block(&chunk));
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
        // Bytes that do not hash to the CID named cannot be stored as its block.
        assert!(Verified::check(Cid([1; 32]), b"abc".to_vec()).is_err());
    }

    #[test]
    fn a_chunk_whose_content_is_a_manifest_is_not_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        // A manifest that would list one chunk 2,048 times: a 2 GiB "file" from 64 KiB.
        let big = store.put_bytes(&bytes_of(CHUNK_SIZE, 3)).unwrap();
        let one = store.manifest(&big).unwrap().chunks[0];
        let crafted = Manifest {
            len: 2048 * CHUNK_SIZE as u64,
            chunks: vec![one; 2048],
        }
        .encode();
        let file = store.put_bytes(&crafted).unwrap();
        let chunk = store.manifest(&file).unwrap().chunks[0];
        for err in [
            store.read_file(&chunk).unwrap_err(),
            store.manifest(&chunk).unwrap_err(),
            store.export(&chunk, &dir.path().join("out")).unwrap_err(),
            store.write_file(&chunk, io::sink()).unwrap_err(),
        ] {
            assert!(
                matches!(
                    err,
                    StoreError::NotAFile {
                        source: ManifestError::NotAManifest,
                        ..
                    }
                ),
                "{err}"
            );
        }
        assert!(!dir.path().join("out").exists());
        assert_eq!(
            store.read_file(&file).unwrap(),
            crafted,
            "the real file round-trips"
        );
    }

    #[test]
    fn a_file_known_complete_is_forgotten_only_when_a_block_of_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        let cid = store.put_file(&b"a module"[..]).unwrap();
        assert!(!store.known_complete(&cid), "known only once checked");
        assert!(store.missing_blocks(&cid).unwrap().is_empty());
        assert!(store.known_complete(&cid));

        // Asking for blocks or files that are not here forgets nothing.
        let absent = Cid::of(b"absent");
        assert!(matches!(
            store.get_block(&absent),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.manifest(&absent),
            Err(StoreError::NotFound(_))
        ));
        assert!(store.known_complete(&cid));

        // A chunk removed behind the store's back: the read that finds it gone forgets the file.
        let chunk = store.manifest(&cid).unwrap().chunks[0];
        fs::remove_file(store.path_of(&chunk)).unwrap();
        assert!(matches!(
            store.read_file(&cid),
            Err(StoreError::NotFound(_))
        ));
        assert!(!store.known_complete(&cid));
        assert_eq!(store.missing_blocks(&cid).unwrap(), vec![chunk]);

        // A GC that removes blocks forgets every file.
        let other = store.put_file(&b"another"[..]).unwrap();
        assert!(store.missing_blocks(&other).unwrap().is_empty());
        assert!(store.gc(GcMode::All).unwrap().freed_blocks > 0);
        assert!(!store.known_complete(&other));
    }

    /// Stores `bytes` as a raw block, as a fetch from a peer would.
    fn put_raw(store: &BlockStore, bytes: &[u8]) -> Cid {
        let block = Verified::new(bytes.to_vec());
        store
            .put_verified_batch(std::slice::from_ref(&block))
            .unwrap();
        block.cid()
    }

    #[test]
    fn a_manifest_listing_anything_but_a_data_block_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        let inner = store.put_bytes(b"abc").unwrap();
        let untagged = put_raw(&store, b"abc");
        for listed in [inner, untagged] {
            let outer = put_raw(
                &store,
                &Manifest {
                    len: 3,
                    chunks: vec![listed],
                }
                .encode(),
            );
            let err = store.read_file(&outer).unwrap_err();
            assert!(
                matches!(err, StoreError::NotAChunk { cid, index: 0, .. } if cid == listed),
                "{err}"
            );
            let m = store.manifest(&outer).unwrap();
            assert!(store.read_chunk(&outer, &m, 0).is_err());
        }
    }

    #[test]
    fn every_chunk_length_is_checked_against_the_declared_length() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        let short = put_raw(&store, &block::data_block(b"abc"));
        let lying = put_raw(
            &store,
            &Manifest {
                len: 10,
                chunks: vec![short],
            }
            .encode(),
        );
        let err = store.read_file(&lying).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::ChunkLength {
                    expected: 10,
                    actual: 3,
                    ..
                }
            ),
            "{err}"
        );
        let m = store.manifest(&lying).unwrap();
        assert!(store.read_chunk(&lying, &m, 0).is_err());
        let out = dir.path().join("out");
        assert!(store.export(&lying, &out).is_err());
        assert!(!out.exists() && !out.with_extension("shoal-partial").exists());
    }

    #[test]
    fn read_chunk_returns_the_chunk_without_its_tag() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        let data = bytes_of(CHUNK_SIZE + 5, 1);
        let cid = store.put_bytes(&data).unwrap();
        let m = store.manifest(&cid).unwrap();
        assert_eq!(store.read_chunk(&cid, &m, 0).unwrap(), data[..CHUNK_SIZE]);
        assert_eq!(store.read_chunk(&cid, &m, 1).unwrap(), data[CHUNK_SIZE..]);
        assert_eq!(
            store.get_block(&m.chunks[1]).unwrap(),
            block::data_block(&data[CHUNK_SIZE..]),
            "the block on disk and on the wire carries its tag"
        );
    }

    #[test]
    fn export_checks_free_space_before_writing_anything() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        let cid = store.put_bytes(&bytes_of(5000, 2)).unwrap();
        let out = dir.path().join("out.bin");
        let err = store.export_checked(&cid, &out, |_| Ok(4096)).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NoSpace {
                    needed: 5000,
                    available: 4096,
                    ..
                }
            ),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("4.9 KiB") && msg.contains("4 KiB free"),
            "{msg}"
        );
        assert!(!out.exists() && !out.with_extension("shoal-partial").exists());
        assert_eq!(store.export(&cid, &out).unwrap(), 5000);
        assert_eq!(fs::read(&out).unwrap(), bytes_of(5000, 2));
    }
}
