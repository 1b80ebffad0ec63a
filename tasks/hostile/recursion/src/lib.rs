//! Recurses without bound: must end at the wasm stack limit.

use shoal::{Ctx, Error};

#[allow(unconditional_recursion, reason = "the point of this module")]
fn deeper(n: u64) -> u64 {
    std::hint::black_box(deeper(std::hint::black_box(n + 1))) + 1
}

/// Overflows the stack.
#[shoal::task]
fn recursion(_ctx: &mut Ctx) -> Result<(), Error> {
    let _ = deeper(0);
    Ok(())
}
