//! The smallest real task: reads input `name`, writes output `greeting`.

use shoal::{Ctx, Error, log};

/// Greets whoever input `name` names; `--arg punct=?` changes the punctuation.
#[shoal::task]
fn hello(ctx: &mut Ctx) -> Result<(), Error> {
    let name = ctx.input("name")?;
    let name = String::from_utf8_lossy(&name);
    let punct = ctx.arg("punct").unwrap_or("!");
    let greeting = format!("Hello, {}{punct}", name.trim());
    let cid = ctx.output("greeting", greeting.as_bytes())?;
    log!("greeted {} ({cid})", name.trim());
    Ok(())
}

#[cfg(test)]
mod tests {
    use shoal::testing::NativeHost;

    #[test]
    fn greets_natively() {
        let run = NativeHost::new()
            .input("name", "Ada\n")
            .arg("punct", "?")
            .run(super::hello)
            .unwrap();
        assert_eq!(run.output("greeting"), Some(&b"Hello, Ada?"[..]));
        assert!(run.logs[0].contains("greeted Ada"));
    }

    #[test]
    fn missing_input_is_an_error() {
        let err = NativeHost::new().run(super::hello).unwrap_err();
        assert!(err.to_string().contains("input `name`"), "{err}");
    }
}
