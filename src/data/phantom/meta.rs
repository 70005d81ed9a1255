//! What a phantom case knows about itself: the metadata written to `phantom.json` beside the
//! images (true volumes from the label, lesions, aneurysm, pattern, stratum, anatomy, scanner).
//! Names are kebab-case in JSON, like the rest of ranksweep's files.

use serde::{Deserialize, Serialize};

use super::{Cohort, Side};

/// Kinds of lesions the phantoms draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LesionKind {
    /// Subdural crescent (TBI).
    Subdural,
    /// Epidural lens (TBI).
    Epidural,
    /// Haemorrhagic contusion with an unlabelled oedema halo (TBI).
    Contusion,
    /// Traumatic subarachnoid blood in the convexity sulci (TBI).
    TraumaticSah,
    /// Intraventricular blood (both cohorts).
    Ivh,
    /// Aneurysmal SAH in a basal cistern.
    CisternalSah,
    /// Aneurysmal SAH in a fissure (interhemispheric, Sylvian).
    FissuralSah,
    /// Aneurysmal SAH in the sulci.
    SulcalSah,
    /// Aneurysmal SAH over the convexity.
    ConvexitySah,
}

/// One lesion of a case. `volume_ml` is its share of the label (voxels whose blood fraction
/// reaches 0.5, assigned to the lesion holding most of their blood); `blood_ml` is the blood
/// actually drawn, partial voxels included (thin SAH has much more blood than label).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lesion {
    pub kind: LesionKind,
    pub location: String,
    /// HU of the pure clot (before mixing with CSF or brain and averaging).
    pub hu: f32,
    pub volume_ml: f64,
    pub blood_ml: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AneurysmSite {
    /// Anterior communicating artery.
    Acom,
    /// Middle cerebral artery bifurcation.
    Mca,
    /// Posterior communicating artery.
    Pcom,
    /// Basilar tip.
    Basilar,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Aneurysm {
    pub site: AneurysmSite,
    /// For lateral sites (MCA, PCom).
    pub side: Option<Side>,
    /// Centre of the sac, mm in the image's world coordinates (RAS).
    pub position_mm: [f64; 3],
    pub sac_radius_mm: f64,
}

/// Clot thickness of an SAH case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SahPattern {
    /// Compartments filled, blood fraction 0.6–1.
    Thick,
    /// Compartment walls coated by a layer under 1.5 mm: partial volume, 35–55 HU.
    Thin,
}

/// Anatomy parameters of a case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnatomyMeta {
    /// Brain semi-axes, mm, `[x, y, z]`.
    pub brain_semi_axes_mm: [f64; 3],
    pub csf_rim_mm: f64,
    pub skull_mm: f64,
    pub sulci: usize,
    pub sulcal_width_mm: f64,
    pub ventricle_scale: f64,
    /// Hyperdense mimics: `"<where> (<HU> HU)"`.
    pub calcifications: Vec<String>,
}

/// Scanner effects applied to a case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScannerMeta {
    pub blur_sigma_mm: f64,
    pub noise_sd_hu: f64,
    pub hu_offset: f64,
    pub rim_hu: f64,
    pub streaks: usize,
}

/// Everything known about one case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseMeta {
    /// Case identifier, as in the file names (`sah_007`).
    pub case: String,
    pub cohort: Cohort,
    pub index: usize,
    /// Blood volume of the label, mL (label voxels × voxel volume).
    pub blood_volume_ml: f64,
    pub label_voxels: usize,
    /// Hemorrhage-volume stratum of `blood_volume_ml`, labelled as in [`crate::metrics::Strata`]
    /// (`"<5"`, `"5–15"`, `"15–30"`, `"≥30"`).
    pub stratum: String,
    pub blood_free: bool,
    pub lesions: Vec<Lesion>,
    /// SAH only.
    pub aneurysm: Option<Aneurysm>,
    /// SAH only.
    pub pattern: Option<SahPattern>,
    /// SAH only: the labelled volume the spread was sized for, mL.
    pub target_ml: Option<f64>,
    pub ivh: bool,
    pub hydrocephalus: bool,
    pub anatomy: AnatomyMeta,
    pub scanner: ScannerMeta,
}

/// The whole cohort as written to `phantom.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CohortMeta {
    /// `ranksweep <version>`.
    pub generator: String,
    pub cohort: Cohort,
    pub seed: u64,
    pub shape_xyz: [usize; 3],
    pub spacing_xyz_mm: [f64; 3],
    /// Stratum edges used for `stratum` (mL).
    pub strata_ml: Vec<f64>,
    pub cases: Vec<CaseMeta>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_kebab_case_in_json() {
        assert_eq!(
            serde_json::to_string(&LesionKind::TraumaticSah).unwrap(),
            "\"traumatic-sah\""
        );
        assert_eq!(
            serde_json::to_string(&AneurysmSite::Acom).unwrap(),
            "\"acom\""
        );
        assert_eq!(
            serde_json::from_str::<SahPattern>("\"thin\"").unwrap(),
            SahPattern::Thin
        );
    }
}
