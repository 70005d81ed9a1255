//! `submit SPEC --backend slurm`: the sweep as SLURM job arrays.
//!
//! Steps: plan and record the sweep exactly as `run` does ([`prepare_sweep`]); ingest the
//! result files already on disk (tasks of earlier submissions may have finished since their
//! ingest job ran); pick the jobs that are not done and not pending or running in a live
//! submission ([`super::reconcile`]); write their job files and a submission folder; submit
//! one array per chunk and an `afterany` ingest-and-report job.
//!
//! Dependencies: pre-training jobs (phase 0) get arrays of their own; the fine-tuning arrays
//! (phase 1) wait on them with `--dependency=afterok:<ids>` and `--kill-on-invalid-dep=yes`,
//! so a failed pre-training cancels the fine-tuning tasks (shown as cancelled by `status`)
//! instead of leaving them pending forever, and the ingest job still runs. A fine-tuning job
//! whose pre-training is still queued in an earlier live submission waits on that array too.
//!
//! The database stays with the submitting process and the single ingest job: array tasks only
//! read their job file and write files under their job folder.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::reconcile::TaskView;
use super::script::{IngestOptions, SbatchOptions, WorkerCommand};
use super::submission::{Submission, SubmitJob, SubmitRequest, write_ingest, write_submission};
use crate::exec::ingest::ingest_tree;
use crate::exec::sweep_run::{Prepared, Reason, prepare_sweep, reasons, write_job_file};
use crate::train::job::Stage;

/// What `submit` was asked to do.
#[derive(Debug, Clone)]
pub struct SubmitOptions {
    pub spec: PathBuf,
    /// Results root on the shared file system.
    pub results: PathBuf,
    /// The database; keep it on a local disk of the submitting host.
    pub db: PathBuf,
    /// Array task settings; an empty `job_name` becomes `ranksweep-<sweep>`.
    pub sbatch: SbatchOptions,
    pub ingest: IngestOptions,
    /// The worker program; default: this executable.
    pub program: Option<PathBuf>,
    pub rerun_failed: bool,
    /// Write everything, submit nothing.
    pub dry_run: bool,
}

/// The outcome of a `submit`.
#[derive(Debug)]
pub struct SubmitOutcome {
    pub sweep: String,
    pub planned: usize,
    /// Done before this submission (in the database, or ingested just now).
    pub done: usize,
    /// Skipped: pending or running in an earlier submission.
    pub live: Vec<String>,
    /// Not done but not sent: failed before (without `--rerun-failed`).
    pub held_back: usize,
    /// The written folder; `None` when nothing needed submitting.
    pub submission: Option<Submission>,
    /// Whether the arrays and the ingest job were handed to `sbatch`.
    pub submitted: bool,
}

