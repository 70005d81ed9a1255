//! Patient-level k-fold cross-validation splits, written once as `splits.json` and reused.
//!
//! Key types: [`Splits`] (a list of [`Fold`]s, nnU-Net's `splits_final.json` format:
//! `[{"train": [...], "val": [...]}, ...]`), [`Strata`] (annotated volumes and bin edges for a
//! stratified split), [`FoldError`]. Entry points: [`make_splits`], [`load_or_create_splits`].
//!
//! Design (nnU-Net `crossval_split.py`): case ids are sorted, then shuffled by a ChaCha8 stream
//! seeded with `seed`, so a split depends only on the set of ids and the seed. Cases are dealt
//! to folds round-robin; with strata, the deal runs stratum by stratum with one running counter,
//! so every fold gets its share of each volume stratum and fold sizes differ by at most one.
//! Each case is one patient (one scan per case in every supported layout), so splits are
//! patient-level. The file is written once and then reused as is, so users can supply their
//! own; it is checked against the dataset (unknown case, a case in both train and val of a fold
//! are errors). Unlike nnU-Net, an out-of-range fold is an error, never a silent 80:20 split.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The file name of generated splits (`run` keeps them under `<results>/splits/`; a job
/// without `data.splits` in its own output folder; never in the dataset folder).
pub const SPLITS_FILE: &str = "splits.json";

/// A split that cannot be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    #[error("cannot make {k} folds from {n} cases: expected 2 <= k <= number of cases")]
    FoldCount { k: usize, n: usize },
    #[error("case id `{0}` appears twice")]
    DuplicateId(String),
    #[error("stratification: no annotated volume for case `{0}`")]
    MissingVolume(String),
    #[error(
        "stratification: invalid volume {volume} mL for case `{case}`: expected a finite value >= 0"
    )]
    BadVolume { case: String, volume: f64 },
    #[error("stratification: bin edges {0:?} must be finite and strictly increasing")]
    BadEdges(Vec<f64>),
    #[error("fold {fold} is out of range: the splits have folds 0..{count}")]
    OutOfRange { fold: usize, count: usize },
    #[error("{}: fold {fold}: case `{case}` is not in the dataset", path.display())]
    UnknownCase {
        path: PathBuf,
        fold: usize,
        case: String,
    },
    #[error("{}: fold {fold}: case `{case}` is in both train and val", path.display())]
    Overlap {
        path: PathBuf,
        fold: usize,
        case: String,
    },
    #[error("{}: fold {fold}: `val` is empty", path.display())]
    EmptyVal { path: PathBuf, fold: usize },
    #[error("{}: no folds: expected a list of {{\"train\": [...], \"val\": [...]}}", path.display())]
    NoFolds { path: PathBuf },
    #[error("{}: invalid splits file: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {message}: {source}", path.display())]
    Io {
        path: PathBuf,
        message: &'static str,
        source: io::Error,
    },
}

/// One fold: the cases to train on and the cases to validate on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fold {
    pub train: Vec<String>,
    pub val: Vec<String>,
}

/// All folds of a cross-validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Splits(pub Vec<Fold>);

/// Annotated volume per case and the bin edges in mL (default `[5, 15, 30]`: <5, 5–15, 15–30,
/// ≥30 mL) for a split stratified by hemorrhage volume.
#[derive(Debug, Clone, PartialEq)]
pub struct Strata {
    pub volumes_ml: BTreeMap<String, f64>,
    pub edges_ml: Vec<f64>,
}

/// The default stratum edges in mL.
pub const DEFAULT_EDGES_ML: [f64; 3] = [5.0, 15.0, 30.0];

/// The bin of `volume` given increasing `edges`: 0 below the first edge, `edges.len()` at or
/// above the last.
pub fn stratum(volume: f64, edges: &[f64]) -> usize {
    edges.partition_point(|&e| e <= volume)
}

