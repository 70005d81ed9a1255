//! Seeded training batches of 2D slices: foreground oversampling and light augmentation.
//!
//! Key types: [`TrainCase`] (a case's HU channels and binary target in memory),
//! [`SamplerConfig`] and [`AugmentConfig`], [`SliceSampler`] (yields [`Batch`]es).
//!
//! Design:
//! - Every random choice comes from one ChaCha8 stream seeded by `SamplerConfig::seed`, in a
//!   fixed order per sample, so a seed gives the same batches on any machine.
//! - Foreground oversampling as nnU-Net does it: a fraction `p` of each batch is drawn from
//!   slices that contain target voxels, the rest from all slices. For `B·p` not whole, the
//!   fractional sample is forced with that probability, so the expected share is exactly `p`
//!   even for batch size 1.
//! - Windows are applied per sampled slice (HU stays in memory once, however many windows).
//!   Augmentation acts on the windowed slice: flips (target flipped too) and an intensity
//!   scale/shift on the input; padding comes last, so padded pixels stay 0.
//! - Slices of one batch may differ in size (cases differ): all are padded, centred, to the
//!   largest, rounded up to the network's multiple. Batches are plain `Vec<f32>` in
//!   `[B, C, H, W]` order, ready for `Tensor::from_vec`.

use ndarray::{Array3, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::layout::{LabelMap, LoadedCase};
use super::preprocess::{HuWindow, Pad2, View, round_up, window_slice};

/// A sampler that cannot be built from its cases or configuration.
#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    #[error("no training cases given")]
    NoCases,
    #[error("case `{case}`: no image channels")]
    NoImages { case: String },
    #[error(
        "case `{case}`: image {channel} has [z, y, x] = {image:?} but the target has {target:?}"
    )]
    Shape {
        case: String,
        channel: usize,
        image: [usize; 3],
        target: [usize; 3],
    },
    #[error(
        "case `{case}`: {count} cases have {got} image channels but earlier cases have {expected}"
    )]
    Channels {
        case: String,
        count: usize,
        expected: usize,
        got: usize,
    },
    #[error("case `{case}`: target value {value}: expected a binary mask (0 or 1)")]
    NotBinary { case: String, value: u8 },
    #[error("`windows`: expected at least one HU window")]
    NoWindows,
    #[error("`batch_size`: expected a positive integer, got 0")]
    BatchSize,
    #[error("`{field}` = {value}: expected a value in [0, 1]")]
    Probability { field: &'static str, value: f64 },
    #[error("`{field}` = {value}: expected a finite value >= 0")]
    Jitter { field: &'static str, value: f32 },
}

/// A case in memory for training: HU per input image, and the binary target.
#[derive(Debug, Clone)]
pub struct TrainCase {
    pub id: String,
    /// HU volumes `[z, y, x]`, one per input image (CT: one).
    pub images: Vec<Array3<f32>>,
    /// 0/1 target on the same grid.
    pub target: Array3<u8>,
}

impl TrainCase {
    /// Checks that the grids agree and the target is binary.
    pub fn new(
        id: impl Into<String>,
        images: Vec<Array3<f32>>,
        target: Array3<u8>,
    ) -> Result<Self, SamplingError> {
        let case = id.into();
        if images.is_empty() {
            return Err(SamplingError::NoImages { case });
        }
        let t = target.dim();
        let target_shape = [t.0, t.1, t.2];
        for (channel, im) in images.iter().enumerate() {
            let d = im.dim();
            if [d.0, d.1, d.2] != target_shape {
                let image = [d.0, d.1, d.2];
                return Err(SamplingError::Shape {
                    case,
                    channel,
                    image,
                    target: target_shape,
                });
            }
        }
        if let Some(&value) = target.iter().find(|&&v| v > 1) {
            return Err(SamplingError::NotBinary { case, value });
        }
        Ok(TrainCase {
            id: case,
            images,
            target,
        })
    }

    /// From a loaded case: its images, and its label mapped to the binary target.
    pub fn from_loaded(case: LoadedCase, map: &LabelMap) -> Result<Self, SamplingError> {
        let target = map.binarize(&case.label).data;
        TrainCase::new(
            case.id,
            case.images.into_iter().map(|v| v.data).collect(),
            target,
        )
    }
}

/// Random flips and intensity jitter, applied per sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Probability of flipping a slice upside down (along H).
    pub flip_h: f64,
    /// Probability of flipping a slice left–right (along W; for axial slices, the patient's
    /// left and right, a plausible symmetry of the head).
    pub flip_w: f64,
    /// Input multiplied by a factor drawn from `[1 - s, 1 + s]`.
    pub intensity_scale: f32,
    /// Then shifted by a value drawn from `[-t, t]` (windowed units, 1 = one window width).
    pub intensity_shift: f32,
}

