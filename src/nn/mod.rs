//! Training ops with correct, fast gradients, and device selection.
//!
//! candle 0.11's own `max_pool2d`, `upsample_*`, fused norms and BCE have wrong or missing
//! gradients, and its conv backward is slow on CPU (see the project notes). Everything the Unet
//! trains through is defined in [`ops`], each op with a finite-difference test; on CPU the ops
//! run the own kernels in [`cpu`] (candle custom ops), on CUDA (feature `cuda`) those in `cuda`,
//! elsewhere candle-native bodies. [`checks`] holds the op checks, runnable on any device.

pub mod autocast;
pub mod checks;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod gpu;
#[cfg(test)]
pub(crate) mod gradcheck;
pub mod ops;

pub use autocast::Precision;
pub use device::DeviceSpec;
pub use ops::{
    bce_dice_loss, bce_with_logits, conv_transpose2x2, conv_transpose2x2x2, conv2d, conv3d,
    group_norm, max_pool2x2, max_pool2x2x2, relu, soft_dice_loss,
};
