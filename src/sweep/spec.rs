//! The sweep spec: [`SpecFile`] is the YAML as written (serde, unknown keys refused), [`Spec`]
//! is the validated form with defaults filled, paths resolved against the spec's folder and the
//! grid expanded into [`Cell`]s.
//!
//! Design: the grid is a sum type by construction. Each block names its kinds; `rank` and
//! `alpha` are accepted only in blocks of adapter kinds, `module` never for `none`, so a
//! meaningless combination is an error that points at the offending key rather than a cell that
//! is silently skipped. Every error carries `file:line:column`, the field path and what was
//! expected (see [`super::yaml`] for how positions are found).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::cells::{self, Cell, ExpandError};
use super::values::{Alpha, DurationValue, NonNegF64, Positive, PositiveF64, SelectorValue};
use super::yaml::{self, OneOrMany, Pos, YamlPath};
use crate::data::preprocess::View;
use crate::limits;
use crate::model::{
    AdamWConfig, AdaptationKind, AdaptationSpec, LrSchedule, Selector, Unet2d, UnetConfig,
};

/// Why a spec cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{}: cannot read the sweep spec: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A parse or validation error at a place in the file.
    #[error("{}", render(file, pos, field, message))]
    Invalid {
        file: String,
        pos: Option<Pos>,
        field: String,
        message: String,
    },
}

fn render(file: &str, pos: &Option<Pos>, field: &str, message: &str) -> String {
    let mut s = file.to_string();
    if let Some(p) = pos {
        s.push_str(&format!(":{}:{}", p.line, p.column));
    }
    if !field.is_empty() {
        s.push_str(&format!(": {field}"));
    }
    s.push_str(&format!(": {message}"));
    s
}

impl SpecError {
    /// `(line, column)` of an invalid value, when known.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            SpecError::Invalid { pos: Some(p), .. } => Some((p.line, p.column)),
            _ => None,
        }
    }

    /// The field path (`grid[2].rank`), empty for the document or a read error.
    pub fn field(&self) -> &str {
        match self {
            SpecError::Invalid { field, .. } => field,
            SpecError::Read { .. } => "",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The raw file.

/// The spec as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    pub name: String,
    pub data: DataFile,
    #[serde(default)]
    pub model: ModelFile,
    #[serde(default)]
    pub pretrain: TrainFile,
    #[serde(default)]
    pub finetune: TrainFile,
    pub grid: Vec<BlockFile>,
    #[serde(default)]
    pub seeds: Option<OneOrMany<u64>>,
    #[serde(default)]
    pub resources: ResourcesFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFile {
    /// Pre-training (TBI) dataset folder, relative to the spec file.
    pub source: PathBuf,
    /// Fine-tuning (SAH) dataset folder, relative to the spec file.
    pub target: PathBuf,
    #[serde(default)]
    pub folds: Option<Positive>,
    #[serde(default)]
    pub split_seed: Option<u64>,
    #[serde(default)]
    pub source_labels: Option<OneOrMany<Positive>>,
    #[serde(default)]
    pub target_labels: Option<OneOrMany<Positive>>,
    /// Synthesize the phantom cohorts into `source` (TBI) and `target` (SAH) when missing.
    #[serde(default)]
    pub synthesize: Option<SynthesizeFile>,
}

/// `data.synthesize`: phantom cohort sizes and seed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthesizeFile {
    pub source_cases: Positive,
    pub target_cases: Positive,
    #[serde(default)]
    pub seed: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    #[serde(default)]
    pub in_channels: Option<Positive>,
    #[serde(default)]
    pub features: Option<Vec<Positive>>,
    #[serde(default)]
    pub views: Option<OneOrMany<View>>,
}

/// Training settings as written; every field optional (defaults, then block overrides).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainFile {
    #[serde(default)]
    pub steps: Option<Positive>,
    #[serde(default)]
    pub lr: Option<PositiveF64>,
    #[serde(default)]
    pub batch: Option<Positive>,
    #[serde(default)]
    pub select: Option<Select>,
    #[serde(default)]
    pub val_every: Option<Positive>,
    #[serde(default)]
    pub warmup_steps: Option<usize>,
    #[serde(default)]
    pub weight_decay: Option<NonNegF64>,
    #[serde(default)]
    pub schedule: Option<LrSchedule>,
    #[serde(default)]
    pub min_lr_ratio: Option<NonNegF64>,
    /// `f32` or `bf16` (autocast on GPUs; a bf16 job on a CPU is refused when it starts).
    #[serde(default)]
    pub precision: Option<Precision>,
}

