//! Surface distances between two masks: HD95 and ASSD in mm, on an exact anisotropic EDT.
//!
//! Definitions follow MONAI (`compute_hausdorff_distance(percentile=95)` and
//! `compute_average_surface_distance(symmetric=True)`):
//! - the surface of a mask is its foreground voxels with at least one 6-connected background
//!   neighbour; voxels outside the array count as background, so a mask touching the border has
//!   a surface there (scipy's `binary_erosion` with `border_value=0`, which MONAI uses);
//! - the directed distance from A to B is, for every surface voxel of A, the distance in mm to
//!   the nearest surface voxel of B (voxel centres);
//! - HD95 is the larger of the two directed 95th percentiles (numpy's linear interpolation);
//!   ASSD is the mean over both directed distance lists pooled;
//! - either mask empty gives NaN for both.
//!
//! The distance transform is exact: Felzenszwalb & Huttenlocher's separable squared EDT (the
//! lower envelope of parabolas, one 1D pass per axis), each axis weighted by its voxel size.
//! Work is limited to the bounding box of the union of both masks, which changes nothing: every
//! surface voxel and every nearest surface voxel lies inside it, and the box is tight, so the
//! voxels just outside it are background for both masks.

use ndarray::{Array3, ArrayView3, Axis, s};

use super::{MetricsError, check_pair};

/// Symmetric surface distances between a prediction and a truth mask, in mm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SurfaceDistances {
    /// Max of the two directed 95th-percentile surface distances; NaN if a mask is empty.
    pub hd95_mm: f64,
    /// Mean of both directed surface distance lists pooled; NaN if a mask is empty.
    pub assd_mm: f64,
}

/// The surface of a mask (non-zero = foreground): foreground voxels with a 6-connected
/// background neighbour, voxels outside the array being background.
pub fn surface(mask: ArrayView3<u8>) -> Array3<bool> {
    let (nz, ny, nx) = mask.dim();
    let fg = |z: usize, y: usize, x: usize| mask[[z, y, x]] != 0;
    Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| {
        fg(z, y, x)
            && (z == 0
                || z + 1 == nz
                || y == 0
                || y + 1 == ny
                || x == 0
                || x + 1 == nx
                || !fg(z - 1, y, x)
                || !fg(z + 1, y, x)
                || !fg(z, y - 1, x)
                || !fg(z, y + 1, x)
                || !fg(z, y, x - 1)
                || !fg(z, y, x + 1))
    })
}

/// Squared Euclidean distance in mm² from every voxel centre to the nearest `true` voxel, with
/// voxel size `spacing` along `[z, y, x]`; infinity everywhere if there is no `true` voxel.
///
/// Exact (up to rounding): one Felzenszwalb–Huttenlocher pass per axis.
pub fn squared_edt(sites: ArrayView3<bool>, spacing: [f64; 3]) -> Array3<f64> {
    let mut d = sites.mapv(|s| if s { 0.0 } else { f64::INFINITY });
    let mut scratch = Envelope::default();
    // x first: it is the contiguous axis and has the most lanes without any site to skip.
    for axis in [2, 1, 0] {
        let h = spacing[axis];
        for mut lane in d.lanes_mut(Axis(axis)) {
            scratch.f.clear();
            scratch.f.extend(lane.iter().copied());
            if scratch.transform(h) {
                lane.iter_mut().zip(&scratch.out).for_each(|(d, &o)| *d = o);
            }
        }
    }
    d
}

/// Scratch buffers for the 1D lower envelope, reused across lanes.
#[derive(Default)]
struct Envelope {
    /// Input: squared distances so far (0 at sites, infinity where unknown).
    f: Vec<f64>,
    /// Output of the last `transform`.
    out: Vec<f64>,
    /// Indices of the parabolas in the lower envelope.
    v: Vec<usize>,
    /// `z[k]`: where parabola `v[k]` starts to be the lowest (mm).
    z: Vec<f64>,
}

