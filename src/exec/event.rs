//! Everything a run tells the outside world: [`SweepEvent`] (sent over a channel, consumed by the
//! caller's recorder and by the [`Reporter`](super::Reporter)), the [`Progress`] parsed from a
//! worker's stdout, and the [`RunSummary`] the run returns.
//!
//! Events serialize to JSON (tagged by `"event"`, kebab-case) so that a machine-readable output
//! comes from the same stream the bars do; times are Unix seconds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::class::ExitClass;
use super::device::{Device, Slot};

/// Seconds since the Unix epoch (0 for a clock set before 1970).
pub fn unix_s(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Progress read from one line of a worker's stdout (the protocol's JSON events). Any field
/// may be missing; a line that is not a JSON object gives no progress (it still feeds the
/// watchdog and the log).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Progress {
    /// The line's `"event"` tag (`start`, `step`, `val`, `case`, `end`, …).
    pub event: Option<String>,
    pub step: Option<u64>,
    pub steps: Option<u64>,
    pub loss: Option<f64>,
    /// The worker's own estimate of seconds left.
    pub eta_s: Option<f64>,
}

impl Progress {
    /// Parses a JSON line such as
    /// `{"event":"step","step":10,"steps":250,"loss":0.61,"eta_s":42.0}`; test-case events
    /// (`index` of `count`) count as steps too, so evaluation shows progress.
    pub fn parse(line: &str) -> Option<Progress> {
        let value: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        let obj = value.as_object()?;
        let uint = |k: &str| obj.get(k).and_then(serde_json::Value::as_u64);
        let float = |k: &str| {
            obj.get(k)
                .and_then(serde_json::Value::as_f64)
                .filter(|x| x.is_finite())
        };
        Some(Progress {
            event: obj.get("event").and_then(|e| e.as_str()).map(String::from),
            step: uint("step").or_else(|| uint("index").map(|i| i + 1)),
            steps: uint("steps").or_else(|| uint("count")),
            loss: float("loss"),
            eta_s: float("eta_s"),
        })
    }
}

/// Why a run stopped dispatching before every job ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CancelReason {
    /// Ctrl-C (or SIGTERM) once, or [`Cancel::stop`](super::Cancel::stop): workers get SIGTERM
    /// and the grace period.
    Stop,
    /// A second Ctrl-C, or [`Cancel::kill`](super::Cancel::kill): workers get SIGKILL now.
    Kill,
}

/// How a job ended for this run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum JobStatus {
    /// It ran; `class` is its last attempt's (so `ok` means done).
    Finished { class: ExitClass, attempts: u32 },
    /// A dependency did not finish `ok`, so it never started. `by` is the job that failed.
    Blocked { by: String },
    /// The run was cancelled before it started.
    NotRun,
    /// Another run of the same jobs has it: `done` when that run finished it already (its
    /// dependents may run here), otherwise it holds the job's lease (and its dependents are
    /// left to it too). Not a failure of this run.
    Elsewhere { detail: String, done: bool },
}

impl JobStatus {
    pub fn is_ok(&self) -> bool {
        matches!(
            self,
            JobStatus::Finished {
                class: ExitClass::Ok,
                ..
            }
        )
    }

    /// Its result exists: finished `ok` here, or done by another run.
    pub fn is_done(&self) -> bool {
        self.is_ok() || matches!(self, JobStatus::Elsewhere { done: true, .. })
    }
}

/// One thing that happened in a run, in the order it happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "event")]
pub enum SweepEvent {
    /// First event: the job count, the pool, and the host every attempt runs on.
    RunStarted {
        jobs: usize,
        slots: Vec<Slot>,
        host: String,
    },
    /// An attempt's worker process started (its lease is written, its log opened).
    AttemptStarted {
        job: String,
        label: String,
        /// 1-based.
        attempt: u32,
        slot: usize,
        device: Device,
        pid: u32,
        /// Where the worker's stdout goes (stderr is beside it, `.stderr.log`).
        log: PathBuf,
        #[serde(serialize_with = "ser_time")]
        started: SystemTime,
    },
    /// A progress line from a running attempt.
    Progress {
        job: String,
        slot: usize,
        attempt: u32,
        progress: Progress,
    },
    /// An attempt ended. Every attempt gets exactly one of these, also one whose worker could
    /// not be started (no `AttemptStarted` then; `detail` says why); `retry` says whether the
    /// job goes back into the queue.
    AttemptFinished {
        job: String,
        label: String,
        attempt: u32,
        slot: usize,
        device: Device,
        host: String,
        class: ExitClass,
        /// Why, for anything but a plain `ok`: the exit code, signal, limit or start error.
        detail: Option<String>,
        exit_code: Option<i32>,
        signal: Option<i32>,
        #[serde(serialize_with = "ser_time")]
        started: SystemTime,
        #[serde(serialize_with = "ser_time")]
        ended: SystemTime,
        retry: bool,
        /// What ran it, as the worker's `start` event said (`None` if it said nothing).
        ran_on: Option<String>,
        /// The most GPU memory the worker's process held, in MiB (sampled on GPU slots).
        peak_gpu_mb: Option<f64>,
    },
    /// A job reached its final status (ok, a failure class after its last attempt, blocked or
    /// not run). Every job gets exactly one of these.
    JobFinished {
        job: String,
        label: String,
        status: JobStatus,
    },
    /// Dispatching stopped (first Ctrl-C), or running workers are being killed (second).
    Cancelling { reason: CancelReason },
    /// Last event.
    RunFinished { summary: RunSummary },
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(unix_s(*t))
}

