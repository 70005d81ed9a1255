//! A cohort on disk, in the nnU-Net v2 layout:
//!
//! ```text
//! DIR/imagesTr/{case}_0000.nii.gz   CT, i16 HU
//! DIR/labelsTr/{case}.nii.gz        blood label, u8 0/1
//! DIR/dataset.json                  channel_names, labels, numTraining, file_ending, description
//! DIR/phantom.json                  per-case metadata (CohortMeta)
//! ```
//!
//! Written atomically: everything goes to a hidden sibling folder which is renamed to `DIR`
//! only when complete, so an interrupted run leaves no half cohort (and a failed one removes
//! its temporary folder). Cases are drawn and written in parallel, in groups sized so that
//! memory stays bounded at realistic grids; only their metadata is kept.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::cohort::{build_case, strata};
use super::meta::{CaseMeta, CohortMeta};
use super::{PhantomConfig, PhantomError, STRATA_ML, for_each_case, xyz};
use crate::data::nifti::{write_i16, write_u8};

/// What [`write_cohort`] wrote.
#[derive(Clone, Debug)]
pub struct CohortSummary {
    pub dir: PathBuf,
    pub cases: Vec<CaseMeta>,
}

impl CohortSummary {
    /// Smallest and largest labelled blood volume (mL); `(0, 0)` without cases.
    pub fn volume_range_ml(&self) -> (f64, f64) {
        let v = self.cases.iter().map(|c| c.blood_volume_ml);
        let lo = v.clone().fold(f64::INFINITY, f64::min);
        let hi = v.fold(0.0, f64::max);
        if self.cases.is_empty() {
            (0.0, 0.0)
        } else {
            (lo, hi)
        }
    }

    /// Cases per hemorrhage-volume stratum (blood-free cases count in the lowest), in order.
    pub fn stratum_counts(&self) -> Vec<(String, usize)> {
        let strata = strata();
        let mut n = vec![0; strata.len()];
        for c in &self.cases {
            n[strata.index_of(c.blood_volume_ml)] += 1;
        }
        strata.labels().into_iter().zip(n).collect()
    }
}

/// Removes the temporary folder unless the write completed.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PhantomError + '_ {
    move |source| PhantomError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Synthesizes `cfg` into `out` (which must not exist, or be an empty folder).
