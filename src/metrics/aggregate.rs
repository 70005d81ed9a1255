//! Aggregation over cases: mean ± SD ignoring NaN, Dice per volume stratum, volume agreement,
//! and [`Evaluation`], the one object `ranksweep eval --json` prints.

use serde::{Deserialize, Serialize};

use super::agreement::{VolumeAgreement, volume_agreement};
use super::{CaseMetrics, MetricsError, Strata, nan_null};

/// The conventions behind every number of an [`Evaluation`], stored with the results.
pub const CONVENTIONS: &str = "3D per case, non-zero = foreground. Dice and IoU: NaN (null) \
when truth and prediction are both empty, excluded from means (nnU-Net); 0 when only one is \
empty, with the false-positive volume in fp_ml. Volume mL = voxels x |sz*sy*sx| / 1000. HD95 = \
max of the two directed 95th-percentile surface distances in mm (MONAI; surface = foreground \
voxels with a 6-connected background neighbour; exact anisotropic EDT); ASSD = mean of both \
directed distance lists pooled; both NaN when either mask is empty. Aggregates: mean and \
sample SD (n-1) over non-NaN values, n = values used. Strata by annotated volume, bins closed \
on the left. Volume agreement on predicted vs annotated mL; Bland-Altman differences are \
predicted - annotated, limits bias +/- 1.96 SD.";

/// Mean and sample standard deviation of the non-NaN values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanSd {
    /// Values used (NaN skipped).
    pub n: usize,
    /// NaN when `n` is 0.
    #[serde(with = "nan_null")]
    pub mean: f64,
    /// Sample SD (n − 1); NaN when `n` < 2.
    #[serde(with = "nan_null")]
    pub sd: f64,
}

/// Mean ± sample SD (n − 1) ignoring NaN values.
pub fn mean_sd(values: impl IntoIterator<Item = f64>) -> MeanSd {
    let v: Vec<f64> = values.into_iter().filter(|v| !v.is_nan()).collect();
    let n = v.len();
    let mean = if n == 0 {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / n as f64
    };
    let sd = if n < 2 {
        f64::NAN
    } else {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    };
    MeanSd { n, mean, sd }
}

/// Dice over the cases of one stratum of the annotated volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StratumSummary {
    /// "<5", "5–15", ...
    pub label: String,
    /// Cases in the stratum, including those whose Dice is NaN.
    pub n_cases: usize,
    /// Dice over the stratum's cases (`dice.n` excludes NaN).
    pub dice: MeanSd,
}

/// Aggregates over a set of cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n_cases: usize,
    pub dice: MeanSd,
    pub iou: MeanSd,
    pub hd95_mm: MeanSd,
    pub assd_mm: MeanSd,
    pub truth_ml: MeanSd,
    pub pred_ml: MeanSd,
    /// Cases whose annotation is empty.
    pub n_truth_empty: usize,
    /// Predicted (false-positive) volume over the cases whose annotation is empty.
    pub fp_ml_truth_empty: MeanSd,
    /// Dice per stratum of the annotated volume, in stratum order, empty strata included.
    pub strata: Vec<StratumSummary>,
    /// Predicted vs annotated volume over all cases.
    pub volume_agreement: VolumeAgreement,
}

/// Aggregates cases; each case's stratum is recomputed from its annotated volume with `strata`.
pub fn summarize(cases: &[CaseMetrics], strata: &Strata) -> Result<Summary, MetricsError> {
    let of = |f: fn(&CaseMetrics) -> f64| mean_sd(cases.iter().map(f));
    let per_stratum = (0..strata.len())
        .map(|i| {
            let members: Vec<&CaseMetrics> = cases
                .iter()
                .filter(|c| strata.index_of(c.truth_ml) == i)
                .collect();
            StratumSummary {
                label: strata.label(i),
                n_cases: members.len(),
                dice: mean_sd(members.iter().map(|c| c.dice)),
            }
        })
        .collect();
    let truth_empty: Vec<&CaseMetrics> = cases
        .iter()
        .filter(|c| c.confusion.n_truth() == 0)
        .collect();
    let pred_ml: Vec<f64> = cases.iter().map(|c| c.pred_ml).collect();
    let truth_ml: Vec<f64> = cases.iter().map(|c| c.truth_ml).collect();
    Ok(Summary {
        n_cases: cases.len(),
        dice: of(|c| c.dice),
        iou: of(|c| c.iou),
        hd95_mm: of(|c| c.hd95_mm),
        assd_mm: of(|c| c.assd_mm),
        truth_ml: of(|c| c.truth_ml),
        pred_ml: of(|c| c.pred_ml),
        n_truth_empty: truth_empty.len(),
        fp_ml_truth_empty: mean_sd(truth_empty.iter().map(|c| c.fp_ml)),
        strata: per_stratum,
        volume_agreement: volume_agreement(&pred_ml, &truth_ml)?,
    })
}

/// One named case's metrics (the name is the file name without `.nii[.gz]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedCase {
    pub case: String,
    #[serde(flatten)]
    pub metrics: CaseMetrics,
}

