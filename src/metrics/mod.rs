//! Segmentation metrics, volume agreement and statistics.
//!
//! Owns everything computed from a predicted and an annotated mask, and the statistics that
//! reports put on top. Masks are `ArrayView3<u8>` with axes `[z, y, x]` (non-zero = foreground)
//! and a voxel size `[f64; 3]` in mm along the same axes, as in [`crate::data::Volume`].
//!
//! - [`seg`]: [`CaseMetrics`] per case (TP/FP/FN/TN, Dice, IoU, volumes in mL, HD95, ASSD,
//!   stratum), with nnU-Net's empty-mask conventions;
//! - [`distance`]: mask surfaces and the exact anisotropic Euclidean distance transform behind
//!   HD95 and ASSD (MONAI's definitions);
//! - [`strata`]: [`Strata`], the hemorrhage-volume bins ("<5", "5–15", ...);
//! - [`aggregate`]: mean ± SD ignoring NaN, Dice per stratum, [`Evaluation`] (what
//!   `ranksweep eval` prints);
//! - [`agreement`]: Pearson, Spearman, ICC(3,1), ICC(2,1), Bland–Altman;
//! - [`stats`]: Wilcoxon signed-rank (scipy's defaults), Holm, t confidence intervals.
//!
//! Design: plain functions over views and slices, no I/O. Undefined values (an empty mask's
//! Dice or HD95, an SD of one value) are NaN, never errors, and serialize as JSON `null`;
//! [`MetricsError`] is for inputs that cannot be measured at all (grids that differ, a bad
//! spacing, unsorted strata, paired samples of different lengths).

pub mod aggregate;
pub mod agreement;
pub mod distance;
mod error;
pub(crate) mod nan_null;
pub mod seg;
pub mod stats;
pub mod strata;

pub use aggregate::{Evaluation, MeanSd, NamedCase, Summary, mean_sd, summarize};
pub use agreement::VolumeAgreement;
pub use error::MetricsError;
pub use seg::{CaseMetrics, Confusion, voxel_ml};
pub use strata::Strata;

/// Checks that two masks share a grid and that the spacing is usable.
fn check_pair(
    pred: (usize, usize, usize),
    truth: (usize, usize, usize),
    spacing: [f64; 3],
) -> Result<(), MetricsError> {
    if pred != truth {
        return Err(MetricsError::ShapeMismatch {
            pred: pred.into(),
            truth: truth.into(),
        });
    }
    // Voxel sizes are taken as given: callers pass |pixdim|, see `voxel_ml`.
    if spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(MetricsError::InvalidSpacing { spacing });
    }
    Ok(())
}
