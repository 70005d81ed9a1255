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
use crate::train::files::RESULT_FILE;
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
    /// A job it needs is not done and does not run now (it failed before, or is itself
    /// blocked): never started on a missing dependency.
    Blocked,
    /// Done: its result is in the database (in this sweep, or under the same key in another
    /// sweep, whose result is reused).
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
            Reason::Blocked => "blocked",
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

/// The target cohort's splits, made once before any job runs (workers then only read them),
/// on the results side: `<results>/splits/<fingerprint>-k<folds>-seed<seed>-<strata>.json`
/// (see [`crate::sweep::plan::splits_file`]); the dataset folder is never written. A
/// `splits.json` an older ranksweep left in the dataset folder is no longer read: when it
/// differs from the split the spec asks for, a warning says so (jobs done with it before keep
/// their results; rerun them in a fresh results folder if its folds matter).
pub fn ensure_splits(spec: &Spec, results: &Path, fp: &Fingerprints) -> anyhow::Result<PathBuf> {
    use crate::data::folds::{SPLITS_FILE, Splits, load_or_create_splits};
    let target = index_dataset(&spec.data.target)?;
    let path =
        crate::sweep::plan::splits_file(results, &fp.target, spec.data.folds, spec.data.split_seed);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let (splits, _) = load_or_create_splits(
        &path,
        &target.case_ids(),
        spec.data.folds,
        spec.data.split_seed,
        None,
    )
    .with_context(|| format!("splits of {}", spec.data.target.display()))?;
    let legacy = spec.data.target.join(SPLITS_FILE);
    if legacy.is_file() && Splits::read(&legacy).ok().as_ref() != Some(&splits) {
        eprintln!(
            "ranksweep: warning: {} is not used: splits now live in {} (folds {}, split_seed {}), \
             and that file holds another split; results made with it before stay recorded",
            legacy.display(),
            path.display(),
            spec.data.folds,
            spec.data.split_seed
        );
    }
    Ok(path)
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

/// A job a blocked job waits for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Blocker {
    /// The dependency's key and label.
    pub job: String,
    pub label: String,
    /// Why it is not done: the class of its last attempt (`failed`, `nan`, …), or `blocked`.
    pub class: String,
}

/// What `run` does with a planned job, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Decision {
    pub key: String,
    pub reason: Reason,
    /// Whether this run starts it.
    pub runs: bool,
    /// For [`Reason::Blocked`]: the first dependency that is neither done nor run now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<Blocker>,
    /// For a job done under the same key in another sweep: where (its result is reused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done_in: Option<crate::store::DoneElsewhere>,
}

impl Decision {
    /// `done`, `done in sweep S (run N)`, `blocked by K (label): failed`, or the reason.
    pub fn explain(&self) -> String {
        match (&self.done_in, &self.blocked_by) {
            (Some(e), _) => match e.run {
                Some(r) => format!("done in sweep {} (run {r})", e.sweep),
                None => format!("done in sweep {} (ingested)", e.sweep),
            },
            (None, Some(b)) => format!("blocked by {} ({}): {}", b.job, b.label, b.class),
            (None, None) => self.reason.name().to_string(),
        }
    }
}

