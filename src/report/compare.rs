//! Nightly comparisons: how a current sweep differs from a baseline, cell by cell.
//!
//! Cells are matched by [`CellResult::label`] (kind, module, rank, alpha). For each cell in
//! both, Dice is compared on the cases both have (paired by case id): the mean paired
//! difference Δ = current − baseline, its 95% t confidence interval
//! (`metrics::stats::paired_diff_ci`) and a paired Wilcoxon test (`metrics::stats::wilcoxon`).
//! Without shared cases Δ is the difference of the pooled means, with no interval or test.
//!
//! # The regression rule
//! A cell **regressed** when its Dice fell by more than the tolerance *and* by more than the
//! noise band: `Δ < −tolerance` and `Δ < −noise`, where `noise` is the half-width of the 95%
//! interval of the paired differences (so the whole interval lies below zero; 0 with fewer
//! than 2 defined pairs or without shared cases). It **improved** by the mirror rule.
//! [`Comparison::regressed`] is true when any cell regressed, any baseline cell is missing
//! from the current sweep, or any cell has failed folds now that had none in the baseline.
//! New cells and parameter-count changes are reported but are not regressions by themselves.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::render::{escape_md, fmt_p, fmt3};
use super::table::shared_dice;
use super::{CellResult, ReportError, ReportInput};
use crate::metrics::nan_null;
use crate::metrics::stats::{paired_diff_ci, wilcoxon};
use crate::metrics::{MeanSd, mean_sd};

/// The difference between two sweeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub baseline: String,
    pub current: String,
    /// Dice drop that is tolerated (absolute, e.g. 0.01).
    pub tolerance: f64,
    /// Cells in both sweeps, in the current sweep's sorted order.
    pub cells: Vec<CellChange>,
    /// Cells only in the current sweep.
    pub new: Vec<String>,
    /// Cells only in the baseline.
    pub missing: Vec<String>,
    /// Cells with failed folds in the current sweep and none in the baseline (or new there).
    pub failed: Vec<String>,
    /// Cells whose trainable or total parameter count changed.
    pub param_changes: Vec<ParamChange>,
    /// Where the baseline came from (set by the caller; shown in the Markdown header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_source: Option<Source>,
    /// Where the current sweep came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_source: Option<Source>,
}

/// Where one side of a comparison came from: a reference as typed and what it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// As typed (`nightly@latest`, `./old.db:nightly@3`, `./a.json`).
    pub reference: String,
    /// The database file (None for a JSON input).
    pub database: Option<String>,
    pub sweep: String,
    /// The run id (None: the sweep's current state, or a JSON input).
    pub run: Option<i64>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub code_version: Option<String>,
    pub exit_code: Option<i32>,
}

/// One cell in both sweeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellChange {
    pub cell: String,
    /// Dice pooled over the baseline's cases.
    pub baseline: MeanSd,
    /// Dice pooled over the current cases.
    pub current: MeanSd,
    /// Shared cases where both Dice are defined.
    pub n_paired: usize,
    /// Current − baseline: paired mean over shared cases, else the difference of pooled means.
    #[serde(with = "nan_null")]
    pub delta: f64,
    /// Half-width of the 95% interval of the paired differences (0 when undefined).
    pub noise: f64,
    /// Paired Wilcoxon p-value over shared cases (NaN without pairs).
    #[serde(with = "nan_null")]
    pub p_value: f64,
    pub regressed: bool,
    pub improved: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamChange {
    pub cell: String,
    pub baseline_trainable: u64,
    pub current_trainable: u64,
    pub baseline_total: u64,
    pub current_total: u64,
}

fn sorted(input: &ReportInput) -> Vec<&CellResult> {
    let mut cells: Vec<&CellResult> = input.cells.iter().collect();
    cells.sort_by_key(|c| c.sort_key());
    cells
}

