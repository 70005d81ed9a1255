//! `run SPEC`: the whole sweep on this machine — synthesize phantom data if the spec asks and
//! it is missing, plan, record the plan, reclaim stale leases, run what is not done on the
//! device slots, ingest each result as it lands, and record every attempt. The orchestrator is
//! the only process that writes the database; workers write files.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::ingest::ingest_job_dir;
use super::{
    ExecJob, Reporter, RunConfig, RunSummary, SlotConfig, SweepEvent, WorkerCommand, parse_devices,
};
use crate::data::layout::index_dataset;
use crate::data::phantom::{Cohort, PhantomConfig, write_cohort};
use crate::store::history::{ENV_CODE, ENV_SOURCE, ENV_TARGET};
use crate::store::{
    AttemptEnd, AttemptId, AttemptStart, CoveredJob, ExitClass, JobRecord, JobStatus, NewJob,
    Store, SweepId,
};
use crate::sweep::plan::{Fingerprints, Plan, PlannedJob, canonical_config, plan};
use crate::sweep::{Spec, load};
use crate::train::job::Stage;

/// How long a rerun waits for the workers of a killed run to stop (they were sent SIGTERM and
/// stop at their next step) before it kills them.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(30);

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
    /// Not in the database, and no earlier version of it either (a new cell, fold or seed).
    New,
    /// An earlier version of the job (same stage, kind, module, rank, fold, seed and view) had
    /// other settings.
    ConfigChanged,
    /// Same settings as before, but the code fingerprint changed.
    CodeChanged,
    /// Same settings and code as before, but the data it reads changed.
    DataChanged,
    /// Same settings, code and data, but a job it needs changed (e.g. pre-training steps).
    NeedsChanged,
    /// Recorded but never finished (interrupted, lost to a killed run, or never started).
    Pending,
    /// Failed before; runs only with `--rerun-failed`.
    FailedBefore,
    /// Done: its result is in the database.
    Done,
}

