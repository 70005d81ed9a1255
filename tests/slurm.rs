//! The SLURM backend against the real one-node SLURM that `scripts/slurm-local.sh` starts:
//! rendered array scripts submitted with `sbatch`, followed with `squeue`/`scontrol` through
//! `ranksweep::slurm`'s parsers. The worker is a small bash stand-in for `ranksweep worker`
//! that writes `result.json` by rename, as the real one does.
//!
//! Without SLURM these tests print why and pass, except under CI (`CI` set), where they fail.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ranksweep::exec::slurm::{
    self, Manifest, SbatchOptions, SubmitJob, SubmitRequest, TaskState, TaskStatus, WorkerCommand,
    write_submission,
};

/// Hostile on purpose: spaces, quotes, `$` and `%` in every path and name.
const NASTY: &str = "res ults 'q' $x 50%";

const FAKE_WORKER: &str = r#"#!/bin/bash
# Stand-in for `ranksweep worker JOB_FILE`: the job file's first line says what to do.
set -u
[[ $# == 2 && $1 == worker ]] || exit 2
job_file=$2
dir=$(dirname "$job_file")
date +%s%N > "$dir/start"
case $(head -n 1 "$job_file") in
ok)
    sleep 1
    printf '{"task": "%s"}\n' "$SLURM_ARRAY_TASK_ID" > "$dir/.result.json.tmp"
    date +%s%N > "$dir/end"
    mv "$dir/.result.json.tmp" "$dir/result.json"
    exit 0 ;;
sleep)
    # Interrupted: exit 6 as the real worker does, leaving a note of which signal came.
    trap 'echo usr1 > "$dir/signal"; exit 6' USR1
    trap 'echo term > "$dir/signal"; exit 6' TERM
    sleep 120 & wait $!
    exit 0 ;;
esac
exit 1
"#;

/// True when the local SLURM answers with an idle (or busy) node. Otherwise prints why and,
/// under CI, fails the test.
pub fn slurm_ready() -> bool {
    let why = match Command::new("sinfo").args(["-h", "-o", "%T"]).output() {
        Err(e) => format!("cannot run sinfo: {e}"),
        Ok(out) if !out.status.success() => format!(
            "sinfo failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Ok(out) => {
            let states = String::from_utf8_lossy(&out.stdout).into_owned();
            if states
                .lines()
                .any(|s| matches!(s.trim(), "idle" | "mixed" | "allocated" | "completing"))
            {
                return true;
            }
            format!("no usable node, sinfo says: {:?}", states.trim())
        }
    };
    let msg = format!("SLURM is not usable ({why}); start it with scripts/slurm-local.sh");
    assert!(std::env::var_os("CI").is_none(), "{msg}");
    eprintln!("skipping: {msg}");
    false
}

/// Cancels the array when a test ends, so no task outlives its temporary folder.
pub struct Cancel(pub Option<u64>);

impl Drop for Cancel {
    fn drop(&mut self) {
        if let Some(id) = self.0 {
            let _ = slurm::scancel(id, None);
        }
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    job_files: Vec<PathBuf>,
    manifest_dir: PathBuf,
    scripts: Vec<PathBuf>,
}

/// Job files whose first line is each of `modes`, a fake worker, and a written submission.
fn setup(modes: &[&str], parallel: u32) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join(NASTY);
    let sweep = format!("sweep {NASTY}");
    // Its folder has spaces but not its name: proctrack/linuxproc cannot follow a process whose
    // name holds a space (see scripts/slurm-local.sh), and `ranksweep` has none.
    let worker = root.join("fake-worker.sh");
    fs::create_dir_all(&root).unwrap();
    fs::write(&worker, FAKE_WORKER).unwrap();
    fs::set_permissions(&worker, fs::Permissions::from_mode(0o755)).unwrap();
    let jobs: Vec<SubmitJob> = modes
        .iter()
        .enumerate()
        .map(|(i, mode)| {
            let dir = root.join(&sweep).join("jobs").join(format!("job {i}"));
            fs::create_dir_all(&dir).unwrap();
            let job_file = dir.join("job's.json");
            fs::write(&job_file, format!("{mode}\n")).unwrap();
            SubmitJob {
                job_id: format!("job {i}"),
                job_file,
                phase: 0,
            }
        })
        .collect();
    let opts = SbatchOptions {
        job_name: format!("ranksweep test {NASTY}"),
        partition: Some("debug".into()),
        gres: None,
        cpus_per_task: 1,
        mem: Some("100M".into()),
        time_limit: Duration::from_secs(300),
        parallel,
        ..SbatchOptions::default()
    };
    let sub = write_submission(&SubmitRequest {
        results_root: &root,
        sweep: &sweep,
        submission: "sub 1",
        jobs: &jobs,
        max_array_size: slurm::max_array_size().unwrap(),
        sbatch: &opts,
        worker: &WorkerCommand::ranksweep(&worker),
    })
    .unwrap();
    Setup {
        job_files: jobs.into_iter().map(|j| j.job_file).collect(),
        manifest_dir: sub.dir,
        scripts: sub.scripts,
        _tmp: tmp,
    }
}

/// Submits the single chunk and records its id in the manifest.
fn submit(s: &Setup) -> u64 {
    assert_eq!(s.scripts.len(), 1);
    let submitted = slurm::sbatch_submit(&s.scripts[0], &s.manifest_dir).unwrap();
    let mut m = Manifest::read(&s.manifest_dir).unwrap();
    m.set_submitted(0, submitted.job_id).unwrap();
    m.write(&s.manifest_dir).unwrap();
    submitted.job_id
}

