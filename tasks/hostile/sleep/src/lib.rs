//! Sleeps for an hour inside a WASI host call, where epochs do not tick: must still end at
//! its wall-time limit.

use shoal::{Ctx, Error};

/// Sleeps far past any deadline.
#[shoal::task]
fn sleep(_ctx: &mut Ctx) -> Result<(), Error> {
    std::thread::sleep(std::time::Duration::from_secs(3600));
    Ok(())
}