impl TrainFile {
    /// `self`'s fields where set, else `base`'s.
    fn or(&self, base: &TrainFile) -> TrainFile {
        TrainFile {
            steps: self.steps.or(base.steps),
            lr: self.lr.or(base.lr),
            batch: self.batch.or(base.batch),
            select: self.select.or(base.select),
            val_every: self.val_every.or(base.val_every),
            warmup_steps: self.warmup_steps.or(base.warmup_steps),
            weight_decay: self.weight_decay.or(base.weight_decay),
            schedule: self.schedule.or(base.schedule),
            min_lr_ratio: self.min_lr_ratio.or(base.min_lr_ratio),
            precision: self.precision.or(base.precision),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesFile {
    #[serde(default)]
    pub timeout: Option<DurationValue>,
    #[serde(default)]
    pub no_progress: Option<DurationValue>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub threads: Option<Positive>,
}

/// One grid block: the product of its axes (kinds × module × rank × alpha × train_norms × the
/// zipped rows), minus the excluded cells.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockFile {
    pub kind: OneOrMany<AdaptationKind>,
    #[serde(default)]
    pub module: Option<OneOrMany<SelectorValue>>,
    #[serde(default)]
    pub rank: Option<OneOrMany<Positive>>,
    #[serde(default)]
    pub alpha: Option<OneOrMany<Alpha>>,
    #[serde(default)]
    pub train_norms: Option<OneOrMany<bool>>,
    #[serde(default)]
    pub zip: Option<ZipFile>,
    #[serde(default)]
    pub exclude: Option<Vec<PartialFile>>,
    #[serde(default)]
    pub finetune: Option<TrainFile>,
}

/// Paired axes: the i-th values of every list go together.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZipFile {
    #[serde(default)]
    pub module: Option<Vec<SelectorValue>>,
    #[serde(default)]
    pub rank: Option<Vec<Positive>>,
    #[serde(default)]
    pub alpha: Option<Vec<Alpha>>,
    #[serde(default)]
    pub train_norms: Option<Vec<bool>>,
}

/// A partial cell in `exclude:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialFile {
    #[serde(default)]
    pub kind: Option<AdaptationKind>,
    #[serde(default)]
    pub module: Option<SelectorValue>,
    #[serde(default)]
    pub rank: Option<Positive>,
    #[serde(default)]
    pub alpha: Option<Alpha>,
    #[serde(default)]
    pub train_norms: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// The validated spec.

use crate::nn::Precision;
/// Which checkpoint a training stage keeps: the job's own type, so spec and job agree.
pub use crate::train::job::Selection as Select;

/// One training stage's settings after defaults and overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    pub steps: usize,
    pub batch: usize,
    pub select: Select,
    /// Validate every this many steps.
    pub val_every: usize,
    pub optim: AdamWConfig,
    /// Conv arithmetic (default f32).
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

/// Defaults of the two stages (the study's settings: 20,000 pre-training steps, 3,000
/// fine-tuning steps, lr 1e-3, batch 16).
struct StageDefaults {
    steps: usize,
    select: Select,
}

const PRETRAIN: StageDefaults = StageDefaults {
    steps: 20_000,
    select: Select::Last,
};
const FINETUNE: StageDefaults = StageDefaults {
    steps: 3_000,
    select: Select::BestVal,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    pub source: PathBuf,
    pub target: PathBuf,
    pub folds: usize,
    pub split_seed: u64,
    /// Label values that count as foreground in the source set; `None` = any non-zero label.
    pub source_labels: Option<Vec<u32>>,
    /// Label values that count as foreground in the target set; `None` = any non-zero label.
    pub target_labels: Option<Vec<u32>>,
    /// Phantom cohorts to synthesize into `source` and `target` when those folders are missing.
    pub synthesize: Option<Synthesize>,
}

/// Phantom cohorts `run` writes before planning when the data folders are missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Synthesize {
    pub source_cases: usize,
    pub target_cases: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub unet: UnetConfig,
    pub views: Vec<View>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Resources {
    /// Wall-clock limit of one job attempt.
    pub timeout: Duration,
    /// A job that reports no progress for this long is killed.
    pub no_progress: Duration,
    /// Extra attempts after a failed one.
    pub retries: u32,
    /// CPU threads per job.
    pub threads: usize,
}

/// A validated grid block (used by [`cells::expand`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub kinds: Vec<AdaptationKind>,
    /// The block's axes in product order, each a list of partial assignments; a zip is one axis.
    pub axes: Vec<Vec<Partial>>,
    pub exclude: Vec<Partial>,
    /// The fine-tuning settings of this block's cells.
    pub finetune: TrainSettings,
}

/// Some fields of a cell: one value of an axis, a zip row or an `exclude` pattern.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Partial {
    pub kind: Option<AdaptationKind>,
    pub module: Option<Selector>,
    pub rank: Option<usize>,
    pub alpha: Option<Alpha>,
    pub train_norms: Option<bool>,
}

impl Partial {
    /// `self` with `other`'s fields laid over it.
    pub fn merge(&self, other: &Partial) -> Partial {
        Partial {
            kind: other.kind.or(self.kind),
            module: other.module.clone().or_else(|| self.module.clone()),
            rank: other.rank.or(self.rank),
            alpha: other.alpha.or(self.alpha),
            train_norms: other.train_norms.or(self.train_norms),
        }
    }

    /// Whether an adaptation has every field this pattern sets.
    pub fn matches(&self, a: &AdaptationSpec) -> bool {
        self.kind.is_none_or(|k| k == a.kind)
            && self
                .module
                .as_ref()
                .is_none_or(|m| a.module.as_ref() == Some(m))
            && self.rank.is_none_or(|r| a.rank == Some(r))
            && self
                .alpha
                .is_none_or(|al| a.rank.is_some_and(|r| a.alpha == Some(al.resolve(r))))
            && self.train_norms.is_none_or(|t| a.train_norms == t)
    }
}

/// A validated sweep spec.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    /// The spec file, as given.
    pub file: PathBuf,
    /// The text it was parsed from (stored with the sweep).
    pub text: String,
    pub data: DataSpec,
    pub model: ModelSpec,
    pub pretrain: TrainSettings,
    /// Fine-tuning settings before block overrides.
    pub finetune: TrainSettings,
    pub grid: Vec<Block>,
    pub seeds: Vec<u64>,
    pub resources: Resources,
    /// The grid expanded, in spec order.
    pub cells: Vec<Cell>,
}

impl Spec {
    /// Jobs of the fine-tuning stage: cells × views × folds × seeds.
    pub fn finetune_jobs(&self) -> usize {
        self.cells.len() * self.model.views.len() * self.data.folds * self.seeds.len()
    }
}

/// Reads and validates a spec file.
pub fn load(path: &Path) -> Result<Spec, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Validates spec text; `file` names it in errors and anchors relative paths. Pure.
pub fn parse(text: &str, file: &Path) -> Result<Spec, SpecError> {
    let ctx = Ctx {
        file: file.display().to_string(),
        text,
    };
    // Bounded before the YAML parser sees it (it buffers the whole event stream).
    if text.len() > limits::MAX_SPEC_BYTES {
        return Err(SpecError::Invalid {
            file: ctx.file,
            pos: None,
            field: String::new(),
            message: format!(
                "the spec is {} bytes; expected at most {} (the limit of a spec file)",
                text.len(),
                limits::MAX_SPEC_BYTES
            ),
        });
    }
    if let Some((line, depth)) = limits::yaml_depth_error(text) {
        return Err(SpecError::Invalid {
            file: ctx.file,
            pos: Some(Pos { line, column: 1 }),
            field: String::new(),
            message: format!(
                "nesting depth {depth} reached; expected at most {} (the limit of YAML nesting)",
                limits::MAX_YAML_DEPTH
            ),
        });
    }
    let raw: SpecFile = serde_yaml::from_str(text).map_err(|e| {
        let l = yaml::split_error(&e);
        SpecError::Invalid {
            file: ctx.file.clone(),
            pos: l.pos,
            field: if l.field == "." {
                String::new()
            } else {
                l.field
            },
            message: l.message,
        }
    })?;
    validate(raw, file, &ctx)
}

