//! The head: scalp, skull, extra-axial CSF, cortex and white matter, sulci, fissures, basal
//! cisterns, ventricles, deep grey matter, skull base, dura (falx, tentorium, sinus), vessels
//! and calcifications, drawn on the fine grid as tissue classes.
//!
//! Design: the brain surface is a perturbed ellipsoid; everything layered around it (CSF rim,
//! skull, scalp) uses the radial distance to that surface, which is cheap and smooth. Inner
//! structures are positioned on a reference brain ([`REF_BRAIN`]) and scaled to the case's
//! brain. Each CSF space that blood can fill is a [`Compartment`] whose id is written into the
//! fine grid, so the lesion modules can find its samples without knowing its geometry; for
//! thick clots, [`Head::mark_zones`] also marks the brain around cisterns and fissures that a
//! clot may push aside.
//! HU values live in a per-case table indexed by the class byte.

use rand::Rng;

use super::raster::{Fine, Grid};
use super::shapes::{Aabb, Ellipsoid, Plate, Shape, Shell, V3, v3};
use super::{Cohort, Side};

/// Tissue classes: indices into the case's HU table.
pub(crate) mod class {
    pub const AIR: u8 = 0;
    pub const SCALP: u8 = 1;
    /// Inner and outer tables of the skull, skull base.
    pub const BONE: u8 = 2;
    /// Diploë between the tables.
    pub const DIPLOE: u8 = 3;
    pub const CSF: u8 = 4;
    pub const GM: u8 = 5;
    pub const WM: u8 = 6;
    pub const DEEP_GM: u8 = 7;
    /// Falx and tentorium (dense dura).
    pub const DURA: u8 = 8;
    /// Dural venous sinus (flowing blood).
    pub const SINUS: u8 = 9;
    /// Arteries and the aneurysm sac (flowing blood, not labelled).
    pub const VESSEL: u8 = 10;
    /// Oedema around a contusion (not labelled).
    pub const OEDEMA: u8 = 11;
    /// First calcification; each one has its own class (its own HU).
    pub const CALC0: u8 = 16;
    pub const MAX_CALCS: usize = 32;

    pub fn is_parenchyma(c: u8) -> bool {
        matches!(c, GM | WM | DEEP_GM | OEDEMA)
    }

    pub fn is_soft_intracranial(c: u8) -> bool {
        is_parenchyma(c) || c == CSF
    }
}

/// Brain semi-axes (mm) the landmark positions in this file are written for.
pub(crate) const REF_BRAIN: V3 = v3(68.0, 82.0, 58.0);

/// Compartment ids written into [`Fine::comp`].
pub(crate) mod comp {
    pub const CONVEXITY: u8 = 1;
    pub const SUPRASELLAR: u8 = 2;
    pub const PERIMESENCEPHALIC: u8 = 3;
    pub const INTERPEDUNCULAR: u8 = 4;
    pub const QUADRIGEMINAL: u8 = 5;
    pub const PREPONTINE: u8 = 6;
    pub const INTERHEMISPHERIC: u8 = 7;
    pub const SYLVIAN_RIGHT: u8 = 8;
    pub const SYLVIAN_LEFT: u8 = 9;
    pub const SYLVIAN_RIGHT_LATERAL: u8 = 20;
    pub const SYLVIAN_LEFT_LATERAL: u8 = 21;
    /// Lateral ventricle parts: right 10..=13, left 14..=17; then the third and fourth.
    pub const VENTRICLE0: u8 = 10;
    pub const THIRD_VENTRICLE: u8 = 18;
    pub const FOURTH_VENTRICLE: u8 = 19;
    pub const SULCUS0: u8 = 32;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CompKind {
    Convexity,
    Cistern,
    Fissure,
    Sulcus,
    Ventricle,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum CompShape {
    /// The extra-axial CSF between the brain surface and the inner table.
    Rim,
    Ellipsoid(Ellipsoid),
    Plate(Plate),
    Shell(Shell),
    Midline(Midline),
}

/// A CSF space blood can fill.
#[derive(Clone, Debug)]
pub(crate) struct Compartment {
    pub id: u8,
    pub kind: CompKind,
    pub name: String,
    pub shape: CompShape,
}

/// The interhemispheric fissure: a slab around `x = 0` above a floor that rises over the corpus
/// callosum.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Midline {
    pub half_width: f64,
    /// The brain's scale against the reference brain (the floor is written in reference mm).
    pub sc: V3,
    /// Highest point (mm) the fissure can reach: above the vertex of the brain.
    pub top: f64,
}

impl Midline {
    /// Floor of the fissure (mm) at `y`: deep in front and behind, above the callosum between.
    pub fn floor(&self, y: f64) -> f64 {
        let yr = y / self.sc.y;
        let t = ((yr + 42.0) / 12.0).min((36.0 - yr) / 12.0).clamp(0.0, 1.0);
        (-20.0 + 40.0 * t) * self.sc.z
    }

    fn widened(&self, extra: f64) -> Midline {
        Midline {
            half_width: self.half_width + extra,
            ..*self
        }
    }
}

impl Shape for Midline {
    fn bbox(&self) -> Aabb {
        Aabb {
            lo: v3(
                -self.half_width,
                -REF_BRAIN.y * self.sc.y - 5.0,
                -20.0 * self.sc.z,
            ),
            hi: v3(self.half_width, REF_BRAIN.y * self.sc.y + 5.0, self.top),
        }
    }

