//! Dataset layouts on disk: detection, a per-case index built from headers alone, loading, the
//! label mapping to a binary target, and a dataset fingerprint.
//!
//! Key types: [`Dataset`] (the index: [`LayoutKind`], [`CaseIndex`] per case, declared labels,
//! fingerprint), [`LabelMap`] (which label values form the target), [`LayoutError`].
//! Entry point: [`index_dataset`].
//!
//! Layouts (detected in this order):
//! - nnU-Net v2: `dataset.json` with `channel_names`, `labels` (name → int) and `file_ending`;
//!   images `imagesTr/{case}_{0000..}{file_ending}`, labels `labelsTr/{case}{file_ending}`.
//! - Medical Segmentation Decathlon / nnU-Net v1: `dataset.json` with
//!   `"training": [{"image", "label"}]` (paths relative to the folder) and `labels` (int → name).
//! - Flat pairs, matched by file name: INSTANCE 2022 `data/` + `label/`, BHSD `images/` +
//!   `ground truths/`, PhysioNet ct-ich `ct_scans/` + `masks/`.
//!
//! Design: indexing reads headers only (cheap, gzip decodes 348 bytes), and checks grids the way
//! nnU-Net's `verify_dataset_integrity` does: a shape or spacing mismatch between a case's files is
//! an error, an affine mismatch a warning; both name the two files. Dotfiles (macOS `._*`) are
//! skipped. The fingerprint hashes sorted relative file names, sizes, raw header bytes and
//! `dataset.json`, so any change to the data a run depends on changes the cache key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Volume;
use super::nifti::{HeaderInfo, VolumeError, read_header, read_label, read_volume};

/// Relative tolerance for equal spacings (headers store f32).
const SPACING_RTOL: f64 = 1e-4;
/// Tolerance in mm for equal affines (origin and direction × spacing entries).
const AFFINE_ATOL: f64 = 1e-3;

/// The flat-pair layouts: (kind, image folder, label folder).
const FLAT_LAYOUTS: [(LayoutKind, &str, &str); 3] = [
    (LayoutKind::Instance, "data", "label"),
    (LayoutKind::Bhsd, "images", "ground truths"),
    (LayoutKind::Physionet, "ct_scans", "masks"),
];

/// How a dataset folder is organised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayoutKind {
    /// nnU-Net v2 raw dataset.
    NnunetV2,
    /// Medical Segmentation Decathlon, also nnU-Net v1.
    Decathlon,
    /// INSTANCE 2022: `data/` + `label/`.
    Instance,
    /// BHSD: `images/` + `ground truths/`.
    Bhsd,
    /// PhysioNet ct-ich: `ct_scans/` + `masks/`.
    Physionet,
}

impl LayoutKind {
    /// The kebab-case name used in output and configuration.
    pub fn name(self) -> &'static str {
        match self {
            LayoutKind::NnunetV2 => "nnunet-v2",
            LayoutKind::Decathlon => "decathlon",
            LayoutKind::Instance => "instance",
            LayoutKind::Bhsd => "bhsd",
            LayoutKind::Physionet => "physionet",
        }
    }
}

impl fmt::Display for LayoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A dataset that could not be indexed or loaded.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{}: cannot read folder: {source}", path.display())]
    ReadDir { path: PathBuf, source: io::Error },
    #[error(
        "{}: no dataset layout recognised: expected dataset.json (nnU-Net v2 or Decathlon) or \
         image/label folders data/+label/, images/+ground truths/ or ct_scans/+masks/",
        path.display()
    )]
    Unrecognised { path: PathBuf },
    #[error("{}: {message}", path.display())]
    DatasetJson { path: PathBuf, message: String },
    #[error("{}: no cases found in {}", root.display(), folder.display())]
    NoCases { root: PathBuf, folder: PathBuf },
    #[error("{}: no label for case `{case}`: expected {}", image.display(), expected.display())]
    MissingLabel {
        case: String,
        image: PathBuf,
        expected: PathBuf,
    },
    #[error("case `{case}`: missing image: expected {}", expected.display())]
    MissingImage { case: String, expected: PathBuf },
    #[error("case `{case}` appears twice: {} and {}", first.display(), second.display())]
    DuplicateCase {
        case: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error(
        "shape mismatch: {} has [z, y, x] = {:?} but {} has {:?}",
        a.display(), a_shape, b.display(), b_shape
    )]
    ShapeMismatch {
        a: PathBuf,
        a_shape: [usize; 3],
        b: PathBuf,
        b_shape: [usize; 3],
    },
    #[error(
        "spacing mismatch: {} has [z, y, x] = {:?} mm but {} has {:?} mm",
        a.display(), a_spacing, b.display(), b_spacing
    )]
    SpacingMismatch {
        a: PathBuf,
        a_spacing: [f64; 3],
        b: PathBuf,
        b_spacing: [f64; 3],
    },
    #[error("{}: changed since the dataset was indexed: expected [z, y, x] = {expected:?}, found {found:?}", path.display())]
    Changed {
        path: PathBuf,
        expected: [usize; 3],
        found: [usize; 3],
    },
    #[error(transparent)]
    Volume(#[from] VolumeError),
}