struct Ctx<'a> {
    file: String,
    text: &'a str,
}

impl Ctx<'_> {
    /// An error at `path`, positioned at the node or, when the text lacks it (a value that
    /// came from a default or from the global settings), at its nearest written ancestor.
    fn err(&self, path: &YamlPath, message: impl Into<String>) -> SpecError {
        let mut p = path.clone();
        let pos = loop {
            if let Some(pos) = yaml::locate(self.text, &p) {
                break Some(pos);
            }
            if p.0.pop().is_none() {
                break None;
            }
        };
        SpecError::Invalid {
            file: self.file.clone(),
            pos,
            field: path.to_string(),
            message: message.into(),
        }
    }
}

/// Drops a leading "`field`: " from a lower layer's message (our error names the field).
fn strip_field(msg: &str) -> &str {
    if let Some(rest) = msg.strip_prefix('`')
        && let Some(i) = rest.find("`: ")
    {
        return &rest[i + 3..];
    }
    msg
}

fn root() -> YamlPath {
    YamlPath::root()
}

/// Validates a parsed spec (all cross-field rules) and expands its grid.
fn validate(raw: SpecFile, file: &Path, ctx: &Ctx) -> Result<Spec, SpecError> {
    let name = raw.name.trim().to_string();
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.starts_with('.');
    if !name_ok {
        return Err(ctx.err(
            &root().key("name"),
            format!(
                "expected a name of letters, digits, `-`, `_` or `.` (at most 64, used as a folder name), got `{}`",
                raw.name
            ),
        ));
    }

    let dir = file.parent().unwrap_or(Path::new(""));
    let data = validate_data(&raw.data, dir, ctx)?;
    let model = validate_model(&raw.model, ctx)?;
    let pretrain = resolve_train(&raw.pretrain, &PRETRAIN, &root().key("pretrain"), ctx)?;
    let finetune = resolve_train(&raw.finetune, &FINETUNE, &root().key("finetune"), ctx)?;

    let seeds = match &raw.seeds {
        None => vec![0],
        Some(s) => {
            if s.items.is_empty() {
                return Err(ctx.err(&root().key("seeds"), "expected at least one seed, got []"));
            }
            no_duplicates(&s.items, s, &root().key("seeds"), ctx, |x| x.to_string())?;
            s.items.clone()
        }
    };

    let r = &raw.resources;
    let rp = root().key("resources");
    let retries = r.retries.unwrap_or(2);
    bounded(
        retries as usize,
        limits::MAX_RETRIES as usize,
        &rp.key("retries"),
        ctx,
    )?;
    let resources = Resources {
        timeout: r.timeout.map_or(Duration::from_secs(2 * 3600), |d| d.0),
        no_progress: r.no_progress.map_or(Duration::from_secs(15 * 60), |d| d.0),
        retries,
        threads: bounded(
            r.threads.map_or(1, |t| t.0),
            limits::MAX_THREADS,
            &rp.key("threads"),
            ctx,
        )?,
    };

    let gp = root().key("grid");
    if raw.grid.is_empty() {
        return Err(ctx.err(&gp, "expected at least one grid block, got []"));
    }
    check_list(raw.grid.len(), &gp, ctx)?;
    // Selectors resolve against a model with the spec's depth; layer names depend only on the
    // number of levels, so width-1 layers make the check cheap for any model size.
    let probe_cfg = UnetConfig {
        in_channels: model.unet.in_channels,
        features: vec![1; model.unet.features.len()],
        dims: model.unet.dims,
    };
    let probe = Unet2d::init(&probe_cfg, 0, &Device::Cpu)
        .map_err(|e| ctx.err(&root().key("model"), format!("cannot build the model: {e}")))?;
    let mut grid = Vec::with_capacity(raw.grid.len());
    for (i, b) in raw.grid.iter().enumerate() {
        grid.push(validate_block(b, &gp.index(i), &raw.finetune, &probe, ctx)?);
    }

    // The job count from the grid product, with checked arithmetic, before any cell exists.
    let replicates = limits::product([model.views.len(), data.folds, seeds.len()]);
    let mut total = replicates;
    for (i, b) in grid.iter().enumerate() {
        let block =
            limits::product(std::iter::once(b.kinds.len()).chain(b.axes.iter().map(Vec::len)));
        let jobs = block.and_then(|n| replicates.and_then(|r| n.checked_mul(r)));
        total = total.and_then(|t| jobs.and_then(|j| t.checked_add(j)));
        if total.is_none_or(|t| t > limits::MAX_JOBS) {
            let shown = total.map_or("more than 2^64".to_string(), |t| t.to_string());
            return Err(ctx.err(
                &gp.index(i),
                format!(
                    "the sweep reaches {shown} jobs at this block (cells × views × folds × seeds); expected at most {} (the limit of jobs per sweep)",
                    limits::MAX_JOBS
                ),
            ));
        }
    }

    let cells = cells::expand(&grid).map_err(|e| match e {
        ExpandError::Duplicate {
            block,
            first_block,
            label,
        } => {
            let also = if first_block == block {
                "twice by this block".to_string()
            } else {
                format!("also by grid[{first_block}]")
            };
            ctx.err(
                &gp.index(block),
                format!("duplicate cell `{label}` (produced {also}); each cell must appear once"),
            )
        }
        ExpandError::UnusedExclude { block, index } => ctx.err(
            &gp.index(block).key("exclude").index(index),
            "matches no cell of this block (a typo?)",
        ),
        ExpandError::AllExcluded { block } => ctx.err(
            &gp.index(block).key("exclude"),
            "excludes every cell of this block",
        ),
        ExpandError::Invalid { block, message } => ctx.err(&gp.index(block), message),
    })?;

    Ok(Spec {
        name,
        file: file.to_path_buf(),
        text: ctx.text.to_string(),
        data,
        model,
        pretrain,
        finetune,
        grid,
        seeds,
        resources,
        cells,
    })
}

