//! Running a job: train → select → predict the test cases in 3D → measure → write artifacts,
//! with `result.json` last.
//!
//! Entry point: [`run_job`]. It reports [`Event`]s to a callback (the worker prints them as
//! JSON lines, `ranksweep train` draws a progress bar) and polls a stop flag (set by the signal
//! handler of [`super::signal`]) before every step and every test case.
//!
//! Artifacts in the job's `output` folder:
//! - `base-<view>.safetensors` (`pretrain`) or `adapter-<view>.safetensors` (`finetune`);
//! - `pred/<case>.nii.gz`: the fused mask on the case's own grid and header (u8);
//! - `metrics.csv`: one row per test case (counts, Dice, IoU, volumes, HD95, ASSD, stratum);
//! - `result.json` ([`JobResult`]): written last, by atomic rename, only on success — the
//!   sentinel the orchestrator trusts. A stale one is removed when the job starts, so a rerun
//!   that fails or is interrupted leaves none.
//!
//! Design:
//! - One model per view, trained one after the other on the same cases, each with its own
//!   sampler stream (`seed + view index`); prediction averages the views' probabilities.
//! - `best-val` holds out a seeded share of the fold's training cases, validates by mean 3D
//!   Dice, and keeps a copy of the trainable tensors of the best pass; they are restored at
//!   the end.
//! - A non-finite loss stops the job at that step (class `nan`); a step never updates on it
//!   ([`super::Trainer::step`]).
//! - With `threads > 0` the whole job runs in its own rayon pool of that size.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use candle_core::{Device, Tensor};
use ndarray::ArrayView3;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::bench::peak_rss_mb;
use super::job::{JobConfig, JobError, Selection, Stage};
use super::predict::{ViewModel, load_adapted, predict_probabilities, predict_view, threshold};
use super::protocol::{Event, ExitClass, PROTOCOL_VERSION, finite};
use super::step::Trainer;
use crate::data::Volume;
use crate::data::folds::load_or_create_splits;
use crate::data::layout::{Dataset, index_dataset};
use crate::data::nifti::write_u8;
use crate::data::preprocess::View;
use crate::data::sampling::{SamplerConfig, SliceSampler, TrainCase};
use crate::metrics::{CaseMetrics, Confusion, Evaluation, NamedCase, mean_sd};
use crate::model::checkpoint::{file_sha256, load_base, save_adapter, save_base, write_atomic};
use crate::model::{AdaptationSpec, Selector, Unet2d};
use crate::nn::DeviceSpec;
use crate::nn::device::{DeviceEnv, DeviceError, RanOn, cuda_built, resolve, visible_gpus};

/// Sets `job.device` to the device this process runs it on: `flag`, else RANKSWEEP_DEVICE, else
/// the job file's, else the environment's GPU on a CUDA build, else the CPU. A GPU job on a build
/// without CUDA or without a visible GPU is an error ([`DeviceError::is_usage`]).
pub fn choose_device(job: &mut JobConfig, flag: Option<DeviceSpec>) -> Result<(), DeviceError> {
    let env = DeviceEnv::from_process();
    let gpus = if cuda_built() { visible_gpus() } else { 0 };
    job.device = Some(resolve(flag, job.device, &env, cuda_built(), gpus)?);
    Ok(())
}

pub use super::files::{METRICS_FILE, PRED_DIR, RESULT_FILE};

/// Which cases a job used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseLists {
    /// Cases the model trained on.
    pub train: Vec<String>,
    /// Held out from the fold's training cases for `best-val`.
    pub val: Vec<String>,
    /// Predicted and measured (the fold's `val`).
    pub test: Vec<String>,
}

/// Step wall times of one view, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepTimes {
    pub median_s: f64,
    pub mean_s: f64,
    pub min_s: f64,
    pub max_s: f64,
}

impl StepTimes {
    fn of(times: &[f64]) -> Option<StepTimes> {
        if times.is_empty() {
            return None;
        }
        let mut t = times.to_vec();
        t.sort_by(f64::total_cmp);
        Some(StepTimes {
            median_s: t[t.len() / 2],
            mean_s: t.iter().sum::<f64>() / t.len() as f64,
            min_s: t[0],
            max_s: t[t.len() - 1],
        })
    }
}

