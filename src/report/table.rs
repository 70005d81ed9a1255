//! The study's main table: one [`Row`] per cell, computed from a [`ReportInput`].
//!
//! Every number comes from `crate::metrics`: Dice mean ± SD ([`mean_sd`], NaN cases skipped)
//! pooled over the test cases of all folds and per fold, Dice per annotated-volume stratum,
//! volume agreement ([`volume_agreement`]), and paired Wilcoxon tests ([`wilcoxon`]) over the
//! cases a cell shares with `none` and with `full` on the same module. All p-values of a table
//! are Holm-adjusted together ([`holm`]), so a marker means "significant after correcting for
//! every comparison shown".

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{CellResult, ReportError, ReportInput};
use crate::metrics::aggregate::StratumSummary;
use crate::metrics::nan_null;
use crate::metrics::stats::{holm, wilcoxon};
use crate::metrics::{MeanSd, Strata, VolumeAgreement, agreement::volume_agreement, mean_sd};
use crate::model::AdaptationKind;

/// The main table of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    pub sweep: String,
    /// Labels of the volume strata, in order ("<5", "5–15", ...).
    pub strata: Vec<String>,
    /// Rows sorted by kind, module, rank, alpha.
    pub rows: Vec<Row>,
    /// [`ReportInput::ran_on`].
    #[serde(default)]
    pub ran_on: Vec<(String, usize)>,
}

/// One cell's line of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// [`CellResult::label`].
    pub cell: String,
    pub kind: AdaptationKind,
    pub module: Option<String>,
    pub rank: Option<u32>,
    pub alpha: Option<f64>,
    /// Test cases (including those whose Dice is NaN).
    pub n_cases: usize,
    /// Dice over the test cases of all folds pooled.
    pub dice: MeanSd,
    /// Dice per fold, in fold order.
    pub dice_per_fold: Vec<FoldDice>,
    pub folds_done: u32,
    pub folds_expected: u32,
    pub folds_failed: u32,
    /// All expected folds finished.
    pub complete: bool,
    pub trainable_params: u64,
    pub total_params: u64,
    /// 100 · trainable / total.
    pub trainable_pct: f64,
    /// Dice per stratum of the annotated volume, every stratum listed.
    pub strata: Vec<StratumSummary>,
    /// Predicted vs annotated volume.
    pub agreement: VolumeAgreement,
    /// Paired test against the `none` cell; absent for `none` itself or without a `none` cell.
    pub vs_none: Option<PairedTest>,
    /// Paired test against `full` on the same module; absent for `none`, `full`, or when the
    /// sweep has no such cell.
    pub vs_full: Option<PairedTest>,
    /// Highest pooled mean Dice among the cells of its kind.
    pub best_of_kind: bool,
    /// Highest pooled mean Dice of the table.
    pub best_overall: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FoldDice {
    pub fold: u32,
    pub dice: MeanSd,
}

/// A paired Wilcoxon signed-rank test of this cell's Dice against another cell's, over the
/// cases both have (pairs with a NaN Dice are dropped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedTest {
    /// The other cell's label.
    pub against: String,
    /// Pairs used (shared cases with both Dice defined).
    pub n: usize,
    /// Mean of this − other over those pairs.
    #[serde(with = "nan_null")]
    pub mean_diff: f64,
    /// Two-sided p-value (scipy's defaults, see `metrics::stats`).
    #[serde(with = "nan_null")]
    pub p_value: f64,
    /// Holm-adjusted over every p-value of the table.
    #[serde(with = "nan_null")]
    pub p_holm: f64,
}

impl PairedTest {
    /// `***` p_holm < 0.001, `**` < 0.01, `*` < 0.05, else empty.
    pub fn marker(&self) -> &'static str {
        significance_marker(self.p_holm)
    }
}

