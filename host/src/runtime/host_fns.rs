//! The `shoal_v1` host functions.
//!
//! Every `(ptr, len)` pair is checked against guest memory before use; a bad one is the
//! guest-visible [`ErrorCode::BadPointer`], never a host panic. The runtime's call hook checks
//! the task's clock as each call starts and as it returns (epochs only tick inside wasm), and
//! calls whose work grows with their arguments check it as they go, so a task that lives in
//! host calls still stops at its limit.

use std::ops::Range;

use shoal::abi::{CID_LEN, ErrorCode, IMPORT_MODULE, LogLevel, MAX_PROGRESS_LEN};
use wasmtime::{Caller, Linker};

use super::{
    TaskState,
    limits::{TaskClock, fmt_bytes},
};
use crate::store::{CHUNK_SIZE, Cid, PinClass, StoreError};

type Call<'a> = Caller<'a, TaskState>;
type GuestResult = Result<i32, ErrorCode>;

/// Longest input or output name, in bytes.
const MAX_NAME_LEN: usize = 256;
/// Longest failure message kept from `set_error`.
const MAX_ERROR_LEN: usize = 4096;

/// The byte range `ptr..ptr + len` if it lies inside a memory of `mem_len` bytes.
pub(super) fn guest_range(ptr: i32, len: i32, mem_len: usize) -> Result<Range<usize>, ErrorCode> {
    // wasm32 pointers and lengths are unsigned; a "negative" length is a huge one.
    let start = ptr as u32 as usize;
    let end = start
        .checked_add(len as u32 as usize)
        .ok_or(ErrorCode::BadPointer)?;
    if end > mem_len {
        return Err(ErrorCode::BadPointer);
    }
    Ok(start..end)
}

/// Runs `f` with the guest's memory and the task state borrowed together.
pub(super) fn with_memory<R>(
    caller: &mut Call<'_>,
    f: impl FnOnce(&mut [u8], &mut TaskState) -> Result<R, ErrorCode>,
) -> Result<R, ErrorCode> {
    let memory = caller.data().memory.ok_or(ErrorCode::BadPointer)?;
    let (data, state) = memory.data_and_store_mut(caller);
    f(data, state)
}

fn guest_str(data: &[u8], ptr: i32, len: i32) -> Result<&str, ErrorCode> {
    let bytes = &data[guest_range(ptr, len, data.len())?];
    std::str::from_utf8(bytes).map_err(|_| ErrorCode::InvalidArgument)
}

/// Copies `value` into the guest buffer, or says how much room it needs.
pub(super) fn copy_out(data: &mut [u8], ptr: i32, len: i32, value: &[u8]) -> GuestResult {
    let range = guest_range(ptr, len, data.len())?;
    if range.len() < value.len() {
        return Err(ErrorCode::BufferTooSmall);
    }
    data[range.start..range.start + value.len()].copy_from_slice(value);
    len_result(value.len())
}

pub(super) fn len_result(len: usize) -> GuestResult {
    i32::try_from(len).map_err(|_| ErrorCode::TooLarge)
}

pub(super) fn encode(result: GuestResult) -> i32 {
    result.unwrap_or_else(ErrorCode::code)
}

/// Ends the task if it is past its wall-time limit or CPU budget.
pub(super) fn check_clock(caller: &Call<'_>) -> wasmtime::Result<()> {
    caller.data().clock.check().map_err(wasmtime::Error::new)
}

fn input_index(state: &TaskState, index: i32) -> Result<usize, ErrorCode> {
    usize::try_from(index)
        .ok()
        .filter(|&i| i < state.inputs.len())
        .ok_or(ErrorCode::NotFound)
}

/// Notes a host-side failure in the task's log, so the user sees the real cause.
fn host_note(state: &TaskState, what: &str, err: &StoreError) {
    state
        .logs
        .append(&[format!("[host] {what}: {err}\n").as_bytes()]);
}

