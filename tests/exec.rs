//! The scheduler against real worker processes: a bash fixture worker that succeeds, fails,
//! exits with the nan/oom codes, crashes, hangs, ignores SIGTERM or prints progress, selected
//! per job by the first line of its job file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ranksweep::exec::{
    self, Cancel, CancelReason, Device, ExecJob, ExitClass, JobStatus, RunConfig, RunSummary,
    SlotConfig, SweepEvent, WorkerCommand, lease,
};
use tokio::sync::mpsc;

/// The fixture worker. `$1` is the job file, whose first line is the mode; `--device X` may
/// follow. It records its arguments and environment in `env.txt` beside the job file.
const WORKER: &str = r#"#!/bin/bash
ulimit -c 0
job="$1"; shift
dir="$(dirname "$job")"
mode="$(head -n1 "$job")"
{
  echo "args=$*"
  echo "cuda=${CUDA_VISIBLE_DEVICES-unset}"
  echo "rayon=${RAYON_NUM_THREADS-unset}"
  echo "device=${RANKSWEEP_DEVICE-unset}"
} > "$dir/env.txt"
echo $$ >> "$dir/pids"
ok() {
  echo '{"event":"end","class":"ok"}'
  echo '{"dice":0.5}' > "$dir/result.json.tmp" && mv "$dir/result.json.tmp" "$dir/result.json"
  exit 0
}
case "$mode" in
  ok)
    echo '{"event":"start","steps":2}'
    echo 'a line that is not json'
    echo '{"event":"step","step":1,"steps":2,"loss":0.5,"eta_s":1.0}'
    echo '{"event":"step","step":2,"steps":2,"loss":0.25,"eta_s":0.0}'
    ok ;;
  slow)
    echo "start $(date +%s.%N)" > "$dir/times"
    sleep 0.25
    echo "end $(date +%s.%N)" >> "$dir/times"
    ok ;;
  fail) echo "no such dataset" >&2; exit 1 ;;
  nan) exit 3 ;;
  oom) exit 4 ;;
  oom-once) if [ -e "$dir/tried" ]; then ok; else touch "$dir/tried"; exit 4; fi ;;
  no-result) exit 0 ;;
  weird) exit 42 ;;
  crash) kill -SEGV $$ ;;
  hang)
    sleep 30 &
    echo $! > "$dir/grandchild"
    touch "$dir/started"
    wait ;;
  chatty)
    touch "$dir/started"
    while true; do echo '{"event":"step","step":1,"steps":9}'; sleep 0.05; done ;;
  stubborn)
    trap '' TERM
    touch "$dir/started"
    sleep 30 ;;
  *) echo "unknown mode $mode" >&2; exit 1 ;;
esac
"#;

struct Fixture {
    tmp: tempfile::TempDir,
    script: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("worker.sh");
        std::fs::write(&script, WORKER).unwrap();
        Fixture { tmp, script }
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.tmp.path().join("jobs").join(id)
    }

    fn job(&self, id: &str, mode: &str, deps: &[&str]) -> ExecJob {
        let dir = self.dir(id);
        std::fs::create_dir_all(&dir).unwrap();
        let job_file = dir.join("job.txt");
        std::fs::write(&job_file, format!("{mode}\n")).unwrap();
        ExecJob {
            id: id.into(),
            deps: deps.iter().map(|d| d.to_string()).collect(),
            job_file,
            dir,
            needs_gpu: false,
            label: format!("{id} ({mode})"),
            gpu_mem_mb: None,
        }
    }

    /// Runs the script through bash (exec'ing a file just written can fail with ETXTBSY while
    /// other test threads fork).
    fn worker(&self) -> WorkerCommand {
        WorkerCommand {
            program: "/bin/bash".into(),
            args_before_job_file: vec![self.script.display().to_string()],
            device_flag: Some("--device".into()),
        }
    }

    fn config(&self, devices: &[Device], slots_per_device: usize) -> RunConfig {
        let mut c = RunConfig::new(
            SlotConfig {
                devices: devices.to_vec(),
                slots_per_device,
                threads_per_job: 3,
            },
            self.worker(),
        );
        c.grace = Duration::from_millis(500);
        // Independent of the host's nvidia-smi; the admission tests set their own.
        c.gpu = None;
        c
    }

    fn read(&self, id: &str, file: &str) -> String {
        std::fs::read_to_string(self.dir(id).join(file)).unwrap_or_default()
    }
}

