//! The sampling grids: the output grid, the finer grid the phantom is drawn on, and the
//! averaging down that keeps tissue and blood fractions (partial volume).
//!
//! Each output voxel is split into `factor` sub-samples per axis (at most ~0.85 mm in-plane and
//! ~1.5 mm along z), so structures thinner than a voxel (sulci, membranes, thin blood) survive
//! as fractions. The fine grid stores one byte per sample and channel: a tissue class, a blood
//! density (0..=255 ↔ 0..1), the lesion that owns the blood and the CSF compartment the sample
//! belongs to (what blood can spread into).

use ndarray::Array3;
use rayon::prelude::*;

use super::shapes::{Aabb, Shape, V3, v3};

/// Finest in-plane and through-plane sample spacing (mm) the rasterizer aims for.
const FINE_INPLANE_MM: f64 = 0.85;
const FINE_SLICE_MM: f64 = 1.5;
/// Most sub-samples per axis (keeps absurd requests bounded).
const MAX_FACTOR: usize = 8;
/// The lowest slice of a long stack sits at the skull base, this far under the brain centre.
const SKULL_BASE_Z_MM: f64 = -58.0;
/// A stack shorter than this is centred on `SHORT_STACK_CENTRE_Z_MM` instead.
const FULL_STACK_MM: f64 = 144.0;
const SHORT_STACK_CENTRE_Z_MM: f64 = 10.0;

/// The output grid (axes `[z, y, x]` like [`crate::data::Volume`]) and its fine sub-grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Grid {
    pub shape: [usize; 3],
    pub spacing: [f64; 3],
    /// World position (mm) of the centre of the output grid.
    pub centre: V3,
    /// Sub-samples per output voxel along `[z, y, x]`.
    pub factor: [usize; 3],
    /// Fine sample spacing `[z, y, x]` and the position of fine sample `(0, 0, 0)` (cached:
    /// positions are computed for every sample).
    fine_step: [f64; 3],
    fine_origin: V3,
}

impl Grid {
    pub fn new(shape: [usize; 3], spacing: [f64; 3]) -> Grid {
        let factor =
            |s: f64, target: f64| ((s / target - 1e-6).ceil() as usize).clamp(1, MAX_FACTOR);
        let fov_z = shape[0] as f64 * spacing[0];
        // Clinical stacks start at the skull base; a short stack is kept around the ventricles.
        let cz = if fov_z >= FULL_STACK_MM {
            SKULL_BASE_Z_MM + fov_z / 2.0
        } else {
            SHORT_STACK_CENTRE_Z_MM
        };
        let mut g = Grid {
            shape,
            spacing,
            centre: v3(0.0, 0.0, cz),
            factor: [
                factor(spacing[0], FINE_SLICE_MM),
                factor(spacing[1], FINE_INPLANE_MM),
                factor(spacing[2], FINE_INPLANE_MM),
            ],
            fine_step: [0.0; 3],
            fine_origin: V3::default(),
        };
        g.fine_step = [0, 1, 2].map(|k| spacing[k] / g.factor[k] as f64);
        let f = g.fine_step;
        g.fine_origin = g.coarse_origin()
            - v3(
                (spacing[2] - f[2]) / 2.0,
                (spacing[1] - f[1]) / 2.0,
                (spacing[0] - f[0]) / 2.0,
            );
        g
    }

    pub fn fine_shape(&self) -> [usize; 3] {
        [
            self.shape[0] * self.factor[0],
            self.shape[1] * self.factor[1],
            self.shape[2] * self.factor[2],
        ]
    }

    pub fn fine_len(&self) -> usize {
        self.fine_shape().iter().product()
    }

    pub fn coarse_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Sub-samples per output voxel.
    pub fn sub_samples(&self) -> usize {
        self.factor.iter().product()
    }

    pub fn fine_spacing(&self) -> [f64; 3] {
        self.fine_step
    }

    /// World position of output voxel `(0, 0, 0)`'s centre.
    pub fn coarse_origin(&self) -> V3 {
        let half = |n: usize, s: f64| (n as f64 - 1.0) / 2.0 * s;
        self.centre
            - v3(
                half(self.shape[2], self.spacing[2]),
                half(self.shape[1], self.spacing[1]),
                half(self.shape[0], self.spacing[0]),
            )
    }

