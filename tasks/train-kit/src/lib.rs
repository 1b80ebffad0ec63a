//! What every trainer module shares: the `train` driver's round loop, and the pieces it is
//! made of. A trainer module (`tasks/mlp-digits`, `tasks/linreg`) is one wasm module with the
//! tasks `split`, `init`, `grad`, `eval` (and, for local SGD, `step`) and a `train` task that
//! hands its file formats to [`driver::train`] through the [`Trainer`] trait.
//!
//! The subtask protocol the driver relies on (each trainer documents its own formats):
//!
//! | task | inputs | args | outputs |
//! |---|---|---|---|
//! | `grad` | `params`, `shard` | `scale` (only from `poison_shard`, see [`driver`]) | `grad` (parameters' layout), `stats` |
//! | `step` (local mode only) | `params`, `shard` | `lr`, `steps`, `batch`, `seed` | `params`, `stats` |
//! | `eval` | `params`, `shard` (`test`) | | `stats` |
//!
//! - [`driver`]: the round loop ([`driver::train`]), its [`Trainer`] trait and [`Mode`];
//! - [`checkpoint`]: the checkpoint layout, behind each trainer's own magic;
//! - [`report`]: the per-round `key=value` lines that `host train` parses;
//! - [`subtasks`]: running a round's subtasks and reading their outputs;
//! - [`combine`]: the weighted mean, the robust combines ([`Combine`]) and the SGD step;
//! - [`rng`]: the seeded PRNG whose state a checkpoint carries.

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod checkpoint;
pub mod combine;
pub mod driver;
pub mod report;
pub mod rng;
pub mod subtasks;

pub use checkpoint::Checkpoint;
pub use combine::Combine;
pub use driver::{LocalShards, Mode, Trainer, train};
pub use report::{Round, Stats};
pub use rng::Rng;