async fn run_all(jobs: Vec<ExecJob>, config: RunConfig) -> (RunSummary, Vec<SweepEvent>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let summary = exec::run(jobs, config, tx).await.unwrap();
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (summary, events)
}

fn finished(class: ExitClass, attempts: u32) -> JobStatus {
    JobStatus::Finished { class, attempts }
}

/// (attempt, class, retry) of each attempt of `job`, in order.
fn attempts(events: &[SweepEvent], job: &str) -> Vec<(u32, ExitClass, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            SweepEvent::AttemptFinished {
                job: j,
                attempt,
                class,
                retry,
                ..
            } if j == job => Some((*attempt, *class, *retry)),
            _ => None,
        })
        .collect()
}

fn detail(events: &[SweepEvent], job: &str) -> String {
    events
        .iter()
        .rev()
        .find_map(|e| match e {
            SweepEvent::AttemptFinished { job: j, detail, .. } if j == job => detail.clone(),
            _ => None,
        })
        .unwrap_or_default()
}

fn pid_alive(pid: u32) -> bool {
    lease::pid_alive(pid)
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
}

#[tokio::test]
async fn exits_are_classified_by_code_and_sentinel() {
    let fx = Fixture::new();
    let modes = [
        ("a", "ok", ExitClass::Ok),
        ("b", "fail", ExitClass::Failed),
        ("c", "nan", ExitClass::Nan),
        ("d", "oom", ExitClass::Oom),
        ("e", "no-result", ExitClass::Failed),
        ("f", "weird", ExitClass::Failed),
        ("g", "crash", ExitClass::Failed),
    ];
    let jobs = modes.iter().map(|(id, m, _)| fx.job(id, m, &[])).collect();
    let (summary, events) = run_all(jobs, fx.config(&[Device::Cpu], 4)).await;
    for (id, mode, class) in modes {
        assert_eq!(summary.status(id), Some(&finished(class, 1)), "{mode}");
    }
    assert_eq!(summary.attempts, 7);
    assert_eq!(detail(&events, "e"), "exited 0 without writing result.json");
    assert_eq!(
        detail(&events, "f"),
        "exit code 42, which is not a worker class"
    );
    assert_eq!(detail(&events, "g"), "killed by signal 11");
    assert_eq!(detail(&events, "c"), "exit code 3 (nan)");
    // stdout went to the attempt log, stderr beside it, and progress lines became events.
    let log = fx.read("a", "attempt-1.log");
    assert_eq!(log.lines().count(), 5, "{log}");
    assert!(log.contains("a line that is not json"));
    assert_eq!(fx.read("b", "attempt-1.stderr.log"), "no such dataset\n");
    let steps: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            SweepEvent::Progress { job, progress, .. } if job == "a" => {
                Some((progress.step, progress.loss))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        [
            (None, None),
            (Some(1), Some(0.5)),
            (Some(2), Some(0.25)),
            (None, None)
        ]
    );
    // Events open and close the run; every job finishes exactly once.
    assert!(matches!(events[0], SweepEvent::RunStarted { jobs: 7, .. }));
    assert!(matches!(
        events.last(),
        Some(SweepEvent::RunFinished { .. })
    ));
    let job_finished = events
        .iter()
        .filter(|e| matches!(e, SweepEvent::JobFinished { .. }))
        .count();
    assert_eq!(job_finished, 7);
    // Leases are gone once the attempts end.
    for (id, ..) in modes {
        assert!(!fx.dir(id).join("lease.json").exists(), "{id}");
    }
}

