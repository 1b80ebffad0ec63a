//! Writes outputs until the host refuses one: each `--arg size=N` bytes (all alike, so the
//! store keeps one copy and the test stays fast), at most `--arg max=N` of them. Logs how many
//! it wrote, then fails with the host's refusal, so the test sees both the count and the code.

use shoal::{Ctx, Error, log};

/// Writes `o0`, `o1`, ... until refused.
#[shoal::task]
fn outputs(ctx: &mut Ctx) -> Result<(), Error> {
    let size: usize = ctx.arg_or("size", 1)?;
    let max: usize = ctx.arg_or("max", 1 << 20)?;
    let body = vec![7u8; size];
    for i in 0..max {
        if let Err(e) = ctx.output(&format!("o{i}"), &body) {
            log!("wrote {i} outputs of {size} bytes");
            return Err(e);
        }
    }
    Err(Error::msg(format!(
        "ACCEPTED: {max} outputs of {size} bytes"
    )))
}
