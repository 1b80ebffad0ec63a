//! Paths to the example and hostile tasks, freshly built to `wasm32-wasip1` by `build.rs`.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
