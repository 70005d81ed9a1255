//! One case from (config, index): plan the findings, draw the head, draw the blood, average
//! down, apply the scanner, threshold the blood fraction into the label, and measure every
//! volume on that label.

use ndarray::Zip;

use super::anatomy::Head;
use super::lesions::{Draft, sah, tbi};
use super::meta::{AnatomyMeta, Aneurysm, CaseMeta, Lesion, ScannerMeta};
use super::raster::{Grid, downsample};
use super::scanner::Scanner;
use super::{Cohort, PhantomCase, PhantomConfig, PhantomError, STRATA_ML, case_rng};
use crate::data::Volume;
use crate::metrics::Strata;

/// Metadata keeps 4 decimals (0.1 µL, 0.1 µm): readable, and far below a voxel.
fn round4(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

/// The strata the SAH cohort is balanced over.
pub(crate) fn strata() -> Strata {
    Strata::new(STRATA_ML.to_vec()).expect("STRATA_ML is strictly increasing")
}

/// Synthesizes case `index` of `cfg` (validated first). Same inputs, same case, bit for bit.
pub fn synthesize_case(cfg: &PhantomConfig, index: usize) -> Result<PhantomCase, PhantomError> {
    cfg.validate()?;
    Ok(build_case(cfg, index))
}

/// [`synthesize_case`] for a validated config.
pub(crate) fn build_case(cfg: &PhantomConfig, index: usize) -> PhantomCase {
    let grid = Grid::new(cfg.shape, cfg.spacing);
    let mut rng = case_rng(cfg.seed, cfg.cohort, index);
    let mut meta_sah = None;
    let (head, fine, drafts): (Head, _, Vec<Draft>) = match cfg.cohort {
        Cohort::Tbi => {
            let plan = tbi::plan(&mut rng, cfg.seed, index);
            let head = Head::sample(&mut rng, Cohort::Tbi, false);
            let mut fine = head.render(&grid);
            let drafts = tbi::paint(&mut rng, &head, &mut fine, &plan);
            (head, fine, drafts)
        }
        Cohort::Sah => {
            let plan = sah::plan(&mut rng, cfg.seed, index);
            let head = Head::sample(&mut rng, Cohort::Sah, plan.hydrocephalus);
            let mut fine = head.render(&grid);
            let (drafts, aneurysm, pattern) = sah::paint(&mut rng, &head, &mut fine, &plan);
            meta_sah = Some((plan, aneurysm, pattern));
            (head, fine, drafts)
        }
    };
    let scanner = Scanner::sample(&mut rng, cfg.cohort, &head);
    let lesion_hu: Vec<f32> = std::iter::once(0.0)
        .chain(drafts.iter().map(|d| d.hu))
        .collect();
    let coarse = downsample(&fine, &head.hu, &lesion_hu);
    let image = scanner.apply(&mut rng, &grid, &head, &coarse.hu);
    let label = coarse.blood_sum.mapv(|b| u8::from(coarse.is_blood(b)));

    // Volumes: the label's voxels per owning lesion, and the blood drawn per lesion.
    let voxel_ml = grid.spacing.iter().product::<f64>() / 1000.0;
    let fine_ml = grid.fine_spacing().iter().product::<f64>() / 1000.0;
    let mut label_voxels = vec![0usize; drafts.len() + 1];
    Zip::from(&label).and(&coarse.lesion).for_each(|&l, &k| {
        if l == 1 {
            label_voxels[k as usize] += 1;
        }
    });
    let mut blood = vec![0u64; drafts.len() + 1];
    for (&b, &k) in fine.blood.iter().zip(&fine.lesion) {
        blood[k as usize] += b as u64;
    }
    let lesions: Vec<Lesion> = drafts
        .iter()
        .enumerate()
        .map(|(k, d)| Lesion {
            kind: d.kind,
            location: d.location.clone(),
            hu: (d.hu * 10.0).round() / 10.0,
            volume_ml: round4(label_voxels[k + 1] as f64 * voxel_ml),
            blood_ml: round4(blood[k + 1] as f64 / 255.0 * fine_ml),
        })
        .collect();
    let n_label = label.iter().filter(|&&l| l == 1).count();
    let blood_volume_ml = round4(n_label as f64 * voxel_ml);

    let id = format!("{}_{:03}", cfg.cohort, index);
    let meta = CaseMeta {
        case: id.clone(),
        cohort: cfg.cohort,
        index,
        blood_volume_ml,
        label_voxels: n_label,
        stratum: strata().label_of(blood_volume_ml),
        blood_free: n_label == 0,
        lesions,
        aneurysm: meta_sah.as_ref().map(|m| Aneurysm {
            position_mm: m.1.position_mm.map(round4),
            sac_radius_mm: round4(m.1.sac_radius_mm),
            ..m.1.clone()
        }),
        pattern: meta_sah.as_ref().map(|m| m.2),
        target_ml: meta_sah.as_ref().map(|m| round4(m.0.target_ml)),
        ivh: drafts.iter().any(|d| d.kind == super::LesionKind::Ivh),
        hydrocephalus: head.hydrocephalus,
        anatomy: AnatomyMeta {
            brain_semi_axes_mm: [head.semi.x, head.semi.y, head.semi.z].map(round4),
            csf_rim_mm: round4(head.csf_rim_mm),
            skull_mm: round4(head.skull_mm),
            sulci: head
                .compartments
                .iter()
                .filter(|c| c.kind == super::anatomy::CompKind::Sulcus)
                .count(),
            sulcal_width_mm: round4(head.sulcal_width_mm),
            ventricle_scale: round4(head.ventricle_scale),
            calcifications: head
                .calcifications
                .iter()
                .map(|c| format!("{} ({:.0} HU)", c.name, c.hu))
                .collect(),
        },
        scanner: {
            let m = scanner.meta();
            ScannerMeta {
                blur_sigma_mm: round4(m.blur_sigma_mm),
                noise_sd_hu: round4(m.noise_sd_hu),
                hu_offset: round4(m.hu_offset),
                rim_hu: round4(m.rim_hu),
                ..m
            }
        },
    };
    // The header carries the affine, so whoever writes these volumes keeps the geometry.
    let header = Box::new(grid.nifti_header(&format!(
        "ranksweep phantom {} seed {} case {}",
        cfg.cohort, cfg.seed, index
    )));
    PhantomCase {
        id,
        image: Volume {
            data: image,
            spacing: grid.spacing,
            header: Some(header.clone()),
        },
        label: Volume {
            data: label,
            spacing: grid.spacing,
            header: Some(header),
        },
        meta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_volumes_add_up_to_the_label() {
        for cohort in [Cohort::Tbi, Cohort::Sah] {
            let cfg = PhantomConfig::new(cohort, 4, 5);
            for i in 0..4 {
                let c = synthesize_case(&cfg, i).unwrap();
                let n = c.label.data.iter().filter(|&&v| v == 1).count();
                assert_eq!(c.meta.label_voxels, n);
                assert!((c.meta.blood_volume_ml - n as f64 * c.label.voxel_ml()).abs() < 1e-4);
                let per_lesion: f64 = c.meta.lesions.iter().map(|l| l.volume_ml).sum();
                assert!(
                    (per_lesion - c.meta.blood_volume_ml).abs() < 1e-3,
                    "{}: {per_lesion} vs {}",
                    c.id,
                    c.meta.blood_volume_ml
                );
                assert!(c.label.data.iter().all(|&v| v <= 1));
                assert_eq!(c.image.shape(), cfg.shape);
            }
        }
    }
}
