//! Integration tests across Shoal's crates, one module per area.

mod architecture;
mod cli;
mod compute;
mod containment;
mod decoders;
mod deterministic;
mod fairness;
mod mesh;
mod sandbox;
mod subtasks;
mod tenants;
mod tensor_abi;
mod training;
mod transfer;
mod util;
mod verify;