/// What happened to one view's model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewResult {
    pub view: View,
    /// Tensors the adaptation trains (for `evaluate` with an adapter: the adapter's size; for
    /// `evaluate` of a base: 0).
    pub trainable_params: usize,
    pub total_params: usize,
    /// Steps run (0 for `evaluate`).
    pub steps: usize,
    /// The step whose weights were kept (`steps` for `last`).
    pub selected_step: usize,
    /// `best-val`: the kept weights' validation Dice.
    pub best_val_dice: Option<f64>,
    pub final_loss: Option<f32>,
    /// `(step, loss)` at every logged step.
    pub loss_curve: Vec<(usize, f32)>,
    pub step_times: Option<StepTimes>,
    /// Training time of this view, validation included.
    pub train_s: f64,
    /// Base checkpoint read (`finetune`, `evaluate`).
    pub base: Option<PathBuf>,
    /// Adapter file read (`evaluate` with adapters).
    pub adapter: Option<PathBuf>,
    /// Checkpoint written, relative to the output folder.
    pub checkpoint: Option<PathBuf>,
    pub checkpoint_sha256: Option<String>,
}

/// Wall times in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Durations {
    /// Validation, indexing and loading before training.
    pub setup_s: f64,
    pub train_s: f64,
    pub predict_s: f64,
    pub total_s: f64,
}

/// `result.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub protocol: u32,
    /// Always `ok`: other classes leave no result.
    pub class: ExitClass,
    pub stage: Stage,
    pub code_version: String,
    pub seed: u64,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// rayon threads the job ran with.
    pub threads: usize,
    /// What ran the job: CPU threads, or GPU name, driver, CUDA version, cuDNN; and precision.
    /// Absent in results of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran_on: Option<RanOn>,
    pub dataset: PathBuf,
    pub dataset_fingerprint: String,
    pub fold: Option<usize>,
    pub cases: CaseLists,
    pub views: Vec<ViewResult>,
    /// Summed over the views' models.
    pub trainable_params: usize,
    pub total_params: usize,
    /// Peak resident memory of the process in MB.
    pub peak_rss_mb: Option<f64>,
    pub durations: Durations,
    pub started_unix_s: f64,
    pub finished_unix_s: f64,
    /// Per-case metrics and their summary; `None` without test cases.
    pub evaluation: Option<Evaluation>,
    /// The job as run (paths resolved).
    pub job: JobConfig,
}

