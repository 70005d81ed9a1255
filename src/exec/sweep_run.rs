//! `run SPEC`: the whole sweep on this machine — synthesize phantom data if the spec asks and
//! it is missing, plan, record the plan, reclaim stale leases, run what is not done on the
//! device slots, ingest each result as it lands, and record every attempt. The orchestrator is
//! the only process that writes the database; workers write files.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::ingest::ingest_job_dir;
use super::{
    ExecJob, Reporter, RunConfig, RunSummary, SlotConfig, SweepEvent, WorkerCommand, parse_devices,
};
use crate::data::layout::index_dataset;
use crate::data::phantom::{Cohort, PhantomConfig, write_cohort};
use crate::store::{
    AttemptEnd, AttemptId, AttemptStart, CoveredJob, JobStatus, NewJob, Store, SweepId,
};
use crate::sweep::plan::{Fingerprints, Plan, PlannedJob, plan};
use crate::sweep::{Spec, load};

/// What `run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub spec: PathBuf,
    /// Results root: job folders under `<results>/<sweep>/jobs/`.
    pub results: PathBuf,
    /// The database file.
    pub db: PathBuf,
    pub devices: String,
    pub slots_per_device: Option<usize>,
    pub threads_per_job: Option<usize>,
    pub retries: Option<u32>,
    pub timeout: Option<Duration>,
    pub rerun_failed: bool,
    pub dry_run: bool,
}

/// Why a planned job runs now, or does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Not in the database yet: new, or its config, code or data changed (a new key).
    New,
    /// Recorded but never finished (interrupted, lost, or never started).
    Pending,
    /// Failed before; runs only with `--rerun-failed`.
    FailedBefore,
    /// Done: its result is in the database.
    Done,
}

/// Writes the phantom cohorts the spec asks for, where missing.
pub fn synthesize_missing(spec: &Spec) -> anyhow::Result<Vec<PathBuf>> {
    let Some(s) = &spec.data.synthesize else {
        return Ok(Vec::new());
    };
    let mut written = Vec::new();
    for (cohort, path, cases, seed) in [
        (Cohort::Tbi, &spec.data.source, s.source_cases, s.seed),
        (Cohort::Sah, &spec.data.target, s.target_cases, s.seed + 1),
    ] {
        if path.join("dataset.json").exists() {
            continue;
        }
        let cfg = PhantomConfig::new(cohort, cases, seed);
        eprintln!(
            "ranksweep: synthesizing {cases} {cohort:?} phantom cases into {}",
            path.display()
        );
        write_cohort(&cfg, path)
            .with_context(|| format!("cannot synthesize the phantom cohort {}", path.display()))?;
        written.push(path.clone());
    }
    Ok(written)
}

/// Fingerprints of the code and both datasets (datasets must exist).
pub fn fingerprints(spec: &Spec) -> anyhow::Result<Fingerprints> {
    let source = index_dataset(&spec.data.source)
        .with_context(|| format!("`data.source` of {}", spec.file.display()))?;
    let target = index_dataset(&spec.data.target)
        .with_context(|| format!("`data.target` of {}", spec.file.display()))?;
    Ok(Fingerprints {
        code: crate::version::code_fingerprint(),
        source: source.fingerprint,
        target: target.fingerprint,
    })
}

/// The target cohort's splits, made once before any job runs (workers then only read them).
pub fn ensure_splits(spec: &Spec) -> anyhow::Result<()> {
    let target = index_dataset(&spec.data.target)?;
    let path = spec.data.target.join(crate::data::folds::SPLITS_FILE);
    crate::data::folds::load_or_create_splits(
        &path,
        &target.case_ids(),
        spec.data.folds,
        spec.data.split_seed,
        None,
    )
    .with_context(|| format!("splits of {}", spec.data.target.display()))?;
    Ok(())
}

fn new_job(j: &PlannedJob) -> anyhow::Result<NewJob> {
    let a = &j.config.adaptation;
    Ok(NewJob {
        key: j.key.clone(),
        cell: j.cell.as_deref().and_then(crate::sweep::CellId::from_hex),
        stage: j.stage,
        kind: Some(a.kind),
        selector: a.module.as_ref().map(|m| m.to_string()),
        rank: a.rank,
        alpha: a.rank.map(|_| a.alpha_or_default()),
        fold: j.fold,
        seed: j.seed,
        view: j.view.unwrap_or(j.config.views[0]),
        config_json: serde_json::to_string(&j.config)?,
        needs: j.needs.clone(),
    })
}

