//! The native stand-in for the host: a thread-local task context filled by
//! [`crate::testing::NativeHost`].

use std::cell::RefCell;

use crate::abi::{CID_LEN, ErrorCode, LogLevel};

#[derive(Default)]
pub(crate) struct NativeTask {
    pub(crate) inputs: Vec<(String, Vec<u8>)>,
    pub(crate) args: Vec<u8>,
    pub(crate) outputs: Vec<(String, Vec<u8>)>,
    pub(crate) logs: Vec<String>,
    pub(crate) error: Option<String>,
    pub(crate) progress: Vec<Vec<u8>>,
}

thread_local! {
    pub(crate) static TASK: RefCell<NativeTask> = RefCell::new(NativeTask::default());
}

fn with<R>(f: impl FnOnce(&mut NativeTask) -> R) -> R {
    TASK.with(|t| f(&mut t.borrow_mut()))
}

fn input<R>(i: usize, f: impl FnOnce(&(String, Vec<u8>)) -> R) -> Result<R, ErrorCode> {
    with(|t| t.inputs.get(i).map(f).ok_or(ErrorCode::NotFound))
}

pub(crate) fn input_count() -> usize {
    with(|t| t.inputs.len())
}

pub(crate) fn input_find(name: &str) -> Result<usize, ErrorCode> {
    with(|t| {
        t.inputs
            .iter()
            .position(|(n, _)| n == name)
            .ok_or(ErrorCode::NotFound)
    })
}

pub(crate) fn input_name(i: usize) -> Result<String, ErrorCode> {
    input(i, |(name, _)| name.clone())
}

pub(crate) fn input_len(i: usize) -> Result<usize, ErrorCode> {
    input(i, |(_, bytes)| bytes.len())
}

pub(crate) fn input_read(i: usize, offset: u64, buf: &mut [u8]) -> Result<usize, ErrorCode> {
    input(i, |(_, bytes)| {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let n = buf.len().min(bytes.len() - start);
        buf[..n].copy_from_slice(&bytes[start..start + n]);
        n
    })
}

pub(crate) fn args() -> Vec<u8> {
    with(|t| t.args.clone())
}

pub(crate) fn output_write(name: &str, bytes: &[u8]) -> Result<[u8; CID_LEN], ErrorCode> {
    with(|t| {
        if name.is_empty() || t.outputs.iter().any(|(n, _)| n == name) {
            return Err(ErrorCode::InvalidArgument);
        }
        t.outputs.push((name.to_owned(), bytes.to_vec()));
        Ok(*blake3::hash(bytes).as_bytes())
    })
}

pub(crate) fn log(level: LogLevel, message: &str) {
    with(|t| t.logs.push(format!("[{level:?}] {message}")));
}

pub(crate) fn progress(record: &[u8]) -> Result<usize, ErrorCode> {
    if record.len() > crate::abi::MAX_PROGRESS_LEN {
        return Err(ErrorCode::TooLarge);
    }
    with(|t| t.progress.push(record.to_vec()));
    Ok(0)
}

pub(crate) fn set_error(message: &str) {
    with(|t| t.error = Some(message.to_owned()));
}

// Subtasks and objects need a real host: natively they are unavailable.

pub(crate) fn self_module() -> Result<[u8; CID_LEN], ErrorCode> {
    Err(ErrorCode::Unavailable)
}

pub(crate) fn input_cid(i: usize) -> Result<[u8; CID_LEN], ErrorCode> {
    input(i, |(_, bytes)| *blake3::hash(bytes).as_bytes())
}

pub(crate) fn object_put(_: &[u8]) -> Result<[u8; CID_LEN], ErrorCode> {
    Err(ErrorCode::Unavailable)
}

pub(crate) fn object_open(_: &[u8; CID_LEN]) -> Result<usize, ErrorCode> {
    Err(ErrorCode::Unavailable)
}

pub(crate) fn spawn(_: &[u8]) -> Result<u32, ErrorCode> {
    Err(ErrorCode::Unavailable)
}

pub(crate) fn subtask_wait(_: &[u32]) -> Result<usize, ErrorCode> {
    Err(ErrorCode::Unavailable)
}

pub(crate) fn subtask_result(_: u32) -> Result<Vec<u8>, ErrorCode> {
    Err(ErrorCode::Unavailable)
}