impl Splits {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Fold `fold`; an out-of-range index is an error.
    pub fn fold(&self, fold: usize) -> Result<&Fold, FoldError> {
        self.0.get(fold).ok_or(FoldError::OutOfRange {
            fold,
            count: self.0.len(),
        })
    }

    /// Reads a splits file (without checking it against a dataset: see [`Splits::check`]).
    pub fn read(path: impl AsRef<Path>) -> Result<Self, FoldError> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).map_err(|source| FoldError::Io {
            path: path.into(),
            message: "cannot read splits",
            source,
        })?;
        let splits: Splits = serde_json::from_str(&text).map_err(|e| FoldError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        if splits.is_empty() {
            return Err(FoldError::NoFolds { path: path.into() });
        }
        Ok(splits)
    }

    /// Writes the splits as pretty JSON, atomically (temp file in the same folder + rename).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), FoldError> {
        let path = path.as_ref();
        let io_err = |message, source| FoldError::Io {
            path: path.into(),
            message,
            source,
        };
        let text = serde_json::to_string_pretty(self).expect("splits serialize");
        crate::durable::write_atomic(path, (text + "\n").as_bytes())
            .map_err(|e| io_err("cannot write splits", e))
    }

    /// Checks every fold against the dataset's case ids: each case known, train and val
    /// disjoint, val not empty. `path` is only used in messages.
    pub fn check(&self, path: &Path, case_ids: &[String]) -> Result<(), FoldError> {
        let known: BTreeSet<&str> = case_ids.iter().map(String::as_str).collect();
        for (fold, f) in self.0.iter().enumerate() {
            if f.val.is_empty() {
                return Err(FoldError::EmptyVal {
                    path: path.into(),
                    fold,
                });
            }
            for case in f.train.iter().chain(&f.val) {
                if !known.contains(case.as_str()) {
                    return Err(FoldError::UnknownCase {
                        path: path.into(),
                        fold,
                        case: case.clone(),
                    });
                }
            }
            let train: BTreeSet<&str> = f.train.iter().map(String::as_str).collect();
            if let Some(case) = f.val.iter().find(|c| train.contains(c.as_str())) {
                return Err(FoldError::Overlap {
                    path: path.into(),
                    fold,
                    case: case.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Splits `case_ids` into `k` folds, deterministically by `seed`, optionally stratified.
pub fn make_splits(
    case_ids: &[String],
    k: usize,
    seed: u64,
    strata: Option<&Strata>,
) -> Result<Splits, FoldError> {
    let mut ids: Vec<&str> = case_ids.iter().map(String::as_str).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(FoldError::DuplicateId(w[0].to_string()));
    }
    if k < 2 || k > ids.len() {
        return Err(FoldError::FoldCount { k, n: ids.len() });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    ids.shuffle(&mut rng);

    // Groups in shuffled order: one group, or one per stratum (lowest first).
    let groups: Vec<Vec<&str>> = match strata {
        None => vec![ids],
        Some(st) => {
            let edges = &st.edges_ml;
            if edges.iter().any(|e| !e.is_finite()) || edges.windows(2).any(|w| w[0] >= w[1]) {
                return Err(FoldError::BadEdges(edges.clone()));
            }
            let mut groups = vec![Vec::new(); edges.len() + 1];
            for id in ids {
                let v = *st
                    .volumes_ml
                    .get(id)
                    .ok_or_else(|| FoldError::MissingVolume(id.to_string()))?;
                if !(v.is_finite() && v >= 0.0) {
                    return Err(FoldError::BadVolume {
                        case: id.to_string(),
                        volume: v,
                    });
                }
                groups[stratum(v, edges)].push(id);
            }
            groups
        }
    };

    // One running counter over the groups in order: round-robin within and across strata.
    let fold_of: BTreeMap<&str, usize> = groups
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, id)| (id, i % k))
        .collect();
    let folds = (0..k)
        .map(|f| {
            // BTreeMap iteration: both lists come out sorted.
            let (val, train): (Vec<_>, Vec<_>) = fold_of.iter().partition(|(_, fi)| **fi == f);
            Fold {
                train: train.into_iter().map(|(id, _)| id.to_string()).collect(),
                val: val.into_iter().map(|(id, _)| id.to_string()).collect(),
            }
        })
        .collect();
    Ok(Splits(folds))
}

/// Reads `path` if it exists (checked against `case_ids`, used as is), or makes the splits and
/// writes them there. Returns the splits and whether they were newly written.
pub fn load_or_create_splits(
    path: impl AsRef<Path>,
    case_ids: &[String],
    k: usize,
    seed: u64,
    strata: Option<&Strata>,
) -> Result<(Splits, bool), FoldError> {
    let path = path.as_ref();
    if path.exists() {
        let splits = Splits::read(path)?;
        splits.check(path, case_ids)?;
        if splits.len() != k {
            tracing::warn!(
                "{}: holds {} folds, configuration asks for {k}; using the file",
                path.display(),
                splits.len()
            );
        }
        return Ok((splits, false));
    }
    let splits = make_splits(case_ids, k, seed, strata)?;
    splits.write(path)?;
    Ok((splits, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("case_{i:03}")).collect()
    }

    fn assert_partition(s: &Splits, all: &[String]) {
        let mut seen = BTreeSet::new();
        for f in &s.0 {
            let train: BTreeSet<_> = f.train.iter().collect();
            let val: BTreeSet<_> = f.val.iter().collect();
            assert!(train.is_disjoint(&val));
            assert_eq!(
                train.len() + val.len(),
                all.len(),
                "train ∪ val covers every case"
            );
            for v in &f.val {
                assert!(seen.insert(v.clone()), "{v} validated twice");
            }
        }
        assert_eq!(seen.len(), all.len(), "every case validated once");
    }

    #[test]
    fn folds_are_deterministic_disjoint_and_covering() {
        let all = ids(31);
        let a = make_splits(&all, 3, 12345, None).unwrap();
        assert_partition(&a, &all);
        let sizes: Vec<usize> = a.0.iter().map(|f| f.val.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 31);
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
        // Same ids in another order, same seed: same split. Another seed: another split.
        let mut rev = all.clone();
        rev.reverse();
        assert_eq!(make_splits(&rev, 3, 12345, None).unwrap(), a);
        assert_ne!(make_splits(&all, 3, 12346, None).unwrap(), a);
        // Lists are sorted.
        for f in &a.0 {
            assert!(f.val.windows(2).all(|w| w[0] < w[1]));
            assert!(f.train.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn stratified_folds_balance_each_stratum() {
        let all = ids(30);
        // Volumes: 12 cases < 5 mL, 9 in 5–15, 6 in 15–30, 3 >= 30.
        let volumes_ml: BTreeMap<String, f64> = all
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let v = match i {
                    0..12 => 1.0 + i as f64 * 0.3,
                    12..21 => 5.0 + i as f64 * 0.4,
                    21..27 => 15.0 + i as f64 * 0.5,
                    _ => 30.0 + i as f64,
                };
                (id.clone(), v)
            })
            .collect();
        let strata = Strata {
            volumes_ml: volumes_ml.clone(),
            edges_ml: DEFAULT_EDGES_ML.to_vec(),
        };
        let s = make_splits(&all, 3, 7, Some(&strata)).unwrap();
        assert_partition(&s, &all);
        for f in &s.0 {
            let mut per = [0usize; 4];
            for v in &f.val {
                per[stratum(volumes_ml[v], &DEFAULT_EDGES_ML)] += 1;
            }
            assert_eq!(per, [4, 3, 2, 1], "each fold gets a third of each stratum");
        }
        assert_eq!(make_splits(&all, 3, 7, Some(&strata)).unwrap(), s);

        let mut missing = strata.clone();
        missing.volumes_ml.remove("case_004");
        assert!(
            matches!(make_splits(&all, 3, 7, Some(&missing)), Err(FoldError::MissingVolume(c)) if c == "case_004")
        );
        let bad_edges = Strata {
            edges_ml: vec![15.0, 5.0],
            ..strata.clone()
        };
        assert!(matches!(
            make_splits(&all, 3, 7, Some(&bad_edges)),
            Err(FoldError::BadEdges(_))
        ));
        let mut nan = strata;
        nan.volumes_ml.insert("case_001".into(), f64::NAN);
        assert!(matches!(
            make_splits(&all, 3, 7, Some(&nan)),
            Err(FoldError::BadVolume { .. })
        ));
    }

    #[test]
    fn strata_bins() {
        let e = DEFAULT_EDGES_ML;
        assert_eq!(stratum(0.0, &e), 0);
        assert_eq!(stratum(4.99, &e), 0);
        assert_eq!(stratum(5.0, &e), 1);
        assert_eq!(stratum(29.9, &e), 2);
        assert_eq!(stratum(30.0, &e), 3);
        assert_eq!(stratum(500.0, &e), 3);
    }

    #[test]
    fn bad_requests_are_errors() {
        assert!(matches!(
            make_splits(&ids(5), 1, 0, None),
            Err(FoldError::FoldCount { k: 1, n: 5 })
        ));
        assert!(matches!(
            make_splits(&ids(2), 3, 0, None),
            Err(FoldError::FoldCount { k: 3, n: 2 })
        ));
        let mut dup = ids(4);
        dup.push("case_002".into());
        assert!(matches!(
            make_splits(&dup, 2, 0, None),
            Err(FoldError::DuplicateId(_))
        ));
        let s = make_splits(&ids(6), 3, 0, None).unwrap();
        assert!(s.fold(2).is_ok());
        let e = s.fold(3).unwrap_err().to_string();
        assert!(
            e.contains("fold 3 is out of range") && e.contains("0..3"),
            "{e}"
        );
    }

    #[test]
    fn splits_file_is_written_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SPLITS_FILE);
        let all = ids(9);
        let (s, created) = load_or_create_splits(&path, &all, 3, 1, None).unwrap();
        assert!(created);
        // nnU-Net format: a list of {"train", "val"}.
        let json: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 3);
        assert!(json[0]["train"].is_array() && json[0]["val"].is_array());
        // Another seed does not rewrite it.
        let (again, created) = load_or_create_splits(&path, &all, 3, 99, None).unwrap();
        assert!(!created);
        assert_eq!(again, s);
        // A user's own split is used as is.
        let own = Splits(vec![
            Fold {
                train: all[2..].to_vec(),
                val: all[..2].to_vec(),
            },
            Fold {
                train: all[..7].to_vec(),
                val: all[7..].to_vec(),
            },
        ]);
        own.write(&path).unwrap();
        let (used, _) = load_or_create_splits(&path, &all, 3, 1, None).unwrap();
        assert_eq!(used, own);
        assert!(used.fold(2).is_err());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temp file left: {names:?}");
    }

    #[test]
    fn a_splits_file_that_disagrees_with_the_dataset_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SPLITS_FILE);
        let all = ids(4);
        let write = |text: &str| fs::write(&path, text).unwrap();
        let load = || {
            load_or_create_splits(&path, &all, 2, 0, None)
                .unwrap_err()
                .to_string()
        };

        write(r#"[{"train": ["case_000", "case_001"], "val": ["case_999"]}]"#);
        let e = load();
        assert!(
            e.contains("splits.json") && e.contains("case `case_999` is not in the dataset"),
            "{e}"
        );
        write(r#"[{"train": ["case_000", "case_001"], "val": ["case_001"]}]"#);
        assert!(load().contains("in both train and val"));
        write(r#"[{"train": ["case_000"], "val": []}]"#);
        assert!(load().contains("`val` is empty"));
        write("[]");
        assert!(load().contains("no folds"));
        write(r#"{"train": []}"#);
        assert!(load().contains("invalid splits file"));
        write(r#"[{"train": [], "val": ["case_000"], "test": []}]"#);
        assert!(load().contains("unknown field"));
    }
}
