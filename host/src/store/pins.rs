//! What the store keeps: pins (on disk, by class) and leases (in memory, for work in flight).
//!
//! Pin classes and retention. GC never removes a block reachable from a pin or a lease; a pin
//! or lease on a file's CID protects its manifest and every chunk it lists.
//!
//! Kept:
//! - [`PinClass::User`]: what the user `put`. Until the user unpins it.
//! - [`PinClass::Submitted`]: outputs of tasks this node submitted. Until unpinned.
//! - [`PinClass::Checkpoint`]: training checkpoints. Until unpinned.
//! - [`PinClass::RemoteOutput`]: outputs of tasks this node ran for another peer, kept for the
//!   retention time ([`DEFAULT_REMOTE_OUTPUT_RETENTION`], one hour, set by
//!   `StoreConfig::remote_output_retention`) so that the submitter can fetch them; GC drops the
//!   pin after that.
//! - Leases ([`Lease`]): what running tasks need (module, inputs, outputs so far), in-flight
//!   fetches and puts. In memory only, released when the guard drops; a restart ends them.
//!
//! Not kept, collected oldest first (by the time the block was written) when space is needed,
//! or all at once by `gc(GcMode::All)`: remote tasks' outputs after their retention, fetched
//! copies of other peers' files, chunks of interrupted puts or fetches, unpinned files.
//!
//! On disk a pin is an empty file `pins/<class>/<cid hex>` whose modification time is when it
//! was pinned: one file per pin, so pinning is one create and one directory sync, and a crash
//! never tears a list.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    fs::{self, File},
    io,
    path::Path,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime},
};

use super::Cid;

/// How long outputs of tasks run for other peers stay pinned by default.
pub const DEFAULT_REMOTE_OUTPUT_RETENTION: Duration = Duration::from_secs(60 * 60);

/// Why a CID is pinned; see the module docs for each class's retention.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PinClass {
    /// What the user put.
    User,
    /// Outputs of tasks this node submitted.
    Submitted,
    /// Training checkpoints.
    Checkpoint,
    /// Outputs of tasks this node ran for another peer; expires after the retention time.
    RemoteOutput,
}

impl PinClass {
    /// Every class.
    pub const ALL: [Self; 4] = [
        Self::User,
        Self::Submitted,
        Self::Checkpoint,
        Self::RemoteOutput,
    ];

    /// Its name, also its directory under `pins/`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Submitted => "submitted",
            Self::Checkpoint => "checkpoint",
            Self::RemoteOutput => "remote-output",
        }
    }
}

impl fmt::Display for PinClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One pin.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pin {
    /// What is pinned (a file's CID protects the whole file).
    pub cid: Cid,
    /// Why.
    pub class: PinClass,
    /// When it was pinned (last pinned, if pinned again).
    pub since: SystemTime,
}

/// Pins by class and CID, with when each was made.
pub(super) type PinMap = BTreeMap<(PinClass, Cid), SystemTime>;

/// Reads every pin under `pins/`; names that are not a CID are skipped with a warning.
pub(super) fn load(pins_dir: &Path) -> io::Result<PinMap> {
    let mut pins = PinMap::new();
    for class in PinClass::ALL {
        let dir = pins_dir.join(class.as_str());
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(cid) = name.to_str().and_then(|n| n.parse::<Cid>().ok()) else {
                tracing::warn!(path = %entry.path().display(), "ignoring a file that is not a pin");
                continue;
            };
            let since = entry.metadata()?.modified()?;
            pins.insert((class, cid), since);
        }
    }
    Ok(pins)
}

/// Writes a pin durably (the file, then its directory), stamped `now`.
pub(super) fn write(
    pins_dir: &Path,
    cid: &Cid,
    class: PinClass,
    now: SystemTime,
) -> io::Result<()> {
    let dir = pins_dir.join(class.as_str());
    let file = File::create(dir.join(cid.to_hex()))?;
    // Stamped explicitly: re-pinning an existing pin must restart its retention.
    file.set_modified(now)?;
    file.sync_all()?;
    File::open(&dir)?.sync_all()
}

/// Removes a pin's file; returns whether it existed. Not synced: a pin that comes back after
/// a crash only keeps a file longer.
pub(super) fn remove(pins_dir: &Path, cid: &Cid, class: PinClass) -> io::Result<bool> {
    match fs::remove_file(pins_dir.join(class.as_str()).join(cid.to_hex())) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Leases in force: how many leases hold each CID.
pub(super) type LeaseCounts = HashMap<Cid, usize>;

/// An in-memory hold on blocks: while it lives, GC keeps every CID it names (and, for a file's
/// CID, the file's manifest and chunks). Dropping it releases them. Cheap to take; it is the
/// guard for work in flight (a running task's module, inputs and outputs, a fetch, a put).
pub struct Lease {
    state: Arc<Mutex<super::State>>,
    cids: Vec<Cid>,
}

impl Lease {
    pub(super) fn new(state: Arc<Mutex<super::State>>, cids: &[Cid]) -> Self {
        let mut lease = Self {
            state,
            cids: Vec::with_capacity(cids.len()),
        };
        lease.extend(cids);
        lease
    }

    /// Holds one more CID.
    pub fn add(&mut self, cid: Cid) {
        self.extend(&[cid]);
    }

    /// Holds more CIDs.
    pub fn extend(&mut self, cids: &[Cid]) {
        let mut state = lock(&self.state);
        for cid in cids {
            *state.leases.entry(*cid).or_default() += 1;
        }
        self.cids.extend_from_slice(cids);
    }

    /// The CIDs held.
    pub fn cids(&self) -> &[Cid] {
        &self.cids
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        for cid in &self.cids {
            if let Some(n) = state.leases.get_mut(cid) {
                *n -= 1;
                if *n == 0 {
                    state.leases.remove(cid);
                }
            }
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease").field("cids", &self.cids).finish()
    }
}

/// Locks the store's state; a panic elsewhere while holding it leaves counts that are still
/// usable, so poisoning is ignored.
pub(super) fn lock(state: &Mutex<super::State>) -> MutexGuard<'_, super::State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}
