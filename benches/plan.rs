//! Time to validate a spec and expand its grid (figures, not a test).
//!
//! `cargo bench --bench plan` prints the median of a few runs for two generated specs:
//! - ~100,000 jobs: 3,331 cells (none + 6 adapter kinds × 5 selectors × 111 ranks) × 5 folds ×
//!   6 seeds — the size of a large study;
//! - ~100,000 cells: 6 kinds × 5 selectors × 667 ranks × 5 alphas (rank and four values no rank equals), the expansion's stress case.
//!
//! Each row reports `sweep::parse` (YAML, validation, selector checks and expansion with ids)
//! and `sweep::expand` alone. Then `plan()` of the ~100,000-job spec: every job's config, key
//! (canonical JSON + SHA-256) and dependencies (target < 1 s). A last row times writing the ~100,000-job plan to a fresh SQLite
//! store (`upsert_cells` + `upsert_jobs`, one transaction each) and re-writing it unchanged (the
//! resume path).

use std::path::Path;
use std::time::Instant;

use ranksweep::data::preprocess::View;
use ranksweep::store::{NewJob, Stage, Store};
use ranksweep::sweep::plan::{Fingerprints, plan};
use ranksweep::sweep::{self, Spec, expand};

fn spec(ranks: usize, alphas: &str, folds: usize, seeds: usize) -> String {
    let ranks: Vec<String> = (1..=ranks).map(|r| r.to_string()).collect();
    let seeds: Vec<String> = (0..seeds).map(|s| s.to_string()).collect();
    format!(
        "name: bench
data: {{source: a, target: b, folds: {folds}}}
model: {{features: [32, 64, 128, 256, 512]}}
grid:
  - kind: none
  - kind: [lora-c, conv-lora, cp-lora, dora-c, conv-dora, cp-dora]
    module: [encoder, decoder, bottleneck, all, '*.conv1']
    rank: [{}]
    alpha: [{alphas}]
seeds: [{}]
",
        ranks.join(", "),
        seeds.join(", ")
    )
}

fn median_seconds(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[runs / 2]
}

/// Fine-tuning jobs of a spec, keyed by cell, fold and seed (the planner's real key adds the
/// code and data fingerprints; the size of the rows is what matters here).
fn jobs(s: &Spec) -> Vec<NewJob> {
    let mut out = Vec::with_capacity(s.finetune_jobs());
    for c in &s.cells {
        let json = c.canonical_json();
        for fold in 0..s.data.folds {
            for &seed in &s.seeds {
                out.push(NewJob {
                    key: format!("{}-f{fold}-s{seed}", c.id),
                    cell: Some(c.id.clone()),
                    stage: Stage::Finetune,
                    kind: Some(c.adaptation.kind),
                    selector: c.adaptation.module.as_ref().map(|m| m.to_string()),
                    rank: c.adaptation.rank,
                    alpha: c.adaptation.alpha,
                    fold: Some(fold),
                    seed,
                    view: View::Axial,
                    config_json: json.clone(),
                    needs: vec![],
                });
            }
        }
    }
    out
}

fn main() {
    let cases = [
        ("~100k jobs", spec(111, "rank", 5, 6)),
        ("~100k cells", spec(667, "rank, 0.25, 0.5, 1.5, 1000", 2, 1)),
    ];
    for (name, text) in &cases {
        let s = sweep::parse(text, Path::new("bench.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let parse = median_seconds(5, || {
            std::hint::black_box(sweep::parse(text, Path::new("bench.yaml")).unwrap());
        });
        let exp = median_seconds(5, || {
            std::hint::black_box(expand(&s.grid).unwrap());
        });
        println!(
            "{name}: {} cells, {} jobs (× folds × seeds): parse+validate+expand {:.1} ms, expand {:.1} ms ({:.2} µs/cell)",
            s.cells.len(),
            s.finetune_jobs(),
            parse * 1e3,
            exp * 1e3,
            exp * 1e6 / s.cells.len() as f64
        );
    }

    let s = sweep::parse(&cases[0].1, Path::new("bench.yaml")).unwrap();
    // The whole planner: every job's config, canonical JSON and SHA-256 key, and dependencies.
    let fp = Fingerprints {
        code: "ranksweep bench".into(),
        source: "source-fingerprint".into(),
        target: "target-fingerprint".into(),
    };
    let n = plan(&s, &fp, Path::new("results")).jobs.len();
    let full = median_seconds(3, || {
        std::hint::black_box(plan(&s, &fp, Path::new("results")));
    });
    println!(
        "plan(): {n} jobs with keys in {:.0} ms ({:.1} µs/job), target < 1 s: {:.2}× the budget",
        full * 1e3,
        full * 1e6 / n as f64,
        full
    );
    let js = jobs(&s);
    let dir = tempfile::tempdir().unwrap();
    let mut st = Store::open(&dir.path().join("bench.sqlite")).unwrap();
    let sw = st.upsert_sweep(&s.name, &s.file, &s.text).unwrap();
    let t0 = Instant::now();
    st.upsert_cells(sw, &s.cells).unwrap();
    let first = st.upsert_jobs(sw, &js).unwrap();
    let write = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    st.upsert_cells(sw, &s.cells).unwrap();
    let again = st.upsert_jobs(sw, &js).unwrap();
    let rewrite = t0.elapsed().as_secs_f64();
    assert_eq!((first.inserted, again.existing), (js.len(), js.len()));
    println!(
        "store: {} cells + {} jobs written in {:.0} ms, re-planned unchanged in {:.0} ms",
        s.cells.len(),
        js.len(),
        write * 1e3,
        rewrite * 1e3
    );
}