/// `***` p < 0.001, `**` < 0.01, `*` < 0.05, else empty (NaN included).
pub fn significance_marker(p: f64) -> &'static str {
    if p < 0.001 {
        "***"
    } else if p < 0.01 {
        "**"
    } else if p < 0.05 {
        "*"
    } else {
        ""
    }
}

/// Builds the table: validates the input, computes every row, runs the paired tests and
/// adjusts them together, and marks the best cells.
pub fn build_table(input: &ReportInput, strata: &Strata) -> Result<Table, ReportError> {
    input.validate()?;
    let mut cells: Vec<&CellResult> = input.cells.iter().collect();
    cells.sort_by_key(|c| c.sort_key());
    let none = cells
        .iter()
        .find(|c| c.kind == AdaptationKind::None)
        .copied();
    let mut rows = Vec::with_capacity(cells.len());
    for cell in &cells {
        let mut row = row_of(cell, strata)?;
        if cell.kind != AdaptationKind::None {
            row.vs_none = none.map(|n| paired(cell, n)).transpose()?;
        }
        if cell.kind.is_adapter() {
            let full = cells
                .iter()
                .find(|f| f.kind == AdaptationKind::Full && f.module == cell.module);
            row.vs_full = full.map(|f| paired(cell, f)).transpose()?;
        }
        rows.push(row);
    }
    adjust_holm(&mut rows)?;
    mark_best(&mut rows);
    Ok(Table {
        sweep: input.sweep.clone(),
        strata: strata.labels(),
        rows,
        ran_on: input.ran_on.clone(),
    })
}

fn row_of(cell: &CellResult, strata: &Strata) -> Result<Row, ReportError> {
    let label = cell.label();
    let mut folds: Vec<u32> = cell.cases.iter().map(|c| c.fold).collect();
    folds.sort_unstable();
    folds.dedup();
    let dice_per_fold = folds
        .iter()
        .map(|&fold| FoldDice {
            fold,
            dice: mean_sd(cell.cases.iter().filter(|c| c.fold == fold).map(|c| c.dice)),
        })
        .collect();
    let per_stratum = (0..strata.len())
        .map(|i| {
            let members: Vec<f64> = cell
                .cases
                .iter()
                .filter(|c| strata.index_of(c.truth_ml) == i)
                .map(|c| c.dice)
                .collect();
            StratumSummary {
                label: strata.label(i),
                n_cases: members.len(),
                dice: mean_sd(members),
            }
        })
        .collect();
    let pred: Vec<f64> = cell.cases.iter().map(|c| c.pred_ml).collect();
    let truth: Vec<f64> = cell.cases.iter().map(|c| c.truth_ml).collect();
    let agreement = volume_agreement(&pred, &truth).map_err(|source| ReportError::Metrics {
        cell: label.clone(),
        source,
    })?;
    Ok(Row {
        cell: label,
        kind: cell.kind,
        module: cell.module.clone(),
        rank: cell.rank,
        alpha: cell.alpha,
        n_cases: cell.cases.len(),
        dice: mean_sd(cell.cases.iter().map(|c| c.dice)),
        dice_per_fold,
        folds_done: cell.folds_done,
        folds_expected: cell.folds_expected,
        folds_failed: cell.folds_failed,
        complete: cell.is_complete(),
        trainable_params: cell.trainable_params,
        total_params: cell.total_params,
        trainable_pct: 100.0 * cell.trainable_params as f64 / cell.total_params as f64,
        strata: per_stratum,
        agreement,
        vs_none: None,
        vs_full: None,
        best_of_kind: false,
        best_overall: false,
    })
}

/// Dice of the cases two cells share, as paired vectors in the first cell's case order.
pub(crate) fn shared_dice(a: &CellResult, b: &CellResult) -> (Vec<f64>, Vec<f64>) {
    let other: HashMap<&str, f64> = b.cases.iter().map(|c| (c.case.as_str(), c.dice)).collect();
    a.cases
        .iter()
        .filter_map(|c| other.get(c.case.as_str()).map(|&d| (c.dice, d)))
        .unzip()
}