/// Compares `current` against `baseline`; `tolerance` is the tolerated Dice drop (≥ 0).
pub fn compare(
    baseline: &ReportInput,
    current: &ReportInput,
    tolerance: f64,
) -> Result<Comparison, ReportError> {
    baseline.validate()?;
    current.validate()?;
    let tolerance = if tolerance.is_finite() {
        tolerance.abs()
    } else {
        0.0
    };
    let base: HashMap<String, &CellResult> =
        baseline.cells.iter().map(|c| (c.label(), c)).collect();
    let cur_labels: std::collections::HashSet<String> =
        current.cells.iter().map(|c| c.label()).collect();
    let mut out = Comparison {
        baseline: baseline.sweep.clone(),
        current: current.sweep.clone(),
        tolerance,
        cells: Vec::new(),
        new: Vec::new(),
        missing: sorted(baseline)
            .into_iter()
            .map(|c| c.label())
            .filter(|l| !cur_labels.contains(l))
            .collect(),
        failed: Vec::new(),
        param_changes: Vec::new(),
        baseline_source: None,
        current_source: None,
    };
    for cur in sorted(current) {
        let label = cur.label();
        let Some(old) = base.get(&label) else {
            if cur.has_failed() {
                out.failed.push(label.clone());
            }
            out.new.push(label);
            continue;
        };
        if cur.has_failed() && !old.has_failed() {
            out.failed.push(label.clone());
        }
        if cur.trainable_params != old.trainable_params || cur.total_params != old.total_params {
            out.param_changes.push(ParamChange {
                cell: label.clone(),
                baseline_trainable: old.trainable_params,
                current_trainable: cur.trainable_params,
                baseline_total: old.total_params,
                current_total: cur.total_params,
            });
        }
        out.cells.push(change(label, old, cur, tolerance)?);
    }
    Ok(out)
}

fn change(
    label: String,
    old: &CellResult,
    cur: &CellResult,
    tolerance: f64,
) -> Result<CellChange, ReportError> {
    let metrics = |source| ReportError::Metrics {
        cell: label.clone(),
        source,
    };
    let (x, y) = shared_dice(cur, old);
    let baseline = mean_sd(old.cases.iter().map(|c| c.dice));
    let current = mean_sd(cur.cases.iter().map(|c| c.dice));
    let ci = paired_diff_ci(&x, &y, 0.95).map_err(metrics)?;
    let (delta, noise, p_value) = if ci.n > 0 {
        let half = ci.upper - ci.mean;
        let p = wilcoxon(&x, &y).map_err(metrics)?.p_value;
        (ci.mean, if half.is_finite() { half } else { 0.0 }, p)
    } else {
        (current.mean - baseline.mean, 0.0, f64::NAN)
    };
    let band = tolerance.max(noise);
    Ok(CellChange {
        cell: label,
        baseline,
        current,
        n_paired: ci.n,
        delta,
        noise,
        p_value,
        regressed: delta < -band,
        improved: delta > band,
    })
}

impl Comparison {
    /// True when a cell regressed, a cell is missing, or a cell newly failed (see the module
    /// docs for the rule).
    pub fn regressed(&self) -> bool {
        self.cells.iter().any(|c| c.regressed)
            || !self.missing.is_empty()
            || !self.failed.is_empty()
    }

