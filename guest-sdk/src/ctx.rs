//! What a task sees of the world: its inputs, its arguments, and where its outputs go.

use std::{fmt, io, str::FromStr};

use crate::{
    Cid, Error, abi,
    subtask::{Handle, Spawn},
    sys,
};

/// The task's view of its invocation.
pub struct Ctx {
    args: Vec<(String, String)>,
}

impl Ctx {
    pub(crate) fn new() -> Self {
        let args = abi::decode_args(&sys::args()).unwrap_or_default();
        Self { args }
    }

    /// The names of the task's inputs, in the order given.
    pub fn input_names(&self) -> Vec<String> {
        (0..sys::input_count())
            .filter_map(|i| sys::input_name(i).ok())
            .collect()
    }

    /// Reads a whole input into memory.
    ///
    /// # Errors
    /// If there is no input by that name, or the host cannot read it.
    pub fn input(&self, name: &str) -> Result<Vec<u8>, Error> {
        let mut reader = self.input_reader(name)?;
        let mut out = Vec::with_capacity(reader.len);
        io::Read::read_to_end(&mut reader, &mut out)
            .map_err(|e| Error::msg(format!("input `{name}`: {e}")))?;
        Ok(out)
    }

    /// Streams an input without holding it all in memory.
    ///
    /// # Errors
    /// If there is no input by that name.
    pub fn input_reader(&self, name: &str) -> Result<InputReader, Error> {
        let err = |code| Error::host(format_args!("input `{name}`"), code);
        let index = sys::input_find(name).map_err(err)?;
        let len = sys::input_len(index).map_err(err)?;
        Ok(InputReader {
            index,
            offset: 0,
            len,
        })
    }

    /// An argument's value, if it was given.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// An argument parsed as `T`, or `default` when absent.
    ///
    /// # Errors
    /// If the argument is present but does not parse.
    pub fn arg_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, Error>
    where
        T::Err: fmt::Display,
    {
        match self.arg(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|e| Error::msg(format!("argument `{key}={v}`: {e}"))),
        }
    }

    /// All arguments, in key order.
    pub fn args(&self) -> &[(String, String)] {
        &self.args
    }

    /// Writes a named output; returns its CID.
    ///
    /// # Errors
    /// If the name is empty or already used, the task's output quota is spent, or the host
    /// cannot store it.
    pub fn output(&mut self, name: &str, bytes: &[u8]) -> Result<Cid, Error> {
        sys::output_write(name, bytes)
            .map(Cid)
            .map_err(|code| Error::host(format!("output `{name}`"), code))
    }
}

impl Ctx {
    /// The CID of this task's own module, so a driver can spawn its other tasks.
    ///
    /// # Errors
    /// Without a host that runs subtasks (natively).
    pub fn module(&self) -> Result<Cid, Error> {
        sys::self_module()
            .map(Cid)
            .map_err(|c| Error::host("this task's module", c))
    }

    /// The CID of an input, to give it to a subtask without reading it.
    ///
    /// # Errors
    /// If there is no input by that name.
    pub fn input_cid(&self, name: &str) -> Result<Cid, Error> {
        let err = |code| Error::host(format_args!("input `{name}`"), code);
        let index = sys::input_find(name).map_err(err)?;
        sys::input_cid(index).map(Cid).map_err(err)
    }

    /// Stores `bytes` as a file (an object, as Ray's `put`); this task and its subtasks may
    /// read it by the CID returned.
    ///
    /// # Errors
    /// If the host cannot store it (the task's output quota counts it).
    pub fn put(&mut self, bytes: &[u8]) -> Result<Cid, Error> {
        sys::object_put(bytes)
            .map(Cid)
            .map_err(|c| Error::host("storing an object", c))
    }

    /// Reads a whole file by CID: one of this task's inputs, objects or outputs, or a
    /// subtask's output. Anything else is [`abi::ErrorCode::Denied`].
    ///
    /// # Errors
    /// `Denied`, or if the host cannot fetch it.
    pub fn read(&self, cid: Cid) -> Result<Vec<u8>, Error> {
        let err = |code| Error::host(format_args!("reading {cid}"), code);
        let index = sys::object_open(&cid.0).map_err(err)?;
        let len = sys::input_len(index).map_err(err)?;
        let mut reader = InputReader {
            index,
            offset: 0,
            len,
        };
        let mut out = Vec::with_capacity(len);
        io::Read::read_to_end(&mut reader, &mut out)
            .map_err(|e| Error::msg(format!("reading {cid}: {e}")))?;
        Ok(out)
    }

    /// Reports progress to whoever submitted this task, as it runs: `host train` prints a
    /// line per record of its driver, and `host submit` shows them. Records are at most
    /// [`abi::MAX_PROGRESS_LEN`] bytes; they may be dropped on the way under back-pressure
    /// (a task's outputs are its durable results), and a subtask's records go nowhere.
    ///
    /// # Errors
    /// `TooLarge` for a record over the limit.
    pub fn progress(&mut self, record: &[u8]) -> Result<(), Error> {
        sys::progress(record)
            .map(drop)
            .map_err(|c| Error::host("reporting progress", c))
    }

    /// Spawns a subtask on the mesh.
    ///
    /// # Errors
    /// `QuotaExceeded` past the subtask count, in-flight or CPU bounds; `Denied` past the
    /// nesting depth or for a CID this task may not read. The task's log names the bound.
    pub fn spawn(&mut self, spawn: Spawn) -> Result<Handle, Error> {
        sys::spawn(&spawn.0.encode()).map(Handle).map_err(|code| {
            // The host's log names the exact bound; the task sees the likely ones.
            let why = match code {
                abi::ErrorCode::Denied => format!(
                    "spawning a subtask (past the nesting depth limit of {}, or a CID this task may not give)",
                    abi::MAX_DEPTH
                ),
                abi::ErrorCode::QuotaExceeded => format!(
                    "spawning a subtask (past the limit of {} subtasks, {} at once, or the shared CPU budget)",
                    abi::MAX_SUBTASKS,
                    abi::MAX_SUBTASKS_IN_FLIGHT
                ),
                _ => "spawning a subtask".to_owned(),
            };
            Error::host(why, code)
        })
    }

    /// Blocks until one of `handles` has finished; returns its index in `handles`. While it
    /// waits, this task holds no slot: its subtasks can run on this node.
    ///
    /// # Errors
    /// For an empty list or a handle that is not this task's.
    pub fn wait(&self, handles: &[Handle]) -> Result<usize, Error> {
        let raw: Vec<u32> = handles.iter().map(|h| h.0).collect();
        sys::subtask_wait(&raw).map_err(|c| Error::host("waiting for subtasks", c))
    }

    /// Spawns `base` once per CID, each given as input `input`, as the seed's `app.map`.
    ///
    /// # Errors
    /// As [`Ctx::spawn`], for the first that fails.
    pub fn map(&mut self, base: &Spawn, input: &str, cids: &[Cid]) -> Result<Vec<Handle>, Error> {
        cids.iter()
            .map(|cid| self.spawn(base.clone().input(input, *cid)))
            .collect()
    }
}

/// Reads one input in pieces; see [`Ctx::input_reader`].
pub struct InputReader {
    index: usize,
    offset: u64,
    len: usize,
}

impl InputReader {
    /// The input's total length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the input is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl io::Read for InputReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = sys::input_read(self.index, self.offset, buf)
            .map_err(|code| io::Error::other(code.to_string()))?;
        self.offset += n as u64;
        Ok(n)
    }
}