fn paired(cell: &CellResult, other: &CellResult) -> Result<PairedTest, ReportError> {
    let (x, y) = shared_dice(cell, other);
    let w = wilcoxon(&x, &y).map_err(|source| ReportError::Metrics {
        cell: cell.label(),
        source,
    })?;
    Ok(PairedTest {
        against: other.label(),
        n: w.n + w.n_zero,
        mean_diff: mean_sd(x.iter().zip(&y).map(|(a, b)| a - b)).mean,
        p_value: w.p_value,
        p_holm: f64::NAN,
    })
}

fn adjust_holm(rows: &mut [Row]) -> Result<(), ReportError> {
    let mut p = Vec::new();
    for row in rows.iter() {
        for t in [&row.vs_none, &row.vs_full].into_iter().flatten() {
            p.push(t.p_value);
        }
    }
    let adjusted = holm(&p).map_err(|source| ReportError::Metrics {
        cell: "(all cells, holm)".into(),
        source,
    })?;
    let mut it = adjusted.into_iter();
    for row in rows.iter_mut() {
        for t in [&mut row.vs_none, &mut row.vs_full].into_iter().flatten() {
            t.p_holm = it.next().unwrap_or(f64::NAN);
        }
    }
    Ok(())
}

/// Marks the highest pooled mean Dice per kind and overall; NaN means never win, the first of
/// equal means (in table order) wins.
fn mark_best(rows: &mut [Row]) {
    let best_of = |rows: &[Row], filter: &dyn Fn(&Row) -> bool| -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, r) in rows.iter().enumerate() {
            if filter(r)
                && !r.dice.mean.is_nan()
                && best.is_none_or(|b| r.dice.mean > rows[b].dice.mean)
            {
                best = Some(i);
            }
        }
        best
    };
    for kind in AdaptationKind::ALL {
        if let Some(i) = best_of(rows, &|r: &Row| r.kind == kind) {
            rows[i].best_of_kind = true;
        }
    }
    if let Some(i) = best_of(rows, &|_: &Row| true) {
        rows[i].best_overall = true;
    }
}

impl Table {
    /// The row marked best overall.
    pub fn best_overall(&self) -> Option<&Row> {
        self.rows.iter().find(|r| r.best_overall)
    }

