//! What a report is made from: [`ReportInput`], plain data that the store (or a JSON file) fills.
//!
//! One [`CellResult`] per cell of the sweep (an adaptation kind on a module at a rank), with its
//! parameter counts, how many folds ran, every test case's result and the training-loss
//! curves. Nothing here depends on the store: `ranksweep report --input FILE.json` reads the
//! same type. Undefined numbers (an empty case's Dice or HD95) are NaN, written JSON `null`.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ReportError;
use crate::metrics::nan_null;
use crate::model::AdaptationKind;

/// A sweep's results, as the report needs them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportInput {
    /// The sweep's name, shown in titles.
    pub sweep: String,
    /// One entry per cell, in any order (the report sorts them).
    pub cells: Vec<CellResult>,
    /// What ran the sweep's results: each device line (`cpu (2 threads), f32`, `NVIDIA H200
    /// (GPU 0), driver …, cuDNN on, bf16`) with its number of jobs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ran_on: Vec<(String, usize)>,
}

/// One cell: an adaptation of one module at one rank, over all its folds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    pub kind: AdaptationKind,
    /// Selector text (`decoder`, `encoder.*`); `None` for `none`.
    #[serde(default)]
    pub module: Option<String>,
    /// Adapter rank; `None` for `none` and `full`.
    #[serde(default)]
    pub rank: Option<u32>,
    /// Adapter alpha; `None` for `none` and `full` (or when it defaults to the rank).
    #[serde(default)]
    pub alpha: Option<f64>,
    /// Trainable parameters of the adaptation.
    pub trainable_params: u64,
    /// Parameters of the full model (the denominator of the percentage).
    pub total_params: u64,
    pub folds_expected: u32,
    pub folds_done: u32,
    /// Folds whose job failed (crash, NaN loss, timeout); they count in neither `cases` nor
    /// `folds_done`.
    #[serde(default)]
    pub folds_failed: u32,
    /// Test cases of every finished fold (each case is tested in one fold).
    pub cases: Vec<CaseResult>,
    /// Training-loss curves, one per finished fold.
    #[serde(default)]
    pub loss_curves: Vec<LossCurve>,
}

/// One test case's result in one cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    pub case: String,
    pub fold: u32,
    /// NaN (`null`) when annotation and prediction are both empty.
    #[serde(with = "nan_null")]
    pub dice: f64,
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    /// NaN (`null`) when either mask is empty.
    #[serde(with = "nan_null")]
    pub hd95_mm: f64,
    /// Annotated volume in mL.
    pub truth_ml: f64,
    /// Predicted volume in mL.
    pub pred_ml: f64,
}

/// The training loss of one fold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossCurve {
    pub fold: u32,
    pub points: Vec<LossPoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossPoint {
    pub step: u64,
    #[serde(with = "nan_null")]
    pub loss: f64,
}

impl CellResult {
    /// The name shown everywhere and used to match cells between sweeps:
    /// `none`, `full decoder`, `dora-c decoder r64`, `lora-c all r16 α32`.
    pub fn label(&self) -> String {
        let mut s = self.kind.name().to_string();
        if let Some(m) = &self.module {
            s.push(' ');
            s.push_str(m);
        }
        if let Some(r) = self.rank {
            s.push_str(&format!(" r{r}"));
        }
        if let Some(a) = self.alpha {
            s.push_str(&format!(" α{a}"));
        }
        s
    }

    /// All expected folds finished.
    pub fn is_complete(&self) -> bool {
        self.folds_done >= self.folds_expected
    }

    /// At least one fold failed.
    pub fn has_failed(&self) -> bool {
        self.folds_failed > 0
    }

    /// Sort key: kind (in `AdaptationKind::ALL` order), module, rank, alpha.
    pub(crate) fn sort_key(&self) -> (AdaptationKind, String, u32, u64) {
        (
            self.kind,
            self.module.clone().unwrap_or_default(),
            self.rank.unwrap_or(0),
            self.alpha.map(f64::to_bits).unwrap_or(0),
        )
    }
}

