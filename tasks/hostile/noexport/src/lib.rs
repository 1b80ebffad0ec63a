//! Exports a function, but no task: must be refused as a bad module.

/// Looks like an entry point but lacks the `shoal_task:` export prefix.
#[unsafe(no_mangle)]
pub extern "C" fn main_task() -> i32 {
    0
}
