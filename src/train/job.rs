//! A job: one stage of the study on one dataset, fold and seed — the file a worker runs and the
//! type the sweep planner emits.
//!
//! Key types: [`JobConfig`] (YAML or JSON, unknown fields refused), [`Stage`], [`DataConfig`],
//! [`TrainConfig`], [`Selection`], and [`JobError`] with its [`ExitClass`].
//!
//! Stages:
//! - `pretrain`: a randomly initialised Unet per view, every tensor trained on the source
//!   cohort (all its cases, or the training cases of `data.fold`); writes `base-<view>.safetensors`.
//! - `finetune`: the base checkpoint of each view, adapted by `adaptation` (any kind that
//!   trains) on the training cases of `data.fold` of the target cohort; writes
//!   `adapter-<view>.safetensors`.
//! - `evaluate`: a base checkpoint per view, optionally with an adapter file per view, on the
//!   test cases of `data.fold`. Evaluating the base alone is the study's `none` arm.
//!
//! Every stage that has test cases (the fold's `val` list) predicts them in 3D and measures them.
//!
//! Design: a job file is read, then its relative paths are resolved against the job file's
//! folder (as Cargo does for paths in Cargo.toml), then it is validated as a whole; cross-field
//! errors name both fields. Defaults are documented on each field and are what the README lists.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::protocol::ExitClass;
use crate::data::layout::LabelMap;
use crate::data::preprocess::{HuWindow, View};
use crate::data::sampling::AugmentConfig;
use crate::metrics::Strata;
use crate::model::{AdamWConfig, AdaptationKind, AdaptationSpec, UnetConfig};
use crate::nn::{DeviceSpec, Precision};

/// Which part of the study a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Pretrain,
    Finetune,
    Evaluate,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Pretrain => "pretrain",
            Stage::Finetune => "finetune",
            Stage::Evaluate => "evaluate",
        }
    }

    /// Whether the stage trains a model.
    pub fn trains(self) -> bool {
        self != Stage::Evaluate
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which weights are kept at the end of training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// The weights after the last step.
    #[default]
    Last,
    /// The weights with the best mean 3D Dice on a validation subset held out from the fold's
    /// training cases (`train.val_fraction`), checked every `train.val_every` steps.
    BestVal,
}

/// The data a job reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Dataset folder (nnU-Net v2, Decathlon, or flat image/label pairs): the source cohort for
    /// `pretrain`, the target cohort for `finetune` and `evaluate`. Required.
    pub dataset: PathBuf,
    /// Label values that form the binary target: `nonzero` (default) or a list like `"4"` or
    /// `"1,4"`.
    #[serde(
        default,
        serialize_with = "ser_label_map",
        deserialize_with = "de_fromstr"
    )]
    pub labels: LabelMap,
    /// HU windows stacked as input channels, in order: `brain` (L40/W80, default), `subdural`,
    /// `bone`, or `L<level>/W<width>`. `model.in_channels` must equal images × windows.
    #[serde(default = "default_windows")]
    pub windows: Vec<HuWindow>,
    /// Cross-validation fold: training cases = the fold's `train`, test cases = its `val`.
    /// Required for `finetune` and `evaluate`; for `pretrain`, absent (default) means every case
    /// trains and nothing is tested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<usize>,
    /// The splits file (nnU-Net's `splits_final.json` format): a user's own file is named
    /// here explicitly. Default: `<output>/splits.json`, created there with `folds` folds and
    /// `split_seed` if missing, then reused; the dataset folder is never written (`run` puts
    /// a sweep's splits under `<results>/splits/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub splits: Option<PathBuf>,
    /// Folds when the splits file is created (default 5).
    #[serde(default = "default_folds")]
    pub folds: usize,
    /// Seed of the split when it is created (default 0).
    #[serde(default)]
    pub split_seed: u64,
    /// Hemorrhage-volume strata edges in mL for the per-stratum Dice (default `[5, 15, 30]`).
    #[serde(default)]
    pub strata: Strata,
}

fn default_windows() -> Vec<HuWindow> {
    vec![HuWindow::BRAIN]
}