pub fn write_cohort(cfg: &PhantomConfig, out: &Path) -> Result<CohortSummary, PhantomError> {
    cfg.validate()?;
    let out_is_empty_dir = match fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(PhantomError::OutputExists {
                    path: out.to_path_buf(),
                });
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) if out.exists() => {
            return Err(PhantomError::OutputExists {
                path: out.to_path_buf(),
            });
        }
        Err(e) => return Err(io(out)(e)),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cohort".into());
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io(&parent))?;
    let tmp = TempDir {
        path: parent.join(format!(".{name}.partial-{}", std::process::id())),
        keep: false,
    };
    if tmp.path.exists() {
        fs::remove_dir_all(&tmp.path).map_err(io(&tmp.path))?;
    }
    let images = tmp.path.join("imagesTr");
    let labels = tmp.path.join("labelsTr");
    fs::create_dir_all(&images).map_err(io(&images))?;
    fs::create_dir_all(&labels).map_err(io(&labels))?;

    let cases = for_each_case(cfg, |i| {
        let case = build_case(cfg, i);
        write_i16(&case.image, images.join(format!("{}_0000.nii.gz", case.id)))?;
        write_u8(&case.label, labels.join(format!("{}.nii.gz", case.id)))?;
        Ok(case.meta)
    })
    .into_iter()
    .collect::<Result<Vec<CaseMeta>, PhantomError>>()?;

    let [sx, sy, sz] = xyz(cfg.spacing);
    let [nx, ny, nz] = xyz(cfg.shape);
    let what = match cfg.cohort {
        super::Cohort::Tbi => "traumatic brain injury",
        super::Cohort::Sah => "aneurysmal subarachnoid haemorrhage",
    };
    let dataset = serde_json::json!({
        "name": format!("ranksweep-phantom-{}", cfg.cohort),
        "description": format!(
            "ranksweep synthetic head-CT phantoms, cohort {} ({what}), seed {}, {} cases, grid {nx}x{ny}x{nz} at {sx}x{sy}x{sz} mm",
            cfg.cohort, cfg.seed, cfg.cases
        ),
        "reference": "synthetic; see phantom.json for per-case metadata",
        "licence": "CC0-1.0",
        "channel_names": { "0": "CT" },
        "labels": { "background": 0, "blood": 1 },
        "numTraining": cfg.cases,
        "file_ending": ".nii.gz",
    });
    write_json(&tmp.path.join("dataset.json"), &dataset)?;
    let meta = CohortMeta {
        generator: format!("ranksweep {}", env!("CARGO_PKG_VERSION")),
        cohort: cfg.cohort,
        seed: cfg.seed,
        shape_xyz: xyz(cfg.shape),
        spacing_xyz_mm: xyz(cfg.spacing),
        strata_ml: STRATA_ML.to_vec(),
        cases: cases.clone(),
    };
    write_json(&tmp.path.join("phantom.json"), &meta)?;

    if out_is_empty_dir {
        fs::remove_dir(out).map_err(io(out))?;
    }
    fs::rename(&tmp.path, out).map_err(io(out))?;
    // The rename is durable only once the parent folder is synced.
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::durable::sync_dir(parent).map_err(io(out))?;
    }
    let mut tmp = tmp;
    tmp.keep = true;
    Ok(CohortSummary {
        dir: out.to_path_buf(),
        cases,
    })
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), PhantomError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|source| PhantomError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    text.push('\n');
    fs::write(path, text).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Volume;
    use crate::data::phantom::Cohort;

    #[test]
    fn writes_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tbi");
        let cfg = PhantomConfig::new(Cohort::Tbi, 2, 3);
        let summary = write_cohort(&cfg, &out).unwrap();
        assert_eq!(summary.cases.len(), 2);
        // Only the cohort remains beside nothing else: the temporary folder was renamed.
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["tbi".to_string()]);
        let meta: CohortMeta =
            serde_json::from_slice(&fs::read(out.join("phantom.json")).unwrap()).unwrap();
        assert_eq!(meta.cases, summary.cases);
        assert_eq!(meta.shape_xyz, [64, 64, 24]);

        // A second run into the same folder is refused and leaves it as it was.
        let before = fs::read(out.join("phantom.json")).unwrap();
        let e = write_cohort(&PhantomConfig::new(Cohort::Sah, 1, 3), &out).unwrap_err();
        assert!(matches!(e, PhantomError::OutputExists { .. }), "{e}");
        assert!(e.to_string().contains("not empty"), "{e}");
        assert_eq!(fs::read(out.join("phantom.json")).unwrap(), before);

        // An empty folder is fine (it is replaced).
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        write_cohort(&PhantomConfig::new(Cohort::Sah, 1, 3), &empty).unwrap();
        assert!(empty.join("dataset.json").is_file());
    }

    #[test]
    fn an_unfinished_write_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".x.partial-1");
        fs::create_dir_all(path.join("imagesTr")).unwrap();
        let vol = Volume::new(ndarray::Array3::<u8>::zeros((2, 2, 2)), [1.0; 3]);
        write_u8(&vol, path.join("imagesTr/a.nii.gz")).unwrap();
        {
            let _guard = TempDir {
                path: path.clone(),
                keep: false,
            };
            // A failing case returns early here: the guard drops without `keep`.
        }
        assert!(!path.exists());
        let kept = dir.path().join(".y.partial-1");
        fs::create_dir(&kept).unwrap();
        drop(TempDir {
            path: kept.clone(),
            keep: true,
        });
        assert!(kept.exists());
    }
}
