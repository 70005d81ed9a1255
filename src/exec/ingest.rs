//! Ingest: a worker's `result.json` into the store. The orchestrator is the only writer; the
//! same code serves `ranksweep ingest DIR` for results made elsewhere (a cluster). Re-ingesting
//! replaces a job's rows, so ingest is idempotent.

use std::path::{Path, PathBuf};

use crate::nn::device::RanOn;
use crate::store::devices::DeviceRow;
use crate::store::results::JobRows;
use crate::store::{CaseMetric, EpochPoint, ParamCount, Store, StoreError, SweepId};
use crate::train::job_run::{JobResult, RESULT_FILE};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Result(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A result's rows: per-case metrics, the curve and the parameter counts.
pub fn result_rows(key: &str, r: &JobResult) -> JobRows {
    let cases: Vec<CaseMetric> = r
        .evaluation
        .iter()
        .flat_map(|e| e.cases.iter())
        .map(|c| CaseMetric {
            case_id: c.case.clone(),
            dice: c.metrics.dice,
            tp: c.metrics.confusion.tp,
            fp: c.metrics.confusion.fp,
            fn_: c.metrics.confusion.fn_,
            hd95: c.metrics.hd95_mm,
            volume_true_ml: c.metrics.truth_ml,
            volume_pred_ml: c.metrics.pred_ml,
            stratum: Some(c.metrics.stratum.clone()),
        })
        .collect();
    // One curve per job: the first view's (every view trains the same number of steps).
    let epochs: Vec<EpochPoint> = r
        .views
        .first()
        .map(|v| {
            v.loss_curve
                .iter()
                .map(|(step, loss)| EpochPoint {
                    step: *step,
                    loss: Some(f64::from(*loss)),
                    lr: None,
                    val_dice: None,
                })
                .collect()
        })
        .unwrap_or_default();
    let params = vec![ParamCount {
        scope: "job".into(),
        total: r.total_params as u64,
        trainable: r.trainable_params as u64,
    }];
    JobRows {
        key: key.to_string(),
        cases,
        epochs,
        params,
        device: Some(device_row(r)),
    }
}

/// What ran a result; a result of a version without `ran_on` is described by its `device`
/// and `threads`.
pub fn device_row(r: &JobResult) -> DeviceRow {
    let ran_on = r.ran_on.clone().unwrap_or_else(|| RanOn {
        device: r.device.clone(),
        threads: Some(r.threads),
        gpu_id: None,
        gpu: None,
        driver: None,
        cuda: None,
        cudnn: false,
        precision: r.job.precision(),
    });
    DeviceRow {
        device: ran_on.device.clone(),
        ran_on: ran_on.to_string(),
        info: serde_json::to_string(&ran_on).expect("a device record serializes"),
    }
}

/// Records one job's metrics, curve and parameter counts (one transaction).
pub fn ingest_result(
    store: &mut Store,
    sweep: SweepId,
    key: &str,
    r: &JobResult,
) -> Result<(), IngestError> {
    store.record_results(sweep, &[result_rows(key, r)], false)?;
    Ok(())
}

/// Reads `<dir>/result.json` and ingests it under `key`.
pub fn ingest_job_dir(
    store: &mut Store,
    sweep: SweepId,
    key: &str,
    dir: &Path,
) -> Result<(), IngestError> {
    let r =
        JobResult::read(&dir.join(RESULT_FILE)).map_err(|e| IngestError::Result(e.to_string()))?;
    ingest_result(store, sweep, key, &r)
}

/// What `ingest DIR` did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IngestSummary {
    pub ingested: usize,
    /// Result files whose job the store does not know (another sweep or database).
    pub unknown: Vec<String>,
    pub errors: Vec<String>,
}

/// Result files parsed and written per transaction: bounds memory, and a crash loses at most
/// one batch of bookkeeping (the files stay; ingesting again is idempotent).
const BATCH: usize = 512;

/// Ingests every `<dir>/**/<key>/result.json` of sweep `sweep` whose key the store knows, and
/// marks those jobs done. Files are parsed in parallel and written in batches of [`BATCH`] jobs,
/// one transaction each.
pub fn ingest_tree(
    store: &mut Store,
    sweep: SweepId,
    dir: &Path,
) -> Result<IngestSummary, IngestError> {
    use rayon::prelude::*;
    let mut summary = IngestSummary::default();
    let known = store.job_keys(sweep)?;
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| IngestError::Io {
            path: d.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == RESULT_FILE) {
                let Some(key) = p
                    .parent()
                    .and_then(|k| k.file_name())
                    .map(|k| k.to_string_lossy().into_owned())
                else {
                    continue;
                };
                if known.contains(&key) {
                    found.push((key, p));
                } else {
                    summary.unknown.push(key);
                }
            }
        }
    }
    found.sort();
    for chunk in found.chunks(BATCH) {
        let parsed: Vec<Result<JobRows, String>> = chunk
            .par_iter()
            .map(|(key, p)| {
                JobResult::read(p)
                    .map(|r| result_rows(key, &r))
                    .map_err(|e| format!("{}: {e}", p.display()))
            })
            .collect();
        let mut rows = Vec::with_capacity(parsed.len());
        for r in parsed {
            match r {
                Ok(r) => rows.push(r),
                Err(e) => summary.errors.push(e),
            }
        }
        store.record_results(sweep, &rows, true)?;
        summary.ingested += rows.len();
    }
    summary.unknown.sort();
    Ok(summary)
}
