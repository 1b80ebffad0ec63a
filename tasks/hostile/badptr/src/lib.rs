//! Passes out-of-bounds and huge pointers to every pointer argument of every `shoal_v1` import.
//!
//! Every other argument of each call is valid (the task is given an input, so index 0 exists;
//! the tensor calls get a live handle and a matching shape), so the pointer is the only thing
//! wrong and the only acceptable answer is `BadPointer`. Each answer is logged as
//! `badptr IMPORT ARG PTR LEN -> CODE`; then each call is made once with good pointers and
//! logged as `control IMPORT -> CODE`, to show that it is the pointer the host refused. The
//! test reads these lines and checks them against the imports the host defines.

use shoal::{Ctx, Error, Tensor, log};

#[cfg(target_arch = "wasm32")]
mod raw {
    #[link(wasm_import_module = "shoal_v1")]
    unsafe extern "C" {
        pub fn input_find(ptr: u32, len: u32) -> i32;
        pub fn input_name(index: i32, ptr: u32, len: u32) -> i32;
        pub fn input_read(index: i32, offset: i64, ptr: u32, len: u32) -> i32;
        pub fn args_read(ptr: u32, len: u32) -> i32;
        pub fn output_write(name_ptr: u32, name_len: u32, ptr: u32, len: u32, cid_ptr: u32) -> i32;
        pub fn log(level: i32, ptr: u32, len: u32) -> i32;
        pub fn set_error(ptr: u32, len: u32) -> i32;
        pub fn progress(ptr: u32, len: u32) -> i32;
        pub fn tensor_create(rows: i32, cols: i32, ptr: u32, len: u32) -> i32;
        pub fn tensor_shape(handle: i32, out_ptr: u32) -> i32;
        pub fn tensor_read(handle: i32, ptr: u32, len: u32) -> i32;
        pub fn self_module(cid_ptr: u32) -> i32;
        pub fn input_cid(index: i32, cid_ptr: u32) -> i32;
        pub fn object_put(ptr: u32, len: u32, cid_ptr: u32) -> i32;
        pub fn object_open(cid_ptr: u32) -> i32;
        pub fn spawn(ptr: u32, len: u32) -> i32;
        pub fn subtask_wait(handles_ptr: u32, count: u32) -> i32;
        pub fn subtask_result(handle: i32, ptr: u32, len: u32) -> i32;
    }

    /// The guest's linear memory size in bytes, now.
    pub fn memory_end() -> u32 {
        (core::arch::wasm32::memory_size(0) * 65536) as u32
    }
}

/// Natively there is no host to call: every call answers `InvalidArgument`.
#[cfg(not(target_arch = "wasm32"))]
mod raw {
    pub unsafe fn input_find(_: u32, _: u32) -> i32 {
        -4
    }
    pub unsafe fn input_name(_: i32, _: u32, _: u32) -> i32 {
        -4
    }
    pub unsafe fn input_read(_: i32, _: i64, _: u32, _: u32) -> i32 {
        -4
    }
    pub unsafe fn args_read(_: u32, _: u32) -> i32 {
        -4
    }
    pub unsafe fn output_write(_: u32, _: u32, _: u32, _: u32, _: u32) -> i32 {
        -4
    }
    pub unsafe fn log(_: i32, _: u32, _: u32) -> i32 {
        -4
    }
    pub unsafe fn set_error(_: u32, _: u32) -> i32 {
        -4
    }
    pub unsafe fn progress(_: u32, _: u32) -> i32 {
        -4
    }
    pub unsafe fn tensor_create(_: i32, _: i32, _: u32, _: u32) -> i32 {
        -4
    }
    pub unsafe fn tensor_shape(_: i32, _: u32) -> i32 {
        -4
    }
    pub unsafe fn tensor_read(_: i32, _: u32, _: u32) -> i32 {
        -4
    }
    pub unsafe fn self_module(_: u32) -> i32 {
        -4
    }
    pub unsafe fn input_cid(_: i32, _: u32) -> i32 {
        -4
    }
    pub unsafe fn object_put(_: u32, _: u32, _: u32) -> i32 {
        -4
    }
    pub unsafe fn object_open(_: u32) -> i32 {
        -4
    }
    pub unsafe fn spawn(_: u32, _: u32) -> i32 {
        -4
    }
    pub unsafe fn subtask_wait(_: u32, _: u32) -> i32 {
        -4
    }
    pub unsafe fn subtask_result(_: i32, _: u32, _: u32) -> i32 {
        -4
    }
    pub fn memory_end() -> u32 {
        1 << 20
    }
}

/// `(ptr, len)` pairs no part of which lies in a memory of `end` bytes. Every length is a
/// non-zero multiple of 4, so `tensor_create` can be given a shape that matches it.
fn bad_pairs(end: u32) -> [(u32, u32); 6] {
    [
        (end - 8, 16),              // straddles the end
        (end, 4),                   // starts at the end
        (u32::MAX - 3, 16),         // wraps past 4 GiB
        (0xFFFF_0000, 0x0002_0000), // far past the end
        (16, 0xFFFF_FFF0),          // a "negative" length
        (0xFFFF_FFFC, 0xFFFF_FFFC), // both huge
    ]
}

/// Pointers to a fixed-size value (a 32-byte CID, an 8-byte shape) that do not fit.
fn bad_ptrs(end: u32) -> [u32; 5] {
    [end - 4, end, u32::MAX - 3, 0x8000_0000, 0xFFFF_FFFC]
}