fn input_read(
    state: &mut TaskState,
    data: &mut [u8],
    index: i32,
    offset: i64,
    ptr: i32,
    len: i32,
) -> GuestResult {
    let index = input_index(state, index)?;
    let range = guest_range(ptr, len, data.len())?;
    let mut offset = u64::try_from(offset).map_err(|_| ErrorCode::InvalidArgument)?;
    let (store, input, logs) = (&state.store, &state.inputs[index], &state.logs);
    let mut written = 0;
    // Stop between chunks once the task is out of time; the call hook then ends it.
    while written < range.len() && offset < input.manifest.len && state.clock.check().is_ok() {
        let chunk = (offset / CHUNK_SIZE as u64) as usize;
        let bytes = state
            .chunks
            .get_or_read((index, chunk), || {
                store.read_chunk(&input.cid, &input.manifest, chunk)
            })
            .map_err(|e| {
                logs.append(&[format!("[host] reading input `{}`: {e}\n", input.name).as_bytes()]);
                ErrorCode::Unavailable
            })?;
        let within = (offset % CHUNK_SIZE as u64) as usize;
        let n = (bytes.len() - within).min(range.len() - written);
        let dst = range.start + written;
        data[dst..dst + n].copy_from_slice(&bytes[within..within + n]);
        written += n;
        offset += n as u64;
    }
    len_result(written)
}

fn output_write(
    state: &mut TaskState,
    data: &mut [u8],
    name: (i32, i32),
    bytes: (i32, i32),
    cid_ptr: i32,
) -> GuestResult {
    let name = guest_str(data, name.0, name.1)?;
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ErrorCode::InvalidArgument);
    }
    let cid_range = guest_range(cid_ptr, CID_LEN as i32, data.len())?;
    let body = &data[guest_range(bytes.0, bytes.1, data.len())?];
    if state.outputs.iter().any(|(n, _)| n == name) {
        return Err(ErrorCode::InvalidArgument);
    }
    if state.outputs.len() >= state.limits.outputs {
        quota_note(state, &format!("output `{name}`"));
        return Err(ErrorCode::QuotaExceeded);
    }
    let cid = store_bytes(state, body, &format!("output `{name}`"))?;
    state.outputs.push((name.to_owned(), cid));
    data[cid_range].copy_from_slice(cid.as_bytes());
    Ok(0)
}

fn quota_note(state: &TaskState, what: &str) {
    state.logs.append(&[format!(
        "[host] {what} refused: the task's output quota is {} outputs and {}\n",
        state.limits.outputs,
        fmt_bytes(state.limits.output_bytes)
    )
    .as_bytes()]);
}

/// Stores bytes the task wrote (an output or an object) against its output-bytes quota; the
/// task may read them back.
pub(super) fn store_bytes(
    state: &mut TaskState,
    body: &[u8],
    what: &str,
) -> Result<Cid, ErrorCode> {
    let total = state.output_bytes.saturating_add(body.len() as u64);
    if total > state.limits.output_bytes {
        quota_note(state, what);
        return Err(ErrorCode::QuotaExceeded);
    }
    if let Err(why) = state.subtasks.may_store(body.len() as u64) {
        state
            .logs
            .append(&[format!("[host] storing {what}: {why}\n").as_bytes()]);
        return Err(ErrorCode::QuotaExceeded);
    }
    let clocked = ClockedReader {
        bytes: body,
        clock: &state.clock,
    };
    // Kept for the remote-output retention at least; the submitting node pins its own.
    let cid = state
        .store
        .put_file_pinned(clocked, PinClass::RemoteOutput)
        .map_err(|e| {
            host_note(state, &format!("storing {what}"), &e);
            ErrorCode::Unavailable
        })?;
    state.output_bytes = total;
    state.subtasks.readable.insert(cid);
    state.subtasks.written(cid);
    Ok(cid)
}

/// Guest bytes read out in chunks that stop once the task is out of time, so one huge
/// `output_write` cannot outlive the task's limit.
struct ClockedReader<'a> {
    bytes: &'a [u8],
    clock: &'a TaskClock,
}

impl std::io::Read for ClockedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.clock.check().map_err(std::io::Error::other)?;
        let n = buf.len().min(self.bytes.len()).min(CHUNK_SIZE);
        let (now, rest) = self.bytes.split_at(n);
        buf[..n].copy_from_slice(now);
        self.bytes = rest;
        Ok(n)
    }
}

