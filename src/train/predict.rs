//! 3D prediction with 2D models: slice a scan along each model's view, pad each slice to the
//! network's multiple, run the model, crop back, sigmoid, fuse the views' probabilities (mean)
//! and threshold — always on the scan's native grid.
//!
//! Key types and functions: [`ViewModel`] (a model and the view it was trained on),
//! [`predict_view`], [`predict_probabilities`] (fused), [`threshold`], and [`predict_file`]
//! (one NIfTI scan → one mask file, behind `ranksweep predict`).
//!
//! Design: no resampling (preprocess.rs): a coronal slice of a 5 mm CT is short and wide, and
//! is only padded (centred, 0 = below the window) to the multiple, then cropped back with the
//! same [`Pad2`], so every view's probability map has exactly the scan's `[z, y, x]` shape and
//! the fused mean needs no interpolation. Slices of one view share a shape, so they go through
//! the model in batches of `batch` slices.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use ndarray::{Array3, ArrayView3};

use crate::data::Volume;
use crate::data::nifti::{read_volume, write_u8};
use crate::data::preprocess::{HuWindow, Pad2, View, window_slice};
use crate::model::Unet2d;
use crate::model::checkpoint::{file_sha256, load_adapter, load_base};
use crate::nn::DeviceSpec;

/// Probability above which a voxel is foreground.
pub const THRESHOLD: f32 = 0.5;

/// A model for one view. Prediction uses it as is; pass a merged model (no adapters, no
/// trainable tensors) for speed.
#[derive(Clone)]
pub struct ViewModel {
    pub view: View,
    pub model: Unet2d,
}

