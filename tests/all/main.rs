//! Integration tests across Shoal's crates, one module per area.

mod cli;
mod sandbox;
mod util;