/// What a run did, job by job.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunSummary {
    /// Every job id with its final status.
    pub jobs: BTreeMap<String, JobStatus>,
    /// Attempts started, all jobs together.
    pub attempts: u32,
    /// Set when the run was cancelled (the strongest request).
    pub cancelled: Option<CancelReason>,
    #[serde(serialize_with = "ser_duration")]
    pub elapsed: Duration,
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl RunSummary {
    pub fn ok(&self) -> usize {
        self.jobs.values().filter(|s| s.is_ok()).count()
    }

    /// Jobs that ran and ended in a class other than `ok`.
    pub fn failed(&self) -> usize {
        self.jobs
            .values()
            .filter(|s| matches!(s, JobStatus::Finished { .. }) && !s.is_ok())
            .count()
    }

    pub fn blocked(&self) -> usize {
        self.jobs
            .values()
            .filter(|s| matches!(s, JobStatus::Blocked { .. }))
            .count()
    }

    pub fn not_run(&self) -> usize {
        self.jobs
            .values()
            .filter(|s| matches!(s, JobStatus::NotRun))
            .count()
    }

    /// Jobs another run finished or holds.
    pub fn elsewhere(&self) -> usize {
        self.jobs
            .values()
            .filter(|s| matches!(s, JobStatus::Elsewhere { .. }))
            .count()
    }

    /// Every job finished `ok`.
    pub fn all_ok(&self) -> bool {
        self.ok() == self.jobs.len()
    }

    /// Every job finished `ok` here or is another run's (done or held by it): nothing failed,
    /// nothing was blocked or left out.
    pub fn nothing_wrong(&self) -> bool {
        self.ok() + self.elsewhere() == self.jobs.len()
    }

    pub fn status(&self, job: &str) -> Option<&JobStatus> {
        self.jobs.get(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_read_from_protocol_lines() {
        let p = Progress::parse(
            r#"{"event":"step","view":"axial","step":10,"steps":250,"loss":0.61,"lr":0.001,"step_s":0.2,"eta_s":48.0}"#,
        )
        .unwrap();
        assert_eq!(p.event.as_deref(), Some("step"));
        assert_eq!((p.step, p.steps), (Some(10), Some(250)));
        assert_eq!(p.loss, Some(0.61));
        assert_eq!(p.eta_s, Some(48.0));
        let case = Progress::parse(r#"{"event":"case","case":"c7","index":2,"count":5}"#).unwrap();
        assert_eq!((case.step, case.steps, case.loss), (Some(3), Some(5), None));
        let nan = Progress::parse(r#"{"event":"step","step":1,"loss":null}"#).unwrap();
        assert_eq!(nan.loss, None);
        assert_eq!(Progress::parse("epoch 3 loss 0.5"), None);
        assert_eq!(Progress::parse("[1, 2]"), None);
    }

    #[test]
    fn summary_counts_each_status() {
        let mut s = RunSummary::default();
        let fin = |class| JobStatus::Finished { class, attempts: 1 };
        s.jobs.insert("a".into(), fin(ExitClass::Ok));
        s.jobs.insert("b".into(), fin(ExitClass::Nan));
        s.jobs
            .insert("c".into(), JobStatus::Blocked { by: "b".into() });
        s.jobs.insert("d".into(), JobStatus::NotRun);
        s.jobs.insert("e".into(), fin(ExitClass::Ok));
        assert_eq!((s.ok(), s.failed(), s.blocked(), s.not_run()), (2, 1, 1, 1));
        assert!(!s.all_ok());
        s.jobs.retain(|_, st| st.is_ok());
        assert!(s.all_ok());
    }

    #[test]
    fn events_serialize_as_tagged_json() {
        let e = SweepEvent::JobFinished {
            job: "j1".into(),
            label: "lora-c r4".into(),
            status: JobStatus::Blocked { by: "p0".into() },
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"job-finished","job":"j1","label":"lora-c r4","status":{"status":"blocked","by":"p0"}}"#
        );
        let t = UNIX_EPOCH + Duration::from_millis(1500);
        let e = SweepEvent::AttemptStarted {
            job: "j".into(),
            label: "l".into(),
            attempt: 1,
            slot: 0,
            device: Device::Cuda(1),
            pid: 7,
            log: "x/attempt-1.log".into(),
            started: t,
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(r#""device":"cuda:1""#), "{json}");
        assert!(json.contains(r#""started":1.5"#), "{json}");
    }
}