/// Why a prediction could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("no views to predict with")]
    NoViews,
    #[error(
        "the {view} model takes {expected} input channels but the scan gives {got} ({images} image(s) × {windows} window(s)); set `in_channels` or the windows to match"
    )]
    Channels {
        view: View,
        expected: usize,
        got: usize,
        images: usize,
        windows: usize,
    },
    #[error("image {index} has [z, y, x] = {got:?} but image 0 has {expected:?}")]
    Shape {
        index: usize,
        expected: [usize; 3],
        got: [usize; 3],
    },
    #[error(
        "{} checkpoints given for {} views (give one per view, in the order of --views)",
        got,
        views
    )]
    CheckpointCount { got: usize, views: usize },
    #[error(
        "{}: trained on a base file with SHA-256 {recorded}, but {} has {actual}",
        adapter.display(), base.display()
    )]
    BaseMismatch {
        adapter: PathBuf,
        base: PathBuf,
        recorded: String,
        actual: String,
    },
    #[error(transparent)]
    Volume(#[from] crate::data::nifti::VolumeError),
    #[error(transparent)]
    Checkpoint(#[from] crate::model::checkpoint::CheckpointError),
    #[error(transparent)]
    Device(#[from] crate::nn::device::DeviceError),
    #[error("{context}: {source}")]
    Candle {
        context: String,
        #[source]
        source: candle_core::Error,
    },
}

fn candle(context: impl Into<String>) -> impl FnOnce(candle_core::Error) -> PredictError {
    let context = context.into();
    move |source| PredictError::Candle { context, source }
}

fn dims(a: &ArrayView3<'_, f32>) -> [usize; 3] {
    let d = a.dim();
    [d.0, d.1, d.2]
}

/// Foreground probabilities of one view's model over a scan, `[z, y, x]` like the scan.
/// `images` are HU volumes (one per input image), windowed with `windows` into
/// `images × windows` channels in that order (as the training sampler does).
pub fn predict_view(
    vm: &ViewModel,
    images: &[ArrayView3<'_, f32>],
    windows: &[HuWindow],
    batch: usize,
) -> Result<Array3<f32>, PredictError> {
    let shape = check_inputs(std::slice::from_ref(vm), images, windows)?;
    let view = vm.view;
    let model = &vm.model;
    let device = model.device().clone();
    let multiple = model.config().multiple();
    let [h, w] = view.slice_shape(shape);
    let pad = Pad2::to_multiple([h, w], multiple);
    let [ph, pw] = pad.padded;
    let c = images.len() * windows.len();
    let n = view.num_slices(shape);
    let batch = batch.max(1);
    let mut prob = Array3::<f32>::zeros((shape[0], shape[1], shape[2]));
    let mut start = 0;
    while start < n {
        let end = (start + batch).min(n);
        let mut input: Vec<f32> = Vec::with_capacity((end - start) * c * ph * pw);
        for index in start..end {
            for im in images {
                let x = window_slice(view.slice(*im, index), windows);
                input.extend(pad.pad_channels(x.view(), 0.0).iter());
            }
        }
        let ctx = || format!("{view} slices {start}..{end}");
        let x =
            Tensor::from_vec(input, (end - start, c, ph, pw), &device).map_err(candle(ctx()))?;
        let logits = model
            .forward(&x)
            .and_then(|y| y.flatten_all()?.to_vec1::<f32>())
            .map_err(candle(ctx()))?;
        for (k, index) in (start..end).enumerate() {
            let plane =
                ndarray::ArrayView2::from_shape((ph, pw), &logits[k * ph * pw..][..ph * pw])
                    .expect("the model returns B × 1 × H × W");
            let mut out = view.slice_mut(&mut prob, index);
            ndarray::Zip::from(&mut out)
                .and(pad.crop(plane))
                .for_each(|o, &z| *o = sigmoid(z));
        }
        start = end;
    }
    Ok(prob)
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

fn check_inputs(
    models: &[ViewModel],
    images: &[ArrayView3<'_, f32>],
    windows: &[HuWindow],
) -> Result<[usize; 3], PredictError> {
    if models.is_empty() {
        return Err(PredictError::NoViews);
    }
    let expected = images.first().map(dims).unwrap_or([0; 3]);
    for (index, im) in images.iter().enumerate() {
        if dims(im) != expected {
            return Err(PredictError::Shape {
                index,
                expected,
                got: dims(im),
            });
        }
    }
    let got = images.len() * windows.len();
    for vm in models {
        let want = vm.model.config().in_channels;
        if want != got || got == 0 {
            return Err(PredictError::Channels {
                view: vm.view,
                expected: want,
                got,
                images: images.len(),
                windows: windows.len(),
            });
        }
    }
    Ok(expected)
}

/// The views' probabilities fused by their mean, `[z, y, x]` like the scan.
pub fn predict_probabilities(
    models: &[ViewModel],
    images: &[ArrayView3<'_, f32>],
    windows: &[HuWindow],
    batch: usize,
) -> Result<Array3<f32>, PredictError> {
    check_inputs(models, images, windows)?;
    let mut sum: Option<Array3<f32>> = None;
    for vm in models {
        let p = predict_view(vm, images, windows, batch)?;
        sum = Some(match sum {
            None => p,
            Some(s) => s + p,
        });
    }
    let mut mean = sum.expect("at least one view");
    let k = models.len() as f32;
    mean.mapv_inplace(|v| v / k);
    Ok(mean)
}

/// The mask of voxels whose probability is above [`THRESHOLD`].
pub fn threshold(prob: &Array3<f32>) -> Array3<u8> {
    prob.mapv(|p| u8::from(p > THRESHOLD))
}

/// `ranksweep predict`: one scan (or several co-registered input images) → one mask.
#[derive(Debug, Clone)]
pub struct PredictFile {
    /// Base checkpoint per view, in the order of `views`.
    pub checkpoints: Vec<PathBuf>,
    /// Adapter per view, in the order of `views` (empty: none).
    pub adapters: Vec<PathBuf>,
    pub views: Vec<View>,
    pub images: Vec<PathBuf>,
    pub windows: Vec<HuWindow>,
    pub out: PathBuf,
    pub device: DeviceSpec,
    pub batch: usize,
}

/// What `predict_file` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PredictSummary {
    pub out: PathBuf,
    pub shape: [usize; 3],
    pub spacing: [f64; 3],
    pub foreground_voxels: usize,
    pub foreground_ml: f64,
}

/// Predicts one scan and writes the mask on the scan's grid (its header and affine).
pub fn predict_file(p: &PredictFile) -> Result<PredictSummary, PredictError> {
    if p.views.is_empty() {
        return Err(PredictError::NoViews);
    }
    if p.checkpoints.len() != p.views.len() {
        return Err(PredictError::CheckpointCount {
            got: p.checkpoints.len(),
            views: p.views.len(),
        });
    }
    if !p.adapters.is_empty() && p.adapters.len() != p.views.len() {
        return Err(PredictError::CheckpointCount {
            got: p.adapters.len(),
            views: p.views.len(),
        });
    }
    let device = p.device.open()?;
    let models = load_view_models(&p.views, &p.checkpoints, &p.adapters, &device)?;
    let scans: Vec<Volume<f32>> = p.images.iter().map(read_volume).collect::<Result<_, _>>()?;
    let views: Vec<ArrayView3<'_, f32>> = scans.iter().map(|v| v.data.view()).collect();
    let prob = predict_probabilities(&models, &views, &p.windows, p.batch)?;
    let mask = threshold(&prob);
    let foreground_voxels = mask.iter().filter(|&&v| v != 0).count();
    let out = scans[0].with_data(mask);
    write_u8(&out, &p.out)?;
    Ok(PredictSummary {
        out: p.out.clone(),
        shape: out.shape(),
        spacing: out.spacing,
        foreground_voxels,
        foreground_ml: foreground_voxels as f64 * out.voxel_ml(),
    })
}

/// Loads base checkpoints (and adapters, if any) into merged per-view models.
pub fn load_view_models(
    views: &[View],
    checkpoints: &[PathBuf],
    adapters: &[PathBuf],
    device: &Device,
) -> Result<Vec<ViewModel>, PredictError> {
    views
        .iter()
        .enumerate()
        .map(|(i, &view)| {
            let base = load_base(&checkpoints[i], device)?;
            let model = match adapters.get(i) {
                Some(a) => load_adapted(&base, &checkpoints[i], a)?,
                None => base,
            };
            let model = model
                .merged()
                .map_err(candle(format!("merging {}", path_str(&checkpoints[i]))))?;
            Ok(ViewModel { view, model })
        })
        .collect()
}

/// Applies an adapter file to the base loaded from `base_path`, refusing an adapter that was
/// trained on another base file (its metadata records the base's SHA-256).
pub fn load_adapted(
    base: &Unet2d,
    base_path: &Path,
    adapter: &Path,
) -> Result<Unet2d, PredictError> {
    let (model, meta) = load_adapter(base, adapter)?;
    let actual = file_sha256(base_path)?;
    if meta.base_sha256 != actual {
        return Err(PredictError::BaseMismatch {
            adapter: adapter.into(),
            base: base_path.into(),
            recorded: meta.base_sha256,
            actual,
        });
    }
    Ok(model)
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UnetConfig;

    fn model(seed: u64) -> Unet2d {
        Unet2d::init(
            &UnetConfig::new(1, vec![4, 8, 16]).unwrap(),
            seed,
            &Device::Cpu,
        )
        .unwrap()
    }

    fn scan(shape: (usize, usize, usize)) -> Array3<f32> {
        Array3::from_shape_fn(shape, |(z, y, x)| ((z * 31 + y * 7 + x * 3) % 97) as f32)
    }

    /// Each slice predicted alone, padded by hand, must equal the batched 3D prediction.
    #[test]
    fn view_prediction_matches_slice_by_slice_on_the_native_grid() {
        let m = model(1);
        let hu = scan((5, 10, 13));
        let vm = ViewModel {
            view: View::Coronal,
            model: m.clone(),
        };
        let p = predict_view(&vm, &[hu.view()], &[HuWindow::BRAIN], 4).unwrap();
        assert_eq!(p.dim(), (5, 10, 13));
        // Coronal slice y = 7 is [z, x] = 5 × 13, padded to 8 × 16.
        let pad = Pad2::to_multiple([5, 13], 4);
        assert_eq!(pad.padded, [8, 16]);
        let x = window_slice(View::Coronal.slice(hu.view(), 7), &[HuWindow::BRAIN]);
        let x = pad.pad_channels(x.view(), 0.0);
        let t = Tensor::from_vec(x.iter().copied().collect(), (1, 1, 8, 16), &Device::Cpu).unwrap();
        let logits = m
            .forward(&t)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let plane = ndarray::Array2::from_shape_vec((8, 16), logits).unwrap();
        let want = pad.crop(plane.view()).mapv(sigmoid);
        let got = View::Coronal.slice(p.view(), 7);
        for (a, b) in got.iter().zip(want.iter()) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert!(p.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn fusion_is_the_mean_of_the_views() {
        let hu = scan((6, 8, 12));
        let a = ViewModel {
            view: View::Axial,
            model: model(2),
        };
        let s = ViewModel {
            view: View::Sagittal,
            model: model(3),
        };
        let w = [HuWindow::BRAIN];
        let pa = predict_view(&a, &[hu.view()], &w, 3).unwrap();
        let ps = predict_view(&s, &[hu.view()], &w, 3).unwrap();
        assert!(pa.iter().zip(&ps).any(|(x, y)| (x - y).abs() > 1e-3));
        let fused = predict_probabilities(&[a, s], &[hu.view()], &w, 3).unwrap();
        for ((f, x), y) in fused.iter().zip(&pa).zip(&ps) {
            assert!((f - 0.5 * (x + y)).abs() < 1e-6);
        }
        let mask = threshold(&fused);
        for (m, f) in mask.iter().zip(&fused) {
            assert_eq!(*m == 1, *f > 0.5);
        }
    }

    #[test]
    fn one_checkpoint_per_view_is_required() {
        let p = PredictFile {
            checkpoints: vec!["a.safetensors".into()],
            adapters: vec![],
            views: vec![View::Axial, View::Coronal],
            images: vec!["x.nii.gz".into()],
            windows: vec![HuWindow::BRAIN],
            out: "m.nii.gz".into(),
            device: DeviceSpec::Cpu,
            batch: 4,
        };
        let err = predict_file(&p).unwrap_err().to_string();
        assert!(err.contains("1 checkpoints given for 2 views"), "{err}");
    }

    #[test]
    fn an_adapter_for_another_base_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, ad) = (
            dir.path().join("a.safetensors"),
            dir.path().join("b.safetensors"),
            dir.path().join("ad.safetensors"),
        );
        let base_a = model(1);
        crate::model::checkpoint::save_base(&base_a, &a).unwrap();
        crate::model::checkpoint::save_base(&model(2), &b).unwrap();
        let mut adapted = base_a.clone();
        let spec = crate::model::AdaptationSpec::adapter(
            crate::model::AdaptationKind::ConvLora,
            crate::model::Selector::new("decoder").unwrap(),
            2,
        );
        spec.apply(&mut adapted, 0).unwrap();
        let sha = file_sha256(&a).unwrap();
        crate::model::checkpoint::save_adapter(&adapted, &spec, &sha, &ad).unwrap();
        assert!(load_adapted(&base_a, &a, &ad).is_ok());
        let base_b = load_base(&b, &Device::Cpu).unwrap();
        let err = load_adapted(&base_b, &b, &ad).unwrap_err().to_string();
        assert!(err.contains("trained on a base file with SHA-256"), "{err}");
    }

    #[test]
    fn channel_mismatch_is_a_clear_error() {
        let hu = scan((2, 4, 4));
        let vm = ViewModel {
            view: View::Axial,
            model: model(0),
        };
        let err = predict_view(&vm, &[hu.view()], &[HuWindow::BRAIN, HuWindow::BONE], 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("takes 1 input channels but the scan gives 2"),
            "{err}"
        );
    }
}
