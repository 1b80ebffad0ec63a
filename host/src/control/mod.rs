//! The local control endpoint: a Unix socket in the data dir, mode 0600, that the CLI uses to
//! talk to its node. Nothing control-like ever listens on the network (Ray's unauthenticated
//! job API is CVE-2023-48022).
//!
//! Protocol: the client writes one JSON [`Request`] line; the node answers with zero or more
//! [`Frame::Progress`] lines and then one final [`Frame::Done`] or [`Frame::Error`] line. Each
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
    request::{BuildError, TaskRequest, absolute, check_memory, store_file},
    server::serve,
};
use crate::{
    runtime::{FailureKind, TaskReport},
    sched::MapProgress,
    store::Cid,
};

/// The socket's file name inside the data dir.
pub const SOCKET_NAME: &str = "control.sock";
/// The longest request line the node reads.
pub const MAX_REQUEST_LEN: usize = 16 << 20;

/// The socket path for a data dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
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
}

/// A request type and the reply it gets.
pub trait Call: Into<Request> {
    /// What the node answers on success.
    type Reply: Serialize + DeserializeOwned;
}

/// What the CLI asks of its node: one variant per verb.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// See [`Put`].
    Put(Put),
    /// See [`Get`].
    Get(Get),
    /// See [`Submit`].
    Submit(Submit),
    /// See [`Map`].
    Map(Map),
    /// See [`Peers`].
    Peers(Peers),
    /// See [`Status`].
    Status(Status),
}

macro_rules! calls {
    ($($request:ident => $reply:ty),* $(,)?) => {$(
        impl Call for $request {
            type Reply = $reply;
        }
        impl From<$request> for Request {
            fn from(r: $request) -> Self {
                Request::$request(r)
            }
        }
    )*};
}

calls! {
    Put => Stored,
    Get => Written,
    Submit => Ran,
    Map => Mapped,
    Peers => PeerList,
    Status => NodeStatus,
}

/// Store a file (a path on this machine) and announce it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Put {
    /// The file.
    pub path: PathBuf,
}

/// A stored file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stored {
    /// Its CID.
    pub cid: Cid,
}

/// Fetch a file (from the mesh if needed) and write it to `path`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Get {
    /// The file's CID.
    pub cid: Cid,
    /// Where to write it.
    pub path: PathBuf,
}

/// A file written out.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Written {
    /// Its length.
    pub bytes: u64,
}

/// Run one task on the mesh.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Submit {
    /// The task.
    pub task: TaskRequest,
    /// Run only on this peer (a peer id).
    pub on: Option<String>,
}

/// A task that ran (or failed) somewhere.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ran {
    /// The peer it was placed on last.
    pub peer: String,
    /// Its outputs or failure, logs and stats.
    pub report: TaskReport,
}

/// Run one task per item, with input `name` set to each item (a CID or a file path).
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
}

/// A map's results, in item order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Mapped {
    /// One per item.
    pub items: Vec<MapItem>,
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

/// The peers a node is connected to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerList {
    /// One per connected peer.
    pub peers: Vec<PeerInfo>,
}

/// A connected peer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Its peer id.
    pub peer: String,
    /// What it advertises, if it answered.
    pub capacity: Option<Capacity>,
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
}

/// One line of the node's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Frame<R> {
    /// A map's progress.
    Progress(MapProgress),
    /// The final result.
    Done(R),
    /// The request failed.
    Error {
        /// What went wrong.
        message: String,
        /// The exit code the CLI should use.
        exit: Exit,
    },
}

/// Errors talking to the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No node is running on this data dir.
    #[error("no node is running on {0} (start one with `host join`)")]
    NoNode(PathBuf),
    /// The socket broke.
    #[error("talking to the node: {0}")]
    Io(#[from] std::io::Error),
    /// The node sent something unreadable.
    #[error("the node sent a malformed reply: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The node refused or failed the request.
    #[error("{message}")]
    Failed {
        /// What went wrong.
        message: String,
        /// The exit code it implies.
        exit: Exit,
    },
}

impl ControlError {
    /// The exit code the CLI should end with.
    pub fn exit(&self) -> Exit {
        match self {
            ControlError::Failed { exit, .. } => *exit,
            _ => Exit::Node,
        }
    }
}

/// A connection to the local node.
pub struct Client {
    stream: BufReader<UnixStream>,
}

impl Client {
    /// Connects to the node that owns `data_dir`.
    ///
    /// # Errors
    /// [`ControlError::NoNode`] when no node listens there.
    pub fn connect(data_dir: &Path) -> Result<Self, ControlError> {
        let stream = UnixStream::connect(socket_path(data_dir))
            .map_err(|_| ControlError::NoNode(data_dir.to_path_buf()))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            stream: BufReader::new(stream),
        })
    }

    /// Sends a request; calls `on_progress` for each progress line; returns the final reply.
    ///
    /// # Errors
    /// Socket or decoding failures, and [`ControlError::Failed`] when the node says no.
    pub fn call<C: Call>(
        mut self,
        request: C,
        mut on_progress: impl FnMut(MapProgress),
    ) -> Result<C::Reply, ControlError> {
        let mut line = serde_json::to_vec(&request.into())?;
        line.push(b'\n');
        self.stream.get_mut().write_all(&line)?;
        loop {
            let mut buf = String::new();
            if self.stream.read_line(&mut buf)? == 0 {
                return Err(ControlError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the node closed the connection",
                )));
            }
            match serde_json::from_str::<Frame<C::Reply>>(&buf)? {
                Frame::Progress(p) => on_progress(p),
                Frame::Done(reply) => return Ok(reply),
                Frame::Error { message, exit } => {
                    return Err(ControlError::Failed { message, exit });
                }
            }
        }
    }
}
