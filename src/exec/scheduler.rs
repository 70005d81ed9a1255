//! The dispatcher: leases ready jobs to free slots, runs one supervisor task per attempt, retries
//! retryable classes, blocks the dependents of a failed job, and handles cancellation.
//!
//! Design (nextest's dispatcher/executor split): [`run`] alone owns the job states and the slot
//! pool; supervisors only report back through their task's result and send progress events. It
//! is not a general DAG engine: the order is the input order among ready jobs, which makes a run
//! deterministic for a given plan.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::class::{ExitClass, is_retryable};
use super::device::{Slot, SlotConfig, SlotPool};
use super::error::ExecError;
use super::event::{CancelReason, JobStatus, RunSummary, SweepEvent};
use super::lease::this_host;
use super::signal::{Cancel, spawn_signal_handler};
use super::supervise::{AttemptReport, Limits, run_attempt};

/// The file a worker writes last, by atomic rename, when (and only when) it succeeds.
pub use crate::train::files::RESULT_FILE;

/// One job as the scheduler sees it: no planner types, only what it takes to run and order it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecJob {
    /// Unique within a run (the planner's job hash).
    pub id: String,
    /// Ids of the jobs that must finish `ok` first.
    #[serde(default)]
    pub deps: Vec<String>,
    /// Passed to the worker.
    pub job_file: PathBuf,
    /// The job's folder: the worker's `result.json`, the attempt logs and the lease go here.
    pub dir: PathBuf,
    /// Runs only on a `cuda:<i>` slot.
    #[serde(default)]
    pub needs_gpu: bool,
    /// Short human name for bars and logs (e.g. `lora-c r16 fold 2`).
    #[serde(default)]
    pub label: String,
    /// GPU memory the job is expected to need, in MiB (measured on earlier attempts of its
    /// shape); [`DEFAULT_GPU_NEED_MB`] when unknown. Admission to a GPU slot that already runs
    /// jobs waits until that much is free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_mem_mb: Option<u64>,
}

/// What a GPU job is assumed to need when nothing was measured: a quickstart-sized job takes a
/// few hundred MiB, the study's largest a few GiB at batch 8.
pub const DEFAULT_GPU_NEED_MB: f64 = 2048.0;

/// A job started on a GPU this recently may not have allocated yet: its need still counts
/// against the GPU's free memory.
const GPU_WARMUP: Duration = Duration::from_secs(30);

/// How often a held-back GPU job re-checks free memory.
const GPU_RECHECK: Duration = Duration::from_secs(1);

/// How a worker is started: `program args_before_job_file... JOB_FILE [device_flag DEVICE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args_before_job_file: Vec<String>,
    /// When set, `<flag> <device>` follows the job file (`--device cuda:0` or `--device cpu`).
    /// The device is always in the environment too (`RANKSWEEP_DEVICE`).
    pub device_flag: Option<String>,
}

impl WorkerCommand {
    /// `<this executable> worker JOB_FILE --device D`: the slot's device overrides the job
    /// file's (`cuda:0` under the slot's CUDA_VISIBLE_DEVICES pinning, or `cpu`).
    pub fn current_exe() -> std::io::Result<Self> {
        Ok(WorkerCommand {
            program: std::env::current_exe()?,
            args_before_job_file: vec!["worker".into()],
            device_flag: Some("--device".into()),
        })
    }

    /// `program JOB_FILE`, with the device in the environment only.
    pub fn program(program: impl Into<PathBuf>) -> Self {
        WorkerCommand {
            program: program.into(),
            args_before_job_file: Vec::new(),
            device_flag: None,
        }
    }

    /// The command for `job_file` on `slot`, with the slot's pinning in the environment.
    pub(crate) fn command(
        &self,
        job_file: &std::path::Path,
        slot: &Slot,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args_before_job_file).arg(job_file);
        if let Some(flag) = &self.device_flag {
            cmd.arg(flag).arg(slot.device.worker_device());
        }
        cmd.envs(slot.env());
        cmd
    }
}

