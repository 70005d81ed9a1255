//! Blood: the traumatic lesions of the TBI cohort ([`tbi`]) and the aneurysmal haemorrhage of
//! the SAH cohort ([`sah`]), drawn into the fine grid's blood channels.
//!
//! Shared here: [`Draft`] (what the metadata will say about a lesion) and the spread engine
//! used for blood that fills CSF spaces (aneurysmal SAH, traumatic SAH, IVH). Every CSF sample
//! of an allowed compartment gets a score (e.g. `gain · exp(−d/λ)` from the bleeding site);
//! blood fills the highest scores first. The number filled is found by binary search so that
//! the *labelled* volume (voxels whose blood fraction reaches 0.5 after averaging down) lands
//! on a target: the volume users see is the label's, partial volume included.

pub(crate) mod sah;
pub(crate) mod tbi;

use super::anatomy::{Compartment, Head};
use super::meta::LesionKind;
use super::raster::{Fine, is_blood};

/// A lesion as drawn; volumes are measured after averaging down.
#[derive(Clone, Debug)]
pub(crate) struct Draft {
    pub kind: LesionKind,
    pub location: String,
    /// HU of pure blood in this lesion.
    pub hu: f32,
}

/// A fine CSF sample blood may fill.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    pub fine: usize,
    pub coarse: usize,
    pub comp: u8,
    pub score: f32,
    /// Blood density, 1..=255.
    pub density: u8,
}

/// Collects the compartment samples `rule` accepts: `rule(compartment, position, outside_mm)`
/// gives the score and density, or `None` to leave the sample out. `outside_mm` is 0 for CSF
/// samples and the distance beyond the compartment's wall for brain in its zone (see
/// [`Head::mark_zones`]). Sorted best first (ties by position).
pub(crate) fn candidates(
    head: &Head,
    fine: &Fine,
    rule: impl Fn(&Compartment, super::shapes::V3, f64) -> Option<(f32, u8)>,
) -> Vec<Candidate> {
    let mut by_id: [Option<&Compartment>; 256] = [None; 256];
    for c in &head.compartments {
        by_id[c.id as usize] = Some(c);
    }
    let g = fine.grid;
    let zones = !fine.zone.is_empty();
    let mut out: Vec<Candidate> = (0..fine.comp.len())
        .filter_map(|i| {
            // Earlier lesions keep their blood.
            if fine.blood[i] != 0 {
                return None;
            }
            let (k, c, outside) = match fine.comp[i] {
                0 if zones && fine.zone[i] != 0 => {
                    let k = fine.zone[i];
                    let c = by_id[k as usize]?;
                    (k, c, head.outside_depth(c, g.fine_pos_of(i)))
                }
                0 => return None,
                k => (k, by_id[k as usize]?, 0.0),
            };
            let (score, density) = rule(c, g.fine_pos_of(i), outside)?;
            (score > 0.0 && density > 0).then_some(Candidate {
                fine: i,
                coarse: g.coarse_of_fine(i),
                comp: k,
                score,
                density,
            })
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.fine.cmp(&b.fine)));
    out
}

/// Labelled voxels if the first `k` candidates bleed, counting their blood alone.
fn labelled(
    fine: &Fine,
    cands: &[Candidate],
    k: usize,
    acc: &mut [u32],
    touched: &mut Vec<usize>,
) -> usize {
    touched.clear();
    for c in &cands[..k] {
        if acc[c.coarse] == 0 {
            touched.push(c.coarse);
        }
        acc[c.coarse] += c.density as u32;
    }
    let n_sub = fine.grid.sub_samples();
    let mut n = 0;
    for &j in touched.iter() {
        if is_blood(acc[j], n_sub) {
            n += 1;
        }
        acc[j] = 0;
    }
    n
}

/// Labelled voxels if the first `k` candidates bleed, counting their blood alone.
pub(crate) fn labelled_count(fine: &Fine, cands: &[Candidate], k: usize) -> usize {
    labelled(
        fine,
        cands,
        k,
        &mut vec![0u32; fine.grid.coarse_len()],
        &mut Vec::new(),
    )
}

/// How many of the best candidates to fill so that they label about `target_voxels` voxels
/// (the labelled count grows with the number filled, so a binary search finds it).
pub(crate) fn fill_count(fine: &Fine, cands: &[Candidate], target_voxels: f64) -> usize {
    let mut acc = vec![0u32; fine.grid.coarse_len()];
    let mut touched = Vec::new();
    let mut eval = |k: usize| labelled(fine, cands, k, &mut acc, &mut touched) as f64;
    if eval(cands.len()) <= target_voxels {
        return cands.len();
    }
    // Smallest k with labelled(k) >= target.
    let (mut lo, mut hi) = (0usize, cands.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if eval(mid) >= target_voxels {
            hi = mid
        } else {
            lo = mid + 1
        }
    }
    if lo > 0 && (target_voxels - eval(lo - 1)) < (eval(lo) - target_voxels) {
        lo - 1
    } else {
        lo
    }
}

/// Fills the first `k` candidates; `lesion_of(compartment id)` names the owning lesion.
pub(crate) fn fill(fine: &mut Fine, cands: &[Candidate], k: usize, lesion_of: impl Fn(u8) -> u8) {
    for c in &cands[..k] {
        fine.bleed(c.fine, c.density, lesion_of(c.comp));
    }
}

#[cfg(test)]
mod tests {
    use super::super::Cohort;
    use super::super::anatomy::CompKind;
    use super::super::raster::{Grid, downsample};
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn spread_hits_the_labelled_target() {
        let head = Head::sample(&mut ChaCha8Rng::seed_from_u64(1), Cohort::Sah, false);
        let grid = Grid::new([24, 64, 64], [6.0, 3.4, 3.4]);
        let mut fine = head.render(&grid);
        let site = head.at(0.0, 22.0, -12.0);
        let cands = candidates(&head, &fine, |c, p, _| match c.kind {
            CompKind::Ventricle => None,
            _ => Some(((-(p - site).norm() / 40.0).exp() as f32, 230)),
        });
        assert!(!cands.is_empty());
        assert!(cands.windows(2).all(|w| w[0].score >= w[1].score));
        let voxel_ml = grid.spacing.iter().product::<f64>() / 1000.0;
        let target = 20.0 / voxel_ml;
        let k = fill_count(&fine, &cands, target);
        fill(&mut fine, &cands, k, |_| 1);
        let coarse = downsample(&fine, &head.hu, &[0.0, 70.0]);
        let n = coarse
            .blood_sum
            .iter()
            .filter(|&&b| coarse.is_blood(b))
            .count() as f64;
        // The step from one sample to the next changes the count by at most a voxel or two.
        assert!(
            (n - target).abs() <= 2.0,
            "labelled {n} voxels, wanted {target}"
        );
        // The filled blood starts at the site: the nearest candidate is filled.
        assert!(fine.blood[cands[0].fine] > 0);
    }
}
