//! Misuses the tensor calls, one task per attack (choose with `--task NAME`). The host must
//! answer each with a typed error code and stay up. Each task ends with `Err` carrying the
//! code the host gave (so the failure message names it), or with a message starting
//! `ACCEPTED` if the host let the misuse through.

use shoal::{Ctx, Error, Tensor, abi::ErrorCode, log};

#[cfg(target_arch = "wasm32")]
mod raw {
    #[link(wasm_import_module = "shoal_v1")]
    unsafe extern "C" {
        pub fn tensor_create(rows: i32, cols: i32, ptr: u32, len: u32) -> i32;
        pub fn tensor_op(code: i32, param: i32, alpha: f32, a: i32, b: i32) -> i32;
        pub fn tensor_shape(handle: i32, out_ptr: u32) -> i32;
        pub fn tensor_read(handle: i32, ptr: u32, len: u32) -> i32;
        pub fn tensor_free(handle: i32) -> i32;
    }
}

/// Natively there is no host to attack: every call is refused.
#[cfg(not(target_arch = "wasm32"))]
mod raw {
    pub unsafe fn tensor_create(_: i32, _: i32, _: u32, _: u32) -> i32 {
        -4
    }
    pub unsafe fn tensor_op(_: i32, _: i32, _: f32, _: i32, _: i32) -> i32 {
        -4
    }
    pub unsafe fn tensor_shape(_: i32, _: u32) -> i32 {
        -4
    }
    pub unsafe fn tensor_read(_: i32, _: u32, _: u32) -> i32 {
        -4
    }
    pub unsafe fn tensor_free(_: i32) -> i32 {
        -4
    }
}

/// Every call in `calls` must fail with `want`; returns `Err` naming the code if they all
/// did, or an `ACCEPTED` message naming the first call that did otherwise.
fn expect_all(what: &str, want: ErrorCode, calls: &[(&str, i32)]) -> Result<(), Error> {
    for (name, ret) in calls {
        log!("{what}: {name} -> {ret}");
        if *ret != want.code() {
            return Err(Error::msg(format!(
                "ACCEPTED: {what}: {name} returned {ret}, expected {want}"
            )));
        }
    }
    Err(Error::host(what, want))
}

/// Handles it was never given: forged values, and its own handle with another table's salt.
#[shoal::task]
fn foreign_handle(_ctx: &mut Ctx) -> Result<(), Error> {
    let own = Tensor::from_slice(2, 2, &[1.0; 4])?;
    let other_salt = (own.handle() ^ (1 << 23)) as i32;
    let mut out = [0u8; 16];
    let p = out.as_mut_ptr() as u32;
    let mut calls = Vec::new();
    for h in [0x0010_0001, 1, 0, -1, i32::MAX, other_salt] {
        // SAFETY: `p` points at 16 writable bytes; the handles are the attack.
        unsafe {
            calls.push(("tensor_shape", raw::tensor_shape(h, p)));
            calls.push(("tensor_read", raw::tensor_read(h, p, 16)));
            calls.push(("tensor_op", raw::tensor_op(9, 0, 0.0, h, h)));
            calls.push((
                "tensor_op(b)",
                raw::tensor_op(0, 0, 0.0, own.handle() as i32, h),
            ));
            calls.push(("tensor_free", raw::tensor_free(h)));
        }
    }
    expect_all("foreign handle", ErrorCode::BadHandle, &calls)
}

/// Uses a tensor after freeing it, and frees it twice.
#[shoal::task]
fn use_after_free(_ctx: &mut Ctx) -> Result<(), Error> {
    let t = Tensor::from_slice(1, 4, &[1.0, 2.0, 3.0, 4.0])?;
    let h = t.handle() as i32;
    drop(t);
    let mut out = [0u8; 16];
    let p = out.as_mut_ptr() as u32;
    // SAFETY: `p` points at 16 writable bytes; the freed handle is the attack.
    let calls = unsafe {
        [
            ("tensor_shape", raw::tensor_shape(h, p)),
            ("tensor_read", raw::tensor_read(h, p, 16)),
            ("tensor_op", raw::tensor_op(2, 0, 2.0, h, h)),
            ("tensor_free", raw::tensor_free(h)),
        ]
    };
    expect_all("use after free", ErrorCode::BadHandle, &calls)
}

