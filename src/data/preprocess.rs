//! From HU volumes to network inputs: intensity windows as channels, 2D views, and padding to
//! the network's multiple (cropped back after prediction).
//!
//! Key types: [`HuWindow`] (level/width, named presets), [`View`] (axial, coronal, sagittal),
//! [`Pad2`] (how a slice was padded, to crop the prediction back).
//!
//! Design:
//! - A window maps HU linearly to `[0, 1]` over `[level - width/2, level + width/2]` and clips.
//!   Several windows stack as channels (brain, subdural, bone), in the order given.
//! - Views slice the `[z, y, x]` volume along one axis: axial = a z slice (`[y, x]`), coronal =
//!   a y slice (`[z, x]`), sagittal = an x slice (`[z, y]`).
//! - No resampling: every view keeps the native spacing. For coronal and sagittal views of
//!   anisotropic CT (5 mm slices, 0.45 mm pixels) that gives short, wide slices (e.g. 40 × 512)
//!   whose pixels are not square; they are only padded (centred, with 0 = below the window) up
//!   to a multiple of `2^(levels-1)` so the Unet's poolings divide evenly. Predictions are made
//!   on the padded slice and cropped back with the same [`Pad2`], so volumes and metrics stay
//!   on the native label grid.

use std::fmt;
use std::str::FromStr;

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut2, Axis, s};
use serde::{Deserialize, Serialize};

/// A bad window or view description.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error(
        "invalid HU window `{0}`: expected brain, subdural, bone, or L<level>/W<width> with a \
         positive width (e.g. L40/W80)"
    )]
    Window(String),
    #[error("invalid view `{0}`: expected axial, coronal or sagittal")]
    View(String),
}

/// An intensity window: HU in `[level - width/2, level + width/2]` map linearly to `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HuWindow {
    pub level: f32,
    pub width: f32,
}

impl HuWindow {
    /// Brain window L40/W80: the default input, where blood (50–90 HU) is bright.
    pub const BRAIN: HuWindow = HuWindow {
        level: 40.0,
        width: 80.0,
    };
    /// Subdural window L75/W215: separates thin extra-axial blood from the skull.
    pub const SUBDURAL: HuWindow = HuWindow {
        level: 75.0,
        width: 215.0,
    };
    /// Bone window L600/W2800.
    pub const BONE: HuWindow = HuWindow {
        level: 600.0,
        width: 2800.0,
    };

    const PRESETS: [(&'static str, HuWindow); 3] = [
        ("brain", Self::BRAIN),
        ("subdural", Self::SUBDURAL),
        ("bone", Self::BONE),
    ];

    /// A custom window; the width must be positive and both finite.
    pub fn new(level: f32, width: f32) -> Result<Self, PreprocessError> {
        if level.is_finite() && width.is_finite() && width > 0.0 {
            Ok(HuWindow { level, width })
        } else {
            Err(PreprocessError::Window(format!("L{level}/W{width}")))
        }
    }

    /// The windowed value of one voxel, in `[0, 1]`.
    #[inline]
    pub fn apply(&self, hu: f32) -> f32 {
        ((hu - (self.level - 0.5 * self.width)) / self.width).clamp(0.0, 1.0)
    }
}

impl Default for HuWindow {
    fn default() -> Self {
        HuWindow::BRAIN
    }
}

impl FromStr for HuWindow {
    type Err = PreprocessError;

    /// `brain`, `subdural`, `bone`, or `L<level>/W<width>` (also `<level>/<width>`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Some((_, w)) = Self::PRESETS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(t))
        {
            return Ok(*w);
        }
        let err = || PreprocessError::Window(s.to_string());
        let (l, w) = t.split_once('/').ok_or_else(err)?;
        let l = l.trim();
        let w = w.trim();
        let l = l.strip_prefix(['L', 'l']).unwrap_or(l);
        let w = w.strip_prefix(['W', 'w']).unwrap_or(w);
        let level: f32 = l.trim().parse().map_err(|_| err())?;
        let width: f32 = w.trim().parse().map_err(|_| err())?;
        HuWindow::new(level, width).map_err(|_| err())
    }
}

impl fmt::Display for HuWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Self::PRESETS.iter().find(|(_, w)| w == self) {
            Some((name, _)) => f.write_str(name),
            None => write!(f, "L{}/W{}", self.level, self.width),
        }
    }
}