/// Records the sweep, its cells and its jobs; returns the sweep id.
pub fn record_plan(store: &mut Store, spec: &Spec, plan: &Plan) -> anyhow::Result<SweepId> {
    let sweep = store.upsert_sweep(&spec.name, &spec.file, &spec.text)?;
    store.upsert_cells(sweep, &spec.cells)?;
    let jobs = plan
        .jobs
        .iter()
        .map(new_job)
        .collect::<anyhow::Result<Vec<_>>>()?;
    store.upsert_jobs(sweep, &jobs)?;
    Ok(sweep)
}

/// Each planned job with the reason it would run now (or not).
pub fn reasons(
    store: &Store,
    sweep: Option<SweepId>,
    plan: &Plan,
    rerun_failed: bool,
) -> anyhow::Result<Vec<(String, Reason, bool)>> {
    let mut out = Vec::new();
    for j in &plan.jobs {
        let rec = match sweep {
            Some(s) => store.job(s, &j.key)?,
            None => None,
        };
        let reason = match rec.map(|r| r.status) {
            None => Reason::New,
            Some(JobStatus::Done) => Reason::Done,
            Some(JobStatus::Failed) => Reason::FailedBefore,
            Some(_) => Reason::Pending,
        };
        let runs = match reason {
            Reason::Done => false,
            Reason::FailedBefore => rerun_failed,
            _ => true,
        };
        out.push((j.key.clone(), reason, runs));
    }
    Ok(out)
}

/// The outcome of a `run`.
#[derive(Debug)]
pub struct SweepOutcome {
    pub sweep: String,
    pub db: PathBuf,
    pub planned: usize,
    pub cached: usize,
    pub summary: Option<RunSummary>,
}

