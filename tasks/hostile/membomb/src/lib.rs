//! Allocates 1 MiB at a time and keeps it: must end at its memory limit.

use shoal::{Ctx, Error};

/// Grows until the host refuses.
#[shoal::task]
fn membomb(_ctx: &mut Ctx) -> Result<(), Error> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
    }
}