#[tokio::test]
async fn only_retryable_classes_are_retried() {
    let fx = Fixture::new();
    let jobs = vec![
        fx.job("oom", "oom", &[]),
        fx.job("flaky", "oom-once", &[]),
        fx.job("fail", "fail", &[]),
        fx.job("nan", "nan", &[]),
    ];
    let mut config = fx.config(&[Device::Cpu], 2);
    config.retries = 2;
    let (summary, events) = run_all(jobs, config).await;
    assert_eq!(summary.status("oom"), Some(&finished(ExitClass::Oom, 3)));
    assert_eq!(
        attempts(&events, "oom"),
        [
            (1, ExitClass::Oom, true),
            (2, ExitClass::Oom, true),
            (3, ExitClass::Oom, false)
        ]
    );
    assert_eq!(summary.status("flaky"), Some(&finished(ExitClass::Ok, 2)));
    assert_eq!(
        attempts(&events, "flaky"),
        [(1, ExitClass::Oom, true), (2, ExitClass::Ok, false)]
    );
    assert_eq!(attempts(&events, "fail"), [(1, ExitClass::Failed, false)]);
    assert_eq!(attempts(&events, "nan"), [(1, ExitClass::Nan, false)]);
    assert_eq!(summary.attempts, 3 + 2 + 1 + 1);
    // Each attempt has its own log.
    assert!(fx.dir("flaky").join("attempt-2.log").exists());
}

#[tokio::test]
async fn a_failure_blocks_its_dependents_and_nothing_else() {
    let fx = Fixture::new();
    let jobs = vec![
        fx.job("pre", "fail", &[]),
        fx.job("ft1", "ok", &["pre"]),
        fx.job("ft2", "ok", &["pre"]),
        fx.job("eval", "ok", &["ft1", "other"]),
        fx.job("other", "ok", &[]),
        fx.job("after-other", "ok", &["other"]),
    ];
    let (summary, _) = run_all(jobs, fx.config(&[Device::Cpu], 1)).await;
    let blocked = JobStatus::Blocked { by: "pre".into() };
    assert_eq!(summary.status("pre"), Some(&finished(ExitClass::Failed, 1)));
    for id in ["ft1", "ft2", "eval"] {
        assert_eq!(summary.status(id), Some(&blocked), "{id}");
        assert!(!fx.dir(id).join("env.txt").exists(), "{id} never started");
    }
    assert_eq!(summary.status("other"), Some(&finished(ExitClass::Ok, 1)));
    assert_eq!(
        summary.status("after-other"),
        Some(&finished(ExitClass::Ok, 1))
    );
    assert_eq!(
        (summary.failed(), summary.blocked(), summary.ok()),
        (1, 3, 2)
    );
}

#[tokio::test]
async fn dependencies_finish_before_dependents_start() {
    let fx = Fixture::new();
    let jobs = vec![fx.job("ft", "slow", &["pre"]), fx.job("pre", "slow", &[])];
    let (summary, _) = run_all(jobs, fx.config(&[Device::Cpu], 2)).await;
    assert!(summary.all_ok());
    let time = |id: &str, what: &str| -> f64 {
        let times = fx.read(id, "times");
        let line = times.lines().find(|l| l.starts_with(what)).unwrap();
        line[what.len() + 1..].parse().unwrap()
    };
    assert!(time("pre", "end") <= time("ft", "start"));
}

