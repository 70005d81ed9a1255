//! Traumatic lesions (the pre-training cohort): subdural crescents, epidural lenses, contusions
//! with an oedema halo, traumatic SAH in the sulci and intraventricular blood. Peripheral,
//! compact and mostly 60–80 HU: what a network trained here learns to call blood.
//!
//! A fixed share of cases is blood-free: case `i` is blood-free when `(i + offset) % 7 == 0`
//! (1 in 7 ≈ 14%), the offset drawn from the cohort seed, so any 7 consecutive cases hold one
//! and a case's content does not depend on how many cases were asked for.

use rand::Rng;
use rand::seq::IndexedRandom;

use super::super::anatomy::{CompKind, Head, class, random_dir};
use super::super::meta::LesionKind;
use super::super::raster::Fine;
use super::super::shapes::{Aabb, Ellipsoid, Shape, V3, v3};
use super::super::{Side, schedule_rng};
use super::{Draft, candidates, fill, fill_count};

/// What a TBI case will hold, drawn before the head is drawn.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TbiPlan {
    pub blood_free: bool,
    /// Lesion kinds with their intended volumes (mL).
    pub lesions: Vec<(LesionKind, f64)>,
}

/// Period of the blood-free schedule.
const BLOOD_FREE_PERIOD: usize = 7;

fn log_uniform<R: Rng>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    (lo.ln() + (hi.ln() - lo.ln()) * rng.random::<f64>()).exp()
}

fn uni<R: Rng>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

pub(crate) fn plan<R: Rng>(rng: &mut R, seed: u64, index: usize) -> TbiPlan {
    let offset = schedule_rng(seed, 0).random_range(0..BLOOD_FREE_PERIOD);
    let blood_free = (index + offset).is_multiple_of(BLOOD_FREE_PERIOD);
    let n: usize = *[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3]
        .choose(rng)
        .expect("non-empty");
    let mut lesions = Vec::new();
    for k in 0..n {
        // The first lesion is always a compact one, so every bleeding case has a label.
        let kind = if k == 0 {
            *[
                LesionKind::Subdural,
                LesionKind::Subdural,
                LesionKind::Epidural,
                LesionKind::Contusion,
                LesionKind::Contusion,
            ]
            .choose(rng)
            .expect("non-empty")
        } else {
            let w = [
                (LesionKind::Subdural, 25),
                (LesionKind::Epidural, 10),
                (LesionKind::Contusion, 30),
                (LesionKind::TraumaticSah, 25),
                (LesionKind::Ivh, 10),
            ];
            w.choose_weighted(rng, |x| x.1).expect("positive weights").0
        };
        let ml = match kind {
            LesionKind::Subdural => log_uniform(rng, 5.0, 150.0),
            LesionKind::Epidural => log_uniform(rng, 8.0, 80.0),
            LesionKind::Contusion => log_uniform(rng, 1.5, 40.0),
            LesionKind::TraumaticSah => log_uniform(rng, 1.0, 12.0),
            _ => log_uniform(rng, 1.0, 15.0),
        };
        lesions.push((kind, ml));
    }
    if blood_free {
        lesions.clear();
    }
    TbiPlan {
        blood_free,
        lesions,
    }
}

/// Blood HU: mostly 60–80, some hyperacute or anaemic clots lower; epidurals ~65.
fn blood_hu<R: Rng>(rng: &mut R, kind: LesionKind) -> f32 {
    let hu = match kind {
        LesionKind::Epidural => uni(rng, 60.0, 70.0),
        _ if rng.random_bool(0.15) => uni(rng, 50.0, 60.0),
        _ => uni(rng, 60.0, 80.0),
    };
    hu as f32
}

/// A direction on the convexity meeting `ok`.
fn direction<R: Rng>(rng: &mut R, ok: impl Fn(V3) -> bool) -> V3 {
    for _ in 0..10_000 {
        let u = random_dir(rng);
        if ok(u) {
            return u;
        }
    }
    v3(1.0, 0.0, 0.3).unit()
}

fn lobe(u: V3) -> String {
    let side = if u.x >= 0.0 { Side::Right } else { Side::Left };
    let lobe = if u.y > 0.45 {
        "frontal"
    } else if u.y < -0.55 {
        "occipital"
    } else if u.z < 0.05 {
        "temporal"
    } else {
        "parietal"
    };
    format!("{} {}", side.name(), lobe)
}

