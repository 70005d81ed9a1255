//! Per-case overlap and volume metrics of a predicted mask against the annotation.
//!
//! Conventions (nnU-Net's `evaluate_predictions.py` for Dice, MONAI's for distances):
//! - counts are voxels, non-zero = foreground; TN is kept so that any convention can be
//!   recomputed from the counts;
//! - Dice = 2·TP / (2·TP + FP + FN) and IoU = TP / (TP + FP + FN); both NaN when truth and
//!   prediction are empty (excluded from means), 0 when exactly one is empty;
//! - volumes in mL = voxel count × |sz·sy·sx| / 1000; `fp_ml` is the false-positive volume,
//!   the figure to report when the truth is empty and the prediction is not;
//! - HD95 and ASSD in mm as in [`super::distance`]; NaN when either mask is empty;
//! - the stratum is that of the annotated volume.

use ndarray::{ArrayView3, Zip};
use serde::{Deserialize, Serialize};

use super::distance::surface_distances;
use super::{MetricsError, Strata, check_pair, nan_null};

/// Voxel counts of a prediction against the truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub tn: u64,
}

impl Confusion {
    /// Counts voxels of two masks on the same grid.
    pub fn count(pred: ArrayView3<u8>, truth: ArrayView3<u8>) -> Result<Self, MetricsError> {
        if pred.dim() != truth.dim() {
            return Err(MetricsError::ShapeMismatch {
                pred: pred.dim().into(),
                truth: truth.dim().into(),
            });
        }
        // Index 2·truth + pred: TN, FP, FN, TP.
        let mut n = [0u64; 4];
        Zip::from(pred).and(truth).for_each(|&p, &t| {
            n[2 * usize::from(t != 0) + usize::from(p != 0)] += 1;
        });
        Ok(Confusion {
            tp: n[3],
            fp: n[1],
            fn_: n[2],
            tn: n[0],
        })
    }

    /// Foreground voxels in the truth (TP + FN).
    pub fn n_truth(&self) -> u64 {
        self.tp + self.fn_
    }

    /// Foreground voxels in the prediction (TP + FP).
    pub fn n_pred(&self) -> u64 {
        self.tp + self.fp
    }

    /// 2·TP / (2·TP + FP + FN); NaN when both masks are empty.
    pub fn dice(&self) -> f64 {
        let den = 2 * self.tp + self.fp + self.fn_;
        if den == 0 {
            f64::NAN
        } else {
            (2 * self.tp) as f64 / den as f64
        }
    }

    /// TP / (TP + FP + FN); NaN when both masks are empty.
    pub fn iou(&self) -> f64 {
        let den = self.tp + self.fp + self.fn_;
        if den == 0 {
            f64::NAN
        } else {
            self.tp as f64 / den as f64
        }
    }
}

/// Everything measured on one case. NaN values are written as `null` in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseMetrics {
    /// Voxel counts.
    #[serde(flatten)]
    pub confusion: Confusion,
    /// Dice; NaN if both masks are empty, 0 if exactly one is.
    #[serde(with = "nan_null")]
    pub dice: f64,
    /// Intersection over union, same conventions as Dice.
    #[serde(with = "nan_null")]
    pub iou: f64,
    /// Annotated (truth) volume in mL.
    pub truth_ml: f64,
    /// Predicted volume in mL.
    pub pred_ml: f64,
    /// False-positive volume in mL (the figure for a case without blood).
    pub fp_ml: f64,
    /// False-negative volume in mL.
    pub fn_ml: f64,
    /// 95th-percentile symmetric Hausdorff distance in mm; NaN if either mask is empty.
    #[serde(with = "nan_null")]
    pub hd95_mm: f64,
    /// Average symmetric surface distance in mm; NaN if either mask is empty.
    #[serde(with = "nan_null")]
    pub assd_mm: f64,
    /// Voxel size in mm along `[z, y, x]`.
    pub spacing: [f64; 3],
    /// Label of the stratum of the annotated volume, e.g. "5–15".
    pub stratum: String,
}

impl CaseMetrics {
    /// Measures a prediction against the truth on one grid with voxel size `spacing` (mm,
    /// `[z, y, x]`), labelling the case with its stratum in `strata`.
    pub fn compute(
        pred: ArrayView3<u8>,
        truth: ArrayView3<u8>,
        spacing: [f64; 3],
        strata: &Strata,
    ) -> Result<Self, MetricsError> {
        check_pair(pred.dim(), truth.dim(), spacing)?;
        let confusion = Confusion::count(pred, truth)?;
        let distances = surface_distances(pred, truth, spacing)?;
        let voxel_ml = voxel_ml(spacing);
        let truth_ml = confusion.n_truth() as f64 * voxel_ml;
        Ok(CaseMetrics {
            confusion,
            dice: confusion.dice(),
            iou: confusion.iou(),
            truth_ml,
            pred_ml: confusion.n_pred() as f64 * voxel_ml,
            fp_ml: confusion.fp as f64 * voxel_ml,
            fn_ml: confusion.fn_ as f64 * voxel_ml,
            hd95_mm: distances.hd95_mm,
            assd_mm: distances.assd_mm,
            spacing,
            stratum: strata.label_of(truth_ml),
        })
    }
}

