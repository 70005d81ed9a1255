//! One job lifecycle (#12), through the real binary and worker on tiny phantoms (Unet
//! [4, 8, 16], 8×32×32, a few steps): a failed dependency blocks its dependents until it is
//! rerun; `ingest` refuses results that are not their folder's job's; splits live on the
//! results side and follow `split_seed`; two concurrent runs share a sweep and a killed run
//! is ended; a job done in another sweep is reused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ranksweep::data::folds::{Splits, make_splits};
use ranksweep::data::phantom::{Cohort, PhantomConfig, write_cohort};
use ranksweep::store::{ExitClass, JobStatus, Store, SweepId};
use ranksweep::train::JobResult;
use ranksweep::train::files::RESULT_FILE;
use serde_json::Value;

use crate::util;

fn cohorts(root: &Path) {
    for (c, n, seed, dir) in [(Cohort::Tbi, 4, 1, "tbi"), (Cohort::Sah, 6, 2, "sah")] {
        let mut cfg = PhantomConfig::new(c, n, seed);
        cfg.shape = [8, 32, 32];
        cfg.spacing = [6.0, 6.5, 6.5];
        write_cohort(&cfg, &root.join(dir)).unwrap();
    }
}

const GRID: &str = "  - kind: none
  - kind: lora-c
    module: decoder
    rank: 2
";

/// `name.yaml`: two folds, `pre_steps` of pretraining, 3 of fine-tuning.
fn spec(root: &Path, name: &str, pre_steps: usize, grid: &str, extra: &str) -> PathBuf {
    let text = format!(
        "name: {name}
data: {{source: tbi, target: sah, folds: 2, target_labels: [1]{extra}}}
model: {{features: [4, 8, 16]}}
pretrain: {{steps: {pre_steps}, batch: 2, val_every: 2, select: last}}
finetune: {{steps: 3, batch: 2, val_every: 3, select: last}}
grid:
{grid}seeds: [0]
resources: {{timeout: 5m, no_progress: 2m, retries: 0, threads: 1}}
"
    );
    let path = root.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn cmd(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ranksweep"));
    c.args(args)
        .current_dir(dir)
        .env("RAYON_NUM_THREADS", "1")
        .envs(env.iter().copied());
    c
}

fn bin(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    cmd(dir, args, env).output().unwrap()
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        util::stdout(o),
        util::stderr(o)
    )
}

/// `plan --json`'s jobs by label.
fn plan_jobs(dir: &Path, spec: &Path) -> BTreeMap<String, Value> {
    let o = bin(dir, &["plan", spec.to_str().unwrap(), "--json"], &[]);
    assert!(o.status.success(), "{}", show(&o));
    let v: Value = serde_json::from_str(&util::stdout(&o)).unwrap();
    v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["label"].as_str().unwrap().to_string(), j.clone()))
        .collect()
}

fn open(db: &Path, sweep: &str) -> (Store, SweepId) {
    let st = Store::open(db).unwrap();
    let sw = st.sweep_id(sweep).unwrap().unwrap();
    (st, sw)
}

