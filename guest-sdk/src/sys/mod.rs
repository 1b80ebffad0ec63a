//! The host calls as safe functions. On wasm they call the `shoal_v1` imports; natively they
//! run against an in-process stub (see [`crate::testing`]), so task logic unit-tests on the
//! host with the same code path above this line.

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod native;
#[cfg(not(target_arch = "wasm32"))]
mod native_tensor;
#[cfg(target_arch = "wasm32")]
mod wasm;

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use native::*;
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use native_tensor::{tensor_create, tensor_free, tensor_op, tensor_read, tensor_shape};
#[cfg(target_arch = "wasm32")]
pub(crate) use wasm::*;