impl ReportInput {
    /// Reads a `ReportInput` from a JSON file, then [`validate`](Self::validate)s it.
    pub fn from_json_file(path: &Path) -> Result<Self, ReportError> {
        let err = |reason: String| ReportError::Input {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let input: ReportInput = serde_json::from_str(&text)
            .map_err(|e| err(format!("{e} (expected a ReportInput JSON object)")))?;
        input.validate()?;
        Ok(input)
    }

    /// Checks what the tables rely on: unique cell labels, unique case ids within a cell,
    /// folds done + failed ≤ expected, a total parameter count > 0, finite volumes.
    pub fn validate(&self) -> Result<(), ReportError> {
        let mut labels = HashSet::new();
        for cell in &self.cells {
            let label = cell.label();
            let bad = |reason: String| ReportError::InvalidCell {
                sweep: self.sweep.clone(),
                cell: label.clone(),
                reason,
            };
            if !labels.insert(label.clone()) {
                return Err(bad("appears twice; expected one entry per cell".into()));
            }
            if cell.total_params == 0 {
                return Err(bad(
                    "`total_params` is 0, expected the full model's count".into()
                ));
            }
            if cell.folds_done + cell.folds_failed > cell.folds_expected {
                return Err(bad(format!(
                    "`folds_done` {} + `folds_failed` {} exceed `folds_expected` {}",
                    cell.folds_done, cell.folds_failed, cell.folds_expected
                )));
            }
            let mut cases = HashSet::new();
            for c in &cell.cases {
                if !cases.insert(c.case.as_str()) {
                    return Err(bad(format!(
                        "case `{}` appears twice; expected each case once (in its test fold)",
                        c.case
                    )));
                }
                if !c.truth_ml.is_finite() || !c.pred_ml.is_finite() {
                    return Err(bad(format!(
                        "case `{}`: volumes {} / {} mL, expected finite numbers",
                        c.case, c.truth_ml, c.pred_ml
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn cell(
        kind: AdaptationKind,
        module: Option<&str>,
        rank: Option<u32>,
    ) -> CellResult {
        CellResult {
            kind,
            module: module.map(String::from),
            rank,
            alpha: None,
            trainable_params: 10,
            total_params: 100,
            folds_expected: 3,
            folds_done: 3,
            folds_failed: 0,
            cases: vec![],
            loss_curves: vec![],
        }
    }

    #[test]
    fn labels_name_every_field() {
        assert_eq!(cell(AdaptationKind::None, None, None).label(), "none");
        let mut c = cell(AdaptationKind::DoraC, Some("decoder"), Some(64));
        assert_eq!(c.label(), "dora-c decoder r64");
        c.alpha = Some(32.0);
        assert_eq!(c.label(), "dora-c decoder r64 α32");
    }

    #[test]
    fn json_round_trips_with_null_dice() {
        let json = r#"{"sweep": "s", "cells": [{"kind": "lora-c", "module": "all", "rank": 4,
            "trainable_params": 5, "total_params": 50, "folds_expected": 3, "folds_done": 1,
            "cases": [{"case": "a", "fold": 0, "dice": null, "tp": 0, "fp": 0, "fn": 0,
                       "hd95_mm": null, "truth_ml": 0.0, "pred_ml": 0.0}]}]}"#;
        let input: ReportInput = serde_json::from_str(json).unwrap();
        input.validate().unwrap();
        assert!(input.cells[0].cases[0].dice.is_nan());
        assert!(!input.cells[0].is_complete());
        let back: ReportInput =
            serde_json::from_str(&serde_json::to_string(&input).unwrap()).unwrap();
        assert_eq!(back.cells[0].label(), "lora-c all r4");
        assert!(back.cells[0].cases[0].hd95_mm.is_nan());
    }

    #[test]
    fn validation_names_the_cell_and_the_field() {
        let mut input = ReportInput {
            ran_on: Vec::new(),
            sweep: "s".into(),
            cells: vec![cell(AdaptationKind::Full, Some("decoder"), None)],
        };
        input.validate().unwrap();
        input.cells[0].folds_failed = 1;
        let err = input.validate().unwrap_err().to_string();
        assert_eq!(
            err,
            "sweep `s`, cell `full decoder`: `folds_done` 3 + `folds_failed` 1 exceed `folds_expected` 3"
        );
        input.cells[0].folds_failed = 0;
        input.cells.push(input.cells[0].clone());
        assert!(
            input
                .validate()
                .unwrap_err()
                .to_string()
                .contains("appears twice")
        );
        input.cells.pop();
        let case = CaseResult {
            case: "x".into(),
            fold: 0,
            dice: 0.5,
            tp: 1,
            fp: 1,
            fn_: 1,
            hd95_mm: 1.0,
            truth_ml: f64::INFINITY,
            pred_ml: 1.0,
        };
        input.cells[0].cases.push(case);
        assert!(
            input
                .validate()
                .unwrap_err()
                .to_string()
                .contains("case `x`: volumes inf")
        );
    }
}
