//! The raw `shoal_v1` imports and their safe wrappers.

use crate::abi::{CID_LEN, ErrorCode, LogLevel};

mod raw {
    #[link(wasm_import_module = "shoal_v1")]
    unsafe extern "C" {
        pub fn input_count() -> i32;
        pub fn input_find(name_ptr: *const u8, name_len: usize) -> i32;
        pub fn input_name(index: i32, ptr: *mut u8, len: usize) -> i32;
        pub fn input_len(index: i32) -> i32;
        pub fn input_read(index: i32, offset: i64, ptr: *mut u8, len: usize) -> i32;
        pub fn args_len() -> i32;
        pub fn args_read(ptr: *mut u8, len: usize) -> i32;
        pub fn output_write(
            name_ptr: *const u8,
            name_len: usize,
            ptr: *const u8,
            len: usize,
            cid_ptr: *mut u8,
        ) -> i32;
        pub fn log(level: i32, ptr: *const u8, len: usize) -> i32;
        pub fn set_error(ptr: *const u8, len: usize) -> i32;
    }
}

/// Turns an ABI return value into a length or an error code.
fn check(ret: i32) -> Result<usize, ErrorCode> {
    match usize::try_from(ret) {
        Ok(n) => Ok(n),
        Err(_) => Err(ErrorCode::from_code(ret).unwrap_or(ErrorCode::InvalidArgument)),
    }
}

fn index(i: usize) -> Result<i32, ErrorCode> {
    i32::try_from(i).map_err(|_| ErrorCode::NotFound)
}

pub(crate) fn input_count() -> usize {
    // SAFETY: takes no pointers.
    check(unsafe { raw::input_count() }).unwrap_or(0)
}

pub(crate) fn input_find(name: &str) -> Result<usize, ErrorCode> {
    // SAFETY: the pointer and length describe `name`, which lives across the call.
    check(unsafe { raw::input_find(name.as_ptr(), name.len()) })
}

pub(crate) fn input_name(i: usize) -> Result<String, ErrorCode> {
    let mut buf = vec![0u8; 256];
    // SAFETY: the pointer and length describe `buf`, writable and alive across the call.
    let n = check(unsafe { raw::input_name(index(i)?, buf.as_mut_ptr(), buf.len()) })?;
    buf.truncate(n);
    String::from_utf8(buf).map_err(|_| ErrorCode::InvalidArgument)
}

pub(crate) fn input_len(i: usize) -> Result<usize, ErrorCode> {
    // SAFETY: takes no pointers.
    check(unsafe { raw::input_len(index(i)?) })
}

pub(crate) fn input_read(i: usize, offset: u64, buf: &mut [u8]) -> Result<usize, ErrorCode> {
    let offset = i64::try_from(offset).map_err(|_| ErrorCode::InvalidArgument)?;
    // SAFETY: the pointer and length describe `buf`, writable and alive across the call.
    check(unsafe { raw::input_read(index(i)?, offset, buf.as_mut_ptr(), buf.len()) })
}

pub(crate) fn args() -> Vec<u8> {
    // SAFETY: takes no pointers.
    let Ok(len) = check(unsafe { raw::args_len() }) else { return Vec::new() };
    let mut buf = vec![0u8; len];
    // SAFETY: the pointer and length describe `buf`, writable and alive across the call.
    match check(unsafe { raw::args_read(buf.as_mut_ptr(), buf.len()) }) {
        Ok(n) => {
            buf.truncate(n);
            buf
        }
        Err(_) => Vec::new(),
    }
}

pub(crate) fn output_write(name: &str, bytes: &[u8]) -> Result<[u8; CID_LEN], ErrorCode> {
    let mut cid = [0u8; CID_LEN];
    // SAFETY: each pointer/length pair describes a live slice; `cid` has room for CID_LEN bytes.
    check(unsafe {
        raw::output_write(name.as_ptr(), name.len(), bytes.as_ptr(), bytes.len(), cid.as_mut_ptr())
    })?;
    Ok(cid)
}

pub(crate) fn log(level: LogLevel, message: &str) {
    // SAFETY: the pointer and length describe `message`, alive across the call.
    let _ = unsafe { raw::log(level as i32, message.as_ptr(), message.len()) };
}

pub(crate) fn set_error(message: &str) {
    // SAFETY: the pointer and length describe `message`, alive across the call.
    let _ = unsafe { raw::set_error(message.as_ptr(), message.len()) };
}