/// One case of the index: its files and grid, from headers only.
#[derive(Debug, Clone, Serialize)]
pub struct CaseIndex {
    pub id: String,
    /// One image per input channel (nnU-Net `_0000`, `_0001`, ...).
    pub images: Vec<PathBuf>,
    pub label: PathBuf,
    /// `[z, y, x]` sizes.
    pub shape: [usize; 3],
    /// Voxel size in mm along `[z, y, x]`.
    pub spacing: [f64; 3],
}

/// A case's voxels: one HU volume per channel and the label as stored (not yet binarised).
#[derive(Debug, Clone)]
pub struct LoadedCase {
    pub id: String,
    pub images: Vec<Volume<f32>>,
    pub label: Volume<u8>,
}

/// An indexed dataset folder.
#[derive(Debug, Clone, Serialize)]
pub struct Dataset {
    pub root: PathBuf,
    pub layout: LayoutKind,
    /// Label names and values from `dataset.json` (empty for flat pairs).
    pub labels: BTreeMap<String, u8>,
    /// Input channel names from `dataset.json` (`["image"]` for flat pairs).
    pub channels: Vec<String>,
    /// Cases sorted by id.
    pub cases: Vec<CaseIndex>,
    /// Hex SHA-256 over file names, sizes, header bytes and `dataset.json`.
    pub fingerprint: String,
}

impl Dataset {
    /// The case with this id.
    pub fn case(&self, id: &str) -> Option<&CaseIndex> {
        self.cases
            .binary_search_by(|c| c.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.cases[i])
    }

    /// Sorted case ids.
    pub fn case_ids(&self) -> Vec<String> {
        self.cases.iter().map(|c| c.id.clone()).collect()
    }

    /// Reads a case's images (HU) and label, and checks they still match the index.
    pub fn load_case(&self, case: &CaseIndex) -> Result<LoadedCase, LayoutError> {
        let check = |path: &Path, found: [usize; 3]| {
            if found == case.shape {
                Ok(())
            } else {
                Err(LayoutError::Changed {
                    path: path.to_path_buf(),
                    expected: case.shape,
                    found,
                })
            }
        };
        let mut images = Vec::with_capacity(case.images.len());
        for p in &case.images {
            let v = read_volume(p)?;
            check(p, v.shape())?;
            images.push(v);
        }
        let label = read_label(&case.label)?;
        check(&case.label, label.shape())?;
        Ok(LoadedCase {
            id: case.id.clone(),
            images,
            label,
        })
    }
}

/// Which stored label values make up the binary target (e.g. `[4]` for SAH in BHSD).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LabelMap {
    /// Every non-zero value is foreground (binary datasets).
    #[default]
    NonZero,
    /// Only these values are foreground.
    Values(Vec<u8>),
}

/// A label-map string that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid label map `{input}`: {reason}")]
pub struct LabelMapError {
    pub input: String,
    pub reason: String,
}

impl FromStr for LabelMap {
    type Err = LabelMapError;

    /// `nonzero`, or comma-separated values in `1..=255` such as `4` or `1,4`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| LabelMapError {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let t = s.trim();
        if t.eq_ignore_ascii_case("nonzero") {
            return Ok(LabelMap::NonZero);
        }
        let mut values = Vec::new();
        for part in t.split(',') {
            let v: u8 = part
                .trim()
                .parse()
                .map_err(|_| err("expected `nonzero` or comma-separated integers in 1..=255"))?;
            if v == 0 {
                return Err(err("0 is background and cannot be a target value"));
            }
            values.push(v);
        }
        values.sort_unstable();
        values.dedup();
        Ok(LabelMap::Values(values))
    }
}

impl LabelMap {
    /// Whether a stored value counts as foreground.
    pub fn is_foreground(&self, v: u8) -> bool {
        match self {
            LabelMap::NonZero => v != 0,
            LabelMap::Values(vs) => vs.contains(&v),
        }
    }

    /// The binary target (0/1) on the same grid.
    pub fn binarize(&self, label: &Volume<u8>) -> Volume<u8> {
        let mut lut = [0u8; 256];
        for (v, out) in lut.iter_mut().enumerate() {
            *out = u8::from(self.is_foreground(v as u8));
        }
        label.map(|&v| lut[v as usize])
    }