impl AugmentConfig {
    /// No augmentation.
    pub const NONE: AugmentConfig = AugmentConfig {
        flip_h: 0.0,
        flip_w: 0.0,
        intensity_scale: 0.0,
        intensity_shift: 0.0,
    };
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            flip_h: 0.0,
            flip_w: 0.5,
            intensity_scale: 0.1,
            intensity_shift: 0.05,
        }
    }
}

/// How batches are drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerConfig {
    pub view: View,
    /// Input channels per image, in order (default: brain window).
    pub windows: Vec<HuWindow>,
    pub batch_size: usize,
    /// Share of each batch drawn from slices that contain target voxels (nnU-Net: 0.33).
    pub foreground_fraction: f64,
    /// Slices are padded to a multiple of this (`2^(levels-1)` for the Unet).
    pub multiple: usize,
    pub augment: AugmentConfig,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            view: View::Axial,
            windows: vec![HuWindow::BRAIN],
            batch_size: 8,
            foreground_fraction: 0.33,
            multiple: 8,
            augment: AugmentConfig::default(),
            seed: 0,
        }
    }
}

/// Where one sample of a batch came from and how it was augmented.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlicePick {
    /// Index into the sampler's cases.
    pub case: usize,
    /// Slice index along the view's axis.
    pub slice: usize,
    /// Drawn from the foreground slices by oversampling.
    pub forced_foreground: bool,
    pub flip_h: bool,
    pub flip_w: bool,
    pub scale: f32,
    pub shift: f32,
}

/// A batch: inputs `[B, C, H, W]` and targets `[B, 1, H, W]` (0/1), row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub inputs: Vec<f32>,
    pub targets: Vec<f32>,
    /// `[B, C, H, W]` of `inputs`.
    pub shape: [usize; 4],
    pub picks: Vec<SlicePick>,
}

impl Batch {
    /// `[B, 1, H, W]` of `targets`.
    pub fn target_shape(&self) -> [usize; 4] {
        [self.shape[0], 1, self.shape[2], self.shape[3]]
    }
}

/// Draws seeded batches of 2D slices from cases held in memory.
#[derive(Debug)]
pub struct SliceSampler {
    cases: Vec<TrainCase>,
    cfg: SamplerConfig,
    /// `(case, slice)` of every slice, and of those with target voxels.
    all: Vec<(u32, u32)>,
    foreground: Vec<(u32, u32)>,
    rng: ChaCha8Rng,
}

impl SliceSampler {
    pub fn new(cases: Vec<TrainCase>, cfg: SamplerConfig) -> Result<Self, SamplingError> {
        if cases.is_empty() {
            return Err(SamplingError::NoCases);
        }
        if cfg.windows.is_empty() {
            return Err(SamplingError::NoWindows);
        }
        if cfg.batch_size == 0 {
            return Err(SamplingError::BatchSize);
        }
        let probs = [
            ("foreground_fraction", cfg.foreground_fraction),
            ("augment.flip_h", cfg.augment.flip_h),
            ("augment.flip_w", cfg.augment.flip_w),
        ];
        for (field, value) in probs {
            if !(0.0..=1.0).contains(&value) {
                return Err(SamplingError::Probability { field, value });
            }
        }
        let jitter = [
            ("augment.intensity_scale", cfg.augment.intensity_scale),
            ("augment.intensity_shift", cfg.augment.intensity_shift),
        ];
        for (field, value) in jitter {
            if !(value.is_finite() && value >= 0.0) {
                return Err(SamplingError::Jitter { field, value });
            }
        }
        let expected = cases[0].images.len();
        if let Some(c) = cases.iter().find(|c| c.images.len() != expected) {
            let count = cases
                .iter()
                .filter(|x| x.images.len() == c.images.len())
                .count();
            let got = c.images.len();
            return Err(SamplingError::Channels {
                case: c.id.clone(),
                count,
                expected,
                got,
            });
        }

        let axis = Axis(cfg.view.axis());
        let mut all = Vec::new();
        let mut foreground = Vec::new();
        for (ci, case) in cases.iter().enumerate() {
            for (si, t) in case.target.axis_iter(axis).enumerate() {
                all.push((ci as u32, si as u32));
                if t.iter().any(|&v| v != 0) {
                    foreground.push((ci as u32, si as u32));
                }
            }
        }
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        Ok(SliceSampler {
            cases,
            cfg,
            all,
            foreground,
            rng,
        })
    }

