//! The threshold baseline the phantoms are calibrated against: blood = intracranial ∧ HU in
//! [50, 90]. It is the floor every learned model must beat, and the check that the phantoms are
//! neither trivial (Dice near 1) nor hopeless (near 0): it should score 0.3–0.6.
//!
//! The intracranial mask comes from the image alone, per axial slice: voxels below 300 HU that
//! the outside cannot reach without crossing bone (a flood fill from the slice border), eroded
//! by 3 mm in-plane to drop the partial-volume ring of the inner table.

use std::collections::VecDeque;

use ndarray::{Array3, ArrayView2, Axis};

use crate::data::Volume;

/// HU window called blood.
pub const BLOOD_HU: (i16, i16) = (50, 90);
/// HU at and above which a voxel counts as bone.
pub const BONE_HU: i16 = 300;
/// In-plane erosion of the intracranial mask, mm.
pub const ERODE_MM: f64 = 3.0;

/// Per-slice intracranial mask of a head CT (`true` inside the skull).
pub fn intracranial_mask(image: &Volume<i16>) -> Array3<bool> {
    let [nz, ny, nx] = image.shape();
    let mut mask = Array3::from_elem((nz, ny, nx), false);
    let rx = (ERODE_MM / image.spacing[2]).ceil() as usize;
    let ry = (ERODE_MM / image.spacing[1]).ceil() as usize;
    for (z, slice) in image.data.axis_iter(Axis(0)).enumerate() {
        let inside = enclosed(slice);
        let eroded = erode(&inside, ny, nx, ry, rx);
        for y in 0..ny {
            for x in 0..nx {
                mask[[z, y, x]] = eroded[y * nx + x];
            }
        }
    }
    mask
}

/// Non-bone voxels the slice border cannot reach through non-bone (4-connected).
fn enclosed(slice: ArrayView2<i16>) -> Vec<bool> {
    let (ny, nx) = slice.dim();
    let soft = |y: usize, x: usize| slice[[y, x]] < BONE_HU;
    let mut outside = vec![false; ny * nx];
    let mut queue = VecDeque::new();
    for y in 0..ny {
        for x in 0..nx {
            if (y == 0 || x == 0 || y == ny - 1 || x == nx - 1) && soft(y, x) {
                outside[y * nx + x] = true;
                queue.push_back((y, x));
            }
        }
    }
    while let Some((y, x)) = queue.pop_front() {
        let mut visit = |yy: usize, xx: usize| {
            if soft(yy, xx) && !outside[yy * nx + xx] {
                outside[yy * nx + xx] = true;
                queue.push_back((yy, xx));
            }
        };
        if y > 0 {
            visit(y - 1, x);
        }
        if y + 1 < ny {
            visit(y + 1, x);
        }
        if x > 0 {
            visit(y, x - 1);
        }
        if x + 1 < nx {
            visit(y, x + 1);
        }
    }
    (0..ny * nx)
        .map(|i| !outside[i] && soft(i / nx, i % nx))
        .collect()
}

/// Box erosion by `ry`, `rx` voxels (outside the slice counts as not in the mask).
fn erode(m: &[bool], ny: usize, nx: usize, ry: usize, rx: usize) -> Vec<bool> {
    let mut rows = vec![false; ny * nx];
    for y in 0..ny {
        for x in 0..nx {
            rows[y * nx + x] = x >= rx && x + rx < nx && (x - rx..=x + rx).all(|xx| m[y * nx + xx]);
        }
    }
    let mut out = vec![false; ny * nx];
    for y in 0..ny {
        for x in 0..nx {
            out[y * nx + x] =
                y >= ry && y + ry < ny && (y - ry..=y + ry).all(|yy| rows[yy * nx + x]);
        }
    }
    out
}

/// The baseline segmentation: 1 where intracranial and `BLOOD_HU.0 <= HU <= BLOOD_HU.1`.
pub fn threshold_baseline(image: &Volume<i16>) -> Volume<u8> {
    let mask = intracranial_mask(image);
    let mut data = Array3::<u8>::zeros(image.data.raw_dim());
    ndarray::Zip::from(&mut data)
        .and(&image.data)
        .and(&mask)
        .for_each(|o, &v, &m| {
            *o = u8::from(m && (BLOOD_HU.0..=BLOOD_HU.1).contains(&v));
        });
    Volume::new(data, image.spacing)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1-slice "head": bone ring (1000 HU) around brain (30 HU) with a blood spot (70 HU),
    /// and a 70 HU spot outside the skull.
    fn ring() -> Volume<i16> {
        let n = 32;
        let data = Array3::from_shape_fn((1, n, n), |(_, y, x)| {
            let r = ((y as f64 - 15.5).powi(2) + (x as f64 - 15.5).powi(2)).sqrt();
            if (12.0..14.0).contains(&r) {
                1000
            } else if r < 12.0 && (y, x) == (15, 15) {
                70
            } else if r < 12.0 {
                30
            } else if (y, x) == (1, 1) {
                70
            } else {
                -1000
            }
        });
        Volume::new(data, [5.0, 1.0, 1.0])
    }

    #[test]
    fn mask_is_the_inside_of_the_skull_minus_a_rim() {
        let v = ring();
        let m = intracranial_mask(&v);
        assert!(m[[0, 15, 15]]);
        assert!(!m[[0, 1, 1]], "outside the skull");
        assert!(!m[[0, 15, 3]], "on the bone");
        // r ≈ 11.5 is inside the skull but within 3 mm of the bone: eroded away.
        assert!(!m[[0, 15, 27]]);
        let b = threshold_baseline(&v);
        assert_eq!(b.data.sum(), 1);
        assert_eq!(b.data[[0, 15, 15]], 1);
    }

    #[test]
    fn a_broken_skull_leaks() {
        let mut v = ring();
        // Cut the ring: the outside floods in and nothing is intracranial any more.
        for x in 0..32 {
            v.data[[0, 15, x]] = v.data[[0, 15, x]].min(30);
        }
        for y in 0..32 {
            for x in 0..32 {
                if (14..=16).contains(&y) {
                    v.data[[0, y, x]] = v.data[[0, y, x]].min(30);
                }
            }
        }
        assert!(!intracranial_mask(&v).iter().any(|&m| m));
    }
}
