//! ranksweep: declarative experiment sweeps for parameter-efficient transfer learning on
//! segmentation Unets.
//!
//! Layers, bottom to top (nothing imports upward):
//! - [`nn`]: training ops with correct, fast gradients (own candle ops), losses, devices;
//! - [`model`]: `Unet2d`, adapters, selectors, optimizer, checkpoints;
//! - [`data`] and [`metrics`]: NIfTI datasets, preprocessing, folds, phantoms; Dice, HD95, stats;
//! - `train`, `sweep`, `store`, [`report`]; [`exec`] (the scheduler of worker processes, and
//!   `exec::slurm`, the SLURM job-array backend) and `cli` on top.

pub mod cli;
pub mod data;
pub mod durable;
pub mod exec;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod report;
pub mod store;
pub mod sweep;
pub mod train;
pub mod version;
