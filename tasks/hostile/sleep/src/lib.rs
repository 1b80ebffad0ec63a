//! Sleeps inside a WASI host call, where epochs do not tick. By default for an hour, which must
//! still end at its wall-time limit; with `--arg ms=N` for N ms, then it logs
//! `slept START END` (wall clock, in µs since the epoch), so a test can count the tasks that
//! were asleep at once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal::{Ctx, Error, log};

/// Sleeps for `ms` (default: far past any deadline).
#[shoal::task]
fn sleep(ctx: &mut Ctx) -> Result<(), Error> {
    let ms: u64 = ctx.arg_or("ms", 3_600_000)?;
    let started = now_us();
    std::thread::sleep(Duration::from_millis(ms));
    log!("slept {started} {}", now_us());
    Ok(())
}

/// Wall-clock time: the only clock all tasks share (WASI's monotonic clock starts per task).
fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}
