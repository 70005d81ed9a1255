//! Time to ingest 10,000 worker results into the store (figures, not a test).
//!
//! `cargo bench --bench ingest`: runs one real tiny job (pretrain, then a LoRA fine-tune on an
//! SAH phantom fold), widens its `result.json` to a realistic size — 20 evaluated cases with
//! their metrics and a 300-point loss curve — and writes 10,000 copies under distinct job keys,
//! as `<dir>/<key>/result.json`. It then times `ingest_tree` (read, parse, per-case metrics,
//! curve, parameter counts, mark done) into a store that knows the jobs, and a second pass
//! over the same files (re-ingesting replaces rows). Target: under 5 s for the first pass.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use ranksweep::data::phantom::{Cohort, PhantomConfig, write_cohort};
use ranksweep::data::preprocess::View;
use ranksweep::exec::ingest::ingest_tree;
use ranksweep::store::{NewJob, Stage, Store};
use ranksweep::train::job_run::RESULT_FILE;
use ranksweep::train::{Event, JobConfig, JobResult, run_job};

const FILES: usize = 10_000;
const CASES: usize = 20;
const CURVE: usize = 300;

fn run(yaml: &str) -> JobResult {
    let text = format!("{yaml}model: {{features: [4, 8, 16]}}\nthreads: 1\n");
    let job = JobConfig::from_text(&text).unwrap_or_else(|e| panic!("{e}"));
    let stop = AtomicBool::new(false);
    run_job(&job, &stop, &mut |_: &Event| {}).unwrap_or_else(|e| panic!("{e}"))
}

/// One real fine-tuning result, widened to `CASES` cases and a `CURVE`-point curve.
fn template(dir: &Path) -> JobResult {
    for (c, n, seed, name) in [(Cohort::Tbi, 4, 1, "tbi"), (Cohort::Sah, 6, 2, "sah")] {
        let mut cfg = PhantomConfig::new(c, n, seed);
        cfg.shape = [8, 32, 32];
        cfg.spacing = [6.0, 6.5, 6.5];
        write_cohort(&cfg, &dir.join(name)).unwrap();
    }
    run(&format!(
        "stage: pretrain\ndata: {{dataset: {}}}\ntrain: {{steps: 5, batch_size: 2}}\noutput: {}\n",
        dir.join("tbi").display(),
        dir.join("pre").display()
    ));
    let mut r = run(&format!(
        "stage: finetune\ndata: {{dataset: {}, fold: 0, folds: 2, labels: 1}}\nadaptation: {{kind: lora-c, module: decoder, rank: 2}}\ntrain: {{steps: 10, batch_size: 2, log_every: 1}}\nbase: {{axial: {}}}\noutput: {}\n",
        dir.join("sah").display(),
        dir.join("pre/base-axial.safetensors").display(),
        dir.join("ft").display()
    ));
    let eval = r
        .evaluation
        .as_mut()
        .expect("a fine-tune evaluates its fold");
    let real = eval.cases.clone();
    eval.cases = (0..CASES)
        .map(|i| {
            let mut c = real[i % real.len()].clone();
            c.case = format!("case_{i:03}");
            c
        })
        .collect();
    // Ingest checks that the evaluated cases are the job's test cases.
    r.cases.test = eval.cases.iter().map(|c| c.case.clone()).collect();
    let view = &mut r.views[0];
    let real = view.loss_curve.clone();
    view.loss_curve = (0..CURVE)
        .map(|i| (i * 10 + 10, real[i % real.len()].1))
        .collect();
    r
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = template(tmp.path());
    let results = tmp.path().join("results");
    let keys: Vec<String> = (0..FILES).map(|i| format!("{i:016x}")).collect();
    let t0 = Instant::now();
    let mut json = String::new();
    for k in &keys {
        let d = results.join(k);
        std::fs::create_dir_all(&d).unwrap();
        // Ingest checks that a result was written by its folder's job.
        t.job.output = d.clone();
        json = serde_json::to_string_pretty(&t).unwrap();
        std::fs::write(d.join(RESULT_FILE), &json).unwrap();
    }
    let write_s = t0.elapsed().as_secs_f64();
    let mut st = Store::open(&tmp.path().join("bench.db")).unwrap();
    let sw = st
        .upsert_sweep("bench", Path::new("bench.yaml"), "")
        .unwrap();
    let cfg = serde_json::to_string(&t.job).unwrap();
    let jobs: Vec<NewJob> = keys
        .iter()
        .map(|k| NewJob {
            key: k.clone(),
            cell: None,
            stage: Stage::Finetune,
            kind: Some(t.job.adaptation.kind),
            selector: Some("decoder".into()),
            rank: Some(2),
            alpha: Some(2.0),
            fold: Some(0),
            seed: 0,
            view: View::Axial,
            config_json: cfg.clone(),
            needs: vec![],
        })
        .collect();
    st.upsert_jobs(sw, &jobs).unwrap();
    // Where the time goes: reading and parsing alone, one thread.
    let t0 = Instant::now();
    for k in &keys {
        std::hint::black_box(JobResult::read(&results.join(k).join(RESULT_FILE)).unwrap());
    }
    let parse_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let first = ingest_tree(&mut st, sw, &results).unwrap();
    let ingest_s = t0.elapsed().as_secs_f64();
    assert_eq!(
        first.ingested,
        FILES,
        "{:?}",
        first.errors.first().or(first.refused.first())
    );
    let t0 = Instant::now();
    let again = ingest_tree(&mut st, sw, &results).unwrap();
    let again_s = t0.elapsed().as_secs_f64();
    assert_eq!(again.ingested, FILES);
    assert_eq!(st.case_metrics(sw, &keys[0]).unwrap().len(), CASES);
    assert_eq!(st.epochs(sw, &keys[0]).unwrap().len(), CURVE);
    println!(
        "result.json: {} bytes ({CASES} cases, {CURVE} curve points); {FILES} written in {:.1} s",
        json.len(),
        write_s
    );
    println!("read + parse alone (one thread): {parse_s:.2} s");
    println!(
        "ingest_tree: {FILES} results in {:.2} s ({:.0} µs/file), target < 5 s: {:.2}× the budget; re-ingest {:.2} s",
        ingest_s,
        ingest_s * 1e6 / FILES as f64,
        ingest_s / 5.0,
        again_s
    );
}