/// Asked before each job starts: `Some(why)` when another run has finished the job meanwhile
/// (two `run`s of one sweep), so it is not started again here.
#[derive(Clone)]
pub struct StartCheck(pub std::sync::Arc<StartCheckFn>);

/// `job id → Some(why it is done elsewhere)`.
pub type StartCheckFn = dyn Fn(&str) -> Option<String> + Send + Sync;

impl std::fmt::Debug for StartCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StartCheck")
    }
}

/// Everything [`run`] needs besides the jobs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub slots: SlotConfig,
    pub worker: WorkerCommand,
    /// Extra attempts for a retryable class (oom, timeout, interrupted); 0 runs each job once.
    pub retries: u32,
    /// Per-attempt wall-clock limit.
    pub timeout: Option<Duration>,
    /// Kill an attempt that prints no stdout line for this long.
    pub watchdog: Option<Duration>,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Raise it to stop the run; [`run`] also raises it on SIGINT/SIGTERM when `handle_signals`.
    pub cancel: Cancel,
    /// Install the Ctrl-C handler for the run's duration (the CLI does; tests and embedders
    /// that handle signals themselves do not).
    pub handle_signals: bool,
    /// Whether a job is already done elsewhere, asked before it starts (none: never).
    pub start_check: Option<StartCheck>,
    /// Free GPU memory for admission and each GPU attempt's peak; used only with GPU slots.
    /// `None`: no admission check, no sampling.
    pub gpu: Option<std::sync::Arc<dyn crate::nn::gpu::GpuQuery>>,
}

impl RunConfig {
    /// Defaults: no retry, no time limits, a 10 s grace, no signal handler.
    pub fn new(slots: SlotConfig, worker: WorkerCommand) -> Self {
        RunConfig {
            slots,
            worker,
            retries: 0,
            timeout: None,
            watchdog: None,
            grace: Duration::from_secs(10),
            cancel: Cancel::new(),
            handle_signals: false,
            start_check: None,
            gpu: Some(std::sync::Arc::new(crate::nn::gpu::NvidiaSmi::default())),
        }
    }
}

#[derive(Debug, Clone)]
enum State {
    /// Waiting for a slot or its dependencies; `last` is the class of a previous attempt.
    /// After an out-of-memory attempt, `oom_shared` is how many jobs shared its GPU then: the
    /// retry waits for a GPU slot where fewer do.
    Pending {
        next_attempt: u32,
        last: Option<ExitClass>,
        oom_shared: Option<usize>,
    },
    Running,
    Done(JobStatus),
}

/// What a supervisor task returns.
struct Finished {
    job: usize,
    slot: Slot,
    attempt: u32,
    report: AttemptReport,
}

