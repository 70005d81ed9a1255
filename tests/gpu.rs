//! GPU plumbing on this CPU-only build, through the real binary: the device is chosen where a
//! job runs and never baked into a job file; a GPU job on a build without CUDA exits 2 saying
//! which build to use; `run --devices cuda:0` is refused before anything is recorded; results
//! and attempts record what ran them; and the scheduler's GPU memory admission and out-of-memory
//! retry, against a fake `nvidia-smi` on `PATH` and a bash worker.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ranksweep::exec::ExecJob;
use ranksweep::store::Store;

use crate::util;

fn worker(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ranksweep"));
    cmd.arg("worker")
        .args(args)
        .current_dir(dir)
        .env("RAYON_NUM_THREADS", "1")
        .env_remove("RANKSWEEP_DEVICE")
        .env_remove("RANKSWEEP_FAULT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

const JOB: &str = "stage: pretrain\ndata: {dataset: nowhere}\noutput: out/k1\n";

#[test]
fn a_gpu_job_on_a_cpu_build_exits_2_naming_the_cuda_build() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job.yaml");
    std::fs::write(&job, JOB).unwrap();
    let j = job.to_str().unwrap();
    let hand_set = tmp.path().join("hand.yaml");
    std::fs::write(&hand_set, format!("{JOB}device: cuda:0\n")).unwrap();
    // (worker arguments, environment, what the case shows)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (&[j, "--device", "cuda:0"], &[], "from --device"),
        (
            &[j],
            &[("RANKSWEEP_DEVICE", "cuda")],
            "from RANKSWEEP_DEVICE",
        ),
        (
            &[j],
            &[
                ("RANKSWEEP_DEVICE", "cuda:0"),
                ("CUDA_VISIBLE_DEVICES", "0"),
            ],
            "from RANKSWEEP_DEVICE",
        ),
        (
            &[hand_set.to_str().unwrap()],
            &[],
            "from the job file's `device`",
        ),
    ];
    for (args, env, from) in cases {
        let o = worker(tmp.path(), args, env);
        let err = util::stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert!(
            err.contains("this is a GPU job")
                && err.contains(from)
                && err.contains("built without CUDA")
                && err.contains("scripts/build-cuda.sh cudnn"),
            "{err}"
        );
        // The end event says so too, for the orchestrator's attempt row; nothing was trained.
        assert!(util::stdout(&o).contains("built without CUDA"));
        assert!(!tmp.path().join("out/k1").exists());
    }
    // The CPU marker on a GPU-less build is no GPU job: it gets as far as the data.
    let o = worker(tmp.path(), &[j], &[("RANKSWEEP_DEVICE", "cpu")]);
    assert_eq!(o.status.code(), Some(1), "{}", util::stderr(&o));
    assert!(util::stderr(&o).contains("nowhere"), "{}", util::stderr(&o));
    let o = worker(tmp.path(), &[j], &[("RANKSWEEP_DEVICE", "tpu")]);
    assert_eq!(o.status.code(), Some(2));
    // The injected out-of-memory fault ends the job as `oom` (exit 4).
    let o = worker(tmp.path(), &[j], &[("RANKSWEEP_FAULT", "oom:k1")]);
    assert_eq!(o.status.code(), Some(4), "{}", util::stderr(&o));
    assert!(util::stdout(&o).contains(r#""class":"oom""#));
}

/// Two tiny phantom cohorts and a 1 + 3-job sweep on them (one pre-training, `none` × 3 folds).
fn sweep(root: &Path) -> PathBuf {
    util::tiny_cohorts(root);
    let spec = root.join("g.yaml");
    std::fs::write(
        &spec,
        "name: g
data: {source: data/tbi, target: data/sah, folds: 3, target_labels: [1]}
model: {features: [4, 8, 16], in_channels: 1, views: [axial]}
pretrain: {steps: 3, lr: 2.0e-3, batch: 2, val_every: 5, select: last}
finetune: {steps: 2, lr: 1.0e-3, batch: 2, val_every: 5, select: last}
grid:
  - kind: none
seeds: [0]
resources: {timeout: 5m, no_progress: 2m, retries: 0, threads: 1}
",
    )
    .unwrap();
    spec
}

#[test]
fn run_on_gpus_without_cuda_is_refused_up_front_and_cpu_results_record_the_device() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let spec = sweep(root);
    let s = spec.to_str().unwrap();
    let o = util::ranksweep(root, &["run", s, "--devices", "cuda:0"]);
    let err = util::stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`--devices cuda:0`: this ranksweep was built without CUDA")
            && err.contains("scripts/build-cuda.sh cudnn"),
        "{err}"
    );
    // Refused before the plan was recorded: no database, no job folder, no failed job.
    assert!(!root.join("results/ranksweep.db").exists());
    assert!(!root.join("results/g/jobs").exists());

    let o = util::ranksweep(root, &["run", s, "--devices", "cpu"]);
    assert!(o.status.success(), "{}", util::stderr(&o));
    let store = Store::open(&root.join("results/ranksweep.db")).unwrap();
    let sweep = store.sweep_id("g").unwrap().unwrap();
    let jobs = store.jobs(sweep).unwrap();
    assert_eq!(jobs.len(), 4);
    let line = "cpu (1 thread), f32";
    for j in &jobs {
        // The job file the worker ran carries no device; its result and attempt say what ran it.
        let dir = root.join("results/g/jobs").join(&j.key);
        let job_file = std::fs::read_to_string(dir.join("job.json")).unwrap();
        assert!(!job_file.contains("\"device\""), "{job_file}");
        let result = std::fs::read_to_string(dir.join("result.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&result).unwrap();
        assert_eq!(v["ran_on"]["device"], "cpu", "{result}");
        assert_eq!(v["ran_on"]["precision"], "f32", "{result}");
        assert_eq!(v["job"]["device"], "cpu", "the job as run: {result}");
        let attempts = store.attempts(sweep, &j.key).unwrap();
        assert_eq!(attempts[0].ran_on.as_deref(), Some(line), "{attempts:?}");
        assert_eq!(attempts[0].peak_gpu_mb, None);
        let row = store.job_device(sweep, &j.key).unwrap().unwrap();
        assert_eq!((row.device.as_str(), row.ran_on.as_str()), ("cpu", line));
    }
    let o = util::ranksweep(root, &["status", "g", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&util::stdout(&o)).unwrap();
    assert_eq!(v["ran_on"][0]["ran_on"], line, "{v}");
    assert_eq!(v["ran_on"][0]["jobs"], 4, "{v}");
    let o = util::ranksweep(root, &["status", "g"]);
    assert!(
        util::stdout(&o).contains("ran on cpu (1 thread), f32: 4 job(s)"),
        "{}",
        util::stdout(&o)
    );
    let md = std::fs::read_to_string(root.join("results/g/report/report.md")).unwrap();
    assert!(md.contains("Ran on: cpu (1 thread), f32 (4 jobs)."), "{md}");
}

// ---- GPU memory admission and the oom retry, with a fake nvidia-smi ----

/// `nvidia-smi` for one 10,000 MiB GPU whose free memory is the number in `$dir/free`, and
/// whose processes are the lines of `$dir/apps` (`pid, MiB`).
const FAKE_SMI: &str = r#"#!/bin/bash
dir=$(dirname "$0")
case "$*" in
*--query-gpu=index,memory.total,memory.used,memory.free*)
    free=$(cat "$dir/free")
    echo "0, 10000, $((10000 - free)), $free" ;;
*--query-compute-apps=pid,used_memory*)
    cat "$dir/apps" 2>/dev/null ;;
*) echo "fake nvidia-smi: $*" >&2; exit 9 ;;
esac
"#;