/// Runs a sweep end to end on this machine.
pub fn run_sweep(opts: &RunOptions) -> anyhow::Result<SweepOutcome> {
    let spec = load(&opts.spec)?;
    synthesize_missing(&spec)?;
    let fp = fingerprints(&spec)?;
    ensure_splits(&spec)?;
    let plan = plan(&spec, &fp, &opts.results);
    let db = opts.db.clone();
    if let Some(dir) = db.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut store = Store::open(&db)?;
    let sweep = record_plan(&mut store, &spec, &plan)?;
    let host = super::lease::this_host();
    let reclaimed = store.reclaim_stale(sweep, &host, super::lease::pid_alive)?;
    if !reclaimed.is_empty() {
        eprintln!(
            "ranksweep: reclaimed {} stale lease(s) of killed runs",
            reclaimed.len()
        );
    }
    let reasons = reasons(&store, Some(sweep), &plan, opts.rerun_failed)?;
    let to_run: std::collections::BTreeSet<&str> = reasons
        .iter()
        .filter(|(_, _, runs)| *runs)
        .map(|(k, _, _)| k.as_str())
        .collect();
    let cached = reasons
        .iter()
        .filter(|(_, r, _)| *r == Reason::Done)
        .count();
    if opts.dry_run {
        return Ok(SweepOutcome {
            sweep: spec.name,
            db,
            planned: plan.jobs.len(),
            cached,
            summary: None,
        });
    }
    // A bad `--devices` is a usage error before anything is recorded.
    let devices = parse_devices(&opts.devices)?;
    // Recorded before any job file is written or worker started: a killed run still says
    // which jobs it covered.
    let covered: Vec<CoveredJob> = reasons
        .iter()
        .map(|(key, reason, runs)| CoveredJob {
            key: key.clone(),
            cached: *reason == Reason::Done,
            scheduled: *runs,
        })
        .collect();
    let run = store.start_run_covering(
        sweep,
        &crate::version::code_fingerprint(),
        &host,
        std::process::id(),
        &covered,
    )?;
    let mut jobs = Vec::new();
    for j in plan.jobs.iter().filter(|j| to_run.contains(j.key.as_str())) {
        std::fs::create_dir_all(&j.config.output)
            .with_context(|| format!("cannot create {}", j.config.output.display()))?;
        let job_file = j.config.output.join("job.json");
        crate::model::checkpoint::write_atomic(
            &job_file,
            serde_json::to_string_pretty(&j.config)?.as_bytes(),
        )
        .with_context(|| format!("cannot write {}", job_file.display()))?;
        jobs.push(ExecJob {
            id: j.key.clone(),
            // Dependencies already done are not part of this run.
            deps: j
                .needs
                .iter()
                .filter(|d| to_run.contains(d.as_str()))
                .cloned()
                .collect(),
            job_file,
            dir: j.config.output.clone(),
            needs_gpu: false,
            label: j.label.clone(),
        });
    }
    let slots = SlotConfig {
        slots_per_device: opts
            .slots_per_device
            .unwrap_or(if devices.iter().any(|d| d.is_gpu()) {
                1
            } else {
                2
            }),
        threads_per_job: opts.threads_per_job.unwrap_or(spec.resources.threads),
        devices,
    };
    let mut config = RunConfig::new(slots, WorkerCommand::current_exe()?);
    config.retries = opts.retries.unwrap_or(spec.resources.retries);
    config.timeout = Some(opts.timeout.unwrap_or(spec.resources.timeout));
    config.watchdog = Some(spec.resources.no_progress);
    config.handle_signals = true;
    store.record_environment(
        run,
        &[
            ("code".into(), crate::version::code_fingerprint()),
            ("devices".into(), opts.devices.clone()),
            ("jobs_planned".into(), plan.jobs.len().to_string()),
            ("jobs_cached".into(), cached.to_string()),
            ("jobs_run".into(), jobs.len().to_string()),
        ],
    )?;
    let mut reporter = Reporter::stderr();
    let mut open: std::collections::HashMap<(String, u32), AttemptId> =
        std::collections::HashMap::new();
    let dirs: std::collections::HashMap<String, PathBuf> =
        jobs.iter().map(|j| (j.id.clone(), j.dir.clone())).collect();
    let mut record_error: Option<anyhow::Error> = None;
    let summary = super::run_blocking(jobs, config, |event| {
        reporter.handle(event);
        let r: anyhow::Result<()> = (|| {
            match event {
                SweepEvent::AttemptStarted {
                    job,
                    attempt,
                    device,
                    pid,
                    ..
                } => {
                    let id = store.record_attempt_start(
                        sweep,
                        job,
                        &AttemptStart {
                            run: Some(run),
                            host: host.clone(),
                            device: device.to_string(),
                            pid: Some(*pid),
                        },
                    )?;
                    open.insert((job.clone(), *attempt), id);
                }
                SweepEvent::AttemptFinished {
                    job,
                    attempt,
                    device,
                    class,
                    detail,
                    exit_code,
                    ..
                } => {
                    let id = match open.remove(&(job.clone(), *attempt)) {
                        Some(id) => id,
                        None => store.record_attempt_start(
                            sweep,
                            job,
                            &AttemptStart {
                                run: Some(run),
                                host: host.clone(),
                                device: device.to_string(),
                                pid: None,
                            },
                        )?,
                    };
                    let mut class = crate::store::ExitClass::from(*class);
                    let mut error = detail.clone();
                    if class == crate::store::ExitClass::Ok
                        && let Err(e) = ingest_job_dir(&mut store, sweep, job, &dirs[job])
                    {
                        class = crate::store::ExitClass::Failed;
                        error = Some(format!("ingest: {e}"));
                    }
                    store.record_attempt_end(
                        id,
                        &AttemptEnd {
                            class,
                            exit_code: *exit_code,
                            error,
                        },
                    )?;
                }
                _ => {}
            }
            Ok(())
        })();
        if let Err(e) = r
            && record_error.is_none()
        {
            record_error = Some(e);
        }
    })?;
    let code = if summary.all_ok() { 0 } else { 1 };
    store.end_run(run, code)?;
    if let Some(e) = record_error {
        return Err(e.context("recording the run in the database"));
    }
    Ok(SweepOutcome {
        sweep: spec.name,
        db,
        planned: plan.jobs.len(),
        cached,
        summary: Some(summary),
    })
}