    /// Checks the values against the labels `dataset.json` declares, when it declares any.
    pub fn check(&self, dataset: &Dataset) -> Result<(), LabelMapError> {
        let LabelMap::Values(vs) = self else {
            return Ok(());
        };
        if dataset.labels.is_empty() {
            return Ok(());
        }
        let declared: BTreeSet<u8> = dataset.labels.values().copied().collect();
        match vs.iter().find(|v| !declared.contains(v)) {
            Some(v) => Err(LabelMapError {
                input: format!("{vs:?}"),
                reason: format!(
                    "value {v} is not declared in {}/dataset.json (declared: {declared:?})",
                    dataset.root.display()
                ),
            }),
            None => Ok(()),
        }
    }
}

/// Detects the layout of a dataset folder (see the module docs for the rules).
pub fn detect_layout(root: impl AsRef<Path>) -> Result<LayoutKind, LayoutError> {
    let root = root.as_ref();
    fs::read_dir(root).map_err(|source| LayoutError::ReadDir {
        path: root.into(),
        source,
    })?;
    let json_path = root.join("dataset.json");
    if json_path.is_file() {
        let json = read_json(&json_path)?;
        return if json.get("channel_names").is_some() {
            Ok(LayoutKind::NnunetV2)
        } else if json.get("training").is_some() {
            Ok(LayoutKind::Decathlon)
        } else {
            Err(LayoutError::DatasetJson {
                path: json_path,
                message: "expected `channel_names` (nnU-Net v2) or `training` (Decathlon)".into(),
            })
        };
    }
    FLAT_LAYOUTS
        .iter()
        .find(|(_, img, lab)| root.join(img).is_dir() && root.join(lab).is_dir())
        .map(|(kind, _, _)| *kind)
        .ok_or_else(|| LayoutError::Unrecognised { path: root.into() })
}

/// Detects the layout, lists every case, reads and cross-checks their headers, and computes the
/// fingerprint.
pub fn index_dataset(root: impl AsRef<Path>) -> Result<Dataset, LayoutError> {
    let root = root.as_ref().to_path_buf();
    let layout = detect_layout(&root)?;
    let json_path = root.join("dataset.json");
    let (files, labels, channels) = match layout {
        LayoutKind::NnunetV2 => nnunet_v2_files(&root, &json_path)?,
        LayoutKind::Decathlon => decathlon_files(&root, &json_path)?,
        flat => {
            let (_, img, lab) = FLAT_LAYOUTS
                .iter()
                .find(|(k, _, _)| *k == flat)
                .expect("listed");
            (
                flat_files(&root, img, lab)?,
                BTreeMap::new(),
                vec!["image".to_string()],
            )
        }
    };

    let mut hasher = Sha256::new();
    hasher.update(layout.name().as_bytes());
    if json_path.is_file() {
        let bytes = fs::read(&json_path).map_err(|e| LayoutError::DatasetJson {
            path: json_path.clone(),
            message: format!("cannot read: {e}"),
        })?;
        hash_field(&mut hasher, &bytes);
    }
    let mut cases = Vec::with_capacity(files.len());
    for CaseFiles { id, images, label } in files {
        let mut first: Option<(PathBuf, HeaderInfo)> = None;
        for path in images.iter().chain(std::iter::once(&label)) {
            let info = read_header(path)?;
            let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let rel = path.strip_prefix(&root).unwrap_or(path);
            hash_field(&mut hasher, rel.to_string_lossy().as_bytes());
            hash_field(&mut hasher, &size.to_le_bytes());
            hash_field(&mut hasher, &info.raw);
            match &first {
                None => first = Some((path.clone(), info)),
                Some((p0, h0)) => check_same_grid(p0, h0, path, &info)?,
            }
        }
        let (_, h0) = first.expect("a case has at least one image");
        cases.push(CaseIndex {
            id,
            images,
            label,
            shape: h0.shape,
            spacing: h0.spacing,
        });
    }
    let fingerprint = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Dataset {
        root,
        layout,
        labels,
        channels,
        cases,
        fingerprint,
    })
}

/// Length-prefixed, so that field boundaries are part of the hash.
fn hash_field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// nnU-Net's rule: shape and spacing must match (error), the affine should (warning).
fn check_same_grid(
    a: &Path,
    ha: &HeaderInfo,
    b: &Path,
    hb: &HeaderInfo,
) -> Result<(), LayoutError> {
    if ha.shape != hb.shape {
        return Err(LayoutError::ShapeMismatch {
            a: a.into(),
            a_shape: ha.shape,
            b: b.into(),
            b_shape: hb.shape,
        });
    }
    let close = |x: f64, y: f64| (x - y).abs() <= SPACING_RTOL * x.abs().max(y.abs());
    if !ha
        .spacing
        .iter()
        .zip(&hb.spacing)
        .all(|(x, y)| close(*x, *y))
    {
        return Err(LayoutError::SpacingMismatch {
            a: a.into(),
            a_spacing: ha.spacing,
            b: b.into(),
            b_spacing: hb.spacing,
        });
    }
    let (fa, fb) = (ha.affine(), hb.affine());
    let differs = fa
        .iter()
        .flatten()
        .zip(fb.iter().flatten())
        .any(|(x, y)| (x - y).abs() > AFFINE_ATOL);
    if differs {
        tracing::warn!(
            "affine mismatch: {} has {:?} but {} has {:?}; using the grid as is",
            a.display(),
            fa,
            b.display(),
            fb
        );
    }
    Ok(())
}