/// Registers every `shoal_v1` import.
pub(crate) fn add_to_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    let m = IMPORT_MODULE;

    linker.func_wrap(m, "input_count", |c: Call<'_>| {
        Ok(encode(len_result(c.data().inputs.len())))
    })?;

    linker.func_wrap(m, "input_find", |mut c: Call<'_>, ptr: i32, len: i32| {
        Ok(encode(with_memory(&mut c, |data, state| {
            let name = guest_str(data, ptr, len)?;
            let index = state
                .inputs
                .iter()
                .position(|i| i.name == name)
                .ok_or(ErrorCode::NotFound)?;
            len_result(index)
        })))
    })?;

    linker.func_wrap(
        m,
        "input_name",
        |mut c: Call<'_>, index: i32, ptr: i32, len: i32| {
            Ok(encode(with_memory(&mut c, |data, state| {
                let name = state.inputs[input_index(state, index)?].name.as_bytes();
                copy_out(data, ptr, len, name)
            })))
        },
    )?;

    linker.func_wrap(m, "input_len", |c: Call<'_>, index: i32| {
        let state = c.data();
        Ok(encode(input_index(state, index).and_then(|i| {
            i32::try_from(state.inputs[i].manifest.len).map_err(|_| ErrorCode::TooLarge)
        })))
    })?;

    linker.func_wrap(
        m,
        "input_read",
        |mut c: Call<'_>, index: i32, offset: i64, ptr: i32, len: i32| {
            Ok(encode(with_memory(&mut c, |data, state| {
                input_read(state, data, index, offset, ptr, len)
            })))
        },
    )?;

    linker.func_wrap(m, "args_len", |c: Call<'_>| {
        Ok(encode(len_result(c.data().args.len())))
    })?;

    linker.func_wrap(m, "args_read", |mut c: Call<'_>, ptr: i32, len: i32| {
        Ok(encode(with_memory(&mut c, |data, state| {
            copy_out(data, ptr, len, &state.args)
        })))
    })?;

    linker.func_wrap(
        m,
        "output_write",
        |mut c: Call<'_>, name_ptr: i32, name_len: i32, ptr: i32, len: i32, cid_ptr: i32| {
            Ok(encode(with_memory(&mut c, |data, state| {
                output_write(state, data, (name_ptr, name_len), (ptr, len), cid_ptr)
            })))
        },
    )?;

    linker.func_wrap(
        m,
        "log",
        |mut c: Call<'_>, level: i32, ptr: i32, len: i32| {
            Ok(encode(with_memory(&mut c, |data, state| {
                let level = LogLevel::from_code(level).ok_or(ErrorCode::InvalidArgument)?;
                let text = &data[guest_range(ptr, len, data.len())?];
                let tag: &[u8] = match level {
                    LogLevel::Debug => b"[debug] ",
                    LogLevel::Info => b"[info] ",
                    LogLevel::Warn => b"[warn] ",
                    LogLevel::Error => b"[error] ",
                };
                state.logs.append(&[tag, text, b"\n"]);
                Ok(0)
            })))
        },
    )?;

    linker.func_wrap(m, "progress", |mut c: Call<'_>, ptr: i32, len: i32| {
        Ok(encode(with_memory(&mut c, |data, state| {
            let record = &data[guest_range(ptr, len, data.len())?];
            if record.len() > MAX_PROGRESS_LEN {
                return Err(ErrorCode::TooLarge);
            }
            if let Some(progress) = &state.progress {
                progress(record.to_vec());
            }
            Ok(0)
        })))
    })?;

    linker.func_wrap(m, "set_error", |mut c: Call<'_>, ptr: i32, len: i32| {
        Ok(encode(with_memory(&mut c, |data, state| {
            let text = &data[guest_range(ptr, len, data.len())?];
            let text = &text[..text.len().min(MAX_ERROR_LEN)];
            state.error_message = Some(String::from_utf8_lossy(text).into_owned());
            Ok(0)
        })))
    })?;

    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ranges_are_checked_without_overflow() {
        assert_eq!(guest_range(0, 4, 4), Ok(0..4));
        assert_eq!(guest_range(1, 4, 4), Err(ErrorCode::BadPointer));
        assert_eq!(guest_range(-1, 1, 1 << 20), Err(ErrorCode::BadPointer));
        assert_eq!(guest_range(4, -1, 1 << 20), Err(ErrorCode::BadPointer));
        assert_eq!(
            guest_range(i32::MAX, i32::MAX, usize::MAX),
            Ok(i32::MAX as usize..(i32::MAX as usize) * 2)
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever the guest passes, a range is inside memory or refused, never a panic.
        #[test]
        fn guest_ranges_are_inside_memory_or_refused(ptr: i32, len: i32, mem in 0usize..(1 << 33)) {
            if let Ok(range) = guest_range(ptr, len, mem) {
                proptest::prop_assert!(range.end <= mem && range.start <= range.end);
                proptest::prop_assert_eq!(range.len(), len as u32 as usize);
            }
        }
    }
}
