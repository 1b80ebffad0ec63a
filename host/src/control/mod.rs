//! The local control endpoint: a Unix socket in the data dir, mode 0600, that the CLI uses to
//! talk to its node. Nothing control-like ever listens on the network (Ray's unauthenticated
//! job API is CVE-2023-48022).
//!
//! Protocol: the client writes one JSON [`Request`] line; the node answers with zero or more
//! [`Frame::Progress`] lines (a map's counts, or a task's own progress records) and then one
//! final [`Frame::Done`] or [`Frame::Error`] line. Each
//! request type names its reply type through [`Call`], so the CLI and the server share one
//! typed definition of every verb.

mod request;
mod server;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use shoal_p2p::Capacity;

pub use self::{
    request::{TaskRequest, absolute, check_memory, store_file, write_out},
    server::serve,
};
use crate::{
    runtime::{FailureKind, TaskReport},
    sched::MapProgress,
    store::{Cid, GcReport, StoreError, StoreUsage},
};

/// The longest request line the node reads.
pub const MAX_REQUEST_LEN: usize = 16 << 20;

/// The socket path for a data dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// How a command ended, as a process exit code; the node picks it for what it did, the CLI
/// exits with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// The task failed: trap, timeout, out of memory, its own error, lost.
    TaskFailed = 1,
    /// Bad usage: unknown flag, unreadable file, malformed value.
    Usage = 2,
    /// Bad module: not wasm, unknown imports, no such task.
    BadModule = 3,
    /// Node, store or network error.
    Node = 4,
}

impl Exit {
    /// The exit code a task's outcome implies.
    pub fn of(report: &TaskReport) -> Self {
        match &report.result {
            Ok(_) => Exit::Ok,
            Err(f) if f.kind == FailureKind::BadModule => Exit::BadModule,
            Err(_) => Exit::TaskFailed,
        }
    }

    /// A [`Failure`] with this exit code.
    pub fn fail(self, message: impl std::fmt::Display) -> Failure {
        Failure {
            message: message.to_string(),
            exit: self,
        }
    }
}

/// A request type and the reply it gets.
pub trait Call: Into<Request> {
    /// What the node answers on success.
    type Reply: Serialize + DeserializeOwned;
}

/// Declares [`Request`], one variant per verb, and each verb's reply type.
macro_rules! calls {
    ($($request:ident => $reply:ty),* $(,)?) => {
        /// What the CLI asks of its node: one variant per verb.
        #[derive(Clone, Debug, Serialize, Deserialize)]
        #[serde(tag = "op", rename_all = "snake_case")]
        pub enum Request {
            $(#[doc = concat!("See [`", stringify!($request), "`].")]
            $request($request),)*
        }
        $(impl Call for $request {
            type Reply = $reply;
        }
        impl From<$request> for Request {
            fn from(r: $request) -> Self {
                Request::$request(r)
            }
        })*
    };
}

calls! {
    Put => Cid,
    Get => u64,
    Keep => u64,
    Submit => Ran,
    Map => Vec<MapItem>,
    Peers => Vec<PeerInfo>,
    Status => NodeStatus,
    Gc => GcReport,
}

/// Collect every block no pin or running task holds; the reply says what was freed.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Gc;

/// Store a file (a path on this machine); the reply is its CID.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Put {
    /// The file.
    pub path: PathBuf,
    /// Let any peer read it, and announce it to the mesh.
    pub public: bool,
}

/// Fetch a file (from the mesh if needed) and write it to `path`; the reply is its length.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Get {
    /// The file's CID.
    pub cid: Cid,
    /// Where to write it.
    pub path: PathBuf,
    /// Write into a path that is not a regular file (a FIFO, a device, a symlink's target)
    /// instead of refusing it.
    #[serde(default)]
    pub force: bool,
    /// Fetch it as this tenant (`--key`): the tenant's delegation to the node.
    #[serde(default)]
    pub credential: Option<shoal_p2p::Credential>,
}

/// Fetch a file (from the mesh if needed) and pin it here as a training checkpoint, so it
/// stays when the node that made it is gone; the reply is its length.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Keep {
    /// The file's CID.
    pub cid: Cid,
    /// A peer to ask first (a peer id): the one whose task made it.
    pub from: Option<String>,
    /// Fetch it as this tenant, as [`Get::credential`].
    #[serde(default)]
    pub credential: Option<shoal_p2p::Credential>,
}

/// Run one task on the mesh.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Submit {
    /// The task.
    pub task: TaskRequest,
    /// Run only on this peer (a peer id).
    pub on: Option<String>,
    /// Run it deterministic on this many distinct peers and return their agreed outputs
    /// (`--verify N`); 0 or 1 runs it once.
    #[serde(default)]
    pub verify: u32,
    /// Run it as it is (on `on`, if given) and check its outputs against a deterministic run
    /// elsewhere, within this relative tolerance (`--verify-within TOL`).
    #[serde(default)]
    pub within: Option<f32>,
}

