//! Does nothing, as fast as possible: the runtime's per-task overhead, measured.

use shoal::{Ctx, Error};

/// Returns at once.
#[shoal::task]
fn noop(_ctx: &mut Ctx) -> Result<(), Error> {
    Ok(())
}
