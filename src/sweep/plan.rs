//! Plan: a validated [`Spec`] → the exact list of jobs, each with a stable key and its
//! dependencies.
//!
//! - one `pretrain` job per view × seed on the source cohort (its key covers the model,
//!   pre-training settings, source data and code);
//! - per cell × fold × seed one job on the target cohort: `evaluate` for `none` (the
//!   pretrained model as is), `finetune` for everything else, with every view fused; it needs
//!   the pretrain jobs of its views and seed.
//!
//! Job key = SHA-256 of the canonical job config (paths left out) + code fingerprint + the
//! fingerprint of the cohort the job reads + its dependencies' keys, so the same spec and code
//! give the same keys, and changing one setting changes exactly the keys of the jobs it
//! reaches (a pre-training or source-data change reaches every job, a target-data change every
//! job but pretraining).

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

/// The target cohort's cross-validation splits, on the results side: one file per (dataset
/// fingerprint, folds, split seed, stratification), shared by every sweep of the results
/// folder that asks for the same split. Sweeps do not stratify folds (yet): `plain`.
pub fn splits_file(
    results: &Path,
    target_fingerprint: &str,
    folds: usize,
    split_seed: u64,
) -> PathBuf {
    let fp: String = target_fingerprint
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(16)
        .collect();
    results
        .join("splits")
        .join(format!("{fp}-k{folds}-seed{split_seed}-plain.json"))
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
        precision: t.precision,
        ..TrainConfig::default()
    }
}