/// A task that ran (or failed) somewhere.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ran {
    /// The peer it was placed on last.
    pub peer: String,
    /// Its outputs or failure, logs and stats.
    pub report: TaskReport,
    /// For a verified task, the peers whose runs agreed on its outputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verified_by: Vec<String>,
}

/// Run one task per item, with input `name` set to each item (a CID or a file path); the
/// reply has one [`MapItem`] per item, in item order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Map {
    /// The task.
    pub task: TaskRequest,
    /// Run only on this peer (a peer id).
    pub on: Option<String>,
    /// The input that varies.
    pub name: String,
    /// The items.
    pub items: Vec<String>,
    /// Verify each item on this many distinct peers, as [`Submit::verify`].
    #[serde(default)]
    pub verify: u32,
}

/// One map item's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MapItem {
    /// The item as given.
    pub item: String,
    /// Where and how it ran.
    #[serde(flatten)]
    pub ran: Ran,
}

/// Connected peers and their capacity.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Peers;

/// A peer: connected, or marked faulty by this node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Its peer id.
    pub peer: String,
    /// What it advertises, if it answered (`None` too when it is not connected).
    pub capacity: Option<Capacity>,
    /// Why this node no longer places work on it: its outputs disagreed with the majority of
    /// a verified run. `None` for a peer in good standing.
    #[serde(default)]
    pub faulty: Option<String>,
    /// Whether it is connected now (a faulty peer is listed even when it is not).
    #[serde(default = "connected_by_default")]
    pub connected: bool,
}

fn connected_by_default() -> bool {
    true
}

/// The node's own state.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Status;

/// A node's identity, addresses and slots.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its peer id.
    pub peer_id: String,
    /// Its listen addresses.
    pub listen: Vec<String>,
    /// How many peers it is connected to.
    pub connected_peers: usize,
    /// Tasks it runs at once for the mesh.
    pub slots: u32,
    /// Of those, idle now.
    pub free_slots: u32,
    /// Tasks waiting for a slot.
    pub queue_len: u32,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// The store's use and limit.
    pub store: StoreUsage,
}

/// Something that happened while a request runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Update {
    /// A map's counts changed.
    Map(MapProgress),
    /// A submitted task reported progress (`shoal_v1::progress`).
    Task {
        /// The peer running it.
        peer: String,
        /// Its record, as it sent it.
        record: Vec<u8>,
    },
}

/// One line of the node's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frame<R> {
    /// Progress while the request runs.
    Progress(Update),
    /// The final result.
    Done(R),
    /// The request failed.
    Error(Failure),
}

/// A command that failed: what to tell the user, and the exit code. The node sends it, the
/// client returns it, and the CLI prints it and exits with its code.
#[derive(Clone, Debug, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct Failure {
    /// What went wrong.
    pub message: String,
    /// The exit code it implies.
    pub exit: Exit,
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Exit::Node.fail(e)
    }
}

/// Sends a request to the node that owns `data_dir`, calls `on_update` for each progress
/// line, and returns the final reply.
///
/// # Errors
/// The node's [`Failure`] when it says no; no node there, or socket or decoding failures, as
/// [`Exit::Node`].
pub fn call<C: Call>(
    data_dir: &Path,
    request: C,
    mut on_update: impl FnMut(Update),
) -> Result<C::Reply, Failure> {
    let stream = UnixStream::connect(socket_path(data_dir)).map_err(|_| {
        Exit::Node.fail(format_args!(
            "no node is running on {} (start one with `host join`)",
            data_dir.display()
        ))
    })?;
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .map_err(io_failure)?;
    let mut stream = BufReader::new(stream);
    let malformed = |e| Exit::Node.fail(format_args!("the node sent a malformed reply: {e}"));
    let mut line = serde_json::to_vec(&request.into()).map_err(malformed)?;
    line.push(b'\n');
    stream.get_mut().write_all(&line).map_err(io_failure)?;
    loop {
        let mut buf = String::new();
        if stream.read_line(&mut buf).map_err(io_failure)? == 0 {
            return Err(io_failure("the node closed the connection"));
        }
        match serde_json::from_str::<Frame<C::Reply>>(&buf).map_err(malformed)? {
            Frame::Progress(u) => on_update(u),
            Frame::Done(reply) => return Ok(reply),
            Frame::Error(failure) => return Err(failure),
        }
    }
}

fn io_failure(e: impl std::fmt::Display) -> Failure {
    Exit::Node.fail(format_args!("talking to the node: {e}"))
}
