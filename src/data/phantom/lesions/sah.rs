//! Aneurysmal subarachnoid haemorrhage (the fine-tuning cohort): blood spreads from an aneurysm
//! site (ACom, MCA, PCom, basilar tip) through the basal cisterns, the fissures, the sulci and,
//! for the largest bleeds, the convexity, each CSF sample scored `gain · exp(−d/λ)` with
//! λ 25–60 mm (see the spread engine in the parent module). Optional IVH settles in the
//! occipital horns.
//!
//! Volumes are balanced over the hemorrhage-volume strata: cases come in blocks of four, each
//! block a permutation of the four strata drawn from (seed, block), so any block covers them all.
//! The target is log-uniform inside the stratum (2–80 mL overall) and the spread is sized on
//! the label, so the stratum holds after partial volume.
//!
//! Thick clots fill the compartments (blood fraction 0.6–1) and distend the cisterns and
//! fissures by a few mm. Thin ones (only planned in the two lowest strata) coat the walls of
//! the cisterns, fissures and sulci with a layer under 1.5 mm, so after averaging most of it
//! sits at 35–55 HU, near grey matter, and only partly reaches the label's 0.5 fraction: the
//! hard part of this cohort. A thin coat that cannot reach its label volume without drawing
//! more than ten times as much blood is drawn thick instead (the metadata says which).
//! IVH (40%) takes its own share of the volume and layers in the occipital horns.

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};

use super::super::anatomy::{CompKind, Head, class};
use super::super::meta::{Aneurysm, AneurysmSite, LesionKind, SahPattern};
use super::super::raster::Fine;
use super::super::shapes::{Ellipsoid, V3, v3};
use super::super::{STRATA_ML, Side, schedule_rng};
use super::{Candidate, Draft, candidates, fill, fill_count, labelled_count};

/// Target volume range (mL) per stratum, kept off the edges so that the label's stratum is
/// the planned one.
const STRATUM_TARGETS: [(f64, f64); 4] = [(2.0, 4.5), (5.6, 13.5), (16.5, 27.0), (33.0, 80.0)];
/// Chance of a thick clot per stratum: small bleeds are mostly thin.
const THICK_CHANCE: [f64; 4] = [0.4, 0.7, 1.0, 1.0];
/// Most blood a thin bleed may draw per mL of label.
const THIN_EXCESS: f64 = 10.0;
/// Cases per balanced block (one per stratum).
const BLOCK: usize = STRATA_ML.len() + 1;

/// What an SAH case will hold, drawn before the head is drawn.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SahPlan {
    pub stratum: usize,
    pub target_ml: f64,
    pub site: AneurysmSite,
    pub side: Option<Side>,
    pub pattern: SahPattern,
    pub ivh: bool,
    pub hydrocephalus: bool,
    pub lambda_mm: f64,
}

fn uni<R: Rng>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

pub(crate) fn plan<R: Rng>(rng: &mut R, seed: u64, index: usize) -> SahPlan {
    let mut order: [usize; BLOCK] = std::array::from_fn(|i| i);
    order.shuffle(&mut schedule_rng(seed, 1 + (index / BLOCK) as u64));
    let stratum = order[index % BLOCK];
    let (lo, hi) = STRATUM_TARGETS[stratum];
    let target_ml = (lo.ln() + (hi.ln() - lo.ln()) * rng.random::<f64>()).exp();
    let site = [
        (AneurysmSite::Acom, 35),
        (AneurysmSite::Mca, 30),
        (AneurysmSite::Pcom, 25),
        (AneurysmSite::Basilar, 10),
    ]
    .choose_weighted(rng, |x| x.1)
    .expect("positive weights")
    .0;
    let side_draw = if rng.random_bool(0.5) {
        Side::Right
    } else {
        Side::Left
    };
    let side = matches!(site, AneurysmSite::Mca | AneurysmSite::Pcom).then_some(side_draw);
    let pattern = if rng.random_bool(THICK_CHANCE[stratum]) {
        SahPattern::Thick
    } else {
        SahPattern::Thin
    };
    SahPlan {
        stratum,
        target_ml,
        site,
        side,
        pattern,
        ivh: rng.random_bool(0.4),
        hydrocephalus: rng.random_bool(0.4),
        lambda_mm: uni(rng, 25.0, 60.0),
    }
}