impl Envelope {
    /// `out[i] = min_q (i·h − q·h)² + f[q]`. Returns false (and leaves `out` stale) when every
    /// `f` is infinite, i.e. the lane has nothing to propagate.
    fn transform(&mut self, h: f64) -> bool {
        let (f, v, z) = (&self.f, &mut self.v, &mut self.z);
        v.clear();
        z.clear();
        for (q, &fq) in f.iter().enumerate() {
            // Infinite parabolas are never the lowest; leaving them out also avoids inf − inf.
            if fq == f64::INFINITY {
                continue;
            }
            let xq = q as f64 * h;
            let yq = fq + xq * xq;
            // Pop parabolas that the new one hides; the first (z = −inf) is never popped.
            let s = loop {
                let Some(&p) = v.last() else {
                    break f64::NEG_INFINITY;
                };
                let xp = p as f64 * h;
                let s = (yq - (f[p] + xp * xp)) / (2.0 * (xq - xp));
                if s > z[z.len() - 1] {
                    break s;
                }
                v.pop();
                z.pop();
            };
            v.push(q);
            z.push(s);
        }
        if v.is_empty() {
            return false;
        }
        self.out.clear();
        let mut k = 0;
        for i in 0..f.len() {
            let x = i as f64 * h;
            while k + 1 < v.len() && z[k + 1] < x {
                k += 1;
            }
            let dx = x - v[k] as f64 * h;
            self.out.push(dx * dx + f[v[k]]);
        }
        true
    }
}

/// The `q`-th percentile (0–100) of sorted values with numpy's default linear interpolation;
/// NaN for an empty slice.
pub fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// HD95 and ASSD between two masks on the same grid (non-zero = foreground).
pub fn surface_distances(
    pred: ArrayView3<u8>,
    truth: ArrayView3<u8>,
    spacing: [f64; 3],
) -> Result<SurfaceDistances, MetricsError> {
    check_pair(pred.dim(), truth.dim(), spacing)?;
    let undefined = SurfaceDistances {
        hd95_mm: f64::NAN,
        assd_mm: f64::NAN,
    };
    let Some([z, y, x]) = union_bbox(pred, truth) else {
        return Ok(undefined);
    };
    let pred = pred.slice(s![z.0..z.1, y.0..y.1, x.0..x.1]);
    let truth = truth.slice(s![z.0..z.1, y.0..y.1, x.0..x.1]);
    let pred_surface = surface(pred);
    let truth_surface = surface(truth);
    // A non-empty mask always has a surface, so an empty list means an empty mask.
    let mut to_truth = sampled_distances(&pred_surface, truth_surface.view(), spacing);
    let mut to_pred = sampled_distances(&truth_surface, pred_surface.view(), spacing);
    if to_truth.is_empty() || to_pred.is_empty() {
        return Ok(undefined);
    }
    to_truth.sort_unstable_by(f64::total_cmp);
    to_pred.sort_unstable_by(f64::total_cmp);
    let hd95_mm = percentile_sorted(&to_truth, 95.0).max(percentile_sorted(&to_pred, 95.0));
    let n = (to_truth.len() + to_pred.len()) as f64;
    let assd_mm = (to_truth.iter().sum::<f64>() + to_pred.iter().sum::<f64>()) / n;
    Ok(SurfaceDistances { hd95_mm, assd_mm })
}

/// Distances (mm) from each voxel of `from` to the nearest voxel of `to`; empty if either is.
fn sampled_distances(from: &Array3<bool>, to: ArrayView3<bool>, spacing: [f64; 3]) -> Vec<f64> {
    if !from.iter().any(|&b| b) || !to.iter().any(|&b| b) {
        return Vec::new();
    }
    let d2 = squared_edt(to, spacing);
    from.iter()
        .zip(d2.iter())
        .filter(|(f, _)| **f)
        .map(|(_, d)| d.sqrt())
        .collect()
}