    /// Input channels per sample: images × windows.
    pub fn in_channels(&self) -> usize {
        self.cases[0].images.len() * self.cfg.windows.len()
    }

    /// Number of slices along the view, over all cases.
    pub fn num_slices(&self) -> usize {
        self.all.len()
    }

    /// Number of those slices that contain target voxels.
    pub fn num_foreground_slices(&self) -> usize {
        self.foreground.len()
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    pub fn cases(&self) -> &[TrainCase] {
        &self.cases
    }

    /// The next batch of `batch_size` samples.
    pub fn next_batch(&mut self) -> Batch {
        let b = self.cfg.batch_size;
        let want = b as f64 * self.cfg.foreground_fraction;
        let mut n_fg = want.floor() as usize;
        if self.rng.random_bool(want - want.floor()) {
            n_fg += 1;
        }
        if self.foreground.is_empty() {
            n_fg = 0;
        }
        let aug = self.cfg.augment;
        let picks: Vec<SlicePick> = (0..b)
            .map(|i| {
                // nnU-Net forces the last samples of a batch.
                let forced = i >= b - n_fg;
                let pool = if forced { &self.foreground } else { &self.all };
                let (case, slice) = pool[self.rng.random_range(0..pool.len())];
                let flip_h = self.rng.random_bool(aug.flip_h);
                let flip_w = self.rng.random_bool(aug.flip_w);
                let u: f32 = self.rng.random();
                let v: f32 = self.rng.random();
                SlicePick {
                    case: case as usize,
                    slice: slice as usize,
                    forced_foreground: forced,
                    flip_h,
                    flip_w,
                    scale: 1.0 + aug.intensity_scale * (2.0 * u - 1.0),
                    shift: aug.intensity_shift * (2.0 * v - 1.0),
                }
            })
            .collect();
        self.assemble(picks)
    }

    /// Builds the batch arrays for given picks.
    fn assemble(&self, picks: Vec<SlicePick>) -> Batch {
        let view = self.cfg.view;
        let sizes: Vec<[usize; 2]> = picks
            .iter()
            .map(|p| {
                let d = self.cases[p.case].target.dim();
                view.slice_shape([d.0, d.1, d.2])
            })
            .collect();
        let h = round_up(
            sizes.iter().map(|s| s[0]).max().unwrap_or(1),
            self.cfg.multiple,
        );
        let w = round_up(
            sizes.iter().map(|s| s[1]).max().unwrap_or(1),
            self.cfg.multiple,
        );
        let c = self.in_channels();
        let mut inputs = Vec::with_capacity(picks.len() * c * h * w);
        let mut targets = Vec::with_capacity(picks.len() * h * w);
        for (p, size) in picks.iter().zip(&sizes) {
            let case = &self.cases[p.case];
            let pad = Pad2::to_size(*size, [h, w]);
            for im in &case.images {
                let mut x = window_slice(view.slice(im.view(), p.slice), &self.cfg.windows);
                if p.flip_h {
                    x.invert_axis(Axis(1));
                }
                if p.flip_w {
                    x.invert_axis(Axis(2));
                }
                if p.scale != 1.0 || p.shift != 0.0 {
                    x.mapv_inplace(|v| v * p.scale + p.shift);
                }
                // `pad_channels` copies in logical order, so the flips land in the batch.
                inputs.extend(pad.pad_channels(x.view(), 0.0).iter());
            }
            let mut target = view.slice(case.target.view(), p.slice);
            if p.flip_h {
                target.invert_axis(Axis(0));
            }
            if p.flip_w {
                target.invert_axis(Axis(1));
            }
            let target = target.mapv(f32::from);
            targets.extend(pad.pad(target.view(), 0.0).iter());
        }
        let shape = [picks.len(), c, h, w];
        Batch {
            inputs,
            targets,
            shape,
            picks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Case `i` of `n`: 6 axial slices of 5 × 7, target on slice 2 only; HU encode position.
    fn cases(n: usize) -> Vec<TrainCase> {
        (0..n)
            .map(|i| {
                let hu = Array3::from_shape_fn((6, 5, 7), |(z, y, x)| {
                    (i * 1000 + z * 100 + y * 10 + x) as f32 * 0.01
                });
                let target = Array3::from_shape_fn((6, 5, 7), |(z, y, x)| {
                    u8::from(z == 2 && y >= 1 && x == 4)
                });
                TrainCase::new(format!("c{i}"), vec![hu], target).unwrap()
            })
            .collect()
    }

    fn cfg(seed: u64) -> SamplerConfig {
        SamplerConfig {
            windows: vec![HuWindow::new(0.0, 100.0).unwrap()],
            batch_size: 4,
            multiple: 4,
            seed,
            ..SamplerConfig::default()
        }
    }

    #[test]
    fn batches_are_deterministic_by_seed() {
        let mut a = SliceSampler::new(cases(3), cfg(7)).unwrap();
        let mut b = SliceSampler::new(cases(3), cfg(7)).unwrap();
        let mut c = SliceSampler::new(cases(3), cfg(8)).unwrap();
        let (ba, bb, bc): (Vec<_>, Vec<_>, Vec<_>) = (0..5)
            .map(|_| (a.next_batch(), b.next_batch(), c.next_batch()))
            .fold((vec![], vec![], vec![]), |mut acc, (x, y, z)| {
                acc.0.push(x);
                acc.1.push(y);
                acc.2.push(z);
                acc
            });
        assert_eq!(ba, bb);
        assert_ne!(ba, bc);
    }

    #[test]
    fn batch_layout_padding_and_values() {
        let mut cfg = cfg(1);
        cfg.augment = AugmentConfig::NONE;
        let mut s = SliceSampler::new(cases(2), cfg).unwrap();
        assert_eq!(s.num_slices(), 12);
        assert_eq!(s.num_foreground_slices(), 2);
        let b = s.next_batch();
        // 5 × 7 padded to 8 × 8, centred: 1 row and 0 columns before.
        assert_eq!(b.shape, [4, 1, 8, 8]);
        assert_eq!(b.inputs.len(), 4 * 64);
        assert_eq!(b.targets.len(), 4 * 64);
        for (k, p) in b.picks.iter().enumerate() {
            let img = &b.inputs[k * 64..(k + 1) * 64];
            let tgt = &b.targets[k * 64..(k + 1) * 64];
            // Row 0 is padding; row 1 col 0 is voxel (y=0, x=0).
            assert!(img[..8].iter().all(|&v| v == 0.0));
            let hu = (p.case * 1000 + p.slice * 100) as f32 * 0.01;
            let want = HuWindow::new(0.0, 100.0).unwrap().apply(hu);
            assert!((img[8] - want).abs() < 1e-6, "{} vs {want}", img[8]);
            let fg = tgt.iter().filter(|&&v| v == 1.0).count();
            assert_eq!(fg, if p.slice == 2 { 4 } else { 0 });
            if p.slice == 2 {
                // Target at y >= 1, x = 4 → rows 2..=5 of the padded slice, column 4.
                assert_eq!(tgt[2 * 8 + 4], 1.0);
            }
        }
    }

    #[test]
    fn foreground_fraction_is_honoured() {
        for frac in [0.0, 0.33, 0.5, 1.0] {
            let mut c = cfg(3);
            c.foreground_fraction = frac;
            c.batch_size = 3;
            let mut s = SliceSampler::new(cases(4), c).unwrap();
            let (mut forced, mut fg, mut n) = (0, 0, 0);
            for _ in 0..400 {
                let b = s.next_batch();
                for p in &b.picks {
                    n += 1;
                    forced += usize::from(p.forced_foreground);
                    fg += usize::from(p.slice == 2);
                    if p.forced_foreground {
                        assert_eq!(p.slice, 2);
                    }
                }
            }
            let share = forced as f64 / n as f64;
            assert!(
                (share - frac).abs() < 0.03,
                "frac {frac}: forced share {share}"
            );
            // Foreground slices are 1 in 6: unforced draws add (1 - p)/6.
            let expect = frac + (1.0 - frac) / 6.0;
            let got = fg as f64 / n as f64;
            assert!(
                (got - expect).abs() < 0.04,
                "frac {frac}: fg share {got} vs {expect}"
            );
        }
    }

    #[test]
    fn flips_move_input_and_target_together() {
        let mut c = cfg(5);
        c.augment = AugmentConfig {
            flip_h: 1.0,
            flip_w: 1.0,
            ..AugmentConfig::NONE
        };
        c.foreground_fraction = 1.0;
        c.multiple = 1;
        let mut s = SliceSampler::new(cases(1), c).unwrap();
        let b = s.next_batch();
        assert_eq!(b.shape, [4, 1, 5, 7]);
        let p = b.picks[0];
        assert!(p.flip_h && p.flip_w && p.slice == 2);
        let tgt = &b.targets[..35];
        // x = 4 flips to column 2; y >= 1 flips to rows 0..=3.
        let cols: Vec<usize> = (0..35).filter(|&i| tgt[i] == 1.0).map(|i| i % 7).collect();
        let rows: Vec<usize> = (0..35).filter(|&i| tgt[i] == 1.0).map(|i| i / 7).collect();
        assert_eq!(cols, [2, 2, 2, 2]);
        assert_eq!(rows, [0, 1, 2, 3]);
        // Input pixel (0, 0) now holds voxel (y=4, x=6).
        let want = HuWindow::new(0.0, 100.0)
            .unwrap()
            .apply((200 + 40 + 6) as f32 * 0.01);
        assert!((b.inputs[0] - want).abs() < 1e-6);
    }

    #[test]
    fn intensity_jitter_stays_in_range_and_spares_padding() {
        let mut c = cfg(9);
        c.augment = AugmentConfig {
            intensity_scale: 0.2,
            intensity_shift: 0.1,
            ..AugmentConfig::NONE
        };
        let mut s = SliceSampler::new(cases(2), c).unwrap();
        let mut saw_jitter = false;
        for _ in 0..20 {
            let b = s.next_batch();
            for (k, p) in b.picks.iter().enumerate() {
                assert!((0.8..=1.2).contains(&p.scale) && (-0.1..=0.1).contains(&p.shift));
                saw_jitter |= p.scale != 1.0;
                let img = &b.inputs[k * 64..(k + 1) * 64];
                assert!(img[..8].iter().all(|&v| v == 0.0), "padding row stays 0");
                let hu = (p.case * 1000 + p.slice * 100) as f32 * 0.01;
                let base = HuWindow::new(0.0, 100.0).unwrap().apply(hu);
                assert!((img[8] - (base * p.scale + p.shift)).abs() < 1e-6);
            }
        }
        assert!(saw_jitter);
    }

    #[test]
    fn views_and_windows_shape_the_batch() {
        let mut c = cfg(2);
        c.view = View::Sagittal;
        c.windows = vec![HuWindow::BRAIN, HuWindow::BONE];
        c.multiple = 8;
        let mut s = SliceSampler::new(cases(2), c).unwrap();
        assert_eq!(s.num_slices(), 14);
        assert_eq!(s.in_channels(), 2);
        // Sagittal slices are [z, y] = 6 × 5 → 8 × 8.
        assert_eq!(s.next_batch().shape, [4, 2, 8, 8]);
    }

    #[test]
    fn bad_cases_and_configs_are_refused() {
        let hu = Array3::<f32>::zeros((2, 3, 4));
        let e = TrainCase::new("a", vec![hu.clone()], Array3::zeros((2, 3, 5))).unwrap_err();
        assert!(
            e.to_string().contains("case `a`") && e.to_string().contains("[2, 3, 5]"),
            "{e}"
        );
        let e = TrainCase::new("b", vec![hu.clone()], Array3::from_elem((2, 3, 4), 4)).unwrap_err();
        assert!(matches!(e, SamplingError::NotBinary { value: 4, .. }));
        assert!(matches!(
            TrainCase::new("c", vec![], Array3::zeros((1, 1, 1))),
            Err(SamplingError::NoImages { .. })
        ));
        assert!(matches!(
            SliceSampler::new(vec![], cfg(0)),
            Err(SamplingError::NoCases)
        ));
        let bad = [
            SamplerConfig {
                batch_size: 0,
                ..cfg(0)
            },
            SamplerConfig {
                windows: vec![],
                ..cfg(0)
            },
            SamplerConfig {
                foreground_fraction: 1.5,
                ..cfg(0)
            },
            SamplerConfig {
                augment: AugmentConfig {
                    flip_w: -0.1,
                    ..AugmentConfig::NONE
                },
                ..cfg(0)
            },
            SamplerConfig {
                augment: AugmentConfig {
                    intensity_scale: f32::NAN,
                    ..AugmentConfig::NONE
                },
                ..cfg(0)
            },
        ];
        for c in bad {
            assert!(SliceSampler::new(cases(1), c.clone()).is_err(), "{c:?}");
        }
        let mut two = cases(2);
        let extra = two[1].images[0].clone();
        two[1].images.push(extra);
        assert!(matches!(
            SliceSampler::new(two, cfg(0)),
            Err(SamplingError::Channels { .. })
        ));
    }

    #[test]
    fn no_foreground_anywhere_falls_back_to_uniform() {
        let mut cs = cases(1);
        cs[0].target.fill(0);
        let mut c = cfg(4);
        c.foreground_fraction = 1.0;
        let mut s = SliceSampler::new(cs, c).unwrap();
        let b = s.next_batch();
        assert!(b.picks.iter().all(|p| !p.forced_foreground));
        assert!(b.targets.iter().all(|&v| v == 0.0));
    }
}
