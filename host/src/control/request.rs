//! A task as a user describes it (a module file, inputs as files or CIDs, sizes and
//! durations), and the one function that turns it into a runnable [`TaskSpec`]: `host run`,
//! `host submit` and the node's control server all build tasks here.

use std::{
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{Exit, Failure};
use crate::{
    runtime::{Limits, MAX_TASK_MEMORY, TaskSpec, limits::fmt_bytes},
    store::{BlockStore, Cid, PinClass},
};

/// A task as the command line gives it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskRequest {
    /// The module file.
    pub module: PathBuf,
    /// The entry to call, when the module has several.
    pub task: Option<String>,
    /// `NAME` and a file path or a CID.
    pub inputs: Vec<(String, String)>,
    /// Arguments.
    pub args: Vec<(String, String)>,
    /// Linear memory limit in bytes.
    pub memory: u64,
    /// Wall-time limit, also the CPU budget.
    pub timeout: Duration,
    /// Run its tensor math on the deterministic cpu backend, whatever the node's device
    /// (`--deterministic`; `--verify` implies it).
    #[serde(default)]
    pub deterministic: bool,
    /// The tenant it runs for when that is not the node (`--key`): the tenant's delegation
    /// to the node.
    #[serde(default)]
    pub credential: Option<shoal_p2p::Credential>,
}

impl TaskRequest {
    /// Paths made absolute, so that a node with another working directory finds the files.
    #[must_use]
    pub fn absolute(mut self) -> Self {
        self.module = std::path::absolute(&self.module).unwrap_or(self.module);
        for (_, value) in &mut self.inputs {
            *value = absolute(value);
        }
        self
    }

    /// Stores the module and the file inputs, and builds the spec. Blocking (file I/O).
    ///
    /// # Errors
    /// [`Exit::Usage`] for a bad module path, input or limit; [`Exit::Node`] when storing
    /// fails.
    pub fn build(&self, store: &BlockStore) -> Result<TaskSpec, Failure> {
        check_memory(self.memory)?;
        let module = store_file(store, &self.module)?;
        let inputs = self
            .inputs
            .iter()
            .map(|(name, value)| Ok((name.clone(), input(store, name, value)?)))
            .collect::<Result<_, Failure>>()?;
        Ok(TaskSpec {
            module,
            task: self.task.clone(),
            inputs,
            args: self.args.clone(),
            // The one place user-given limits become [`Limits`].
            limits: Limits {
                memory_bytes: self.memory,
                timeout: self.timeout,
                cpu_budget: self.timeout,
                ..Limits::default()
            },
            depth: 0,
            deterministic: self.deterministic,
            tenant: self
                .credential
                .as_ref()
                .and_then(|c| postcard::to_stdvec(c).ok()),
        })
    }
}

/// An input value with an existing file's path made absolute; anything else (a CID) as is.
pub fn absolute(value: &str) -> String {
    let path = Path::new(value);
    match path.exists().then(|| std::path::absolute(path)) {
        Some(Ok(abs)) => abs.display().to_string(),
        _ => value.to_owned(),
    }
}

/// Refuses a memory limit over the runtime's ceiling, naming both.
///
/// # Errors
/// [`Exit::Usage`] over [`MAX_TASK_MEMORY`].
pub fn check_memory(bytes: u64) -> Result<u64, Failure> {
    if bytes > MAX_TASK_MEMORY {
        return Err(Exit::Usage.fail(format_args!(
            "--memory {} is over the {} task memory limit",
            fmt_bytes(bytes),
            fmt_bytes(MAX_TASK_MEMORY)
        )));
    }
    Ok(bytes)
}

/// Stores a file named by the user; a missing or unreadable file is bad usage.
///
/// # Errors
/// [`Exit::Usage`] when the file cannot be read; [`Exit::Node`] when storing fails.
pub fn store_file(store: &BlockStore, path: &Path) -> Result<Cid, Failure> {
    let file = File::open(path)
        .map_err(|e| Exit::Usage.fail(format_args!("cannot read {}: {e}", path.display())))?;
    Ok(store.put_file_pinned(BufReader::with_capacity(1 << 20, file), PinClass::User)?)
}

/// Writes file `cid` to `path`: atomically (a temp file renamed over it) when `path` is a
/// regular file or absent. Anything else (a symlink, a FIFO, a device, a directory) is
/// refused unless `force`, and then written into in place: renaming over it would replace
/// `/dev/null` itself, or follow a link somewhere the user never named.
///
/// # Errors
/// [`Exit::Usage`] for a refused target; store and I/O errors.
pub fn write_out(store: &BlockStore, cid: &Cid, path: &Path, force: bool) -> Result<u64, Failure> {
    let kind = match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_file() => file_kind(&meta.file_type()),
        _ => return Ok(store.export(cid, path)?),
    };
    if !force || kind == "directory" {
        return Err(Exit::Usage.fail(format_args!(
            "{} is a {kind}, not a regular file: refusing to write to it{}",
            path.display(),
            if kind == "directory" {
                ""
            } else {
                " (--force writes into it)"
            }
        )));
    }
    store.manifest(cid)?;
    let file = File::options()
        .write(true)
        .open(path)
        .map_err(|e| Exit::Usage.fail(format_args!("cannot open {}: {e}", path.display())))?;
    Ok(store.write_file(cid, std::io::BufWriter::new(file))?)
}

fn file_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    match kind {
        k if k.is_dir() => "directory",
        k if k.is_symlink() => "symbolic link",
        k if k.is_fifo() => "FIFO",
        k if k.is_char_device() || k.is_block_device() => "device",
        k if k.is_socket() => "socket",
        _ => "special file",
    }
}

/// `NAME=FILE|CID`: an existing file wins, else the value must be a CID.
fn input(store: &BlockStore, name: &str, value: &str) -> Result<Cid, Failure> {
    let path = Path::new(value);
    if path.exists() {
        return store_file(store, path);
    }
    value.parse::<Cid>().map_err(|_| {
        Exit::Usage.fail(format_args!(
            "input `{name}`: `{value}` is neither a file nor a CID"
        ))
    })
}
