//! Agreement between predicted and annotated volumes: Pearson r, Spearman ρ, ICC(3,1),
//! ICC(2,1) and Bland–Altman limits.
//!
//! Too few cases or a zero variance is not an error: the coefficient is NaN (written `null` in
//! JSON), as scipy and R return. Paired samples of different lengths and non-finite values are
//! errors. ICCs use the two-way ANOVA mean squares of Shrout & Fleiss (1979), which McGraw &
//! Wong (1996) call ICC(C,1) (consistency, raters fixed) and ICC(A,1) (absolute agreement,
//! raters random); with prediction and annotation as the two "raters".

use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::{MetricsError, nan_null};

fn check_paired(what: &'static str, x: &[f64], y: &[f64]) -> Result<(), MetricsError> {
    if x.len() != y.len() {
        return Err(MetricsError::LengthMismatch {
            what,
            left: x.len(),
            right: y.len(),
        });
    }
    check_finite(what, x.iter().chain(y))
}

fn check_finite<'a>(
    what: &'static str,
    values: impl IntoIterator<Item = &'a f64>,
) -> Result<(), MetricsError> {
    match values.into_iter().enumerate().find(|(_, v)| !v.is_finite()) {
        Some((index, &value)) => Err(MetricsError::NonFinite { what, index, value }),
        None => Ok(()),
    }
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

/// Pearson's correlation coefficient; NaN for fewer than 2 pairs or a constant sample.
pub fn pearson(x: &[f64], y: &[f64]) -> Result<f64, MetricsError> {
    check_paired("pearson", x, y)?;
    Ok(pearson_unchecked(x, y))
}

fn pearson_unchecked(x: &[f64], y: &[f64]) -> f64 {
    if x.len() < 2 {
        return f64::NAN;
    }
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    // Clamp rounding just past ±1.
    (sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0)
}

/// 1-based ranks with ties given their average rank (scipy's `rankdata(method="average")`).
/// NaN values sort last.
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && x[order[j]] == x[order[i]] {
            j += 1;
        }
        // Positions i..j (0-based) share ranks i+1..=j, whose mean is (i + 1 + j) / 2.
        let rank = (i + 1 + j) as f64 / 2.0;
        for &o in &order[i..j] {
            ranks[o] = rank;
        }
        i = j;
    }
    ranks
}

/// Spearman's ρ: Pearson's r of the average ranks; NaN for fewer than 2 pairs or a constant
/// sample.
pub fn spearman(x: &[f64], y: &[f64]) -> Result<f64, MetricsError> {
    check_paired("spearman", x, y)?;
    Ok(pearson_unchecked(&average_ranks(x), &average_ranks(y)))
}

/// Single-measure intraclass correlations from a two-way ANOVA, with the mean squares.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Icc {
    /// ICC(3,1), consistency: (BMS − EMS) / (BMS + (k−1)·EMS).
    #[serde(with = "nan_null")]
    pub icc3_1: f64,
    /// ICC(2,1), absolute agreement: (BMS − EMS) / (BMS + (k−1)·EMS + k·(JMS − EMS)/n).
    #[serde(with = "nan_null")]
    pub icc2_1: f64,
    /// Between-targets mean square.
    #[serde(with = "nan_null")]
    pub bms: f64,
    /// Between-raters (judges) mean square.
    #[serde(with = "nan_null")]
    pub jms: f64,
    /// Residual mean square.
    #[serde(with = "nan_null")]
    pub ems: f64,
}

/// ICC(3,1) and ICC(2,1) of a table with one row per target (case) and one column per rater.
///
/// Needs at least 2 raters; with fewer than 2 targets, or no variance at all, the ICCs are NaN.
pub fn icc(ratings: ArrayView2<f64>) -> Result<Icc, MetricsError> {
    let (n, k) = ratings.dim();
    if k < 2 {
        return Err(MetricsError::InvalidRatings {
            reason: format!("{k} rater column(s), expected at least 2"),
        });
    }
    check_finite("icc ratings", ratings.iter())?;
    if n < 2 {
        let nan = f64::NAN;
        return Ok(Icc {
            icc3_1: nan,
            icc2_1: nan,
            bms: nan,
            jms: nan,
            ems: nan,
        });
    }
    let (nf, kf) = (n as f64, k as f64);
    let grand = ratings.iter().sum::<f64>() / (nf * kf);
    let ss = |means: ndarray::Array1<f64>| means.iter().map(|m| (m - grand).powi(2)).sum::<f64>();
    let ss_rows = kf * ss(ratings.mean_axis(Axis(1)).unwrap_or_default());
    let ss_cols = nf * ss(ratings.mean_axis(Axis(0)).unwrap_or_default());
    let ss_total = ratings.iter().map(|v| (v - grand).powi(2)).sum::<f64>();
    // Rounding can leave a tiny negative residual for a perfect additive table.
    let ss_err = (ss_total - ss_rows - ss_cols).max(0.0);
    let bms = ss_rows / (nf - 1.0);
    let jms = ss_cols / (kf - 1.0);
    let ems = ss_err / ((nf - 1.0) * (kf - 1.0));
    let ratio = |num: f64, den: f64| if den == 0.0 { f64::NAN } else { num / den };
    Ok(Icc {
        icc3_1: ratio(bms - ems, bms + (kf - 1.0) * ems),
        icc2_1: ratio(bms - ems, bms + (kf - 1.0) * ems + kf * (jms - ems) / nf),
        bms,
        jms,
        ems,
    })
}

