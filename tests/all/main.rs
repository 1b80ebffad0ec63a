//! Integration tests across Shoal's crates, one module per area.

mod cli;
mod mesh;
mod compute;
mod sandbox;
mod tensor_abi;
mod util;