#[tokio::test]
async fn slots_are_never_oversubscribed_and_workers_are_pinned() {
    let fx = Fixture::new();
    let ids: Vec<String> = (0..6).map(|i| format!("j{i}")).collect();
    let jobs = ids.iter().map(|id| fx.job(id, "slow", &[])).collect();
    let devices = [Device::Cuda(0), Device::Cuda(1)];
    let (summary, _) = run_all(jobs, fx.config(&devices, 1)).await;
    assert!(summary.all_ok(), "{summary:?}");
    let mut spans = Vec::new();
    for id in &ids {
        let env = fx.read(id, "env.txt");
        let field = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap()
                .to_string()
        };
        assert_eq!(field("rayon"), "3");
        assert_eq!(
            field("args"),
            "--device cuda:0",
            "a pinned GPU is the worker's cuda:0"
        );
        assert_eq!(field("device"), "cuda:0");
        let gpu = field("cuda");
        assert!(gpu == "0" || gpu == "1", "{gpu}");
        let times = fx.read(id, "times");
        let t: Vec<f64> = times
            .lines()
            .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
            .collect();
        spans.push((t[0], t[1], gpu));
    }
    // Never two workers at once on one GPU ...
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            let overlap = b.0 < a.1 && a.0 < b.1;
            assert!(
                !(overlap && a.2 == b.2),
                "two jobs overlapped on cuda:{}",
                a.2
            );
        }
    }
    // ... and so at most two at once: sweep the starts and ends in time order.
    let mut edges: Vec<(f64, i32)> = spans.iter().flat_map(|s| [(s.0, 1), (s.1, -1)]).collect();
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0, 0);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    assert_eq!(most, 2, "both slots were used, never more");
}

#[tokio::test]
async fn cpu_workers_see_no_gpu() {
    let fx = Fixture::new();
    let mut config = fx.config(&[Device::Cpu], 1);
    config.worker.device_flag = None;
    let (summary, _) = run_all(vec![fx.job("a", "ok", &[])], config).await;
    assert!(summary.all_ok());
    assert_eq!(
        fx.read("a", "env.txt"),
        "args=\ncuda=\nrayon=3\ndevice=cpu\n",
        "CUDA_VISIBLE_DEVICES is set, and empty"
    );
}

#[tokio::test]
async fn a_silent_worker_is_killed_by_the_watchdog_with_its_group() {
    let fx = Fixture::new();
    let mut config = fx.config(&[Device::Cpu], 2);
    // The chatty worker prints every 50 ms, so it outlives the watchdog; the silent one not.
    config.watchdog = Some(Duration::from_millis(1000));
    config.timeout = Some(Duration::from_millis(1500));
    let t0 = Instant::now();
    let jobs = vec![fx.job("hang", "hang", &[]), fx.job("chatty", "chatty", &[])];
    let (summary, events) = run_all(jobs, config).await;
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(
        summary.status("hang"),
        Some(&finished(ExitClass::Timeout, 1))
    );
    assert_eq!(detail(&events, "hang"), "printed no progress line for 1s");
    // The chatty worker prints every 50 ms: only the wall clock stops it.
    assert_eq!(
        summary.status("chatty"),
        Some(&finished(ExitClass::Timeout, 1))
    );
    assert_eq!(
        detail(&events, "chatty"),
        "ran past the wall-clock limit of 1.5s"
    );
    // The background `sleep 30` of the hung worker died with its process group.
    let grandchild: u32 = fx.read("hang", "grandchild").trim().parse().unwrap();
    assert!(
        !pid_alive(grandchild),
        "grandchild {grandchild} outlived its worker"
    );
}

#[tokio::test]
async fn a_worker_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let fx = Fixture::new();
    let mut config = fx.config(&[Device::Cpu], 1);
    // Long enough for bash to reach its `trap` even on a loaded machine.
    config.timeout = Some(Duration::from_millis(600));
    config.grace = Duration::from_millis(300);
    config.retries = 1;
    let t0 = Instant::now();
    let (summary, events) = run_all(vec![fx.job("s", "stubborn", &[])], config).await;
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // Timeout is retryable: two attempts, each SIGKILLed.
    assert_eq!(summary.status("s"), Some(&finished(ExitClass::Timeout, 2)));
    let signals: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            SweepEvent::AttemptFinished { signal, .. } => Some(*signal),
            _ => None,
        })
        .collect();
    assert_eq!(signals, [Some(9), Some(9)]);
}