/// Plans the sweep, writes the submission folder and (unless `dry_run`) submits it.
pub fn submit_sweep(opts: &SubmitOptions) -> anyhow::Result<SubmitOutcome> {
    // Tasks start on other hosts in another folder: every path they see must be absolute.
    let spec_path = std::path::absolute(&opts.spec)
        .with_context(|| format!("cannot resolve {}", opts.spec.display()))?;
    let results = std::path::absolute(&opts.results)
        .with_context(|| format!("cannot resolve {}", opts.results.display()))?;
    let db = std::path::absolute(&opts.db)
        .with_context(|| format!("cannot resolve {}", opts.db.display()))?;
    let Prepared {
        spec,
        mut plan,
        mut store,
        sweep,
        ..
    } = prepare_sweep(&spec_path, &results, &db)?;
    let sweep_dir = crate::sweep::plan::sweep_dir(&results, &spec.name);
    let jobs_dir = sweep_dir.join("jobs");
    if jobs_dir.is_dir() {
        let s = ingest_tree(&mut store, sweep, &jobs_dir)
            .with_context(|| format!("ingesting {}", jobs_dir.display()))?;
        for e in &s.errors {
            eprintln!("ranksweep: {e}");
        }
    }
    let reasons = reasons(&store, Some(sweep), &plan, opts.rerun_failed)?;
    if !opts.dry_run {
        crate::exec::sweep_run::reuse_done_elsewhere(&mut store, sweep, &mut plan, &reasons)?;
    }
    drop(store);

    let (views, _) = match super::reconcile::slurm_status(&sweep_dir) {
        Ok(v) => v,
        Err(e) if opts.dry_run => {
            eprintln!(
                "ranksweep: cannot ask SLURM about earlier submissions ({e}); dry run goes on"
            );
            (Vec::new(), super::reconcile::StateSource::None)
        }
        Err(e) => return Err(e).context("reconciling earlier submissions with SLURM"),
    };
    let live: BTreeMap<&str, &TaskView> = views
        .iter()
        .filter(|v| v.verdict.is_live())
        .map(|v| (v.job.as_str(), v))
        .collect();

    let runs: BTreeMap<&str, (Reason, bool)> = reasons
        .iter()
        .map(|d| (d.key.as_str(), (d.reason, d.runs)))
        .collect();
    let done = reasons.iter().filter(|d| d.reason == Reason::Done).count();
    let mut out = SubmitOutcome {
        sweep: spec.name.clone(),
        planned: plan.jobs.len(),
        done,
        live: Vec::new(),
        held_back: 0,
        submission: None,
        submitted: false,
    };
    let mut jobs = Vec::new();
    // Earlier arrays that hold a live pre-training job some fine-tuning job here needs.
    let mut live_needs: BTreeSet<u64> = BTreeSet::new();
    for j in &plan.jobs {
        let (reason, run) = runs[j.key.as_str()];
        if live.contains_key(j.key.as_str()) {
            out.live.push(j.key.clone());
            continue;
        }
        if !run {
            if reason != Reason::Done {
                out.held_back += 1;
            }
            continue;
        }
        for need in &j.needs {
            if let Some(id) = live.get(need.as_str()).and_then(|v| v.array_job_id) {
                live_needs.insert(id);
            }
        }
        jobs.push(SubmitJob {
            job_id: j.key.clone(),
            job_file: write_job_file(j)?,
            phase: u32::from(j.stage != Stage::Pretrain),
        });
    }
    if jobs.is_empty() {
        return Ok(out);
    }
    // Pretrain jobs come first in a plan; keep that order within each phase.
    jobs.sort_by_key(|j| j.phase);

    let max_array_size = match super::command::max_array_size() {
        Ok(n) => n,
        Err(e) if opts.dry_run => {
            eprintln!(
                "ranksweep: cannot read MaxArraySize ({e}); dry run assumes {}",
                super::DEFAULT_MAX_ARRAY_SIZE
            );
            super::DEFAULT_MAX_ARRAY_SIZE
        }
        Err(e) => return Err(e).context("reading the cluster's MaxArraySize"),
    };
    let mut sbatch = opts.sbatch.clone();
    if sbatch.job_name.is_empty() {
        sbatch.job_name = format!("ranksweep-{}", spec.name);
    }
    let program = match &opts.program {
        Some(p) => std::path::absolute(p)?,
        None => std::env::current_exe().context("cannot find this executable")?,
    };
    let worker = WorkerCommand::ranksweep(&program);
    let id = new_submission_id(&sweep_dir.join("submissions"));
    let mut sub = write_submission(&SubmitRequest {
        results_root: &results,
        sweep: &spec.name,
        submission: &id,
        jobs: &jobs,
        max_array_size,
        sbatch: &sbatch,
        worker: &worker,
    })?;
    if opts.dry_run {
        out.submission = Some(sub);
        return Ok(out);
    }
    submit_arrays(&mut sub, &live_needs)?;
    let mut ingest = opts.ingest.clone();
    if ingest.partition.is_none() {
        ingest.partition = sbatch.partition.clone();
    }
    if ingest.account.is_none() {
        ingest.account = sbatch.account.clone();
    }
    let script = write_ingest(&mut sub, &ingest, &program, &db)?;
    let submitted = super::command::sbatch_submit(&script, &sub.dir)?;
    if let Some(i) = sub.manifest.ingest.as_mut() {
        i.slurm_job_id = Some(submitted.job_id);
    }
    sub.manifest.write(&sub.dir)?;
    out.submission = Some(sub);
    out.submitted = true;
    Ok(out)
}

/// Submits the chunks in order, each later phase after every earlier phase's arrays (and the
/// earlier submissions' arrays in `live_needs`), recording each id as soon as SLURM gives it.
fn submit_arrays(sub: &mut Submission, live_needs: &BTreeSet<u64>) -> anyhow::Result<()> {
    let mut by_phase: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for i in 0..sub.manifest.chunks.len() {
        let phase = sub.manifest.chunks[i].phase;
        let mut after: Vec<u64> = by_phase
            .range(..phase)
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect();
        if phase > 0 {
            after.extend(live_needs.iter().copied());
        }
        let script = sub.scripts[i].clone();
        let submitted = super::command::sbatch_submit_after(&script, &sub.dir, &after)
            .with_context(|| format!("submitting {}", script.display()))?;
        sub.manifest.set_submitted(i, submitted.job_id)?;
        sub.manifest.chunks[i].after = after;
        sub.manifest.write(&sub.dir)?;
        by_phase.entry(phase).or_default().push(submitted.job_id);
    }
    Ok(())
}

/// A submission id from the UTC time, `20261127T194500Z`, with `-2`, `-3`, … when taken; ids
/// sort in submission order.
fn new_submission_id(dir: &Path) -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let base: String = now.chars().filter(|c| *c != '-' && *c != ':').collect();
    if !dir.join(&base).exists() {
        return base;
    }
    (2..)
        .map(|n| format!("{base}-{n:03}"))
        .find(|id| !dir.join(id).exists())
        .expect("some suffix is free")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submission_ids_are_times_that_sort_and_do_not_collide() {
        let tmp = tempfile::tempdir().unwrap();
        let a = new_submission_id(tmp.path());
        assert_eq!(a.len(), "20261127T194500Z".len(), "{a}");
        assert!(a.ends_with('Z') && a.as_bytes()[8] == b'T', "{a}");
        std::fs::create_dir_all(tmp.path().join(&a)).unwrap();
        let b = new_submission_id(tmp.path());
        // Same second: a suffix, sorting after the first.
        if b.starts_with(&a) {
            assert_eq!(b, format!("{a}-002"));
        }
        assert!(b > a, "{a} {b}");
    }
}