    fn contains(&self, p: V3) -> bool {
        p.x.abs() < self.half_width && p.z > self.floor(p.y)
    }

    fn wall_depth(&self, p: V3) -> f64 {
        (self.half_width - p.x.abs()).max(0.0)
    }

    fn x_span(&self, y: f64, z: f64) -> Option<(f64, f64)> {
        (z > self.floor(y)).then_some((-self.half_width, self.half_width))
    }
}

/// Marks the brain samples of `shape` (not yet in a zone or a compartment) as zone `id`.
fn mark_zone(fine: &mut Fine, shape: &impl Shape, id: u8) {
    let g = fine.grid;
    g.for_each_in(shape, |i, p| {
        if fine.zone[i] == 0
            && fine.comp[i] == 0
            && class::is_parenchyma(fine.class[i])
            && shape.contains(p)
        {
            fine.zone[i] = id;
        }
    });
}

/// A calcification (a hyperdense mimic).
#[derive(Clone, Debug)]
pub(crate) struct Calcification {
    pub name: String,
    pub hu: f32,
    pub shape: CalcShape,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum CalcShape {
    Ellipsoid(Ellipsoid),
    Plate(Plate),
}

/// One case's head.
#[derive(Clone, Debug)]
pub(crate) struct Head {
    /// Brain semi-axes (mm).
    pub semi: V3,
    /// `semi / REF_BRAIN`: scales reference landmarks to this brain.
    pub sc: V3,
    shape_coef: [f64; 8],
    /// Bounds of `brain_radius` over all directions (lets the layering skip most samples).
    radius_bounds: (f64, f64),
    pub cortex_mm: f64,
    pub csf_rim_mm: f64,
    pub skull_mm: f64,
    pub scalp_mm: f64,
    pub table_mm: f64,
    pub hu: [f32; 256],
    pub sulcal_width_mm: f64,
    pub ventricle_scale: f64,
    pub hydrocephalus: bool,
    pub compartments: Vec<Compartment>,
    sulci: Vec<Plate>,
    midline: Midline,
    sylvian: Vec<Plate>,
    deep_gm: Vec<Ellipsoid>,
    septum: Ellipsoid,
    vessels: Vec<Ellipsoid>,
    falx_half_mm: f64,
    tentorium: [Plate; 2],
    pub petrous: [Ellipsoid; 2],
    clivus: Ellipsoid,
    clinoids: [Ellipsoid; 2],
    pub calcifications: Vec<Calcification>,
}

fn uni<R: Rng>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

fn normal<R: Rng>(rng: &mut R, mean: f64, sd: f64) -> f64 {
    use rand_distr::{Distribution, StandardNormal};
    let z: f64 = StandardNormal.sample(rng);
    mean + sd * z
}

/// A uniformly random unit vector.
pub(crate) fn random_dir<R: Rng>(rng: &mut R) -> V3 {
    loop {
        let v = v3(
            normal(rng, 0.0, 1.0),
            normal(rng, 0.0, 1.0),
            normal(rng, 0.0, 1.0),
        );
        if v.norm() > 1e-6 {
            return v.unit();
        }
    }
}

impl Head {
    /// Draws a head. SAH patients are older than TBI patients: wider CSF spaces, larger
    /// ventricles, more calcifications.
    pub fn sample<R: Rng>(rng: &mut R, cohort: Cohort, hydrocephalus: bool) -> Head {
        let sah = cohort == Cohort::Sah;
        let semi = v3(
            uni(rng, 64.0, 70.0),
            uni(rng, 78.0, 85.0),
            uni(rng, 55.0, 61.0),
        );
        let sc = v3(
            semi.x / REF_BRAIN.x,
            semi.y / REF_BRAIN.y,
            semi.z / REF_BRAIN.z,
        );
        let mut shape_coef = [0.0; 8];
        for c in shape_coef.iter_mut() {
            *c = normal(rng, 0.0, 0.012);
        }
        let cortex_mm = uni(rng, 2.5, 3.5);
        let mut csf_rim_mm = if sah {
            uni(rng, 2.0, 5.0)
        } else {
            uni(rng, 1.0, 3.0)
        };
        let skull_mm = uni(rng, 4.5, 8.0);
        let scalp_mm = uni(rng, 3.0, 6.0);
        let table_mm = uni(rng, 1.2, 2.0).min(skull_mm / 3.0);

        let mut hu = [0.0f32; 256];
        hu[class::AIR as usize] = -1000.0;
        hu[class::SCALP as usize] = uni(rng, 30.0, 40.0) as f32;
        hu[class::BONE as usize] = uni(rng, 1200.0, 1500.0) as f32;
        hu[class::DIPLOE as usize] = uni(rng, 900.0, 1150.0) as f32;
        hu[class::CSF as usize] = uni(rng, 0.0, 12.0) as f32;
        let gm = normal(rng, 39.0, 1.5).clamp(35.0, 43.0);
        hu[class::GM as usize] = gm as f32;
        hu[class::WM as usize] = normal(rng, 27.0, 1.5).clamp(23.0, 31.0) as f32;
        hu[class::DEEP_GM as usize] = (gm - uni(rng, 0.0, 3.0)) as f32;
        hu[class::DURA as usize] = uni(rng, 45.0, 70.0) as f32;
        hu[class::SINUS as usize] = uni(rng, 42.0, 58.0) as f32;
        hu[class::VESSEL as usize] = uni(rng, 38.0, 50.0) as f32;
        hu[class::OEDEMA as usize] = uni(rng, 16.0, 23.0) as f32;

        // Older brains: wider sulci and fissures; hydrocephalus effaces the sulci.
        let mut sulcal_width_mm = if sah {
            uni(rng, 1.6, 3.2)
        } else {
            uni(rng, 1.0, 2.0)
        };
        let mut ventricle_scale = if sah {
            uni(rng, 0.95, 1.3)
        } else {
            uni(rng, 0.8, 1.15)
        };
        if hydrocephalus {
            sulcal_width_mm *= 0.65;
            csf_rim_mm *= 0.75;
            ventricle_scale = uni(rng, 1.6, 2.1);
        }
        let fissure_mm = if sah {
            uni(rng, 2.5, 5.0)
        } else {
            uni(rng, 1.5, 3.0)
        };
        let sylvian_mm = if sah {
            uni(rng, 3.0, 6.0)
        } else {
            uni(rng, 2.0, 3.5)
        };
        let cistern_scale = if sah {
            uni(rng, 1.0, 1.3)
        } else {
            uni(rng, 0.85, 1.1)
        };

        let at = |x: f64, y: f64, z: f64| v3(x, y, z).scale(sc);
        let mut compartments = vec![Compartment {
            id: comp::CONVEXITY,
            kind: CompKind::Convexity,
            name: "convexity".into(),
            shape: CompShape::Rim,
        }];

        // Basal cisterns.
        let cs = cistern_scale;
        let cisterns = [
            (
                comp::SUPRASELLAR,
                "suprasellar cistern",
                CompShape::Ellipsoid(Ellipsoid::aligned(
                    at(0.0, 9.0, -16.0),
                    v3(13.0, 10.0, 4.5) * cs,
                )),
            ),
            (
                comp::PERIMESENCEPHALIC,
                "perimesencephalic cistern",
                CompShape::Shell(Shell {
                    outer: Ellipsoid::aligned(
                        at(0.0, -12.0, -13.0),
                        v3(11.5 + 3.0 * cs, 10.5 + 3.0 * cs, 7.5 * cs),
                    ),
                    inner: Ellipsoid::aligned(at(0.0, -12.0, -13.0), v3(11.5, 10.5, 14.0)),
                }),
            ),
            (
                comp::INTERPEDUNCULAR,
                "interpeduncular cistern",
                CompShape::Ellipsoid(Ellipsoid::aligned(
                    at(0.0, -1.0, -16.0),
                    v3(4.0, 5.0, 5.0) * cs,
                )),
            ),
            (
                comp::QUADRIGEMINAL,
                "quadrigeminal cistern",
                CompShape::Ellipsoid(Ellipsoid::aligned(
                    at(0.0, -27.0, -6.0),
                    v3(8.0, 5.0, 6.0) * cs,
                )),
            ),
            (
                comp::PREPONTINE,
                "prepontine cistern",
                CompShape::Ellipsoid(Ellipsoid::aligned(
                    at(0.0, -3.0, -36.0),
                    v3(11.0, 3.5, 14.0) * cs,
                )),
            ),
        ];
        for (id, name, shape) in cisterns {
            compartments.push(Compartment {
                id,
                kind: CompKind::Cistern,
                name: name.into(),
                shape,
            });
        }

        // Fissures.
        let midline = Midline {
            half_width: fissure_mm / 2.0,
            sc,
            top: semi.z + csf_rim_mm + 2.0,
        };
        compartments.push(Compartment {
            id: comp::INTERHEMISPHERIC,
            kind: CompKind::Fissure,
            name: "interhemispheric fissure".into(),
            shape: CompShape::Midline(midline),
        });
        // Sylvian fissures: a stem running out and forward from the suprasellar cistern, then a
        // lateral limb bending back to the surface (two plates each).
        let mut sylvian = Vec::new();
        for side in [Side::Right, Side::Left] {
            let s = side.sign();
            let a = at(s * 14.0, 9.0, -14.0);
            let m = at(s * uni(rng, 32.0, 38.0), uni(rng, 13.0, 19.0), -10.0);
            let b = at(s * 64.0, uni(rng, -2.0, 6.0), -4.0);
            let ids = if side == Side::Right {
                [comp::SYLVIAN_RIGHT, comp::SYLVIAN_RIGHT_LATERAL]
            } else {
                [comp::SYLVIAN_LEFT, comp::SYLVIAN_LEFT_LATERAL]
            };
            for ((p, q, height), id) in [(a, m, 7.0), (m, b, 12.0)].into_iter().zip(ids) {
                let plate = Plate::new(
                    (p + q) * 0.5,
                    q - p,
                    v3(0.0, -0.45, 1.0),
                    (q - p).norm() / 2.0 + 4.0,
                    height * sc.z,
                    sylvian_mm / 2.0,
                );
                sylvian.push(plate);
                compartments.push(Compartment {
                    id,
                    kind: CompKind::Fissure,
                    name: format!("{} sylvian fissure", side.name()),
                    shape: CompShape::Plate(plate),
                });
            }
        }

        // Ventricles: lateral (body, frontal horn, atrium, temporal horn), third, fourth.
        let v = ventricle_scale;
        // Hydrocephalus balloons the lateral ventricles and the temporal horns most.
        let (wx, wz, temporal) = if hydrocephalus {
            (v, v, 2.2)
        } else {
            (v, v, 1.0)
        };
        for (k, side) in [Side::Right, Side::Left].into_iter().enumerate() {
            let s = side.sign();
            let parts = [
                (
                    "body",
                    at(s * (9.0 + 2.0 * (wx - 1.0)), -2.0, 16.0),
                    v3(5.0 * wx, 24.0, 5.0 * wz),
                ),
                (
                    "frontal horn",
                    at(s * (11.0 + 2.0 * (wx - 1.0)), 20.0, 9.0),
                    v3(5.0 * wx, 9.0, 8.0 * wz.sqrt()),
                ),
                (
                    "atrium",
                    at(s * 17.0, -26.0, 8.0),
                    v3(6.0 * wx, 11.0, 8.0 * wz.sqrt()),
                ),
                (
                    "temporal horn",
                    at(s * 30.0, -6.0, -16.0),
                    v3(3.0 * temporal, 13.0, 2.5 * temporal),
                ),
            ];
            for (j, (part, c, semi)) in parts.into_iter().enumerate() {
                compartments.push(Compartment {
                    id: comp::VENTRICLE0 + (4 * k + j) as u8,
                    kind: CompKind::Ventricle,
                    name: format!("{} lateral ventricle {}", side.name(), part),
                    shape: CompShape::Ellipsoid(Ellipsoid::aligned(c, semi)),
                });
            }
        }
        let third_w = if hydrocephalus { 2.5 * v } else { v };
        compartments.push(Compartment {
            id: comp::THIRD_VENTRICLE,
            kind: CompKind::Ventricle,
            name: "third ventricle".into(),
            shape: CompShape::Ellipsoid(Ellipsoid::aligned(
                at(0.0, -4.0, 0.0),
                v3(1.8 * third_w, 13.0, 9.0),
            )),
        });
        compartments.push(Compartment {
            id: comp::FOURTH_VENTRICLE,
            kind: CompKind::Ventricle,
            name: "fourth ventricle".into(),
            shape: CompShape::Ellipsoid(Ellipsoid::aligned(
                at(0.0, -40.0, -34.0),
                v3(7.0, 4.0, 6.0) * v.sqrt(),
            )),
        });
        let septum = Ellipsoid::aligned(at(0.0, 0.0, 14.0), v3(0.9, 32.0, 14.0));

        // Sulci: plates from the surface inward, on the convexity, away from the midline.
        let n_sulci = if sah {
            rng.random_range(50..=80)
        } else {
            rng.random_range(40..=65)
        };
        let mut sulci = Vec::with_capacity(n_sulci);
        let mut probe = Head::bare(semi, sc, shape_coef);
        probe.radius_bounds = probe.radius_range();
        while sulci.len() < n_sulci {
            let u = random_dir(rng);
            if u.z < -0.35 || u.x.abs() < 0.15 {
                continue;
            }
            let surface = u * probe.brain_radius(u);
            let inward = -v3(
                surface.x / (semi.x * semi.x),
                surface.y / (semi.y * semi.y),
                surface.z / (semi.z * semi.z),
            )
            .unit();
            let along = random_dir(rng).cross(inward).unit();
            let width = sulcal_width_mm * uni(rng, 0.7, 1.3);
            let plate = Plate::new(
                surface,
                inward,
                along,
                uni(rng, 9.0, 17.0),
                uni(rng, 6.0, 13.0),
                width / 2.0,
            );
            let id = comp::SULCUS0 + sulci.len() as u8;
            compartments.push(Compartment {
                id,
                kind: CompKind::Sulcus,
                name: "sulci".into(),
                shape: CompShape::Plate(plate),
            });
            sulci.push(plate);
        }

        let deep_gm = [Side::Right, Side::Left]
            .into_iter()
            .flat_map(|side| {
                let s = side.sign();
                [
                    Ellipsoid::aligned(at(s * 21.0, 3.0, 2.0), v3(7.0, 13.0, 9.0)),
                    Ellipsoid::aligned(at(s * 14.0, 15.0, 10.0), v3(5.0, 7.0, 7.0)),
                    Ellipsoid::aligned(at(s * 10.0, -13.0, 5.0), v3(8.0, 12.0, 8.0)),
                ]
            })
            .collect();

        // Arteries in the cisterns: basilar, both middle cerebral arteries.
        let mut vessels = vec![Ellipsoid::oriented(
            at(0.0, -3.0, -34.0),
            v3(0.0, 0.25, 1.0),
            v3(0.0, 1.0, 0.0),
            [13.0, 1.5, 1.5],
        )];
        for side in [Side::Right, Side::Left] {
            let s = side.sign();
            let a = at(s * 14.0, 9.0, -14.0);
            let b = at(s * 40.0, 6.0, -10.0);
            vessels.push(Ellipsoid::oriented(
                (a + b) * 0.5,
                b - a,
                v3(0.0, 0.0, 1.0),
                [(b - a).norm() / 2.0, 1.2, 1.2],
            ));
        }

        let tentorium = [Side::Right, Side::Left].map(|side| {
            let s = side.sign();
            Plate::new(
                at(s * 22.0, -46.0, -20.0),
                v3(s, 0.0, -0.55),
                v3(0.0, 1.0, 0.35),
                24.0 * sc.x,
                26.0 * sc.y,
                0.6,
            )
        });
        let petrous = [Side::Right, Side::Left].map(|side| {
            let s = side.sign();
            Ellipsoid::oriented(
                at(s * 31.0, -15.0, -37.0),
                v3(-s * 0.62, 0.78, 0.12),
                v3(0.0, 0.0, 1.0),
                [23.0, 6.5, 5.5],
            )
        });
        let clivus = Ellipsoid::oriented(
            at(0.0, 7.0, -44.0),
            v3(0.0, 0.35, 1.0),
            v3(0.0, 1.0, 0.0),
            [17.0, 4.5, 8.0],
        );
        let clinoids = [Side::Right, Side::Left]
            .map(|side| Ellipsoid::aligned(at(side.sign() * 11.0, 15.0, -20.0), v3(2.5, 6.0, 2.5)));

        let mut head = Head {
            semi,
            sc,
            shape_coef,
            radius_bounds: probe.radius_bounds,
            cortex_mm,
            csf_rim_mm,
            skull_mm,
            scalp_mm,
            table_mm,
            hu,
            sulcal_width_mm,
            ventricle_scale,
            hydrocephalus,
            compartments,
            sulci,
            midline,
            sylvian,
            deep_gm,
            septum,
            vessels,
            falx_half_mm: uni(rng, 0.5, 0.9),
            tentorium,
            petrous,
            clivus,
            clinoids,
            calcifications: Vec::new(),
        };
        head.calcifications = head.sample_calcifications(rng, sah);
        for (k, c) in head.calcifications.iter().enumerate() {
            head.hu[class::CALC0 as usize + k] = c.hu;
        }
        head
    }

