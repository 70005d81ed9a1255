//! The names of the files in a job's folder, in one place: what the planner points at, the
//! worker writes, the scheduler supervises and `ingest` reads.
//!
//! ```text
//! <results>/<sweep>/jobs/<key>/
//!   job.json                  the job file the worker runs (written by `run` / `submit`)
//!   lease.json                who runs it now (orchestrator pid, host)
//!   attempt-<n>.log           the worker's stdout (JSON progress lines) of attempt n
//!   attempt-<n>.stderr.log    its stderr
//!   base-<view>.safetensors   pretrain: the base model of a view
//!   adapter-<view>.safetensors  finetune: the adapter of a view
//!   pred/<case>.nii.gz        predicted masks
//!   metrics.csv               one row per test case
//!   result.json               written last, on success only: the sentinel
//!   result.json.prev          an earlier result set aside when the job runs again
//! ```

use std::path::{Path, PathBuf};

use crate::data::preprocess::View;

/// The job file.
pub const JOB_FILE: &str = "job.json";
/// The lease of the job's current attempt.
pub const LEASE_FILE: &str = "lease.json";
/// The file written last, on success only.
pub const RESULT_FILE: &str = "result.json";
/// Where an earlier `result.json` is set aside when the job runs again.
pub const RESULT_ASIDE: &str = "result.json.prev";
/// One row per test case.
pub const METRICS_FILE: &str = "metrics.csv";
/// Predicted masks, `<case>.nii.gz`.
pub const PRED_DIR: &str = "pred";

/// The base checkpoint a `pretrain` job writes for `view`.
pub fn base_checkpoint(view: View) -> String {
    format!("base-{}.safetensors", view.name())
}

/// The adapter a `finetune` job writes for `view`.
pub fn adapter_checkpoint(view: View) -> String {
    format!("adapter-{}.safetensors", view.name())
}

/// The stdout and stderr logs of attempt `attempt` (1-based) in `dir`.
pub fn attempt_logs(dir: &Path, attempt: u32) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("attempt-{attempt}.log")),
        dir.join(format!("attempt-{attempt}.stderr.log")),
    )
}
