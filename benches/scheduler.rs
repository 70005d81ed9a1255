//! Scheduler overhead per job (figures, not a test).
//!
//! `cargo bench --bench scheduler` runs N jobs of a trivial worker (a `sh` script that writes
//! `result.json` by rename, as a real worker does last) through `exec::run`, on one slot (jobs
//! in series) and on two, and the same script N times with plain spawn-and-wait. The overhead
//! per job is the difference per job on one slot: leases, logs, pipes, events, classification.
//! Target: < 100 ms per job.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ranksweep::exec::{self, Device, ExecJob, RunConfig, SlotConfig, WorkerCommand};

const N: usize = 40;

const WORKER: &str = r#"d="${1%/*}"
echo '{"event":"end","class":"ok"}'
echo '{}' > "$d/result.json.tmp" && mv "$d/result.json.tmp" "$d/result.json"
"#;

fn jobs(root: &Path, tag: &str) -> Vec<ExecJob> {
    (0..N)
        .map(|i| {
            let dir = root.join(tag).join(format!("j{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let job_file = dir.join("job.txt");
            std::fs::write(&job_file, "ok\n").unwrap();
            ExecJob {
                id: format!("j{i}"),
                deps: Vec::new(),
                job_file,
                dir,
                needs_gpu: false,
                label: format!("job {i}"),
                gpu_mem_mb: None,
            }
        })
        .collect()
}

fn scheduled(root: &Path, script: &Path, slots: usize) -> Duration {
    let mut config = RunConfig::new(
        SlotConfig {
            devices: vec![Device::Cpu],
            slots_per_device: slots,
            threads_per_job: 1,
        },
        WorkerCommand {
            program: "/bin/sh".into(),
            args_before_job_file: vec![script.display().to_string()],
            device_flag: None,
        },
    );
    config.grace = Duration::from_secs(1);
    let jobs = jobs(root, &format!("slots{slots}"));
    let t0 = Instant::now();
    let summary = exec::run_blocking(jobs, config, |_| {}).unwrap();
    let elapsed = t0.elapsed();
    assert!(summary.all_ok(), "{summary:?}");
    elapsed
}

fn bare(root: &Path, script: &Path) -> Duration {
    let jobs = jobs(root, "bare");
    let t0 = Instant::now();
    for job in &jobs {
        let out = Command::new("/bin/sh")
            .arg(script)
            .arg(&job.job_file)
            .output()
            .unwrap();
        assert!(out.status.success() && job.dir.join("result.json").exists());
    }
    t0.elapsed()
}

fn ms_per_job(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3 / N as f64
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("worker.sh");
    std::fs::write(&script, WORKER).unwrap();
    // Warm the page cache and the runtime once.
    let _ = scheduled(&tmp.path().join("warm"), &script, 1);
    let bare = ms_per_job(bare(tmp.path(), &script));
    let one = ms_per_job(scheduled(tmp.path(), &script, 1));
    let two = ms_per_job(scheduled(tmp.path(), &script, 2));
    println!("scheduler, {N} trivial jobs:");
    println!("  plain spawn + wait        {bare:7.2} ms/job");
    println!("  exec::run, 1 slot         {one:7.2} ms/job");
    println!("  exec::run, 2 slots        {two:7.2} ms/job (wall clock / jobs)");
    println!(
        "  overhead per job (1 slot) {:7.2} ms/job (target < 100)",
        one - bare
    );
}