/// An evaluation of a set of predictions: conventions, strata, cases and their summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// [`CONVENTIONS`], so that a result file says how it was computed.
    pub conventions: String,
    /// Bin edges in mL.
    pub strata: Strata,
    /// Per case, in the order given.
    pub cases: Vec<NamedCase>,
    pub summary: Summary,
}

impl Evaluation {
    /// Summarizes named cases.
    pub fn new(cases: Vec<NamedCase>, strata: Strata) -> Result<Self, MetricsError> {
        let metrics: Vec<CaseMetrics> = cases.iter().map(|c| c.metrics.clone()).collect();
        let summary = summarize(&metrics, &strata)?;
        Ok(Evaluation {
            conventions: CONVENTIONS.to_string(),
            strata,
            cases,
            summary,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, s};

    #[test]
    fn mean_sd_ignores_nan_and_uses_n_minus_one() {
        let m = mean_sd([1.0, f64::NAN, 2.0, 3.0, 4.0]);
        assert_eq!(m.n, 4);
        assert_eq!(m.mean, 2.5);
        // Σ(x − 2.5)² = 5, / 3.
        assert!((m.sd - (5.0f64 / 3.0).sqrt()).abs() < 1e-15);
        let one = mean_sd([0.7]);
        assert_eq!((one.n, one.mean), (1, 0.7));
        assert!(one.sd.is_nan());
        assert!(mean_sd([f64::NAN]).mean.is_nan());
    }

    /// A case whose truth is a block of `t` voxels and prediction the first `p` of them
    /// (1 mL voxels: 10×10×10 mm).
    fn case(t: usize, p: usize, strata: &Strata) -> CaseMetrics {
        let mut truth = Array3::<u8>::zeros((1, 1, 64));
        let mut pred = truth.clone();
        truth.slice_mut(s![.., .., ..t]).fill(1);
        pred.slice_mut(s![.., .., ..p]).fill(1);
        CaseMetrics::compute(pred.view(), truth.view(), [10.0; 3], strata).unwrap()
    }

    #[test]
    fn summary_by_stratum_by_hand() {
        let strata = Strata::default();
        // Dice 2p/(t+p): 0 mL empty/empty (NaN), 4 of 4 (1), 10 of 20 (2/3), 20 of 20 (1),
        // 30 of 40 (6/7), and a truth-empty case with 3 mL predicted (0).
        let cases = vec![
            case(0, 0, &strata),
            case(4, 4, &strata),
            case(20, 10, &strata),
            case(20, 20, &strata),
            case(40, 30, &strata),
        ];
        let mut all = cases.clone();
        all.push(case(0, 3, &strata));
        let s = summarize(&all, &strata).unwrap();
        assert_eq!(s.n_cases, 6);
        assert_eq!(s.dice.n, 5, "the empty/empty case is excluded");
        let expected = (1.0 + 2.0 / 3.0 + 1.0 + 6.0 / 7.0 + 0.0) / 5.0;
        assert!((s.dice.mean - expected).abs() < 1e-12);
        let labels: Vec<&str> = s.strata.iter().map(|x| x.label.as_str()).collect();
        assert_eq!(labels, ["<5", "5–15", "15–30", "≥30"]);
        let n: Vec<(usize, usize)> = s.strata.iter().map(|x| (x.n_cases, x.dice.n)).collect();
        assert_eq!(n, [(3, 2), (0, 0), (2, 2), (1, 1)]);
        assert!((s.strata[0].dice.mean - 0.5).abs() < 1e-12);
        assert!(s.strata[1].dice.mean.is_nan());
        assert!((s.strata[2].dice.mean - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!((s.n_truth_empty, s.fp_ml_truth_empty.n), (2, 2));
        assert!((s.fp_ml_truth_empty.mean - 1.5).abs() < 1e-12);
        assert_eq!(s.volume_agreement.n, 6);
    }

    #[test]
    fn evaluation_round_trips_through_json() {
        let strata: Strata = "10".parse().unwrap();
        let cases = vec![
            NamedCase {
                case: "a".into(),
                metrics: case(0, 0, &strata),
            },
            NamedCase {
                case: "b".into(),
                metrics: case(20, 10, &strata),
            },
        ];
        let eval = Evaluation::new(cases, strata).unwrap();
        let json = serde_json::to_string(&eval).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["cases"][1]["case"], "b");
        assert_eq!(v["cases"][1]["tp"], 10);
        assert_eq!(v["cases"][1]["stratum"], "≥10");
        assert!(v["cases"][0]["dice"].is_null());
        assert_eq!(v["strata"], serde_json::json!([10.0]));
        let back: Evaluation = serde_json::from_str(&json).unwrap();
        assert_eq!(back.cases[1], eval.cases[1]);
        assert!(back.cases[0].metrics.dice.is_nan());
        assert_eq!(
            (back.summary.dice.n, back.summary.dice.mean),
            (1, 2.0 / 3.0)
        );
        assert!(back.summary.dice.sd.is_nan());
        assert_eq!(back.summary.volume_agreement.n, 2);
    }
}