/// Hex SHA-256 (16 characters) of the config plus the code fingerprint, the fingerprint of the
/// data the job reads and its dependencies' keys. Paths are
/// left out (folders can move; the data fingerprints and the dependencies' keys stand for what
/// the paths point at), so the same sweep in another checkout has the same keys.
pub fn job_key(config: &JobConfig, fp: &Fingerprints, needs: &[String]) -> String {
    let json = canonical_config(config);
    let needs = needs.join(",");
    // Only the data a job reads: pretraining the source cohort, the others the target cohort
    // (the source reaches them through their pretrain dependencies' keys). A new target cohort
    // then keeps the pretrained models.
    let data = match config.stage {
        Stage::Pretrain => &fp.source,
        Stage::Finetune | Stage::Evaluate => &fp.target,
    };
    let mut h = Sha256::new();
    for part in [KEY_VERSION, &json, &fp.code, data, &needs] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The part of a job config its key hashes: the JSON with every path and the device left out. Two configs
/// with the same canonical JSON differ only in where their files are.
pub fn canonical_config(config: &JobConfig) -> String {
    let mut c = config.clone();
    // Where a job runs never changes its key (nor does a hand-set `device`).
    c.device = None;
    c.output = PathBuf::new();
    c.data.dataset = PathBuf::new();
    c.data.splits = None;
    c.base = PerView::default();
    c.adapters = PerView::default();
    serde_json::to_string(&c).expect("a job config serializes")
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
                // Chosen where the job runs (worker --device, RANKSWEEP_DEVICE).
                device: None,
                threads,
                output: PathBuf::new(),
                timeout_s,
            };
            let key = job_key(&config, fp, &[]);
            config.output = jobs_dir.join(&key);
            let base_file = config
                .output
                .join(crate::train::files::base_checkpoint(view));
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
    let splits = splits_file(
        &abs(results),
        &fp.target,
        spec.data.folds,
        spec.data.split_seed,
    );
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
        device: None,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A tiny spec: `none`, full fine-tuning and one adapter block, two folds, one view.
    /// `extra` is spliced into the grid (another block), `pre`/`ft` replace the stage settings.
    fn text(pre: &str, ft: &str, grid: &str) -> String {
        format!(
            "name: ids
data: {{source: tbi, target: sah, folds: 2}}
model: {{features: [4, 8, 16]}}
pretrain: {pre}
finetune: {ft}
grid:
  - kind: none
  - kind: full
    module: decoder
  - kind: lora-c
    module: decoder
    rank: [2]
{grid}seeds: [0]
"
        )
    }

    const PRE: &str = "{steps: 10, lr: 1.0e-3}";
    const FT: &str = "{steps: 5, lr: 1.0e-3}";

    fn fp() -> Fingerprints {
        Fingerprints {
            code: "code-a".into(),
            source: "src-a".into(),
            target: "tgt-a".into(),
        }
    }

    fn plan_of(text: &str, fp: &Fingerprints) -> Plan {
        let spec = crate::sweep::parse(text, Path::new("/sweeps/ids.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        plan(&spec, fp, Path::new("/results"))
    }

    fn keys(p: &Plan) -> Vec<String> {
        p.jobs.iter().map(|j| j.key.clone()).collect()
    }

    /// Keys of the jobs whose label starts with `prefix` (`pretrain`, `full`, `lora-c`, `none`).
    fn keys_of(p: &Plan, prefix: &str) -> BTreeSet<String> {
        p.jobs
            .iter()
            .filter(|j| j.label.starts_with(prefix))
            .map(|j| j.key.clone())
            .collect()
    }

    /// The keys of `b` that `a` does not have.
    fn changed(a: &Plan, b: &Plan) -> BTreeSet<String> {
        let old: BTreeSet<String> = keys(a).into_iter().collect();
        keys(b).into_iter().filter(|k| !old.contains(k)).collect()
    }

    #[test]
    fn the_same_spec_and_code_give_the_same_ids() {
        let a = plan_of(&text(PRE, FT, ""), &fp());
        let b = plan_of(&text(PRE, FT, ""), &fp());
        assert_eq!(a.jobs.len(), 1 + 3 * 2);
        assert_eq!(keys(&a), keys(&b));
        let unique: BTreeSet<String> = keys(&a).into_iter().collect();
        assert_eq!(unique.len(), a.jobs.len(), "two jobs share a key");
        // Another results root moves the folders, not the keys.
        let spec =
            crate::sweep::parse(&text(PRE, FT, ""), Path::new("/elsewhere/ids.yaml")).unwrap();
        let moved = plan(&spec, &fp(), Path::new("/other/results"));
        assert_eq!(keys(&moved), keys(&a));
        assert_ne!(moved.jobs[0].config.output, a.jobs[0].config.output);
    }

    #[test]
    fn reordered_yaml_keys_give_the_same_ids() {
        let a = plan_of(&text(PRE, FT, ""), &fp());
        // Mapping keys in another order, flow style swapped for block style.
        let b = plan_of(
            &text("{lr: 1.0e-3, steps: 10}", "\n  lr: 1.0e-3\n  steps: 5", ""),
            &fp(),
        );
        assert_eq!(keys(&a), keys(&b));
        let c = plan_of(
            &text(PRE, FT, "").replace(
                "  - kind: full\n    module: decoder\n",
                "  - module: decoder\n    kind: full\n",
            ),
            &fp(),
        );
        assert_eq!(keys(&a), keys(&c));
        // Blocks in another order: the same jobs (ids are content hashes), in the new order.
        let d = plan_of(
            &text(PRE, FT, "").replace(
                "  - kind: full\n    module: decoder\n  - kind: lora-c\n    module: decoder\n    rank: [2]\n",
                "  - kind: lora-c\n    module: decoder\n    rank: [2]\n  - kind: full\n    module: decoder\n",
            ),
            &fp(),
        );
        assert_ne!(keys(&a), keys(&d), "the blocks were not swapped");
        let set = |p: &Plan| keys(p).into_iter().collect::<BTreeSet<String>>();
        assert_eq!(set(&a), set(&d));
        assert_eq!(keys_of(&a, "full"), keys_of(&d, "full"));
    }

    #[test]
    fn a_finetune_setting_changes_every_cell_id_and_no_pretrain_id() {
        let a = plan_of(&text(PRE, FT, ""), &fp());
        let b = plan_of(&text(PRE, "{steps: 5, lr: 2.0e-3}", ""), &fp());
        let cells: BTreeSet<String> = keys(&a)[1..].iter().cloned().collect();
        assert_eq!(cells.len(), 6);
        // The global fine-tuning settings belong to every cell (`none` included: its cell id
        // and its evaluate jobs carry them), so every cell job changes and pretrain does not.
        assert_eq!(changed(&a, &b).len(), cells.len());
        assert_eq!(keys_of(&a, "pretrain"), keys_of(&b, "pretrain"));
        assert!(keys(&b)[1..].iter().all(|k| !cells.contains(k)));
    }

    #[test]
    fn a_block_override_changes_only_that_blocks_ids() {
        let a = plan_of(&text(PRE, FT, ""), &fp());
        let b = plan_of(
            &text(PRE, FT, "").replace(
                "  - kind: full\n    module: decoder\n",
                "  - kind: full\n    module: decoder\n    finetune: {lr: 1.0e-4}\n",
            ),
            &fp(),
        );
        assert_eq!(changed(&a, &b), keys_of(&b, "full"));
        assert!(keys_of(&a, "full").is_disjoint(&keys_of(&b, "full")));
        for same in ["pretrain", "none", "lora-c"] {
            assert_eq!(keys_of(&a, same), keys_of(&b, same), "{same}");
        }
    }

    #[test]
    fn a_pretrain_setting_changes_pretrain_ids_and_every_dependent() {
        let a = plan_of(&text(PRE, FT, ""), &fp());
        let b = plan_of(&text("{steps: 11, lr: 1.0e-3}", FT, ""), &fp());
        assert!(changed(&a, &b).len() == b.jobs.len(), "every key changes");
        // The dependents name the new pretrain key.
        let pre = &b.jobs[0].key;
        assert!(b.jobs[1..].iter().all(|j| j.needs == [pre.clone()]));
    }

    #[test]
    fn adding_a_rank_only_adds_ids() {
        let a = plan_of(&text(PRE, FT, ""), &fp());
        let b = plan_of(
            &text(PRE, FT, "").replace("rank: [2]", "rank: [2, 4]"),
            &fp(),
        );
        let old: BTreeSet<String> = keys(&a).into_iter().collect();
        let new: BTreeSet<String> = keys(&b).into_iter().collect();
        assert!(old.is_subset(&new));
        let added: Vec<&PlannedJob> = b.jobs.iter().filter(|j| !old.contains(&j.key)).collect();
        assert_eq!(added.len(), 2);
        assert!(
            added
                .iter()
                .all(|j| j.label.starts_with("lora-c/decoder/r4"))
        );
    }

    #[test]
    fn data_and_code_fingerprints_reach_the_jobs_that_use_them() {
        let a = plan_of(&text(PRE, FT, ""), &fp());
        // The target cohort: only the jobs on it (every cell job), not pretrain.
        let t = plan_of(
            &text(PRE, FT, ""),
            &Fingerprints {
                target: "tgt-b".into(),
                ..fp()
            },
        );
        assert_eq!(keys_of(&a, "pretrain"), keys_of(&t, "pretrain"));
        assert_eq!(changed(&a, &t).len(), a.jobs.len() - 1);
        // The source cohort and the code: every job.
        for other in [
            Fingerprints {
                source: "src-b".into(),
                ..fp()
            },
            Fingerprints {
                code: "code-b".into(),
                ..fp()
            },
        ] {
            let b = plan_of(&text(PRE, FT, ""), &other);
            assert_eq!(changed(&a, &b).len(), a.jobs.len(), "{other:?}");
        }
    }

    #[test]
    fn canonical_config_leaves_paths_out() {
        let a = plan_of(&text(PRE, FT, ""), &fp());
        let j = &a.jobs[1];
        let mut moved = j.config.clone();
        moved.output = PathBuf::from("/x");
        moved.data.dataset = PathBuf::from("/y");
        assert_eq!(canonical_config(&moved), canonical_config(&j.config));
        moved.seed += 1;
        assert_ne!(canonical_config(&moved), canonical_config(&j.config));
    }

    #[test]
    fn planned_jobs_carry_no_device_and_keys_ignore_it() {
        let a = plan_of(&text(PRE, FT, ""), &fp());
        for j in &a.jobs {
            assert_eq!(j.config.device, None, "{}", j.label);
            let json = serde_json::to_string(&j.config).unwrap();
            assert!(!json.contains("\"device\""), "{json}");
            let mut on_gpu = j.config.clone();
            on_gpu.device = Some(crate::nn::DeviceSpec::Cuda(3));
            assert_eq!(job_key(&on_gpu, &fp(), &j.needs), j.key);
        }
    }
}