/// Each planned job with the reason it would run now (or not). A job whose key is done in
/// another sweep of the database is done (reused, with where). A job that needs a job that is
/// neither done nor run now is blocked, never run: a failed pre-training is not done.
pub fn reasons(
    store: &Store,
    sweep: Option<SweepId>,
    plan: &Plan,
    rerun_failed: bool,
) -> anyhow::Result<Vec<Decision>> {
    let history = match sweep {
        Some(s) => store.all_jobs(s)?,
        None => Vec::new(),
    };
    let by_key: HashMap<&str, &JobRecord> = history.iter().map(|r| (r.key.as_str(), r)).collect();
    let planned: HashSet<&str> = plan.jobs.iter().map(|j| j.key.as_str()).collect();
    let elsewhere = store.done_elsewhere(sweep)?;
    let linked = match sweep {
        Some(s) => store.linked_results(s)?,
        None => HashMap::new(),
    };
    let mut out: Vec<Decision> = Vec::with_capacity(plan.jobs.len());
    let mut failed_class: HashMap<&str, String> = HashMap::new();
    for j in &plan.jobs {
        let mut reason = match (sweep, by_key.get(j.key.as_str())) {
            (Some(s), Some(rec)) => match rec.status {
                JobStatus::Done => Reason::Done,
                // A kill or an interruption is not the job's failure: it stays to do.
                JobStatus::Failed => {
                    match store.attempts(s, &j.key)?.last().and_then(|a| a.class) {
                        Some(ExitClass::Lost | ExitClass::Interrupted) => Reason::Pending,
                        class => {
                            let name = class.map_or("failed".to_string(), |c| c.to_string());
                            failed_class.insert(j.key.as_str(), name);
                            Reason::FailedBefore
                        }
                    }
                }
                JobStatus::Pending | JobStatus::Running => Reason::Pending,
            },
            (Some(s), None) => why_new(store, s, j, &history, &planned, &plan.fingerprints)?,
            (None, _) => Reason::New,
        };
        let mut done_in = linked.get(j.key.as_str()).cloned();
        // The same key done in another sweep (whose folder still holds its result): reused.
        let running = by_key
            .get(j.key.as_str())
            .is_some_and(|r| r.status == JobStatus::Running);
        if reason != Reason::Done
            && !running
            && let Some(e) = elsewhere.get(j.key.as_str())
            && e.dir
                .as_ref()
                .is_some_and(|d| d.join(RESULT_FILE).is_file())
        {
            reason = Reason::Done;
            done_in = Some(e.clone());
        }
        let runs = match reason {
            Reason::Done => false,
            Reason::FailedBefore => rerun_failed,
            _ => true,
        };
        out.push(Decision {
            key: j.key.clone(),
            reason,
            runs,
            blocked_by: None,
            done_in,
        });
    }
    // Dependencies come first in a plan, so one pass in plan order settles chains.
    let index: HashMap<&str, usize> = plan
        .jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.key.as_str(), i))
        .collect();
    for (i, j) in plan.jobs.iter().enumerate() {
        if !out[i].runs {
            continue;
        }
        let blocker = j.needs.iter().find_map(|need| {
            let &d = index.get(need.as_str())?;
            let dep = &out[d];
            if dep.reason == Reason::Done || dep.runs {
                return None;
            }
            let class = match dep.reason {
                Reason::Blocked => "blocked".to_string(),
                _ => failed_class
                    .get(need.as_str())
                    .cloned()
                    .unwrap_or_else(|| dep.reason.name().to_string()),
            };
            Some(Blocker {
                job: need.clone(),
                label: plan.jobs[d].label.clone(),
                class,
            })
        });
        if let Some(b) = blocker {
            out[i].reason = Reason::Blocked;
            out[i].runs = false;
            out[i].blocked_by = Some(b);
        }
    }
    Ok(out)
}