impl JobResult {
    pub fn read(path: &Path) -> Result<JobResult, JobError> {
        let text = std::fs::read_to_string(path).map_err(|source| JobError::Io {
            path: path.into(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| JobError::Parse {
            path: path.into(),
            message: e.to_string(),
        })
    }
}

/// Runs a job to the end. Events go to `emit` in order; `stop` is polled before every step and
/// every test case. On any error no `result.json` exists; [`JobError::class`] says which class.
pub fn run_job(
    job: &JobConfig,
    stop: &AtomicBool,
    emit: &mut (dyn FnMut(&Event) + Send),
) -> Result<JobResult, JobError> {
    if job.threads == 0 {
        return Runner::new(job, stop, emit).run();
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(job.threads)
        .build()
        .map_err(|e| JobError::Invalid {
            field: "threads".into(),
            reason: format!("cannot start {} threads: {e}", job.threads),
        })?;
    pool.install(|| Runner::new(job, stop, emit).run())
}

struct Runner<'a> {
    job: &'a JobConfig,
    stop: &'a AtomicBool,
    emit: &'a mut (dyn FnMut(&Event) + Send),
    started: Instant,
}

/// A trained or loaded model, ready to predict, and its record.
struct ViewOutcome {
    model: ViewModel,
    result: ViewResult,
}

impl<'a> Runner<'a> {
    fn new(
        job: &'a JobConfig,
        stop: &'a AtomicBool,
        emit: &'a mut (dyn FnMut(&Event) + Send),
    ) -> Self {
        Runner {
            job,
            stop,
            emit,
            started: Instant::now(),
        }
    }

    /// Stops on a signal or at the time limit; `at` says where, for the message.
    fn checkpoint(&self, at: impl FnOnce() -> String) -> Result<(), JobError> {
        if self.stop.load(Ordering::SeqCst) {
            return Err(JobError::Interrupted { at: at() });
        }
        if let Some(limit_s) = self.job.timeout_s
            && self.started.elapsed().as_secs_f64() > limit_s
        {
            return Err(JobError::Timeout { limit_s, at: at() });
        }
        Ok(())
    }

    fn run(mut self) -> Result<JobResult, JobError> {
        let job = self.job;
        let started_unix_s = unix_now();
        job.validate()?;
        let out = &job.output;
        std::fs::create_dir_all(out).map_err(|source| JobError::Io {
            path: out.clone(),
            source,
        })?;
        remove_if_exists(&out.join(RESULT_FILE))?;
        let spec = job.device_or_cpu();
        let device = spec.open()?;
        let ran_on = RanOn::detect(
            spec,
            rayon::current_num_threads(),
            &job.precision(),
            &DeviceEnv::from_process(),
        );
        check_precision(job.train.precision, &device)?;

        let dataset = index_dataset(&job.data.dataset)?;
        job.data.labels.check(&dataset)?;
        let images = dataset.cases.first().map_or(1, |c| c.images.len());
        let want = images * job.data.windows.len();
        if job.model.in_channels != want {
            return Err(JobError::Invalid {
                field: "model.in_channels".into(),
                reason: format!(
                    "is {}, but {} image(s) per case × {} window(s) in `data.windows` give {want} channels",
                    job.model.in_channels,
                    images,
                    job.data.windows.len()
                ),
            });
        }
        let CaseLists {
            train: fit_ids,
            val: val_ids,
            test: test_ids,
        } = self.case_lists(&dataset)?;
        let fit_cases = if job.stage.trains() {
            load_train_cases(&dataset, &fit_ids, job)?
        } else {
            Vec::new()
        };
        let val_cases = load_train_cases(&dataset, &val_ids, job)?;
        let steps = if job.stage.trains() {
            job.train.steps
        } else {
            0
        };
        (self.emit)(&Event::Start {
            protocol: PROTOCOL_VERSION,
            stage: job.stage,
            views: job.views.clone(),
            device: spec.to_string(),
            ran_on: Some(ran_on.clone()),
            train_cases: fit_ids.len(),
            val_cases: val_ids.len(),
            test_cases: test_ids.len(),
            steps,
        });
        let setup_s = self.started.elapsed().as_secs_f64();

        let train_t0 = Instant::now();
        let mut outcomes = Vec::with_capacity(job.views.len());
        for (vi, &view) in job.views.iter().enumerate() {
            let outcome = match job.stage {
                Stage::Pretrain | Stage::Finetune => {
                    self.train_view(vi, view, &device, &fit_cases, &val_cases)?
                }
                Stage::Evaluate => self.load_view(view, &device)?,
            };
            outcomes.push(outcome);
        }
        let train_s = train_t0.elapsed().as_secs_f64();

        let predict_t0 = Instant::now();
        let models: Vec<ViewModel> = outcomes.iter().map(|o| o.model.clone()).collect();
        let cases = self.predict_cases(&dataset, &test_ids, &models)?;
        let evaluation = if cases.is_empty() {
            None
        } else {
            Some(
                Evaluation::new(cases, job.data.strata.clone()).map_err(|source| {
                    JobError::Metrics {
                        case: "(summary)".into(),
                        source: Box::new(source),
                    }
                })?,
            )
        };
        if let Some(ev) = &evaluation {
            let path = out.join(METRICS_FILE);
            write_atomic(&path, metrics_csv(&ev.cases).as_bytes())
                .map_err(|source| JobError::Io { path, source })?;
        }
        let predict_s = predict_t0.elapsed().as_secs_f64();

        let views: Vec<ViewResult> = outcomes.into_iter().map(|o| o.result).collect();
        let result = JobResult {
            protocol: PROTOCOL_VERSION,
            class: ExitClass::Ok,
            stage: job.stage,
            code_version: crate::version::code_version(),
            seed: job.seed,
            device: spec.to_string(),
            ran_on: Some(ran_on),
            threads: rayon::current_num_threads(),
            dataset: dataset.root.clone(),
            dataset_fingerprint: dataset.fingerprint.clone(),
            fold: job.data.fold,
            cases: CaseLists {
                train: fit_ids,
                val: val_ids,
                test: test_ids,
            },
            trainable_params: views.iter().map(|v| v.trainable_params).sum(),
            total_params: views.iter().map(|v| v.total_params).sum(),
            views,
            peak_rss_mb: finite(peak_rss_mb()),
            durations: Durations {
                setup_s,
                train_s,
                predict_s,
                total_s: self.started.elapsed().as_secs_f64(),
            },
            started_unix_s,
            finished_unix_s: unix_now(),
            evaluation,
            job: job.clone(),
        };
        // Last: the sentinel. Nothing after this may fail.
        self.checkpoint(|| "before writing the result".into())?;
        let path = out.join(RESULT_FILE);
        let json = serde_json::to_string_pretty(&result).expect("results serialize") + "\n";
        write_atomic(&path, json.as_bytes()).map_err(|source| JobError::Io { path, source })?;
        Ok(result)
    }

    /// Training cases (minus the `best-val` hold-out), validation cases, test cases.
    fn case_lists(&self, dataset: &Dataset) -> Result<CaseLists, JobError> {
        let job = self.job;
        let (train, test) = match job.data.fold {
            None => (dataset.case_ids(), Vec::new()),
            Some(fold) => {
                let (splits, _) = load_or_create_splits(
                    job.splits_path(),
                    &dataset.case_ids(),
                    job.data.folds,
                    job.data.split_seed,
                    None,
                )?;
                let f = splits.fold(fold)?;
                (f.train.clone(), f.val.clone())
            }
        };
        if !job.stage.trains() {
            return Ok(CaseLists {
                train: Vec::new(),
                val: Vec::new(),
                test,
            });
        }
        if train.is_empty() {
            return Err(JobError::Invalid {
                field: "data.fold".into(),
                reason: "the fold has no training cases".into(),
            });
        }
        if job.train.selection != Selection::BestVal {
            return Ok(CaseLists {
                train,
                val: Vec::new(),
                test,
            });
        }
        let n = train.len();
        if n < 2 {
            return Err(JobError::Invalid {
                field: "train.selection".into(),
                reason: format!(
                    "`best-val` holds out validation cases from the training cases, but there is only {n}"
                ),
            });
        }
        let n_val = ((job.train.val_fraction * n as f64).round() as usize).clamp(1, n - 1);
        let mut ids = train;
        ids.sort();
        ids.shuffle(&mut ChaCha8Rng::seed_from_u64(job.seed));
        let mut val = ids.split_off(n - n_val);
        ids.sort();
        val.sort();
        Ok(CaseLists {
            train: ids,
            val,
            test,
        })
    }

    fn train_view(
        &mut self,
        vi: usize,
        view: View,
        device: &Device,
        fit: &[TrainCase],
        val: &[TrainCase],
    ) -> Result<ViewOutcome, JobError> {
        let job = self.job;
        let t0 = Instant::now();
        let cerr = |ctx: String| move |e| JobError::candle(ctx, e);
        let (mut model, base) = match job.stage {
            Stage::Pretrain => {
                let mut m = Unet2d::init(&job.model, job.seed, device)
                    .map_err(cerr(format!("initialising the {view} model")))?;
                AdaptationSpec::full(Selector::all()).apply(&mut m, job.seed)?;
                (m, None)
            }
            _ => {
                let path = job
                    .base
                    .get(view)
                    .expect("validated: finetune has a base per view");
                let m = self.load_base_checked(view, path, device)?;
                (m, Some(path.clone()))
            }
        };
        if job.stage == Stage::Finetune {
            job.adaptation.apply(&mut model, job.seed)?;
        }
        let trainable_params = model.trainable_params();
        let total_params = model.total_params();
        let mut sampler = SliceSampler::new(
            fit.to_vec(),
            SamplerConfig {
                view,
                windows: job.data.windows.clone(),
                batch_size: job.train.batch_size,
                foreground_fraction: job.train.foreground_fraction,
                multiple: job.model.multiple(),
                augment: job.train.augment,
                seed: job.seed.wrapping_add(vi as u64),
            },
        )?;
        let steps = job.train.steps;
        let mut trainer = Trainer::new(model, job.optimizer, steps)
            .map_err(cerr(format!("the {view} optimizer")))?;
        trainer.set_precision(job.train.precision);
        let best_val = job.train.selection == Selection::BestVal;
        let mut best: Option<(f64, usize, Vec<Tensor>)> = None;
        let mut times = Vec::with_capacity(steps);
        let mut curve = Vec::new();
        let mut last_loss = None;
        let views_left = job.views.len() - vi - 1;
        for step in 1..=steps {
            self.checkpoint(|| format!("before {view} step {step}"))?;
            let b = sampler.next_batch();
            let ctx = || format!("{view} step {step}");
            let y_shape = b.target_shape().to_vec();
            let x = Tensor::from_vec(b.inputs, b.shape.to_vec(), device).map_err(cerr(ctx()))?;
            let y = Tensor::from_vec(b.targets, y_shape, device).map_err(cerr(ctx()))?;
            let t = Instant::now();
            let stats = trainer.step(&x, &y).map_err(cerr(ctx()))?;
            device.synchronize().map_err(cerr(ctx()))?;
            let dt = t.elapsed().as_secs_f64();
            if !stats.loss.is_finite() {
                return Err(JobError::NonFinite {
                    view,
                    step,
                    loss: stats.loss,
                });
            }
            times.push(dt);
            last_loss = Some(stats.loss);
            if step % job.train.log_every == 0 || step == steps {
                curve.push((step, stats.loss));
                let mean = times.iter().sum::<f64>() / times.len() as f64;
                let left = (steps - step) + steps * views_left;
                (self.emit)(&Event::Step {
                    view,
                    step,
                    steps,
                    loss: stats.loss,
                    lr: stats.lr,
                    step_s: dt,
                    eta_s: mean * left as f64,
                });
            }
            if best_val && (step % job.train.val_every == 0 || step == steps) {
                self.checkpoint(|| format!("before validating {view} at step {step}"))?;
                let dice = validation_dice(&trainer.model, view, val, job)?;
                let improved = dice.is_finite() && best.as_ref().is_none_or(|(d, _, _)| dice > *d);
                if improved {
                    let snapshot = trainable_tensors(&trainer.model).map_err(cerr(format!(
                        "{view} step {step}: keeping the best weights"
                    )))?;
                    best = Some((dice, step, snapshot));
                }
                (self.emit)(&Event::Val {
                    view,
                    step,
                    dice: finite(dice),
                    best: improved,
                });
            }
        }
        let mut model = trainer.model;
        let (selected_step, best_val_dice) = match best {
            Some((dice, step, snapshot)) => {
                restore_trainable(&model, &snapshot)
                    .map_err(cerr(format!("{view}: restoring the best weights")))?;
                (step, Some(dice))
            }
            None => (steps, None),
        };
        // Checkpoint names carry the view, so several views share one folder.
        let (name, what) = match job.stage {
            Stage::Pretrain => (super::files::base_checkpoint(view), "base"),
            _ => (super::files::adapter_checkpoint(view), "adapter"),
        };
        let path = job.output.join(&name);
        if what == "base" {
            model = model
                .merged()
                .map_err(cerr(format!("{view}: freezing the trained model")))?;
            save_base(&model, &path)?;
        } else {
            let base_path = base.as_ref().expect("finetune has a base");
            save_adapter(&model, &job.adaptation, &file_sha256(base_path)?, &path)?;
        }
        let checkpoint_sha256 = Some(file_sha256(&path)?);
        (self.emit)(&Event::Checkpoint {
            view,
            path: PathBuf::from(&name),
        });
        let merged = model
            .merged()
            .map_err(cerr(format!("{view}: merging the adapters")))?;
        Ok(ViewOutcome {
            model: ViewModel {
                view,
                model: merged,
            },
            result: ViewResult {
                view,
                trainable_params,
                total_params,
                steps,
                selected_step,
                best_val_dice,
                final_loss: last_loss,
                loss_curve: curve,
                step_times: StepTimes::of(&times),
                train_s: t0.elapsed().as_secs_f64(),
                base,
                adapter: None,
                checkpoint: Some(PathBuf::from(name)),
                checkpoint_sha256,
            },
        })
    }

    /// A base checkpoint whose architecture is the job's.
    fn load_base_checked(
        &self,
        view: View,
        path: &Path,
        device: &Device,
    ) -> Result<Unet2d, JobError> {
        let m = load_base(path, device)?;
        if m.config() != &self.job.model {
            return Err(JobError::Invalid {
                field: "model".into(),
                reason: format!(
                    "the job has in_channels {} and features {:?}, but the {view} base checkpoint {} has {} and {:?}",
                    self.job.model.in_channels,
                    self.job.model.features,
                    path.display(),
                    m.config().in_channels,
                    m.config().features
                ),
            });
        }
        Ok(m)
    }

    /// `evaluate`: a base checkpoint and, if given, its adapter.
    fn load_view(&mut self, view: View, device: &Device) -> Result<ViewOutcome, JobError> {
        let job = self.job;
        let t0 = Instant::now();
        let base_path = job
            .base
            .get(view)
            .expect("validated: evaluate has a base per view");
        let base = self.load_base_checked(view, base_path, device)?;
        let adapter = job.adapters.get(view).cloned();
        let model = match &adapter {
            None => base,
            Some(path) => load_adapted(&base, base_path, path)?,
        };
        let (trainable_params, total_params) = (model.trainable_params(), model.total_params());
        let merged = model
            .merged()
            .map_err(|e| JobError::candle(format!("{view}: merging the adapter"), e))?;
        Ok(ViewOutcome {
            model: ViewModel {
                view,
                model: merged,
            },
            result: ViewResult {
                view,
                trainable_params,
                total_params,
                steps: 0,
                selected_step: 0,
                best_val_dice: None,
                final_loss: None,
                loss_curve: Vec::new(),
                step_times: None,
                train_s: t0.elapsed().as_secs_f64(),
                base: Some(base_path.clone()),
                adapter,
                checkpoint: None,
                checkpoint_sha256: None,
            },
        })
    }

    /// Predicts, writes and measures every test case.
    fn predict_cases(
        &mut self,
        dataset: &Dataset,
        ids: &[String],
        models: &[ViewModel],
    ) -> Result<Vec<NamedCase>, JobError> {
        let job = self.job;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let dir = job.output.join(PRED_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| JobError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut out = Vec::with_capacity(ids.len());
        for (index, id) in ids.iter().enumerate() {
            self.checkpoint(|| format!("before predicting case `{id}`"))?;
            let case = dataset_case(dataset, id)?;
            let loaded = dataset.load_case(case)?;
            let truth = job.data.labels.binarize(&loaded.label);
            let views: Vec<ArrayView3<'_, f32>> =
                loaded.images.iter().map(|v| v.data.view()).collect();
            let prob =
                predict_probabilities(models, &views, &job.data.windows, job.train.predict_batch)?;
            let mask: Volume<u8> = truth.with_data(threshold(&prob));
            let metrics = CaseMetrics::compute(
                mask.data.view(),
                truth.data.view(),
                truth.spacing,
                &job.data.strata,
            )
            .map_err(|source| JobError::Metrics {
                case: id.clone(),
                source: Box::new(source),
            })?;
            write_u8(&mask, dir.join(format!("{id}.nii.gz")))?;
            (self.emit)(&Event::Case {
                case: id.clone(),
                index,
                count: ids.len(),
                dice: finite(metrics.dice),
            });
            out.push(NamedCase {
                case: id.clone(),
                metrics,
            });
        }
        Ok(out)
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn remove_if_exists(path: &Path) -> Result<(), JobError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(JobError::Io {
            path: path.into(),
            source,
        }),
    }
}

fn dataset_case<'d>(
    dataset: &'d Dataset,
    id: &str,
) -> Result<&'d crate::data::layout::CaseIndex, JobError> {
    dataset.case(id).ok_or_else(|| JobError::Invalid {
        field: "data.splits".into(),
        reason: format!(
            "case `{id}` is not in the dataset {}",
            dataset.root.display()
        ),
    })
}

fn load_train_cases(
    dataset: &Dataset,
    ids: &[String],
    job: &JobConfig,
) -> Result<Vec<TrainCase>, JobError> {
    ids.iter()
        .map(|id| {
            let loaded = dataset.load_case(dataset_case(dataset, id)?)?;
            Ok(TrainCase::from_loaded(loaded, &job.data.labels)?)
        })
        .collect()
}

/// Mean 3D Dice of one view's current model over the validation cases (NaN cases skipped).
fn validation_dice(
    model: &Unet2d,
    view: View,
    cases: &[TrainCase],
    job: &JobConfig,
) -> Result<f64, JobError> {
    let merged = model
        .merged()
        .map_err(|e| JobError::candle(format!("{view}: validation"), e))?;
    let vm = ViewModel {
        view,
        model: merged,
    };
    let mut dice = Vec::with_capacity(cases.len());
    for c in cases {
        let images: Vec<ArrayView3<'_, f32>> = c.images.iter().map(|a| a.view()).collect();
        let prob = predict_view(&vm, &images, &job.data.windows, job.train.predict_batch)?;
        let mask = threshold(&prob);
        let conf =
            Confusion::count(mask.view(), c.target.view()).map_err(|source| JobError::Metrics {
                case: c.id.clone(),
                source: Box::new(source),
            })?;
        dice.push(conf.dice());
    }
    Ok(mean_sd(dice).mean)
}

/// Copies of the trainable tensors, in `params()` order.
fn trainable_tensors(model: &Unet2d) -> candle_core::Result<Vec<Tensor>> {
    model
        .params()
        .iter()
        .filter_map(|p| p.param.var())
        .map(|v| v.as_tensor().copy())
        .collect()
}

fn restore_trainable(model: &Unet2d, snapshot: &[Tensor]) -> candle_core::Result<()> {
    let params = model.params();
    let vars: Vec<_> = params.iter().filter_map(|p| p.param.var()).collect();
    for (v, t) in vars.iter().zip(snapshot) {
        v.set(t)?;
    }
    Ok(())
}

/// Header of `metrics.csv`.
pub const METRICS_HEADER: &str =
    "case,dice,iou,tp,fp,fn,tn,truth_ml,pred_ml,fp_ml,fn_ml,hd95_mm,assd_mm,stratum";

/// One row per case; floats in Rust's shortest round-trip form, NaN as `NaN`.
pub fn metrics_csv(cases: &[NamedCase]) -> String {
    let mut s = String::from(METRICS_HEADER);
    s.push('\n');
    for c in cases {
        let m = &c.metrics;
        let k = &m.confusion;
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            csv_field(&c.case),
            m.dice,
            m.iou,
            k.tp,
            k.fp,
            k.fn_,
            k.tn,
            m.truth_ml,
            m.pred_ml,
            m.fp_ml,
            m.fn_ml,
            m.hd95_mm,
            m.assd_mm,
            csv_field(&m.stratum)
        ));
    }
    s
}

