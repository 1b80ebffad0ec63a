//! Subtasks and objects: the encodings `spawn` takes and `subtask_result` gives back.
//!
//! A task may `spawn` other tasks (any module it may read, with inputs it may read), `wait` for
//! any of them, and read their results; it may `object_put` bytes as a file and open any file
//! it may read with `object_open`, which then reads like an input. What a task may read: its
//! module, its inputs, its own objects and outputs, and its subtasks' outputs.
//!
//! Encodings, all integers little-endian `u32`, strings UTF-8 with a `u32` length first:
//! - spawn spec: module CID (32 bytes), task name (empty: the module's only task), input count,
//!   then per input its name and CID, then the number of peers to verify it on, then the
//!   arguments in [`super::encode_args`]' format.
//! - result: a status byte. `0`: output count, then per output its name and CID. `1`: the
//!   failure kind's code ([`FailureCode`]) as one byte, then its message.

use super::{CID_LEN, Cid, decode_args, encode_args};

/// Subtasks one task may spawn in all.
pub const MAX_SUBTASKS: usize = 1024;
/// Subtasks of one task that may run at once; `spawn` past it is
/// [`super::ErrorCode::QuotaExceeded`] until one ends.
pub const MAX_SUBTASKS_IN_FLIGHT: usize = 16;
/// How deep subtasks may nest: a task submitted by a user is depth 0, and a `spawn` deeper
/// than this is [`super::ErrorCode::Denied`] (no fork bombs).
pub const MAX_DEPTH: u32 = 4;
/// The most peers a task (or a subtask, [`SpawnSpec::verify`]) may be verified on.
pub const MAX_VERIFY: u32 = 16;
/// The most inputs one task may name; a task with more is refused before anything is
/// fetched ([`super::ErrorCode::InvalidArgument`] for a spawn).
pub const MAX_TASK_INPUTS: usize = 256;
/// The most arguments one task may have.
pub const MAX_TASK_ARGS: usize = 256;
/// The longest encoded spawn spec `spawn` reads from the guest.
pub const MAX_SPAWN_SPEC_LEN: usize = 256 << 10;

/// A task to spawn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpawnSpec {
    /// The module, a file the spawning task may read.
    pub module: Cid,
    /// The task to call; `None` for the module's only task.
    pub task: Option<String>,
    /// Named inputs, files the spawning task may read.
    pub inputs: Vec<(String, Cid)>,
    /// Arguments.
    pub args: Vec<(String, String)>,
    /// Run it deterministic on this many distinct peers (2 to [`MAX_VERIFY`]) and take their
    /// agreed output; a peer that disagrees with the majority is marked faulty and never
    /// chosen again by this node. 0 or 1: run it once.
    pub verify: u32,
}

/// How a subtask failed, as the ABI carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FailureCode {
    /// A wasm trap.
    Trap = 0,
    /// Out of memory.
    OutOfMemory = 1,
    /// Out of time or CPU.
    Timeout = 2,
    /// Not a usable module.
    BadModule = 3,
    /// Missing or unreadable inputs.
    BadInput = 4,
    /// Not allowed.
    Denied = 5,
    /// The task's own error.
    TaskError = 6,
    /// Its peer was lost, after retries.
    Lost = 7,
}

impl FailureCode {
    /// Every code.
    pub const ALL: [Self; 8] = [
        Self::Trap,
        Self::OutOfMemory,
        Self::Timeout,
        Self::BadModule,
        Self::BadInput,
        Self::Denied,
        Self::TaskError,
        Self::Lost,
    ];

    /// Decodes a raw code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|c| *c as u8 == code)
    }
}

/// A finished subtask: its outputs, or how it failed.
pub type SubtaskResult = Result<Vec<(String, Cid)>, (FailureCode, String)>;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Reads the encodings back, refusing anything short, long or malformed.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Some(u64::from_le_bytes(b))
    }

    fn u32(&mut self) -> Option<usize> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn str(&mut self) -> Option<String> {
        let len = self.u32()?;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }

    fn cid(&mut self) -> Option<Cid> {
        let mut cid = [0u8; CID_LEN];
        cid.copy_from_slice(self.take(CID_LEN)?);
        Some(Cid(cid))
    }

    /// `count` named CIDs; the count is checked against what is left, so a huge one cannot
    /// make a huge allocation.
    fn named_cids(&mut self) -> Option<Vec<(String, Cid)>> {
        let count = self.u32()?;
        if count > self.0.len() / (4 + CID_LEN) {
            return None;
        }
        (0..count)
            .map(|_| Some((self.str()?, self.cid()?)))
            .collect()
    }
}