/// Bland–Altman statistics of the differences `pred − truth` (positive bias = over-estimate).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BlandAltman {
    /// Number of pairs.
    pub n: usize,
    /// Mean difference.
    #[serde(with = "nan_null")]
    pub bias: f64,
    /// Sample SD (n − 1) of the differences.
    #[serde(with = "nan_null")]
    pub sd: f64,
    /// bias − 1.96·SD.
    #[serde(with = "nan_null")]
    pub lower: f64,
    /// bias + 1.96·SD.
    #[serde(with = "nan_null")]
    pub upper: f64,
}

/// Bias and 95% limits of agreement; SD and limits are NaN with fewer than 2 pairs.
pub fn bland_altman(pred: &[f64], truth: &[f64]) -> Result<BlandAltman, MetricsError> {
    check_paired("bland-altman", pred, truth)?;
    let d: Vec<f64> = pred.iter().zip(truth).map(|(p, t)| p - t).collect();
    let n = d.len();
    let bias = if n == 0 { f64::NAN } else { mean(&d) };
    let sd = if n < 2 {
        f64::NAN
    } else {
        (d.iter().map(|v| (v - bias).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    };
    Ok(BlandAltman {
        n,
        bias,
        sd,
        lower: bias - 1.96 * sd,
        upper: bias + 1.96 * sd,
    })
}

/// Agreement of predicted and annotated volumes (mL) over a set of cases.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VolumeAgreement {
    /// Number of cases.
    pub n: usize,
    #[serde(with = "nan_null")]
    pub pearson_r: f64,
    #[serde(with = "nan_null")]
    pub spearman_rho: f64,
    /// ICC(3,1), consistency.
    #[serde(with = "nan_null")]
    pub icc3_1: f64,
    /// ICC(2,1), absolute agreement.
    #[serde(with = "nan_null")]
    pub icc2_1: f64,
    /// Differences predicted − annotated, in mL.
    pub bland_altman: BlandAltman,
}

/// All agreement statistics of paired predicted and annotated volumes.
pub fn volume_agreement(
    pred_ml: &[f64],
    truth_ml: &[f64],
) -> Result<VolumeAgreement, MetricsError> {
    check_paired("volume agreement", pred_ml, truth_ml)?;
    let table = Array2::from_shape_fn((pred_ml.len(), 2), |(i, j)| {
        if j == 0 { pred_ml[i] } else { truth_ml[i] }
    });
    let icc = icc(table.view())?;
    Ok(VolumeAgreement {
        n: pred_ml.len(),
        pearson_r: pearson(pred_ml, truth_ml)?,
        spearman_rho: spearman(pred_ml, truth_ml)?,
        icc3_1: icc.icc3_1,
        icc2_1: icc.icc2_1,
        bland_altman: bland_altman(pred_ml, truth_ml)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn icc_on_shrout_fleiss_table_2() {
        // Shrout & Fleiss (1979), Psychol. Bull. 86(2):420–428, Table 2: 6 targets, 4 judges.
        // Published: BMS 11.24, JMS 32.49, EMS 1.02, ICC(2,1) = .29, ICC(3,1) = .71.
        // Full precision from numpy with the same formulas: ICC(3,1) 0.7148407148407154,
        // ICC(2,1) 0.2897637795275592.
        let t = array![
            [9.0, 2.0, 5.0, 8.0],
            [6.0, 1.0, 3.0, 2.0],
            [8.0, 4.0, 6.0, 8.0],
            [7.0, 1.0, 2.0, 6.0],
            [10.0, 5.0, 6.0, 9.0],
            [6.0, 2.0, 4.0, 7.0]
        ];
        let icc = icc(t.view()).unwrap();
        assert_eq!((icc.icc2_1 * 100.0).round(), 29.0);
        assert_eq!((icc.icc3_1 * 100.0).round(), 71.0);
        assert!(close(icc.bms, 11.241666666666669, 1e-12), "{}", icc.bms);
        assert!(close(icc.jms, 32.486111111111114, 1e-12), "{}", icc.jms);
        assert!(close(icc.ems, 1.019444444444442, 1e-12), "{}", icc.ems);
        assert!(close(icc.icc3_1, 0.7148407148407154, 1e-12));
        assert!(close(icc.icc2_1, 0.2897637795275592, 1e-12));
    }

    #[test]
    fn icc_separates_consistency_from_agreement() {
        // A constant offset keeps consistency perfect but lowers absolute agreement.
        let t = array![[1.0, 3.0], [2.0, 4.0], [5.0, 7.0], [9.0, 11.0]];
        let icc = icc(t.view()).unwrap();
        assert!(close(icc.icc3_1, 1.0, 1e-12));
        assert!(icc.icc2_1 < 0.95 && icc.icc2_1 > 0.5, "{}", icc.icc2_1);
        assert!(super::icc(array![[1.0], [2.0]].view()).is_err());
        assert!(
            super::icc(array![[1.0, 2.0]].view())
                .unwrap()
                .icc3_1
                .is_nan()
        );
    }

    #[test]
    fn pearson_and_spearman_match_scipy() {
        // scipy.stats.pearsonr(x, y).statistic, scipy.stats.spearmanr(x, y).statistic
        let x = [1.2, 3.4, 2.2, 8.0, 5.5, 5.5, 0.3];
        let y = [1.0, 2.9, 3.1, 7.2, 6.0, 4.4, 0.9];
        assert!(close(pearson(&x, &y).unwrap(), 0.9650305456992931, 1e-12));
        assert!(close(spearman(&x, &y).unwrap(), 0.9549937104572924, 1e-12));
        let x = [1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 4.0, 5.0];
        let y = [2.0, 1.0, 3.0, 3.0, 5.0, 4.0, 6.0, 6.0];
        assert!(close(pearson(&x, &y).unwrap(), 0.8767227853705732, 1e-12));
        assert!(close(spearman(&x, &y).unwrap(), 0.9007775105401477, 1e-12));
    }

    #[test]
    fn average_ranks_match_scipy_rankdata() {
        // scipy.stats.rankdata([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5])
        let r = average_ranks(&[3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0]);
        assert_eq!(r, [4.5, 1.5, 6.0, 1.5, 8.0, 11.0, 3.0, 10.0, 8.0, 4.5, 8.0]);
    }

    #[test]
    fn degenerate_inputs() {
        assert!(pearson(&[1.0], &[2.0]).unwrap().is_nan());
        assert!(pearson(&[1.0, 1.0], &[2.0, 3.0]).unwrap().is_nan());
        let err = pearson(&[1.0, 2.0], &[1.0]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pearson: paired samples differ in length (2 vs 1)"
        );
        let err = spearman(&[1.0, f64::NAN], &[1.0, 2.0]).unwrap_err();
        assert!(
            matches!(err, MetricsError::NonFinite { index: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn bland_altman_by_hand() {
        // Differences −1, 1, 3: bias 1, SD √(8/2) = 2, limits 1 ± 3.92.
        let (pred, truth) = ([1.0, 5.0, 10.0], [2.0, 4.0, 7.0]);
        let ba = bland_altman(&pred, &truth).unwrap();
        assert_eq!(ba.n, 3);
        assert!(
            close(ba.bias, 1.0, 1e-12) && close(ba.sd, 2.0, 1e-12),
            "{ba:?}"
        );
        assert!(
            close(ba.lower, -2.92, 1e-12) && close(ba.upper, 4.92, 1e-12),
            "{ba:?}"
        );
        let va = volume_agreement(&pred, &truth).unwrap();
        assert_eq!(va.bland_altman, ba);
        assert_eq!(va.n, 3);
        // Prediction and annotation are the two raters, in that order.
        let table = icc(array![[1.0, 2.0], [5.0, 4.0], [10.0, 7.0]].view()).unwrap();
        assert_eq!((va.icc3_1, va.icc2_1), (table.icc3_1, table.icc2_1));
        assert_eq!(va.pearson_r, pearson(&pred, &truth).unwrap());
        assert_eq!(va.spearman_rho, 1.0);
    }
}
