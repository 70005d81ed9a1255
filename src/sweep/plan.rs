//! Plan: a validated [`Spec`] → the exact list of jobs, each with a stable key and its
//! dependencies.
//!
//! - one `pretrain` job per view × seed on the source cohort (its key covers the model,
//!   pre-training settings, source data and code);
//! - per cell × fold × seed one job on the target cohort: `evaluate` for `none` (the
//!   pretrained model as is), `finetune` for everything else, with every view fused; it needs
//!   the pretrain jobs of its views and seed.
//!
//! Job key = SHA-256 of the canonical job config (output folder left out) + code fingerprint +
//! data fingerprints, so the same spec and code give the same keys, and changing one setting
//! changes exactly the keys of the jobs it reaches (a pre-training change reaches every job).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::cells::Cell;
use super::spec::{Spec, TrainSettings};
use crate::data::layout::LabelMap;
use crate::data::preprocess::View;
use crate::model::{AdaptationKind, AdaptationSpec};
use crate::train::job::{DataConfig, JobConfig, PerView, Stage, TrainConfig};

/// Bumped when the meaning of a job config changes, so old results are not mistaken for new.
const KEY_VERSION: &str = "ranksweep-job-v1";

/// What a job's result depends on besides its config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fingerprints {
    /// Git commit + dirty-diff hash, or the crate version outside git.
    pub code: String,
    pub source: String,
    pub target: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedJob {
    pub key: String,
    pub cell: Option<String>,
    pub label: String,
    pub stage: Stage,
    pub view: Option<View>,
    pub fold: Option<usize>,
    pub seed: u64,
    pub needs: Vec<String>,
    pub config: JobConfig,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub sweep: String,
    pub fingerprints: Fingerprints,
    /// Pretrain jobs first, then the cells' jobs in spec order.
    pub jobs: Vec<PlannedJob>,
}

/// The folder of a sweep's results: `<results>/<sweep>`.
pub fn sweep_dir(results: &Path, sweep: &str) -> PathBuf {
    results.join(sweep)
}

fn labels(values: &Option<Vec<u32>>) -> LabelMap {
    match values {
        None => LabelMap::NonZero,
        Some(v) => LabelMap::Values(v.iter().map(|x| (*x).min(255) as u8).collect()),
    }
}

fn train_config(t: &TrainSettings) -> TrainConfig {
    TrainConfig {
        steps: t.steps,
        batch_size: t.batch,
        selection: t.select,
        val_every: t.val_every,
        ..TrainConfig::default()
    }
}

