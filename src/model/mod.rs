//! The model: `Unet2d` exactly as the model contract names and shapes it, the adaptation kinds
//! (`none`, `full` and six conv adapters), module selectors, the optimizer and schedule, and
//! safetensors checkpoints.
//!
//! Design: every tensor is a [`Param`] — frozen (a plain `Tensor`) or trainable (a `Var`) — so
//! only trainable tensors reach candle's backprop and the optimizer. An adapter is one ΔW
//! interface over three factorisations with an optional DoRA magnitude; the adapted conv runs
//! one conv2d with the merged weight.

pub mod adapt;
pub mod adapter;
pub mod checkpoint;
pub mod checks;
pub mod config;
pub mod kind;
pub mod optim;
pub mod param;
pub mod selector;
pub mod summary;
pub mod unet;

pub use adapt::{AdaptError, AdaptationSpec};
pub use adapter::Adapter;
pub use config::{ConfigError, UnetConfig};
pub use kind::{AdaptationKind, Factorization};
pub use optim::{AdamW, AdamWConfig, LrSchedule};
pub use param::Param;
pub use selector::Selector;
pub use unet::{Unet2d, Unet3d};