/// Quotes a field that holds a comma, quote or newline (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// bf16 autocast needs a GPU: on a CPU it is refused before anything trains (never a silent
/// f32 run).
pub fn check_precision(p: crate::nn::Precision, device: &Device) -> Result<(), JobError> {
    if p == crate::nn::Precision::Bf16 && !device.is_cuda() {
        return Err(JobError::Invalid {
            field: "train.precision".into(),
            reason: format!(
                "`bf16` runs on CUDA only, but this job runs on {}; use `precision: f32` or a GPU",
                crate::nn::device::device_name(device)
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn bf16_on_cpu_is_refused_naming_the_field() {
        let err = super::check_precision(crate::nn::Precision::Bf16, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("train.precision") && err.contains("CUDA"),
            "{err}"
        );
        super::check_precision(crate::nn::Precision::F32, &Device::Cpu).unwrap();
    }

    use super::*;
    use crate::metrics::Strata;
    use ndarray::{Array3, s};

    #[test]
    fn csv_rows_follow_the_header() {
        let mut pred = Array3::<u8>::zeros((2, 4, 4));
        let mut truth = pred.clone();
        pred.slice_mut(s![0, 0..2, 0..2]).fill(1);
        truth.slice_mut(s![0, 0..2, 0..3]).fill(1);
        let m = CaseMetrics::compute(
            pred.view(),
            truth.view(),
            [5.0, 1.0, 1.0],
            &Strata::default(),
        )
        .unwrap();
        let empty = CaseMetrics::compute(
            Array3::zeros((2, 4, 4)).view(),
            Array3::zeros((2, 4, 4)).view(),
            [5.0, 1.0, 1.0],
            &Strata::default(),
        )
        .unwrap();
        let csv = metrics_csv(&[
            NamedCase {
                case: "a,1".into(),
                metrics: m,
            },
            NamedCase {
                case: "b".into(),
                metrics: empty,
            },
        ]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], METRICS_HEADER);
        assert!(lines[1].starts_with("\"a,1\",0.8,"), "{}", lines[1]);
        assert!(lines[1].contains(",4,0,2,26,"), "{}", lines[1]);
        assert!(lines[2].starts_with("b,NaN,NaN,0,0,0,32,"), "{}", lines[2]);
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn step_times_summarise() {
        let t = StepTimes::of(&[0.3, 0.1, 0.2, 0.4]).unwrap();
        assert_eq!(t.median_s, 0.3);
        assert_eq!(t.min_s, 0.1);
        assert_eq!(t.max_s, 0.4);
        assert!((t.mean_s - 0.25).abs() < 1e-12);
        assert!(StepTimes::of(&[]).is_none());
    }
}
