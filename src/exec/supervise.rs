//! One attempt of one job: start the worker in its own process group on a slot, stream its
//! stdout to the log and into progress events, enforce the wall-clock timeout and the
//! no-progress watchdog, obey cancellation, and classify the end.
//!
//! Design (nextest's executor): one task per attempt `select!`s over the child's exit, its next
//! stdout line, the two timers and the cancel channel. Stopping a worker is always the same
//! sequence on its whole process group: SIGTERM, the grace period (still draining stdout, so a
//! worker that logs while stopping cannot block on a full pipe), then SIGKILL. After the leader
//! exits, whatever it left in its group is killed too: a worker never outlives its attempt.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use super::class::{ExitClass, KillReason, ProcessEnd, TimeoutKind, classify};
use super::device::Slot;
use super::event::{CancelReason, Progress, SweepEvent};
use super::lease::{self, Lease};
use super::scheduler::{ExecJob, RESULT_FILE, WorkerCommand};

/// The limits of one attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub timeout: Option<Duration>,
    pub watchdog: Option<Duration>,
    pub grace: Duration,
}

/// Samples a worker's GPU memory (GPU slots only); `None` on CPU slots.
pub(crate) type GpuSampler = Option<std::sync::Arc<dyn crate::nn::gpu::GpuQuery>>;

/// How an attempt ended.
#[derive(Debug, Clone)]
pub(crate) struct AttemptReport {
    pub class: ExitClass,
    pub detail: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub started: SystemTime,
    pub ended: SystemTime,
    /// Set when the job's lease is held by another live orchestrator: nothing was started,
    /// and the job is that run's, not a failure of this one.
    pub held: Option<Lease>,
    /// The worker's own words on what ran it (its `start` event's `ran_on`).
    pub ran_on: Option<String>,
    /// The most GPU memory the worker held, in MiB, when sampled.
    pub peak_gpu_mb: Option<f64>,
}

impl AttemptReport {
    pub(crate) fn not_started(started: SystemTime, detail: String) -> Self {
        AttemptReport {
            class: ExitClass::Failed,
            detail: Some(detail),
            exit_code: None,
            signal: None,
            started,
            ended: SystemTime::now(),
            held: None,
            ran_on: None,
            peak_gpu_mb: None,
        }
    }
}

/// How often a GPU attempt's memory is sampled.
const GPU_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The stdout log of an attempt; its stderr goes to the same name with `.stderr.log`.
pub(crate) fn log_paths(dir: &Path, attempt: u32) -> (PathBuf, PathBuf) {
    crate::train::files::attempt_logs(dir, attempt)
}

/// Runs one attempt to its end. Never fails: anything that goes wrong is the attempt's class.
// Each argument is one independent input of the attempt's task (its job, slot, worker, limits,
// GPU sampler, cancel and event channels); a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_attempt(
    job: &ExecJob,
    attempt: u32,
    slot: &Slot,
    worker: &WorkerCommand,
    limits: Limits,
    gpu: GpuSampler,
    mut cancel: watch::Receiver<Option<CancelReason>>,
    events: &mpsc::UnboundedSender<SweepEvent>,
) -> AttemptReport {
    let started = SystemTime::now();
    match prepare(job, attempt) {
        Ok(Ok(())) => {}
        Ok(Err(held)) => {
            let why = format!(
                "job is leased by pid {} on host {} (attempt {})",
                held.owner_pid, held.host, held.attempt
            );
            let mut report = AttemptReport::not_started(started, why);
            report.held = Some(held);
            return report;
        }
        Err(e) => return AttemptReport::not_started(started, e.to_string()),
    }
    let report = supervise(
        job,
        attempt,
        slot,
        worker,
        limits,
        gpu,
        &mut cancel,
        events,
        started,
    )
    .await;
    if let Err(e) = lease::release(&job.dir) {
        tracing::warn!(job = %job.id, "cannot release the lease: {e}");
    }
    report
}

/// Creates the job folder, takes the lease and then sets aside a `result.json` from an
/// earlier run (it would make a crashed attempt look finished). The lease comes first: a
/// job another run holds keeps its folder untouched.
fn prepare(job: &ExecJob, attempt: u32) -> Result<Result<(), Lease>, super::ExecError> {
    use super::ExecError;
    fs::create_dir_all(&job.dir).map_err(ExecError::io(&job.dir))?;
    if let Err(held) = lease::acquire(&job.dir, &Lease::new_owned(&job.id, attempt))? {
        return Ok(Err(held));
    }
    let result = job.dir.join(RESULT_FILE);
    if result.exists() {
        let aside = job.dir.join(crate::train::files::RESULT_ASIDE);
        if let Err(e) = fs::rename(&result, &aside) {
            let _ = lease::release(&job.dir);
            return Err(ExecError::io(&result)(e));
        }
    }
    Ok(Ok(()))
}

