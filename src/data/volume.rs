//! A 3D scan or mask on its grid.

use ndarray::Array3;

/// A volume in C order with axes `[z, y, x]`, as NIfTI's `[x, y, z]` Fortran array reversed.
#[derive(Debug, Clone)]
pub struct Volume<T> {
    /// Voxel values, axes `[z, y, x]`.
    pub data: Array3<T>,
    /// Voxel size in mm along `[z, y, x]` (all positive).
    pub spacing: [f64; 3],
    /// The header the volume was read from, if any: writing with it keeps the affine.
    pub header: Option<Box<nifti::NiftiHeader>>,
}

impl<T> Volume<T> {
    pub fn new(data: Array3<T>, spacing: [f64; 3]) -> Self {
        Volume {
            data,
            spacing,
            header: None,
        }
    }

    /// `[z, y, x]` sizes.
    pub fn shape(&self) -> [usize; 3] {
        let s = self.data.shape();
        [s[0], s[1], s[2]]
    }

    /// Volume of one voxel in mL (mm³ / 1000).
    pub fn voxel_ml(&self) -> f64 {
        self.spacing.iter().product::<f64>().abs() / 1000.0
    }

    /// The same grid (spacing and header) with every voxel mapped by `f`: turns HU in f32 into
    /// i16 for writing, or a probability map into a mask, without losing the source affine.
    pub fn map<U>(&self, f: impl FnMut(&T) -> U) -> Volume<U> {
        Volume {
            data: self.data.map(f),
            spacing: self.spacing,
            header: self.header.clone(),
        }
    }

    /// A volume with other voxel values on this grid (same spacing and header).
    pub fn with_data<U>(&self, data: Array3<U>) -> Volume<U> {
        Volume {
            data,
            spacing: self.spacing,
            header: self.header.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_keeps_grid_and_header() {
        let mut v = Volume::new(Array3::from_elem((2, 3, 4), 1.6f32), [5.0, 0.5, 0.4]);
        v.header = Some(Box::default());
        let m = v.map(|x| x.round() as i16);
        assert_eq!(m.shape(), [2, 3, 4]);
        assert_eq!(m.spacing, [5.0, 0.5, 0.4]);
        assert!(m.header.is_some());
        assert!(m.data.iter().all(|&x| x == 2));
        assert!((m.voxel_ml() - 0.001).abs() < 1e-12);
    }
}