/// A matmul whose shapes do not fit, through the SDK: its error goes straight back.
#[shoal::task]
fn shape_mismatch(_ctx: &mut Ctx) -> Result<(), Error> {
    let a = Tensor::from_slice(3, 4, &[0.5; 12])?;
    let b = Tensor::from_slice(5, 6, &[0.5; 30])?;
    let c = a.matmul(&b)?;
    Err(Error::msg(format!(
        "ACCEPTED: 3x4 @ 5x6 gave {:?}",
        c.shape()
    )))
}

/// Allocates 16 MiB tensors until the host refuses, and reports the refusal.
#[shoal::task]
fn quota_bomb(_ctx: &mut Ctx) -> Result<(), Error> {
    let data = vec![1.0f32; 4 << 20];
    let mut held = Vec::new();
    loop {
        match Tensor::from_slice(2048, 2048, &data) {
            Ok(t) => held.push(t),
            Err(e) => {
                log!(
                    "refused after {} tensors ({} MiB): {e}",
                    held.len(),
                    held.len() * 16
                );
                return match e.code() {
                    Some(ErrorCode::QuotaExceeded) => Err(e),
                    _ => Err(Error::msg(format!("ACCEPTED: wrong refusal: {e}"))),
                };
            }
        }
        if held.len() > 1024 {
            return Err(Error::msg("ACCEPTED: 16 GiB of tensors and no refusal"));
        }
    }
}

/// Dimensions whose byte size overflows.
#[shoal::task]
fn huge_dims(_ctx: &mut Ctx) -> Result<(), Error> {
    let data = [0u8; 16];
    let p = data.as_ptr() as u32;
    // SAFETY: `p` points at 16 readable bytes; the dimensions are the attack.
    let calls = unsafe {
        [
            (
                "tensor_create(0x7fffffff^2)",
                raw::tensor_create(0x7fff_ffff, 0x7fff_ffff, p, 16),
            ),
            (
                "tensor_create(0x7fffffff^2, len=-1)",
                raw::tensor_create(0x7fff_ffff, 0x7fff_ffff, p, u32::MAX),
            ),
        ]
    };
    expect_all("huge dims", ErrorCode::TooLarge, &calls)
}

/// Op codes and params the ABI does not define, on a live tensor.
#[shoal::task]
fn bad_op_code(_ctx: &mut Ctx) -> Result<(), Error> {
    let t = Tensor::from_slice(2, 2, &[1.0; 4])?;
    let h = t.handle() as i32;
    // SAFETY: takes no pointers; the codes are the attack.
    let calls = unsafe {
        [
            ("code 10", raw::tensor_op(10, 0, 0.0, h, h)),
            ("code 99", raw::tensor_op(99, 0, 0.0, h, h)),
            ("code -1", raw::tensor_op(-1, 0, 0.0, h, h)),
            ("code i32::MIN", raw::tensor_op(i32::MIN, 0, 0.0, h, h)),
            ("matmul flags 4", raw::tensor_op(0, 4, 0.0, h, h)),
            ("binary op 3", raw::tensor_op(1, 3, 0.0, h, h)),
            ("activation -1", raw::tensor_op(4, -1, 0.0, h, h)),
            ("reduce axis 2", raw::tensor_op(6, 2 << 8, 0.0, h, h)),
            ("transpose param 1", raw::tensor_op(9, 1, 0.0, h, h)),
        ]
    };
    expect_all("bad op code", ErrorCode::InvalidArgument, &calls)
}
