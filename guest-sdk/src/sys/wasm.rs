//! The raw `shoal_v1` imports and their safe wrappers.

use crate::abi::{CID_LEN, ErrorCode, LogLevel, TensorOp};

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
        pub fn progress(ptr: *const u8, len: usize) -> i32;
        pub fn tensor_create(rows: i32, cols: i32, ptr: *const u8, len: usize) -> i32;
        pub fn tensor_op(code: i32, param: i32, alpha: f32, a: i32, b: i32) -> i32;
        pub fn tensor_shape(handle: i32, out_ptr: *mut u8) -> i32;
        pub fn tensor_read(handle: i32, ptr: *mut u8, len: usize) -> i32;
        pub fn tensor_free(handle: i32) -> i32;
        pub fn self_module(cid_ptr: *mut u8) -> i32;
        pub fn input_cid(index: i32, cid_ptr: *mut u8) -> i32;
        pub fn object_put(ptr: *const u8, len: usize, cid_ptr: *mut u8) -> i32;
        pub fn object_open(cid_ptr: *const u8) -> i32;
        pub fn spawn(spec_ptr: *const u8, spec_len: usize) -> i32;
        pub fn subtask_wait(handles_ptr: *const i32, count: usize) -> i32;
        pub fn subtask_result(handle: i32, ptr: *mut u8, len: usize) -> i32;
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
    let Ok(len) = check(unsafe { raw::args_len() }) else {
        return Vec::new();
    };
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
        raw::output_write(
            name.as_ptr(),
            name.len(),
            bytes.as_ptr(),
            bytes.len(),
            cid.as_mut_ptr(),
        )
    })?;
    Ok(cid)
}

pub(crate) fn log(level: LogLevel, message: &str) {
    // SAFETY: the pointer and length describe `message`, alive across the call.
    let _ = unsafe { raw::log(level as i32, message.as_ptr(), message.len()) };
}

pub(crate) fn progress(record: &[u8]) -> Result<usize, ErrorCode> {
    // SAFETY: the pointer and length describe `record`, alive across the call.
    check(unsafe { raw::progress(record.as_ptr(), record.len()) })
}

pub(crate) fn set_error(message: &str) {
    // SAFETY: the pointer and length describe `message`, alive across the call.
    let _ = unsafe { raw::set_error(message.as_ptr(), message.len()) };
}

/// A handle as the ABI passes it; handles are positive `i32`s, so this never wraps for a
/// handle the host issued.
fn raw_handle(handle: u32) -> i32 {
    handle as i32
}

fn handle_result(ret: i32) -> Result<u32, ErrorCode> {
    check(ret).map(|h| h as u32)
}

pub(crate) fn tensor_create(rows: usize, cols: usize, data: &[f32]) -> Result<u32, ErrorCode> {
    let rows = i32::try_from(rows).map_err(|_| ErrorCode::TooLarge)?;
    let cols = i32::try_from(cols).map_err(|_| ErrorCode::TooLarge)?;
    let len = data.len().checked_mul(4).ok_or(ErrorCode::TooLarge)?;
    // SAFETY: the pointer and length describe `data`'s bytes (f32 is 4 plain bytes, little-
    // endian on wasm), alive and unmodified across the call.
    handle_result(unsafe { raw::tensor_create(rows, cols, data.as_ptr().cast::<u8>(), len) })
}

pub(crate) fn tensor_op(op: TensorOp, a: u32, b: u32) -> Result<u32, ErrorCode> {
    let (code, param, alpha) = op.encode();
    // SAFETY: takes no pointers.
    handle_result(unsafe { raw::tensor_op(code, param, alpha, raw_handle(a), raw_handle(b)) })
}

pub(crate) fn tensor_shape(handle: u32) -> Result<(usize, usize), ErrorCode> {
    let mut out = [0u8; 8];
    // SAFETY: `out` has the 8 writable bytes the call fills, alive across the call.
    check(unsafe { raw::tensor_shape(raw_handle(handle), out.as_mut_ptr()) })?;
    let rows = u32::from_le_bytes([out[0], out[1], out[2], out[3]]);
    let cols = u32::from_le_bytes([out[4], out[5], out[6], out[7]]);
    Ok((rows as usize, cols as usize))
}

pub(crate) fn tensor_read(handle: u32, out: &mut [f32]) -> Result<usize, ErrorCode> {
    let len = out.len().checked_mul(4).ok_or(ErrorCode::TooLarge)?;
    // SAFETY: the pointer and length describe `out`'s bytes, writable and alive across the
    // call; any bit pattern the host writes is a valid f32.
    let bytes =
        check(unsafe { raw::tensor_read(raw_handle(handle), out.as_mut_ptr().cast::<u8>(), len) })?;
    Ok(bytes / 4)
}

pub(crate) fn tensor_free(handle: u32) -> Result<(), ErrorCode> {
    // SAFETY: takes no pointers.
    check(unsafe { raw::tensor_free(raw_handle(handle)) }).map(|_| ())
}

pub(crate) fn self_module() -> Result<[u8; CID_LEN], ErrorCode> {
    let mut cid = [0u8; CID_LEN];
    // SAFETY: `cid` has room for CID_LEN bytes and lives across the call.
    check(unsafe { raw::self_module(cid.as_mut_ptr()) })?;
    Ok(cid)
}

pub(crate) fn input_cid(i: usize) -> Result<[u8; CID_LEN], ErrorCode> {
    let mut cid = [0u8; CID_LEN];
    // SAFETY: `cid` has room for CID_LEN bytes and lives across the call.
    check(unsafe { raw::input_cid(index(i)?, cid.as_mut_ptr()) })?;
    Ok(cid)
}

pub(crate) fn object_put(bytes: &[u8]) -> Result<[u8; CID_LEN], ErrorCode> {
    let mut cid = [0u8; CID_LEN];
    // SAFETY: `bytes` is a live slice; `cid` has room for CID_LEN bytes.
    check(unsafe { raw::object_put(bytes.as_ptr(), bytes.len(), cid.as_mut_ptr()) })?;
    Ok(cid)
}

pub(crate) fn object_open(cid: &[u8; CID_LEN]) -> Result<usize, ErrorCode> {
    // SAFETY: `cid` is CID_LEN readable bytes, alive across the call.
    check(unsafe { raw::object_open(cid.as_ptr()) })
}

pub(crate) fn spawn(spec: &[u8]) -> Result<u32, ErrorCode> {
    // SAFETY: the pointer and length describe `spec`, alive across the call.
    handle_result(unsafe { raw::spawn(spec.as_ptr(), spec.len()) })
}

pub(crate) fn subtask_wait(handles: &[u32]) -> Result<usize, ErrorCode> {
    let raw_handles: Vec<i32> = handles.iter().map(|h| raw_handle(*h)).collect();
    // SAFETY: the pointer and count describe `raw_handles`, alive across the call.
    check(unsafe { raw::subtask_wait(raw_handles.as_ptr(), raw_handles.len()) })
}

pub(crate) fn subtask_result(handle: u32) -> Result<Vec<u8>, ErrorCode> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: the pointer and length describe `buf`, writable and alive across the call.
        let ret = unsafe { raw::subtask_result(raw_handle(handle), buf.as_mut_ptr(), buf.len()) };
        match check(ret) {
            Ok(n) if n <= buf.len() => {
                buf.truncate(n);
                return Ok(buf);
            }
            // A result longer than the buffer answers with its length: grow and ask again.
            Ok(n) => buf.resize(n, 0),
            Err(code) => return Err(code),
        }
    }
}
