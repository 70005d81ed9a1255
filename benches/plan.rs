//! Time to validate a spec and expand its grid (figures, not a test).
//!
//! `cargo bench --bench plan` prints the median of a few runs for two generated specs:
//! - ~100,000 jobs: 3,331 cells (none + 6 adapter kinds × 5 selectors × 111 ranks) × 5 folds ×
//!   6 seeds — the size of a large study;
//! - ~100,000 cells: 6 kinds × 5 selectors × 667 ranks × 5 alphas (rank and four values no rank equals), the expansion's stress case.
//!
//! Each row reports `sweep::parse` (YAML, validation, selector checks and expansion with ids)
//! and `sweep::expand` alone.

use std::path::Path;
use std::time::Instant;

use ranksweep::sweep::{self, expand};

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

fn main() {
    let cases = [
        ("~100k jobs", spec(111, "rank", 5, 6)),
        ("~100k cells", spec(667, "rank, 0.25, 0.5, 1.5, 1000", 2, 1)),
    ];
    for (name, text) in cases {
        let s = sweep::parse(&text, Path::new("bench.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let parse = median_seconds(5, || {
            std::hint::black_box(sweep::parse(&text, Path::new("bench.yaml")).unwrap());
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
}
