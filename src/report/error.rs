//! The one error type of the report module.

use std::path::PathBuf;

use thiserror::Error;

use crate::metrics::MetricsError;

/// Why a report or a comparison could not be produced.
#[derive(Debug, Error)]
pub enum ReportError {
    /// A `ReportInput` JSON file that cannot be read or parsed.
    #[error("report input {path}: {reason}")]
    Input { path: PathBuf, reason: String },
    /// A cell whose data cannot be reported (duplicate cases, impossible counts, ...).
    #[error("sweep `{sweep}`, cell `{cell}`: {reason}")]
    InvalidCell {
        sweep: String,
        cell: String,
        reason: String,
    },
    /// A statistic refused the cell's numbers (non-finite volumes, ...).
    #[error("cell `{cell}`: {source}")]
    Metrics {
        cell: String,
        #[source]
        source: MetricsError,
    },
    /// A `--format` list with an unknown entry.
    #[error(
        "format `{input}`: unknown `{entry}`, expected a comma-separated list of md, html, csv, tex"
    )]
    UnknownFormat { input: String, entry: String },
    /// A chart that plotters could not draw or encode.
    #[error("chart {chart}: {reason}")]
    Chart { chart: String, reason: String },
    /// A file or folder that cannot be written.
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