/// Extra-axial blood under the inner table, over a cap of half-angle `alpha` around `u0`;
/// thickness `t_max · profile(ξ)` with `ξ = (1 − cos θ) / (1 − cos α)`.
fn extra_axial(
    head: &Head,
    fine: &mut Fine,
    u0: V3,
    alpha: f64,
    t_max: f64,
    lens: bool,
    lesion: u8,
) {
    let r = head.brain_radius(u0) + head.csf_rim_mm;
    let centre = u0 * (r - t_max / 2.0);
    let reach = r * 2.0 * (alpha / 2.0).sin() + t_max + 2.0;
    let bbox = Aabb::around(centre, v3(reach, reach, reach));
    let cos_a = alpha.cos();
    let g = fine.grid;
    g.for_each_fine(bbox, |i, p| {
        let c = fine.class[i];
        if !(class::is_soft_intracranial(c)
            || matches!(c, class::DURA | class::SINUS | class::VESSEL))
        {
            return;
        }
        let cos_t = p.unit().dot(u0);
        if cos_t <= cos_a {
            return;
        }
        let xi = (1.0 - cos_t) / (1.0 - cos_a);
        let t = if lens {
            t_max * (1.0 - xi).sqrt()
        } else {
            t_max * (1.0 - xi)
        };
        let d = head.under_inner_table(p);
        if d >= 0.0 && d < t {
            fine.bleed(i, 255, lesion);
        }
    });
}

/// Cap angle and thickness giving about `ml` for a cap of radius `r`: `V ≈ r²·2π(1−cos α)·t·I`
/// with `I = ∫profile` (1/2 for a crescent, 2/3 for a lens).
fn cap_for_volume(ml: f64, r: f64, alpha0: f64, t_range: (f64, f64), integral: f64) -> (f64, f64) {
    let v = ml * 1000.0;
    let area = |alpha: f64| r * r * 2.0 * std::f64::consts::PI * (1.0 - alpha.cos()) * integral;
    let t = v / area(alpha0);
    let t_clamped = t.clamp(t_range.0, t_range.1);
    if t == t_clamped {
        return (alpha0, t);
    }
    let one_minus_cos = (v / (r * r * 2.0 * std::f64::consts::PI * integral * t_clamped))
        .min(1.0 - 80f64.to_radians().cos());
    ((1.0 - one_minus_cos).acos(), t_clamped)
}

fn contusion<R: Rng>(rng: &mut R, head: &Head, fine: &mut Fine, ml: f64, lesion: u8) -> String {
    let zone = rng.random::<f64>();
    let side = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
    let u0 = if zone < 0.45 {
        (v3(side * 0.3, 0.85, -0.3) + random_dir(rng) * 0.2).unit()
    } else if zone < 0.85 {
        (v3(side * 0.75, 0.35, -0.45) + random_dir(rng) * 0.2).unit()
    } else {
        direction(rng, |u| u.z > -0.2 && u.x.abs() > 0.3)
    };
    let r = (3.0 * ml * 1000.0 / (4.0 * std::f64::consts::PI)).cbrt();
    let depth = head.csf_rim_mm + r * 0.9 + uni(rng, 2.0, 6.0);
    let c = head.point_under_table(u0, depth);
    let (a, b) = (uni(rng, 0.75, 1.3), uni(rng, 0.75, 1.3));
    let semi = [r * a, r * b, r / (a * b)];
    let e = Ellipsoid::oriented(c, random_dir(rng), random_dir(rng), semi);
    let bumps: Vec<(V3, f64)> = (0..3)
        .map(|_| (random_dir(rng), uni(rng, -0.15, 0.15)))
        .collect();
    let halo = uni(rng, 1.4, 1.9);
    let edge = |p: V3| {
        1.0 + bumps
            .iter()
            .map(|(d, a)| a * (p - c).unit().dot(*d))
            .sum::<f64>()
    };
    let g = fine.grid;
    let bbox = e.bbox().pad(r * halo);
    g.for_each_fine(bbox, |i, p| {
        let rho = e.rho2(p).sqrt();
        let k = edge(p);
        if rho < halo * k && class::is_parenchyma(fine.class[i]) {
            fine.class[i] = class::OEDEMA;
        }
        if rho < k && class::is_soft_intracranial(fine.class[i]) {
            // A dense core and a looser rim of blood mixed with brain.
            fine.bleed(i, if rho < 0.7 * k { 255 } else { 200 }, lesion);
        }
    });
    lobe(u0)
}

