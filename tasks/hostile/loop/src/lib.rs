//! Spins forever: must end at its wall-time limit.

use shoal::{Ctx, Error};

/// Never returns.
#[shoal::task]
fn spin(_ctx: &mut Ctx) -> Result<(), Error> {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}