impl TryFrom<String> for HuWindow {
    type Error = PreprocessError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<HuWindow> for String {
    fn from(w: HuWindow) -> String {
        w.to_string()
    }
}

/// Windows a 2D HU slice into `[C, H, W]` channels, one per window.
pub fn window_slice(hu: ArrayView2<'_, f32>, windows: &[HuWindow]) -> Array3<f32> {
    let (h, w) = hu.dim();
    let mut out = Array3::zeros((windows.len(), h, w));
    for (mut ch, win) in out.outer_iter_mut().zip(windows) {
        ndarray::Zip::from(&mut ch)
            .and(&hu)
            .for_each(|o, &v| *o = win.apply(v));
    }
    out
}

/// The orientation of the 2D slices a model sees.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum View {
    /// z slices, `[y, x]`: the plane CT is acquired in.
    #[default]
    Axial,
    /// y slices, `[z, x]`.
    Coronal,
    /// x slices, `[z, y]`.
    Sagittal,
}

impl View {
    pub const ALL: [View; 3] = [View::Axial, View::Coronal, View::Sagittal];

    /// The `[z, y, x]` axis the view slices along.
    pub fn axis(self) -> usize {
        match self {
            View::Axial => 0,
            View::Coronal => 1,
            View::Sagittal => 2,
        }
    }

    /// Number of slices of a `[z, y, x]` volume.
    pub fn num_slices(self, shape: [usize; 3]) -> usize {
        shape[self.axis()]
    }

    /// `[H, W]` of one slice.
    pub fn slice_shape(self, shape: [usize; 3]) -> [usize; 2] {
        let [z, y, x] = shape;
        match self {
            View::Axial => [y, x],
            View::Coronal => [z, x],
            View::Sagittal => [z, y],
        }
    }

    /// Pixel spacing `[H, W]` in mm of a slice (native, not resampled).
    pub fn pixel_spacing(self, spacing: [f64; 3]) -> [f64; 2] {
        let [z, y, x] = spacing;
        match self {
            View::Axial => [y, x],
            View::Coronal => [z, x],
            View::Sagittal => [z, y],
        }
    }

    /// Slice `index` of a `[z, y, x]` array. Panics if `index` is out of range, like indexing.
    pub fn slice<'a, T>(self, volume: ArrayView3<'a, T>, index: usize) -> ArrayView2<'a, T> {
        volume.index_axis_move(Axis(self.axis()), index)
    }

    /// The writable slice `index`, to put a prediction back into a volume.
    pub fn slice_mut<'a, T>(self, volume: &'a mut Array3<T>, index: usize) -> ArrayViewMut2<'a, T> {
        volume.index_axis_mut(Axis(self.axis()), index)
    }

    pub fn name(self) -> &'static str {
        match self {
            View::Axial => "axial",
            View::Coronal => "coronal",
            View::Sagittal => "sagittal",
        }
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for View {
    type Err = PreprocessError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        View::ALL
            .into_iter()
            .find(|v| v.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| PreprocessError::View(s.to_string()))
    }
}

/// The size multiple a Unet with `levels` levels needs: `2^(levels-1)` (one pooling per level
/// below the top). `levels` of 0 is treated as 1.
pub fn multiple_for_levels(levels: usize) -> usize {
    1usize << levels.saturating_sub(1)
}

/// How a 2D slice was padded: centred, from `size` to `padded`, `before` rows/columns first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pad2 {
    pub size: [usize; 2],
    pub padded: [usize; 2],
    pub before: [usize; 2],
}

/// `n` rounded up to a multiple of `m` (`m` of 0 is treated as 1).
pub fn round_up(n: usize, m: usize) -> usize {
    let m = m.max(1);
    n.div_ceil(m) * m
}

impl Pad2 {
    /// Pads `size` up to the next multiple of `multiple` on each axis.
    pub fn to_multiple(size: [usize; 2], multiple: usize) -> Pad2 {
        Pad2::to_size(
            size,
            [round_up(size[0], multiple), round_up(size[1], multiple)],
        )
    }

