//! Hemorrhage-volume strata: bins of the annotated volume in mL.
//!
//! [`Strata`] holds strictly increasing, non-negative bin edges; `n` edges give `n + 1` bins,
//! closed on the left: with the default `[5, 15, 30]` a case of exactly 5 mL is in "5–15". The
//! edges are configuration (`--strata 5,15,30`), the labels follow from them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::MetricsError;

/// Bin edges in mL, strictly increasing and non-negative.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<f64>", into = "Vec<f64>")]
pub struct Strata {
    edges: Vec<f64>,
}

impl Default for Strata {
    /// The study's strata: <5, 5–15, 15–30, ≥30 mL.
    fn default() -> Self {
        Strata {
            edges: vec![5.0, 15.0, 30.0],
        }
    }
}

impl Strata {
    /// Checks the edges: finite, non-negative, strictly increasing. No edges is one bin, "all".
    pub fn new(edges: Vec<f64>) -> Result<Self, MetricsError> {
        let invalid = |reason: String| MetricsError::InvalidStrata {
            input: join(&edges),
            reason,
        };
        for (i, &e) in edges.iter().enumerate() {
            if !e.is_finite() || e < 0.0 {
                return Err(invalid(format!(
                    "edge {e} is not a non-negative number of mL"
                )));
            }
            if i > 0 && e <= edges[i - 1] {
                return Err(invalid(format!(
                    "edges must be strictly increasing, but {e} follows {}",
                    edges[i - 1]
                )));
            }
        }
        Ok(Strata { edges })
    }

    /// The bin edges in mL.
    pub fn edges(&self) -> &[f64] {
        &self.edges
    }

    /// Number of bins (edges + 1).
    pub fn len(&self) -> usize {
        self.edges.len() + 1
    }

    /// Always false: there is at least one bin.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The bin of a volume in mL. NaN (never produced by [`super::CaseMetrics`]) goes to the last.
    pub fn index_of(&self, ml: f64) -> usize {
        self.edges
            .iter()
            .take_while(|&&e| ml >= e || ml.is_nan())
            .count()
    }

    /// The label of bin `index`: "<5", "5–15", "15–30", "≥30" ("all" without edges).
    pub fn label(&self, index: usize) -> String {
        let n = self.edges.len();
        match index {
            _ if n == 0 => "all".to_string(),
            0 => format!("<{}", self.edges[0]),
            i if i >= n => format!("≥{}", self.edges[n - 1]),
            i => format!("{}–{}", self.edges[i - 1], self.edges[i]),
        }
    }

    /// All labels in order.
    pub fn labels(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.label(i)).collect()
    }

    /// The label of the bin of a volume in mL.
    pub fn label_of(&self, ml: f64) -> String {
        self.label(self.index_of(ml))
    }
}

fn join(edges: &[f64]) -> String {
    edges
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl fmt::Display for Strata {
    /// The form `FromStr` reads: "5,15,30".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&join(&self.edges))
    }
}

impl FromStr for Strata {
    type Err = MetricsError;

    /// Parses comma-separated edges in mL, e.g. "5,15,30" (spaces allowed).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut edges = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let edge = part
                .parse::<f64>()
                .map_err(|_| MetricsError::InvalidStrata {
                    input: s.to_string(),
                    reason: format!("`{part}` is not a number of mL (expected e.g. 5,15,30)"),
                })?;
            edges.push(edge);
        }
        Strata::new(edges).map_err(|e| match e {
            MetricsError::InvalidStrata { reason, .. } => MetricsError::InvalidStrata {
                input: s.to_string(),
                reason,
            },
            other => other,
        })
    }
}

impl TryFrom<Vec<f64>> for Strata {
    type Error = MetricsError;
    fn try_from(edges: Vec<f64>) -> Result<Self, Self::Error> {
        Strata::new(edges)
    }
}

impl From<Strata> for Vec<f64> {
    fn from(s: Strata) -> Self {
        s.edges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_labels_and_bins() {
        let s = Strata::default();
        assert_eq!(s.labels(), ["<5", "5–15", "15–30", "≥30"]);
        // Bins are closed on the left.
        let bins: Vec<usize> = [0.0, 4.99, 5.0, 14.9, 15.0, 29.99, 30.0, 400.0]
            .iter()
            .map(|&v| s.index_of(v))
            .collect();
        assert_eq!(bins, [0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(s.label_of(15.0), "15–30");
    }

    #[test]
    fn parses_and_prints_edges() {
        let s: Strata = " 2.5, 10 ,40".parse().unwrap();
        assert_eq!(s.edges(), [2.5, 10.0, 40.0]);
        assert_eq!(s.labels(), ["<2.5", "2.5–10", "10–40", "≥40"]);
        assert_eq!(s.to_string(), "2.5,10,40");
        assert_eq!(s.to_string().parse::<Strata>().unwrap(), s);
    }

    #[test]
    fn no_edges_is_one_bin() {
        let s = Strata::new(vec![]).unwrap();
        assert_eq!(s.labels(), ["all"]);
        assert_eq!(s.index_of(123.0), 0);
    }

    #[test]
    fn rejects_unsorted_negative_and_junk() {
        for bad in ["15,5,30", "5,5,30", "-1,5", "5,x,30", "", "5,inf", "5,NaN"] {
            let err = bad.parse::<Strata>().unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("strata `{bad}`")), "{msg}");
        }
        let msg = "15,5".parse::<Strata>().unwrap_err().to_string();
        assert!(msg.contains("strictly increasing"), "{msg}");
        assert!(
            Strata::new(vec![0.0, 1.0]).is_ok(),
            "a zero edge is allowed"
        );
    }

    #[test]
    fn serde_validates() {
        let s: Strata = serde_json::from_str("[5, 15, 30]").unwrap();
        assert_eq!(s, Strata::default());
        assert_eq!(serde_json::to_string(&s).unwrap(), "[5.0,15.0,30.0]");
        assert!(serde_json::from_str::<Strata>("[30, 5]").is_err());
    }
}