/// The active jobs of a sweep that cannot start because a job they need failed (or is itself
/// blocked), as `(key, blocker)`, for `status`.
pub fn blocked_in_store(store: &Store, sweep: SweepId) -> anyhow::Result<Vec<(String, Blocker)>> {
    let jobs = store.jobs(sweep)?;
    let by_key: HashMap<&str, &JobRecord> = jobs.iter().map(|r| (r.key.as_str(), r)).collect();
    let mut blocked: HashMap<String, Blocker> = HashMap::new();
    let label = |r: &JobRecord| match (r.stage, r.fold) {
        (Stage::Pretrain, _) => format!("pretrain/{}/s{}", r.view.name(), r.seed),
        (_, fold) => format!(
            "{}{}/f{}/s{}",
            r.kind.map(|k| k.to_string()).unwrap_or_default(),
            r.selector
                .as_deref()
                .map(|m| format!("/{m}"))
                .unwrap_or_default(),
            fold.unwrap_or(0),
            r.seed
        ),
    };
    // Pretrain jobs come first in plan order (row order): one pass settles chains.
    for r in &jobs {
        if matches!(r.status, JobStatus::Done | JobStatus::Running) {
            continue;
        }
        for need in &r.needs {
            let Some(dep) = by_key.get(need.as_str()) else {
                continue;
            };
            let class = if blocked.contains_key(need) {
                "blocked".to_string()
            } else if dep.status == JobStatus::Failed {
                match store.attempts(sweep, need)?.last().and_then(|a| a.class) {
                    Some(ExitClass::Lost | ExitClass::Interrupted) => continue,
                    c => c.map_or("failed".to_string(), |c| c.to_string()),
                }
            } else {
                continue;
            };
            blocked.insert(
                r.key.clone(),
                Blocker {
                    job: need.clone(),
                    label: label(dep),
                    class,
                },
            );
            break;
        }
    }
    Ok(jobs
        .iter()
        .filter_map(|r| blocked.remove(&r.key).map(|b| (r.key.clone(), b)))
        .collect())
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
        r.config()
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
        if !dir.join(RESULT_FILE).is_file() {
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
    /// Jobs not started because a job they need failed (key, what blocks it).
    pub blocked: Vec<(String, Blocker)>,
    pub summary: Option<RunSummary>,
    /// What the process exits with (also stored in the run's row): 0 nothing wrong, 1 a job
    /// failed or was blocked.
    pub exit_code: u8,
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
/// splits (on the results side), plans, opens (creating) the database and records the plan.
pub fn prepare_sweep(spec: &Path, results: &Path, db: &Path) -> anyhow::Result<Prepared> {
    let spec = load(spec)?;
    synthesize_missing(&spec)?;
    let fp = fingerprints(&spec)?;
    let plan = plan(&spec, &fp, results);
    ensure_splits(&spec, &std::path::absolute(results)?, &fp)?;
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

/// Reuses the results of jobs done under the same key in another sweep: links them in the
/// database (no rows copied), links the job folder to the original's (a symlink, when the
/// folder does not exist yet) and points dependents at the original's checkpoints. Returns
/// how many were linked now.
pub fn reuse_done_elsewhere(
    store: &mut Store,
    sweep: SweepId,
    plan: &mut Plan,
    decisions: &[Decision],
) -> anyhow::Result<usize> {
    let mut moved: HashMap<PathBuf, PathBuf> = HashMap::new();
    let mut linked = 0;
    for (j, d) in plan.jobs.iter().zip(decisions) {
        let Some(e) = &d.done_in else { continue };
        let Some(orig) = &e.dir else { continue };
        if store
            .job(sweep, &j.key)?
            .is_some_and(|r| r.status != JobStatus::Done)
        {
            store.link_result(sweep, &j.key, e.job)?;
            linked += 1;
        }
        let here = &j.config.output;
        if here != orig {
            if std::fs::symlink_metadata(here).is_err() {
                if let Some(parent) = here.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                std::os::unix::fs::symlink(orig, here).with_context(|| {
                    format!("cannot link {} to {}", here.display(), orig.display())
                })?;
            }
            moved.insert(here.clone(), orig.clone());
        }
    }
    for j in &mut plan.jobs {
        for file in j.config.base.values_mut() {
            if let Some(orig) = file.parent().and_then(|p| moved.get(p))
                && let Some(name) = file.file_name()
            {
                *file = orig.join(name);
            }
        }
    }
    Ok(linked)
}

/// Writes a planned job's `job.json` (creating its folder) and returns the file's path.
pub fn write_job_file(j: &PlannedJob) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&j.config.output)
        .with_context(|| format!("cannot create {}", j.config.output.display()))?;
    let job_file = j.config.output.join(crate::train::files::JOB_FILE);
    crate::model::checkpoint::write_atomic(
        &job_file,
        serde_json::to_string_pretty(&j.config)?.as_bytes(),
    )
    .with_context(|| format!("cannot write {}", job_file.display()))?;
    Ok(job_file)
}

/// Refuses GPUs this binary or host cannot use, before anything runs: a build without CUDA, or
/// a CUDA build that sees fewer GPUs than `--devices` names.
pub fn check_gpus_usable(devices: &[super::Device]) -> anyhow::Result<()> {
    let gpus: Vec<String> = devices
        .iter()
        .filter(|d| d.is_gpu())
        .map(|d| d.to_string())
        .collect();
    if gpus.is_empty() {
        return Ok(());
    }
    if !crate::nn::device::cuda_built() {
        anyhow::bail!(
            "`--devices {}`: this ranksweep was built without CUDA, so its workers cannot train on a GPU; {}",
            gpus.join(","),
            crate::nn::device::CUDA_BUILD_HINT
        );
    }
    let seen = crate::nn::device::visible_gpus();
    if let Some(missing) = devices
        .iter()
        .find(|d| matches!(d, super::Device::Cuda(i) if *i as usize >= seen))
    {
        anyhow::bail!("`--devices`: `{missing}` is not here: this host shows {seen} GPU(s)");
    }
    Ok(())
}

/// The memory of the smallest of `devices`' GPUs (MiB), as `nvidia-smi` reports it.
fn smallest_gpu_mb(devices: &[super::Device]) -> Option<f64> {
    use crate::nn::gpu::GpuQuery;
    let mem = crate::nn::gpu::NvidiaSmi::default().memory().ok()?;
    devices
        .iter()
        .filter_map(|d| match d {
            super::Device::Cuda(i) => mem.iter().find(|g| g.index == *i).map(|g| g.total_mb),
            super::Device::Cpu => None,
        })
        .reduce(f64::min)
}

/// Runs a sweep end to end on this machine.
pub fn run_sweep(opts: &RunOptions) -> anyhow::Result<SweepOutcome> {
    let db = opts.db.clone();
    // A bad `--devices`, or GPUs this build or host cannot use, is a usage error before anything
    // is recorded.
    let devices = parse_devices(&opts.devices)?;
    if !opts.dry_run {
        check_gpus_usable(&devices)?;
    }
    let Prepared {
        spec,
        mut plan,
        mut store,
        sweep,
        fingerprints: fp,
    } = prepare_sweep(&opts.spec, &opts.results, &db)?;
    let host = super::lease::this_host();
    // A dry run writes nothing but the plan: the recovery below is a run's.
    if !opts.dry_run {
        recover(&mut store, sweep, &plan, &host)?;
    }
    let decisions = reasons(&store, Some(sweep), &plan, opts.rerun_failed)?;
    let to_run: std::collections::BTreeSet<&str> = decisions
        .iter()
        .filter(|d| d.runs)
        .map(|d| d.key.as_str())
        .collect();
    let cached = decisions
        .iter()
        .filter(|d| d.reason == Reason::Done)
        .count();
    let blocked: Vec<(String, Blocker)> = decisions
        .iter()
        .filter_map(|d| d.blocked_by.clone().map(|b| (d.key.clone(), b)))
        .collect();
    if opts.dry_run {
        return Ok(SweepOutcome {
            sweep: spec.name,
            db,
            planned: plan.jobs.len(),
            cached,
            blocked,
            summary: None,
            exit_code: 0,
        });
    }
    let reused = reuse_done_elsewhere(&mut store, sweep, &mut plan, &decisions)?;
    if reused > 0 {
        eprintln!(
            "ranksweep: reused {reused} job(s) done in other sweeps (`plan --explain` says where)"
        );
    }
    let labels: HashMap<&str, &str> = plan
        .jobs
        .iter()
        .map(|j| (j.key.as_str(), j.label.as_str()))
        .collect();
    for (key, b) in &blocked {
        eprintln!(
            "ranksweep: blocked {} ({key}): it needs {} ({}), which is {}; \
             `run --rerun-failed` runs it again",
            labels[key.as_str()],
            b.label,
            b.job,
            b.class
        );
    }
    // Recorded before any job file is written or worker started: a killed run still says
    // which jobs it covered.
    let covered: Vec<CoveredJob> = decisions
        .iter()
        .map(|d| CoveredJob {
            key: d.key.clone(),
            cached: d.reason == Reason::Done,
            scheduled: d.runs,
        })
        .collect();
    let run = store.start_run_covering(
        sweep,
        &crate::version::code_fingerprint(),
        &host,
        std::process::id(),
        &covered,
    )?;
    let has_gpu = devices.iter().any(|d| d.is_gpu());
    let peaks = if has_gpu {
        super::gpu_slots::peaks_by_shape(&store.gpu_peaks()?)
    } else {
        Default::default()
    };
    let mut jobs = Vec::new();
    let mut largest_need: Option<u64> = None;
    let mut unmeasured = false;
    for j in plan.jobs.iter().filter(|j| to_run.contains(j.key.as_str())) {
        let need = super::gpu_slots::need_mb(&j.config, &peaks);
        match need {
            Some(n) => largest_need = Some(largest_need.map_or(n, |m| m.max(n))),
            None => unmeasured = true,
        }
        let job_file = write_job_file(j)?;
        jobs.push(ExecJob {
            id: j.key.clone(),
            // Dependencies already done are not part of this run (blocked jobs are not here).
            deps: j
                .needs
                .iter()
                .filter(|d| to_run.contains(d.as_str()))
                .cloned()
                .collect(),
            job_file,
            dir: j.config.output.clone(),
            // With GPUs given, training runs on them; evaluation takes a CPU slot if any.
            needs_gpu: has_gpu && j.stage.trains(),
            label: j.label.clone(),
            gpu_mem_mb: need,
        });
    }
    // Measured only if every job that runs has a measured shape.
    let need = if unmeasured { None } else { largest_need };
    let slots = SlotConfig {
        slots_per_device: opts.slots_per_device.unwrap_or_else(|| {
            if has_gpu {
                let total = smallest_gpu_mb(&devices);
                let n = super::gpu_slots::slots_per_gpu(need, total);
                eprintln!(
                    "ranksweep: {n} job(s) per GPU ({}; --slots-per-device to set)",
                    match (need, total) {
                        (Some(need), Some(total)) =>
                            format!("measured peak {need} MiB with headroom, GPU {total:.0} MiB"),
                        _ => "no measurement of these job shapes yet: the conservative default"
                            .to_string(),
                    }
                );
                n
            } else {
                2
            }
        }),
        threads_per_job: opts.threads_per_job.unwrap_or(spec.resources.threads),
        devices,
    };
    let mut config = RunConfig::new(slots, WorkerCommand::current_exe()?);
    config.retries = opts.retries.unwrap_or(spec.resources.retries);
    config.timeout = Some(opts.timeout.unwrap_or(spec.resources.timeout));
    config.watchdog = Some(spec.resources.no_progress);
    config.handle_signals = true;
    // Another `run` of this sweep may finish a job after this one planned it.
    let check_db = db.clone();
    config.start_check = Some(super::StartCheck(std::sync::Arc::new(move |key: &str| {
        crate::store::job_done(&check_db, sweep, key)
            .unwrap_or(false)
            .then(|| "done by another run".to_string())
    })));
    let cancel = config.cancel.clone();
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
        if record_error.is_some() {
            return;
        }
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
                    ran_on,
                    peak_gpu_mb,
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
                    store.record_attempt_device(id, ran_on.as_deref(), *peak_gpu_mb)?;
                    let mut class = crate::store::ExitClass::from(*class);
                    let mut error = detail.clone();
                    if class == crate::store::ExitClass::Ok
                        && let Err(e) = ingest_job_dir(&mut store, sweep, job, &dirs[job])
                    {
                        // A result that does not check out is the job's failure, not the run's.
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
        if let Err(e) = r {
            // The database no longer says what ran: stop dispatching (running workers get
            // SIGTERM and are recorded interrupted where possible) rather than go on blind.
            eprintln!(
                "ranksweep: cannot record the run in {}: {e:#}; stopping",
                db.display()
            );
            cancel.stop();
            record_error = Some(e);
        }
    });
    let summary = match summary {
        Ok(s) => s,
        Err(e) => {
            let _ = store.end_run(run, 2);
            return Err(e.into());
        }
    };
    for (key, status) in &summary.jobs {
        if let super::JobStatus::Elsewhere { detail, .. } = status {
            let now_done = crate::store::job_done(&db, sweep, key).unwrap_or(false);
            let what = if now_done {
                "done elsewhere"
            } else {
                "left to another run"
            };
            eprintln!(
                "ranksweep: {what}: {} ({key}): {detail}",
                labels[key.as_str()]
            );
        }
    }
    // 2 as for any error that ends the command (the CLI's table).
    let code: u8 = if record_error.is_some() {
        2
    } else if summary.nothing_wrong() && blocked.is_empty() {
        0
    } else {
        1
    };
    store.end_run(run, i32::from(code))?;
    if let Some(e) = record_error {
        return Err(e.context("recording the run in the database"));
    }
    Ok(SweepOutcome {
        sweep: spec.name,
        db,
        planned: plan.jobs.len(),
        cached,
        blocked,
        summary: Some(summary),
        exit_code: code,
    })
}

/// After a kill: lets the orphaned workers end first, so that none still runs when its job is
/// reclaimed and started again, then closes their attempts and the killed runs, and keeps
/// what they finished.
fn recover(store: &mut Store, sweep: SweepId, plan: &Plan, host: &str) -> anyhow::Result<()> {
    settle_orphans(plan, ORPHAN_GRACE)?;
    let reclaimed = store.reclaim_stale(sweep, host, super::lease::pid_alive)?;
    if !reclaimed.is_empty() {
        eprintln!(
            "ranksweep: reclaimed {} stale lease(s) of killed runs",
            reclaimed.len()
        );
    }
    for run in store.end_dead_runs(sweep, host, super::lease::pid_alive)? {
        eprintln!("ranksweep: run {} was killed; marked ended", run.0);
    }
    let adopted = adopt_results(store, sweep, plan)?;
    if !adopted.is_empty() {
        eprintln!(
            "ranksweep: recorded {} result(s) finished after their run was killed",
            adopted.len()
        );
    }
    Ok(())
}
