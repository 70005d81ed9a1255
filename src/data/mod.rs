//! Scans and labels: NIfTI I/O, dataset layouts, preprocessing, views, folds and the synthetic
//! phantom cohorts.
//!
//! Key type: [`Volume`], a C-order `[z, y, x]` array with its spacing in mm and the NIfTI header
//! it came from (kept so that predictions are written back on the source grid).
//!
//! Modules, in pipeline order:
//! - [`nifti`]: read scans (f32 HU) and labels (u8), headers alone; write i16/u8/f32 atomically.
//! - [`layout`]: detect nnU-Net v2, Decathlon and flat-pair datasets; index cases from headers;
//!   [`layout::LabelMap`] for the binary target; the dataset fingerprint.
//! - [`folds`]: seeded, optionally volume-stratified patient-level k-fold `splits.json`.
//! - [`preprocess`]: HU windows as channels, axial/coronal/sagittal views, pad and crop.
//! - [`sampling`]: seeded training batches with foreground oversampling and augmentation.
//! - [`inspect`]: the summary behind `ranksweep inspect` (a file or a dataset folder).
//! - [`phantom`]: the synthetic TBI and SAH head-CT cohorts (the embedded default data set).
//!
//! Errors are one thiserror type per module; every message names the file (or case, or field)
//! and what was expected.

pub mod folds;
pub mod inspect;
pub mod layout;
pub mod nifti;
pub mod phantom;
pub mod preprocess;
pub mod sampling;
pub mod volume;

pub use volume::Volume;
