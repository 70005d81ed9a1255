//! Ingest: a worker's `result.json` into the store. The orchestrator is the only writer; the
//! same code serves `ranksweep ingest DIR` for results made elsewhere (a cluster). Re-ingesting
//! replaces a job's rows, so ingest is idempotent.

use std::path::{Path, PathBuf};

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

/// Records one job's metrics, curve and parameter counts.
pub fn ingest_result(
    store: &mut Store,
    sweep: SweepId,
    key: &str,
    r: &JobResult,
) -> Result<(), IngestError> {
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
    store.record_case_metrics(sweep, key, &cases)?;
    // One curve per job: the first view's (every view trains the same number of steps).
    let points: Vec<EpochPoint> = r
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
    store.record_epochs(sweep, key, &points)?;
    let counts = [ParamCount {
        scope: "job".into(),
        total: r.total_params as u64,
        trainable: r.trainable_params as u64,
    }];
    store.record_param_counts(sweep, key, &counts)?;
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

/// Ingests every `<dir>/**/<key>/result.json` of sweep `sweep` whose key the store knows, and
/// marks those jobs done.
pub fn ingest_tree(
    store: &mut Store,
    sweep: SweepId,
    dir: &Path,
) -> Result<IngestSummary, IngestError> {
    let mut summary = IngestSummary::default();
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
                if store.job(sweep, &key)?.is_none() {
                    summary.unknown.push(key);
                    continue;
                }
                match JobResult::read(&p) {
                    Ok(r) => {
                        ingest_result(store, sweep, &key, &r)?;
                        store.mark_done(sweep, &key)?;
                        summary.ingested += 1;
                    }
                    Err(e) => summary.errors.push(format!("{}: {e}", p.display())),
                }
            }
        }
    }
    summary.unknown.sort();
    Ok(summary)
}