/// Runs `jobs` on the slots of `config` and returns what happened to each. Every event goes to
/// `events` (a dropped receiver is fine). Fails only on input it cannot run: a bad pool, a
/// duplicate id, an unknown dependency, a cycle, or a GPU job without a GPU slot.
pub async fn run(
    jobs: Vec<ExecJob>,
    config: RunConfig,
    events: mpsc::UnboundedSender<SweepEvent>,
) -> Result<RunSummary, ExecError> {
    let t0 = Instant::now();
    let mut pool = SlotPool::new(&config.slots)?;
    let index = validate(&jobs, &pool, &config.slots)?;
    let dependents = dependents(&jobs, &index);
    let host = this_host();
    let signals = if config.handle_signals {
        let handler = spawn_signal_handler(config.cancel.clone());
        Some(handler.map_err(|source| ExecError::Start {
            what: "the Ctrl-C handler",
            source,
        })?)
    } else {
        None
    };
    let send = |e: SweepEvent| {
        let _ = events.send(e);
    };
    send(SweepEvent::RunStarted {
        jobs: jobs.len(),
        slots: pool.slots().to_vec(),
        host: host.clone(),
    });

    let limits = Limits {
        timeout: config.timeout,
        watchdog: config.watchdog,
        grace: config.grace,
    };
    let mut cancel_rx = config.cancel.subscribe();
    let mut announced: Option<CancelReason> = None;
    let mut states = vec![
        State::Pending {
            next_attempt: 1,
            last: None,
            oom_shared: None,
        };
        jobs.len()
    ];
    let gpu = config.gpu.clone().filter(|_| pool.has_gpu());
    // Jobs started on a GPU within GPU_WARMUP: (device, when, need).
    let mut warming: Vec<(super::Device, Instant, f64)> = Vec::new();
    let mut gpu_warned = false;
    let mut running: JoinSet<Finished> = JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, (usize, Slot, u32)> = HashMap::new();
    let mut attempts = 0u32;

    loop {
        let level = *cancel_rx.borrow_and_update();
        if level > announced {
            announced = level;
            if let Some(reason) = level {
                send(SweepEvent::Cancelling { reason });
            }
        }
        let mut held_back = false;
        if level.is_none() {
            // Free memory per GPU, asked once per round and only when a GPU slot is free.
            warming.retain(|(_, t, _)| t.elapsed() < GPU_WARMUP);
            let free_mb: std::collections::HashMap<u32, f64> = match &gpu {
                Some(q) if pool.gpu_free() => {
                    let q = q.clone();
                    match tokio::task::spawn_blocking(move || q.memory()).await {
                        Ok(Ok(m)) => m.into_iter().map(|g| (g.index, g.free_mb)).collect(),
                        Ok(Err(e)) => {
                            if !gpu_warned {
                                tracing::warn!("no GPU memory admission: {e}");
                                gpu_warned = true;
                            }
                            Default::default()
                        }
                        Err(_) => Default::default(),
                    }
                }
                _ => Default::default(),
            };
            // Dispatch every ready job, in input order, that a free slot fits.
            for (i, job) in jobs.iter().enumerate() {
                let State::Pending {
                    next_attempt,
                    oom_shared,
                    ..
                } = states[i]
                else {
                    continue;
                };
                let ready = job
                    .deps
                    .iter()
                    .all(|d| matches!(&states[index[d.as_str()]], State::Done(s) if s.is_done()));
                if !ready {
                    continue;
                }
                let need = job.gpu_mem_mb.map_or(DEFAULT_GPU_NEED_MB, |m| m as f64);
                let busy: std::collections::HashMap<super::Device, usize> = pool
                    .slots()
                    .iter()
                    .map(|s| (s.device, pool.running_on(s.device)))
                    .collect();
                let admit = |slot: &Slot| {
                    let super::Device::Cuda(g) = slot.device else {
                        return true;
                    };
                    let others = busy.get(&slot.device).copied().unwrap_or(0);
                    // An oom retry runs with fewer jobs on its GPU than when it ran out.
                    if let Some(n) = oom_shared
                        && others + 1 > n.saturating_sub(1).max(1)
                    {
                        return false;
                    }
                    // Alone on its GPU a job always starts: there is nothing to wait for.
                    if others == 0 {
                        return true;
                    }
                    let Some(free) = free_mb.get(&g) else {
                        return true;
                    };
                    let reserved: f64 = warming
                        .iter()
                        .filter(|(d, _, _)| *d == slot.device)
                        .map(|(_, _, n)| n)
                        .sum();
                    free - reserved >= need
                };
                let Some(slot) = pool.lease_where(&job.id, job.needs_gpu, admit) else {
                    // A free GPU slot that admission refused: look again soon.
                    held_back |= pool.gpu_free();
                    continue;
                };
                if let Some(why) = config.start_check.as_ref().and_then(|c| (c.0)(&job.id)) {
                    pool.release(slot.index, &job.id);
                    let status = JobStatus::Elsewhere {
                        detail: why,
                        done: true,
                    };
                    finish(&mut states, i, status, &jobs, &send);
                    continue;
                }
                if slot.device.is_gpu() {
                    warming.push((slot.device, Instant::now(), need));
                }
                states[i] = State::Running;
                attempts += 1;
                let (job_c, slot_c, worker) = (job.clone(), slot.clone(), config.worker.clone());
                let (cancel, tx) = (config.cancel.subscribe(), events.clone());
                let sampler = gpu.clone().filter(|_| slot.device.is_gpu());
                let handle = running.spawn(async move {
                    let report = run_attempt(
                        &job_c,
                        next_attempt,
                        &slot_c,
                        &worker,
                        limits,
                        sampler,
                        cancel,
                        &tx,
                    )
                    .await;
                    Finished {
                        job: i,
                        slot: slot_c,
                        attempt: next_attempt,
                        report,
                    }
                });
                in_flight.insert(handle.id(), (i, slot, next_attempt));
            }
        }
        if running.is_empty() && !held_back {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(GPU_RECHECK), if held_back => {}
            joined = running.join_next_with_id() => {
                let Some(joined) = joined else { continue };
                let finished = match joined {
                    Ok((id, f)) => {
                        in_flight.remove(&id);
                        f
                    }
                    Err(e) => {
                        // A supervisor panicked: the attempt failed; its slot is freed all the same.
                        let Some((job, slot, attempt)) = in_flight.remove(&e.id()) else { continue };
                        let now = std::time::SystemTime::now();
                        Finished {
                            job,
                            slot,
                            attempt,
                            report: AttemptReport {
                                started: now,
                                ..AttemptReport::not_started(
                                    now,
                                    format!("the attempt's supervisor failed: {e}"),
                                )
                            },
                        }
                    }
                };
                let job = &jobs[finished.job];
                // Jobs on its GPU when it ended, itself included.
                let shared = pool.running_on(finished.slot.device);
                pool.release(finished.slot.index, &job.id);
                if let Some(held) = &finished.report.held {
                    // Another run's job: nothing started, nothing to record or retry here.
                    attempts -= 1;
                    let detail = format!(
                        "leased by the run of pid {} on host {}",
                        held.owner_pid, held.host
                    );
                    let status = JobStatus::Elsewhere { detail: detail.clone(), done: false };
                    finish(&mut states, finished.job, status, &jobs, &send);
                    let by = job.id.clone();
                    mark_dependents(finished.job, &dependents, &mut states, &jobs, &send, |_| {
                        JobStatus::Elsewhere {
                            detail: format!("needs {by}, {detail}"),
                            done: false,
                        }
                    });
                    continue;
                }
                let class = finished.report.class;
                let retry = is_retryable(class)
                    && finished.attempt <= config.retries
                    && config.cancel.level().is_none();
                send(SweepEvent::AttemptFinished {
                    job: job.id.clone(),
                    label: job.label.clone(),
                    attempt: finished.attempt,
                    slot: finished.slot.index,
                    device: finished.slot.device,
                    host: host.clone(),
                    class,
                    detail: finished.report.detail.clone(),
                    exit_code: finished.report.exit_code,
                    signal: finished.report.signal,
                    started: finished.report.started,
                    ended: finished.report.ended,
                    retry,
                    ran_on: finished.report.ran_on.clone(),
                    peak_gpu_mb: finished.report.peak_gpu_mb,
                });
                if retry {
                    let oom_shared = (class == ExitClass::Oom && finished.slot.device.is_gpu())
                        .then_some(shared);
                    states[finished.job] = State::Pending {
                        next_attempt: finished.attempt + 1,
                        last: Some(class),
                        oom_shared,
                    };
                    continue;
                }
                let status = JobStatus::Finished { class, attempts: finished.attempt };
                finish(&mut states, finished.job, status, &jobs, &send);
                if class != ExitClass::Ok {
                    block_dependents(finished.job, &dependents, &mut states, &jobs, &send);
                }
            }
            changed = cancel_rx.changed() => {
                if changed.is_err() {
                    // Cannot happen while `config.cancel` lives; do not spin if it does.
                    let _ = running.join_next().await;
                }
            }
        }
    }

    if let Some(handle) = signals {
        handle.abort();
    }
    // Whatever was still pending was never started: the run was cancelled.
    // A job waiting for a retry ends with the class of its last attempt.
    for i in 0..jobs.len() {
        if let State::Pending {
            next_attempt, last, ..
        } = states[i]
        {
            let status = match last {
                Some(class) => JobStatus::Finished {
                    class,
                    attempts: next_attempt - 1,
                },
                None => JobStatus::NotRun,
            };
            finish(&mut states, i, status, &jobs, &send);
        }
    }
    let summary = RunSummary {
        jobs: jobs
            .iter()
            .zip(&states)
            .map(|(job, state)| {
                let status = match state {
                    State::Done(s) => s.clone(),
                    _ => JobStatus::NotRun,
                };
                (job.id.clone(), status)
            })
            .collect(),
        attempts,
        cancelled: config.cancel.level(),
        elapsed: t0.elapsed(),
    };
    send(SweepEvent::RunFinished {
        summary: summary.clone(),
    });
    Ok(summary)
}