fn count(db: &Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn run_exit_codes(db: &Path) -> Vec<Option<i64>> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c.prepare("SELECT exit_code FROM runs ORDER BY id").unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_failed_pretraining_blocks_its_dependents_until_it_is_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    cohorts(dir);
    let spec = spec(dir, "dep", 4, GRID, "");
    let s = spec.to_str().unwrap();
    let db = dir.join("results/ranksweep.db");
    let jobs = plan_jobs(dir, &spec);
    let pre = jobs["pretrain/axial/s0"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let fault = format!("panic:{pre}");

    // The pre-training fails; nothing that needs it starts.
    let o = bin(dir, &["run", s], &[("RANKSWEEP_FAULT", &fault)]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let dependents_untouched = || {
        let (st, sw) = open(&db, "dep");
        for j in st.jobs(sw).unwrap() {
            if j.key == pre {
                assert_eq!(j.status, JobStatus::Failed);
            } else {
                assert_eq!(j.status, JobStatus::Pending, "{}", j.key);
                assert!(st.attempts(sw, &j.key).unwrap().is_empty(), "{}", j.key);
            }
        }
    };
    dependents_untouched();

    // A plain rerun does not rerun the failure, and does not start its dependents either.
    let o = bin(dir, &["run", s], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = util::stderr(&o);
    assert!(
        err.contains(&format!(
            "it needs pretrain/axial/s0 ({pre}), which is failed"
        )),
        "{}",
        show(&o)
    );
    assert!(
        util::stdout(&o).contains("4 blocked by a failed dependency, 0 ran"),
        "{}",
        show(&o)
    );
    dependents_untouched();

    // `plan` says so and never calls the failure done.
    let jobs = plan_jobs(dir, &spec);
    assert_eq!(jobs["pretrain/axial/s0"]["reason"], "failed-before");
    for (label, j) in &jobs {
        if label.starts_with("pretrain") {
            continue;
        }
        assert_eq!(j["reason"], "blocked", "{label}");
        assert_eq!(j["runs"], false, "{label}");
        assert_eq!(j["blocked_by"]["job"], pre.as_str(), "{label}");
        assert_eq!(j["blocked_by"]["class"], "failed", "{label}");
    }
    let o = bin(dir, &["plan", s, "--explain"], &[]);
    let text = util::stdout(&o);
    assert!(
        text.contains("0 would run, 0 already done, 1 failed before")
            && text.contains("4 blocked by a failed dependency"),
        "{text}"
    );
    assert!(
        text.contains(&format!("blocked by {pre} (pretrain/axial/s0): failed")),
        "{text}"
    );
    let o = bin(dir, &["status", "dep"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        util::stdout(&o).contains(&format!("needs {pre} (pretrain/axial/s0), which is failed")),
        "{}",
        show(&o)
    );

    // Asked to rerun the failure: it runs, then its dependents.
    let o = bin(dir, &["run", s, "--rerun-failed"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let (st, sw) = open(&db, "dep");
    for j in st.jobs(sw).unwrap() {
        assert_eq!(j.status, JobStatus::Done, "{}", j.key);
        let a = st.attempts(sw, &j.key).unwrap();
        let want = if j.key == pre { 2 } else { 1 };
        assert_eq!(a.len(), want, "{}: {a:?}", j.key);
        assert_eq!(a.last().unwrap().class, Some(ExitClass::Ok));
    }
    // The runs table holds what each process returned.
    assert_eq!(run_exit_codes(&db), [Some(1), Some(1), Some(0)]);
}

/// Every `result.json` under `from` copied to `to/<key>/result.json`, as a cluster leaves them.
fn copy_results(from: &Path, to: &Path) -> Vec<String> {
    let mut keys = Vec::new();
    for e in std::fs::read_dir(from).unwrap() {
        let d = e.unwrap().path();
        let r = d.join(RESULT_FILE);
        if r.is_file() {
            let key = d.file_name().unwrap().to_string_lossy().into_owned();
            std::fs::create_dir_all(to.join(&key)).unwrap();
            std::fs::copy(&r, to.join(&key).join(RESULT_FILE)).unwrap();
            keys.push(key);
        }
    }
    keys
}

fn edit(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn ingest_checks_each_result_against_its_job() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    cohorts(dir);
    let spec = spec(dir, "ing", 4, GRID, "");
    let s = spec.to_str().unwrap();
    let o = bin(dir, &["run", s], &[]);
    assert!(o.status.success(), "{}", show(&o));
    // The same sweep planned in another database, its results to come from "a cluster".
    let o = bin(dir, &["run", s, "--dry-run", "--db", "other.db"], &[]);
    assert!(o.status.success(), "{}", show(&o));
    let cluster = dir.join("cluster");
    assert_eq!(
        copy_results(&dir.join("results/ing/jobs"), &cluster).len(),
        5
    );
    let jobs = plan_jobs(dir, &spec);
    let key = |label: &str| jobs[label]["key"].as_str().unwrap().to_string();
    let result = |label: &str| cluster.join(key(label)).join(RESULT_FILE);
    // Another fold's result copied into a job's folder; a failed result; an impossible Dice.
    std::fs::copy(
        result("lora-c/decoder/r2/f0/s0"),
        result("lora-c/decoder/r2/f1/s0"),
    )
    .unwrap();
    edit(&result("none/f0/s0"), |v| v["class"] = "failed".into());
    edit(&result("none/f1/s0"), |v| {
        v["evaluation"]["cases"][0]["dice"] = 5.0.into()
    });
    // A result of the same job with other settings.
    edit(&result("pretrain/axial/s0"), |v| {
        v["job"]["train"]["steps"] = 99.into()
    });
    let o = bin(
        dir,
        &[
            "ingest",
            cluster.to_str().unwrap(),
            "--sweep",
            "ing",
            "--db",
            "other.db",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        util::stdout(&o)
            .contains("ingested 1 result(s); 0 unknown job(s); 0 unreadable; 4 refused"),
        "{}",
        show(&o)
    );
    let err = util::stderr(&o);
    for (label, why) in [
        (
            "lora-c/decoder/r2/f1/s0",
            format!(
                "refused: it was written by job `{}`",
                key("lora-c/decoder/r2/f0/s0")
            ),
        ),
        (
            "none/f0/s0",
            "refused: its class is `failed`, not `ok`".into(),
        ),
        ("none/f1/s0", "refused: case `".into()),
        (
            "pretrain/axial/s0",
            "refused: its config differs from the job's at `train.steps`".into(),
        ),
    ] {
        let line = format!("{}: {why}", result(label).display());
        assert!(err.contains(&line), "`{line}` not in:\n{err}");
    }
    assert!(
        err.contains("dice = 5: expected a value in [0, 1]"),
        "{err}"
    );
    // Nothing of the refused results is stored; the others are, in full.
    let (st, sw) = open(&dir.join("other.db"), "ing");
    for label in [
        "lora-c/decoder/r2/f1/s0",
        "none/f0/s0",
        "none/f1/s0",
        "pretrain/axial/s0",
    ] {
        let j = st.job(sw, &key(label)).unwrap().unwrap();
        assert_eq!(j.status, JobStatus::Pending, "{label}");
        assert!(
            st.case_metrics(sw, &key(label)).unwrap().is_empty(),
            "{label}"
        );
    }
    let j = st
        .job(sw, &key("lora-c/decoder/r2/f0/s0"))
        .unwrap()
        .unwrap();
    assert_eq!(j.status, JobStatus::Done);
    assert_eq!(
        st.case_metrics(sw, &key("lora-c/decoder/r2/f0/s0"))
            .unwrap()
            .len(),
        3
    );
    // The run itself checks what its workers wrote the same way (they all passed above).
    let (st, sw) = open(&dir.join("results/ranksweep.db"), "ing");
    assert!(
        st.jobs(sw)
            .unwrap()
            .iter()
            .all(|j| j.status == JobStatus::Done)
    );
}

/// Names and sizes of every file under `dir`.
fn listing(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::metadata(&p).unwrap().len()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn splits_live_on_the_results_side_and_follow_split_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    cohorts(dir);
    let ids = ranksweep::data::layout::index_dataset(dir.join("sah"))
        .unwrap()
        .case_ids();
    let seed0 = make_splits(&ids, 2, 0, None).unwrap();
    // A seed whose split is not seed 0's.
    let seed = (1..100)
        .find(|&s| make_splits(&ids, 2, s, None).unwrap() != seed0)
        .unwrap();
    let want = make_splits(&ids, 2, seed, None).unwrap();
    let before = listing(&dir.join("sah"));
    let spec_s = spec(dir, "seeded", 4, GRID, &format!(", split_seed: {seed}"));
    let o = bin(dir, &["run", spec_s.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", show(&o));
    let spec_0 = spec(dir, "plain", 4, GRID, "");
    let o = bin(dir, &["run", spec_0.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", show(&o));
    // The dataset folder is never written.
    assert_eq!(listing(&dir.join("sah")), before);
    let files: Vec<PathBuf> = listing(&dir.join("results/splits"))
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    // Each sweep's fold jobs tested their seed's folds.
    for (name, spec, splits) in [("seeded", &spec_s, &want), ("plain", &spec_0, &seed0)] {
        let file = files
            .iter()
            .find(|f| {
                let n = f.file_name().unwrap().to_string_lossy().into_owned();
                let s = if name == "seeded" { seed } else { 0 };
                n.ends_with(&format!("-k2-seed{s}-plain.json"))
            })
            .unwrap();
        assert_eq!(&Splits::read(file).unwrap(), splits);
        for (label, j) in plan_jobs(dir, spec) {
            assert_eq!(j["reason"], "done", "{label}");
            let Some(fold) = j["config"]["data"]["fold"].as_u64() else {
                continue;
            };
            let r = JobResult::read(
                &dir.join("results")
                    .join(name)
                    .join("jobs")
                    .join(j["key"].as_str().unwrap())
                    .join(RESULT_FILE),
            )
            .unwrap();
            let mut test = r.cases.test.clone();
            test.sort();
            assert_eq!(test, splits.0[fold as usize].val, "{name} {label}");
        }
    }
    // A splits.json an older version left in the dataset folder is not used, and said so.
    seed0.write(dir.join("sah/splits.json")).unwrap();
    let o = bin(dir, &["run", spec_s.to_str().unwrap(), "--dry-run"], &[]);
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        util::stderr(&o).contains("sah/splits.json is not used: splits now live in"),
        "{}",
        show(&o)
    );
}

/// Waits until `sql` counts at least one row, while `child` runs.
fn wait_for(db: &Path, sql: &str, child: &mut Child) {
    let t0 = Instant::now();
    loop {
        if db.exists() {
            let c = rusqlite::Connection::open(db).unwrap();
            c.busy_timeout(Duration::from_secs(5)).unwrap();
            if c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap_or(0) > 0 {
                return;
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended first");
        assert!(t0.elapsed() < Duration::from_secs(120), "timed out: {sql}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn spawn_run(dir: &Path, spec: &Path) -> Child {
    cmd(dir, &["run", spec.to_str().unwrap()], &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn concurrent_runs_share_a_sweep_and_a_killed_run_is_ended() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    cohorts(dir);
    let db = dir.join("results/ranksweep.db");
    // A pre-training long enough (~2 s) for the second run to start while it runs.
    let spec = spec(dir, "two", 800, GRID, "");
    let mut a = spawn_run(dir, &spec);
    wait_for(&db, "SELECT COUNT(*) FROM attempts", &mut a);
    let b = spawn_run(dir, &spec);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(a.status.code(), Some(0), "{}", show(&a));
    assert_eq!(b.status.code(), Some(0), "{}", show(&b));
    let b_err = util::stderr(&b);
    assert!(
        b_err.contains("left to another run") || b_err.contains("done elsewhere"),
        "{}",
        show(&b)
    );
    assert!(!b_err.contains("job is leased by pid"), "{}", show(&b));
    assert!(
        util::stdout(&b).contains(" 0 failed, 0 blocked"),
        "{}",
        show(&b)
    );
    // Every job done once: one attempt each, all ok; both runs ended with what they returned.
    let (st, sw) = open(&db, "two");
    for j in st.jobs(sw).unwrap() {
        assert_eq!(j.status, JobStatus::Done, "{}", j.key);
        let at = st.attempts(sw, &j.key).unwrap();
        assert_eq!(at.len(), 1, "{}: {at:?}", j.key);
        assert_eq!(at[0].class, Some(ExitClass::Ok), "{}", j.key);
    }
    drop(st);
    assert_eq!(run_exit_codes(&db), [Some(0), Some(0)]);

    // kill -9 of a run: the next run marks it ended, and `status` says killed.
    // Other keys (801 steps): the same jobs would be reused from `two`, with nothing to kill.
    let other = self::spec(dir, "killed", 801, GRID, "");
    let mut k = spawn_run(dir, &other);
    wait_for(
        &db,
        "SELECT COUNT(*) FROM attempts a JOIN jobs j ON j.id = a.job JOIN sweeps s \
         ON s.id = j.sweep_id WHERE s.name = 'killed'",
        &mut k,
    );
    k.kill().unwrap();
    k.wait().unwrap();
    let o = bin(dir, &["run", other.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        util::stderr(&o).contains("run 3 was killed; marked ended"),
        "{}",
        show(&o)
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM runs WHERE id = 3 AND ended_at IS NOT NULL AND exit_code IS NULL"
        ),
        1
    );
    let o = bin(dir, &["status", "killed"], &[]);
    assert!(o.status.success(), "{}", show(&o));
    let text = util::stdout(&o);
    assert!(
        text.contains("killed") && !text.contains("not ended"),
        "{text}"
    );
}

#[test]
fn a_job_done_in_another_sweep_is_reused_not_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    cohorts(dir);
    let db = dir.join("results/ranksweep.db");
    let first = spec(dir, "paper", 4, GRID, "");
    let o = bin(dir, &["run", first.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", show(&o));
    let attempts = count(&db, "SELECT COUNT(*) FROM attempts");
    let rows = count(&db, "SELECT COUNT(*) FROM case_metrics");

    // The same grid under another name: planned done, with where.
    let renamed = spec(dir, "renamed", 4, GRID, "");
    for (label, j) in plan_jobs(dir, &renamed) {
        assert_eq!(j["reason"], "done", "{label}");
        assert_eq!(j["done_in"]["sweep"], "paper", "{label}");
        assert_eq!(j["done_in"]["run"], 1, "{label}");
    }
    let o = bin(dir, &["plan", renamed.to_str().unwrap(), "--explain"], &[]);
    assert!(
        util::stdout(&o).contains("done in sweep paper (run 1)"),
        "{}",
        show(&o)
    );
    let o = bin(dir, &["run", renamed.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        util::stdout(&o).contains("5 jobs planned, 5 already done"),
        "{}",
        show(&o)
    );
    // Linked, not copied: no attempt, no metric row added; the reports agree.
    assert_eq!(count(&db, "SELECT COUNT(*) FROM attempts"), attempts);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM case_metrics"), rows);
    let o = bin(
        dir,
        &["compare", "paper", "renamed", "--format", "json"],
        &[],
    );
    assert!(o.status.success(), "{}", show(&o));
    let v: Value = serde_json::from_str(&util::stdout(&o)).unwrap();
    assert_eq!(v["regressed"], false);
    for c in v["cells"].as_array().unwrap() {
        assert_eq!(c["delta"], 0.0, "{c}");
        assert!(c["n_paired"].as_u64().unwrap() > 0, "{c}");
    }

    // A nightly subset with a new rank: the cell and pre-training done in `paper` are reused,
    // and the new jobs fine-tune from `paper`'s base checkpoint.
    let nightly = spec(
        dir,
        "nightly",
        4,
        "  - kind: lora-c
    module: decoder
    rank: [2, 4]
",
        "",
    );
    let jobs = plan_jobs(dir, &nightly);
    assert_eq!(jobs["pretrain/axial/s0"]["reason"], "done");
    assert_eq!(jobs["lora-c/decoder/r2/f0/s0"]["reason"], "done");
    assert_eq!(jobs["lora-c/decoder/r4/f0/s0"]["reason"], "new");
    let o = bin(dir, &["run", nightly.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        util::stdout(&o).contains("5 jobs planned, 3 already done"),
        "{}",
        show(&o)
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM attempts"), attempts + 2);
    let (st, sw) = open(&db, "nightly");
    assert!(
        st.jobs(sw)
            .unwrap()
            .iter()
            .all(|j| j.status == JobStatus::Done)
    );
}

#[test]
fn a_foreign_or_non_sqlite_database_is_refused_in_one_line_and_left_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Another program's database: one table of its own, and one that happens to share our name.
    for (file, tables) in [
        (
            "other.db",
            "CREATE TABLE customers (id INTEGER, name TEXT);",
        ),
        (
            "clash.db",
            "CREATE TABLE customers (id INTEGER); CREATE TABLE sweeps (x);",
        ),
    ] {
        let path = dir.join(file);
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(tables)
            .unwrap();
        let before = std::fs::read(&path).unwrap();
        let out = util::ranksweep(dir, &["status", "--db", file, "any"]);
        let err = util::stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "one line, not a schema dump: {err}"
        );
        assert!(
            err.contains(file) && err.contains("another program"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before, "{file} was modified");
        assert!(!dir.join(format!("{file}-wal")).exists());
    }
    std::fs::write(
        dir.join("junk.db"),
        "not a database, just text\n".repeat(100),
    )
    .unwrap();
    let out = util::ranksweep(dir, &["status", "--db", "junk.db", "any"]);
    let err = util::stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("junk.db: not an SQLite file"), "{err}");
}

#[test]
fn warnings_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A NIfTI-1 file whose scl_slope (bytes 112..116) is 0: the reader warns and reads unscaled.
    let cfg = PhantomConfig::new(Cohort::Sah, 1, 3);
    write_cohort(&cfg, &dir.join("sah")).unwrap();
    let image = std::fs::read_dir(dir.join("sah/imagesTr"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(&image).unwrap()),
        &mut bytes,
    )
    .unwrap();
    bytes[112..116].copy_from_slice(&0f32.to_le_bytes());
    std::fs::write(dir.join("slope0.nii"), &bytes).unwrap();
    let out = util::ranksweep(dir, &["inspect", "slope0.nii"]);
    let err = util::stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("WARN") && err.contains("scl_slope is 0"),
        "{err}"
    );
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escape in piped stderr: {err:?}"
    );
}
