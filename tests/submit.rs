//! `ranksweep submit --backend slurm` and `status` against the real one-node SLURM of
//! `scripts/slurm-local.sh`, with the real worker on tiny phantom cohorts; and the worker's
//! requeue contract (USR1 → exit 6, no result; the next run completes), which needs no SLURM.
//!
//! Without SLURM the SLURM tests print why and pass, except under CI (`CI` set), where they
//! fail (see `slurm::slurm_ready`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ranksweep::exec::slurm::{self, Manifest, TaskState};
use ranksweep::train::ExitClass;
use ranksweep::train::job_run::RESULT_FILE;

use crate::slurm::{Cancel, slurm_ready};
use crate::util;

/// Spaces, quotes, `$` and `%` in the folder that holds the spec, data, results and database.
const NASTY: &str = "sub 'q' $x 50%";

/// A sweep of 1 pre-training and 6 fine-tuning jobs (2 cells × 3 folds) on the tiny model.
fn spec(root: &Path, name: &str, pretrain_steps: u64) -> PathBuf {
    let text = format!(
        "name: {name}
data: {{source: data/tbi, target: data/sah, folds: 3, target_labels: [1]}}
model: {{features: [4, 8, 16], in_channels: 1, views: [axial]}}
pretrain: {{steps: {pretrain_steps}, lr: 2.0e-3, batch: 2, val_every: 5, select: last}}
finetune: {{steps: 5, lr: 1.0e-3, batch: 2, val_every: 5, select: last}}
grid:
  - kind: none
  - kind: lora-c
    module: decoder
    rank: 2
seeds: [0]
resources: {{timeout: 5m, no_progress: 2m, retries: 0, threads: 1}}
"
    );
    let path = root.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// `ranksweep submit SPEC --backend slurm` with small resources, 2 tasks at a time.
fn submit(root: &Path, spec: &Path) -> std::process::Output {
    util::ranksweep(
        root,
        &[
            "submit",
            spec.to_str().unwrap(),
            "--backend",
            "slurm",
            "--partition",
            "debug",
            "--cpus-per-task",
            "1",
            "--mem",
            "300M",
            "--time",
            "10m",
            "--max-parallel",
            "2",
        ],
    )
}

fn manifests(sweep_dir: &Path) -> Vec<(PathBuf, Manifest)> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(sweep_dir.join("submissions"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .map(|d| {
            let m = Manifest::read(&d).unwrap();
            (d, m)
        })
        .collect()
}

/// Polls squeue (bounded) until every task of `ids` has finished.
fn wait_finished(ids: &[u64], what: &str, logs: &Path) {
    let start = Instant::now();
    loop {
        let rows: Vec<_> = ids
            .iter()
            .flat_map(|&id| slurm::squeue_tasks(&[id]).unwrap_or_default())
            .collect();
        let seen: std::collections::BTreeSet<u64> = rows.iter().map(|r| r.array_job_id).collect();
        if seen.len() == ids.len() && rows.iter().all(|r| r.state.is_finished()) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "timed out after 300 s waiting for {what}: {rows:#?}\nlogs in {}",
            logs.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every table's rows (without the `id` column, whose values a delete-and-insert renumbers),
/// sorted: equal dumps mean the same database content.
fn dump(db: &Path) -> BTreeMap<String, Vec<String>> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = BTreeMap::new();
    for t in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                let mut cells = Vec::new();
                for (i, n) in names.iter().enumerate() {
                    if n != "id" {
                        let v: rusqlite::types::Value = r.get(i)?;
                        cells.push(format!("{n}={v:?}"));
                    }
                }
                Ok(cells.join("|"))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.sort();
        out.insert(t, rows);
    }
    out
}

fn status_json(root: &Path, sweep: &str) -> (Option<i32>, serde_json::Value) {
    let o = util::ranksweep(root, &["status", sweep, "--json"]);
    let v = serde_json::from_str(&util::stdout(&o))
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", util::stderr(&o)));
    (o.status.code(), v)
}

#[test]
fn submit_runs_a_phantom_sweep_as_arrays_and_the_ingest_job_stores_and_reports_it() {
    if !slurm_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join(NASTY);
    std::fs::create_dir_all(&root).unwrap();
    util::tiny_cohorts(&root);
    let spec = spec(&root, "tiny.sweep_1", 10);

    let o = submit(&root, &spec);
    assert!(o.status.success(), "submit: {}", util::stderr(&o));
    let sweep_dir = root.join("results/tiny.sweep_1");
    let subs = manifests(&sweep_dir);
    assert_eq!(subs.len(), 1);
    let (dir, m) = &subs[0];
    let ids = m.submitted_ids();
    let ingest = m.ingest.as_ref().and_then(|i| i.slurm_job_id).unwrap();
    let _cancel = (
        Cancel(ids.first().copied()),
        Cancel(ids.get(1).copied()),
        Cancel(Some(ingest)),
    );
    // One pre-training array, then six fine-tuning tasks 2 at a time, after it.
    assert_eq!(m.chunks.len(), 2, "{m:#?}");
    assert_eq!((m.chunks[0].phase, m.chunks[0].tasks.len()), (0, 1));
    assert_eq!((m.chunks[1].phase, m.chunks[1].tasks.len()), (1, 6));
    assert_eq!(m.chunks[1].array, "0-5%2");
    assert_eq!(m.chunks[1].after, [ids[0]]);
    let script = std::fs::read_to_string(dir.join(&m.chunks[1].script)).unwrap();
    assert!(script.contains("#SBATCH --array=0-5%2\n"), "{script}");
    assert!(
        script.contains("#SBATCH --signal=B:USR1@120\n#SBATCH --requeue\n"),
        "{script}"
    );
    assert_eq!(m.ingest.as_ref().unwrap().after, ids);

    let mut all = ids.clone();
    all.push(ingest);
    wait_finished(&all, "the arrays and the ingest job", &dir.join("logs"));
    for r in ids
        .iter()
        .flat_map(|&id| slurm::squeue_tasks(&[id]).unwrap())
    {
        assert_eq!(
            r.state,
            TaskState::Completed,
            "{r:?}; logs in {}",
            dir.display()
        );
    }
    let ingest_rows = slurm::squeue_tasks(&[ingest]).unwrap();
    assert_eq!(
        ingest_rows[0].state,
        TaskState::Completed,
        "{ingest_rows:?}"
    );

    // The ingest job stored every result and wrote the report.
    for t in m.chunks.iter().flat_map(|c| &c.tasks) {
        assert!(
            t.job_file.parent().unwrap().join(RESULT_FILE).is_file(),
            "{t:?}"
        );
    }
    let (code, st) = status_json(&root, "tiny.sweep_1");
    assert_eq!(code, Some(0), "{st:#}");
    assert_eq!(
        (st["done"].as_u64(), st["failed"].as_u64()),
        (Some(7), Some(0)),
        "{st:#}"
    );
    let tasks = st["slurm"]["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 7);
    assert!(tasks.iter().all(|t| t["verdict"] == "done"), "{st:#}");
    let report = sweep_dir.join("report/index.html");
    assert!(report.is_file(), "no report at {}", report.display());

    // Ingest is idempotent: again and again, the same database content.
    let db = root.join("results/ranksweep.db");
    let before = dump(&db);
    assert!(before["case_metrics"].len() >= 6, "{:?}", before.keys());
    for _ in 0..2 {
        let o = util::ranksweep(
            &root,
            &[
                "ingest",
                sweep_dir.to_str().unwrap(),
                "--sweep",
                "tiny.sweep_1",
            ],
        );
        assert!(o.status.success(), "{}", util::stderr(&o));
        assert_eq!(dump(&db), before);
    }

    // Submitting again sends nothing: every job is done.
    let o = submit(&root, &spec);
    assert!(o.status.success(), "{}", util::stderr(&o));
    assert!(
        util::stdout(&o).contains("nothing to submit"),
        "{}",
        util::stdout(&o)
    );
    assert_eq!(manifests(&sweep_dir).len(), 1);
}

#[test]
fn a_task_killed_by_scancel_shows_as_cancelled_in_status_and_is_sent_again() {
    if !slurm_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cancel");
    std::fs::create_dir_all(&root).unwrap();
    util::tiny_cohorts(&root);
    // Pre-training long enough to be running when cancelled.
    let spec = spec(&root, "cancelled", 1_000_000);
    let o = submit(&root, &spec);
    assert!(o.status.success(), "submit: {}", util::stderr(&o));
    let sweep_dir = root.join("results/cancelled");
    let (dir, m) = manifests(&sweep_dir).remove(0);
    let ids = m.submitted_ids();
    let ingest = m.ingest.as_ref().and_then(|i| i.slurm_job_id).unwrap();
    let _cancel = (
        Cancel(Some(ids[0])),
        Cancel(Some(ids[1])),
        Cancel(Some(ingest)),
    );

    // While it runs, a second submit sends nothing: every job is pending or running.
    let start = Instant::now();
    while !slurm::squeue_tasks(&[ids[0]])
        .unwrap()
        .iter()
        .any(|r| r.state == TaskState::Running)
    {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "pre-training never ran"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let o = submit(&root, &spec);
    assert!(
        util::stdout(&o).contains("7 queued or running"),
        "{}",
        util::stdout(&o)
    );
    assert!(util::stdout(&o).contains("nothing to submit"));

    slurm::scancel(ids[0], Some(0)).unwrap();
    // The fine-tuning array waited on it (afterok): SLURM cancels it; the ingest job runs.
    wait_finished(
        &[ids[0], ids[1], ingest],
        "the cancelled sweep",
        &dir.join("logs"),
    );

    let o = util::ranksweep(&root, &["status", "cancelled"]);
    let text = util::stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{text}{}", util::stderr(&o));
    let pretrain = &m.chunks[0].tasks[0].job_id;
    assert!(
        text.contains(&format!(
            "cancelled {pretrain} (task {}_0 of submission",
            ids[0]
        )),
        "{text}"
    );
    assert!(
        text.contains("slurm: 7 submitted job(s): 7 cancelled"),
        "{text}"
    );

    // Cancelled jobs are not live: the next submit sends all seven again.
    let o = submit(&root, &spec);
    assert!(o.status.success(), "{}", util::stderr(&o));
    let subs = manifests(&sweep_dir);
    assert_eq!(subs.len(), 2, "{}", util::stdout(&o));
    let again = &subs[1].1;
    let _cancel2 = (
        Cancel(again.submitted_ids().first().copied()),
        Cancel(again.submitted_ids().get(1).copied()),
        Cancel(again.ingest.as_ref().and_then(|i| i.slurm_job_id)),
    );
    assert_eq!(again.chunks.iter().map(|c| c.tasks.len()).sum::<usize>(), 7);
}

#[test]
fn usr1_interrupts_a_worker_without_a_result_and_its_rerun_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    util::tiny_cohorts(root);
    let out = root.join("out");
    let job = root.join("job.yaml");
    std::fs::write(
        &job,
        format!(
            "stage: pretrain\ndata: {{dataset: {}}}\ntrain: {{steps: 400, batch_size: 2, log_every: 1}}\nmodel: {{features: [4, 8, 16]}}\nthreads: 1\noutput: {}\n",
            root.join("data/tbi").display(),
            out.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ranksweep"))
        .args(["worker", job.to_str().unwrap()])
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Training has started once the first step is reported.
    for line in lines.by_ref() {
        if line.unwrap().contains("\"step\"") {
            break;
        }
    }
    // SAFETY: signalling our own child by its pid. USR1 is SLURM's --signal=B:USR1 warning.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGUSR1) },
        0
    );
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(i32::from(ExitClass::Interrupted.code())),
        "{rest:?}"
    );
    assert!(!out.join(RESULT_FILE).exists());
    let last = rest.last().unwrap();
    assert!(last.contains("interrupted"), "{last}");

    // A requeued task runs the same job file again, to the end.
    let o = util::ranksweep(root, &["worker", job.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", util::stderr(&o));
    assert!(out.join(RESULT_FILE).is_file());
}

#[test]
fn dry_run_writes_job_files_scripts_and_manifest_and_submits_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join(NASTY);
    std::fs::create_dir_all(&root).unwrap();
    util::tiny_cohorts(&root);
    let spec = spec(&root, "dry", 10);
    let o = util::ranksweep(
        &root,
        &[
            "submit",
            spec.to_str().unwrap(),
            "--backend",
            "slurm",
            "--gres",
            "gpu:1",
            "--time",
            "1h",
            "--max-parallel",
            "3",
            "--dry-run",
        ],
    );
    let text = util::stdout(&o);
    assert!(o.status.success(), "{text}{}", util::stderr(&o));
    assert!(text.contains("nothing submitted"), "{text}");
    let subs = manifests(&root.join("results/dry"));
    assert_eq!(subs.len(), 1);
    let (dir, m) = &subs[0];
    assert!(m.submitted_ids().is_empty() && m.ingest.is_none(), "{m:#?}");
    for c in &m.chunks {
        let script = dir.join(&c.script);
        // Printed as written, and bash can parse it despite the hostile folder name.
        let body = std::fs::read_to_string(&script).unwrap();
        assert!(text.contains(&body), "{text}");
        assert!(body.contains("#SBATCH --gres=\"gpu:1\"\n"), "{body}");
        // A GPU in --gres makes each task a GPU job, told so before the worker starts.
        let marker = body.find("\nexport RANKSWEEP_DEVICE=cuda\n").expect(&body);
        assert!(marker < body.find("\nexec ").unwrap(), "{body}");
        assert!(body.contains("#SBATCH --time=0-01:00:00\n"), "{body}");
        let n = Command::new("bash")
            .arg("-n")
            .arg(&script)
            .output()
            .unwrap();
        assert!(n.status.success(), "{}", String::from_utf8_lossy(&n.stderr));
        for t in &c.tasks {
            assert!(t.job_file.is_file() && t.job_file.is_absolute(), "{t:?}");
            // The device is chosen where the job runs: the job file has none.
            let job = std::fs::read_to_string(&t.job_file).unwrap();
            assert!(!job.contains("\"device\""), "{job}");
        }
    }
    assert_eq!(m.chunks[1].array, "0-5%3");
}

/// Whether the local SLURM has the fake `gpu` gres of scripts/slurm-local.sh (a cluster started
/// by an older script has none: restart it with `--stop` and again).
fn has_gpu_gres() -> bool {
    let out = Command::new("scontrol").args(["show", "node"]).output();
    let ok = out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Gres=gpu:1"));
    if !ok {
        let msg = "the local SLURM has no `gpu` gres; restart it: scripts/slurm-local.sh --stop && scripts/slurm-local.sh";
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("skipping: {msg}");
    }
    ok
}

#[test]
fn a_gres_gpu_task_is_told_it_runs_a_gpu_job_and_this_cpu_build_refuses_it() {
    if !slurm_ready() || !has_gpu_gres() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join(NASTY);
    std::fs::create_dir_all(&root).unwrap();
    util::tiny_cohorts(&root);
    let spec = spec(&root, "gpu", 10);
    let o = util::ranksweep(
        &root,
        &[
            "submit",
            spec.to_str().unwrap(),
            "--backend",
            "slurm",
            "--partition",
            "debug",
            "--gres",
            "gpu:1",
            "--cpus-per-task",
            "1",
            "--mem",
            "300M",
            "--time",
            "5m",
        ],
    );
    assert!(o.status.success(), "submit: {}", util::stderr(&o));
    let subs = manifests(&root.join("results/gpu"));
    let (dir, m) = &subs[0];
    let ids = m.submitted_ids();
    let ingest = m.ingest.as_ref().and_then(|i| i.slurm_job_id);
    let _cancel = (
        Cancel(ids.first().copied()),
        Cancel(ids.get(1).copied()),
        Cancel(ingest),
    );
    // The pre-training task: what its worker was told is in its log, and it trained nothing.
    let logs = dir.join("logs");
    wait_finished(&ids[..1], "the pre-training array", &logs);
    let row = &slurm::squeue_tasks(&ids[..1]).unwrap()[0];
    let err = std::fs::read_to_string(logs.join(format!("{}_0.err", ids[0]))).unwrap();
    assert!(
        err.contains("this is a GPU job (`cuda:0` from RANKSWEEP_DEVICE)")
            && err.contains("built without CUDA")
            && err.contains("scripts/build-cuda.sh cudnn"),
        "{err}\n{row:?}"
    );
    let job_dir = m.chunks[0].tasks[0]
        .job_file
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(!job_dir.join(RESULT_FILE).exists());
}