/// [`run`] for synchronous callers (the CLI): a tokio runtime of its own, and `on_event` called
/// on this thread for every event, in order, until the run ends.
pub fn run_blocking(
    jobs: Vec<ExecJob>,
    config: RunConfig,
    mut on_event: impl FnMut(&SweepEvent),
) -> Result<RunSummary, ExecError> {
    // Supervisors wait on pipes and timers; two threads are plenty for any pool.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| ExecError::Start {
            what: "the async runtime",
            source,
        })?;
    runtime.block_on(async move {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let runner = tokio::spawn(run(jobs, config, tx));
        while let Some(event) = rx.recv().await {
            on_event(&event);
        }
        match runner.await {
            Ok(result) => result,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    })
}

/// Reads a jobs file: a JSON list of [`ExecJob`]s. Relative `job_file` and `dir` paths are
/// taken relative to the file's folder.
pub fn read_jobs(path: &std::path::Path) -> Result<Vec<ExecJob>, ExecError> {
    let text = std::fs::read_to_string(path).map_err(ExecError::io(path))?;
    let mut jobs: Vec<ExecJob> =
        serde_json::from_str(&text).map_err(|e| ExecError::InvalidJobs {
            path: path.to_path_buf(),
            reason: format!(
                "expected a JSON list of {{id, deps, job_file, dir, needs_gpu, label}}: {e}"
            ),
        })?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    for job in &mut jobs {
        job.job_file = base.join(&job.job_file);
        job.dir = base.join(&job.dir);
    }
    Ok(jobs)
}

