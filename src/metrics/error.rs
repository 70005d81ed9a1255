//! The one error type of the metrics module.

use thiserror::Error;

/// Why a metric, a stratification or a statistic could not be computed.
///
/// Empty masks, too few cases or a zero variance are not errors: those give NaN, as documented
/// on each function, so that one odd case never aborts an evaluation.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum MetricsError {
    /// Prediction and truth are not on the same grid.
    #[error("mask shapes differ: prediction is {pred:?} [z, y, x], truth is {truth:?}")]
    ShapeMismatch { pred: [usize; 3], truth: [usize; 3] },
    /// A voxel size that is zero, negative or not finite.
    #[error("spacing {spacing:?} mm [z, y, x]: expected three positive finite voxel sizes")]
    InvalidSpacing { spacing: [f64; 3] },
    /// Stratum bin edges that cannot be used.
    #[error("strata `{input}`: {reason}")]
    InvalidStrata { input: String, reason: String },
    /// Paired samples of different lengths.
    #[error("{what}: paired samples differ in length ({left} vs {right})")]
    LengthMismatch {
        what: &'static str,
        left: usize,
        right: usize,
    },
    /// A non-finite value where a finite one is needed (volumes, paired differences).
    #[error("{what}: value {index} is {value}, expected a finite number")]
    NonFinite {
        what: &'static str,
        index: usize,
        value: f64,
    },
    /// A p-value outside [0, 1].
    #[error("p-value {index} is {value}, expected a number in [0, 1] (or NaN)")]
    InvalidPValue { index: usize, value: f64 },
    /// A confidence level outside (0, 1).
    #[error("confidence level {level}: expected a number strictly between 0 and 1")]
    InvalidLevel { level: f64 },
    /// ICC ratings that are not a full targets × raters table.
    #[error("icc ratings: {reason}")]
    InvalidRatings { reason: String },
}