fn put_named_cids(out: &mut Vec<u8>, list: &[(String, Cid)]) {
    out.extend_from_slice(&(list.len() as u32).to_le_bytes());
    for (name, cid) in list {
        put_str(out, name);
        out.extend_from_slice(&cid.0);
    }
}

impl SpawnSpec {
    /// Encodes the spec for `spawn`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.module.0.to_vec();
        put_str(&mut out, self.task.as_deref().unwrap_or(""));
        put_named_cids(&mut out, &self.inputs);
        out.extend_from_slice(&self.verify.to_le_bytes());
        out.extend(encode_args(
            self.args.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ));
        out
    }

    /// Decodes [`SpawnSpec::encode`]'s format; `None` if malformed.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        let module = r.cid()?;
        let task = Some(r.str()?).filter(|t| !t.is_empty());
        let inputs = r.named_cids()?;
        let verify = u32::try_from(r.u32()?).ok()?;
        let args = decode_args(r.0)?;
        Some(Self {
            module,
            task,
            inputs,
            args,
            verify,
        })
    }
}

/// What a finished subtask's run cost, as the host measured it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Wall time of the run itself, in microseconds.
    pub wall_us: u64,
    /// Time its node spent fetching the module and inputs first, in microseconds.
    pub fetch_us: u64,
    /// Which peer ran it, as a number the driver's own subtasks share: equal numbers mean
    /// the same peer (so a driver can count the peers it used), and nothing more.
    pub peer: u32,
}

/// Encodes a subtask's result for `subtask_result`: the result, then the three `stats`
/// fields (`u64`, `u64`, `u32`, little-endian).
pub fn encode_result(result: &SubtaskResult, stats: &RunStats) -> Vec<u8> {
    let mut out = Vec::new();
    match result {
        Ok(outputs) => {
            out.push(0);
            put_named_cids(&mut out, outputs);
        }
        Err((code, message)) => {
            out.extend([1, *code as u8]);
            put_str(&mut out, message);
        }
    }
    out.extend_from_slice(&stats.wall_us.to_le_bytes());
    out.extend_from_slice(&stats.fetch_us.to_le_bytes());
    out.extend_from_slice(&stats.peer.to_le_bytes());
    out
}

/// Decodes [`encode_result`]'s format; `None` if malformed.
pub fn decode_result(bytes: &[u8]) -> Option<(SubtaskResult, RunStats)> {
    let mut r = Reader(bytes);
    let result = match r.take(1)?[0] {
        0 => Ok(r.named_cids()?),
        1 => {
            let code = FailureCode::from_code(r.take(1)?[0])?;
            Err((code, r.str()?))
        }
        _ => return None,
    };
    let stats = RunStats {
        wall_us: r.u64()?,
        fetch_us: r.u64()?,
        peer: r.u32()? as u32,
    };
    r.0.is_empty().then_some((result, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_and_results_round_trip_and_refuse_junk() {
        let spec = SpawnSpec {
            module: Cid([7; 32]),
            task: Some("grad".into()),
            inputs: vec![
                ("params".into(), Cid([1; 32])),
                ("shard".into(), Cid([2; 32])),
            ],
            args: vec![("lr".into(), "0.1".into())],
            verify: 2,
        };
        let bytes = spec.encode();
        assert_eq!(SpawnSpec::decode(&bytes), Some(spec.clone()));
        assert_eq!(SpawnSpec::decode(&bytes[..bytes.len() - 1]), None);
        let only = SpawnSpec { task: None, ..spec };
        assert_eq!(SpawnSpec::decode(&only.encode()), Some(only));
        for result in [
            Ok(vec![("grad".into(), Cid([3; 32]))]),
            Err((FailureCode::Trap, "wasm trap: unreachable".into())),
        ] {
            let stats = RunStats {
                wall_us: 1234,
                fetch_us: u64::MAX,
                peer: 3,
            };
            let bytes = encode_result(&result, &stats);
            assert_eq!(decode_result(&bytes), Some((result, stats)));
            assert_eq!(decode_result(&[bytes.as_slice(), &[0]].concat()), None);
            assert_eq!(decode_result(&bytes[..bytes.len() - 1]), None);
        }
        assert_eq!(decode_result(&[0, 0xff, 0xff, 0xff, 0x7f]), None);
    }
}
