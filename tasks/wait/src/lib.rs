//! Waits without using CPU, then succeeds: lets tests hold a slot, or a peer, busy for a known
//! time (concurrency, in-flight limits, a peer killed mid-task).

use shoal::{Ctx, Error, log};

/// Sleeps `--arg ms=N` (default 100), then writes output `done` with the waiter's `--arg tag`.
#[shoal::task]
fn wait(ctx: &mut Ctx) -> Result<(), Error> {
    let ms: u64 = ctx.arg_or("ms", 100)?;
    std::thread::sleep(std::time::Duration::from_millis(ms));
    let tag = ctx.arg("tag").unwrap_or("").to_owned();
    ctx.output("done", tag.as_bytes())?;
    log!("waited {ms} ms");
    Ok(())
}