fn finish(
    states: &mut [State],
    i: usize,
    status: JobStatus,
    jobs: &[ExecJob],
    send: &impl Fn(SweepEvent),
) {
    send(SweepEvent::JobFinished {
        job: jobs[i].id.clone(),
        label: jobs[i].label.clone(),
        status: status.clone(),
    });
    states[i] = State::Done(status);
}

/// Marks every job that transitively depends on `failed` (and has not started) as blocked by it.
fn block_dependents(
    failed: usize,
    dependents: &[Vec<usize>],
    states: &mut [State],
    jobs: &[ExecJob],
    send: &impl Fn(SweepEvent),
) {
    let by = jobs[failed].id.clone();
    mark_dependents(failed, dependents, states, jobs, send, |_| {
        JobStatus::Blocked { by: by.clone() }
    });
}

/// Gives every job that transitively depends on `root` (and has not started) `status(job)`.
fn mark_dependents(
    root: usize,
    dependents: &[Vec<usize>],
    states: &mut [State],
    jobs: &[ExecJob],
    send: &impl Fn(SweepEvent),
    status: impl Fn(usize) -> JobStatus,
) {
    let mut stack = dependents[root].clone();
    while let Some(d) = stack.pop() {
        if matches!(states[d], State::Pending { .. }) {
            finish(states, d, status(d), jobs, send);
            stack.extend(&dependents[d]);
        }
    }
}