    pub fn coarse_pos(&self, iz: usize, iy: usize, ix: usize) -> V3 {
        self.coarse_origin()
            + v3(
                ix as f64 * self.spacing[2],
                iy as f64 * self.spacing[1],
                iz as f64 * self.spacing[0],
            )
    }

    pub fn fine_pos(&self, fz: usize, fy: usize, fx: usize) -> V3 {
        let f = self.fine_step;
        self.fine_origin + v3(fx as f64 * f[2], fy as f64 * f[1], fz as f64 * f[0])
    }

    /// Fine `(z, y, x)` of a flat fine index.
    pub fn fine_zyx(&self, i: usize) -> [usize; 3] {
        let s = self.fine_shape();
        [i / (s[1] * s[2]), (i / s[2]) % s[1], i % s[2]]
    }

    pub fn fine_pos_of(&self, i: usize) -> V3 {
        let [z, y, x] = self.fine_zyx(i);
        self.fine_pos(z, y, x)
    }

    /// The output voxel (flat index) a fine sample falls in.
    pub fn coarse_of_fine(&self, i: usize) -> usize {
        let [z, y, x] = self.fine_zyx(i);
        let (cz, cy, cx) = (z / self.factor[0], y / self.factor[1], x / self.factor[2]);
        (cz * self.shape[1] + cy) * self.shape[2] + cx
    }

    /// A NIfTI-1 header for the output grid: RAS axes, spacing in mm, and an affine that puts
    /// voxel centres at their world positions (origin at the brain centre).
    pub fn nifti_header(&self, description: &str) -> nifti::NiftiHeader {
        let o = self.coarse_origin();
        let [sz, sy, sx] = self.spacing.map(|s| s as f32);
        let mut h = nifti::NiftiHeader {
            dim: [
                3,
                self.shape[2] as u16,
                self.shape[1] as u16,
                self.shape[0] as u16,
                1,
                1,
                1,
                1,
            ],
            pixdim: [1.0, sx, sy, sz, 1.0, 1.0, 1.0, 1.0],
            xyzt_units: 2, // mm
            qform_code: 1,
            sform_code: 1,
            quatern_b: 0.0,
            quatern_c: 0.0,
            quatern_d: 0.0,
            quatern_x: o.x as f32,
            quatern_y: o.y as f32,
            quatern_z: o.z as f32,
            srow_x: [sx, 0.0, 0.0, o.x as f32],
            srow_y: [0.0, sy, 0.0, o.y as f32],
            srow_z: [0.0, 0.0, sz, o.z as f32],
            scl_slope: 1.0,
            scl_inter: 0.0,
            ..Default::default()
        };
        let mut d: Vec<u8> = description.bytes().take(79).collect();
        d.resize(80, 0);
        h.descrip = d;
        h
    }

    /// Fine index ranges `[z, y, x]` whose sample centres lie in `b`; `None` if empty.
    fn fine_ranges(&self, b: Aabb) -> Option<[std::ops::Range<usize>; 3]> {
        let o = self.fine_origin;
        let f = self.fine_step;
        let s = self.fine_shape();
        let range = |lo: f64, hi: f64, o: f64, step: f64, n: usize| {
            let a = ((lo - o) / step).ceil().max(0.0);
            let b = ((hi - o) / step).floor().min(n as f64 - 1.0);
            if a > b {
                None
            } else {
                Some(a as usize..b as usize + 1)
            }
        };
        Some([
            range(b.lo.z, b.hi.z, o.z, f[0], s[0])?,
            range(b.lo.y, b.hi.y, o.y, f[1], s[1])?,
            range(b.lo.x, b.hi.x, o.x, f[2], s[2])?,
        ])
    }