/// A case's files before their headers are read.
struct CaseFiles {
    id: String,
    images: Vec<PathBuf>,
    label: PathBuf,
}

type Listing = (Vec<CaseFiles>, BTreeMap<String, u8>, Vec<String>);

fn read_json(path: &Path) -> Result<Value, LayoutError> {
    let text = fs::read_to_string(path).map_err(|e| LayoutError::DatasetJson {
        path: path.into(),
        message: format!("cannot read: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| LayoutError::DatasetJson {
        path: path.into(),
        message: format!("invalid JSON: {e}"),
    })
}

/// Sorted names of the visible entries of a folder (dotfiles such as macOS `._*` skipped).
fn list_visible(dir: &Path) -> Result<Vec<String>, LayoutError> {
    let entries = fs::read_dir(dir).map_err(|source| LayoutError::ReadDir {
        path: dir.into(),
        source,
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| LayoutError::ReadDir {
            path: dir.into(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn nnunet_v2_files(root: &Path, json_path: &Path) -> Result<Listing, LayoutError> {
    let json = read_json(json_path)?;
    let bad = |message: String| LayoutError::DatasetJson {
        path: json_path.into(),
        message,
    };

    let channel_obj = json
        .get("channel_names")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("`channel_names`: expected an object such as {\"0\": \"CT\"}".into()))?;
    let mut channels = vec![String::new(); channel_obj.len()];
    for (k, v) in channel_obj {
        let i: usize = k
            .parse()
            .ok()
            .filter(|i| *i < channels.len())
            .ok_or_else(|| {
                bad(format!(
                    "`channel_names`: key `{k}`: expected 0..{}",
                    channels.len()
                ))
            })?;
        channels[i] = v.as_str().unwrap_or_default().to_string();
    }
    if channels.is_empty() {
        return Err(bad("`channel_names`: expected at least one channel".into()));
    }

    let label_obj = json
        .get("labels")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            bad(
                "`labels`: expected an object of name → integer, such as {\"background\": 0}"
                    .into(),
            )
        })?;
    let mut labels = BTreeMap::new();
    for (name, v) in label_obj {
        let value = match v {
            Value::Number(n) => n.as_u64().filter(|&n| n <= 255).map(|n| n as u8),
            Value::Array(_) => {
                return Err(bad(format!(
                    "`labels`.`{name}`: region-based labels (a list) are not supported"
                )));
            }
            _ => None,
        }
        .ok_or_else(|| {
            bad(format!(
                "`labels`.`{name}`: expected an integer in 0..=255, got {v}"
            ))
        })?;
        labels.insert(name.clone(), value);
    }
    if labels.get("background") != Some(&0) {
        return Err(bad("`labels`: expected \"background\": 0".into()));
    }

    let ending = json
        .get("file_ending")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("`file_ending`: expected a string such as \".nii.gz\"".into()))?;
    if ending != ".nii.gz" && ending != ".nii" {
        return Err(bad(format!(
            "`file_ending`: expected \".nii.gz\" or \".nii\", got \"{ending}\""
        )));
    }

    let images_dir = root.join("imagesTr");
    let labels_dir = root.join("labelsTr");
    let mut ids = BTreeSet::new();
    for name in list_visible(&images_dir)? {
        // {case}_{XXXX}{ending}: nnU-Net's get_identifiers_from_splitted_dataset_folder.
        let Some(stem) = name.strip_suffix(ending) else {
            continue;
        };
        match stem.rsplit_once('_') {
            Some((id, ch)) if ch.len() == 4 && ch.bytes().all(|b| b.is_ascii_digit()) => {
                ids.insert(id.to_string());
            }
            _ => tracing::warn!(
                "{}: not named {{case}}_XXXX{ending}; ignored",
                images_dir.join(&name).display()
            ),
        }
    }
    if ids.is_empty() {
        return Err(LayoutError::NoCases {
            root: root.into(),
            folder: images_dir,
        });
    }
    if let Some(n) = json.get("numTraining") {
        match n.as_u64() {
            Some(n) if n as usize == ids.len() => {}
            _ => {
                return Err(bad(format!(
                    "`numTraining` is {n} but imagesTr holds {} cases",
                    ids.len()
                )));
            }
        }
    }

    let mut files = Vec::with_capacity(ids.len());
    for id in ids {
        let images: Vec<PathBuf> = (0..channels.len())
            .map(|c| images_dir.join(format!("{id}_{c:04}{ending}")))
            .collect();
        if let Some(missing) = images.iter().find(|p| !p.is_file()) {
            return Err(LayoutError::MissingImage {
                case: id,
                expected: missing.clone(),
            });
        }
        let label = labels_dir.join(format!("{id}{ending}"));
        if !label.is_file() {
            return Err(LayoutError::MissingLabel {
                case: id,
                image: images[0].clone(),
                expected: label,
            });
        }
        files.push(CaseFiles { id, images, label });
    }
    Ok((files, labels, channels))
}

fn decathlon_files(root: &Path, json_path: &Path) -> Result<Listing, LayoutError> {
    let json = read_json(json_path)?;
    let bad = |message: String| LayoutError::DatasetJson {
        path: json_path.into(),
        message,
    };

    let mut labels = BTreeMap::new();
    if let Some(obj) = json.get("labels") {
        let obj = obj.as_object().ok_or_else(|| {
            bad(
                "`labels`: expected an object of value → name, such as {\"0\": \"background\"}"
                    .into(),
            )
        })?;
        for (k, v) in obj {
            let value: u8 = k.parse().map_err(|_| {
                bad(format!(
                    "`labels`: key `{k}`: expected an integer in 0..=255"
                ))
            })?;
            let name = v
                .as_str()
                .ok_or_else(|| bad(format!("`labels`.`{k}`: expected a name")))?;
            labels.insert(name.to_string(), value);
        }
    }
    let channels = match json.get("modality").and_then(Value::as_object) {
        Some(m) => {
            let mut named: Vec<(usize, String)> = m
                .iter()
                .map(|(k, v)| {
                    (
                        k.parse().unwrap_or(usize::MAX),
                        v.as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            named.sort();
            named.into_iter().map(|(_, n)| n).collect()
        }
        None => vec!["image".to_string()],
    };

    let training = json
        .get("training")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            bad("`training`: expected a list of {\"image\": ..., \"label\": ...}".into())
        })?;
    let mut files: Vec<CaseFiles> = Vec::with_capacity(training.len());
    for (i, entry) in training.iter().enumerate() {
        let field = |name: &str| {
            entry
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("`training`[{i}].`{name}`: expected a path string")))
        };
        let image = root.join(field("image")?);
        let label = root.join(field("label")?);
        let id = case_id(&image).ok_or_else(|| {
            bad(format!(
                "`training`[{i}].`image`: expected a .nii or .nii.gz file"
            ))
        })?;
        if !image.is_file() {
            return Err(LayoutError::MissingImage {
                case: id,
                expected: image,
            });
        }
        if !label.is_file() {
            return Err(LayoutError::MissingLabel {
                case: id,
                image,
                expected: label,
            });
        }
        files.push(CaseFiles {
            id,
            images: vec![image],
            label,
        });
    }
    if files.is_empty() {
        return Err(LayoutError::NoCases {
            root: root.into(),
            folder: json_path.into(),
        });
    }
    sort_unique(files).map(|files| (files, labels, channels))
}

fn flat_files(root: &Path, img: &str, lab: &str) -> Result<Vec<CaseFiles>, LayoutError> {
    let img_dir = root.join(img);
    let lab_dir = root.join(lab);
    let label_names = list_visible(&lab_dir)?;
    let label_by_id: BTreeMap<String, &String> = label_names
        .iter()
        .filter_map(|n| Some((case_id(Path::new(n))?, n)))
        .collect();
    let mut files = Vec::new();
    for name in list_visible(&img_dir)? {
        let Some(id) = case_id(Path::new(&name)) else {
            continue;
        };
        let image = img_dir.join(&name);
        let Some(label_name) = label_by_id.get(&id) else {
            return Err(LayoutError::MissingLabel {
                case: id,
                image,
                expected: lab_dir.join(&name),
            });
        };
        files.push(CaseFiles {
            id,
            images: vec![image],
            label: lab_dir.join(label_name),
        });
    }
    if files.is_empty() {
        return Err(LayoutError::NoCases {
            root: root.into(),
            folder: img_dir,
        });
    }
    let ids: BTreeSet<&str> = files.iter().map(|f| f.id.as_str()).collect();
    for (id, name) in &label_by_id {
        if !ids.contains(id.as_str()) {
            tracing::warn!(
                "{}: label without an image; ignored",
                lab_dir.join(name).display()
            );
        }
    }
    sort_unique(files)
}

/// Sorts by id; the same id twice (`a.nii` and `a.nii.gz`) is an error.
fn sort_unique(mut files: Vec<CaseFiles>) -> Result<Vec<CaseFiles>, LayoutError> {
    files.sort_by(|a, b| a.id.cmp(&b.id));
    for w in files.windows(2) {
        if w[0].id == w[1].id {
            return Err(LayoutError::DuplicateCase {
                case: w[0].id.clone(),
                first: w[0].images[0].clone(),
                second: w[1].images[0].clone(),
            });
        }
    }
    Ok(files)
}

/// The case id of a NIfTI file name: the name without `.nii` or `.nii.gz`.
fn case_id(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = name
        .strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))?;
    (!stem.is_empty()).then(|| stem.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::nifti::{header_for, write_i16, write_u8};
    use ndarray::Array3;

    const SHAPE: [usize; 3] = [2, 4, 3];
    const SPACING: [f64; 3] = [5.0, 0.5, 0.5];

    fn image(seed: i16) -> Volume<i16> {
        Volume::new(
            Array3::from_shape_fn((2, 4, 3), |(z, y, x)| seed + (z * 12 + y * 3 + x) as i16),
            SPACING,
        )
    }

    fn label(values: &[u8]) -> Volume<u8> {
        Volume::new(
            Array3::from_shape_fn((2, 4, 3), |(z, y, x)| {
                values[(z * 12 + y * 3 + x) % values.len()]
            }),
            SPACING,
        )
    }

    fn mkdir(p: &Path) {
        fs::create_dir_all(p).unwrap();
    }

    fn write_v2(root: &Path, ids: &[&str]) {
        mkdir(&root.join("imagesTr"));
        mkdir(&root.join("labelsTr"));
        for (i, id) in ids.iter().enumerate() {
            write_i16(
                &image(i as i16),
                root.join(format!("imagesTr/{id}_0000.nii.gz")),
            )
            .unwrap();
            write_u8(
                &label(&[0, 1, 0]),
                root.join(format!("labelsTr/{id}.nii.gz")),
            )
            .unwrap();
        }
        let json = serde_json::json!({
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, "blood": 1},
            "numTraining": ids.len(),
            "file_ending": ".nii.gz",
        });
        fs::write(root.join("dataset.json"), json.to_string()).unwrap();
    }

    #[test]
    fn nnunet_v2_is_detected_indexed_and_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_v2(root, &["sah_002", "sah_001"]);
        // macOS resource forks next to real files are skipped.
        fs::write(root.join("imagesTr/._sah_001_0000.nii.gz"), b"junk").unwrap();
        fs::write(root.join("labelsTr/._sah_001.nii.gz"), b"junk").unwrap();
        let ds = index_dataset(root).unwrap();
        assert_eq!(ds.layout, LayoutKind::NnunetV2);
        assert_eq!(ds.case_ids(), ["sah_001", "sah_002"]);
        assert_eq!(ds.channels, ["CT"]);
        assert_eq!(ds.labels.get("blood"), Some(&1));
        let c = ds.case("sah_002").unwrap();
        assert_eq!(c.shape, SHAPE);
        assert_eq!(c.spacing, SPACING);
        assert!(c.images[0].ends_with("imagesTr/sah_002_0000.nii.gz"));
        let loaded = ds.load_case(c).unwrap();
        // Ids were written in the order sah_002 (seed 0), sah_001 (seed 1).
        assert_eq!(loaded.images[0].data, image(0).data.mapv(f32::from));
        assert_eq!(loaded.label.data, label(&[0, 1, 0]).data);
        assert_eq!(ds.fingerprint.len(), 64);
    }

    #[test]
    fn nnunet_v2_multichannel_needs_every_channel() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_v2(root, &["a"]);
        let mut json: Value =
            serde_json::from_str(&fs::read_to_string(root.join("dataset.json")).unwrap()).unwrap();
        json["channel_names"] = serde_json::json!({"0": "brain", "1": "subdural"});
        fs::write(root.join("dataset.json"), json.to_string()).unwrap();
        let e = index_dataset(root).unwrap_err();
        assert!(
            matches!(&e, LayoutError::MissingImage { expected, .. } if expected.ends_with("a_0001.nii.gz")),
            "{e}"
        );
        write_i16(&image(7), root.join("imagesTr/a_0001.nii.gz")).unwrap();
        let ds = index_dataset(root).unwrap();
        assert_eq!(ds.cases[0].images.len(), 2);
        assert_eq!(
            ds.load_case(&ds.cases[0]).unwrap().images[1].data[[0, 0, 0]],
            7.0
        );
    }

    #[test]
    fn decathlon_is_detected_and_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        mkdir(&root.join("imagesTr"));
        mkdir(&root.join("labelsTr"));
        for id in ["hem_3", "hem_1"] {
            write_i16(&image(0), root.join(format!("imagesTr/{id}.nii.gz"))).unwrap();
            write_u8(&label(&[0, 2]), root.join(format!("labelsTr/{id}.nii.gz"))).unwrap();
        }
        let json = serde_json::json!({
            "modality": {"0": "CT"},
            "labels": {"0": "background", "1": "ich", "2": "sah"},
            "training": [
                {"image": "./imagesTr/hem_3.nii.gz", "label": "./labelsTr/hem_3.nii.gz"},
                {"image": "./imagesTr/hem_1.nii.gz", "label": "./labelsTr/hem_1.nii.gz"},
            ],
        });
        fs::write(root.join("dataset.json"), json.to_string()).unwrap();
        let ds = index_dataset(root).unwrap();
        assert_eq!(ds.layout, LayoutKind::Decathlon);
        assert_eq!(ds.case_ids(), ["hem_1", "hem_3"]);
        assert_eq!(ds.labels.get("sah"), Some(&2));
        // The configured target must be declared.
        assert!(LabelMap::Values(vec![2]).check(&ds).is_ok());
        let e = LabelMap::Values(vec![4]).check(&ds).unwrap_err();
        assert!(e.to_string().contains("value 4 is not declared"), "{e}");
    }

    #[test]
    fn flat_layouts_are_detected_by_folder_names() {
        for (kind, img, lab, ext) in [
            (LayoutKind::Instance, "data", "label", "nii.gz"),
            (LayoutKind::Bhsd, "images", "ground truths", "nii.gz"),
            (LayoutKind::Physionet, "ct_scans", "masks", "nii"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            mkdir(&root.join(img));
            mkdir(&root.join(lab));
            for id in ["049", "050"] {
                write_i16(&image(0), root.join(img).join(format!("{id}.{ext}"))).unwrap();
                write_u8(
                    &label(&[0, 4, 1]),
                    root.join(lab).join(format!("{id}.{ext}")),
                )
                .unwrap();
            }
            fs::write(root.join(img).join("._049.nii"), b"").unwrap();
            fs::write(root.join(img).join("notes.txt"), b"not a scan").unwrap();
            assert_eq!(detect_layout(root).unwrap(), kind);
            let ds = index_dataset(root).unwrap();
            assert_eq!(ds.layout, kind);
            assert_eq!(ds.case_ids(), ["049", "050"]);
            assert!(ds.labels.is_empty());
            let sah =
                LabelMap::Values(vec![4]).binarize(&ds.load_case(&ds.cases[0]).unwrap().label);
            assert_eq!(sah.data, label(&[0, 1, 0]).data);
        }
    }

    #[test]
    fn missing_label_and_mismatched_grids_are_errors_naming_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_v2(root, &["a", "b"]);
        fs::remove_file(root.join("labelsTr/b.nii.gz")).unwrap();
        let e = index_dataset(root).unwrap_err().to_string();
        assert!(
            e.contains("b_0000.nii.gz")
                && e.contains("no label")
                && e.contains("labelsTr/b.nii.gz"),
            "{e}"
        );

        // Shape mismatch.
        let small = Volume::new(Array3::<u8>::zeros((2, 4, 2)), SPACING);
        write_u8(&small, root.join("labelsTr/b.nii.gz")).unwrap();
        let e = index_dataset(root).unwrap_err();
        assert!(matches!(e, LayoutError::ShapeMismatch { .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.contains("imagesTr/b_0000.nii.gz") && e.contains("labelsTr/b.nii.gz"),
            "{e}"
        );

        // Spacing mismatch.
        let other = Volume::new(Array3::<u8>::zeros((2, 4, 3)), [2.5, 0.5, 0.5]);
        write_u8(&other, root.join("labelsTr/b.nii.gz")).unwrap();
        let e = index_dataset(root).unwrap_err();
        assert!(matches!(e, LayoutError::SpacingMismatch { .. }), "{e}");

        // Affine mismatch alone: a warning, the dataset indexes.
        let mut shifted = Volume::new(Array3::<u8>::zeros((2, 4, 3)), SPACING);
        let mut h = header_for(SHAPE, SPACING);
        h.srow_x[3] += 10.0;
        shifted.header = Some(Box::new(h));
        write_u8(&shifted, root.join("labelsTr/b.nii.gz")).unwrap();
        assert_eq!(index_dataset(root).unwrap().cases.len(), 2);

        // A corrupt label: the volume error names it.
        fs::write(root.join("labelsTr/b.nii.gz"), b"").unwrap();
        let e = index_dataset(root).unwrap_err().to_string();
        assert!(
            e.contains("labelsTr/b.nii.gz") && e.contains("empty"),
            "{e}"
        );
    }

    #[test]
    fn flat_missing_label_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        mkdir(&root.join("ct_scans"));
        mkdir(&root.join("masks"));
        write_i16(&image(0), root.join("ct_scans/001.nii")).unwrap();
        let e = index_dataset(root).unwrap_err().to_string();
        assert!(
            e.contains("ct_scans/001.nii") && e.contains("masks/001.nii"),
            "{e}"
        );
    }

    #[test]
    fn wrong_dataset_json_fields_are_clear_errors() {
        let cases: Vec<(Value, &str)> = vec![
            (
                serde_json::json!({"name": "x"}),
                "expected `channel_names` (nnU-Net v2) or `training`",
            ),
            (
                serde_json::json!({"channel_names": ["CT"], "labels": {"background": 0}, "file_ending": ".nii.gz"}),
                "`channel_names`: expected an object",
            ),
            (
                serde_json::json!({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}),
                "`labels`: expected an object",
            ),
            (
                serde_json::json!({"channel_names": {"0": "CT"}, "labels": {"blood": 1}, "file_ending": ".nii.gz"}),
                "\"background\": 0",
            ),
            (
                serde_json::json!({"channel_names": {"0": "CT"}, "labels": {"background": 0, "blood": "one"}, "file_ending": ".nii.gz"}),
                "`labels`.`blood`: expected an integer",
            ),
            (
                serde_json::json!({"channel_names": {"0": "CT"}, "labels": {"background": 0, "blood": [1, 2]}, "file_ending": ".nii.gz"}),
                "region-based",
            ),
            (
                serde_json::json!({"channel_names": {"0": "CT"}, "labels": {"background": 0}}),
                "`file_ending`: expected a string",
            ),
            (
                serde_json::json!({"channel_names": {"0": "CT"}, "labels": {"background": 0}, "file_ending": ".png"}),
                "got \".png\"",
            ),
            (
                serde_json::json!({"channel_names": {"0": "CT"}, "labels": {"background": 0}, "file_ending": ".nii.gz", "numTraining": 5}),
                "`numTraining` is 5",
            ),
            (
                serde_json::json!({"training": {"image": "a"}}),
                "`training`: expected a list",
            ),
            (
                serde_json::json!({"training": [{"image": "./imagesTr/a.nii.gz"}]}),
                "`training`[0].`label`",
            ),
            (
                serde_json::json!({"labels": {"zero": "background"}, "training": []}),
                "key `zero`",
            ),
        ];
        for (json, msg) in cases {
            let dir = tempfile::tempdir().unwrap();
            write_v2(dir.path(), &["a"]);
            fs::write(dir.path().join("dataset.json"), json.to_string()).unwrap();
            let e = index_dataset(dir.path()).unwrap_err().to_string();
            assert!(e.contains("dataset.json") && e.contains(msg), "{json}: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("dataset.json"), "{not json").unwrap();
        let e = index_dataset(dir.path()).unwrap_err().to_string();
        assert!(e.contains("dataset.json: invalid JSON"), "{e}");
    }

    #[test]
    fn unrecognised_and_unreadable_folders() {
        let dir = tempfile::tempdir().unwrap();
        let e = index_dataset(dir.path()).unwrap_err();
        assert!(matches!(e, LayoutError::Unrecognised { .. }), "{e}");
        let e = index_dataset(dir.path().join("nope")).unwrap_err();
        assert!(
            matches!(e, LayoutError::ReadDir { .. }) && e.to_string().contains("nope"),
            "{e}"
        );
        // Only dotfiles: no cases.
        mkdir(&dir.path().join("data"));
        mkdir(&dir.path().join("label"));
        fs::write(dir.path().join("data/._a.nii.gz"), b"").unwrap();
        let e = index_dataset(dir.path()).unwrap_err();
        assert!(matches!(e, LayoutError::NoCases { .. }), "{e}");
    }

    #[test]
    fn fingerprint_is_stable_and_tracks_content() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        write_v2(a.path(), &["x", "y"]);
        write_v2(b.path(), &["x", "y"]);
        let fa = index_dataset(a.path()).unwrap().fingerprint;
        // Same content in another folder: same fingerprint (paths are relative).
        assert_eq!(fa, index_dataset(b.path()).unwrap().fingerprint);
        assert_eq!(fa, index_dataset(a.path()).unwrap().fingerprint);
        // A changed spacing changes it.
        let v = Volume::new(image(1).data, [2.5, 0.5, 0.5]);
        let l = Volume::new(label(&[0, 1, 0]).data, [2.5, 0.5, 0.5]);
        write_i16(&v, b.path().join("imagesTr/y_0000.nii.gz")).unwrap();
        write_u8(&l, b.path().join("labelsTr/y.nii.gz")).unwrap();
        assert_ne!(fa, index_dataset(b.path()).unwrap().fingerprint);
    }

    #[test]
    fn label_maps_parse_and_binarize() {
        assert_eq!("nonzero".parse::<LabelMap>().unwrap(), LabelMap::NonZero);
        assert_eq!(
            "4, 1,4".parse::<LabelMap>().unwrap(),
            LabelMap::Values(vec![1, 4])
        );
        assert!(
            "0".parse::<LabelMap>()
                .unwrap_err()
                .to_string()
                .contains("background")
        );
        assert!("x".parse::<LabelMap>().is_err());
        assert!("300".parse::<LabelMap>().is_err());
        let l = label(&[0, 1, 2, 3, 4, 5]);
        let all = LabelMap::NonZero.binarize(&l);
        assert_eq!(all.data.iter().filter(|&&v| v == 1).count(), 20);
        let sah = LabelMap::Values(vec![4]).binarize(&l);
        assert_eq!(sah.data.iter().filter(|&&v| v == 1).count(), 4);
        assert!(sah.data.iter().all(|&v| v <= 1));
    }
}
