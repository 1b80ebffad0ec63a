//! The local control endpoint: a Unix socket in the data dir, mode 0600, that the CLI uses to
//! talk to its node. Nothing control-like ever listens on the network (Ray's unauthenticated
//! job API is CVE-2023-48022).
//!
//! Protocol: the client writes one JSON [`Request`] line; the node answers with zero or more
//! [`Reply::Progress`] lines and then one final [`Reply::Done`] or [`Reply::Error`] line.

mod server;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub use self::server::serve;
use crate::{runtime::Limits, sched::MapProgress};

/// The socket's file name inside the data dir.
pub const SOCKET_NAME: &str = "control.sock";
/// The longest request line the node reads.
pub const MAX_REQUEST_LEN: usize = 16 << 20;

/// The socket path for a data dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// A task as the CLI describes it: files by path (the node stores them) or CIDs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskRequest {
    /// The module file.
    pub module: PathBuf,
    /// Entry name.
    pub task: Option<String>,
    /// `NAME` and a file path or CID.
    pub inputs: Vec<(String, String)>,
    /// Arguments.
    pub args: Vec<(String, String)>,
    /// Limits.
    pub limits: Limits,
    /// Run only on this peer.
    pub on: Option<String>,
}

/// What the CLI asks of its node.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Store a file (path on this machine).
    Put {
        /// The file.
        path: PathBuf,
    },
    /// Fetch a file (from the mesh if needed) and write it to `path`.
    Get {
        /// The file's CID.
        cid: String,
        /// Where to write it.
        path: PathBuf,
    },
    /// Run one task on the mesh.
    Submit(TaskRequest),
    /// Run one task per item, with input `name` set to each item (a CID or a file path).
    Map {
        /// The task.
        task: TaskRequest,
        /// The input that varies.
        name: String,
        /// The items.
        items: Vec<String>,
    },
    /// Connected peers and their capacity.
    Peers,
    /// The node's own state.
    Status,
}

/// The node's answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// A map's progress.
    Progress(MapProgress),
    /// The final result, as JSON.
    Done {
        /// The payload (depends on the request).
        result: serde_json::Value,
    },
    /// The request failed.
    Error {
        /// What went wrong.
        message: String,
        /// The exit code the CLI should use.
        exit: u8,
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
    /// Socket or decoding failures.
    pub fn call(
        mut self,
        request: &Request,
        mut on_progress: impl FnMut(MapProgress),
    ) -> Result<Reply, ControlError> {
        let mut line = serde_json::to_vec(request)?;
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
            match serde_json::from_str::<Reply>(&buf)? {
                Reply::Progress(p) => on_progress(p),
                done => return Ok(done),
            }
        }
    }
}
