//! Tries to read `/etc/passwd` through WASI: a task has no preopened directories, so this must
//! fail, and the task reports the error it got.

use shoal::{Ctx, Error, log};

/// Reports what WASI said; writes the file as an output if it ever succeeded.
#[shoal::task]
fn passwd(ctx: &mut Ctx) -> Result<(), Error> {
    for path in ["/etc/passwd", "../../../../etc/passwd", "etc/passwd"] {
        match std::fs::read(path) {
            Ok(bytes) => {
                ctx.output("leaked", &bytes)?;
                return Ok(());
            }
            Err(e) => log!("open {path}: {e}"),
        }
    }
    Err(Error::msg("could not open /etc/passwd"))
}
