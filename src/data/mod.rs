//! Scans and labels: NIfTI I/O, dataset layouts, preprocessing, views, folds and the synthetic
//! phantom cohorts.
//!
//! Key type: [`Volume`], a C-order `[z, y, x]` array with its spacing in mm and the NIfTI header
//! it came from (kept so that predictions are written back on the source grid).

pub mod phantom;
pub mod volume;

pub use volume::Volume;