/// Waits until every job in `ids` has touched its `started` file.
async fn until_started(fx: &Fixture, ids: &[&str]) {
    let t0 = Instant::now();
    while !ids.iter().all(|id| fx.dir(id).join("started").exists()) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "workers did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn cancelling_interrupts_running_jobs_and_starts_no_more() {
    let fx = Fixture::new();
    let jobs = vec![
        fx.job("h1", "hang", &[]),
        fx.job("h2", "hang", &[]),
        fx.job("queued", "ok", &[]),
        fx.job("dep", "ok", &["h1"]),
    ];
    let mut config = fx.config(&[Device::Cpu], 2);
    config.retries = 3;
    let cancel = config.cancel.clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let runner = tokio::spawn(exec::run(jobs, config, tx));
    until_started(&fx, &["h1", "h2"]).await;
    cancel.stop();
    let summary = runner.await.unwrap().unwrap();
    let interrupted = finished(ExitClass::Interrupted, 1);
    assert_eq!(summary.status("h1"), Some(&interrupted), "not retried");
    assert_eq!(summary.status("h2"), Some(&interrupted));
    assert_eq!(summary.status("queued"), Some(&JobStatus::NotRun));
    assert!(matches!(
        summary.status("dep"),
        Some(JobStatus::Blocked { .. } | JobStatus::NotRun)
    ));
    assert_eq!(summary.cancelled, Some(CancelReason::Stop));
    assert!(!fx.dir("queued").join("env.txt").exists());
    let mut saw_cancelling = false;
    while let Ok(e) = rx.try_recv() {
        saw_cancelling |= matches!(
            e,
            SweepEvent::Cancelling {
                reason: CancelReason::Stop
            }
        );
    }
    assert!(saw_cancelling);
}

#[tokio::test]
async fn a_second_cancel_kills_without_waiting_for_the_grace_period() {
    let fx = Fixture::new();
    let mut config = fx.config(&[Device::Cpu], 1);
    config.grace = Duration::from_secs(30);
    let cancel: Cancel = config.cancel.clone();
    let t0 = Instant::now();
    let (tx, _rx) = mpsc::unbounded_channel();
    let runner = tokio::spawn(exec::run(vec![fx.job("s", "stubborn", &[])], config, tx));
    until_started(&fx, &["s"]).await;
    cancel.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !runner.is_finished(),
        "SIGTERM is ignored; the grace period runs"
    );
    cancel.kill();
    let summary = runner.await.unwrap().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(
        summary.status("s"),
        Some(&finished(ExitClass::Interrupted, 1))
    );
    assert_eq!(summary.cancelled, Some(CancelReason::Kill));
}

#[tokio::test]
async fn leases_keep_a_job_to_one_owner_and_stale_ones_are_reclaimed() {
    let fx = Fixture::new();
    // A live owner: a process that runs for the test's duration.
    let mut owner = Command::new("sleep").arg("30").spawn().unwrap();
    let held = exec::Lease {
        owner_pid: owner.id(),
        owner_start: None,
        ..exec::Lease::new_owned("held", 1)
    };
    let held_job = fx.job("held", "ok", &[]);
    lease::update(&held_job.dir, &held).unwrap();
    // A dead owner.
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let stale_job = fx.job("stale", "ok", &[]);
    let stale = exec::Lease {
        owner_pid: dead_pid,
        ..exec::Lease::new_owned("stale", 1)
    };
    lease::update(&stale_job.dir, &stale).unwrap();

    let (summary, events) = run_all(vec![held_job, stale_job], fx.config(&[Device::Cpu], 2)).await;
    owner.kill().unwrap();
    owner.wait().unwrap();
    // Another live orchestrator's job: not started, not a failure, no attempt here.
    let host = exec::lease::this_host();
    assert_eq!(
        summary.status("held"),
        Some(&JobStatus::Elsewhere {
            detail: format!("leased by the run of pid {} on host {host}", held.owner_pid),
            done: false
        })
    );
    assert!(attempts(&events, "held").is_empty());
    assert_eq!(
        lease::read_lease(&fx.dir("held")).unwrap(),
        Some(held),
        "left alone"
    );
    assert_eq!(summary.status("stale"), Some(&finished(ExitClass::Ok, 1)));
    assert_eq!(lease::read_lease(&fx.dir("stale")).unwrap(), None);
}