impl Reason {
    /// The kebab-case name `plan --explain` prints.
    pub fn name(self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::ConfigChanged => "config-changed",
            Reason::CodeChanged => "code-changed",
            Reason::DataChanged => "data-changed",
            Reason::NeedsChanged => "needs-changed",
            Reason::Pending => "pending",
            Reason::FailedBefore => "failed-before",
            Reason::Done => "done",
        }
    }
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
    let cases = target.case_ids().len();
    if spec.data.folds > cases {
        anyhow::bail!(
            "{}: `data.folds`: expected at most as many folds as target cases ({cases} in {}), got {}",
            spec.file.display(),
            spec.data.target.display(),
            spec.data.folds
        );
    }
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
    let history = match sweep {
        Some(s) => store.all_jobs(s)?,
        None => Vec::new(),
    };
    let by_key: HashMap<&str, &JobRecord> = history.iter().map(|r| (r.key.as_str(), r)).collect();
    let planned: HashSet<&str> = plan.jobs.iter().map(|j| j.key.as_str()).collect();
    let mut out = Vec::new();
    for j in &plan.jobs {
        let reason = match (sweep, by_key.get(j.key.as_str())) {
            (Some(s), Some(rec)) => match rec.status {
                JobStatus::Done => Reason::Done,
                // A kill or an interruption is not the job's failure: it stays to do.
                JobStatus::Failed => {
                    match store.attempts(s, &j.key)?.last().and_then(|a| a.class) {
                        Some(ExitClass::Lost | ExitClass::Interrupted) => Reason::Pending,
                        _ => Reason::FailedBefore,
                    }
                }
                JobStatus::Pending | JobStatus::Running => Reason::Pending,
            },
            (Some(s), None) => why_new(store, s, j, &history, &planned, &plan.fingerprints)?,
            (None, _) => Reason::New,
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

/// Why a key the database does not know is new: finds the job's earlier version (same stage,
/// kind, module, rank, fold, seed and view, not in this plan) and compares settings, then the
/// fingerprints its run recorded, then dependencies.
fn why_new(
    store: &Store,
    sweep: SweepId,
    j: &PlannedJob,
    history: &[JobRecord],
    planned: &HashSet<&str>,
    fp: &Fingerprints,
) -> anyhow::Result<Reason> {
    let a = &j.config.adaptation;
    let module = a.module.as_ref().map(|m| m.to_string());
    let view = j.view.unwrap_or(j.config.views[0]);
    let candidates: Vec<&JobRecord> = history
        .iter()
        .filter(|r| {
            !planned.contains(r.key.as_str())
                && r.stage == j.stage
                && r.kind == Some(a.kind)
                && r.selector == module
                && r.rank == a.rank
                && r.fold == j.fold
                && r.seed == j.seed
                && r.view == view
        })
        .collect();
    let canonical = canonical_config(&j.config);
    let same_config = |r: &JobRecord| {
        serde_json::from_str::<crate::train::JobConfig>(&r.config_json)
            .map(|c| canonical_config(&c) == canonical)
            .unwrap_or(false)
    };
    // The latest earlier version with the same settings, else the latest one.
    let Some(prev) = candidates
        .iter()
        .rev()
        .find(|r| same_config(r))
        .or(candidates.last())
    else {
        return Ok(Reason::New);
    };
    if !same_config(prev) {
        return Ok(Reason::ConfigChanged);
    }
    if let Some(was) = store.run_fingerprints(sweep, &prev.key)? {
        if was.code != fp.code {
            return Ok(Reason::CodeChanged);
        }
        let data = match j.stage {
            Stage::Pretrain => (&was.source, &fp.source),
            _ => (&was.target, &fp.target),
        };
        if data.0.as_ref().is_some_and(|d| d != data.1) {
            return Ok(Reason::DataChanged);
        }
    }
    let mut old = prev.needs.clone();
    let mut new = j.needs.clone();
    old.sort();
    new.sort();
    Ok(if old != new {
        Reason::NeedsChanged
    } else {
        Reason::New
    })
}

/// Waits for the workers a killed orchestrator left behind: a lease whose owner is dead on
/// this host but whose worker still runs. Workers get SIGTERM when their orchestrator dies
/// (`PR_SET_PDEATHSIG`) and stop at their next step, or finish and write `result.json`; after
/// `grace` the rest of the group is killed. Returns how many were waited for.
pub fn settle_orphans(plan: &Plan, grace: Duration) -> anyhow::Result<usize> {
    let host = super::lease::this_host();
    let mut orphans = Vec::new();
    for j in &plan.jobs {
        let Some(lease) = super::lease::read_lease(&j.config.output)? else {
            continue;
        };
        if lease.host != host || lease.owner_alive() {
            continue;
        }
        if let Some(pid) = lease.worker_pid.filter(|&p| super::lease::pid_alive(p)) {
            orphans.push(pid);
        }
    }
    if orphans.is_empty() {
        return Ok(0);
    }
    eprintln!(
        "ranksweep: waiting up to {}s for {} worker(s) of a killed run",
        grace.as_secs(),
        orphans.len()
    );
    let deadline = std::time::Instant::now() + grace;
    while orphans.iter().any(|&p| super::lease::pid_alive(p))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pid in &orphans {
        if super::lease::pid_alive(pid) {
            // SAFETY: killpg only sends a signal; the worker leads its own process group.
            unsafe {
                libc::killpg(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
    Ok(orphans.len())
}

/// Records the results a worker finished after its orchestrator died: a job not done in the
/// database whose folder holds a readable `result.json` is ingested and marked done instead of
/// run again. Returns the keys adopted.
pub fn adopt_results(
    store: &mut Store,
    sweep: SweepId,
    plan: &Plan,
) -> anyhow::Result<Vec<String>> {
    let mut adopted = Vec::new();
    for j in &plan.jobs {
        let dir = &j.config.output;
        if !dir.join(crate::train::job_run::RESULT_FILE).is_file() {
            continue;
        }
        let Some(rec) = store.job(sweep, &j.key)? else {
            continue;
        };
        if rec.status == JobStatus::Done
            || super::lease::read_lease(dir)?.is_some_and(|l| l.owner_alive())
        {
            continue;
        }
        match ingest_job_dir(store, sweep, &j.key, dir) {
            Ok(()) => {
                store.mark_done(sweep, &j.key)?;
                adopted.push(j.key.clone());
            }
            // An unreadable result is not a result: the job runs again (the scheduler sets
            // the file aside).
            Err(e) => eprintln!("ranksweep: {}: not adopted: {e}", dir.display()),
        }
    }
    Ok(adopted)
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

/// A sweep planned and recorded in the database: what every backend (`run`, `submit`) starts
/// from.
pub struct Prepared {
    pub spec: Spec,
    pub plan: Plan,
    pub store: Store,
    pub sweep: SweepId,
    /// Code and data fingerprints the plan's keys hash.
    pub fingerprints: Fingerprints,
}

/// Loads the spec, synthesizes missing phantom data, fingerprints code and data, makes the
/// splits, plans, opens (creating) the database and records the plan.
pub fn prepare_sweep(spec: &Path, results: &Path, db: &Path) -> anyhow::Result<Prepared> {
    let spec = load(spec)?;
    synthesize_missing(&spec)?;
    let fp = fingerprints(&spec)?;
    ensure_splits(&spec)?;
    let plan = plan(&spec, &fp, results);
    if let Some(dir) = db.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut store = Store::open(db)?;
    let sweep = record_plan(&mut store, &spec, &plan)?;
    Ok(Prepared {
        spec,
        plan,
        store,
        sweep,
        fingerprints: fp,
    })
}

/// Writes a planned job's `job.json` (creating its folder) and returns the file's path.
pub fn write_job_file(j: &PlannedJob) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&j.config.output)
        .with_context(|| format!("cannot create {}", j.config.output.display()))?;
    let job_file = j.config.output.join("job.json");
    crate::model::checkpoint::write_atomic(
        &job_file,
        serde_json::to_string_pretty(&j.config)?.as_bytes(),
    )
    .with_context(|| format!("cannot write {}", job_file.display()))?;
    Ok(job_file)
}

/// Runs a sweep end to end on this machine.
pub fn run_sweep(opts: &RunOptions) -> anyhow::Result<SweepOutcome> {
    let db = opts.db.clone();
    let Prepared {
        spec,
        plan,
        mut store,
        sweep,
        fingerprints: fp,
    } = prepare_sweep(&opts.spec, &opts.results, &db)?;
    let host = super::lease::this_host();
    // After a kill: let the orphaned workers end first, so that none still runs when its job
    // is reclaimed and started again, then close their attempts and keep what they finished.
    settle_orphans(&plan, ORPHAN_GRACE)?;
    let reclaimed = store.reclaim_stale(sweep, &host, super::lease::pid_alive)?;
    if !reclaimed.is_empty() {
        eprintln!(
            "ranksweep: reclaimed {} stale lease(s) of killed runs",
            reclaimed.len()
        );
    }
    let adopted = adopt_results(&mut store, sweep, &plan)?;
    if !adopted.is_empty() {
        eprintln!(
            "ranksweep: recorded {} result(s) finished after their run was killed",
            adopted.len()
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
        let job_file = write_job_file(j)?;
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
            (ENV_CODE.into(), fp.code.clone()),
            (ENV_SOURCE.into(), fp.source.clone()),
            (ENV_TARGET.into(), fp.target.clone()),
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