/// Polls `squeue` (bounded) until `done` holds for the array's tasks.
fn wait_for(id: u64, what: &str, done: impl Fn(&[TaskStatus]) -> bool) -> Vec<TaskStatus> {
    let start = Instant::now();
    loop {
        let rows = slurm::squeue_tasks(&[id]).unwrap();
        if done(&rows) {
            return rows;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "timed out waiting for {what}: {rows:#?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn read_ns(path: &Path) -> u128 {
    fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

#[test]
fn array_of_four_runs_at_most_two_at_once_and_writes_every_result() {
    if !slurm_ready() {
        return;
    }
    let s = setup(&["ok"; 4], 2);
    let script = fs::read_to_string(&s.scripts[0]).unwrap();
    assert!(script.contains("#SBATCH --array=0-3%2\n"), "{script}");
    let id = submit(&s);
    let _cancel = Cancel(Some(id));

    let rows = wait_for(id, "4 finished tasks", |rows| {
        rows.len() == 4 && rows.iter().all(|r| r.state.is_finished())
    });
    let logs = s.manifest_dir.join("logs");
    for r in &rows {
        let err = fs::read_to_string(logs.join(format!("{id}_{}.err", r.array_task_id.unwrap())));
        assert_eq!(r.state, TaskState::Completed, "{r:?}, stderr: {err:?}");
        assert_eq!(r.array_job_id, id);
    }
    let manifest = Manifest::read(&s.manifest_dir).unwrap();
    let mut spans = Vec::new();
    for (i, job_file) in s.job_files.iter().enumerate() {
        let dir = job_file.parent().unwrap();
        let result = fs::read_to_string(dir.join("result.json"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        // The task that ran this job file is the one the manifest maps to it.
        assert_eq!(result.trim(), format!("{{\"task\": \"{i}\"}}"));
        assert_eq!(
            manifest.task(id, i as u32).unwrap().job_id,
            format!("job {i}")
        );
        spans.push((read_ns(&dir.join("start")), read_ns(&dir.join("end"))));
    }
    // Most tasks running at one instant: count the spans open at each start.
    let most = spans
        .iter()
        .map(|&(t, _)| spans.iter().filter(|&&(a, b)| a <= t && t < b).count())
        .max()
        .unwrap();
    assert!(most <= 2, "{most} tasks ran at once: {spans:?}");
    // Per-task logs went to the submission's logs/ under the nasty path.
    assert!(logs.join(format!("{id}_0.out")).is_file());

    // scontrol agrees with squeue.
    let sc = slurm::scontrol_show_job(id).unwrap();
    assert_eq!(sc.len(), 4);
    assert!(
        sc.iter()
            .all(|r| r.state == TaskState::Completed && r.exit.unwrap().code == 0)
    );
}

#[test]
fn cancelled_and_signalled_tasks_are_seen_through_the_parsers() {
    if !slurm_ready() {
        return;
    }
    let s = setup(&["sleep", "sleep"], 2);
    let id = submit(&s);
    let _cancel = Cancel(Some(id));

    let running = |task: u32| {
        move |rows: &[TaskStatus]| {
            rows.iter()
                .any(|r| r.array_task_id == Some(task) && r.state == TaskState::Running)
        }
    };
    // The worker's own `start` file: it is past `exec` and has its traps set.
    let started = |i: usize| s.job_files[i].parent().unwrap().join("start");
    let wait_started = |i: usize| {
        let t = Instant::now();
        while !started(i).exists() {
            assert!(
                t.elapsed() < Duration::from_secs(180),
                "task {i} never started"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(300));
    };

    // Task 1: scancel → CANCELLED, and the TERM reached the exec'd worker.
    wait_for(id, "task 1 running", running(1));
    wait_started(1);
    slurm::scancel(id, Some(1)).unwrap();
    let rows = wait_for(id, "task 1 cancelled", |rows| {
        rows.iter()
            .any(|r| r.array_task_id == Some(1) && r.state.is_finished())
    });
    let t1 = rows.iter().find(|r| r.array_task_id == Some(1)).unwrap();
    assert_eq!(t1.state, TaskState::Cancelled, "{rows:#?}");
    let sc = slurm::scontrol_show_job(id).unwrap();
    let t1 = sc.iter().find(|r| r.array_task_id == Some(1)).unwrap();
    assert_eq!(t1.state, TaskState::Cancelled, "{sc:#?}");

    // Task 0: USR1 to the batch shell (what --signal=B:USR1 does) reaches the worker, which
    // exits 6 (interrupted); SLURM calls that FAILED with exit code 6.
    wait_for(id, "task 0 running", running(0));
    wait_started(0);
    let out = Command::new("scancel")
        .args(["--signal=USR1", "--batch", &format!("{id}_0")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(id, "task 0 finished", |rows| {
        rows.iter()
            .any(|r| r.array_task_id == Some(0) && r.state.is_finished())
    });
    let sc = slurm::scontrol_show_job(id).unwrap();
    let t0 = sc.iter().find(|r| r.array_task_id == Some(0)).unwrap();
    assert_eq!(t0.state, TaskState::Failed, "{sc:#?}");
    assert_eq!(t0.exit.map(|e| e.code), Some(6), "{t0:?}");
    let signal = |i: usize| {
        fs::read_to_string(s.job_files[i].parent().unwrap().join("signal")).unwrap_or_default()
    };
    assert_eq!(signal(0).trim(), "usr1");
    assert_eq!(signal(1).trim(), "term");
}
