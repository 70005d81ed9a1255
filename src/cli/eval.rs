//! `ranksweep eval --pred DIR --truth DIR`: per-case metrics and their summary for two folders
//! of masks with matching case names (`<case>.nii.gz` or `<case>.nii`).
//!
//! The metrics come from [`crate::metrics`]; this file pairs the files, reads them and prints.
//! Mismatched case sets, grids or spacings are input errors (exit 2) that name the files.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};

use crate::metrics::{CaseMetrics, Evaluation, MeanSd, NamedCase, Strata};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Folder of predicted masks, one `<case>.nii.gz` (or `.nii`) per case; non-zero = foreground.
    #[arg(long)]
    pub pred: PathBuf,
    /// Folder of annotated masks with the same case names, on the same grids.
    #[arg(long)]
    pub truth: PathBuf,
    /// Bin edges in mL of the annotated-volume strata, strictly increasing; 5,15,30 gives <5,
    /// 5–15, 15–30 and ≥30 mL.
    #[arg(long, default_value = "5,15,30")]
    pub strata: Strata,
    /// Print one JSON object (conventions, strata, cases, summary) instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let eval = evaluate_dirs(&args.pred, &args.truth, args.strata)?;
    let text = if args.json {
        serde_json::to_string_pretty(&eval)? + "\n"
    } else {
        tables(&eval)
    };
    // A closed pipe (`| head`) is not an error (ripgrep's convention).
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Reads every case of both folders and measures it against its annotation.
fn evaluate_dirs(pred_dir: &Path, truth_dir: &Path, strata: Strata) -> anyhow::Result<Evaluation> {
    let pairs = pair_cases(pred_dir, truth_dir)?;
    let mut cases = Vec::with_capacity(pairs.len());
    for (case, (pred_path, truth_path)) in pairs {
        let pred = crate::data::nifti::read_label(&pred_path)?;
        let truth = crate::data::nifti::read_label(&truth_path)?;
        if pred.data.dim() != truth.data.dim() {
            bail!(
                "{}: grid {:?} [z, y, x] differs from {}: {:?}",
                pred_path.display(),
                <[usize; 3]>::from(pred.data.dim()),
                truth_path.display(),
                <[usize; 3]>::from(truth.data.dim())
            );
        }
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-3 * a.abs().max(b.abs());
        if !(0..3).all(|k| close(pred.spacing[k], truth.spacing[k])) {
            bail!(
                "{}: spacing {:?} mm [z, y, x] differs from {}: {:?}",
                pred_path.display(),
                pred.spacing,
                truth_path.display(),
                truth.spacing
            );
        }
        // Volumes are measured on the annotation's grid.
        let metrics =
            CaseMetrics::compute(pred.data.view(), truth.data.view(), truth.spacing, &strata)
                .with_context(|| format!("case `{case}` ({})", truth_path.display()))?;
        cases.push(NamedCase { case, metrics });
    }
    Ok(Evaluation::new(cases, strata)?)
}

/// `case → (pred file, truth file)`, sorted by case; the two folders must hold the same cases.
fn pair_cases(
    pred_dir: &Path,
    truth_dir: &Path,
) -> anyhow::Result<BTreeMap<String, (PathBuf, PathBuf)>> {
    let pred = list_masks(pred_dir)?;
    let truth = list_masks(truth_dir)?;
    let only_pred: Vec<&str> = pred
        .keys()
        .filter(|c| !truth.contains_key(*c))
        .map(String::as_str)
        .collect();
    let only_truth: Vec<&str> = truth
        .keys()
        .filter(|c| !pred.contains_key(*c))
        .map(String::as_str)
        .collect();
    if !only_pred.is_empty() || !only_truth.is_empty() {
        let mut msg = String::from("case sets differ");
        if !only_pred.is_empty() {
            msg += &format!("; only in {}: {}", pred_dir.display(), only_pred.join(", "));
        }
        if !only_truth.is_empty() {
            msg += &format!(
                "; only in {}: {}",
                truth_dir.display(),
                only_truth.join(", ")
            );
        }
        bail!(msg);
    }
    // Same keys in both sorted maps: zipping pairs each case with itself.
    Ok(pred
        .into_iter()
        .zip(truth.into_values())
        .map(|((case, p), t)| (case, (p, t)))
        .collect())
}