#[tokio::test]
async fn an_old_result_file_does_not_make_a_failed_attempt_succeed() {
    let fx = Fixture::new();
    let job = fx.job("a", "no-result", &[]);
    std::fs::write(job.dir.join("result.json"), "{\"old\":true}").unwrap();
    let (summary, _) = run_all(vec![job], fx.config(&[Device::Cpu], 1)).await;
    assert_eq!(summary.status("a"), Some(&finished(ExitClass::Failed, 1)));
    assert_eq!(fx.read("a", "result.json.prev"), "{\"old\":true}");
}

#[tokio::test]
async fn unrunnable_input_is_an_error_before_anything_starts() {
    let fx = Fixture::new();
    let mut gpu = fx.job("g", "ok", &[]);
    gpu.needs_gpu = true;
    let (tx, _rx) = mpsc::unbounded_channel();
    let e = exec::run(vec![gpu], fx.config(&[Device::Cpu], 1), tx)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("needs a GPU"), "{e}");
    assert!(!fx.dir("g").join("env.txt").exists());
}

// ---- the CLI: a child orchestrator and real signals ----

fn write_jobs(fx: &Fixture, jobs: &[ExecJob]) -> PathBuf {
    let path = fx.tmp.path().join("jobs.json");
    std::fs::write(&path, serde_json::to_string(jobs).unwrap()).unwrap();
    path
}

