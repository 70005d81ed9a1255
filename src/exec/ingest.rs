//! Ingest: a worker's `result.json` into the store. The orchestrator is the only writer; the
//! same code serves `ranksweep ingest DIR` for results made elsewhere (a cluster). Re-ingesting
//! replaces a job's rows, so ingest is idempotent.
//!
//! A result is checked against the job it is ingested for before anything is stored
//! ([`check_result`]): the folder name is not trusted. Its class must be `ok`; the job it was
//! written by (its output folder's name), stage, fold, seed and canonical config must be the
//! job's; its values must be in range (Dice and IoU in [0, 1] or NaN, and consistent with the
//! voxel counts; volumes finite and ≥ 0; distances NaN or finite ≥ 0; losses finite). A
//! refused result is named with its path and the reason; the others still ingest.

use std::path::{Path, PathBuf};

use std::collections::HashMap;

use crate::nn::device::RanOn;
use crate::store::devices::DeviceRow;
use crate::store::results::JobRows;
use crate::store::{CaseMetric, EpochPoint, JobRecord, ParamCount, Store, StoreError, SweepId};
use crate::train::files::RESULT_FILE;
use crate::train::job_run::JobResult;
use crate::train::protocol::ExitClass;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Result(String),
    /// A readable result that is not this job's, or not a valid result.
    #[error("{}: refused: {reason}", path.display())]
    Refused { path: PathBuf, reason: String },
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

/// The first path at which two JSON values differ (`train.steps`), for messages.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> String {
    use serde_json::Value;
    if let (Value::Object(x), Value::Object(y)) = (a, b) {
        for k in x.keys().chain(y.keys()) {
            let (u, v) = (x.get(k), y.get(k));
            if u != v {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                return match (u, v) {
                    (Some(u), Some(v)) => first_difference(u, v, &path),
                    _ => path,
                };
            }
        }
    }
    at.to_string()
}

/// Whether `x` is NaN or in `[0, 1]`.
fn unit_or_nan(x: f64) -> bool {
    x.is_nan() || (0.0..=1.0).contains(&x)
}

/// Checks a result against the job it is to be ingested for, and its values against their
/// ranges; `Err` says why it is refused.
pub fn check_result(key: &str, job: &JobRecord, r: &JobResult) -> Result<(), String> {
    if r.class != ExitClass::Ok {
        return Err(format!(
            "its class is `{}`, not `ok`: a job that did not succeed has no result",
            r.class
        ));
    }
    let by = r
        .job
        .output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if by != key {
        return Err(format!(
            "it was written by job `{by}` (its output folder), not by `{key}`"
        ));
    }
    if r.stage != job.stage || r.job.stage != job.stage {
        return Err(format!(
            "its stage is {}, the job's is {}",
            r.stage, job.stage
        ));
    }
    if r.fold != job.fold || r.job.data.fold != job.fold {
        let show = |f: Option<usize>| f.map_or("none".to_string(), |f| f.to_string());
        return Err(format!(
            "its fold is {}, the job's is {}",
            show(r.fold),
            show(job.fold)
        ));
    }
    if r.seed != job.seed || r.job.seed != job.seed {
        return Err(format!("its seed is {}, the job's is {}", r.seed, job.seed));
    }
    let mut want = job
        .config()
        .map_err(|e| format!("the database's config of job `{key}` is unreadable: {e}"))?;
    // Where and how fast it ran is not what it computed (the worker's `--device` wins).
    want.device = r.job.device;
    want.threads = r.job.threads;
    want.timeout_s = r.job.timeout_s;
    let (got, want) = (
        crate::sweep::plan::canonical_config(&r.job),
        crate::sweep::plan::canonical_config(&want),
    );
    if got != want {
        let parse = |t: &str| serde_json::from_str(t).unwrap_or(serde_json::Value::Null);
        return Err(format!(
            "its config differs from the job's at `{}`",
            first_difference(&parse(&got), &parse(&want), "")
        ));
    }
    if job.fold.is_some() && r.evaluation.is_none() {
        return Err("it has no evaluation, but a fold job tests its fold's cases".into());
    }
    if let Some(ev) = &r.evaluation {
        let mut seen = std::collections::BTreeSet::new();
        for c in &ev.cases {
            let m = &c.metrics;
            let bad = |what: &str, x: f64, want: &str| {
                Err(format!("case `{}`: {what} = {x}: expected {want}", c.case))
            };
            if !seen.insert(c.case.as_str()) {
                return Err(format!("case `{}` is listed twice", c.case));
            }
            if !unit_or_nan(m.dice) {
                return bad(
                    "dice",
                    m.dice,
                    "a value in [0, 1], or NaN (both masks empty)",
                );
            }
            if !unit_or_nan(m.iou) {
                return bad("iou", m.iou, "a value in [0, 1], or NaN (both masks empty)");
            }
            let k = &m.confusion;
            let denom = 2 * k.tp + k.fp + k.fn_;
            let dice = if denom == 0 {
                f64::NAN
            } else {
                (2 * k.tp) as f64 / denom as f64
            };
            if dice.is_nan() != m.dice.is_nan() || (!dice.is_nan() && (dice - m.dice).abs() > 1e-6)
            {
                return bad(
                    "dice",
                    m.dice,
                    &format!(
                        "{dice} from its voxel counts (tp {}, fp {}, fn {})",
                        k.tp, k.fp, k.fn_
                    ),
                );
            }
            for (what, x) in [
                ("truth_ml", m.truth_ml),
                ("pred_ml", m.pred_ml),
                ("fp_ml", m.fp_ml),
                ("fn_ml", m.fn_ml),
            ] {
                if !(x.is_finite() && x >= 0.0) {
                    return bad(what, x, "a finite volume >= 0");
                }
            }
            for (what, x) in [("hd95_mm", m.hd95_mm), ("assd_mm", m.assd_mm)] {
                if !(x.is_nan() || (x.is_finite() && x >= 0.0)) {
                    return bad(what, x, "a finite distance >= 0, or NaN (a mask empty)");
                }
            }
            if m.spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                return Err(format!(
                    "case `{}`: spacing {:?}: expected finite values > 0",
                    c.case, m.spacing
                ));
            }
        }
        let tested: std::collections::BTreeSet<&str> =
            r.cases.test.iter().map(String::as_str).collect();
        if seen != tested {
            return Err("its evaluated cases are not its test cases".into());
        }
    }
    for v in &r.views {
        if let Some((step, loss)) = v.loss_curve.iter().find(|(_, l)| !l.is_finite()) {
            return Err(format!(
                "view {}: loss {loss} at step {step}: expected a finite loss",
                v.view
            ));
        }
    }
    if r.trainable_params > r.total_params {
        return Err(format!(
            "{} trainable parameters of {} in all",
            r.trainable_params, r.total_params
        ));
    }
    Ok(())
}

