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
        Volume { data, spacing, header: None }
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
}