/// The aneurysm's position on this brain.
fn site_position(head: &Head, site: AneurysmSite, side: Option<Side>) -> V3 {
    let s = side.map_or(0.0, |s| s.sign());
    match site {
        AneurysmSite::Acom => head.at(0.0, 22.0, -12.0),
        AneurysmSite::Mca => head.at(s * 38.0, 7.0, -10.0),
        AneurysmSite::Pcom => head.at(s * 12.0, 3.0, -16.0),
        AneurysmSite::Basilar => head.at(0.0, -2.0, -17.0),
    }
}

/// Lesion groups, in id order: each cistern and fissure, the sulci, the convexity, the ventricles.
fn group_of(head: &Head, comp: u8) -> Option<(LesionKind, String)> {
    let c = head.compartment(comp)?;
    Some(match c.kind {
        CompKind::Cistern => (LesionKind::CisternalSah, c.name.clone()),
        CompKind::Fissure => (LesionKind::FissuralSah, c.name.clone()),
        CompKind::Sulcus => (LesionKind::SulcalSah, "sulci".into()),
        CompKind::Convexity => (LesionKind::ConvexitySah, "convexity".into()),
        CompKind::Ventricle => (LesionKind::Ivh, "ventricles".into()),
    })
}

fn labelled_all(fine: &Fine, cands: &[Candidate]) -> f64 {
    labelled_count(fine, cands, cands.len()) as f64
}