fn exec_cmd(fx: &Fixture, jobs: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ranksweep"));
    cmd.arg("exec")
        .arg(jobs)
        .args(["--devices", "cpu", "--slots-per-device", "2"])
        .arg("--worker")
        .arg("/bin/bash")
        .arg("--worker-arg")
        .arg(&fx.script)
        .arg("--pass-device")
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn the_exec_command_runs_jobs_and_reports_failures_in_its_exit_code() {
    let fx = Fixture::new();
    let jobs = [
        fx.job("a", "ok", &[]),
        fx.job("b", "nan", &[]),
        fx.job("c", "ok", &["b"]),
    ];
    let path = write_jobs(&fx, &jobs);
    let out = exec_cmd(&fx, &path, &["--json"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("nan      b (nan): exit code 3 (nan)"),
        "{stderr}"
    );
    assert!(stderr.contains("blocked (by b) c (ok)"), "{stderr}");
    assert!(
        stderr.contains("1 ok, 1 failed, 1 blocked, 0 not run"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let kinds: Vec<String> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["event"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("run-started"));
    assert_eq!(kinds.last().map(String::as_str), Some("run-finished"));

    let ok = write_jobs(&fx, &[fx.job("d", "ok", &[])]);
    let out = exec_cmd(&fx, &ok, &[]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = exec_cmd(&fx, &ok, &["--grace-s", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`--grace-s`: expected a positive number of seconds, got 0"),
        "{stderr}"
    );
    std::fs::write(&ok, "{\"id\": 1}").unwrap();
    let out = exec_cmd(&fx, &ok, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("jobs file"));
}

fn sigint(child: &std::process::Child) {
    // SAFETY: sends SIGINT to a child process we started and have not reaped.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
}

fn wait_started(fx: &Fixture, ids: &[&str]) {
    let t0 = Instant::now();
    while !ids.iter().all(|id| fx.dir(id).join("started").exists()) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "workers did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn worker_pids(fx: &Fixture, ids: &[&str]) -> HashMap<String, u32> {
    ids.iter()
        .map(|id| (id.to_string(), fx.read(id, "pids").trim().parse().unwrap()))
        .collect()
}

#[test]
fn ctrl_c_stops_the_orchestrator_and_its_workers() {
    let fx = Fixture::new();
    let jobs = [
        fx.job("h1", "hang", &[]),
        fx.job("h2", "hang", &[]),
        fx.job("later", "ok", &[]),
    ];
    let path = write_jobs(&fx, &jobs);
    let child = exec_cmd(&fx, &path, &["--grace-s", "5"]).spawn().unwrap();
    wait_started(&fx, &["h1", "h2"]);
    let pids = worker_pids(&fx, &["h1", "h2"]);
    sigint(&child);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cancelling: no new jobs"), "{stderr}");
    assert!(
        stderr.contains("interrupted h1 (hang): stopped by the scheduler"),
        "{stderr}"
    );
    assert!(stderr.contains("not run later (ok)"), "{stderr}");
    assert!(
        stderr.contains("0 ok, 2 failed, 0 blocked, 1 not run"),
        "{stderr}"
    );
    for (id, pid) in pids {
        assert!(!pid_alive(pid), "worker {id} ({pid}) survived");
        assert!(!fx.dir(&id).join("lease.json").exists(), "{id}'s lease");
    }
}

#[test]
fn a_second_ctrl_c_kills_workers_that_ignore_sigterm() {
    let fx = Fixture::new();
    let path = write_jobs(&fx, &[fx.job("s", "stubborn", &[])]);
    let t0 = Instant::now();
    let child = exec_cmd(&fx, &path, &["--grace-s", "60"]).spawn().unwrap();
    wait_started(&fx, &["s"]);
    sigint(&child);
    std::thread::sleep(Duration::from_millis(200));
    sigint(&child);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cancelling: killing workers"), "{stderr}");
    let pid: u32 = fx.read("s", "pids").trim().parse().unwrap();
    assert!(!pid_alive(pid));
}

/// The default worker is the real `ranksweep worker`: a job whose dataset is missing fails with
/// its class, its error in the stderr log and the protocol's `end` line in the stdout log.
#[test]
fn the_exec_command_runs_the_real_worker_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("jobs/pre");
    std::fs::create_dir_all(&dir).unwrap();
    let missing = tmp.path().join("no-such-cohort");
    std::fs::write(
        dir.join("job.yaml"),
        format!(
            "stage: pretrain\ndata: {{dataset: {}}}\noutput: {}\n",
            missing.display(),
            dir.display()
        ),
    )
    .unwrap();
    let jobs = serde_json::json!([
        {"id": "pre", "job_file": "jobs/pre/job.yaml", "dir": "jobs/pre", "label": "pretrain"},
        {"id": "ft", "deps": ["pre"], "job_file": "jobs/ft/job.yaml", "dir": "jobs/ft"},
    ]);
    let path = tmp.path().join("jobs.json");
    std::fs::write(&path, jobs.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ranksweep"))
        .args(["exec", path.to_str().unwrap(), "--threads-per-job", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("failed   pretrain: exit code 1 (failed)"),
        "{stderr}"
    );
    assert!(stderr.contains("blocked (by pre) ft"), "{stderr}");
    let err_log = std::fs::read_to_string(dir.join("attempt-1.stderr.log")).unwrap();
    assert!(err_log.contains(missing.to_str().unwrap()), "{err_log}");
    let log = std::fs::read_to_string(dir.join("attempt-1.log")).unwrap();
    assert!(log.contains(r#""event":"end","class":"failed""#), "{log}");
    assert!(!dir.join("lease.json").exists());
}