fn no_duplicates<T: PartialEq, W>(
    items: &[T],
    list: &OneOrMany<W>,
    key: &YamlPath,
    ctx: &Ctx,
    show: impl Fn(&T) -> String,
) -> Result<(), SpecError> {
    // Bounded first: the check below is quadratic.
    check_list(items.len(), key, ctx)?;
    for (i, x) in items.iter().enumerate() {
        if items[..i].contains(x) {
            return Err(ctx.err(
                &list.item_path(key, i),
                format!("`{}` is listed twice", show(x)),
            ));
        }
    }
    Ok(())
}

/// A list longer than [`limits::MAX_LIST_LEN`] is refused at its key.
fn check_list(len: usize, key: &YamlPath, ctx: &Ctx) -> Result<(), SpecError> {
    limits::check(&format!("{key} (values)"), len, limits::MAX_LIST_LEN)
        .map_err(|m| ctx.err(key, m))
}

/// `value` ≤ `limit`, else an error at `path` naming the field and the limit.
fn bounded(value: usize, limit: usize, path: &YamlPath, ctx: &Ctx) -> Result<usize, SpecError> {
    limits::check(&path.to_string(), value, limit).map_err(|m| ctx.err(path, m))?;
    Ok(value)
}

fn validate_data(d: &DataFile, dir: &Path, ctx: &Ctx) -> Result<DataSpec, SpecError> {
    let dp = root().key("data");
    let folder = |p: &PathBuf, key: &'static str| {
        if p.as_os_str().is_empty() {
            return Err(ctx.err(&dp.key(key), "expected a dataset folder, got an empty path"));
        }
        Ok(if p.is_relative() {
            dir.join(p)
        } else {
            p.clone()
        })
    };
    let source = folder(&d.source, "source")?;
    let target = folder(&d.target, "target")?;
    let folds = bounded(
        d.folds.map_or(3, |f| f.0),
        limits::MAX_FOLDS,
        &dp.key("folds"),
        ctx,
    )?;
    if folds < 2 {
        return Err(ctx.err(
            &dp.key("folds"),
            format!("expected at least 2 folds for cross-validation, got {folds}"),
        ));
    }
    if let Some(s) = &d.synthesize {
        let sp = dp.key("synthesize");
        bounded(
            s.source_cases.0,
            limits::MAX_CASES,
            &sp.key("source_cases"),
            ctx,
        )?;
        bounded(
            s.target_cases.0,
            limits::MAX_CASES,
            &sp.key("target_cases"),
            ctx,
        )?;
        if folds > s.target_cases.0 {
            return Err(ctx.err(
                &dp.key("folds"),
                format!(
                    "expected at most as many folds as cases: `data.synthesize.target_cases` is {}, got {folds} folds",
                    s.target_cases.0
                ),
            ));
        }
    }
    let labels = |l: &Option<OneOrMany<Positive>>, key: &'static str| {
        let Some(l) = l else { return Ok(None) };
        check_list(l.items.len(), &dp.key(key), ctx)?;
        if l.items.is_empty() {
            return Err(ctx.err(
                &dp.key(key),
                "expected at least one label value (omit the key to use every non-zero label)",
            ));
        }
        l.items
            .iter()
            .map(|p| u32::try_from(p.0).map_err(|_| ctx.err(&dp.key(key), "label value too large")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    };
    Ok(DataSpec {
        source,
        target,
        folds,
        split_seed: d.split_seed.unwrap_or(0),
        source_labels: labels(&d.source_labels, "source_labels")?,
        target_labels: labels(&d.target_labels, "target_labels")?,
        synthesize: d.synthesize.as_ref().map(|s| Synthesize {
            source_cases: s.source_cases.0,
            target_cases: s.target_cases.0,
            seed: s.seed.unwrap_or(0),
        }),
    })
}

fn validate_model(m: &ModelFile, ctx: &Ctx) -> Result<ModelSpec, SpecError> {
    let mp = root().key("model");
    let default = UnetConfig::default();
    if let Some(f) = &m.features {
        check_list(f.len(), &mp.key("features"), ctx)?;
    }
    let unet = UnetConfig {
        in_channels: m.in_channels.map_or(default.in_channels, |c| c.0),
        features: m
            .features
            .as_ref()
            .map_or(default.features, |f| f.iter().map(|p| p.0).collect()),
        dims: 2,
    };
    unet.validate().map_err(|e| {
        let key = match e {
            crate::model::config::ConfigError::NoInput
            | crate::model::config::ConfigError::TooLarge {
                field: "in_channels",
                ..
            } => "in_channels",
            _ => "features",
        };
        ctx.err(&mp.key(key), strip_field(&e.to_string()))
    })?;
    let views = match &m.views {
        None => vec![View::Axial],
        Some(v) => {
            if v.items.is_empty() {
                return Err(ctx.err(&mp.key("views"), "expected at least one view, got []"));
            }
            no_duplicates(&v.items, v, &mp.key("views"), ctx, |x| x.to_string())?;
            v.items.clone()
        }
    };
    Ok(ModelSpec { unet, views })
}