/// Draws the haemorrhage. Returns the lesion drafts (id = index + 1), the aneurysm and the
/// pattern drawn (a thin plan too large for a thin coat is drawn thick).
pub(crate) fn paint<R: Rng>(
    rng: &mut R,
    head: &Head,
    fine: &mut Fine,
    plan: &SahPlan,
) -> (Vec<Draft>, Aneurysm, SahPattern) {
    let site = site_position(head, plan.site, plan.side);
    // The sac: flowing blood (~45 HU), not labelled.
    let sac_mm = uni(rng, 2.0, 4.5);
    let sac = Ellipsoid::aligned(site, v3(sac_mm, sac_mm, sac_mm));
    fine.paint(&sac, class::is_soft_intracranial, class::VESSEL, 0);

    let lambda = plan.lambda_mm;
    let hu = uni(rng, 60.0, 80.0) as f32;
    // Per-compartment gains and densities (index = compartment id).
    let gains: Vec<f64> = head
        .compartments
        .iter()
        .map(|c| match c.kind {
            CompKind::Cistern => uni(rng, 0.7, 1.3),
            CompKind::Fissure => uni(rng, 0.6, 1.2),
            CompKind::Sulcus => uni(rng, 0.1, 0.9),
            CompKind::Convexity => uni(rng, 0.1, 0.25),
            CompKind::Ventricle => uni(rng, 0.3, 0.9),
        })
        .collect();
    let mut gain = [0.0f64; 256];
    for (c, g) in head.compartments.iter().zip(gains) {
        gain[c.id as usize] = g;
    }
    let layer_mm = uni(rng, 0.8, 1.5);
    let voxel_ml = fine.grid.spacing.iter().product::<f64>() / 1000.0;
    let fine_ml = fine.grid.fine_spacing().iter().product::<f64>() / 1000.0;
    let mut target = plan.target_ml / voxel_ml;
    let mut groups: Vec<(LesionKind, String)> = Vec::new();

    // IVH first, as its own share of the volume, so that every planned IVH is drawn. In a
    // supine patient it layers from the occipital horns up: the score depends on height only.
    if plan.ivh {
        let ivh_floor = head.at(0.0, -45.0, 0.0).y;
        let density = rng.random_range(180..=255u8);
        let cands = candidates(head, fine, |c, p, _| {
            let g = gain[c.id as usize];
            (c.kind == CompKind::Ventricle)
                .then(|| ((g * (-(p.y - ivh_floor) / 20.0).exp()) as f32, density))
        });
        let n = fill_count(fine, &cands, target * uni(rng, 0.1, 0.35));
        fill(fine, &cands, n, |_| 1);
        groups.push((LesionKind::Ivh, "ventricles".into()));
        target = (target - labelled_count(fine, &cands, n) as f64).max(1.0);
    }

    let swell_mm = uni(rng, 2.0, 6.0);
    let mut pattern = plan.pattern;
    let (cands, n) = loop {
        let thick = pattern == SahPattern::Thick;
        if thick {
            // A thick clot distends its cisterns and fissures, pushing the brain aside.
            head.mark_zones(fine, swell_mm);
        } else {
            fine.zone = Vec::new();
        }
        let mut density = [0u8; 256];
        for c in &head.compartments {
            density[c.id as usize] = match pattern {
                SahPattern::Thin => rng.random_range(180..=255),
                SahPattern::Thick => rng.random_range(153..=255),
            };
        }
        let cands = candidates(head, fine, |c, p, outside| {
            match c.kind {
                CompKind::Ventricle => return None,
                // A thin coat stays in the basal cisterns, fissures and sulci.
                CompKind::Convexity if !thick => return None,
                _ if !thick && head.wall_depth(c, p) >= layer_mm => return None,
                _ => {}
            }
            // The clot fills the CSF first, then pushes outward.
            let score =
                gain[c.id as usize] * (-(p - site).norm() / lambda).exp() * (-outside / 1.5).exp();
            Some((score as f32, density[c.id as usize]))
        });
        let n = fill_count(fine, &cands, target);
        // A thin coat that cannot hold the planned label, or only by spreading far more blood
        // than it labels, is a thick bleed.
        if !thick {
            let drawn_ml = cands[..n]
                .iter()
                .map(|c| c.density as f64 / 255.0)
                .sum::<f64>()
                * fine_ml;
            let short = n == cands.len() && labelled_all(fine, &cands) < 0.9 * target;
            if short || drawn_ml > THIN_EXCESS * target * voxel_ml {
                pattern = SahPattern::Thick;
                continue;
            }
        }
        break (cands, n);
    };

    // Lesion ids by group, in a fixed order (first appearance along the fill order).
    let mut id_of = [0u8; 256];
    for c in &cands[..n] {
        if id_of[c.comp as usize] != 0 {
            continue;
        }
        let g = group_of(head, c.comp).expect("candidates come from compartments");
        let pos = groups.iter().position(|x| *x == g).unwrap_or_else(|| {
            groups.push(g);
            groups.len() - 1
        });
        id_of[c.comp as usize] = (pos + 1) as u8;
    }
    fill(fine, &cands, n, |k| id_of[k as usize]);
    let drafts = groups
        .into_iter()
        .map(|(kind, location)| Draft { kind, location, hu })
        .collect();
    let aneurysm = Aneurysm {
        site: plan.site,
        side: plan.side,
        position_mm: [site.x, site.y, site.z],
        sac_radius_mm: sac_mm,
    };
    (drafts, aneurysm, pattern)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn every_block_of_four_covers_the_strata() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let plans: Vec<SahPlan> = (0..40).map(|i| plan(&mut rng, 11, i)).collect();
        for block in plans.chunks(BLOCK) {
            let mut s: Vec<usize> = block.iter().map(|p| p.stratum).collect();
            s.sort();
            assert_eq!(s, vec![0, 1, 2, 3]);
        }
        for p in &plans {
            let (lo, hi) = STRATUM_TARGETS[p.stratum];
            assert!(p.target_ml >= lo && p.target_ml <= hi);
            assert!((25.0..=60.0).contains(&p.lambda_mm));
            assert_eq!(
                p.side.is_some(),
                matches!(p.site, AneurysmSite::Mca | AneurysmSite::Pcom)
            );
        }
        // Both patterns and the optional findings occur.
        assert!(plans.iter().any(|p| p.pattern == SahPattern::Thin));
        assert!(plans.iter().any(|p| p.ivh) && plans.iter().any(|p| !p.ivh));
        assert!(plans.iter().any(|p| p.hydrocephalus) && plans.iter().any(|p| !p.hydrocephalus));
        // Another seed permutes differently.
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let other: Vec<usize> = (0..40).map(|i| plan(&mut rng, 12, i).stratum).collect();
        assert_ne!(other, plans.iter().map(|p| p.stratum).collect::<Vec<_>>());
    }
}
