//! The host calls as safe functions. On wasm they call the `shoal_v1` imports; natively they
//! run against an in-process stub (see [`crate::testing`]), so task logic unit-tests on the
//! host with the same code path above this line.

#[cfg(not(target_arch = "wasm32"))]
mod native;
#[cfg(target_arch = "wasm32")]
mod wasm;

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use native::*;
#[cfg(target_arch = "wasm32")]
pub(crate) use wasm::*;

use crate::abi::ErrorCode;

/// Turns an ABI return value into a length or an error code.
pub(crate) fn check(ret: i32) -> Result<usize, ErrorCode> {
    match usize::try_from(ret) {
        Ok(n) => Ok(n),
        Err(_) => Err(ErrorCode::from_code(ret).unwrap_or(ErrorCode::InvalidArgument)),
    }
}