    /// A head with only its outline (used to place sulci before the rest exists).
    fn bare(semi: V3, sc: V3, shape_coef: [f64; 8]) -> Head {
        let e = Ellipsoid::aligned(v3(0.0, 0.0, 0.0), v3(1.0, 1.0, 1.0));
        let p = Plate::new(
            v3(0.0, 0.0, 0.0),
            v3(1.0, 0.0, 0.0),
            v3(0.0, 1.0, 0.0),
            1.0,
            1.0,
            1.0,
        );
        Head {
            semi,
            sc,
            shape_coef,
            radius_bounds: (0.0, f64::INFINITY),
            cortex_mm: 0.0,
            csf_rim_mm: 0.0,
            skull_mm: 0.0,
            scalp_mm: 0.0,
            table_mm: 0.0,
            hu: [0.0; 256],
            sulcal_width_mm: 0.0,
            ventricle_scale: 1.0,
            hydrocephalus: false,
            compartments: Vec::new(),
            sulci: Vec::new(),
            midline: Midline {
                half_width: 0.0,
                sc,
                top: 0.0,
            },
            sylvian: Vec::new(),
            deep_gm: Vec::new(),
            septum: e,
            vessels: Vec::new(),
            falx_half_mm: 0.0,
            tentorium: [p, p],
            petrous: [e, e],
            clivus: e,
            clinoids: [e, e],
            calcifications: Vec::new(),
        }
    }