/// Half-open `[start, end)` ranges along z, y, x of the voxels set in either mask.
fn union_bbox(a: ArrayView3<u8>, b: ArrayView3<u8>) -> Option<[(usize, usize); 3]> {
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    ndarray::Zip::indexed(a)
        .and(b)
        .for_each(|(z, y, x), &p, &t| {
            if p != 0 || t != 0 {
                for (k, i) in [z, y, x].into_iter().enumerate() {
                    lo[k] = lo[k].min(i);
                    hi[k] = hi[k].max(i + 1);
                }
            }
        });
    (lo[0] != usize::MAX).then(|| [(lo[0], hi[0]), (lo[1], hi[1]), (lo[2], hi[2])])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Squared distance to the nearest site by trying every site.
    fn brute_force_sq(sites: &Array3<bool>, spacing: [f64; 3]) -> Array3<f64> {
        let list: Vec<[usize; 3]> = sites
            .indexed_iter()
            .filter(|(_, s)| **s)
            .map(|((z, y, x), _)| [z, y, x])
            .collect();
        Array3::from_shape_fn(sites.dim(), |(z, y, x)| {
            list.iter()
                .map(|p| {
                    (0..3)
                        .map(|k| ((p[k] as f64 - [z, y, x][k] as f64) * spacing[k]).powi(2))
                        .sum::<f64>()
                })
                .fold(f64::INFINITY, f64::min)
        })
    }

    #[test]
    fn edt_matches_brute_force_on_random_anisotropic_masks() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let spacings = [
            [5.0, 0.5, 0.5],
            [2.5, 0.7, 0.43],
            [0.3, 1.0, 3.0],
            [1.0, 1.0, 1.0],
        ];
        for (trial, &spacing) in spacings.iter().cycle().take(24).enumerate() {
            let dims = (
                rng.random_range(1..7),
                rng.random_range(1..9),
                rng.random_range(1..10),
            );
            // From almost empty to almost full.
            let density = [0.02, 0.1, 0.5, 0.9][trial % 4];
            let sites = Array3::from_shape_fn(dims, |_| rng.random_bool(density));
            let fast = squared_edt(sites.view(), spacing);
            let slow = brute_force_sq(&sites, spacing);
            for (f, s) in fast.iter().zip(slow.iter()) {
                assert!(
                    (f == s) || (f - s).abs() <= 1e-9 * s.max(1.0),
                    "trial {trial} {dims:?} {spacing:?}: {f} vs {s}"
                );
            }
        }
    }

    #[test]
    fn edt_without_sites_is_infinite() {
        let d = squared_edt(Array3::from_elem((2, 3, 4), false).view(), [1.0, 1.0, 1.0]);
        assert!(d.iter().all(|v| *v == f64::INFINITY));
    }

    #[test]
    fn surface_of_a_box_is_its_shell_and_border_counts() {
        let mut m = Array3::<u8>::zeros((5, 5, 5));
        m.slice_mut(s![1..4, 1..4, 1..4]).fill(1);
        let surf = surface(m.view());
        assert_eq!(surf.iter().filter(|b| **b).count(), 27 - 1);
        assert!(!surf[[2, 2, 2]]);
        // A full array is all surface on its faces: outside counts as background.
        let full = Array3::<u8>::ones((3, 3, 3));
        assert_eq!(surface(full.view()).iter().filter(|b| **b).count(), 26);
    }

    #[test]
    fn percentile_is_numpy_linear() {
        // numpy.percentile([1, 2, 3, 4, 10], 95) == 8.8
        assert!((percentile_sorted(&[1.0, 2.0, 3.0, 4.0, 10.0], 95.0) - 8.8).abs() < 1e-12);
        assert_eq!(percentile_sorted(&[3.0], 95.0), 3.0);
        assert!(percentile_sorted(&[], 95.0).is_nan());
    }

    /// A 4×10×10 box at `origin` in a 12×24×24 grid.
    fn box_at(origin: [usize; 3]) -> Array3<u8> {
        let mut m = Array3::<u8>::zeros((12, 24, 24));
        let [z, y, x] = origin;
        m.slice_mut(s![z..z + 4, y..y + 10, x..x + 10]).fill(1);
        m
    }

    #[test]
    fn hd95_of_a_shifted_box_is_the_shift_in_mm() {
        let spacing = [5.0, 0.5, 0.5];
        let a = box_at([4, 7, 7]);
        for (axis, shift) in [(0usize, 1usize), (0, 2), (1, 3), (2, 2)] {
            let mut origin = [4, 7, 7];
            origin[axis] += shift;
            let b = box_at(origin);
            let d = surface_distances(b.view(), a.view(), spacing).unwrap();
            let expected = shift as f64 * spacing[axis];
            assert!(
                (d.hd95_mm - expected).abs() < 1e-12,
                "axis {axis}: {} mm",
                d.hd95_mm
            );
            assert!(
                d.assd_mm > 0.0 && d.assd_mm < expected,
                "axis {axis}: {}",
                d.assd_mm
            );
            let swapped = surface_distances(a.view(), b.view(), spacing).unwrap();
            assert_eq!(swapped, d, "symmetric");
        }
        let same = surface_distances(a.view(), a.view(), spacing).unwrap();
        assert_eq!((same.hd95_mm, same.assd_mm), (0.0, 0.0));
    }

    #[test]
    fn assd_by_hand_on_a_line() {
        // One voxel vs two voxels 1 and 2 slices away along z (5 mm): pred→truth distances
        // {5}, truth→pred {5, 10}; ASSD = 20/3, HD95 = max(5, 5 + 0.95·5) = 9.75.
        let mut pred = Array3::<u8>::zeros((4, 1, 1));
        let mut truth = Array3::<u8>::zeros((4, 1, 1));
        pred[[0, 0, 0]] = 1;
        truth[[1, 0, 0]] = 1;
        truth[[2, 0, 0]] = 1;
        let d = surface_distances(pred.view(), truth.view(), [5.0, 1.0, 1.0]).unwrap();
        assert!((d.assd_mm - 20.0 / 3.0).abs() < 1e-12, "{}", d.assd_mm);
        assert!((d.hd95_mm - 9.75).abs() < 1e-12, "{}", d.hd95_mm);
    }

    #[test]
    fn empty_masks_give_nan() {
        let a = box_at([4, 7, 7]);
        let empty = Array3::<u8>::zeros((12, 24, 24));
        for (p, t) in [(&a, &empty), (&empty, &a), (&empty, &empty)] {
            let d = surface_distances(p.view(), t.view(), [1.0; 3]).unwrap();
            assert!(d.hd95_mm.is_nan() && d.assd_mm.is_nan());
        }
    }

    #[test]
    fn rejects_other_grids_and_bad_spacing() {
        let a = Array3::<u8>::zeros((2, 3, 4));
        let b = Array3::<u8>::zeros((2, 4, 3));
        let err = surface_distances(a.view(), b.view(), [1.0; 3]).unwrap_err();
        assert!(matches!(err, MetricsError::ShapeMismatch { .. }), "{err}");
        let err = surface_distances(a.view(), a.view(), [1.0, 0.0, 1.0]).unwrap_err();
        assert!(matches!(err, MetricsError::InvalidSpacing { .. }), "{err}");
    }

    /// Voxels of the ellipsoid with centre `c` (voxels) and radii `r` (mm).
    fn ellipsoid(
        shape: (usize, usize, usize),
        sp: [f64; 3],
        c: [f64; 3],
        r: [f64; 3],
    ) -> Array3<u8> {
        Array3::from_shape_fn(shape, |(z, y, x)| {
            let a = (z as f64 - c[0]) * sp[0] / r[0];
            let b = (y as f64 - c[1]) * sp[1] / r[1];
            let d = (x as f64 - c[2]) * sp[2] / r[2];
            u8::from(a * a + b * b + d * d <= 1.0)
        })
    }

    #[test]
    fn matches_monai_definition_computed_with_scipy() {
        // The same masks in Python (same formula), then MONAI's recipe with scipy:
        //   edges = lambda m: binary_erosion(m) ^ m
        //   d_pt = distance_transform_edt(~edges(t), sampling=sp)[edges(p)]; d_tp likewise
        //   hd95 = max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))
        //     == 2.8215581094984663
        //   assd = np.concatenate([d_pt, d_tp]).mean() == 1.1497360250101363
        let (shape, sp) = ((12, 20, 22), [2.5, 0.7, 0.45]);
        let mut pred = ellipsoid(shape, sp, [5.0, 9.0, 10.0], [11.0, 5.5, 4.0]);
        pred |= &ellipsoid(shape, sp, [9.0, 4.0, 4.0], [4.0, 2.0, 2.0]);
        let truth = ellipsoid(shape, sp, [6.0, 10.5, 11.5], [12.0, 5.0, 4.5]);
        let count = |m: &Array3<u8>| m.iter().filter(|v| **v != 0).count();
        assert_eq!(
            (count(&pred), count(&truth)),
            (1374, 1440),
            "same masks as in Python"
        );
        let d = surface_distances(pred.view(), truth.view(), sp).unwrap();
        assert!(
            (d.hd95_mm - 2.8215581094984663).abs() < 1e-9,
            "{}",
            d.hd95_mm
        );
        assert!(
            (d.assd_mm - 1.1497360250101363).abs() < 1e-9,
            "{}",
            d.assd_mm
        );
    }
}