/// Makes every pointer-taking call with every bad pointer, then once with good ones.
#[shoal::task]
fn badptr(ctx: &mut Ctx) -> Result<(), Error> {
    let names = ctx.input_names();
    if names.len() != 1 {
        return Err(Error::msg(format!("give me one input, not {names:?}")));
    }
    let name = names[0].as_bytes();
    let (name_ptr, name_len) = (name.as_ptr() as u32, name.len() as u32);
    let tensor = Tensor::from_slice(1, 1, &[1.0])?;
    let h = tensor.handle() as i32;
    let one = 1.0f32.to_le_bytes();
    let mut buf = [0u8; 64];
    let buf_ptr = buf.as_mut_ptr() as u32;
    let body = b"x";
    let body_ptr = body.as_ptr() as u32;
    // A finished subtask (the test's mesh finishes each at once) and a spec to spawn another.
    let module = ctx.module()?;
    let spec = shoal::Spawn::new(module).task("none").encoded();
    let (spec_ptr, spec_len) = (spec.as_ptr() as u32, spec.len() as u32);
    // SAFETY: the spec is a live buffer of that length.
    let sub = unsafe { raw::spawn(spec_ptr, spec_len) };
    let handles = [sub];
    let handles_ptr = handles.as_ptr() as u32;
    // SAFETY: one live handle.
    unsafe { raw::subtask_wait(handles_ptr, 1) };
    let cid = module.0;
    let cid_ptr = cid.as_ptr() as u32;

    // Nothing below allocates until every bad call is made, so no bad pointer can become a
    // good one by the memory growing under it.
    let mut answers: Vec<(&str, u32, u32, i32)> = Vec::with_capacity(128);
    let end = raw::memory_end();
    for (p, l) in bad_pairs(end) {
        let cols = (l / 4) as i32;
        // SAFETY: the pointers are deliberately bad: checking them is the host's job, and the
        // test. Every pointer the host may write through is either bad or `buf`.
        unsafe {
            answers.push(("input_find name", p, l, raw::input_find(p, l)));
            answers.push(("input_name buf", p, l, raw::input_name(0, p, l)));
            answers.push(("input_read buf", p, l, raw::input_read(0, 0, p, l)));
            answers.push(("args_read buf", p, l, raw::args_read(p, l)));
            let write = raw::output_write(p, l, body_ptr, 1, buf_ptr);
            answers.push(("output_write name", p, l, write));
            let write = raw::output_write(name_ptr, name_len, p, l, buf_ptr);
            answers.push(("output_write bytes", p, l, write));
            answers.push(("log text", p, l, raw::log(1, p, l)));
            answers.push(("set_error text", p, l, raw::set_error(p, l)));
            answers.push(("progress record", p, l, raw::progress(p, l)));
            let create = raw::tensor_create(1, cols, p, l);
            answers.push(("tensor_create data", p, l, create));
            answers.push(("tensor_read buf", p, l, raw::tensor_read(h, p, l)));
            answers.push(("object_put bytes", p, l, raw::object_put(p, l, buf_ptr)));
            answers.push(("spawn spec", p, l, raw::spawn(p, l)));
            answers.push(("subtask_wait handles", p, l, raw::subtask_wait(p, l / 4)));
            answers.push(("subtask_result buf", p, l, raw::subtask_result(sub, p, l)));
        }
    }
    for p in bad_ptrs(end) {
        // SAFETY: as above.
        unsafe {
            let write = raw::output_write(name_ptr, name_len, body_ptr, 1, p);
            answers.push(("output_write cid", p, 32, write));
            answers.push(("tensor_shape out", p, 8, raw::tensor_shape(h, p)));
            answers.push(("self_module cid", p, 32, raw::self_module(p)));
            answers.push(("input_cid cid", p, 32, raw::input_cid(0, p)));
            answers.push(("object_put cid", p, 32, raw::object_put(body_ptr, 1, p)));
            answers.push(("object_open cid", p, 32, raw::object_open(p)));
        }
    }
    if raw::memory_end() != end {
        return Err(Error::msg(
            "memory grew during the bad calls; the test is void",
        ));
    }
    for (call, p, l, code) in answers {
        log!("badptr {call} {p:#x} {l:#x} -> {code}");
    }

    // The same calls with good pointers must succeed.
    // SAFETY: every pointer is a live buffer of at least the length given.
    let controls = unsafe {
        [
            ("input_find", raw::input_find(name_ptr, name_len)),
            ("input_name", raw::input_name(0, buf_ptr, 64)),
            ("input_read", raw::input_read(0, 0, buf_ptr, 64)),
            ("args_read", raw::args_read(buf_ptr, 64)),
            (
                "output_write",
                raw::output_write(name_ptr, name_len, body_ptr, 1, buf_ptr),
            ),
            ("log", raw::log(1, body_ptr, 1)),
            ("set_error", raw::set_error(body_ptr, 0)),
            ("progress", raw::progress(body_ptr, 1)),
            (
                "tensor_create",
                raw::tensor_create(1, 1, one.as_ptr() as u32, 4),
            ),
            ("tensor_shape", raw::tensor_shape(h, buf_ptr)),
            ("tensor_read", raw::tensor_read(h, buf_ptr, 64)),
            ("self_module", raw::self_module(buf_ptr)),
            ("input_cid", raw::input_cid(0, buf_ptr)),
            ("object_put", raw::object_put(body_ptr, 1, buf_ptr)),
            ("object_open", raw::object_open(cid_ptr)),
            ("spawn", raw::spawn(spec_ptr, spec_len)),
            ("subtask_wait", raw::subtask_wait(handles_ptr, 1)),
            ("subtask_result", raw::subtask_result(sub, buf_ptr, 64)),
        ]
    };
    for (call, code) in controls {
        log!("control {call} -> {code}");
    }
    Ok(())
}