    /// Calls `f(flat_index, position)` for every fine sample of `shape`'s box, skipping the
    /// parts of each row outside the shape's `x_span`.
    pub fn for_each_in(&self, shape: &impl Shape, mut f: impl FnMut(usize, V3)) {
        let Some([rz, ry, rx]) = self.fine_ranges(shape.bbox()) else {
            return;
        };
        let s = self.fine_shape();
        let (o, st) = (self.fine_origin, self.fine_step);
        for z in rz {
            for y in ry.clone() {
                let p0 = self.fine_pos(z, y, 0);
                let Some((lo, hi)) = shape.x_span(p0.y, p0.z) else {
                    continue;
                };
                let a = (((lo - o.x) / st[2]).ceil().max(rx.start as f64)) as usize;
                let b = ((hi - o.x) / st[2]).floor().min(rx.end as f64 - 1.0);
                if b < a as f64 {
                    continue;
                }
                let row = (z * s[1] + y) * s[2];
                for x in a..=b as usize {
                    f(row + x, v3(p0.x + x as f64 * st[2], p0.y, p0.z));
                }
            }
        }
    }

    /// Calls `f(flat_index, position)` for every fine sample whose centre lies in `b`.
    pub fn for_each_fine(&self, b: Aabb, f: impl FnMut(usize, V3)) {
        self.for_each_in(&BoxShape(b), f);
    }
}

/// A box as a shape (for visiting a region).
struct BoxShape(Aabb);

impl Shape for BoxShape {
    fn bbox(&self) -> Aabb {
        self.0
    }
    fn contains(&self, _p: V3) -> bool {
        true
    }
    fn wall_depth(&self, _p: V3) -> f64 {
        0.0
    }
}

/// The phantom on the fine grid, one byte per sample and channel (flat, C order `[z, y, x]`).
pub(crate) struct Fine {
    pub grid: Grid,
    /// Tissue class: an index into the case's HU table.
    pub class: Vec<u8>,
    /// Blood density, 0..=255 for 0..1 (blood mixed with what `class` says is underneath).
    pub blood: Vec<u8>,
    /// Which lesion (1-based) owns the blood; 0 where there is none.
    pub lesion: Vec<u8>,
    /// CSF compartment id (0 = none): where subarachnoid or ventricular blood can go.
    pub comp: Vec<u8>,
    /// Brain next to a compartment (its id) that a thick clot may distend into; empty unless
    /// a lesion module asked for it.
    pub zone: Vec<u8>,
}

impl Fine {
    pub fn new(grid: Grid) -> Fine {
        let n = grid.fine_len();
        Fine {
            grid,
            class: vec![0; n],
            blood: vec![0; n],
            lesion: vec![0; n],
            comp: vec![0; n],
            zone: Vec::new(),
        }
    }

    /// Fills `class` and `comp` slab by slab (in parallel) from a per-sample function.
    pub fn fill(&mut self, f: impl Fn(V3) -> (u8, u8) + Sync) {
        let grid = self.grid;
        let s = grid.fine_shape();
        let slab = s[1] * s[2];
        self.class
            .par_chunks_mut(slab)
            .zip(self.comp.par_chunks_mut(slab))
            .enumerate()
            .for_each(|(z, (class, comp))| {
                let dx = grid.fine_step[2];
                for y in 0..s[1] {
                    let p0 = grid.fine_pos(z, y, 0);
                    for x in 0..s[2] {
                        let (c, k) = f(v3(p0.x + x as f64 * dx, p0.y, p0.z));
                        class[y * s[2] + x] = c;
                        comp[y * s[2] + x] = k;
                    }
                }
            });
    }

    /// Sets `class` (and `comp`) inside `shape` wherever `allowed(old class)` holds.
    pub fn paint(&mut self, shape: &impl Shape, allowed: impl Fn(u8) -> bool, class: u8, comp: u8) {
        let grid = self.grid;
        grid.for_each_in(shape, |i, p| {
            if allowed(self.class[i]) && shape.contains(p) {
                self.class[i] = class;
                self.comp[i] = comp;
            }
        });
    }

    /// Puts blood of density `density` (0..=255) owned by `lesion` at sample `i`.
    pub fn bleed(&mut self, i: usize, density: u8, lesion: u8) {
        self.blood[i] = density;
        self.lesion[i] = lesion;
    }
}