/// Volume of one voxel in mL: |sz·sy·sx| / 1000.
pub fn voxel_ml(spacing: [f64; 3]) -> f64 {
    spacing.iter().product::<f64>().abs() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, s};

    fn boxes(a: [usize; 6], b: [usize; 6]) -> (Array3<u8>, Array3<u8>) {
        let mut pa = Array3::<u8>::zeros((8, 20, 20));
        let mut pb = pa.clone();
        pa.slice_mut(s![a[0]..a[1], a[2]..a[3], a[4]..a[5]]).fill(1);
        pb.slice_mut(s![b[0]..b[1], b[2]..b[3], b[4]..b[5]]).fill(1);
        (pa, pb)
    }

    #[test]
    fn overlapping_boxes_by_hand() {
        // 4×10×10 = 400 voxels each, shifted by 2 along x: overlap 4×10×8 = 320.
        let (pred, truth) = boxes([2, 6, 5, 15, 7, 17], [2, 6, 5, 15, 5, 15]);
        let spacing = [5.0, 0.5, 0.5];
        let m =
            CaseMetrics::compute(pred.view(), truth.view(), spacing, &Strata::default()).unwrap();
        assert_eq!(
            m.confusion,
            Confusion {
                tp: 320,
                fp: 80,
                fn_: 80,
                tn: 3200 - 480
            }
        );
        assert!((m.dice - 0.8).abs() < 1e-12);
        assert!((m.iou - 320.0 / 480.0).abs() < 1e-12);
        // 400 voxels × 1.25 mm³ = 500 mm³ = 0.5 mL.
        assert!((m.truth_ml - 0.5).abs() < 1e-12 && (m.pred_ml - 0.5).abs() < 1e-12);
        assert!((m.fp_ml - 0.1).abs() < 1e-12 && (m.fn_ml - 0.1).abs() < 1e-12);
        assert!(
            (m.hd95_mm - 1.0).abs() < 1e-12,
            "shift of 2 × 0.5 mm: {}",
            m.hd95_mm
        );
        assert_eq!(m.stratum, "<5");
    }

    #[test]
    fn empty_and_empty_is_nan() {
        let z = Array3::<u8>::zeros((3, 4, 5));
        let m = CaseMetrics::compute(z.view(), z.view(), [1.0; 3], &Strata::default()).unwrap();
        assert!(m.dice.is_nan() && m.iou.is_nan() && m.hd95_mm.is_nan() && m.assd_mm.is_nan());
        assert_eq!(m.confusion.tn, 60);
        assert_eq!((m.truth_ml, m.pred_ml, m.fp_ml), (0.0, 0.0, 0.0));
    }

    #[test]
    fn empty_truth_scores_zero_and_reports_fp_volume() {
        let truth = Array3::<u8>::zeros((3, 4, 5));
        let mut pred = truth.clone();
        pred.slice_mut(s![0..2, 0..2, 0..3]).fill(7); // any non-zero label is foreground
        let m = CaseMetrics::compute(
            pred.view(),
            truth.view(),
            [5.0, 0.5, 0.4],
            &Strata::default(),
        )
        .unwrap();
        assert_eq!(m.dice, 0.0);
        assert_eq!(m.iou, 0.0);
        // 12 voxels × 1 mm³.
        assert!((m.fp_ml - 0.012).abs() < 1e-15 && m.pred_ml == m.fp_ml);
        assert!(m.hd95_mm.is_nan());
        // And the other way round: a missed lesion.
        let m = CaseMetrics::compute(
            truth.view(),
            pred.view(),
            [5.0, 0.5, 0.4],
            &Strata::default(),
        )
        .unwrap();
        assert_eq!((m.dice, m.pred_ml), (0.0, 0.0));
        assert!((m.fn_ml - 0.012).abs() < 1e-15);
    }

    #[test]
    fn volume_from_voxel_count_and_spacing() {
        // 5 mm slices, 0.45 mm pixels: 1.0125 mm³ per voxel; negative pixdim counts as its size.
        assert!((voxel_ml([5.0, -0.45, 0.45]) - 0.0010125).abs() < 1e-18);
        let mut truth = Array3::<u8>::zeros((10, 100, 100));
        truth.slice_mut(s![0..8, 0..50, 0..50]).fill(1); // 20 000 voxels
        let m = CaseMetrics::compute(
            truth.view(),
            truth.view(),
            [5.0, 0.45, 0.45],
            &Strata::default(),
        )
        .unwrap();
        assert!((m.truth_ml - 20.25).abs() < 1e-9, "{}", m.truth_ml);
        assert_eq!(m.stratum, "15–30");
        assert_eq!((m.dice, m.hd95_mm, m.assd_mm), (1.0, 0.0, 0.0));
    }

    #[test]
    fn json_keeps_counts_and_writes_nan_as_null() {
        let z = Array3::<u8>::zeros((1, 2, 2));
        let m = CaseMetrics::compute(z.view(), z.view(), [1.0; 3], &Strata::default()).unwrap();
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["fn"], 0);
        assert_eq!(json["tn"], 4);
        assert!(json["dice"].is_null());
        let back: CaseMetrics = serde_json::from_value(json).unwrap();
        assert!(back.dice.is_nan() && back.confusion == m.confusion);
    }
}
