//! Calls every `shoal_v1` import with out-of-bounds and huge `(ptr, len)` pairs. The host
//! must answer each with an error code and stay up; the task logs each answer and fails if
//! any call was accepted.

use shoal::{Ctx, Error, abi::ErrorCode, log};

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "shoal_v1")]
unsafe extern "C" {
    fn input_find(ptr: u32, len: u32) -> i32;
    fn input_name(index: i32, ptr: u32, len: u32) -> i32;
    fn input_read(index: i32, offset: i64, ptr: u32, len: u32) -> i32;
    fn args_read(ptr: u32, len: u32) -> i32;
    fn output_write(name_ptr: u32, name_len: u32, ptr: u32, len: u32, cid_ptr: u32) -> i32;
    fn log(level: i32, ptr: u32, len: u32) -> i32;
    fn set_error(ptr: u32, len: u32) -> i32;
}

/// Pairs that no guest memory can contain: past the end, wrapping, and huge.
const BAD: [(u32, u32); 4] = [
    (u32::MAX - 3, 16),
    (0xFFFF_0000, 0x0002_0000),
    (16, u32::MAX),
    (u32::MAX, u32::MAX),
];

/// Runs every call with every bad pair.
#[shoal::task]
fn badptr(_ctx: &mut Ctx) -> Result<(), Error> {
    let ok_name = b"x";
    let ok = ok_name.as_ptr() as u32;
    let mut accepted = Vec::new();
    let mut calls = 0;
    for (p, l) in BAD {
        #[cfg(target_arch = "wasm32")]
        // SAFETY: deliberately bad pointers; the host must check them, which is the test.
        let results = unsafe {
            [
                ("input_find", input_find(p, l)),
                ("input_name", input_name(0, p, l)),
                ("input_read", input_read(0, 0, p, l)),
                ("args_read", args_read(p, l)),
                ("output_write(name)", output_write(p, l, ok, 1, 64)),
                ("output_write(data)", output_write(ok, 1, p, l, 64)),
                (
                    "output_write(cid)",
                    output_write(ok, 1, ok, 1, p | 0x8000_0000),
                ),
                ("log", log(1, p, l)),
                ("set_error", set_error(p, l)),
            ]
        };
        #[cfg(not(target_arch = "wasm32"))]
        let results: [(&str, i32); 0] = {
            let _ = (p, l, ok);
            []
        };
        for (name, ret) in results {
            calls += 1;
            match ErrorCode::from_code(ret) {
                Some(code) => log!("{name}({p:#x}, {l:#x}) -> {code}"),
                None => accepted.push(format!("{name}({p:#x}, {l:#x}) returned {ret}")),
            }
        }
    }
    if accepted.is_empty() {
        log!("host rejected all {calls} bad calls");
        Ok(())
    } else {
        Err(Error::msg(format!(
            "host accepted bad pointers: {}",
            accepted.join("; ")
        )))
    }
}