    /// The comparison as JSON (NaN as `null`), with `regressed` added.
    pub fn to_json(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("regressed".into(), self.regressed().into());
        }
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }

    /// A Markdown summary for a nightly mail: verdict, both sources (when set), the
    /// regressions first, then the rule, the table of cells, new cells and parameter changes.
    pub fn to_markdown(&self) -> String {
        let verdict = if self.regressed() {
            "REGRESSION"
        } else {
            "no regression"
        };
        let mut s = format!(
            "# Comparison: {} → {}: {verdict}\n\n",
            escape_md(&self.baseline),
            escape_md(&self.current)
        );
        if let (Some(b), Some(c)) = (&self.baseline_source, &self.current_source) {
            s.push_str(&sources_table(b, c));
        }
        let delta = |d: f64| {
            if d.is_finite() {
                format!("{d:+.3}")
            } else {
                "–".into()
            }
        };
        let mut regressions: Vec<String> = self
            .cells
            .iter()
            .filter(|c| c.regressed)
            .map(|c| {
                format!(
                    "- {}: Dice {} → {} (Δ {}, noise {}, {} paired)",
                    escape_md(&c.cell),
                    fmt3(c.baseline.mean),
                    fmt3(c.current.mean),
                    delta(c.delta),
                    fmt3(c.noise),
                    c.n_paired
                )
            })
            .collect();
        regressions.extend(
            self.missing
                .iter()
                .map(|m| format!("- {}: missing from the current sweep", escape_md(m))),
        );
        regressions.extend(
            self.failed
                .iter()
                .map(|m| format!("- {}: newly failed folds", escape_md(m))),
        );
        if regressions.is_empty() {
            s.push_str("**No regression.**\n\n");
        } else {
            s.push_str(&format!(
                "## Regressions ({})\n\n{}\n\n",
                regressions.len(),
                regressions.join("\n")
            ));
        }
        s.push_str(&format!(
            "A cell regressed when Δ Dice (current − baseline, paired over shared cases) is \
below −max(tolerance {}, noise), noise = half-width of the 95% interval of the paired \
differences. Missing and newly failed cells also count as regressions.\n\n",
            self.tolerance
        ));
        s.push_str("| cell | baseline | current | Δ | noise | n paired | p | verdict |\n");
        s.push_str("|---|---|---|---|---|---|---|---|\n");
        for c in &self.cells {
            let verdict = if c.regressed {
                "regressed"
            } else if c.improved {
                "improved"
            } else {
                ""
            };
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {verdict} |\n",
                escape_md(&c.cell),
                fmt3(c.baseline.mean),
                fmt3(c.current.mean),
                delta(c.delta),
                fmt3(c.noise),
                c.n_paired,
                fmt_p(c.p_value),
            ));
        }
        let list = |title: &str, items: &[String]| {
            if items.is_empty() {
                String::new()
            } else {
                let lines: Vec<String> = items
                    .iter()
                    .map(|i| format!("- {}", escape_md(i)))
                    .collect();
                format!("\n**{title}**\n\n{}\n", lines.join("\n"))
            }
        };
        s.push_str(&list("New cells", &self.new));
        s.push_str(&list("Missing cells (regression)", &self.missing));
        s.push_str(&list("Newly failed cells (regression)", &self.failed));
        let params: Vec<String> = self
            .param_changes
            .iter()
            .map(|p| {
                format!(
                    "{}: trainable {} → {}, total {} → {}",
                    p.cell,
                    p.baseline_trainable,
                    p.current_trainable,
                    p.baseline_total,
                    p.current_total
                )
            })
            .collect();
        s.push_str(&list("Parameter-count changes", &params));
        s
    }
}