fn default_folds() -> usize {
    5
}

/// How a model is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimisation steps per view (default 250).
    pub steps: usize,
    /// 2D slices per batch (default 8).
    pub batch_size: usize,
    /// Share of each batch drawn from slices that contain target voxels (default 0.33, as
    /// nnU-Net).
    pub foreground_fraction: f64,
    /// Flips and intensity jitter (default: left–right flip p 0.5, scale ±0.1, shift ±0.05).
    pub augment: AugmentConfig,
    /// `last` (default) or `best-val`.
    pub selection: Selection,
    /// `best-val`: share of the training cases held out for validation (default 0.2, at least
    /// one case, at least one left to train on).
    pub val_fraction: f64,
    /// `best-val`: validate every this many steps, and after the last (default 25).
    pub val_every: usize,
    /// Emit a progress line every this many steps, and after the last (default 10).
    pub log_every: usize,
    /// Slices per forward pass at prediction time (default 16).
    pub predict_batch: usize,
    /// `f32` (default) or `bf16`: bf16 autocast on CUDA (the convolutions forward and backward
    /// in bf16, master weights, AdamW, loss and norms in f32), as PyTorch's AMP. A bf16 job on a
    /// CPU is refused before training. Left out of the job file when f32, so job keys of f32
    /// jobs are unchanged.
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 250,
            batch_size: 8,
            foreground_fraction: 0.33,
            augment: AugmentConfig::default(),
            selection: Selection::Last,
            val_fraction: 0.2,
            val_every: 25,
            log_every: 10,
            predict_batch: 16,
            precision: Precision::F32,
        }
    }
}

/// One job. Only `stage`, `data.dataset` and `output` are required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// `pretrain`, `finetune` or `evaluate`.
    pub stage: Stage,
    pub data: DataConfig,
    /// The Unet (default: 1 input channel, features `[16, 32, 64, 128]`). For `finetune` and
    /// `evaluate` it must equal the base checkpoints' configuration.
    #[serde(default)]
    pub model: UnetConfig,
    /// What `finetune` trains (default `{kind: none}`). Must be `none` for `pretrain` (every
    /// tensor trains) and `evaluate` (an adapter file carries its own adaptation).
    #[serde(default = "AdaptationSpec::none")]
    pub adaptation: AdaptationSpec,
    /// AdamW and the schedule (default lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 1e-4,
    /// no warm-up, cosine decay to 1% of lr).
    #[serde(default)]
    pub optimizer: AdamWConfig,
    #[serde(default)]
    pub train: TrainConfig,
    /// Views, one model each (default `[axial]`); prediction averages their probabilities.
    #[serde(default = "default_views")]
    pub views: Vec<View>,
    /// Base checkpoint per view (`{axial: base-axial.safetensors}`); required for every view
    /// by `finetune` and `evaluate`, refused by `pretrain`.
    #[serde(default, skip_serializing_if = "PerView::is_empty")]
    pub base: PerView<PathBuf>,
    /// `evaluate` only: adapter file per view, applied to that view's base (default: none).
    /// Given, it must cover every view.
    #[serde(default, skip_serializing_if = "PerView::is_empty")]
    pub adapters: PerView<PathBuf>,
    /// Seeds the model and adapter initialisation and the batch sampler (default 0).
    #[serde(default)]
    pub seed: u64,
    /// `cpu` or `cuda:N`; absent (default, and always in planned jobs) means the device is
    /// chosen where the job runs (`worker --device`, RANKSWEEP_DEVICE, CUDA_VISIBLE_DEVICES:
    /// see `nn::device`). Never part of the job key.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_display",
        deserialize_with = "de_opt_fromstr"
    )]
    pub device: Option<DeviceSpec>,
    /// CPU threads for this job; 0 (default) = rayon's default (`RAYON_NUM_THREADS` or all
    /// cores).
    #[serde(default)]
    pub threads: usize,
    /// Output folder: checkpoints, `pred/<case>.nii.gz`, `metrics.csv`, `result.json`.
    /// Required.
    pub output: PathBuf,
    /// Wall-clock limit in seconds, checked before every step and case (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
}