/// `case → file` for the `*.nii.gz` and `*.nii` files of a folder (dotfiles such as macOS `._*`
/// skipped). An empty folder or a case present twice is an error.
fn list_masks(dir: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut cases = BTreeMap::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read folder {}", dir.display()))?
            .path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') || !path.is_file() {
            continue;
        }
        let Some(case) = name
            .strip_suffix(".nii.gz")
            .or_else(|| name.strip_suffix(".nii"))
        else {
            continue;
        };
        if let Some(other) = cases.insert(case.to_string(), path.clone()) {
            bail!(
                "case `{case}` is there twice: {} and {}",
                other.display(),
                path.display()
            );
        }
    }
    if cases.is_empty() {
        bail!(
            "{}: no masks (expected <case>.nii.gz or <case>.nii files)",
            dir.display()
        );
    }
    Ok(cases)
}

/// The per-case, summary, strata and agreement tables, then the conventions.
fn tables(eval: &Evaluation) -> String {
    let num = |v: f64, digits: usize| {
        if v.is_nan() {
            "n/a".to_string()
        } else {
            format!("{v:.digits$}")
        }
    };
    let right = |s: String| Cell::new(s).set_alignment(CellAlignment::Right);
    let mean_sd = |m: &MeanSd, digits: usize| {
        if m.sd.is_nan() {
            num(m.mean, digits)
        } else {
            format!("{} ± {}", num(m.mean, digits), num(m.sd, digits))
        }
    };

    let mut cases = Table::new();
    cases.load_preset(UTF8_FULL_CONDENSED);
    cases.set_header([
        "case", "stratum", "Dice", "IoU", "HD95 mm", "ASSD mm", "truth mL", "pred mL", "FP mL",
        "TP", "FP", "FN",
    ]);
    for c in &eval.cases {
        let m = &c.metrics;
        cases.add_row(vec![
            Cell::new(&c.case),
            Cell::new(&m.stratum),
            right(num(m.dice, 3)),
            right(num(m.iou, 3)),
            right(num(m.hd95_mm, 2)),
            right(num(m.assd_mm, 2)),
            right(num(m.truth_ml, 2)),
            right(num(m.pred_ml, 2)),
            right(num(m.fp_ml, 2)),
            right(m.confusion.tp.to_string()),
            right(m.confusion.fp.to_string()),
            right(m.confusion.fn_.to_string()),
        ]);
    }
    let mut out = format!("{cases}\n");

    let s = &eval.summary;
    let mut summary = Table::new();
    summary.load_preset(UTF8_FULL_CONDENSED);
    summary.set_header(["metric", "mean ± SD", "n"]);
    for (name, m, digits) in [
        ("Dice", &s.dice, 3),
        ("IoU", &s.iou, 3),
        ("HD95 mm", &s.hd95_mm, 2),
        ("ASSD mm", &s.assd_mm, 2),
        ("truth mL", &s.truth_ml, 2),
        ("pred mL", &s.pred_ml, 2),
        ("FP mL, truth empty", &s.fp_ml_truth_empty, 2),
    ] {
        summary.add_row(vec![
            Cell::new(name),
            right(mean_sd(m, digits)),
            right(m.n.to_string()),
        ]);
    }
    out += &format!("{summary}\n");

    let mut strata = Table::new();
    strata.load_preset(UTF8_FULL_CONDENSED);
    strata.set_header(["stratum (truth mL)", "cases", "Dice mean ± SD", "n Dice"]);
    for st in &s.strata {
        strata.add_row(vec![
            Cell::new(&st.label),
            right(st.n_cases.to_string()),
            right(mean_sd(&st.dice, 3)),
            right(st.dice.n.to_string()),
        ]);
    }
    out += &format!("{strata}\n");

    let a = &s.volume_agreement;
    let ba = &a.bland_altman;
    let mut agreement = Table::new();
    agreement.load_preset(UTF8_FULL_CONDENSED);
    agreement.set_header(["volume agreement (pred vs truth mL)", "value"]);
    for (name, v) in [
        ("Pearson r", num(a.pearson_r, 3)),
        ("Spearman ρ", num(a.spearman_rho, 3)),
        ("ICC(3,1) consistency", num(a.icc3_1, 3)),
        ("ICC(2,1) absolute agreement", num(a.icc2_1, 3)),
        ("Bland–Altman bias (pred − truth) mL", num(ba.bias, 2)),
        (
            "Bland–Altman 95% limits mL",
            format!("{} to {}", num(ba.lower, 2), num(ba.upper, 2)),
        ),
    ] {
        agreement.add_row(vec![Cell::new(name), right(v)]);
    }
    out += &format!("{agreement}\n");
    out += &format!("{} cases. {}\n", s.n_cases, eval.conventions);
    out
}
