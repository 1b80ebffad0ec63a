//! Prints and logs forever: must end at its wall-time limit with its log capped.

use shoal::{Ctx, Error, log};

/// Never returns; every iteration writes to stdout, stderr and the log call.
#[shoal::task]
fn logflood(_ctx: &mut Ctx) -> Result<(), Error> {
    let line = "x".repeat(4096);
    let mut i: u64 = 0;
    loop {
        println!("{i} {line}");
        eprintln!("{i} {line}");
        log!("{i} {line}");
        i += 1;
    }
}