    /// The rows marked best of their kind, in table order.
    pub fn best_per_kind(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(|r| r.best_of_kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::CaseResult;

    fn case(id: &str, fold: u32, dice: f64, truth_ml: f64) -> CaseResult {
        CaseResult {
            case: id.into(),
            fold,
            dice,
            tp: 1,
            fp: 0,
            fn_: 0,
            hd95_mm: 1.0,
            truth_ml,
            pred_ml: truth_ml * 1.1,
        }
    }

    fn cell(
        kind: AdaptationKind,
        module: Option<&str>,
        rank: Option<u32>,
        dice: &[f64],
    ) -> CellResult {
        CellResult {
            kind,
            module: module.map(String::from),
            rank,
            alpha: None,
            trainable_params: 25,
            total_params: 200,
            folds_expected: 2,
            folds_done: 2,
            folds_failed: 0,
            cases: dice
                .iter()
                .enumerate()
                .map(|(i, &d)| case(&format!("c{i}"), (i % 2) as u32, d, 2.0 + 4.0 * i as f64))
                .collect(),
            loss_curves: vec![],
        }
    }

    #[test]
    fn rows_pool_folds_and_split_strata() {
        let input = ReportInput {
            ran_on: Vec::new(),
            sweep: "t".into(),
            cells: vec![cell(
                AdaptationKind::LoraC,
                Some("all"),
                Some(4),
                &[0.2, 0.4, f64::NAN, 0.8],
            )],
        };
        let t = build_table(&input, &Strata::default()).unwrap();
        let r = &t.rows[0];
        // Dice 0.2, 0.4, 0.8: mean 0.4667, SD sqrt(((−.2667)² + (−.0667)² + .3333²)/2) = 0.3055.
        assert!((r.dice.mean - 1.4 / 3.0).abs() < 1e-12 && r.dice.n == 3);
        assert!(
            (r.dice.sd - 0.305505046330389).abs() < 1e-12,
            "{}",
            r.dice.sd
        );
        // Folds: 0 has c0 (0.2), c2 (NaN); 1 has c1 (0.4), c3 (0.8).
        assert_eq!(r.dice_per_fold.len(), 2);
        assert!((r.dice_per_fold[0].dice.mean - 0.2).abs() < 1e-12);
        assert!((r.dice_per_fold[1].dice.mean - 0.6).abs() < 1e-12);
        // Volumes 2, 6, 10, 14 mL → strata <5: 1, 5–15: 3, 15–30: 0, ≥30: 0.
        let n: Vec<usize> = r.strata.iter().map(|s| s.n_cases).collect();
        assert_eq!(n, [1, 3, 0, 0]);
        assert!((r.trainable_pct - 12.5).abs() < 1e-12);
        assert!(r.best_overall && r.best_of_kind && r.vs_none.is_none());
    }

    #[test]
    fn tests_pair_by_case_and_best_cells_are_marked() {
        let input = ReportInput {
            ran_on: Vec::new(),
            sweep: "t".into(),
            cells: vec![
                cell(
                    AdaptationKind::LoraC,
                    Some("all"),
                    Some(8),
                    &[0.5, 0.6, 0.7, 0.8, 0.9],
                ),
                cell(AdaptationKind::None, None, None, &[0.1, 0.2, 0.3, 0.4, 0.5]),
                cell(
                    AdaptationKind::LoraC,
                    Some("all"),
                    Some(4),
                    &[0.4, 0.5, 0.6, 0.7, 0.8],
                ),
                cell(
                    AdaptationKind::Full,
                    Some("all"),
                    None,
                    &[0.3, 0.2, 0.6, 0.7, 0.8],
                ),
            ],
        };
        let t = build_table(&input, &Strata::default()).unwrap();
        let labels: Vec<&str> = t.rows.iter().map(|r| r.cell.as_str()).collect();
        assert_eq!(
            labels,
            ["none", "full all", "lora-c all r4", "lora-c all r8"]
        );
        let r8 = &t.rows[3];
        let vs_none = r8.vs_none.as_ref().unwrap();
        // All five differences +0.4: exact p = 2/32 = 0.0625 (scipy.stats.wilcoxon).
        assert_eq!(vs_none.n, 5);
        assert!((vs_none.mean_diff - 0.4).abs() < 1e-12);
        assert!(r8.vs_full.as_ref().unwrap().against == "full all");
        assert!(t.rows[1].vs_full.is_none() && t.rows[0].vs_none.is_none());
        assert!(r8.best_overall && r8.best_of_kind && !t.rows[2].best_of_kind);
        assert!(t.rows[0].best_of_kind && t.rows[1].best_of_kind);
        // Five p-values, Holm-adjusted together: each adjusted ≥ its raw value.
        let tests: Vec<&PairedTest> = t
            .rows
            .iter()
            .flat_map(|r| [&r.vs_none, &r.vs_full])
            .flatten()
            .collect();
        assert_eq!(tests.len(), 5);
        assert!(tests.iter().all(|t| t.p_holm >= t.p_value));
    }

    #[test]
    fn markers_follow_thresholds() {
        assert_eq!(significance_marker(0.0004), "***");
        assert_eq!(significance_marker(0.004), "**");
        assert_eq!(significance_marker(0.04), "*");
        assert_eq!(significance_marker(0.05), "");
        assert_eq!(significance_marker(f64::NAN), "");
    }
}
