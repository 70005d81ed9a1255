//! The orchestrator with the real worker on tiny sweeps (Unet [4, 8, 16], 8×32×32 phantoms, a
//! few steps): a `kill -9` mid-sweep and the rerun, the failure policy (panic, non-finite loss,
//! timeout), and `plan --explain` / the estimate against a real store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use ranksweep::data::phantom::{Cohort, PhantomConfig, write_cohort};
use ranksweep::store::{ExitClass, JobStatus, Store, SweepId};
use ranksweep::train::JobResult;
use ranksweep::train::job_run::RESULT_FILE;
use serde_json::Value;

use crate::util;

/// A TBI cohort of 4 and an SAH cohort of `sah` cases under `root/tbi`, `root/sah`.
fn cohorts(root: &Path, sah_seed: u64) {
    for (c, n, seed, dir) in [
        (Cohort::Tbi, 4, 1, "tbi"),
        (Cohort::Sah, 6, sah_seed, "sah"),
    ] {
        let mut cfg = PhantomConfig::new(c, n, seed);
        cfg.shape = [8, 32, 32];
        cfg.spacing = [6.0, 6.5, 6.5];
        write_cohort(&cfg, &root.join(dir)).unwrap();
    }
}

/// A two-fold spec on those cohorts; `grid` is the YAML list of blocks.
fn spec(root: &Path, name: &str, pre: &str, ft: &str, grid: &str, timeout: &str) -> PathBuf {
    let text = format!(
        "name: {name}
data: {{source: tbi, target: sah, folds: 2, target_labels: [1]}}
model: {{features: [4, 8, 16]}}
pretrain: {pre}
finetune: {ft}
grid:
{grid}seeds: [0]
resources: {{timeout: {timeout}, no_progress: 10m, retries: 1, threads: 1}}
"
    );
    let path = root.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

const PRE: &str = "{steps: 30, batch: 2, val_every: 10, select: last}";
const FT: &str = "{steps: 30, batch: 2, val_every: 10, select: last}";
const GRID: &str = "  - kind: none
  - kind: full
    module: decoder
  - kind: lora-c
    module: decoder
    rank: 2
";

fn bin(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ranksweep"))
        .args(args)
        .current_dir(dir)
        .env("RAYON_NUM_THREADS", "1")
        .envs(env.iter().copied())
        .output()
        .expect("the ranksweep binary runs")
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        util::stdout(o),
        util::stderr(o)
    )
}

/// `plan --json`'s jobs by label: (key, reason, runs).
fn plan_json(
    dir: &Path,
    spec: &Path,
    extra: &[&str],
) -> (BTreeMap<String, (String, String, bool)>, Value) {
    let mut args = vec!["plan", spec.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let o = bin(dir, &args, &[]);
    assert!(o.status.success(), "{}", show(&o));
    let v: Value = serde_json::from_str(&util::stdout(&o)).unwrap();
    let jobs = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["label"].as_str().unwrap().to_string(),
                (
                    j["key"].as_str().unwrap().to_string(),
                    j["reason"].as_str().unwrap().to_string(),
                    j["runs"].as_bool().unwrap(),
                ),
            )
        })
        .collect();
    (jobs, v)
}

fn open(dir: &Path, sweep: &str) -> (Store, SweepId) {
    let st = Store::open(&dir.join("results/ranksweep.db")).unwrap();
    let sw = st.sweep_id(sweep).unwrap().unwrap();
    (st, sw)
}

