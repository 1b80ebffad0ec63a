//! The Shoal node: a wasmtime sandbox for untrusted tasks, a blake3 block store, compute
//! backends for tensor math, and the pieces that tie them to the mesh.
//!
//! Data flows one way: the CLI talks to a node, the node to `sched`, `sched` to `runtime`
//! (locally) or `p2p` (remotely), and `runtime` to `store` and `compute`.

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod compute;
pub mod control;
pub mod node;
pub mod runtime;
pub mod sched;
pub mod store;