/// Reads `<dir>/result.json`, checks it against job `key` and ingests it.
pub fn ingest_job_dir(
    store: &mut Store,
    sweep: SweepId,
    key: &str,
    dir: &Path,
) -> Result<(), IngestError> {
    let path = dir.join(RESULT_FILE);
    let r = JobResult::read(&path).map_err(|e| IngestError::Result(e.to_string()))?;
    let job = store.job(sweep, key)?.ok_or_else(|| IngestError::Refused {
        path: path.clone(),
        reason: format!("the sweep has no job `{key}`"),
    })?;
    check_result(key, &job, &r).map_err(|reason| IngestError::Refused { path, reason })?;
    ingest_result(store, sweep, key, &r)
}

/// What `ingest DIR` did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IngestSummary {
    pub ingested: usize,
    /// Result files whose job the store does not know (another sweep or database).
    pub unknown: Vec<String>,
    /// Files that cannot be read as a result: `path: why`.
    pub errors: Vec<String>,
    /// Results that are not their folder's job's, or out of range: `path: refused: why`.
    pub refused: Vec<String>,
}

/// Result files parsed and written per transaction: bounds memory, and a crash loses at most
/// one batch of bookkeeping (the files stay; ingesting again is idempotent).
const BATCH: usize = 512;

/// Ingests every `<dir>/**/<key>/result.json` of sweep `sweep` whose key the store knows and
/// that checks out against its job ([`check_result`]), and marks those jobs done. Files are
/// parsed and checked in parallel and written in batches of [`BATCH`] jobs, one transaction
/// each; a refused or unreadable file is left out of its batch, never half stored.
pub fn ingest_tree(
    store: &mut Store,
    sweep: SweepId,
    dir: &Path,
) -> Result<IngestSummary, IngestError> {
    use rayon::prelude::*;
    let mut summary = IngestSummary::default();
    let jobs = store.all_jobs(sweep)?;
    let known: HashMap<&str, &JobRecord> = jobs.iter().map(|j| (j.key.as_str(), j)).collect();
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
                if known.contains_key(key.as_str()) {
                    found.push((key, p));
                } else {
                    summary.unknown.push(key);
                }
            }
        }
    }
    found.sort();
    for chunk in found.chunks(BATCH) {
        // Err((refused, message)).
        let parsed: Vec<Result<JobRows, (bool, String)>> = chunk
            .par_iter()
            .map(|(key, p)| {
                let r = JobResult::read(p).map_err(|e| (false, format!("{}: {e}", p.display())))?;
                check_result(key, known[key.as_str()], &r)
                    .map_err(|why| (true, format!("{}: refused: {why}", p.display())))?;
                Ok(result_rows(key, &r))
            })
            .collect();
        let mut rows = Vec::with_capacity(parsed.len());
        for r in parsed {
            match r {
                Ok(r) => rows.push(r),
                Err((false, e)) => summary.errors.push(e),
                Err((true, e)) => summary.refused.push(e),
            }
        }
        store.record_results(sweep, &rows, true)?;
        summary.ingested += rows.len();
    }
    summary.unknown.sort();
    Ok(summary)
}
