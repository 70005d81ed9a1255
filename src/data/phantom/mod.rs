//! Synthetic head-CT phantoms: the TBI cohort (pre-training) and the aneurysmal SAH cohort
//! (fine-tuning), the embedded default data set that makes the TBI → SAH domain shift real
//! when no scans can be downloaded. Specification: `shared/notes/data.md`, "Synthetic phantoms".
//!
//! Key types: [`PhantomConfig`] (cohort, cases, seed, grid), [`PhantomCase`] (image in HU,
//! label, [`CaseMeta`]), [`Cohort`]. Entry points: [`synthesize_case`], [`synthesize`] (in
//! memory) and [`write_cohort`] (nnU-Net v2 folder, written atomically).
//!
//! Design, one stage per file:
//! - `shapes`: mm geometry (ellipsoids, plates, shells); `raster`: the output grid, the finer
//!   grid everything is drawn on, and the averaging down that turns thin structures into
//!   partial volume;
//! - `anatomy`: the head as tissue classes, with the CSF compartments blood can fill;
//! - `lesions::{tbi, sah}`: the blood, sized on the label (fraction ≥ 0.5 after averaging);
//! - `scanner`: offset, rim, streaks, blur, correlated noise, rounding;
//! - `cohort`: one case from (config, index); `write`: the folder; `baseline`: the threshold
//!   baseline the phantoms are calibrated against.
//!
//! Every case is a pure function of (cohort, seed, index, grid): its random stream is ChaCha8
//! seeded by the cohort seed with the case index as stream, so cases can be drawn in parallel
//! and in any order, and case `i` does not depend on how many cases were asked for. Cohort
//! schedules (TBI blood-free cases, SAH strata) are periodic in the index, so any window of
//! cases is balanced.
//!
//! World coordinates are RAS mm with the origin at the brain centre; the volumes carry a
//! NIfTI header with that affine (the aneurysm position in the metadata is in it). The default
//! grid (64 × 64 × 24 at 3.4 × 3.4 × 6 mm) is rendered on 4 × 4 × 4 sub-samples per voxel.

mod anatomy;
pub mod baseline;
mod cohort;
mod lesions;
pub mod meta;
mod raster;
mod scanner;
mod shapes;
mod write;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::Volume;

pub use cohort::synthesize_case;
pub use meta::{Aneurysm, AneurysmSite, CaseMeta, CohortMeta, Lesion, LesionKind, SahPattern};
pub use write::{CohortSummary, write_cohort};

/// Hemorrhage-volume strata edges (mL) the SAH cohort is balanced over: the default
/// [`crate::metrics::Strata`].
pub const STRATA_ML: [f64; 3] = [5.0, 15.0, 30.0];

/// Default output grid `[z, y, x]`: small enough to train on in CI, the whole head in view.
pub const DEFAULT_SHAPE: [usize; 3] = [24, 64, 64];
/// Default voxel size (mm) `[z, y, x]`: 218 mm in-plane field of view, 144 mm of slices.
pub const DEFAULT_SPACING: [f64; 3] = [6.0, 3.4, 3.4];
/// Smallest grid accepted, `[z, y, x]`.
pub const MIN_SHAPE: [usize; 3] = [4, 16, 16];
/// Smallest field of view (mm) accepted, `[z, y, x]`: the head (about 150 × 200 mm) must
/// nearly fit in-plane (a 512 × 0.37 mm scan crops the scalp, as real ones do).
pub const MIN_FOV_MM: [f64; 3] = [40.0, 180.0, 180.0];
/// NIfTI-1 stores sizes as 16-bit integers.
const MAX_DIM: usize = i16::MAX as usize;
/// Most fine samples one case may need (about 1.5 GB of working memory).
const MAX_FINE_SAMPLES: usize = 400_000_000;

/// Which cohort to synthesize.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cohort {
    /// Traumatic brain injury: the pre-training cohort.
    Tbi,
    /// Aneurysmal subarachnoid haemorrhage: the fine-tuning cohort.
    Sah,
}

impl Cohort {
    pub fn name(self) -> &'static str {
        match self {
            Cohort::Tbi => "tbi",
            Cohort::Sah => "sah",
        }
    }

    /// Mixed into the seed so that both cohorts drawn with one seed differ.
    fn tag(self) -> u64 {
        match self {
            Cohort::Tbi => 0x7462_6900,
            Cohort::Sah => 0x7361_6800,
        }
    }
}

impl fmt::Display for Cohort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Cohort {
    type Err = PhantomError;
    fn from_str(s: &str) -> Result<Cohort, PhantomError> {
        match s {
            "tbi" => Ok(Cohort::Tbi),
            "sah" => Ok(Cohort::Sah),
            _ => Err(PhantomError::UnknownCohort(s.to_string())),
        }
    }
}

