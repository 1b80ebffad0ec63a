//! Who besides this node may read which file: the store side of capability-scoped data.
//!
//! A grant says that a reader (a tenant, by its peer id, or [`PUBLIC`]) may fetch a file
//! from this node: its manifest and every chunk it lists. This node itself needs none
//! locally, but a peer acting for its identity (running a task it sent) reads only what was
//! granted to that identity. Grants are made where a capability is proven: a tenant's
//! task is given a file (its module and inputs, on the submitter and on the executor), a
//! tenant's task writes one (its outputs), or the user puts one `--public`.
//!
//! On disk a grant is a file `grants/<reader>/<cid hex>` holding the file's length (for the
//! reader's stored-bytes quota). It is written without an fsync: a crash may forget a grant,
//! and then the reader's next fetch is denied, never the other way round. A grant whose file
//! is gone does nothing and is swept by GC.

use std::{
    collections::HashMap,
    fs, io,
    path::{Path, PathBuf},
};

use super::Cid;

/// The reader every peer is: a file granted to it may be read by anyone, and is announced.
pub const PUBLIC: &str = "public";

/// Readers by name, each with its files and their lengths, and the lengths' sum.
#[derive(Debug, Default)]
pub(super) struct GrantMap {
    dir: PathBuf,
    readers: HashMap<String, HashMap<Cid, u64>>,
    bytes: HashMap<String, u64>,
}

/// A reader's name is a directory name: peer ids (base58) and [`PUBLIC`] only.
fn valid_reader(reader: &str) -> bool {
    !reader.is_empty() && reader.len() <= 128 && reader.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl GrantMap {
    /// Loads the grants under `dir`, creating it if needed.
    pub(super) fn load(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut readers: HashMap<String, HashMap<Cid, u64>> = HashMap::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let Some(reader) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !valid_reader(&reader) || !entry.file_type()?.is_dir() {
                continue;
            }
            let files = readers.entry(reader).or_default();
            for grant in fs::read_dir(entry.path())? {
                let grant = grant?;
                let cid = grant
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<Cid>().ok());
                let len = fs::read_to_string(grant.path())
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok());
                if let (Some(cid), Some(len)) = (cid, len) {
                    files.insert(cid, len);
                }
            }
        }
        let bytes = readers
            .iter()
            .map(|(reader, files)| (reader.clone(), files.values().sum()))
            .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            readers,
            bytes,
        })
    }

    /// Lets `reader` read `file` (of `len` bytes).
    pub(super) fn grant(&mut self, file: &Cid, len: u64, reader: &str) -> io::Result<()> {
        if !valid_reader(reader) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{reader}` is not a reader name"),
            ));
        }
        let files = self.readers.entry(reader.to_owned()).or_default();
        if files.contains_key(file) {
            return Ok(());
        }
        let dir = self.dir.join(reader);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(file.to_hex()), len.to_string())?;
        files.insert(*file, len);
        *self.bytes.entry(reader.to_owned()).or_default() += len;
        Ok(())
    }

    /// Whether `file` is granted to `reader` itself (not counting [`PUBLIC`]).
    pub(super) fn granted(&self, file: &Cid, reader: &str) -> bool {
        self.readers
            .get(reader)
            .is_some_and(|f| f.contains_key(file))
    }

    /// Whether `reader` may read `file`: granted to it or to everyone.
    pub(super) fn may_read(&self, file: &Cid, reader: &str) -> bool {
        [reader, PUBLIC]
            .iter()
            .any(|r| self.readers.get(*r).is_some_and(|f| f.contains_key(file)))
    }

    /// The files granted to `reader`.
    pub(super) fn files_of(&self, reader: &str) -> Vec<Cid> {
        self.readers
            .get(reader)
            .map_or_else(Vec::new, |files| files.keys().copied().collect())
    }

    /// The bytes of the files granted to `reader`.
    pub(super) fn bytes_of(&self, reader: &str) -> u64 {
        self.bytes.get(reader).copied().unwrap_or(0)
    }

    /// Drops the grants of files for which `gone` holds.
    pub(super) fn sweep(&mut self, gone: impl Fn(&Cid) -> bool) {
        for (reader, files) in &mut self.readers {
            let bytes = self.bytes.entry(reader.clone()).or_default();
            files.retain(|cid, len| {
                if !gone(cid) {
                    return true;
                }
                let _ = fs::remove_file(self.dir.join(reader).join(cid.to_hex()));
                *bytes = bytes.saturating_sub(*len);
                false
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_survive_a_reload_and_go_with_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Cid::of(b"a"), Cid::of(b"b"));
        let mut grants = GrantMap::load(dir.path()).unwrap();
        grants.grant(&a, 10, "alice").unwrap();
        grants.grant(&a, 10, "alice").unwrap();
        grants.grant(&b, 5, PUBLIC).unwrap();
        assert!(grants.grant(&a, 1, "../etc").is_err());
        let mut grants = GrantMap::load(dir.path()).unwrap();
        assert!(grants.may_read(&a, "alice"));
        assert!(!grants.may_read(&a, "bob"));
        assert!(grants.may_read(&b, "bob"), "public files are everyone's");
        assert_eq!(grants.bytes_of("alice"), 10);
        grants.sweep(|cid| *cid == a);
        assert_eq!(grants.bytes_of("alice"), 0);
        assert!(!GrantMap::load(dir.path()).unwrap().may_read(&a, "alice"));
    }
}