/// Hex SHA-256 (16 characters) of the config plus fingerprints and dependency keys. Paths are
/// left out (folders can move; the data fingerprints and the dependencies' keys stand for what
/// the paths point at), so the same sweep in another checkout has the same keys.
pub fn job_key(config: &JobConfig, fp: &Fingerprints, needs: &[String]) -> String {
    let mut c = config.clone();
    c.output = PathBuf::new();
    c.data.dataset = PathBuf::new();
    c.data.splits = None;
    c.base = PerView::default();
    c.adapters = PerView::default();
    let json = serde_json::to_string(&c).expect("a job config serializes");
    let needs = needs.join(",");
    let mut h = Sha256::new();
    for part in [KEY_VERSION, &json, &fp.code, &fp.source, &fp.target, &needs] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Builds the plan. `results` is the results root (`results/` by default).
pub fn plan(spec: &Spec, fp: &Fingerprints, results: &Path) -> Plan {
    // Job files hold absolute paths: a worker resolves relative ones against the job file.
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let jobs_dir = sweep_dir(&abs(results), &spec.name).join("jobs");
    let source = abs(&spec.data.source);
    let target = abs(&spec.data.target);
    let timeout_s = Some(spec.resources.timeout.as_secs_f64());
    let threads = spec.resources.threads;
    let mut jobs = Vec::new();
    // Pretrain jobs, keyed by (view, seed).
    let mut bases: BTreeMap<(u64, View), (String, PathBuf)> = BTreeMap::new();
    for &seed in &spec.seeds {
        for &view in &spec.model.views {
            let mut config = JobConfig {
                stage: Stage::Pretrain,
                data: DataConfig {
                    dataset: source.clone(),
                    labels: labels(&spec.data.source_labels),
                    windows: vec![crate::data::preprocess::HuWindow::BRAIN],
                    fold: None,
                    splits: None,
                    folds: spec.data.folds,
                    split_seed: spec.data.split_seed,
                    strata: Default::default(),
                },
                model: spec.model.unet.clone(),
                adaptation: AdaptationSpec::none(),
                optimizer: spec.pretrain.optim,
                train: train_config(&spec.pretrain),
                views: vec![view],
                base: PerView::default(),
                adapters: PerView::default(),
                seed,
                device: crate::nn::DeviceSpec::Cpu,
                threads,
                output: PathBuf::new(),
                timeout_s,
            };
            let key = job_key(&config, fp, &[]);
            config.output = jobs_dir.join(&key);
            let base_file = config
                .output
                .join(format!("base-{}.safetensors", view.name()));
            bases.insert((seed, view), (key.clone(), base_file));
            jobs.push(PlannedJob {
                key,
                cell: None,
                label: format!("pretrain/{}/s{seed}", view.name()),
                stage: Stage::Pretrain,
                view: Some(view),
                fold: None,
                seed,
                needs: Vec::new(),
                config,
            });
        }
    }
    let splits = target.join(crate::data::folds::SPLITS_FILE);
    for cell in &spec.cells {
        for fold in 0..spec.data.folds {
            for &seed in &spec.seeds {
                jobs.push(cell_job(
                    spec, &target, cell, fold, seed, &bases, &splits, &jobs_dir, fp,
                ));
            }
        }
    }
    Plan {
        sweep: spec.name.clone(),
        fingerprints: fp.clone(),
        jobs,
    }
}

#[allow(clippy::too_many_arguments)]
fn cell_job(
    spec: &Spec,
    target: &Path,
    cell: &Cell,
    fold: usize,
    seed: u64,
    bases: &BTreeMap<(u64, View), (String, PathBuf)>,
    splits: &Path,
    jobs_dir: &Path,
    fp: &Fingerprints,
) -> PlannedJob {
    let mut base = PerView::default();
    let mut needs = Vec::new();
    for &view in &spec.model.views {
        let (key, file) = &bases[&(seed, view)];
        base.set(view, file.clone());
        needs.push(key.clone());
    }
    let stage = if cell.adaptation.kind == AdaptationKind::None {
        Stage::Evaluate
    } else {
        Stage::Finetune
    };
    let mut config = JobConfig {
        stage,
        data: DataConfig {
            dataset: target.to_path_buf(),
            labels: labels(&spec.data.target_labels),
            windows: vec![crate::data::preprocess::HuWindow::BRAIN],
            fold: Some(fold),
            splits: Some(splits.to_path_buf()),
            folds: spec.data.folds,
            split_seed: spec.data.split_seed,
            strata: Default::default(),
        },
        model: spec.model.unet.clone(),
        adaptation: cell.adaptation.clone(),
        optimizer: cell.finetune.optim,
        train: train_config(&cell.finetune),
        views: spec.model.views.clone(),
        base,
        adapters: PerView::default(),
        seed,
        device: crate::nn::DeviceSpec::Cpu,
        threads: spec.resources.threads,
        output: PathBuf::new(),
        timeout_s: Some(spec.resources.timeout.as_secs_f64()),
    };
    let key = job_key(&config, fp, &needs);
    config.output = jobs_dir.join(&key);
    PlannedJob {
        key,
        cell: Some(cell.id.as_str().to_string()),
        label: format!("{}/f{fold}/s{seed}", cell.label()),
        stage,
        view: None,
        fold: Some(fold),
        seed,
        needs,
        config,
    }
}

/// Jobs by stage and by kind, for `plan`'s totals.
pub fn totals(plan: &Plan) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for j in &plan.jobs {
        let k = match j.stage {
            Stage::Pretrain => "pretrain".to_string(),
            _ => j.config.adaptation.kind.to_string(),
        };
        *t.entry(k).or_insert(0) += 1;
    }
    t
}