/// The worker: records start and end (ns) in its folder, reports 700 MiB of GPU memory for its
/// pid, sleeps; mode `oom-once` ends its first attempt out of memory (exit 4).
const WORKER: &str = r#"#!/bin/bash
job_file=$1
dir=$(dirname "$job_file")
smi=$SMI_DIR
echo "$$, 700" >> "$smi/apps"
n=$(( $(cat "$dir/attempts" 2>/dev/null || echo 0) + 1 ))
echo $n > "$dir/attempts"
date +%s%N > "$dir/start-$n"
echo "{\"event\":\"step\",\"step\":1,\"steps\":1}"
case $(head -n 1 "$job_file") in
oom-once)
    if [[ $n == 1 ]]; then sleep 0.4; date +%s%N > "$dir/end-$n"; exit 4; fi
    sleep 0.2 ;;
*) sleep "${SLEEP_S:-1.5}" ;;
esac
date +%s%N > "$dir/end-$n"
echo '{}' > "$dir/.r"; mv "$dir/.r" "$dir/result.json"
"#;

struct GpuFixture {
    tmp: tempfile::TempDir,
}

impl GpuFixture {
    fn new(free_mb: u64) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let smi = tmp.path().join("smi");
        std::fs::create_dir_all(&smi).unwrap();
        let bin = smi.join("nvidia-smi");
        std::fs::write(&bin, FAKE_SMI).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(smi.join("free"), free_mb.to_string()).unwrap();
        std::fs::write(tmp.path().join("worker.sh"), WORKER).unwrap();
        GpuFixture { tmp }
    }

    fn job(&self, id: &str, mode: &str, need_mb: u64) -> ExecJob {
        let dir = self.tmp.path().join("jobs").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let job_file = dir.join("job.txt");
        std::fs::write(&job_file, format!("{mode}\n")).unwrap();
        ExecJob {
            id: id.into(),
            deps: Vec::new(),
            job_file,
            dir,
            needs_gpu: true,
            label: id.into(),
            gpu_mem_mb: Some(need_mb),
        }
    }

    /// `ranksweep exec` on `cuda:0` with `slots` slots, the fake nvidia-smi first on PATH.
    fn exec(&self, jobs: &[ExecJob], slots: usize) -> (Output, Vec<serde_json::Value>) {
        let path = self.tmp.path().join("jobs.json");
        std::fs::write(&path, serde_json::to_string(jobs).unwrap()).unwrap();
        let smi = self.tmp.path().join("smi");
        let out = Command::new(env!("CARGO_BIN_EXE_ranksweep"))
            .arg("exec")
            .arg(&path)
            .args(["--devices", "cuda:0", "--slots-per-device"])
            .arg(slots.to_string())
            .args([
                "--retries",
                "2",
                "--json",
                "--worker",
                "/bin/bash",
                "--worker-arg",
            ])
            .arg(self.tmp.path().join("worker.sh"))
            .env(
                "PATH",
                format!("{}:{}", smi.display(), std::env::var("PATH").unwrap()),
            )
            .env("SMI_DIR", &smi)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let events = util::stdout(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (out, events)
    }

    fn time(&self, id: &str, what: &str) -> u128 {
        let p = self.tmp.path().join("jobs").join(id).join(what);
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .parse()
            .unwrap()
    }
}