fn resolve_train(
    t: &TrainFile,
    defaults: &StageDefaults,
    path: &YamlPath,
    ctx: &Ctx,
) -> Result<TrainSettings, SpecError> {
    let steps = bounded(
        t.steps.map_or(defaults.steps, |s| s.0),
        limits::MAX_STEPS,
        &path.key("steps"),
        ctx,
    )?;
    let base = AdamWConfig::default();
    let warmup_steps = t.warmup_steps.unwrap_or(0);
    if let Some(b) = t.batch {
        bounded(b.0, limits::MAX_BATCH, &path.key("batch"), ctx)?;
    }
    if warmup_steps >= steps {
        return Err(ctx.err(
            &path.key("warmup_steps"),
            format!("expected fewer warm-up steps than `steps` ({steps}), got {warmup_steps}"),
        ));
    }
    let val_every = t.val_every.map_or((steps / 10).max(1), |v| v.0);
    bounded(val_every, limits::MAX_STEPS, &path.key("val_every"), ctx)?;
    Ok(TrainSettings {
        steps,
        batch: t.batch.map_or(16, |b| b.0),
        select: t.select.unwrap_or(defaults.select),
        val_every,
        precision: t.precision.unwrap_or_default(),
        optim: AdamWConfig {
            lr: t.lr.map_or(base.lr, |l| l.0),
            weight_decay: t.weight_decay.map_or(base.weight_decay, |w| w.0),
            warmup_steps,
            schedule: t.schedule.unwrap_or(base.schedule),
            min_lr_ratio: t.min_lr_ratio.map_or(base.min_lr_ratio, |m| m.0),
            ..base
        },
    })
}

/// Where one of a block's fields was written: the block itself or its zip.
fn field_path(bp: &YamlPath, in_zip: bool, key: &'static str) -> YamlPath {
    if in_zip {
        bp.key("zip").key(key)
    } else {
        bp.key(key)
    }
}

const ADAPTER_NAMES: &str = "lora-c, conv-lora, cp-lora, dora-c, conv-dora, cp-dora";