    fn sample_calcifications<R: Rng>(&self, rng: &mut R, sah: bool) -> Vec<Calcification> {
        let at = |x: f64, y: f64, z: f64| v3(x, y, z).scale(self.sc);
        let jitter =
            |rng: &mut R, mm: f64| v3(uni(rng, -mm, mm), uni(rng, -mm, mm), uni(rng, -mm, mm));
        let calc_hu = |rng: &mut R| uni(rng, 100.0, 300.0) as f32;
        let mut out = Vec::new();
        let p = |t: f64, s: f64| if sah { s } else { t };
        if rng.random_bool(p(0.5, 0.75)) {
            let both = rng.random_bool(0.8);
            let first = if rng.random_bool(0.5) {
                Side::Right
            } else {
                Side::Left
            };
            for side in [first, first.other()]
                .into_iter()
                .take(if both { 2 } else { 1 })
            {
                let r = uni(rng, 1.8, 3.2);
                let c = at(side.sign() * 17.0, -25.0, 8.0) + jitter(rng, 2.0);
                out.push(Calcification {
                    name: format!("{} choroid plexus", side.name()),
                    hu: calc_hu(rng),
                    shape: CalcShape::Ellipsoid(Ellipsoid::aligned(c, v3(r, r * 1.4, r))),
                });
            }
        }
        if rng.random_bool(p(0.4, 0.6)) {
            let r = uni(rng, 1.8, 3.0);
            let c = at(0.0, -25.0, 1.0) + jitter(rng, 1.0);
            out.push(Calcification {
                name: "pineal".into(),
                hu: calc_hu(rng),
                shape: CalcShape::Ellipsoid(Ellipsoid::aligned(c, v3(r, r, r))),
            });
        }
        if rng.random_bool(p(0.15, 0.35)) {
            for _ in 0..rng.random_range(1..=2) {
                let y = uni(rng, -50.0, 50.0) * self.sc.y;
                let z = uni(rng, self.midline.floor(y) + 15.0, self.semi.z * 0.8);
                let plate = Plate::new(
                    v3(0.0, y, z),
                    v3(0.0, 1.0, 0.0),
                    v3(0.0, 0.0, 1.0),
                    uni(rng, 3.0, 7.0),
                    uni(rng, 2.0, 5.0),
                    uni(rng, 0.8, 1.5),
                );
                out.push(Calcification {
                    name: "falx".into(),
                    hu: calc_hu(rng),
                    shape: CalcShape::Plate(plate),
                });
            }
        }
        if rng.random_bool(p(0.05, 0.15)) {
            for side in [Side::Right, Side::Left] {
                let r = uni(rng, 1.5, 3.0);
                let c = at(side.sign() * 17.0, 2.0, 0.0) + jitter(rng, 1.5);
                out.push(Calcification {
                    name: format!("{} globus pallidus", side.name()),
                    hu: calc_hu(rng),
                    shape: CalcShape::Ellipsoid(Ellipsoid::aligned(c, v3(r, r, r))),
                });
            }
        }
        if rng.random_bool(p(0.1, 0.2)) {
            for _ in 0..rng.random_range(1..=3) {
                let u = loop {
                    let u = random_dir(rng);
                    if u.z > -0.2 {
                        break u;
                    }
                };
                let c = u * (self.brain_radius(u) + self.csf_rim_mm - 0.8);
                let plate = Plate::new(
                    c,
                    u.any_orthogonal(),
                    u.cross(u.any_orthogonal()),
                    uni(rng, 3.0, 6.0),
                    uni(rng, 3.0, 6.0),
                    0.8,
                );
                out.push(Calcification {
                    name: "dural plaque".into(),
                    hu: calc_hu(rng),
                    shape: CalcShape::Plate(plate),
                });
            }
        }
        out.truncate(class::MAX_CALCS);
        out
    }