/// The phantom averaged onto the output grid.
pub(crate) struct Coarse {
    /// Mean HU over each voxel's sub-samples (before scanner effects).
    pub hu: Array3<f32>,
    /// Sum of the sub-samples' blood densities (0..=255 each).
    pub blood_sum: Array3<u32>,
    /// The lesion holding most of each voxel's blood (0 = none).
    pub lesion: Array3<u8>,
    pub sub_samples: usize,
}

impl Coarse {
    /// Label rule: the voxel's blood fraction is at least 0.5.
    pub fn is_blood(&self, blood_sum: u32) -> bool {
        is_blood(blood_sum, self.sub_samples)
    }
}

/// `sum / (255 · n) ≥ 0.5`, in integers so that every path gives the same answer.
pub(crate) fn is_blood(blood_sum: u32, sub_samples: usize) -> bool {
    2 * blood_sum as u64 >= 255 * sub_samples as u64
}

/// Averages the fine phantom down. HU of a sample: `(1 − b)·class_hu + b·lesion_hu` with blood
/// density `b`; `lesion_hu[k]` is lesion `k`'s blood HU (index 0 unused).
pub(crate) fn downsample(fine: &Fine, class_hu: &[f32; 256], lesion_hu: &[f32]) -> Coarse {
    let g = fine.grid;
    let [nz, ny, nx] = g.shape;
    let [kz, ky, kx] = g.factor;
    let fs = g.fine_shape();
    let n_sub = g.sub_samples();
    let mut hu = Array3::<f32>::zeros((nz, ny, nx));
    let mut blood_sum = Array3::<u32>::zeros((nz, ny, nx));
    let mut lesion = Array3::<u8>::zeros((nz, ny, nx));
    let hu_s = hu.as_slice_mut().expect("fresh arrays are contiguous");
    let bs_s = blood_sum
        .as_slice_mut()
        .expect("fresh arrays are contiguous");
    let le_s = lesion.as_slice_mut().expect("fresh arrays are contiguous");
    hu_s.par_chunks_mut(ny * nx)
        .zip(bs_s.par_chunks_mut(ny * nx))
        .zip(le_s.par_chunks_mut(ny * nx))
        .enumerate()
        .for_each(|(cz, ((hu_row, bs_row), le_row))| {
            for cy in 0..ny {
                for cx in 0..nx {
                    let mut sum_hu = 0.0f64;
                    let mut sum_b = 0u32;
                    // Blood per owning lesion; a voxel rarely holds more than two lesions.
                    let mut owners: [(u8, u32); 4] = [(0, 0); 4];
                    for fz in cz * kz..(cz + 1) * kz {
                        for fy in cy * ky..(cy + 1) * ky {
                            let row = (fz * fs[1] + fy) * fs[2];
                            for fx in cx * kx..(cx + 1) * kx {
                                let i = row + fx;
                                let base = class_hu[fine.class[i] as usize];
                                let b = fine.blood[i];
                                if b == 0 {
                                    sum_hu += base as f64;
                                    continue;
                                }
                                let id = fine.lesion[i];
                                let w = b as f32 / 255.0;
                                sum_hu += ((1.0 - w) * base + w * lesion_hu[id as usize]) as f64;
                                sum_b += b as u32;
                                if let Some(slot) =
                                    owners.iter_mut().find(|o| o.0 == id || o.1 == 0)
                                {
                                    slot.0 = id;
                                    slot.1 += b as u32;
                                }
                            }
                        }
                    }
                    let j = cy * nx + cx;
                    hu_row[j] = (sum_hu / n_sub as f64) as f32;
                    bs_row[j] = sum_b;
                    // Largest share wins; ties go to the lower id so the result is order-free.
                    le_row[j] = owners
                        .iter()
                        .filter(|o| o.1 > 0)
                        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
                        .map_or(0, |o| o.0);
                }
            }
        });
    Coarse {
        hu,
        blood_sum,
        lesion,
        sub_samples: n_sub,
    }
}

#[cfg(test)]
mod tests {
    use super::super::shapes::Ellipsoid;
    use super::*;