    /// Pads `size` to `target` (each at least `size`), centred.
    pub fn to_size(size: [usize; 2], target: [usize; 2]) -> Pad2 {
        let padded = [target[0].max(size[0]), target[1].max(size[1])];
        let before = [(padded[0] - size[0]) / 2, (padded[1] - size[1]) / 2];
        Pad2 {
            size,
            padded,
            before,
        }
    }

    /// The padded copy of a `[H, W]` slice; new pixels are `fill`.
    pub fn pad<T: Clone>(&self, a: ArrayView2<'_, T>, fill: T) -> Array2<T> {
        debug_assert_eq!(a.dim(), (self.size[0], self.size[1]));
        let mut out = Array2::from_elem((self.padded[0], self.padded[1]), fill);
        self.inner_mut(out.view_mut()).assign(&a);
        out
    }

    /// The padded copy of a `[C, H, W]` stack; new pixels are `fill`.
    pub fn pad_channels<T: Clone>(&self, a: ArrayView3<'_, T>, fill: T) -> Array3<T> {
        let c = a.dim().0;
        let mut out = Array3::from_elem((c, self.padded[0], self.padded[1]), fill);
        let [b0, b1] = self.before;
        let [h, w] = self.size;
        out.slice_mut(s![.., b0..b0 + h, b1..b1 + w]).assign(&a);
        out
    }

    /// The original region of a padded `[H, W]` array (a prediction), as a view.
    pub fn crop<'a, T>(&self, a: ArrayView2<'a, T>) -> ArrayView2<'a, T> {
        let [b0, b1] = self.before;
        let [h, w] = self.size;
        a.slice_move(s![b0..b0 + h, b1..b1 + w])
    }

    fn inner_mut<'a, T>(&self, a: ArrayViewMut2<'a, T>) -> ArrayViewMut2<'a, T> {
        let [b0, b1] = self.before;
        let [h, w] = self.size;
        a.slice_move(s![b0..b0 + h, b1..b1 + w])
    }
}