    /// Bounds of the brain radius: a dense Fibonacci sphere of directions, with a margin.
    fn radius_range(&self) -> (f64, f64) {
        let n = 4000;
        let golden = std::f64::consts::PI * (3.0 - 5f64.sqrt());
        let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
        for i in 0..n {
            let z = 1.0 - 2.0 * (i as f64 + 0.5) / n as f64;
            let r = (1.0 - z * z).sqrt();
            let a = golden * i as f64;
            let rb = self.brain_radius(v3(r * a.cos(), r * a.sin(), z));
            lo = lo.min(rb);
            hi = hi.max(rb);
        }
        (lo * 0.97, hi * 1.03)
    }

    /// Radius (mm) of the brain surface along the unit direction `u`.
    pub fn brain_radius(&self, u: V3) -> f64 {
        let a = self.semi;
        let e = 1.0 / ((u.x / a.x).powi(2) + (u.y / a.y).powi(2) + (u.z / a.z).powi(2)).sqrt();
        let c = &self.shape_coef;
        let eps = c[0] * u.x
            + c[1] * u.y
            + c[2] * u.z
            + c[3] * u.x * u.y
            + c[4] * u.y * u.z
            + c[5] * u.x * u.z
            + c[6] * (u.x * u.x - u.y * u.y)
            + c[7] * (u.z * u.z - 1.0 / 3.0);
        // Skull base: the frontal lobes sit on a flat anterior fossa, the cerebellum hangs
        // lower at the back.
        let down = (-u.z).max(0.0).powi(2);
        let shaping = 0.15 * down * (-u.y).max(0.0) - 0.3 * down * u.y.max(0.0) * (1.0 - u.x.abs());
        e * (1.0 + eps + shaping)
    }