/// Checks ids, dependencies (known, acyclic) and GPU needs; returns id → position.
fn validate<'a>(
    jobs: &'a [ExecJob],
    pool: &SlotPool,
    slots: &SlotConfig,
) -> Result<HashMap<&'a str, usize>, ExecError> {
    let mut index = HashMap::new();
    for (i, job) in jobs.iter().enumerate() {
        if index.insert(job.id.as_str(), i).is_some() {
            return Err(ExecError::DuplicateJob { id: job.id.clone() });
        }
    }
    let mut dirs: HashMap<&std::path::Path, &str> = HashMap::new();
    for job in jobs {
        if let Some(first) = dirs.insert(job.dir.as_path(), job.id.as_str()) {
            return Err(ExecError::SharedDir {
                first: first.to_string(),
                second: job.id.clone(),
                dir: job.dir.clone(),
            });
        }
        if let Some(dep) = job.deps.iter().find(|d| !index.contains_key(d.as_str())) {
            return Err(ExecError::UnknownDependency {
                job: job.id.clone(),
                dep: dep.clone(),
            });
        }
        if job.needs_gpu && !pool.has_gpu() {
            let devices: Vec<String> = slots.devices.iter().map(|d| d.to_string()).collect();
            return Err(ExecError::NoGpuSlot {
                job: job.id.clone(),
                devices: devices.join(","),
            });
        }
    }
    if let Some(cycle) = find_cycle(jobs, &index) {
        return Err(ExecError::DependencyCycle { cycle });
    }
    Ok(index)
}

/// A dependency cycle as ids (first id repeated at the end), by depth-first search.
fn find_cycle(jobs: &[ExecJob], index: &HashMap<&str, usize>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; jobs.len()];
    for root in 0..jobs.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // (node, next dep to visit)
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::OnPath;
        while let Some(top) = path.last_mut() {
            let node = top.0;
            if let Some(dep) = jobs[node].deps.get(top.1) {
                top.1 += 1;
                let d = index[dep.as_str()];
                match mark[d] {
                    Mark::New => {
                        mark[d] = Mark::OnPath;
                        path.push((d, 0));
                    }
                    Mark::OnPath => {
                        let start = path.iter().position(|&(n, _)| n == d).unwrap_or(0);
                        let mut cycle: Vec<String> = path[start..]
                            .iter()
                            .map(|&(n, _)| jobs[n].id.clone())
                            .collect();
                        cycle.push(jobs[d].id.clone());
                        return Some(cycle);
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                path.pop();
            }
        }
    }
    None
}

