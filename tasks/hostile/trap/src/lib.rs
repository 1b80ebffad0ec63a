//! Executes `unreachable`: must end as a trap.

use shoal::{Ctx, Error};

/// Traps at once.
#[shoal::task]
fn trap(_ctx: &mut Ctx) -> Result<(), Error> {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    Ok(())
}