    /// Signed radial distance (mm) from the brain surface: negative inside the brain.
    pub fn beyond_brain(&self, p: V3) -> f64 {
        let rho = p.norm();
        let u = if rho > 1e-9 {
            p * (1.0 / rho)
        } else {
            v3(0.0, 0.0, 1.0)
        };
        rho - self.brain_radius(u)
    }

    /// Radial depth (mm) under the inner table: positive inside the skull.
    pub fn under_inner_table(&self, p: V3) -> f64 {
        self.csf_rim_mm - self.beyond_brain(p)
    }

    /// The point `r_in - depth` along direction `u`: `depth` mm under the inner table.
    pub fn point_under_table(&self, u: V3, depth: f64) -> V3 {
        let u = u.unit();
        u * (self.brain_radius(u) + self.csf_rim_mm - depth)
    }

    /// A reference-brain landmark scaled to this brain.
    pub fn at(&self, x: f64, y: f64, z: f64) -> V3 {
        v3(x, y, z).scale(self.sc)
    }

    pub fn compartment(&self, id: u8) -> Option<&Compartment> {
        self.compartments.iter().find(|c| c.id == id)
    }

    /// Depth (mm) of `p` under the walls of compartment `c` (how far from brain or bone).
    pub fn wall_depth(&self, c: &Compartment, p: V3) -> f64 {
        match &c.shape {
            CompShape::Rim => {
                let d = self.beyond_brain(p);
                d.min(self.csf_rim_mm - d).max(0.0)
            }
            CompShape::Ellipsoid(e) => e.wall_depth(p),
            CompShape::Plate(s) => s.wall_depth(p),
            CompShape::Shell(s) => s.wall_depth(p),
            CompShape::Midline(m) => m.wall_depth(p),
        }
    }