/// For each job, the jobs that list it as a dependency.
fn dependents(jobs: &[ExecJob], index: &HashMap<&str, usize>) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); jobs.len()];
    for (i, job) in jobs.iter().enumerate() {
        let unique: HashSet<&str> = job.deps.iter().map(String::as_str).collect();
        for d in unique {
            out[index[d]].push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::device::Device;

    fn job(id: &str, deps: &[&str]) -> ExecJob {
        ExecJob {
            id: id.into(),
            deps: deps.iter().map(|d| d.to_string()).collect(),
            job_file: format!("{id}.yaml").into(),
            dir: format!("jobs/{id}").into(),
            needs_gpu: false,
            label: id.into(),
            gpu_mem_mb: None,
        }
    }

    fn check(jobs: &[ExecJob], devices: Vec<Device>) -> Result<(), ExecError> {
        let slots = SlotConfig {
            devices,
            slots_per_device: 1,
            threads_per_job: 1,
        };
        let pool = SlotPool::new(&slots)?;
        validate(jobs, &pool, &slots).map(|_| ())
    }

    #[test]
    fn job_graphs_are_validated() {
        let cpu = || vec![Device::Cpu];
        assert!(check(&[job("p", &[]), job("f", &["p"])], cpu()).is_ok());
        let e = check(&[job("a", &[]), job("a", &[])], cpu()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "job `a` is listed twice; job ids must be unique"
        );
        let e = check(&[job("f", &["p"])], cpu()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "job `f` depends on `p`, which is not in the job list"
        );
        let jobs = [
            job("x", &[]),
            job("a", &["c"]),
            job("b", &["a"]),
            job("c", &["b", "x"]),
        ];
        let e = check(&jobs, cpu()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "jobs depend on each other in a cycle: a -> c -> b -> a"
        );
        assert!(check(&[job("self", &["self"])], cpu()).is_err());
        let mut twin = job("b", &[]);
        twin.dir = "jobs/a".into();
        let e = check(&[job("a", &[]), twin], cpu()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "jobs `a` and `b` share the folder jobs/a; each job needs its own"
        );
        let mut gpu = job("g", &[]);
        gpu.needs_gpu = true;
        let e = check(std::slice::from_ref(&gpu), vec![Device::Cpu]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "job `g` needs a GPU, but the devices (cpu) include no `cuda:<index>`"
        );
        assert!(check(&[gpu], vec![Device::Cpu, Device::Cuda(0)]).is_ok());
    }

    #[test]
    fn a_diamond_is_not_a_cycle_and_dependents_are_found() {
        let jobs = [
            job("p", &[]),
            job("a", &["p"]),
            job("b", &["p", "p"]),
            job("m", &["a", "b"]),
        ];
        let index: HashMap<&str, usize> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.id.as_str(), i))
            .collect();
        assert_eq!(find_cycle(&jobs, &index), None);
        let deps = dependents(&jobs, &index);
        assert_eq!(deps[0], [1, 2]);
        assert_eq!(deps[1], [3]);
        let mut states = vec![
            State::Pending {
                next_attempt: 1,
                last: None,
                oom_shared: None,
            };
            4
        ];
        states[1] = State::Running;
        let seen = std::cell::RefCell::new(Vec::new());
        let send = |e: SweepEvent| {
            if let SweepEvent::JobFinished { job, status, .. } = e {
                seen.borrow_mut().push((job, status));
            }
        };
        block_dependents(0, &deps, &mut states, &jobs, &send);
        // `a` is running and keeps going; `b` and, through it, `m` are blocked by `p`.
        let by_p = JobStatus::Blocked { by: "p".into() };
        assert_eq!(
            seen.into_inner(),
            [("b".to_string(), by_p.clone()), ("m".to_string(), by_p)]
        );
        assert!(matches!(states[1], State::Running));
    }

    #[test]
    fn the_worker_command_carries_the_slot() {
        let slot = Slot {
            index: 0,
            device: Device::Cuda(3),
            threads: 2,
        };
        let mut w = WorkerCommand::program("/bin/worker");
        w.args_before_job_file = vec!["worker".into()];
        w.device_flag = Some("--device".into());
        let cmd = w.command(std::path::Path::new("j.yaml"), &slot);
        let std = cmd.as_std();
        let args: Vec<_> = std
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args, ["worker", "j.yaml", "--device", "cuda:0"]);
        let env: HashMap<_, _> = std
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        assert_eq!(env["CUDA_VISIBLE_DEVICES"].as_deref(), Some("3"));
        assert_eq!(env["RAYON_NUM_THREADS"].as_deref(), Some("2"));
        let me = WorkerCommand::current_exe().unwrap();
        assert_eq!(me.args_before_job_file, ["worker"]);
        assert_eq!(
            me.device_flag.as_deref(),
            Some("--device"),
            "the slot's device overrides the job file's"
        );
    }
}