#[allow(clippy::too_many_arguments)]
async fn supervise(
    job: &ExecJob,
    attempt: u32,
    slot: &Slot,
    worker: &WorkerCommand,
    limits: Limits,
    gpu: GpuSampler,
    cancel: &mut watch::Receiver<Option<CancelReason>>,
    events: &mpsc::UnboundedSender<SweepEvent>,
    started: SystemTime,
) -> AttemptReport {
    let (log_path, err_path) = log_paths(&job.dir, attempt);
    let mut log = match fs::File::create(&log_path) {
        Ok(f) => f,
        Err(e) => {
            return AttemptReport::not_started(started, format!("{}: {e}", log_path.display()));
        }
    };
    let stderr = match fs::File::create(&err_path) {
        Ok(f) => f,
        Err(e) => {
            return AttemptReport::not_started(started, format!("{}: {e}", err_path.display()));
        }
    };
    let mut cmd = worker.command(&job.job_file, slot);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .process_group(0)
        .kill_on_drop(false);
    set_parent_death_signal(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let why = format!("cannot start worker {}: {e}", worker.program.display());
            return AttemptReport::not_started(started, why);
        }
    };
    let pid = child.id().unwrap_or(0);
    let pgid = pid as libc::pid_t;
    let mut lease = Lease::new_owned(&job.id, attempt);
    lease.worker_pid = Some(pid);
    if let Err(e) = lease::update(&job.dir, &lease) {
        tracing::warn!(job = %job.id, "cannot record the worker pid in the lease: {e}");
    }
    let _ = events.send(SweepEvent::AttemptStarted {
        job: job.id.clone(),
        label: job.label.clone(),
        attempt,
        slot: slot.index,
        device: slot.device,
        pid,
        log: log_path.clone(),
        started,
    });

    // Every stdout line goes to the log; the protocol's JSON lines also become progress.
    // The error of the worker's `end` event, to say why an attempt failed beyond its code.
    let mut worker_error: Option<String> = None;
    let mut ran_on: Option<String> = None;
    let mut on_line = |bytes: &[u8]| {
        let _ = log.write_all(bytes).and_then(|()| log.write_all(b"\n"));
        let line = String::from_utf8_lossy(bytes);
        if ran_on.is_none()
            && line.contains("\"ran_on\"")
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["event"] == "start"
            && let Ok(r) = serde_json::from_value::<crate::nn::device::RanOn>(v["ran_on"].clone())
        {
            ran_on = Some(r.to_string());
        }
        if line.contains("\"end\"")
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["event"] == "end"
            && let Some(e) = v["error"].as_str()
        {
            worker_error = Some(e.to_string());
        }
        if let Some(progress) = Progress::parse(&line) {
            let _ = events.send(SweepEvent::Progress {
                job: job.id.clone(),
                slot: slot.index,
                attempt,
                progress,
            });
        }
    };
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let t0 = Instant::now();
    let wall_deadline = limits.timeout.map_or(far, |t| t0 + t);
    let mut last_line = t0;
    let mut killed: Option<KillReason> = None;
    let mut kill_at: Option<Instant> = None;
    let mut stdout_open = true;
    let mut cancel_open = true;
    let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).split(b'\n');

    // A cancel raised before the worker started applies at once.
    let pending_cancel = *cancel.borrow_and_update();
    if let Some(reason) = pending_cancel {
        killed = Some(KillReason::Cancelled);
        kill_at = Some(stop_group(pgid, reason, limits.grace));
    }

    let mut peak_gpu_mb: Option<f64> = None;
    let mut sample_at = t0;
    let status = loop {
        let watchdog_at = limits.watchdog.map_or(far, |w| last_line + w);
        tokio::select! {
            status = child.wait() => break status,
            () = sleep_until(sample_at), if gpu.is_some() => {
                sample_at = Instant::now() + GPU_SAMPLE_EVERY;
                if let Some(q) = gpu.clone() {
                    // nvidia-smi blocks for a while: off the async threads.
                    let used = tokio::task::spawn_blocking(move || q.processes())
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .and_then(|ps| ps.into_iter().find(|p| p.pid == pid))
                        .map(|p| p.used_mb);
                    if let Some(mb) = used {
                        peak_gpu_mb = Some(peak_gpu_mb.map_or(mb, |m: f64| m.max(mb)));
                    }
                }
            }
            line = lines.next_segment(), if stdout_open => match line {
                Ok(Some(bytes)) => {
                    last_line = Instant::now();
                    on_line(&bytes);
                }
                Ok(None) | Err(_) => stdout_open = false,
            },
            () = sleep_until(wall_deadline), if killed.is_none() && limits.timeout.is_some() => {
                killed = Some(KillReason::Timeout(TimeoutKind::wall_clock(limits.timeout.unwrap_or_default())));
                kill_at = Some(stop_group(pgid, CancelReason::Stop, limits.grace));
            }
            () = sleep_until(watchdog_at), if killed.is_none() && limits.watchdog.is_some() => {
                killed = Some(KillReason::Timeout(TimeoutKind::no_progress(limits.watchdog.unwrap_or_default())));
                kill_at = Some(stop_group(pgid, CancelReason::Stop, limits.grace));
            }
            () = sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() => {
                signal_group(pgid, libc::SIGKILL);
                kill_at = None;
            }
            changed = cancel.changed(), if cancel_open => match changed {
                Ok(()) => {
                    let level = *cancel.borrow_and_update();
                    if let Some(reason) = level {
                        // A timeout kill already under way keeps its class; a kill request
                        // still shortens its grace.
                        killed.get_or_insert(KillReason::Cancelled);
                        if reason == CancelReason::Kill || kill_at.is_none() {
                            kill_at = Some(stop_group(pgid, reason, limits.grace));
                        }
                    }
                }
                Err(_) => cancel_open = false,
            },
        }
    };
    // Whatever the worker left in its group goes with it.
    signal_group(pgid, libc::SIGKILL);
    // Drain what the worker printed last (bounded: the group is dead, so EOF comes quickly).
    if stdout_open {
        let drain = async {
            while let Ok(Some(bytes)) = lines.next_segment().await {
                on_line(&bytes);
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
    }
    let ended = SystemTime::now();
    let (code, signal) = match &status {
        Ok(st) => {
            use std::os::unix::process::ExitStatusExt;
            (st.code(), st.signal())
        }
        Err(_) => (None, None),
    };
    let end = ProcessEnd {
        code,
        signal,
        killed,
        result_present: job.dir.join(RESULT_FILE).is_file(),
    };
    let (class, mut detail) = classify(&end);
    // Our own kill already says why; otherwise the worker's words follow the exit code.
    if end.killed.is_none()
        && let Some(e) = worker_error
    {
        detail = Some(match detail {
            Some(d) => format!("{d}: {e}"),
            None => e,
        });
    }
    if let Err(e) = status {
        detail = Some(format!("cannot wait for the worker: {e}"));
    }
    AttemptReport {
        class,
        detail,
        exit_code: code,
        signal,
        started,
        ended,
        held: None,
        ran_on,
        peak_gpu_mb,
    }
}

/// Sends SIGTERM (a stop, with the grace period) or SIGKILL (a kill) to the group; returns when
/// SIGKILL is due.
fn stop_group(pgid: libc::pid_t, reason: CancelReason, grace: Duration) -> Instant {
    match reason {
        CancelReason::Stop => {
            signal_group(pgid, libc::SIGTERM);
            Instant::now() + grace
        }
        CancelReason::Kill => {
            signal_group(pgid, libc::SIGKILL);
            // Nothing left to escalate to; the deadline just re-sends SIGKILL.
            Instant::now() + grace
        }
    }
}

fn signal_group(pgid: libc::pid_t, sig: libc::c_int) {
    if pgid > 0 {
        // SAFETY: killpg only sends a signal; ESRCH (group gone) is expected and ignored.
        unsafe {
            libc::killpg(pgid, sig);
        }
    }
}

/// Asks the kernel to send the worker SIGTERM if the orchestrator dies (Linux), so a killed
/// orchestrator does not leave workers running under a lease nobody watches.
fn set_parent_death_signal(cmd: &mut tokio::process::Command) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // async-signal-safe functions (prctl, getppid, _exit).
        let parent = unsafe { libc::getpid() };
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(ExitClass::Interrupted.code().into());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}