    /// How far (mm) `p` lies outside compartment `c`'s walls (0 inside).
    pub fn outside_depth(&self, c: &Compartment, p: V3) -> f64 {
        let ell =
            |e: &Ellipsoid| (e.rho2(p).sqrt() - 1.0) * e.semi[0].min(e.semi[1]).min(e.semi[2]);
        let out = match &c.shape {
            CompShape::Rim => self.beyond_brain(p).abs(),
            CompShape::Ellipsoid(e) => ell(e),
            CompShape::Plate(s) => {
                let d = p - s.c;
                let radial = ((d.dot(s.u) / s.hu).powi(2) + (d.dot(s.v) / s.hv).powi(2)).sqrt();
                (d.dot(s.n).abs() - s.ht).max((radial - 1.0) * s.hu.min(s.hv))
            }
            CompShape::Shell(s) => {
                let e = &s.inner;
                ell(&s.outer)
                    .max((1.0 - e.rho2(p).sqrt()) * e.semi[0].min(e.semi[1]).min(e.semi[2]))
            }
            CompShape::Midline(m) => (p.x.abs() - m.half_width).max(m.floor(p.y) - p.z),
        };
        out.max(0.0)
    }

    /// Marks the brain within `swell_mm` of each cistern and fissure in [`Fine::zone`]: where a
    /// thick clot can push the brain aside.
    pub fn mark_zones(&self, fine: &mut Fine, swell_mm: f64) {
        fine.zone = vec![0; fine.grid.fine_len()];
        let s = swell_mm;
        for c in &self.compartments {
            match (&c.kind, &c.shape) {
                (CompKind::Cistern | CompKind::Fissure, CompShape::Ellipsoid(e)) => {
                    mark_zone(
                        fine,
                        &Ellipsoid {
                            semi: e.semi.map(|v| v + s),
                            ..*e
                        },
                        c.id,
                    );
                }
                (CompKind::Cistern | CompKind::Fissure, CompShape::Plate(pl)) => {
                    mark_zone(
                        fine,
                        &Plate {
                            hu: pl.hu + s,
                            hv: pl.hv + s,
                            ht: pl.ht + s,
                            ..*pl
                        },
                        c.id,
                    );
                }
                (CompKind::Cistern | CompKind::Fissure, CompShape::Shell(sh)) => {
                    let d = Shell {
                        outer: Ellipsoid {
                            semi: sh.outer.semi.map(|v| v + s),
                            ..sh.outer
                        },
                        inner: Ellipsoid {
                            semi: sh.inner.semi.map(|v| (v - s).max(1.0)),
                            ..sh.inner
                        },
                    };
                    mark_zone(fine, &d, c.id);
                }
                (CompKind::Cistern | CompKind::Fissure, CompShape::Midline(m)) => {
                    mark_zone(fine, &m.widened(s), c.id)
                }
                _ => {}
            }
        }
    }

    /// The layers around the brain surface at `p`: `(class, compartment)`.
    fn layer(&self, p: V3) -> (u8, u8) {
        let rho = p.norm();
        if rho < self.radius_bounds.0 - self.cortex_mm - 1.0 {
            return (class::WM, 0);
        }
        if rho > self.radius_bounds.1 + self.csf_rim_mm + self.skull_mm + self.scalp_mm + 1.0 {
            return (class::AIR, 0);
        }
        let d = self.beyond_brain(p);
        let skull_in = self.csf_rim_mm;
        let skull_out = skull_in + self.skull_mm;
        if d < -self.cortex_mm {
            (class::WM, 0)
        } else if d < 0.0 {
            (class::GM, 0)
        } else if d < skull_in {
            (class::CSF, comp::CONVEXITY)
        } else if d < skull_out {
            let table = d - skull_in < self.table_mm || skull_out - d < self.table_mm;
            (if table { class::BONE } else { class::DIPLOE }, 0)
        } else if d < skull_out + self.scalp_mm {
            (class::SCALP, 0)
        } else {
            (class::AIR, 0)
        }
    }

    /// Draws the head on the fine grid.
    pub fn render(&self, grid: &Grid) -> Fine {
        use class::*;
        let mut fine = Fine::new(*grid);
        fine.fill(|p| self.layer(p));
        let wm_only = |c: u8| c == WM;
        let soft = is_soft_intracranial;

        for e in &self.deep_gm {
            fine.paint(e, is_parenchyma, DEEP_GM, 0);
        }
        // Cortex lines every sulcus and fissure, then the CSF goes in the middle.
        for s in &self.sulci {
            fine.paint(&s.thickened(self.cortex_mm), wm_only, GM, 0);
        }
        fine.paint(&self.midline.widened(self.cortex_mm), wm_only, GM, 0);
        for s in &self.sylvian {
            fine.paint(&s.thickened(self.cortex_mm), wm_only, GM, 0);
        }
        for c in &self.compartments {
            let id = c.id;
            match (&c.kind, &c.shape) {
                (CompKind::Convexity, _) => {}
                (CompKind::Sulcus | CompKind::Fissure, CompShape::Plate(s)) => {
                    fine.paint(s, is_parenchyma, CSF, id)
                }
                (CompKind::Fissure, CompShape::Midline(m)) => fine.paint(m, is_parenchyma, CSF, id),
                (_, CompShape::Ellipsoid(e)) => fine.paint(e, soft, CSF, id),
                (_, CompShape::Shell(s)) => fine.paint(s, soft, CSF, id),
                _ => {}
            }
        }
        // The septum pellucidum keeps the lateral ventricles apart.
        let lateral = comp::VENTRICLE0..comp::THIRD_VENTRICLE;
        let g = fine.grid;
        g.for_each_in(&self.septum, |i, p| {
            if lateral.contains(&fine.comp[i]) && self.septum.contains(p) {
                fine.class[i] = WM;
                fine.comp[i] = 0;
            }
        });
        for v in &self.vessels {
            fine.paint(v, soft, VESSEL, 0);
        }
        self.paint_dura(&mut fine);
        for (k, c) in self.calcifications.iter().enumerate() {
            let allowed = |c: u8| is_soft_intracranial(c) || matches!(c, DURA | SINUS | VESSEL);
            match &c.shape {
                CalcShape::Ellipsoid(e) => fine.paint(e, allowed, CALC0 + k as u8, 0),
                CalcShape::Plate(p) => fine.paint(p, allowed, CALC0 + k as u8, 0),
            }
        }
        let not_outside = |c: u8| c != AIR && c != SCALP;
        for b in self
            .petrous
            .iter()
            .chain(&[self.clivus])
            .chain(&self.clinoids)
        {
            fine.paint(b, not_outside, BONE, 0);
        }
        fine
    }