/// Draws the plan's lesions; returns one draft per lesion, in lesion-id order (id = index + 1).
pub(crate) fn paint<R: Rng>(
    rng: &mut R,
    head: &Head,
    fine: &mut Fine,
    plan: &TbiPlan,
) -> Vec<Draft> {
    let voxel_ml = fine.grid.spacing.iter().product::<f64>() / 1000.0;
    let mut drafts = Vec::new();
    for (k, &(kind, ml)) in plan.lesions.iter().enumerate() {
        let id = (k + 1) as u8;
        let hu = blood_hu(rng, kind);
        let location = match kind {
            LesionKind::Subdural | LesionKind::Epidural => {
                let lens = kind == LesionKind::Epidural;
                let u0 = if lens {
                    direction(rng, |u| u.x.abs() > 0.6 && (-0.3..0.5).contains(&u.z))
                } else {
                    direction(rng, |u| u.x.abs() > 0.45 && (-0.25..0.75).contains(&u.z))
                };
                let r = head.brain_radius(u0) + head.csf_rim_mm;
                let (alpha, t) = if lens {
                    cap_for_volume(
                        ml,
                        r,
                        uni(rng, 18.0, 32.0).to_radians(),
                        (12.0, 35.0),
                        2.0 / 3.0,
                    )
                } else {
                    cap_for_volume(ml, r, uni(rng, 35.0, 65.0).to_radians(), (5.0, 25.0), 0.5)
                };
                extra_axial(head, fine, u0, alpha, t, lens, id);
                lobe(u0)
            }
            LesionKind::Contusion => contusion(rng, head, fine, ml, id),
            LesionKind::TraumaticSah => {
                let u0 = direction(rng, |u| u.z > -0.2 && u.x.abs() > 0.2);
                let site = head.point_under_table(u0, head.csf_rim_mm + 4.0);
                let lambda = uni(rng, 8.0, 16.0);
                let gains: Vec<f64> = (0..256).map(|_| uni(rng, 0.5, 1.2)).collect();
                let density = rng.random_range(190..=255u8);
                let cands = candidates(head, fine, |c, p, _| {
                    let g = match c.kind {
                        CompKind::Sulcus => gains[c.id as usize],
                        CompKind::Convexity => 0.35,
                        _ => return None,
                    };
                    Some(((g * (-(p - site).norm() / lambda).exp()) as f32, density))
                });
                let n = fill_count(fine, &cands, ml / voxel_ml);
                fill(fine, &cands, n, |_| id);
                lobe(u0)
            }
            LesionKind::Ivh => {
                // Supine patients: blood settles in the occipital horns first (a fluid level).
                let density = rng.random_range(200..=255u8);
                let cands = candidates(head, fine, |c, p, _| {
                    (c.kind == CompKind::Ventricle)
                        .then(|| ((-(p.y + 80.0) / 15.0).exp() as f32, density))
                });
                let n = fill_count(fine, &cands, ml / voxel_ml);
                fill(fine, &cands, n, |_| id);
                "ventricles".to_string()
            }
            _ => unreachable!("plan() only draws traumatic kinds"),
        };
        drafts.push(Draft { kind, location, hu });
    }
    drafts
}

#[cfg(test)]
mod tests {
    use super::super::super::Cohort;
    use super::super::super::raster::{Grid, downsample};
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn blood_free_schedule_is_one_in_seven() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let free: Vec<bool> = (0..70).map(|i| plan(&mut rng, 42, i).blood_free).collect();
        assert_eq!(free.iter().filter(|&&f| f).count(), 10);
        for w in free.windows(7) {
            assert_eq!(w.iter().filter(|&&f| f).count(), 1);
        }
        // Blood-free cases have no lesions; the others start with a compact one.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for i in 0..30 {
            let p = plan(&mut rng, 42, i);
            assert_eq!(p.blood_free, p.lesions.is_empty());
            if let Some(&(k, ml)) = p.lesions.first() {
                assert!(matches!(
                    k,
                    LesionKind::Subdural | LesionKind::Epidural | LesionKind::Contusion
                ));
                assert!((1.0..=150.0).contains(&ml));
            }
        }
    }

    #[test]
    fn cap_volume_formula_matches_the_drawn_volume() {
        let head = Head::sample(&mut ChaCha8Rng::seed_from_u64(5), Cohort::Tbi, false);
        let grid = Grid::new([24, 64, 64], [6.0, 3.4, 3.4]);
        for (lens, ml) in [(false, 40.0), (true, 25.0)] {
            let mut fine = head.render(&grid);
            let u0 = v3(0.8, 0.2, 0.3).unit();
            let r = head.brain_radius(u0) + head.csf_rim_mm;
            let (alpha, t) = if lens {
                cap_for_volume(ml, r, 25f64.to_radians(), (12.0, 35.0), 2.0 / 3.0)
            } else {
                cap_for_volume(ml, r, 50f64.to_radians(), (5.0, 25.0), 0.5)
            };
            extra_axial(&head, &mut fine, u0, alpha, t, lens, 1);
            let f = grid.fine_spacing();
            let drawn = fine.blood.iter().filter(|&&b| b > 0).count() as f64
                * f.iter().product::<f64>()
                / 1000.0;
            assert!(
                (drawn / ml - 1.0).abs() < 0.3,
                "lens={lens}: drew {drawn} mL for {ml}"
            );
            // The label (fraction ≥ 0.5) is of the same order.
            let c = downsample(&fine, &head.hu, &[0.0, 70.0]);
            let labelled = c.blood_sum.iter().filter(|&&b| c.is_blood(b)).count() as f64
                * grid.spacing.iter().product::<f64>()
                / 1000.0;
            assert!(
                labelled > 0.5 * ml && labelled < 1.5 * ml,
                "lens={lens}: label {labelled} mL for {ml}"
            );
        }
    }
}