#[test]
fn a_gpu_slot_is_leased_only_when_the_gpu_has_the_memory_free() {
    // 4,000 MiB free, 3,000 needed each: the second job waits for the first although a slot
    // is free; with plenty free both run at once.
    for (free, overlap) in [(4000, false), (100_000, true)] {
        let fx = GpuFixture::new(free);
        let jobs = [fx.job("a", "ok", 3000), fx.job("b", "ok", 3000)];
        let (out, events) = fx.exec(&jobs, 2);
        assert!(out.status.success(), "{}", util::stderr(&out));
        let (a_end, b_start) = (fx.time("a", "end-1"), fx.time("b", "start-1"));
        assert_eq!(b_start < a_end, overlap, "free {free} MiB");
        // Each GPU attempt's peak is sampled from nvidia-smi's process list.
        let peaks: Vec<_> = events
            .iter()
            .filter(|e| e["event"] == "attempt-finished")
            .map(|e| e["peak_gpu_mb"].clone())
            .collect();
        assert_eq!(peaks, vec![serde_json::json!(700.0); 2], "{events:?}");
    }
}

#[test]
fn an_out_of_memory_attempt_is_retried_when_fewer_jobs_share_its_gpu() {
    let fx = GpuFixture::new(100_000);
    let jobs = [
        fx.job("o", "oom-once", 1),
        fx.job("x", "ok", 1),
        fx.job("y", "ok", 1),
    ];
    let (out, events) = fx.exec(&jobs, 3);
    assert!(out.status.success(), "{}", util::stderr(&out));
    let classes: Vec<(String, String, bool)> = events
        .iter()
        .filter(|e| e["event"] == "attempt-finished" && e["job"] == "o")
        .map(|e| {
            (
                e["attempt"].to_string(),
                e["class"].as_str().unwrap().to_string(),
                e["retry"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        classes,
        [
            ("1".to_string(), "oom".to_string(), true),
            ("2".to_string(), "ok".to_string(), false)
        ]
    );
    // Three shared the GPU when it ran out; the retry waited until one of the others ended
    // (it would otherwise have started at once, a second before them).
    let first_other_end = fx.time("x", "end-1").min(fx.time("y", "end-1"));
    assert!(fx.time("o", "start-2") >= first_other_end);
}
