//! Time to render a whole report (figures, not a test).
//!
//! `cargo bench --bench report` builds synthetic sweeps of about 10,000 jobs and times
//! `report::write_report` with every format (tables, six charts as SVG and PNG, CSV, LaTeX)
//! into a temporary folder, median of 3 runs:
//! - 50 cells × 3 folds × 67 test cases per fold (10,050 case results), the shape;
//! - 3,334 cells × 3 folds × 10 cases (10,002 jobs, 100,020 case results), many cells.
//!
//! Target: under 3 s each.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ranksweep::metrics::Strata;
use ranksweep::model::AdaptationKind;
use ranksweep::report::{self, CaseResult, CellResult, Format, LossCurve, LossPoint, ReportInput};

fn sweep(n_cells: usize, folds: u32, cases_per_fold: usize) -> ReportInput {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let modules = ["encoder", "decoder", "bottleneck", "all"];
    let ranks = [4u32, 8, 16, 32, 64, 96];
    let n_cases = folds as usize * cases_per_fold;
    let truth: Vec<f64> = (0..n_cases).map(|_| rng.random_range(0.5..80.0)).collect();
    let mut cells = Vec::with_capacity(n_cells);
    for i in 0..n_cells {
        let (kind, module, rank, alpha) = match i {
            0 => (AdaptationKind::None, None, None, None),
            1..=4 => (AdaptationKind::Full, Some(modules[i - 1]), None, None),
            _ => {
                let j = i - 5;
                let kind = AdaptationKind::ADAPTERS[j % 6];
                let module = modules[(j / 6) % 4];
                let rank = ranks[(j / 24) % 6];
                // Beyond the 144 kind × module × rank combinations, vary alpha.
                let alpha = (j >= 144).then_some((j / 144) as f64);
                (kind, Some(module), Some(rank), alpha)
            }
        };
        let base: f64 = rng.random_range(0.3..0.7);
        let cases = (0..n_cases)
            .map(|c| {
                let dice = (base + rng.random_range(-0.25..0.25)).clamp(0.0, 1.0);
                CaseResult {
                    case: format!("case{c:05}"),
                    fold: (c % folds as usize) as u32,
                    dice,
                    tp: 1000,
                    fp: 100,
                    fn_: 120,
                    hd95_mm: 5.0,
                    truth_ml: truth[c],
                    pred_ml: truth[c] * rng.random_range(0.8..1.2),
                }
            })
            .collect();
        let loss_curves = (0..folds)
            .map(|fold| LossCurve {
                fold,
                points: (0..100u64)
                    .map(|s| LossPoint {
                        step: s * 10,
                        loss: 1.0 / (1.0 + 0.05 * s as f64) + rng.random_range(0.0..0.02),
                    })
                    .collect(),
            })
            .collect();
        cells.push(CellResult {
            kind,
            module: module.map(String::from),
            rank,
            alpha,
            trainable_params: rank.map_or(100_000, |r| 1_000 * r as u64),
            total_params: 482_449,
            folds_expected: folds,
            folds_done: folds,
            folds_failed: 0,
            cases,
            loss_curves,
        });
    }
    ReportInput {
        ran_on: Vec::new(),
        sweep: format!("bench-{n_cells}"),
        cells,
    }
}

fn main() {
    let formats = [Format::Markdown, Format::Html, Format::Csv, Format::Tex];
    let strata = Strata::default();
    for (cells, folds, per_fold) in [(50, 3, 67), (3334, 3, 10)] {
        let input = sweep(cells, folds, per_fold);
        let n_results: usize = input.cells.iter().map(|c| c.cases.len()).sum();
        let mut times = Vec::new();
        let mut table_times = Vec::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("a temporary folder");
            let start = Instant::now();
            report::build_table(&input, &strata).expect("the table builds");
            table_times.push(start.elapsed().as_secs_f64());
            let start = Instant::now();
            report::write_report(&input, dir.path(), &formats, &strata)
                .expect("the report renders");
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        table_times.sort_by(f64::total_cmp);
        println!(
            "report: {cells} cells × {folds} folds × {per_fold} cases ({} jobs, {n_results} case results): \
write_report (md, html, csv, tex, 6 charts × SVG+PNG) median {:.3} s (table alone {:.3} s); target < 3 s",
            cells * folds as usize,
            times[1],
            table_times[1]
        );
    }
}