fn validate_block(
    b: &BlockFile,
    bp: &YamlPath,
    global_finetune: &TrainFile,
    probe: &Unet2d,
    ctx: &Ctx,
) -> Result<Block, SpecError> {
    let kinds = &b.kind;
    if kinds.items.is_empty() {
        return Err(ctx.err(&bp.key("kind"), "expected at least one kind, got []"));
    }
    no_duplicates(&kinds.items, kinds, &bp.key("kind"), ctx, |k| k.to_string())?;

    let zip = b.zip.as_ref();
    let mut axes: Vec<Vec<Partial>> = Vec::new();
    if let Some(r) = &b.rank {
        for (i, v) in r.items.iter().enumerate() {
            bounded(v.0, limits::MAX_RANK, &r.item_path(&bp.key("rank"), i), ctx)?;
        }
    }
    if let Some(r) = zip.and_then(|z| z.rank.as_ref()) {
        for (i, v) in r.iter().enumerate() {
            bounded(
                v.0,
                limits::MAX_RANK,
                &bp.key("zip").key("rank").index(i),
                ctx,
            )?;
        }
    }
    if let Some(e) = &b.exclude {
        check_list(e.len(), &bp.key("exclude"), ctx)?;
    }

    // Plain axes: present, non-empty, no repeated value, not also zipped.
    macro_rules! plain_axis {
        ($field:ident, $key:literal, $conv:expr, $show:expr) => {
            if let Some(list) = &b.$field {
                let kp = bp.key($key);
                if list.items.is_empty() {
                    return Err(ctx.err(&kp, "expected at least one value, got []"));
                }
                if zip.is_some_and(|z| z.$field.is_some()) {
                    return Err(ctx.err(
                        &bp.key("zip").key($key),
                        concat!("`", $key, "` is both a block axis and a zip axis; keep one"),
                    ));
                }
                no_duplicates(&list.items, list, &kp, ctx, $show)?;
                axes.push(
                    list.items
                        .iter()
                        .map(|v| {
                            let mut p = Partial::default();
                            p.$field = Some($conv(v));
                            p
                        })
                        .collect(),
                );
            }
        };
    }
    plain_axis!(
        module,
        "module",
        |s: &SelectorValue| s.0.clone(),
        |s: &SelectorValue| s.0.to_string()
    );
    plain_axis!(rank, "rank", |r: &Positive| r.0, |r: &Positive| r
        .0
        .to_string());
    plain_axis!(alpha, "alpha", |a: &Alpha| *a, |a: &Alpha| match a {
        Alpha::Rank => "rank".to_string(),
        Alpha::Value(v) => v.to_string(),
    });
    plain_axis!(train_norms, "train_norms", |t: &bool| *t, |t: &bool| t
        .to_string());

    if let Some(z) = zip {
        let zp = bp.key("zip");
        let lens: Vec<(&'static str, usize)> = [
            ("module", z.module.as_ref().map(Vec::len)),
            ("rank", z.rank.as_ref().map(Vec::len)),
            ("alpha", z.alpha.as_ref().map(Vec::len)),
            ("train_norms", z.train_norms.as_ref().map(Vec::len)),
        ]
        .into_iter()
        .filter_map(|(k, n)| n.map(|n| (k, n)))
        .collect();
        let Some(&(first, n)) = lens.first() else {
            return Err(ctx.err(
                &zp,
                "expected lists to pair (module, rank, alpha or train_norms), got none",
            ));
        };
        if n == 0 {
            return Err(ctx.err(&zp.key(first), "expected at least one value, got []"));
        }
        check_list(n, &zp.key(first), ctx)?;
        for &(k, m) in &lens[1..] {
            if m != n {
                return Err(ctx.err(
                    &zp.key(k),
                    format!("zipped lists must have equal lengths: `{first}` has {n} values, `{k}` has {m}"),
                ));
            }
        }
        let rows = (0..n)
            .map(|i| Partial {
                kind: None,
                module: z.module.as_ref().map(|v| v[i].0.clone()),
                rank: z.rank.as_ref().map(|v| v[i].0),
                alpha: z.alpha.as_ref().map(|v| v[i]),
                train_norms: z.train_norms.as_ref().map(|v| v[i]),
            })
            .collect();
        axes.push(rows);
    }

    // Conditional fields, checked per kind so that the message names the kind.
    let has = |f: fn(&ZipFile) -> bool, plain: bool| plain || zip.is_some_and(f);
    let has_module = has(|z| z.module.is_some(), b.module.is_some());
    let has_rank = has(|z| z.rank.is_some(), b.rank.is_some());
    let has_alpha = has(|z| z.alpha.is_some(), b.alpha.is_some());
    let has_norms = has(|z| z.train_norms.is_some(), b.train_norms.is_some());
    let zipped = |f: fn(&ZipFile) -> bool| zip.is_some_and(f);
    for (j, &kind) in kinds.items.iter().enumerate() {
        let kp = kinds.item_path(&bp.key("kind"), j);
        if !kind.is_adapter() {
            let only =
                format!("only the adapter kinds {ADAPTER_NAMES} do; give `{kind}` its own block");
            if has_rank {
                return Err(ctx.err(
                    &field_path(bp, zipped(|z| z.rank.is_some()), "rank"),
                    format!("`{kind}` takes no rank ({only})"),
                ));
            }
            if has_alpha {
                return Err(ctx.err(
                    &field_path(bp, zipped(|z| z.alpha.is_some()), "alpha"),
                    format!("`{kind}` takes no alpha ({only})"),
                ));
            }
            if has_norms {
                return Err(ctx.err(
                    &field_path(bp, zipped(|z| z.train_norms.is_some()), "train_norms"),
                    format!("`{kind}` takes no train_norms ({only})"),
                ));
            }
        } else if !has_rank {
            return Err(ctx.err(
                &kp,
                format!("`{kind}` needs a rank: add `rank:` (a positive integer or a list)"),
            ));
        }
        match (kind.takes_module(), has_module) {
            (false, true) => {
                return Err(ctx.err(
                    &field_path(bp, zipped(|z| z.module.is_some()), "module"),
                    "`none` takes no module (it evaluates the pretrained model); give it its own block",
                ));
            }
            (true, false) => {
                return Err(ctx.err(
                    &kp,
                    format!(
                        "`{kind}` needs a module: add `module:` (encoder, bottleneck, decoder, head, all or a glob)"
                    ),
                ));
            }
            _ => {}
        }
    }

    // Every selector must match something the block's kinds can adapt.
    let mut modules: Vec<(YamlPath, &Selector)> = Vec::new();
    if let Some(m) = &b.module {
        for (i, s) in m.items.iter().enumerate() {
            modules.push((m.item_path(&bp.key("module"), i), &s.0));
        }
    }
    if let Some(m) = zip.and_then(|z| z.module.as_ref()) {
        for (i, s) in m.iter().enumerate() {
            modules.push((bp.key("zip").key("module").index(i), &s.0));
        }
    }
    let mut checked: HashSet<(String, bool)> = HashSet::new();
    for (path, sel) in modules {
        for &kind in &kinds.items {
            if !checked.insert((sel.to_string(), kind.is_adapter())) {
                continue;
            }
            let a = if kind.is_adapter() {
                AdaptationSpec::adapter(kind, sel.clone(), 1)
            } else {
                AdaptationSpec::full(sel.clone())
            };
            a.check_against(probe)
                .map_err(|e| ctx.err(&path, strip_field(&e.to_string()).to_string()))?;
        }
    }

    let mut exclude = Vec::new();
    for (i, e) in b.exclude.iter().flatten().enumerate() {
        let p = Partial {
            kind: e.kind,
            module: e.module.as_ref().map(|m| m.0.clone()),
            rank: e.rank.map(|r| r.0),
            alpha: e.alpha,
            train_norms: e.train_norms,
        };
        if p == Partial::default() {
            return Err(ctx.err(
                &bp.key("exclude").index(i),
                "expected a partial cell such as {kind: cp-lora, rank: 96}, got an empty mapping",
            ));
        }
        exclude.push(p);
    }

    let fp = bp.key("finetune");
    let finetune = match &b.finetune {
        None => resolve_train(global_finetune, &FINETUNE, &root().key("finetune"), ctx)?,
        Some(o) => resolve_train(&o.or(global_finetune), &FINETUNE, &fp, ctx)?,
    };

    Ok(Block {
        kinds: kinds.items.clone(),
        axes,
        exclude,
        finetune,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
name: t
data: {source: data/tbi, target: data/sah, folds: 3, target_labels: [1]}
model: {features: [4, 8, 16], views: [axial, coronal]}
pretrain: {steps: 100, lr: 1.0e-3, batch: 4}
finetune: {steps: 50, batch: 4, select: best-val}
grid:
  - kind: none
  - kind: full
    module: [encoder, decoder]
    finetune: {lr: 1.0e-4}
  - kind: [lora-c, conv-dora]
    module: decoder
    rank: [4, 8]
    alpha: rank
seeds: [0, 1]
resources: {timeout: 30m, retries: 1}
";

    fn ok(text: &str) -> Spec {
        parse(text, Path::new("sweeps/t.yaml")).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Parses `text` expecting an error at `line:col` on `field` whose message has `needle`.
    #[track_caller]
    fn bad(text: &str, line: usize, col: usize, field: &str, needle: &str) {
        let e = parse(text, Path::new("sweeps/t.yaml")).expect_err("the spec should be refused");
        let s = e.to_string();
        assert_eq!(e.position(), Some((line, col)), "{s}");
        assert_eq!(e.field(), field, "{s}");
        assert!(s.contains(needle), "`{needle}` not in: {s}");
        assert!(
            s.starts_with(&format!("sweeps/t.yaml:{line}:{col}: ")),
            "{s}"
        );
    }

    /// GOOD with its grid replaced.
    fn with_grid(grid: &str) -> String {
        let head = GOOD.split("grid:\n").next().unwrap();
        format!("{head}grid:\n{grid}")
    }

    #[test]
    fn precision_defaults_to_f32_and_takes_bf16() {
        let s = ok(GOOD);
        assert_eq!(s.pretrain.precision, Precision::F32);
        let text = GOOD.replace(
            "pretrain: {steps: 100,",
            "pretrain: {precision: bf16, steps: 100,",
        );
        assert_ne!(text, GOOD);
        assert_eq!(ok(&text).pretrain.precision, Precision::Bf16);
        let bad = GOOD.replace(
            "pretrain: {steps: 100,",
            "pretrain: {precision: fp8, steps: 100,",
        );
        assert!(parse(&bad, Path::new("sweeps/t.yaml")).is_err());
    }

    #[test]
    fn a_good_spec_fills_defaults_and_resolves_paths() {
        let s = ok(GOOD);
        assert_eq!(s.name, "t");
        assert_eq!(s.text, GOOD);
        assert_eq!(s.data.source, Path::new("sweeps/data/tbi"));
        assert_eq!(s.data.target_labels, Some(vec![1]));
        assert_eq!(s.data.source_labels, None);
        assert_eq!(s.model.unet.features, vec![4, 8, 16]);
        assert_eq!(s.model.views, vec![View::Axial, View::Coronal]);
        assert_eq!(s.pretrain.steps, 100);
        assert_eq!(s.pretrain.select, Select::Last);
        assert_eq!(s.finetune.optim.lr, 1e-3);
        assert_eq!(s.finetune.val_every, 5);
        assert_eq!(s.resources.timeout, Duration::from_secs(1800));
        assert_eq!(s.resources.no_progress, Duration::from_secs(900));
        assert_eq!(s.seeds, vec![0, 1]);
        // none + 2 full + 2 kinds × 2 ranks.
        assert_eq!(s.cells.len(), 7);
        assert_eq!(s.finetune_jobs(), 7 * 2 * 3 * 2);
        // The block override changes only lr; steps still come from the global finetune.
        assert_eq!(s.grid[1].finetune.optim.lr, 1e-4);
        assert_eq!(s.grid[1].finetune.steps, 50);
        assert_eq!(s.grid[2].finetune, s.finetune);
        let abs = ok(&GOOD.replace("source: data/tbi", "source: /abs/tbi"));
        assert_eq!(abs.data.source, Path::new("/abs/tbi"));
    }

    #[test]
    fn unknown_keys_are_refused_where_they_are() {
        bad(
            &GOOD.replace("seeds:", "sedes:"),
            15,
            1,
            "",
            "unknown field `sedes`",
        );
        bad(
            &with_grid("  - kind: full\n    modul: decoder\n"),
            8,
            5,
            "grid[0]",
            "unknown field `modul`",
        );
        bad(
            &GOOD.replace("batch: 4}", "batch: 4, lrr: 1}"),
            4,
            46,
            "pretrain",
            "unknown field `lrr`",
        );
    }

    #[test]
    fn wrong_types_are_refused() {
        bad(
            &GOOD.replace("folds: 3", "folds: three"),
            2,
            51,
            "data.folds",
            "expected a positive integer, got `three`",
        );
        bad(
            &GOOD.replace("seeds: [0, 1]", "seeds: [0, x]"),
            15,
            12,
            "seeds[1]",
            "invalid type",
        );
        bad(
            &GOOD.replace("lr: 1.0e-3", "lr: fast"),
            4,
            28,
            "pretrain.lr",
            "expected a positive number, got `fast`",
        );
    }

    #[test]
    fn ranks_must_be_positive() {
        bad(
            &GOOD.replace("rank: [4, 8]", "rank: [4, -4]"),
            13,
            15,
            "grid[2].rank[1]",
            "expected a positive integer, got -4",
        );
        bad(
            &GOOD.replace("rank: [4, 8]", "rank: 0"),
            13,
            11,
            "grid[2].rank",
            "expected a positive integer, got 0",
        );
    }

    #[test]
    fn rank_alpha_and_norms_only_for_adapters() {
        bad(
            &with_grid("  - kind: full\n    module: decoder\n    rank: 4\n"),
            9,
            11,
            "grid[0].rank",
            "`full` takes no rank",
        );
        bad(
            &with_grid("  - kind: none\n    rank: [4]\n"),
            8,
            11,
            "grid[0].rank",
            "`none` takes no rank",
        );
        bad(
            &with_grid("  - kind: [lora-c, full]\n    module: decoder\n    rank: 4\n"),
            9,
            11,
            "grid[0].rank",
            "`full` takes no rank",
        );
        bad(
            &with_grid("  - kind: full\n    module: decoder\n    alpha: 2\n"),
            9,
            12,
            "grid[0].alpha",
            "`full` takes no alpha",
        );
        bad(
            &with_grid("  - kind: full\n    module: all\n    zip: {train_norms: [true]}\n"),
            9,
            24,
            "grid[0].zip.train_norms",
            "`full` takes no train_norms",
        );
        bad(
            &with_grid("  - kind: cp-lora\n    module: decoder\n"),
            7,
            11,
            "grid[0].kind",
            "`cp-lora` needs a rank",
        );
    }

    #[test]
    fn module_rules() {
        bad(
            &with_grid("  - kind: none\n    module: decoder\n"),
            8,
            13,
            "grid[0].module",
            "`none` takes no module",
        );
        bad(
            &with_grid("  - kind: [none, full]\n"),
            7,
            18,
            "grid[0].kind[1]",
            "`full` needs a module",
        );
        bad(
            &with_grid("  - kind: full\n    module: [decoder, 'enc/oder']\n"),
            8,
            23,
            "grid[0].module[1]",
            "invalid module selector `enc/oder`",
        );
        // `head` has tensors for `full` but no 3×3 conv for an adapter.
        bad(
            &with_grid("  - kind: conv-lora\n    module: [decoder, head]\n    rank: 4\n"),
            8,
            23,
            "grid[0].module[1]",
            "selector `head` matches no 3×3 conv",
        );
        bad(
            &with_grid("  - kind: full\n    module: 'decoder.7'\n"),
            8,
            13,
            "grid[0].module",
            "matches no tensor",
        );
        // A deeper model has decoder.7; the probe follows the spec's depth.
        let deep = with_grid("  - kind: lora-c\n    module: 'decoder.2'\n    rank: 2\n")
            .replace("[4, 8, 16]", "[4, 8, 16, 32]");
        ok(&deep);
    }

    #[test]
    fn unknown_kind() {
        bad(
            &with_grid("  - kind: [lora-c, lora]\n    module: all\n    rank: 4\n"),
            7,
            20,
            "grid[0].kind[1]",
            "unknown variant `lora`",
        );
    }

    #[test]
    fn duplicates_and_empty_lists() {
        bad(
            &with_grid("  - kind: none\n  - kind: [full]\n    module: all\n  - kind: none\n"),
            10,
            5,
            "grid[2]",
            "duplicate cell `none` (produced also by grid[0])",
        );
        bad(
            &with_grid("  - kind: lora-c\n    module: all\n    rank: 4\n    alpha: [rank, 4]\n"),
            7,
            5,
            "grid[0]",
            "duplicate cell `lora-c/all/r4`",
        );
        bad(
            &with_grid("  - kind: lora-c\n    module: all\n    rank: [4, 8, 4]\n"),
            9,
            18,
            "grid[0].rank[2]",
            "`4` is listed twice",
        );
        bad(
            &with_grid("  []\n").replace("grid:\n  []", "grid: []"),
            6,
            7,
            "grid",
            "expected at least one grid block",
        );
        bad(
            &with_grid("  - kind: lora-c\n    module: all\n    rank: []\n"),
            9,
            11,
            "grid[0].rank",
            "expected at least one value",
        );
        bad(
            &GOOD.replace("seeds: [0, 1]", "seeds: []"),
            15,
            8,
            "seeds",
            "expected at least one seed",
        );
    }

    #[test]
    fn durations() {
        for ok_d in ["2h", "30m", "90s"] {
            ok(&GOOD.replace("timeout: 30m", &format!("timeout: {ok_d}")));
        }
        bad(
            &GOOD.replace("timeout: 30m", "timeout: 2 hrs later"),
            16,
            22,
            "resources.timeout",
            "expected a duration such as 2h, 30m or 90s",
        );
        bad(
            &GOOD.replace("timeout: 30m", "timeout: 120"),
            16,
            22,
            "resources.timeout",
            "no unit",
        );
    }

    #[test]
    fn zip_and_exclude() {
        let s = ok(&with_grid(
            "  - kind: [lora-c, cp-dora]\n    module: decoder\n    zip: {rank: [4, 8], alpha: [8, 16]}\n    exclude: [{kind: cp-dora, rank: 8}]\n",
        ));
        let got: Vec<_> = s
            .cells
            .iter()
            .map(|c| (c.adaptation.kind, c.adaptation.rank, c.adaptation.alpha))
            .collect();
        assert_eq!(
            got,
            vec![
                (AdaptationKind::LoraC, Some(4), Some(8.0)),
                (AdaptationKind::LoraC, Some(8), Some(16.0)),
                (AdaptationKind::CpDora, Some(4), Some(8.0)),
            ]
        );
        bad(
            &with_grid("  - kind: lora-c\n    module: all\n    zip: {rank: [4, 8], alpha: [8]}\n"),
            9,
            32,
            "grid[0].zip.alpha",
            "`rank` has 2 values, `alpha` has 1",
        );
        bad(
            &with_grid("  - kind: lora-c\n    module: all\n    rank: 4\n    zip: {rank: [4, 8]}\n"),
            10,
            17,
            "grid[0].zip.rank",
            "both a block axis and a zip axis",
        );
        bad(
            &with_grid(
                "  - kind: lora-c\n    module: all\n    rank: [4, 8]\n    exclude: [{rank: 16}]\n",
            ),
            10,
            15,
            "grid[0].exclude[0]",
            "matches no cell",
        );
        bad(
            &with_grid("  - kind: lora-c\n    module: all\n    rank: [4, 8]\n    exclude: [{}]\n"),
            10,
            15,
            "grid[0].exclude[0]",
            "got an empty mapping",
        );
        bad(
            &with_grid(
                "  - kind: lora-c\n    module: all\n    rank: 4\n    exclude: [{kind: lora-c}]\n",
            ),
            10,
            14,
            "grid[0].exclude",
            "excludes every cell",
        );
    }

    #[test]
    fn other_field_checks() {
        bad(
            &GOOD.replace("name: t", "name: a/b"),
            1,
            7,
            "name",
            "expected a name",
        );
        bad(
            &GOOD.replace("folds: 3", "folds: 1"),
            2,
            51,
            "data.folds",
            "at least 2 folds",
        );
        bad(
            &GOOD.replace("[4, 8, 16]", "[4]"),
            3,
            19,
            "model.features",
            "expected at least 2 widths",
        );
        bad(
            &GOOD.replace("views: [axial, coronal]", "views: [axial, axial]"),
            3,
            46,
            "model.views[1]",
            "listed twice",
        );
        bad(
            &GOOD.replace("views: [axial, coronal]", "views: [top]"),
            3,
            39,
            "model.views[0]",
            "unknown variant `top`",
        );
        bad(
            &GOOD.replace("batch: 4}", "batch: 4, warmup_steps: 100}"),
            4,
            60,
            "pretrain.warmup_steps",
            "fewer warm-up steps",
        );
        // The global warm-up is too long for this block's steps: the block's override is shown.
        bad(
            &with_grid("  - kind: full\n    module: all\n    finetune: {steps: 2}\n")
                .replace("steps: 50,", "steps: 50, warmup_steps: 5,"),
            9,
            15,
            "grid[0].finetune.warmup_steps",
            "fewer warm-up steps than `steps` (2), got 5",
        );
        bad(
            &with_grid("  - kind: full\n    module: all\n    finetune: {steps: 0}\n"),
            9,
            23,
            "grid[0].finetune.steps",
            "got 0",
        );
        bad(
            "name: x\ndata: {source: a, target: b\ngrid: []\n",
            3,
            5,
            "",
            "did not find expected",
        );
        bad("name: x\n", 1, 1, "", "missing field `data`");
    }

    #[test]
    fn probe_model_has_the_same_layer_names() {
        let real = Unet2d::init(
            &UnetConfig::new(1, vec![4, 8, 16]).unwrap(),
            0,
            &Device::Cpu,
        )
        .unwrap();
        let tiny =
            Unet2d::init(&UnetConfig::new(1, vec![1, 1, 1]).unwrap(), 0, &Device::Cpu).unwrap();
        let names = |m: &Unet2d| {
            m.params()
                .iter()
                .map(|p| p.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&real), names(&tiny));
        let convs = |m: &Unet2d| {
            m.convs()
                .iter()
                .map(|c| c.path().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(convs(&real), convs(&tiny));
    }

    #[test]
    fn read_errors_name_the_file() {
        let e = load(Path::new("/nonexistent/grid.yaml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/grid.yaml: cannot read the sweep spec"),
            "{e}"
        );
    }
}