    /// Falx, tentorium and superior sagittal sinus.
    fn paint_dura(&self, fine: &mut Fine) {
        use class::*;
        let g = fine.grid;
        let falx = Midline {
            half_width: self.falx_half_mm,
            ..self.midline
        };
        let free_edge = 10.0 * self.sc.z;
        g.for_each_in(&falx, |i, p| {
            let c = fine.comp[i];
            let in_fissure =
                fine.class[i] == CSF && (c == comp::INTERHEMISPHERIC || c == comp::CONVEXITY);
            if in_fissure && falx.contains(p) && p.z > falx.floor(p.y) + free_edge {
                fine.class[i] = DURA;
                fine.comp[i] = 0;
            }
        });
        for t in &self.tentorium {
            fine.paint(t, class::is_parenchyma, DURA, 0);
        }
        // The sinus: a triangle under the inner table along the midline, above the skull base.
        let depth = 7.0;
        let sinus = Aabb {
            lo: v3(-5.0, -self.semi.y - 15.0, -15.0),
            hi: v3(5.0, self.semi.y + 15.0, self.semi.z + 15.0),
        };
        g.for_each_fine(sinus, |i, p| {
            let c = fine.class[i];
            if !(is_soft_intracranial(c) || c == DURA) {
                return;
            }
            let d = self.under_inner_table(p);
            if d >= 0.0 && d < depth && p.x.abs() < 4.5 * (1.0 - d / depth) && p.z > -0.2 * p.norm()
            {
                fine.class[i] = SINUS;
                fine.comp[i] = 0;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn head(cohort: Cohort, hydro: bool) -> Head {
        Head::sample(&mut ChaCha8Rng::seed_from_u64(3), cohort, hydro)
    }

    #[test]
    fn layers_are_ordered_outward() {
        let h = head(Cohort::Tbi, false);
        let u = v3(0.3, 0.5, 0.4).unit();
        let r = h.brain_radius(u);
        let at = |d: f64| h.layer(u * (r + d)).0;
        assert_eq!(at(-20.0), class::WM);
        assert_eq!(at(-1.0), class::GM);
        assert_eq!(at(h.csf_rim_mm / 2.0), class::CSF);
        assert_eq!(at(h.csf_rim_mm + 0.1), class::BONE);
        assert_eq!(at(h.csf_rim_mm + h.skull_mm / 2.0), class::DIPLOE);
        assert_eq!(at(h.csf_rim_mm + h.skull_mm + 1.0), class::SCALP);
        assert_eq!(at(h.csf_rim_mm + h.skull_mm + h.scalp_mm + 1.0), class::AIR);
        assert!((h.under_inner_table(u * (r + h.csf_rim_mm - 2.0)) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn rendered_head_has_every_structure() {
        let h = head(Cohort::Sah, true);
        let fine = h.render(&Grid::new([24, 64, 64], [6.0, 3.4, 3.4]));
        let count = |c: u8| fine.class.iter().filter(|&&k| k == c).count();
        for c in [
            class::AIR,
            class::SCALP,
            class::BONE,
            class::DIPLOE,
            class::CSF,
            class::GM,
            class::WM,
            class::DEEP_GM,
            class::DURA,
            class::SINUS,
            class::VESSEL,
        ] {
            assert!(count(c) > 0, "class {c} missing");
        }
        // Every compartment is drawn and labelled as CSF.
        for c in &h.compartments {
            let n = fine.comp.iter().filter(|&&k| k == c.id).count();
            assert!(n > 0, "compartment {} ({}) missing", c.id, c.name);
        }
        for (i, &k) in fine.comp.iter().enumerate() {
            if k != 0 {
                assert_eq!(fine.class[i], class::CSF);
            }
        }
        // Hydrocephalus: the ventricles are far larger than in a normal head.
        let vent = |f: &Fine| {
            f.comp
                .iter()
                .filter(|&&k| (comp::VENTRICLE0..=comp::FOURTH_VENTRICLE).contains(&k))
                .count()
        };
        let normal = head(Cohort::Sah, false).render(&fine.grid);
        assert!(
            vent(&fine) as f64 > 2.0 * vent(&normal) as f64,
            "{} vs {}",
            vent(&fine),
            vent(&normal)
        );
    }

    #[test]
    fn cohorts_differ_in_csf_spaces() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (mut tbi, mut sah) = (0.0, 0.0);
        for _ in 0..20 {
            tbi += Head::sample(&mut rng, Cohort::Tbi, false).csf_rim_mm;
            sah += Head::sample(&mut rng, Cohort::Sah, false).csf_rim_mm;
        }
        assert!(sah > tbi * 1.4, "sah rim {sah} vs tbi {tbi}");
    }
}