fn job_dir(dir: &Path, sweep: &str, key: &str) -> PathBuf {
    dir.join("results").join(sweep).join("jobs").join(key)
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

/// Done jobs in the database, read the way `sqlite3` would while the run writes it.
fn done_count(db: &Path) -> Option<i64> {
    if !db.exists() {
        return None;
    }
    let c = rusqlite::Connection::open(db).ok()?;
    c.busy_timeout(Duration::from_secs(5)).ok()?;
    c.query_row("SELECT COUNT(*) FROM jobs WHERE status = 'done'", [], |r| {
        r.get(0)
    })
    .ok()
}

fn count(db: &Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Every job done, each attempt numbered 1..=n once, at most one `ok` attempt, and per-case
/// metrics and the curve exactly those of the job's `result.json`.
fn assert_complete_without_duplicates(dir: &Path, sweep: &str, n_jobs: usize) {
    let (st, sw) = open(dir, sweep);
    let jobs = st.jobs(sw).unwrap();
    assert_eq!(jobs.len(), n_jobs);
    let db = dir.join("results/ranksweep.db");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobs") as usize, n_jobs);
    for j in &jobs {
        assert_eq!(j.status, JobStatus::Done, "{}", j.key);
        let attempts = st.attempts(sw, &j.key).unwrap();
        let numbers: Vec<u32> = attempts.iter().map(|a| a.number).collect();
        assert_eq!(numbers, (1..=j.attempts).collect::<Vec<_>>(), "{}", j.key);
        let oks = attempts
            .iter()
            .filter(|a| a.class == Some(ExitClass::Ok))
            .count();
        assert!(oks <= 1, "{}: {oks} ok attempts", j.key);
        assert!(attempts.iter().all(|a| a.ended_at.is_some()), "{}", j.key);
        let r = JobResult::read(&job_dir(dir, sweep, &j.key).join(RESULT_FILE)).unwrap();
        let cases = st.case_metrics(sw, &j.key).unwrap();
        let expected: Vec<String> = r
            .evaluation
            .iter()
            .flat_map(|e| e.cases.iter().map(|c| c.case.clone()))
            .collect();
        let mut got: Vec<String> = cases.iter().map(|c| c.case_id.clone()).collect();
        let mut want = expected.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{}", j.key);
        if j.stage != ranksweep::store::Stage::Pretrain {
            assert_eq!(want.len(), 3, "{}: a fold of 6 cases tests 3", j.key);
        }
        // The curve is one row per job: its points are the result's, each step once.
        let want: Vec<(usize, Option<f64>)> = r
            .views
            .first()
            .map(|v| {
                v.loss_curve
                    .iter()
                    .map(|&(s, l)| (s, Some(f64::from(l)).filter(|l| l.is_finite())))
                    .collect()
            })
            .unwrap_or_default();
        let got: Vec<(usize, Option<f64>)> = st
            .epochs(sw, &j.key)
            .unwrap()
            .iter()
            .map(|p| (p.step, p.loss))
            .collect();
        assert_eq!(got, want, "{}", j.key);
    }
}

#[test]
fn a_killed_run_resumes_without_redoing_or_duplicating_work() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    cohorts(dir, 2);
    let spec = spec(dir, "crash", PRE, FT, GRID, "10m");
    let db = dir.join("results/ranksweep.db");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ranksweep"))
        .args(["run", spec.to_str().unwrap()])
        .current_dir(dir)
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if done_count(&db).is_some_and(|n| n >= 2) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before two jobs were done"
        );
        assert!(Instant::now() < deadline, "no two jobs done in 300 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    // kill -9: no handler runs; its workers get SIGTERM from the kernel (PDEATHSIG).
    child.kill().unwrap();
    child.wait().unwrap();
    let (st, sw) = open(dir, "crash");
    let before: Vec<(String, u32, SystemTime)> = st
        .jobs(sw)
        .unwrap()
        .into_iter()
        .filter(|j| j.status == JobStatus::Done)
        .map(|j| {
            let t = mtime(&job_dir(dir, "crash", &j.key).join(RESULT_FILE));
            (j.key, j.attempts, t)
        })
        .collect();
    assert!(
        (2..7).contains(&before.len()),
        "{} of 7 jobs done at the kill",
        before.len()
    );
    drop(st);

    // The rerun, at once: the orphans may still be running.
    let o = bin(dir, &["run", spec.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", show(&o));
    let (st, sw) = open(dir, "crash");
    for (key, attempts, t) in &before {
        let j = st.job(sw, key).unwrap().unwrap();
        assert_eq!(j.attempts, *attempts, "{key} ran again");
        assert_eq!(
            mtime(&job_dir(dir, "crash", key).join(RESULT_FILE)),
            *t,
            "{key}: result rewritten"
        );
    }
    drop(st);
    assert_complete_without_duplicates(dir, "crash", 7);
    assert!(dir.join("results/crash/report/index.html").is_file());
    let o = bin(dir, &["report", "crash", "--quiet"], &[]);
    assert!(o.status.success(), "{}", show(&o));

    // A worker that finished after its orchestrator died (attempt still open, result.json
    // written): the next run records its result instead of running it again.
    let (mut st, sw) = open(dir, "crash");
    let victim = st
        .jobs(sw)
        .unwrap()
        .into_iter()
        .find(|j| j.stage == ranksweep::store::Stage::Finetune)
        .unwrap();
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    st.record_attempt_start(
        sw,
        &victim.key,
        &ranksweep::store::AttemptStart {
            run: None,
            host: ranksweep::exec::lease::this_host(),
            device: "cpu".into(),
            pid: Some(dead_pid),
        },
    )
    .unwrap();
    drop(st);
    let result = job_dir(dir, "crash", &victim.key).join(RESULT_FILE);
    let t = mtime(&result);
    let o = bin(dir, &["run", spec.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        util::stderr(&o).contains("recorded 1 result(s) finished after their run was killed"),
        "{}",
        show(&o)
    );
    let (st, sw) = open(dir, "crash");
    let attempts = st.attempts(sw, &victim.key).unwrap();
    assert_eq!(attempts.len() as u32, victim.attempts + 1);
    assert_eq!(attempts.last().unwrap().class, Some(ExitClass::Lost));
    assert_eq!(mtime(&result), t, "the adopted job ran again");
    drop(st);
    assert_complete_without_duplicates(dir, "crash", 7);

    // `ingest` of the same folders (as for a cluster's results) changes nothing; a folder of
    // another sweep is unknown and a broken result file is reported, not ingested.
    let jobs = dir.join("results/crash/jobs");
    let other = dir.join("elsewhere/0123456789abcdef");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(&result, other.join(RESULT_FILE)).unwrap();
    let o = bin(
        dir,
        &["ingest", jobs.to_str().unwrap(), "--sweep", "crash"],
        &[],
    );
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        util::stdout(&o).contains("ingested 7 result(s); 0 unknown job(s); 0 unreadable"),
        "{}",
        show(&o)
    );
    assert_complete_without_duplicates(dir, "crash", 7);
    let broken = jobs.join(&victim.key).join(RESULT_FILE);
    std::fs::write(&broken, "{\"protocol\": 1").unwrap();
    let o = bin(
        dir,
        &[
            "ingest",
            dir.join("elsewhere").to_str().unwrap(),
            "--sweep",
            "crash",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        util::stdout(&o).contains("ingested 0 result(s); 1 unknown job(s)"),
        "{}",
        show(&o)
    );
    let o = bin(
        dir,
        &["ingest", jobs.to_str().unwrap(), "--sweep", "crash"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        util::stdout(&o).contains("ingested 6 result(s); 0 unknown job(s); 1 unreadable"),
        "{}",
        show(&o)
    );
}

#[test]
fn failures_follow_the_policy_with_the_real_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    cohorts(dir, 2);
    let grid = "  - kind: none
  - kind: full
    module: decoder
  - kind: full
    module: encoder
    finetune: {lr: 1.0e30, schedule: constant}
  - kind: full
    module: bottleneck
    finetune: {steps: 1000000}
";
    let spec = spec(dir, "policy", PRE, FT, grid, "15s");
    let (jobs, _) = plan_json(dir, &spec, &[]);
    let key = |label: &str| jobs[label].0.clone();
    let panics = key("full/decoder/f0/s0");
    let o = bin(
        dir,
        &["run", spec.to_str().unwrap()],
        &[("RANKSWEEP_FAULT", &format!("panic:{panics}"))],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let (st, sw) = open(dir, "policy");
    let attempts = |label: &str| st.attempts(sw, &key(label)).unwrap();
    let status = |label: &str| st.job(sw, &key(label)).unwrap().unwrap().status;
    for ok in [
        "pretrain/axial/s0",
        "none/f0/s0",
        "none/f1/s0",
        "full/decoder/f1/s0",
    ] {
        assert_eq!(status(ok), JobStatus::Done, "{ok}");
        let a = attempts(ok);
        assert_eq!(a.len(), 1, "{ok}");
        assert_eq!(a[0].class, Some(ExitClass::Ok), "{ok}");
    }
    // A panic: `failed`, not retried, the panic message is the error.
    let a = attempts("full/decoder/f0/s0");
    assert_eq!(status("full/decoder/f0/s0"), JobStatus::Failed);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].class, Some(ExitClass::Failed));
    let err = a[0].error.clone().unwrap_or_default();
    assert!(
        err.contains("panic: fault injected by RANKSWEEP_FAULT"),
        "{err}"
    );
    // A non-finite loss: `nan`, deterministic, not retried.
    for f in [0, 1] {
        let label = format!("full/encoder/f{f}/s0");
        let a = attempts(&label);
        assert_eq!(status(&label), JobStatus::Failed, "{label}");
        assert_eq!(a.len(), 1, "{label}: {a:?}");
        assert_eq!(a[0].class, Some(ExitClass::Nan), "{label}");
        assert!(
            a[0].error
                .as_deref()
                .unwrap_or_default()
                .contains("non-finite"),
            "{label}: {a:?}"
        );
    }
    // A timeout: retried `retries` (1) times, every attempt recorded.
    for f in [0, 1] {
        let label = format!("full/bottleneck/f{f}/s0");
        let a = attempts(&label);
        assert_eq!(status(&label), JobStatus::Failed, "{label}");
        assert_eq!(a.len(), 2, "{label}: {a:?}");
        assert!(
            a.iter().all(|x| x.class == Some(ExitClass::Timeout)),
            "{label}: {a:?}"
        );
    }
    assert!(dir.join("results/policy/report/index.html").is_file());
}

#[test]
fn plan_explains_each_reason_and_estimates_from_history() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    cohorts(dir, 2);
    let grid = "  - kind: none
  - kind: lora-c
    module: decoder
    rank: 2
";
    let base = spec(dir, "why", PRE, FT, grid, "10m");
    let reasons = |jobs: &BTreeMap<String, (String, String, bool)>| -> BTreeMap<String, String> {
        jobs.iter()
            .map(|(l, (_, r, _))| (l.clone(), r.clone()))
            .collect()
    };
    let all = |jobs: &BTreeMap<String, (String, String, bool)>, r: &str| {
        jobs.values().all(|(_, reason, _)| reason == r)
    };

    // No database: everything is new, and there is no history.
    let (jobs, v) = plan_json(dir, &base, &[]);
    assert_eq!(jobs.len(), 5);
    assert!(all(&jobs, "new"), "{jobs:?}");
    assert_eq!(v["estimate"]["total"]["seconds"], Value::Null);
    let o = bin(dir, &["plan", base.to_str().unwrap()], &[]);
    assert!(
        util::stdout(&o).contains("estimated job time: no history"),
        "{}",
        show(&o)
    );

    // One run with one job failing.
    let failing = jobs["lora-c/decoder/r2/f0/s0"].0.clone();
    let o = bin(
        dir,
        &["run", base.to_str().unwrap()],
        &[("RANKSWEEP_FAULT", &format!("panic:{failing}"))],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let (jobs, _) = plan_json(dir, &base, &[]);
    let r = reasons(&jobs);
    assert_eq!(r["lora-c/decoder/r2/f0/s0"], "failed-before");
    for done in ["pretrain/axial/s0", "none/f0/s0", "lora-c/decoder/r2/f1/s0"] {
        assert_eq!(r[done], "done", "{done}");
    }
    let o = bin(dir, &["plan", base.to_str().unwrap(), "--explain"], &[]);
    let text = util::stdout(&o);
    assert!(
        text.contains("failed-before") && text.contains("done"),
        "{text}"
    );
    assert!(
        text.contains("estimated job time: nothing to run"),
        "{text}"
    );

    // A fine-tuning setting: every cell job's config changed, pretraining is done; the
    // estimate now has history for every job that would run.
    let lr = spec(
        dir,
        "why",
        PRE,
        "{steps: 60, batch: 2, val_every: 10, select: last, lr: 2.0e-3}",
        grid,
        "10m",
    );
    let (jobs, v) = plan_json(dir, &lr, &[]);
    let r = reasons(&jobs);
    assert_eq!(r["pretrain/axial/s0"], "done");
    assert!(
        r.iter()
            .filter(|(l, _)| !l.starts_with("pretrain"))
            .all(|(_, x)| x == "config-changed"),
        "{r:?}"
    );
    let e = &v["estimate"]["total"];
    assert_eq!(e["jobs"], 4);
    assert_eq!(e["estimated"], 4, "{e}");
    assert!(e["seconds"].as_f64().unwrap() > 0.0, "{e}");
    assert!(
        v["estimate"]["by_kind"]["lora-c"]["seconds"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let o = bin(dir, &["plan", lr.to_str().unwrap()], &[]);
    assert!(
        util::stdout(&o).contains("estimated job time: "),
        "{}",
        show(&o)
    );
    assert!(!util::stdout(&o).contains("no history"), "{}", show(&o));

    // A pre-training setting: pretraining's config changed, its dependents' needs changed.
    let pre = spec(
        dir,
        "why",
        "{steps: 31, batch: 2, val_every: 10, select: last}",
        FT,
        grid,
        "10m",
    );
    let r = reasons(&plan_json(dir, &pre, &[]).0);
    assert_eq!(r["pretrain/axial/s0"], "config-changed");
    assert!(
        r.iter()
            .filter(|(l, _)| !l.starts_with("pretrain"))
            .all(|(_, x)| x == "needs-changed"),
        "{r:?}"
    );

    // A new rank: only its jobs are new.
    let more = spec(
        dir,
        "why",
        PRE,
        FT,
        &grid.replace("rank: 2", "rank: [2, 4]"),
        "10m",
    );
    let r = reasons(&plan_json(dir, &more, &[]).0);
    assert_eq!(r["lora-c/decoder/r4/f0/s0"], "new");
    assert_eq!(r["lora-c/decoder/r4/f1/s0"], "new");
    assert_eq!(r["lora-c/decoder/r2/f1/s0"], "done");
    // Every variant is written to `why.yaml`: back to the spec that ran.
    let base = spec(dir, "why", PRE, FT, grid, "10m");

    // Other code: a store planned by another build (prepared through the library, as `run`
    // records a plan), then explained by this binary.
    {
        let s = ranksweep::sweep::load(&base).unwrap();
        let real = ranksweep::exec::sweep_run::fingerprints(&s).unwrap();
        let old = ranksweep::sweep::plan::Fingerprints {
            code: "ranksweep 0.0.0 src:older".into(),
            ..real.clone()
        };
        let p = ranksweep::sweep::plan::plan(&s, &old, &dir.join("results"));
        let mut st = Store::open(&dir.join("older.db")).unwrap();
        let sw = ranksweep::exec::sweep_run::record_plan(&mut st, &s, &p).unwrap();
        let run = st.start_run(sw, &old.code, "h", 1).unwrap();
        use ranksweep::store::history::{ENV_CODE, ENV_SOURCE, ENV_TARGET};
        st.record_environment(
            run,
            &[
                (ENV_CODE.into(), old.code.clone()),
                (ENV_SOURCE.into(), old.source.clone()),
                (ENV_TARGET.into(), old.target.clone()),
            ],
        )
        .unwrap();
    }
    let (jobs, _) = plan_json(dir, &base, &["--db", "older.db"]);
    assert!(all(&jobs, "code-changed"), "{jobs:?}");

    // Other target data: every cell job's data changed; pretraining (source data) is done.
    std::fs::remove_dir_all(dir.join("sah")).unwrap();
    let mut cfg = PhantomConfig::new(Cohort::Sah, 6, 7);
    cfg.shape = [8, 32, 32];
    cfg.spacing = [6.0, 6.5, 6.5];
    write_cohort(&cfg, &dir.join("sah")).unwrap();
    let r = reasons(&plan_json(dir, &base, &[]).0);
    assert_eq!(r["pretrain/axial/s0"], "done");
    assert!(
        r.iter()
            .filter(|(l, _)| !l.starts_with("pretrain"))
            .all(|(_, x)| x == "data-changed"),
        "{r:?}"
    );
    let o = bin(dir, &["plan", base.to_str().unwrap(), "--explain"], &[]);
    assert!(util::stdout(&o).contains("data-changed"), "{}", show(&o));
}