/// Patient side (NIfTI RAS: right is +x).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    Right,
    Left,
}

impl Side {
    pub(crate) fn sign(self) -> f64 {
        match self {
            Side::Right => 1.0,
            Side::Left => -1.0,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Side::Right => "right",
            Side::Left => "left",
        }
    }

    pub(crate) fn other(self) -> Side {
        match self {
            Side::Right => Side::Left,
            Side::Left => Side::Right,
        }
    }
}

/// What to synthesize. Grid arrays are `[z, y, x]` like [`Volume`].
#[derive(Clone, Debug, PartialEq)]
pub struct PhantomConfig {
    pub cohort: Cohort,
    pub cases: usize,
    pub seed: u64,
    pub shape: [usize; 3],
    pub spacing: [f64; 3],
}

impl PhantomConfig {
    /// `cases` cases of `cohort` on the default grid.
    pub fn new(cohort: Cohort, cases: usize, seed: u64) -> PhantomConfig {
        PhantomConfig {
            cohort,
            cases,
            seed,
            shape: DEFAULT_SHAPE,
            spacing: DEFAULT_SPACING,
        }
    }

    /// Checks the values a user can get wrong.
    pub fn validate(&self) -> Result<(), PhantomError> {
        if self.cases == 0 {
            return Err(PhantomError::NoCases);
        }
        if self.spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(PhantomError::Spacing {
                spacing: xyz(self.spacing),
            });
        }
        if self.shape.iter().zip(MIN_SHAPE).any(|(&n, m)| n < m) {
            return Err(PhantomError::ShapeTooSmall {
                shape: xyz(self.shape),
                min: xyz(MIN_SHAPE),
            });
        }
        let fov = [0, 1, 2].map(|k| self.shape[k] as f64 * self.spacing[k]);
        if fov.iter().zip(MIN_FOV_MM).any(|(&f, m)| f < m) {
            return Err(PhantomError::FieldOfView {
                fov: xyz(fov),
                min: xyz(MIN_FOV_MM),
            });
        }
        if self.shape.iter().any(|&n| n > MAX_DIM) {
            return Err(PhantomError::TooLarge {
                shape: xyz(self.shape),
            });
        }
        // In f64: a silly shape must not overflow before it is refused.
        let factor = raster::Grid::new(self.shape, self.spacing).factor;
        let fine: f64 = (0..3)
            .map(|k| self.shape[k] as f64 * factor[k] as f64)
            .product();
        if fine > MAX_FINE_SAMPLES as f64 {
            return Err(PhantomError::TooLarge {
                shape: xyz(self.shape),
            });
        }
        Ok(())
    }
}

/// `[z, y, x]` → `[x, y, z]`, the order users type and NIfTI stores.
pub fn xyz<T: Copy>(zyx: [T; 3]) -> [T; 3] {
    [zyx[2], zyx[1], zyx[0]]
}