    #[test]
    fn grid_positions_are_consistent() {
        let g = Grid::new([4, 6, 8], [6.0, 3.4, 3.4]);
        assert_eq!(g.factor, [4, 4, 4]);
        // The mean of a voxel's sub-sample positions is the voxel centre.
        let c = g.coarse_pos(1, 2, 3);
        let mut m = v3(0.0, 0.0, 0.0);
        for fz in 4..8 {
            for fy in 8..12 {
                for fx in 12..16 {
                    m = m + g.fine_pos(fz, fy, fx) * (1.0 / 64.0);
                    let i = (fz * g.fine_shape()[1] + fy) * g.fine_shape()[2] + fx;
                    assert_eq!(g.coarse_of_fine(i), (6 + 2) * 8 + 3);
                    assert_eq!(g.fine_pos_of(i), g.fine_pos(fz, fy, fx));
                }
            }
        }
        assert!((m - c).norm() < 1e-9, "{m:?} vs {c:?}");
        // A short stack is centred above the brain centre.
        assert!((g.coarse_pos(0, 0, 0).z + g.coarse_pos(3, 0, 0).z) / 2.0 - 10.0 < 1e-9);
    }

    #[test]
    fn for_each_fine_visits_exactly_the_box() {
        let g = Grid::new([4, 8, 8], [6.0, 3.4, 3.4]);
        let b = Aabb {
            lo: v3(-3.0, -2.0, 0.0),
            hi: v3(3.0, 2.0, 5.0),
        };
        let mut n = 0;
        let mut all_inside = true;
        g.for_each_fine(b, |i, p| {
            n += 1;
            all_inside &= p.x >= b.lo.x && p.x <= b.hi.x && p.y >= b.lo.y && p.y <= b.hi.y;
            all_inside &= p.z >= b.lo.z && p.z <= b.hi.z && g.fine_pos_of(i) == p;
        });
        assert!(all_inside);
        let mut brute = 0;
        for i in 0..g.fine_len() {
            let p = g.fine_pos_of(i);
            if p.x >= b.lo.x
                && p.x <= b.hi.x
                && p.y >= b.lo.y
                && p.y <= b.hi.y
                && p.z >= b.lo.z
                && p.z <= b.hi.z
            {
                brute += 1;
            }
        }
        assert_eq!(n, brute);
        assert!(n > 0);
    }

    #[test]
    fn downsampling_keeps_fractions() {
        // A sphere of blood (density 1, HU 70) in CSF (HU 10): the mean HU of the volume and the
        // blood volume are preserved by averaging, and the label follows the fraction rule.
        let g = Grid::new([6, 12, 12], [6.0, 3.4, 3.4]);
        let mut fine = Fine::new(g);
        let mut class_hu = [0.0f32; 256];
        class_hu[1] = 10.0;
        fine.class.fill(1);
        let ball = Ellipsoid::aligned(g.centre, v3(9.0, 9.0, 9.0));
        let mut n_blood = 0u64;
        g.for_each_fine(ball.bbox(), |i, p| {
            if ball.contains(p) {
                fine.blood[i] = 255;
                fine.lesion[i] = 1;
                n_blood += 1;
            }
        });
        let c = downsample(&fine, &class_hu, &[0.0, 70.0]);
        let fine_mean = (n_blood as f64 * 70.0 + (g.fine_len() as u64 - n_blood) as f64 * 10.0)
            / g.fine_len() as f64;
        let coarse_mean = c.hu.iter().map(|&v| v as f64).sum::<f64>() / g.coarse_len() as f64;
        assert!(
            (fine_mean - coarse_mean).abs() < 1e-3,
            "{fine_mean} vs {coarse_mean}"
        );
        assert_eq!(
            c.blood_sum.iter().map(|&b| b as u64).sum::<u64>(),
            n_blood * 255
        );
        // Partial voxels: some voxels hold blood but are not labelled.
        let partial = c
            .blood_sum
            .iter()
            .filter(|&&b| b > 0 && !c.is_blood(b))
            .count();
        let labelled = c.blood_sum.iter().filter(|&&b| c.is_blood(b)).count();
        assert!(partial > 0 && labelled > 0);
        for (&b, &l) in c.blood_sum.iter().zip(c.lesion.iter()) {
            assert_eq!(b > 0, l == 1);
        }
    }
}