/// One optional value per view, written as a map: `{axial: a.safetensors, coronal: c.safetensors}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerView<T> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub axial: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coronal: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sagittal: Option<T>,
}

impl<T> Default for PerView<T> {
    fn default() -> Self {
        PerView {
            axial: None,
            coronal: None,
            sagittal: None,
        }
    }
}

impl<T> PerView<T> {
    pub fn get(&self, view: View) -> Option<&T> {
        match view {
            View::Axial => self.axial.as_ref(),
            View::Coronal => self.coronal.as_ref(),
            View::Sagittal => self.sagittal.as_ref(),
        }
    }

    pub fn set(&mut self, view: View, value: T) {
        let slot = match view {
            View::Axial => &mut self.axial,
            View::Coronal => &mut self.coronal,
            View::Sagittal => &mut self.sagittal,
        };
        *slot = Some(value);
    }

    pub fn contains(&self, view: View) -> bool {
        self.get(view).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.views().next().is_none()
    }

    /// The views that have a value, in axial, coronal, sagittal order.
    pub fn views(&self) -> impl Iterator<Item = View> + '_ {
        View::ALL.into_iter().filter(|v| self.contains(*v))
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        [&mut self.axial, &mut self.coronal, &mut self.sagittal]
            .into_iter()
            .flatten()
    }
}

fn default_views() -> Vec<View> {
    vec![View::Axial]
}

fn ser_opt_display<T: std::fmt::Display, S: Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

fn de_opt_fromstr<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
    D: Deserializer<'de>,
{
    de_fromstr(d).map(Some)
}

fn ser_label_map<S: Serializer>(v: &LabelMap, s: S) -> Result<S::Ok, S::Error> {
    match v {
        LabelMap::NonZero => s.serialize_str("nonzero"),
        LabelMap::Values(vs) => {
            s.collect_str(&vs.iter().map(u8::to_string).collect::<Vec<_>>().join(","))
        }
    }
}

fn de_fromstr<'de, T, D>(d: D) -> Result<T, D::Error>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
    D: Deserializer<'de>,
{
    // Numbers too, so that `labels: 4` works as well as `labels: "1,4"`.
    let v = serde_yaml::Value::deserialize(d)?;
    let s = match v {
        serde_yaml::Value::String(s) => s,
        serde_yaml::Value::Number(n) => n.to_string(),
        other => {
            return Err(serde::de::Error::custom(format!(
                "expected a string, got {other:?}"
            )));
        }
    };
    s.parse().map_err(serde::de::Error::custom)
}