/// Errors of the phantom generator. Field names are the CLI's; shapes and spacings are
/// printed `x, y, z`.
#[derive(Debug, thiserror::Error)]
pub enum PhantomError {
    #[error("unknown cohort `{0}`: expected `tbi` or `sah`")]
    UnknownCohort(String),
    #[error("`cases`: expected at least 1, got 0")]
    NoCases,
    #[error("`spacing`: expected three positive sizes in mm, got {spacing:?}")]
    Spacing { spacing: [f64; 3] },
    #[error("`shape`: expected at least {min:?} voxels, got {shape:?}")]
    ShapeTooSmall { shape: [usize; 3], min: [usize; 3] },
    #[error(
        "`shape` × `spacing`: field of view {fov:?} mm is smaller than a head (at least {min:?} mm)"
    )]
    FieldOfView { fov: [f64; 3], min: [f64; 3] },
    #[error(
        "`shape`: {shape:?} needs more than {MAX_FINE_SAMPLES} fine samples per case; use fewer or larger voxels"
    )]
    TooLarge { shape: [usize; 3] },
    #[error("{}: output already exists and is not empty", path.display())]
    OutputExists { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Volume(#[from] crate::data::nifti::VolumeError),
    #[error("{}: cannot write JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// One synthesized case.
#[derive(Clone, Debug)]
pub struct PhantomCase {
    /// Case identifier (`tbi_003`), as in the nnU-Net file names.
    pub id: String,
    /// CT in HU, axes `[z, y, x]`.
    pub image: Volume<i16>,
    /// Blood label (0/1): voxels whose blood fraction reaches 0.5.
    pub label: Volume<u8>,
    pub meta: CaseMeta,
}

/// All cases of `cfg`, drawn in parallel, in index order.
pub fn synthesize(cfg: &PhantomConfig) -> Result<Vec<PhantomCase>, PhantomError> {
    cfg.validate()?;
    Ok(for_each_case(cfg, |i| cohort::build_case(cfg, i)))
}

/// Working memory all cases drawn at once may use; beyond it cases go in smaller groups.
const PARALLEL_BUDGET_BYTES: usize = 4 << 30;
/// Bytes per fine sample while a case is drawn (class, blood, lesion, compartment, zone).
const BYTES_PER_FINE_SAMPLE: usize = 6;

/// `f(i)` for every case index, in parallel, in index order. At realistic grids a case needs
/// hundreds of MB, so at most `PARALLEL_BUDGET_BYTES` worth of cases run at once (each case is
/// itself drawn in parallel).
pub(crate) fn for_each_case<T: Send>(cfg: &PhantomConfig, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let per_case = raster::Grid::new(cfg.shape, cfg.spacing).fine_len() * BYTES_PER_FINE_SAMPLE;
    let group = (PARALLEL_BUDGET_BYTES / per_case.max(1)).clamp(1, cfg.cases.max(1));
    let indices: Vec<usize> = (0..cfg.cases).collect();
    indices
        .chunks(group)
        .flat_map(|chunk| chunk.par_iter().map(|&i| f(i)).collect::<Vec<T>>())
        .collect()
}

/// The case's random stream: ChaCha8 from (seed, cohort), stream = case index.
fn case_rng(seed: u64, cohort: Cohort, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ cohort.tag());
    rng.set_stream(index as u64);
    rng
}

/// Cohort-level schedules (blood-free rotation, strata permutations): streams no case uses.
pub(crate) fn schedule_rng(seed: u64, key: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((1 << 63) | key);
    rng
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::metrics::Confusion;

    /// Cases per cohort for the cohort-level properties (drawn once, shared by the tests).
    const N: usize = 12;
    const SEED: u64 = 2024;

    fn cohort(c: Cohort) -> &'static [PhantomCase] {
        static TBI: OnceLock<Vec<PhantomCase>> = OnceLock::new();
        static SAH: OnceLock<Vec<PhantomCase>> = OnceLock::new();
        let cell = if c == Cohort::Tbi { &TBI } else { &SAH };
        cell.get_or_init(|| synthesize(&PhantomConfig::new(c, N, SEED)).unwrap())
    }

    #[test]
    fn same_seed_same_case_bit_for_bit() {
        for c in [Cohort::Tbi, Cohort::Sah] {
            let cfg = PhantomConfig::new(c, N, SEED);
            // Drawn alone, in another order, it equals the one drawn in parallel with the rest.
            for i in [3, 0] {
                let again = synthesize_case(&cfg, i).unwrap();
                let first = &cohort(c)[i];
                assert_eq!(again.image.data, first.image.data, "{}", first.id);
                assert_eq!(again.label.data, first.label.data, "{}", first.id);
                assert_eq!(again.meta, first.meta);
            }
            // Case 0 does not depend on how many cases were asked for.
            let small = synthesize_case(&PhantomConfig::new(c, 1, SEED), 0).unwrap();
            assert_eq!(small.image.data, cohort(c)[0].image.data);
            // Another seed, another head.
            let other = synthesize_case(&PhantomConfig::new(c, N, SEED + 1), 0).unwrap();
            assert_ne!(other.image.data, cohort(c)[0].image.data);
        }
        // The two cohorts drawn with one seed differ.
        assert_ne!(
            cohort(Cohort::Tbi)[0].image.data,
            cohort(Cohort::Sah)[0].image.data
        );
    }

    #[test]
    fn sah_cohort_covers_every_stratum() {
        let strata = cohort::strata();
        let mut seen = vec![0; strata.len()];
        for c in cohort(Cohort::Sah) {
            let ml = c.label.data.iter().filter(|&&v| v == 1).count() as f64 * c.label.voxel_ml();
            assert_eq!(c.meta.stratum, strata.label_of(ml));
            seen[strata.index_of(ml)] += 1;
            assert!(c.meta.aneurysm.is_some() && c.meta.pattern.is_some());
            // 2–80 mL overall.
            assert!((1.5..=90.0).contains(&ml), "{}: {ml} mL", c.id);
        }
        // Blocks of four are balanced: 12 cases hold 3 of each.
        assert_eq!(seen, vec![3, 3, 3, 3]);
    }

    #[test]
    fn tbi_cohort_has_blood_free_cases() {
        let cases = cohort(Cohort::Tbi);
        let free: Vec<&PhantomCase> = cases.iter().filter(|c| c.meta.blood_free).collect();
        // One in seven by schedule: 12 consecutive cases hold one or two.
        assert!((1..=2).contains(&free.len()), "{} blood-free", free.len());
        for c in &free {
            assert!(c.label.data.iter().all(|&v| v == 0));
            assert!(c.meta.lesions.is_empty() && c.meta.blood_volume_ml == 0.0);
        }
        for c in cases.iter().filter(|c| !c.meta.blood_free) {
            assert!(
                c.meta.blood_volume_ml >= 0.5,
                "{}: {}",
                c.id,
                c.meta.blood_volume_ml
            );
            assert!(
                c.meta
                    .lesions
                    .iter()
                    .all(|l| !matches!(l.kind, LesionKind::CisternalSah | LesionKind::FissuralSah))
            );
        }
    }

    /// Calibration: the threshold baseline (intracranial ∧ 50–90 HU) must score Dice 0.3–0.6
    /// on each cohort, mean over the cases with blood (nnU-Net: no truth, no Dice). Higher
    /// means the phantoms are too easy, lower that they are hopeless.
    #[test]
    fn threshold_baseline_dice_is_calibrated() {
        for c in [Cohort::Tbi, Cohort::Sah] {
            let dice: Vec<f64> = cohort(c)
                .iter()
                .filter(|case| case.meta.label_voxels > 0)
                .map(|case| {
                    let pred = baseline::threshold_baseline(&case.image);
                    Confusion::count(pred.data.view(), case.label.data.view())
                        .unwrap()
                        .dice()
                })
                .collect();
            let mean = dice.iter().sum::<f64>() / dice.len() as f64;
            assert!(
                (0.3..=0.6).contains(&mean),
                "{c}: baseline Dice {mean:.3} over {} cases: {dice:?}",
                dice.len()
            );
            // Not one easy case carrying the mean: the spread is real.
            assert!(
                dice.iter().any(|&d| d < 0.45) && dice.iter().any(|&d| d > 0.45),
                "{c}: {dice:?}"
            );
        }
    }

    #[test]
    fn images_look_like_head_ct() {
        for c in [Cohort::Tbi, Cohort::Sah] {
            let case = &cohort(c)[1];
            let mask = baseline::intracranial_mask(&case.image);
            let inside: Vec<f64> = case
                .image
                .data
                .iter()
                .zip(mask.iter())
                .filter(|(_, m)| **m)
                .map(|(&v, _)| v as f64)
                .collect();
            let median = {
                let mut v = inside.clone();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            // Brain between CSF and grey matter, a skull, air around; every label voxel is
            // inside the head.
            assert!(
                (20.0..40.0).contains(&median),
                "{c}: intracranial median {median}"
            );
            assert!(case.image.data.iter().any(|&v| v > 900));
            assert_eq!(
                case.image.data[[0, 0, 0]].clamp(-1100, -900),
                case.image.data[[0, 0, 0]]
            );
            let intracranial_ml = inside.len() as f64 * case.image.voxel_ml();
            assert!(
                (700.0..1800.0).contains(&intracranial_ml),
                "{c}: {intracranial_ml} mL"
            );
        }
    }

    #[test]
    fn config_validation_names_the_field() {
        let ok = PhantomConfig::new(Cohort::Sah, 3, 1);
        assert!(ok.validate().is_ok());
        let e = PhantomConfig {
            cases: 0,
            ..ok.clone()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("`cases`"), "{e}");
        let e = PhantomConfig {
            spacing: [6.0, 0.0, 3.4],
            ..ok.clone()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("`spacing`"), "{e}");
        let e = PhantomConfig {
            spacing: [6.0, f64::NAN, 3.4],
            ..ok.clone()
        }
        .validate()
        .unwrap_err();
        assert!(matches!(e, PhantomError::Spacing { .. }));
        let e = PhantomConfig {
            shape: [24, 64, 8],
            ..ok.clone()
        }
        .validate()
        .unwrap_err();
        assert!(
            e.to_string().contains("[8, 64, 24]"),
            "printed x, y, z: {e}"
        );
        let e = PhantomConfig {
            spacing: [6.0, 1.0, 1.0],
            ..ok.clone()
        }
        .validate()
        .unwrap_err();
        assert!(matches!(e, PhantomError::FieldOfView { .. }), "{e}");
        let e = PhantomConfig {
            shape: [400, 2048, 2048],
            spacing: [0.5, 0.1, 0.1],
            ..ok
        }
        .validate()
        .unwrap_err();
        assert!(matches!(e, PhantomError::TooLarge { .. }), "{e}");
        assert_eq!("sah".parse::<Cohort>().unwrap(), Cohort::Sah);
        assert!(
            "ich"
                .parse::<Cohort>()
                .unwrap_err()
                .to_string()
                .contains("`tbi` or `sah`")
        );
    }
}