/// The header of a nightly mail: what each side is.
fn sources_table(b: &Source, c: &Source) -> String {
    let opt = |v: &Option<String>| v.as_deref().map(escape_md).unwrap_or_else(|| "–".into());
    let run = |s: &Source| match (s.run, s.database.is_some()) {
        (Some(id), _) => id.to_string(),
        (None, true) => "current state".into(),
        (None, false) => "– (JSON file)".into(),
    };
    let ended = |s: &Source| match (&s.ended_at, s.exit_code) {
        (Some(t), Some(code)) => format!("{} (exit {code})", escape_md(t)),
        (Some(t), None) => escape_md(t),
        (None, _) if s.run.is_some() => "not ended (running or killed)".into(),
        (None, _) => "–".into(),
    };
    let rows = [
        (
            "reference",
            escape_md(&b.reference),
            escape_md(&c.reference),
        ),
        ("sweep", escape_md(&b.sweep), escape_md(&c.sweep)),
        ("run", run(b), run(c)),
        ("started", opt(&b.started_at), opt(&c.started_at)),
        ("ended", ended(b), ended(c)),
        ("code version", opt(&b.code_version), opt(&c.code_version)),
        ("database", opt(&b.database), opt(&c.database)),
    ];
    let mut s = String::from("| | baseline | current |\n|---|---|---|\n");
    for (name, x, y) in rows {
        s.push_str(&format!("| {name} | {x} | {y} |\n"));
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AdaptationKind;
    use crate::report::CaseResult;

    fn cell(rank: u32, dice: &[f64]) -> CellResult {
        CellResult {
            kind: AdaptationKind::LoraC,
            module: Some("all".into()),
            rank: Some(rank),
            alpha: None,
            trainable_params: 100,
            total_params: 1000,
            folds_expected: 1,
            folds_done: 1,
            folds_failed: 0,
            cases: dice
                .iter()
                .enumerate()
                .map(|(i, &d)| CaseResult {
                    case: format!("c{i}"),
                    fold: 0,
                    dice: d,
                    tp: 1,
                    fp: 1,
                    fn_: 1,
                    hd95_mm: 1.0,
                    truth_ml: 1.0,
                    pred_ml: 1.0,
                })
                .collect(),
            loss_curves: vec![],
        }
    }

    fn sweep(name: &str, cells: Vec<CellResult>) -> ReportInput {
        ReportInput {
            ran_on: Vec::new(),
            sweep: name.into(),
            cells,
        }
    }

    const BASE: [f64; 6] = [0.60, 0.70, 0.65, 0.72, 0.58, 0.66];

    #[test]
    fn identical_sweeps_do_not_regress() {
        let a = sweep("a", vec![cell(4, &BASE)]);
        let c = compare(&a, &a, 0.01).unwrap();
        assert!(!c.regressed(), "{}", c.to_markdown());
        assert_eq!(c.cells[0].delta, 0.0);
        assert_eq!(c.cells[0].n_paired, 6);
    }

    #[test]
    fn a_consistent_drop_regresses_and_a_noisy_one_does_not() {
        let a = sweep("a", vec![cell(4, &BASE)]);
        let drop: Vec<f64> = BASE.iter().map(|d| d - 0.05).collect();
        let c = compare(&a, &sweep("b", vec![cell(4, &drop)]), 0.01).unwrap();
        assert!(c.regressed() && c.cells[0].regressed);
        assert!((c.cells[0].delta + 0.05).abs() < 1e-12);
        // Mean drop 0.05, but differences ±0.3: inside the noise band.
        let noisy: Vec<f64> = BASE
            .iter()
            .enumerate()
            .map(|(i, d)| if i % 2 == 0 { d + 0.25 } else { d - 0.35 })
            .collect();
        let c = compare(&a, &sweep("b", vec![cell(4, &noisy)]), 0.01).unwrap();
        assert!(
            c.cells[0].noise > 0.05 && !c.regressed(),
            "{:?}",
            c.cells[0]
        );
        // A drop within the tolerance is not a regression either.
        let small: Vec<f64> = BASE.iter().map(|d| d - 0.005).collect();
        assert!(
            !compare(&a, &sweep("b", vec![cell(4, &small)]), 0.01)
                .unwrap()
                .regressed()
        );
    }

    #[test]
    fn missing_new_failed_and_param_changes() {
        let a = sweep("a", vec![cell(4, &BASE), cell(8, &BASE)]);
        let mut changed = cell(4, &BASE);
        changed.trainable_params = 120;
        let mut failed = cell(16, &BASE);
        failed.folds_failed = 1;
        failed.folds_expected = 2;
        let b = sweep("b", vec![changed, failed]);
        let c = compare(&a, &b, 0.01).unwrap();
        assert_eq!(c.missing, ["lora-c all r8"]);
        assert_eq!(c.new, ["lora-c all r16"]);
        assert_eq!(c.failed, ["lora-c all r16"]);
        assert_eq!(c.param_changes[0].current_trainable, 120);
        assert!(c.regressed());
        let md = c.to_markdown();
        assert!(
            md.contains("REGRESSION") && md.contains("trainable 100 → 120"),
            "{md}"
        );
        let json: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(json["regressed"], true);
        assert_eq!(json["missing"][0], "lora-c all r8");
    }
}