/// Why a job could not run, or how it stopped. [`JobError::class`] gives the exit class.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{}: cannot read job file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: invalid job file: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("job `{field}`: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{}: {source}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<JobError>,
    },
    #[error("dataset: {0}")]
    Dataset(Box<crate::data::layout::LayoutError>),
    #[error("`data.labels`: {0}")]
    Labels(#[from] crate::data::layout::LabelMapError),
    #[error("splits: {0}")]
    Folds(Box<crate::data::folds::FoldError>),
    #[error("{0}")]
    Volume(Box<crate::data::nifti::VolumeError>),
    #[error("training data: {0}")]
    Sampling(Box<crate::data::sampling::SamplingError>),
    #[error("checkpoint {0}")]
    Checkpoint(Box<crate::model::checkpoint::CheckpointError>),
    #[error("`adaptation`: {0}")]
    Adapt(#[from] crate::model::AdaptError),
    #[error("`device`: {0}")]
    Device(#[from] crate::nn::device::DeviceError),
    #[error("prediction: {0}")]
    Predict(Box<super::predict::PredictError>),
    #[error("metrics of case `{case}`: {source}")]
    Metrics {
        case: String,
        source: Box<crate::metrics::MetricsError>,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Candle {
        context: String,
        source: Box<candle_core::Error>,
    },
    #[error("{context}: out of memory: {message}")]
    OutOfMemory { context: String, message: String },
    #[error("{view} step {step}: the loss is {loss} (non-finite); stopped")]
    NonFinite { view: View, step: usize, loss: f32 },
    #[error("interrupted by a signal {at}; no result written")]
    Interrupted { at: String },
    #[error("timed out after {limit_s} s (`timeout_s`) {at}; no result written")]
    Timeout { limit_s: f64, at: String },
}

/// The large sources are boxed so that `Result<_, JobError>` stays small.
macro_rules! boxed_from {
    ($($variant:ident: $ty:ty),* $(,)?) => {$(
        impl From<$ty> for JobError {
            fn from(e: $ty) -> Self {
                JobError::$variant(Box::new(e))
            }
        }
    )*};
}

boxed_from! {
    Dataset: crate::data::layout::LayoutError,
    Folds: crate::data::folds::FoldError,
    Volume: crate::data::nifti::VolumeError,
    Sampling: crate::data::sampling::SamplingError,
    Checkpoint: crate::model::checkpoint::CheckpointError,
    Predict: super::predict::PredictError,
}

impl JobError {
    /// The exit class this error ends the worker with.
    pub fn class(&self) -> ExitClass {
        match self {
            JobError::InFile { source, .. } => source.class(),
            JobError::OutOfMemory { .. } => ExitClass::Oom,
            JobError::NonFinite { .. } => ExitClass::Nan,
            JobError::Interrupted { .. } => ExitClass::Interrupted,
            JobError::Timeout { .. } => ExitClass::Timeout,
            JobError::Candle { source, .. } if is_oom(&source.to_string()) => ExitClass::Oom,
            _ => ExitClass::Failed,
        }
    }

    /// A tensor error with context; an allocation failure becomes [`JobError::OutOfMemory`].
    pub fn candle(context: impl Into<String>, source: candle_core::Error) -> JobError {
        let context = context.into();
        let message = source.to_string();
        if is_oom(&message) {
            JobError::OutOfMemory { context, message }
        } else {
            JobError::Candle {
                context,
                source: Box::new(source),
            }
        }
    }

    fn invalid(field: &str, reason: impl Into<String>) -> JobError {
        JobError::Invalid {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

/// CUDA's `CUDA_ERROR_OUT_OF_MEMORY` / cuBLAS / cuDNN allocation failures, as candle words them.
fn is_oom(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("out of memory") || m.contains("out_of_memory") || m.contains("alloc_failed")
}

impl JobConfig {
    /// The job's `train.precision` (`f32` or `bf16`), `f32` when the field is absent. Read
    /// through the serialized form so that it works whether or not this build's
    /// [`TrainConfig`] has the field.
    pub fn precision(&self) -> String {
        serde_json::to_value(&self.train)
            .ok()
            .and_then(|v| {
                v.get("precision")
                    .and_then(|p| p.as_str())
                    .map(String::from)
            })
            .unwrap_or_else(|| "f32".to_string())
    }

    /// The device the job runs on once the worker chose it (`cpu` if nobody did).
    pub fn device_or_cpu(&self) -> DeviceSpec {
        self.device.unwrap_or(DeviceSpec::Cpu)
    }

    /// Parses YAML (JSON is YAML too) and validates. Relative paths stay relative.
    pub fn from_text(text: &str) -> Result<JobConfig, JobError> {
        let job: JobConfig = serde_yaml::from_str(text).map_err(|e| JobError::Parse {
            path: PathBuf::from("<job>"),
            message: e.to_string(),
        })?;
        job.validate()?;
        Ok(job)
    }

    /// Reads a job file (`.yaml`, `.yml` or `.json`), resolves its relative paths against the
    /// file's folder and validates it; errors name the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<JobConfig, JobError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| JobError::Read {
            path: path.into(),
            source,
        })?;
        let mut job: JobConfig = serde_yaml::from_str(&text).map_err(|e| JobError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        job.resolve_paths(dir);
        job.validate().map_err(|e| JobError::InFile {
            path: path.into(),
            source: Box::new(e),
        })?;
        Ok(job)
    }

    /// Makes every relative path absolute-or-relative-to-`dir`.
    pub fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        fix(&mut self.data.dataset);
        if let Some(s) = &mut self.data.splits {
            fix(s);
        }
        fix(&mut self.output);
        self.base.values_mut().for_each(fix);
        self.adapters.values_mut().for_each(fix);
    }

    /// The splits file this job uses.
    pub fn splits_path(&self) -> PathBuf {
        self.data
            .splits
            .clone()
            .unwrap_or_else(|| self.output.join(crate::data::folds::SPLITS_FILE))
    }

    /// Checks everything that needs no file: fields and how they combine with the stage.
    pub fn validate(&self) -> Result<(), JobError> {
        self.model
            .validate()
            .map_err(|e| JobError::invalid("model", e.to_string()))?;
        self.adaptation.validate()?;
        if self.views.is_empty() {
            return Err(JobError::invalid(
                "views",
                "expected at least one of axial, coronal, sagittal",
            ));
        }
        for (i, v) in self.views.iter().enumerate() {
            if self.views[..i].contains(v) {
                return Err(JobError::invalid("views", format!("`{v}` is listed twice")));
            }
        }
        if self.data.windows.is_empty() {
            return Err(JobError::invalid(
                "data.windows",
                "expected at least one HU window",
            ));
        }
        if self.data.folds < 2 {
            return Err(JobError::invalid(
                "data.folds",
                format!("expected at least 2 folds, got {}", self.data.folds),
            ));
        }
        if let Some(t) = self.timeout_s
            && !(t.is_finite() && t > 0.0)
        {
            return Err(JobError::invalid(
                "timeout_s",
                format!("expected a positive number of seconds, got {t}"),
            ));
        }
        let t = &self.train;
        if t.predict_batch == 0 {
            return Err(JobError::invalid(
                "train.predict_batch",
                "expected a positive integer, got 0",
            ));
        }
        if self.stage.trains() {
            if t.steps == 0 {
                return Err(JobError::invalid(
                    "train.steps",
                    "expected a positive integer, got 0",
                ));
            }
            if t.batch_size == 0 {
                return Err(JobError::invalid(
                    "train.batch_size",
                    "expected a positive integer, got 0",
                ));
            }
            if t.log_every == 0 {
                return Err(JobError::invalid(
                    "train.log_every",
                    "expected a positive integer, got 0",
                ));
            }
            if !(self.optimizer.lr.is_finite() && self.optimizer.lr > 0.0) {
                return Err(JobError::invalid(
                    "optimizer.lr",
                    format!(
                        "expected a positive finite number, got {}",
                        self.optimizer.lr
                    ),
                ));
            }
            if t.selection == Selection::BestVal {
                if !(t.val_fraction > 0.0 && t.val_fraction < 1.0) {
                    return Err(JobError::invalid(
                        "train.val_fraction",
                        format!(
                            "`selection: best-val` needs a share in (0, 1), got {}",
                            t.val_fraction
                        ),
                    ));
                }
                if t.val_every == 0 {
                    return Err(JobError::invalid(
                        "train.val_every",
                        "expected a positive integer, got 0",
                    ));
                }
            }
        }
        let missing_base = self.views.iter().find(|v| !self.base.contains(**v));
        let kind = self.adaptation.kind;
        match self.stage {
            Stage::Pretrain => {
                if kind != AdaptationKind::None {
                    return Err(JobError::invalid(
                        "adaptation",
                        format!(
                            "`stage: pretrain` trains every tensor from scratch; `{kind}` applies to finetune only"
                        ),
                    ));
                }
                if !self.base.is_empty() {
                    return Err(JobError::invalid(
                        "base",
                        "`stage: pretrain` starts from scratch and takes no base checkpoint",
                    ));
                }
            }
            Stage::Finetune | Stage::Evaluate => {
                if self.data.fold.is_none() {
                    return Err(JobError::invalid(
                        "data.fold",
                        format!(
                            "`stage: {}` needs a fold (its test cases are the fold's `val`)",
                            self.stage
                        ),
                    ));
                }
                if let Some(v) = missing_base {
                    return Err(JobError::invalid(
                        "base",
                        format!(
                            "`stage: {}` needs a base checkpoint for view `{v}` (listed in `views`)",
                            self.stage
                        ),
                    ));
                }
                if let Some(v) = self.base.views().find(|v| !self.views.contains(v)) {
                    return Err(JobError::invalid(
                        "base",
                        format!("a checkpoint is given for view `{v}`, which is not in `views`"),
                    ));
                }
            }
        }
        match self.stage {
            Stage::Finetune if kind == AdaptationKind::None => {
                return Err(JobError::invalid(
                    "adaptation",
                    "`stage: finetune` with kind `none` trains nothing; use `stage: evaluate` for the `none` arm",
                ));
            }
            Stage::Evaluate if kind != AdaptationKind::None => {
                return Err(JobError::invalid(
                    "adaptation",
                    format!(
                        "`stage: evaluate` trains nothing; `{kind}` belongs to a finetune job (evaluate its adapter with `adapters`)"
                    ),
                ));
            }
            _ => {}
        }
        if !self.adapters.is_empty() {
            if self.stage != Stage::Evaluate {
                return Err(JobError::invalid(
                    "adapters",
                    format!(
                        "only `stage: evaluate` takes adapter files, not `{}`",
                        self.stage
                    ),
                ));
            }
            if let Some(v) = self.views.iter().find(|v| !self.adapters.contains(**v)) {
                return Err(JobError::invalid(
                    "adapters",
                    format!(
                        "no adapter for view `{v}`: give one for every view in `views`, or none"
                    ),
                ));
            }
            if let Some(v) = self.adapters.views().find(|v| !self.views.contains(v)) {
                return Err(JobError::invalid(
                    "adapters",
                    format!("an adapter is given for view `{v}`, which is not in `views`"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINETUNE: &str = "
stage: finetune
data:
  dataset: sah
  fold: 1
  labels: '1,4'
  windows: [brain, L75/W215]
model: {in_channels: 2, features: [4, 8, 16]}
adaptation: {kind: conv-lora, module: decoder, rank: 4}
optimizer: {lr: 0.01}
train: {steps: 20, selection: best-val}
views: [axial, coronal]
base: {axial: ckpt/base-axial.safetensors, coronal: /abs/base-coronal.safetensors}
device: cpu
output: out/job1
";

    #[test]
    fn parses_yaml_with_defaults() {
        let job = JobConfig::from_text(FINETUNE).unwrap();
        assert_eq!(job.stage, Stage::Finetune);
        assert_eq!(job.data.labels, LabelMap::Values(vec![1, 4]));
        assert_eq!(job.data.windows, vec![HuWindow::BRAIN, HuWindow::SUBDURAL]);
        assert_eq!(job.train.steps, 20);
        assert_eq!(job.train.batch_size, 8);
        assert_eq!(job.train.selection, Selection::BestVal);
        assert_eq!(job.data.folds, 5);
        assert_eq!(job.data.strata, Strata::default());
        assert_eq!(job.device, Some(DeviceSpec::Cpu));
        assert_eq!(job.precision(), "f32");
        assert_eq!(job.adaptation.rank, Some(4));
        assert_eq!(job.optimizer.lr, 0.01);
        assert_eq!(job.optimizer.beta2, 0.999);
    }

    #[test]
    fn json_round_trip_and_relative_paths() {
        let mut job = JobConfig::from_text(FINETUNE).unwrap();
        let json = serde_json::to_string(&job).unwrap();
        assert!(json.contains(r#""labels":"1,4""#), "{json}");
        assert!(json.contains(r#""device":"cpu""#), "{json}");
        assert_eq!(JobConfig::from_text(&json).unwrap(), job);
        job.resolve_paths(Path::new("/jobs"));
        assert_eq!(job.data.dataset, PathBuf::from("/jobs/sah"));
        assert_eq!(job.output, PathBuf::from("/jobs/out/job1"));
        assert_eq!(
            job.base.axial.clone().unwrap(),
            PathBuf::from("/jobs/ckpt/base-axial.safetensors")
        );
        assert_eq!(
            job.base.coronal.clone().unwrap(),
            PathBuf::from("/abs/base-coronal.safetensors")
        );
        assert_eq!(
            job.splits_path(),
            PathBuf::from("/jobs/out/job1/splits.json")
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = JobConfig::from_text(&FINETUNE.replace("device: cpu", "devise: cpu"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `devise`"), "{err}");
        let err = JobConfig::from_text(&FINETUNE.replace("steps: 20", "stepz: 20"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `stepz`"), "{err}");
    }

    fn err_of(text: &str) -> String {
        JobConfig::from_text(text).unwrap_err().to_string()
    }

    #[test]
    fn cross_field_checks_name_the_fields() {
        let e = err_of(&FINETUNE.replace("  fold: 1\n", ""));
        assert!(e.contains("`data.fold`") && e.contains("finetune"), "{e}");
        let e = err_of(&FINETUNE.replace(", coronal: /abs/base-coronal.safetensors", ""));
        assert!(e.contains("`base`") && e.contains("coronal"), "{e}");
        let e = err_of(&FINETUNE.replace("stage: finetune", "stage: pretrain"));
        assert!(e.contains("`adaptation`") && e.contains("pretrain"), "{e}");
        let e = err_of(&FINETUNE.replace(
            "{kind: conv-lora, module: decoder, rank: 4}",
            "{kind: none}",
        ));
        assert!(e.contains("stage: evaluate"), "{e}");
        let e = err_of(&FINETUNE.replace("stage: finetune", "stage: evaluate"));
        assert!(e.contains("`stage: evaluate` trains nothing"), "{e}");
        let e = err_of(&FINETUNE.replace("steps: 20", "steps: 0"));
        assert!(
            e.contains("`train.steps`: expected a positive integer, got 0"),
            "{e}"
        );
        let e = err_of(&FINETUNE.replace("[axial, coronal]", "[axial, axial]"));
        assert!(e.contains("`views`") && e.contains("twice"), "{e}");
        let e = err_of(&FINETUNE.replace("device: cpu", "device: gpu7"));
        assert!(e.contains("unknown device `gpu7`"), "{e}");
        let e = err_of(&FINETUNE.replace("'1,4'", "'0'"));
        assert!(e.contains("background"), "{e}");
        let e = err_of(&FINETUNE.replace("rank: 4", "rank: 0"));
        assert!(e.contains("`rank`"), "{e}");
    }

    #[test]
    fn minimal_pretrain_job() {
        let job =
            JobConfig::from_text("stage: pretrain\ndata: {dataset: tbi}\noutput: o\n").unwrap();
        assert_eq!(job.views, vec![View::Axial]);
        assert_eq!(job.model, UnetConfig::default());
        assert_eq!(job.adaptation, AdaptationSpec::none());
        assert_eq!(job.data.fold, None);
        assert_eq!(job.train, TrainConfig::default());
        assert_eq!(job.data.labels, LabelMap::NonZero);
        assert_eq!(job.device, None);
        let json = serde_json::to_string(&job).unwrap();
        assert!(
            !json.contains("device"),
            "a job without a device writes none: {json}"
        );
    }

    #[test]
    fn errors_map_to_exit_classes() {
        let nan = JobError::NonFinite {
            view: View::Axial,
            step: 1,
            loss: f32::NAN,
        };
        assert_eq!(nan.class(), ExitClass::Nan);
        let oom = JobError::candle(
            "step 3",
            candle_core::Error::Msg(
                "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
            ),
        );
        assert_eq!(oom.class(), ExitClass::Oom);
        let other = JobError::candle("step 3", candle_core::Error::Msg("shape mismatch".into()));
        assert_eq!(other.class(), ExitClass::Failed);
        let wrapped = JobError::InFile {
            path: "j.yaml".into(),
            source: Box::new(JobError::Interrupted { at: "x".into() }),
        };
        assert_eq!(wrapped.class(), ExitClass::Interrupted);
        assert_eq!(
            JobError::Timeout {
                limit_s: 1.0,
                at: "x".into()
            }
            .class(),
            ExitClass::Timeout
        );
    }
}
