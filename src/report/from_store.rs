//! The report's input read from the SQLite store: one `CellResult` per cell of a sweep, with
//! the per-case metrics of its done jobs, parameter counts and loss curves — either the
//! sweep's current state ([`load_input`]) or the jobs one run covered ([`load_run_input`]).

use std::collections::BTreeMap;

use super::input::{CaseResult, CellResult, LossCurve, LossPoint, ReportInput};
use crate::model::{UnetConfig, unet::base_shapes};
use crate::store::{
    ExitClass, JobRecord, JobStatus, RunId, RunJob, Stage, Store, StoreError, SweepId,
};
use crate::train::job::JobConfig;

#[derive(Debug, thiserror::Error)]
pub enum FromStoreError {
    #[error("no sweep named `{0}` in the database (run it first, or pass --db)")]
    UnknownSweep(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("job {key}: its stored config does not parse: {message}")]
    Config { key: String, message: String },
}

/// Parameters of the full (base) model of a config.
pub fn base_param_count(cfg: &UnetConfig) -> u64 {
    base_shapes(cfg)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum()
}

/// Builds the report input of sweep `name` from the store: its current state, every active
/// job with its latest status.
pub fn load_input(store: &Store, name: &str) -> Result<ReportInput, FromStoreError> {
    let sweep = store
        .sweep_id(name)?
        .ok_or_else(|| FromStoreError::UnknownSweep(name.to_string()))?;
    let jobs = store.jobs(sweep)?;
    input_from_jobs(store, sweep, name, &jobs)
}

/// Builds the report input of one run of sweep `name`: exactly the jobs it covered, each with
/// the status it had at that run's end (cached or finished ok: done; failed in it, or a failure
/// it left alone: failed; not finished in it: pending).
pub fn load_run_input(
    store: &Store,
    name: &str,
    run: RunId,
) -> Result<ReportInput, FromStoreError> {
    let sweep = store
        .sweep_id(name)?
        .ok_or_else(|| FromStoreError::UnknownSweep(name.to_string()))?;
    let mut jobs = Vec::new();
    for rj in store.run_jobs(run)? {
        let Some(mut job) = store.job(sweep, &rj.key)? else {
            continue;
        };
        job.status = status_in_run(&rj);
        jobs.push(job);
    }
    input_from_jobs(store, sweep, name, &jobs)
}

/// A job's status as a run left it.
fn status_in_run(rj: &RunJob) -> JobStatus {
    match (rj.cached, rj.outcome, rj.scheduled) {
        (true, _, _) | (false, Some(ExitClass::Ok), _) => JobStatus::Done,
        // Failed in this run, or a failure it did not retry.
        (false, Some(_), _) | (false, None, false) => JobStatus::Failed,
        // Killed, or blocked by a failed dependency, before it finished.
        (false, None, true) => JobStatus::Pending,
    }
}

fn input_from_jobs(
    store: &Store,
    sweep: SweepId,
    name: &str,
    jobs: &[JobRecord],
) -> Result<ReportInput, FromStoreError> {
    let mut by_cell: BTreeMap<String, Vec<&JobRecord>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for j in jobs.iter().filter(|j| j.stage != Stage::Pretrain) {
        let Some(cell) = &j.cell else { continue };
        let id = cell.as_str().to_string();
        if !by_cell.contains_key(&id) {
            order.push(id.clone());
        }
        by_cell.entry(id).or_default().push(j);
    }
    let mut cells = Vec::new();
    for id in order {
        let jobs = &by_cell[&id];
        let first = jobs[0];
        let config: JobConfig = first.config().map_err(|e| FromStoreError::Config {
            key: first.key.clone(),
            message: e.to_string(),
        })?;
        let seeds: std::collections::BTreeSet<u64> = jobs.iter().map(|j| j.seed).collect();
        let mut cell = CellResult {
            kind: config.adaptation.kind,
            module: config.adaptation.module.as_ref().map(|m| m.to_string()),
            rank: config.adaptation.rank.map(|r| r as u32),
            alpha: config.adaptation.rank.and(config.adaptation.alpha),
            trainable_params: 0,
            total_params: base_param_count(&config.model),
            folds_expected: jobs.len() as u32,
            folds_done: 0,
            folds_failed: 0,
            cases: Vec::new(),
            loss_curves: Vec::new(),
        };
        for j in jobs {
            match j.status {
                JobStatus::Done => cell.folds_done += 1,
                JobStatus::Failed => cell.folds_failed += 1,
                _ => {}
            }
            if j.status != JobStatus::Done {
                continue;
            }
            let fold = j.fold.unwrap_or(0) as u32;
            if let Some(p) = store
                .param_counts(sweep, &j.key)?
                .into_iter()
                .find(|p| p.scope == "job")
            {
                cell.trainable_params = p.trainable;
            }
            for m in store.case_metrics(sweep, &j.key)? {
                // Several seeds test the same case: keep each replicate distinct.
                let case = if seeds.len() > 1 {
                    format!("{}@seed{}", m.case_id, j.seed)
                } else {
                    m.case_id
                };
                cell.cases.push(CaseResult {
                    case,
                    fold,
                    dice: m.dice,
                    tp: m.tp,
                    fp: m.fp,
                    fn_: m.fn_,
                    hd95_mm: m.hd95,
                    truth_ml: m.volume_true_ml,
                    pred_ml: m.volume_pred_ml,
                });
            }
            let points: Vec<LossPoint> = store
                .epochs(sweep, &j.key)?
                .into_iter()
                .filter_map(|e| {
                    e.loss.map(|loss| LossPoint {
                        step: e.step as u64,
                        loss,
                    })
                })
                .collect();
            if !points.is_empty() {
                cell.loss_curves.push(LossCurve { fold, points });
            }
        }
        cells.push(cell);
    }
    Ok(ReportInput {
        ran_on: store.ran_on_counts(sweep)?,
        sweep: name.to_string(),
        cells,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_shows_each_job_as_it_left_it() {
        let rj = |cached, scheduled, outcome| RunJob {
            key: "k".into(),
            cached,
            scheduled,
            outcome,
        };
        for (job, want) in [
            (rj(true, false, None), JobStatus::Done),
            (rj(false, true, Some(ExitClass::Ok)), JobStatus::Done),
            (rj(false, true, Some(ExitClass::Oom)), JobStatus::Failed),
            (
                rj(false, true, Some(ExitClass::Interrupted)),
                JobStatus::Failed,
            ),
            (rj(false, false, None), JobStatus::Failed),
            (rj(false, true, None), JobStatus::Pending),
        ] {
            assert_eq!(status_in_run(&job), want, "{job:?}");
        }
    }
}