/// One slice ready for the network: windowed channels `[C, H', W']`, padded to `multiple`
/// (0 outside the image), and the padding to crop the prediction back with.
pub fn prepare_slice(
    hu: ArrayView3<'_, f32>,
    view: View,
    index: usize,
    windows: &[HuWindow],
    multiple: usize,
) -> (Array3<f32>, Pad2) {
    let slice = view.slice(hu, index);
    let (h, w) = slice.dim();
    let pad = Pad2::to_multiple([h, w], multiple);
    (
        pad.pad_channels(window_slice(slice, windows).view(), 0.0),
        pad,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn windows_map_to_unit_range_and_clip() {
        let b = HuWindow::BRAIN;
        assert_eq!(b.apply(0.0), 0.0);
        assert_eq!(b.apply(-1000.0), 0.0);
        assert_eq!(b.apply(40.0), 0.5);
        assert_eq!(b.apply(60.0), 0.75);
        assert_eq!(b.apply(80.0), 1.0);
        assert_eq!(b.apply(1500.0), 1.0);
        let bone = HuWindow::BONE;
        assert!((bone.apply(600.0) - 0.5).abs() < 1e-6);
        assert!((HuWindow::SUBDURAL.apply(75.0 + 215.0 / 4.0) - 0.75).abs() < 1e-6);
    }

    #[test]
    fn windows_parse_and_print() {
        assert_eq!("brain".parse::<HuWindow>().unwrap(), HuWindow::BRAIN);
        assert_eq!(
            " Subdural ".parse::<HuWindow>().unwrap(),
            HuWindow::SUBDURAL
        );
        assert_eq!(
            "L50/W100".parse::<HuWindow>().unwrap(),
            HuWindow {
                level: 50.0,
                width: 100.0
            }
        );
        assert_eq!(
            "-20 / 350".parse::<HuWindow>().unwrap(),
            HuWindow {
                level: -20.0,
                width: 350.0
            }
        );
        for bad in ["", "lung", "L40", "L40/W0", "L40/W-5", "Lx/W80", "L40/Wnan"] {
            let e = bad.parse::<HuWindow>().unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
        }
        assert_eq!(HuWindow::BONE.to_string(), "bone");
        assert_eq!(
            HuWindow {
                level: 50.0,
                width: 100.0
            }
            .to_string(),
            "L50/W100"
        );
        // serde goes through the same strings.
        let ws: Vec<HuWindow> = serde_json::from_str(r#"["brain", "L50/W100"]"#).unwrap();
        assert_eq!(
            serde_json::to_string(&ws).unwrap(),
            r#"["brain","L50/W100"]"#
        );
        assert!(serde_json::from_str::<HuWindow>(r#""L1/W0""#).is_err());
    }

    #[test]
    fn several_windows_stack_as_channels() {
        let hu = Array2::from_shape_vec((1, 3), vec![40.0, 75.0, 600.0]).unwrap();
        let c = window_slice(
            hu.view(),
            &[HuWindow::BRAIN, HuWindow::SUBDURAL, HuWindow::BONE],
        );
        assert_eq!(c.dim(), (3, 1, 3));
        assert_eq!(c[[0, 0, 0]], 0.5);
        assert_eq!(c[[1, 0, 1]], 0.5);
        assert!((c[[2, 0, 2]] - 0.5).abs() < 1e-6);
        assert_eq!(c[[0, 0, 2]], 1.0);
    }

    #[test]
    fn views_slice_the_right_axis() {
        // Value encodes the voxel: z*100 + y*10 + x.
        let v = Array3::from_shape_fn((2, 3, 4), |(z, y, x)| (z * 100 + y * 10 + x) as i32);
        let shape = [2, 3, 4];
        assert_eq!(View::Axial.num_slices(shape), 2);
        assert_eq!(View::Coronal.num_slices(shape), 3);
        assert_eq!(View::Sagittal.num_slices(shape), 4);
        let a = View::Axial.slice(v.view(), 1);
        assert_eq!(a.dim(), (3, 4));
        assert_eq!(a[[2, 3]], 123);
        let c = View::Coronal.slice(v.view(), 2);
        assert_eq!((c.dim(), c[[1, 3]]), ((2, 4), 123));
        let s = View::Sagittal.slice(v.view(), 3);
        assert_eq!((s.dim(), s[[1, 2]]), ((2, 3), 123));
        for view in View::ALL {
            assert_eq!(view.slice(v.view(), 0).dim(), {
                let [h, w] = view.slice_shape(shape);
                (h, w)
            });
            assert_eq!(view.to_string().parse::<View>().unwrap(), view);
        }
        assert_eq!(View::Coronal.pixel_spacing([5.0, 0.5, 0.4]), [5.0, 0.4]);
        assert!("oblique".parse::<View>().is_err());
        // Writing a slice back fills the right voxels.
        let mut out = Array3::<i32>::zeros((2, 3, 4));
        View::Sagittal.slice_mut(&mut out, 3).assign(&s);
        assert_eq!(out[[1, 2, 3]], 123);
        assert_eq!(out.iter().filter(|&&x| x != 0).count(), 2 * 3);
        assert_eq!(out.index_axis(Axis(2), 3), s);
    }

    #[test]
    fn pad_to_multiple_and_crop_back_is_identity() {
        assert_eq!(multiple_for_levels(4), 8);
        assert_eq!(multiple_for_levels(1), 1);
        assert_eq!(round_up(40, 8), 40);
        assert_eq!(round_up(41, 8), 48);
        // A coronal slice of anisotropic CT: 37 × 50, multiple 8 → 40 × 56, centred.
        let a = Array2::from_shape_fn((37, 50), |(i, j)| (i * 50 + j) as f32 + 1.0);
        let p = Pad2::to_multiple([37, 50], 8);
        assert_eq!(p.padded, [40, 56]);
        assert_eq!(p.before, [1, 3]);
        let padded = p.pad(a.view(), 0.0);
        assert_eq!(padded.dim(), (40, 56));
        assert_eq!(padded[[0, 0]], 0.0);
        assert_eq!(padded[[1, 3]], 1.0);
        assert_eq!(padded.sum(), a.sum());
        assert_eq!(p.crop(padded.view()), a.view());
        // prepare_slice: windowed, padded, 0 outside.
        let hu = Array3::from_elem((3, 37, 50), 80.0f32);
        let (x, pad) = prepare_slice(hu.view(), View::Axial, 0, &[HuWindow::BRAIN], 16);
        assert_eq!(x.dim(), (1, 48, 64));
        assert_eq!(x.sum(), (37 * 50) as f32);
        assert_eq!(pad.crop(x.index_axis(Axis(0), 0)).dim(), (37, 50));
    }
}
