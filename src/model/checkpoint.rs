//! safetensors checkpoints with the contract's names and metadata.
//!
//! - Base file: every base tensor (`encoder.0.conv1.weight`, ...), f32, metadata `format`,
//!   `in_channels`, `features`, `norm`.
//! - Adapter file: only the trained tensors (`decoder.1.conv2.lora_A.weight`,
//!   `decoder.1.conv2.magnitude`, or the base tensors `full` trained), metadata kind, rank, alpha,
//!   selector and the SHA-256 of the base file it was trained on.
//!
//! Both load back bit-exactly; a file whose names or shapes disagree with the model is refused
//! naming the tensor. Writes go to a temporary file in the same folder and are renamed into place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use super::adapt::AdaptationSpec;
use super::config::UnetConfig;
use super::kind::AdaptationKind;
use super::selector::Selector;
use super::unet::{TensorSetError, Unet2d};

pub const BASE_FORMAT: &str = "ranksweep-unet2d-v1";
pub const ADAPTER_FORMAT: &str = "ranksweep-adapter-v1";
const NORM: &str = "group-norm(min(8,C))";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a safetensors file: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: metadata `{key}`: {reason}")]
    Metadata {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{path}: {source}")]
    Tensors {
        path: PathBuf,
        #[source]
        source: TensorSetError,
    },
    #[error("{path}: {reason}")]
    Adapter { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Candle {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
}

type Result<T> = std::result::Result<T, CheckpointError>;

/// What an adapter file says about how it was made.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterMeta {
    pub spec: AdaptationSpec,
    pub config: UnetConfig,
    /// SHA-256 (hex) of the base file the adapter was trained on.
    pub base_sha256: String,
}

/// Hex SHA-256 of a file's bytes.
pub fn file_sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.into(),
        source,
    })?;
    Ok(hex(&Sha256::digest(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` to `path` durably: see [`crate::durable`].
pub use crate::durable::write_atomic;

fn save(path: &Path, tensors: Vec<(String, Tensor)>, meta: HashMap<String, String>) -> Result<()> {
    let candle = |source| CheckpointError::Candle {
        path: path.into(),
        source,
    };
    let tensors = tensors
        .into_iter()
        .map(|(n, t)| {
            Ok((
                n,
                t.to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?
                    .contiguous()?,
            ))
        })
        .collect::<candle_core::Result<Vec<_>>>()
        .map_err(candle)?;
    let mut bytes =
        safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta)).map_err(
            |e| CheckpointError::Format {
                path: path.into(),
                reason: e.to_string(),
            },
        )?;
    canonicalize_header(&mut bytes);
    write_atomic(path, &bytes).map_err(|source| CheckpointError::Io {
        path: path.into(),
        source,
    })
}

/// Rewrites the JSON header with sorted keys. safetensors takes the metadata as a `HashMap`, whose
/// order changes from run to run; identical models must give identical files (an adapter file
/// records its base file's hash). The header keeps its length, so data offsets are unchanged.
fn canonicalize_header(bytes: &mut [u8]) {
    let Some(len) = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    else {
        return;
    };
    let Some(header) = bytes.get(8..8 + len) else {
        return;
    };
    // BTreeMaps at both levels: serde_json's own map may keep insertion order (a dependency can
    // turn on `preserve_order`), and the metadata arrives in HashMap order.
    type Header = std::collections::BTreeMap<String, serde_json::Value>;
    let Ok(mut value) = serde_json::from_slice::<Header>(header) else {
        return;
    };
    if let Some(meta) = value.remove("__metadata__") {
        let Ok(meta) = serde_json::from_value::<std::collections::BTreeMap<String, String>>(meta)
        else {
            return;
        };
        let Ok(meta) = serde_json::to_value(meta) else {
            return;
        };
        value.insert("__metadata__".into(), meta);
    }
    let Ok(sorted) = serde_json::to_vec(&value) else {
        return;
    };
    if sorted.len() <= len {
        let dst = &mut bytes[8..8 + len];
        dst[..sorted.len()].copy_from_slice(&sorted);
        dst[sorted.len()..].fill(b' ');
    }
}

fn load(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.into(),
        source,
    })?;
    let format = |reason: String| CheckpointError::Format {
        path: path.into(),
        reason,
    };
    let (_, metadata) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| format(e.to_string()))?;
    let meta = metadata.metadata().clone().unwrap_or_default();
    let tensors =
        candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| format(e.to_string()))?;
    Ok((tensors, meta))
}

fn config_meta(cfg: &UnetConfig) -> HashMap<String, String> {
    let mut m = HashMap::from([
        ("in_channels".to_string(), cfg.in_channels.to_string()),
        (
            "features".to_string(),
            serde_json::to_string(&cfg.features).expect("a Vec<usize> serializes"),
        ),
        ("norm".to_string(), NORM.to_string()),
    ]);
    // Only 3D models record `dims`: 2D files stay byte-identical to before.
    if cfg.dims != 2 {
        m.insert("dims".to_string(), cfg.dims.to_string());
    }
    m
}

fn field<'m>(path: &Path, meta: &'m HashMap<String, String>, key: &str) -> Result<&'m str> {
    meta.get(key)
        .map(String::as_str)
        .ok_or_else(|| CheckpointError::Metadata {
            path: path.into(),
            key: key.into(),
            reason: "missing".into(),
        })
}

fn parse<T: std::str::FromStr>(
    path: &Path,
    meta: &HashMap<String, String>,
    key: &str,
    what: &str,
) -> Result<T> {
    let v = field(path, meta, key)?;
    v.parse().map_err(|_| CheckpointError::Metadata {
        path: path.into(),
        key: key.into(),
        reason: format!("expected {what}, got `{v}`"),
    })
}

fn config_from_meta(path: &Path, meta: &HashMap<String, String>) -> Result<UnetConfig> {
    let in_channels = parse::<usize>(path, meta, "in_channels", "a positive integer")?;
    let features: Vec<usize> =
        serde_json::from_str(field(path, meta, "features")?).map_err(|_| {
            CheckpointError::Metadata {
                path: path.into(),
                key: "features".into(),
                reason: "expected a JSON list of widths".into(),
            }
        })?;
    let dims = match meta.get("dims") {
        None => 2,
        Some(_) => parse::<usize>(path, meta, "dims", "2 or 3")?,
    };
    UnetConfig::with_dims(in_channels, features, dims).map_err(|e| CheckpointError::Metadata {
        path: path.into(),
        key: if dims == 2 { "features" } else { "dims" }.into(),
        reason: e.to_string(),
    })
}

/// Saves the model's base tensors (adapters are not part of a base file; merge first to keep
/// them).
pub fn save_base(model: &Unet2d, path: &Path) -> Result<()> {
    let mut meta = config_meta(model.config());
    meta.insert("format".into(), BASE_FORMAT.into());
    save(path, model.base_tensors(), meta)
}

/// Loads a base file into a frozen model.
pub fn load_base(path: &Path, device: &Device) -> Result<Unet2d> {
    let (tensors, meta) = load(path, device)?;
    let format = field(path, &meta, "format")?;
    if format != BASE_FORMAT {
        return Err(CheckpointError::Metadata {
            path: path.into(),
            key: "format".into(),
            reason: format!("expected `{BASE_FORMAT}`, got `{format}`"),
        });
    }
    let cfg = config_from_meta(path, &meta)?;
    Unet2d::from_tensors(&cfg, &tensors).map_err(|source| CheckpointError::Tensors {
        path: path.into(),
        source,
    })
}

/// Saves the trainable tensors of an adapted model with how they were made.
pub fn save_adapter(
    model: &Unet2d,
    spec: &AdaptationSpec,
    base_sha256: &str,
    path: &Path,
) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = model
        .params()
        .into_iter()
        .filter(|p| p.param.is_trainable())
        .map(|p| (p.name, p.param.tensor().clone()))
        .collect();
    let mut meta = config_meta(model.config());
    meta.insert("format".into(), ADAPTER_FORMAT.into());
    meta.insert("kind".into(), spec.kind.to_string());
    if let Some(m) = &spec.module {
        meta.insert("selector".into(), m.to_string());
    }
    if let Some(r) = spec.rank {
        meta.insert("rank".into(), r.to_string());
        meta.insert("alpha".into(), spec.alpha_or_default().to_string());
    }
    meta.insert("train_norms".into(), spec.train_norms.to_string());
    meta.insert("base_sha256".into(), base_sha256.into());
    save(path, tensors, meta)
}

/// Reads an adapter file's metadata and tensors.
pub fn read_adapter(
    path: &Path,
    device: &Device,
) -> Result<(AdapterMeta, HashMap<String, Tensor>)> {
    let (tensors, meta) = load(path, device)?;
    let format = field(path, &meta, "format")?;
    if format != ADAPTER_FORMAT {
        return Err(CheckpointError::Metadata {
            path: path.into(),
            key: "format".into(),
            reason: format!("expected `{ADAPTER_FORMAT}`, got `{format}`"),
        });
    }
    let kind: AdaptationKind = parse(path, &meta, "kind", "an adaptation kind")?;
    let module = match meta.get("selector") {
        Some(s) => Some(Selector::new(s).map_err(|e| CheckpointError::Metadata {
            path: path.into(),
            key: "selector".into(),
            reason: e.to_string(),
        })?),
        None => None,
    };
    let (rank, alpha) = if kind.is_adapter() {
        (
            Some(parse::<usize>(path, &meta, "rank", "a positive integer")?),
            Some(parse::<f64>(path, &meta, "alpha", "a number")?),
        )
    } else {
        (None, None)
    };
    let train_norms = parse::<bool>(path, &meta, "train_norms", "true or false")?;
    let spec = AdaptationSpec {
        kind,
        module,
        rank,
        alpha,
        train_norms,
    };
    let config = config_from_meta(path, &meta)?;
    let base_sha256 = field(path, &meta, "base_sha256")?.to_string();
    Ok((
        AdapterMeta {
            spec,
            config,
            base_sha256,
        },
        tensors,
    ))
}

/// Applies an adapter file to a base model: re-creates the adaptation, then sets every trained
/// tensor. The file must hold exactly the adaptation's trainable tensors with their shapes.
pub fn load_adapter(base: &Unet2d, path: &Path) -> Result<(Unet2d, AdapterMeta)> {
    let (meta, tensors) = read_adapter(path, base.device())?;
    if &meta.config != base.config() {
        return Err(CheckpointError::Adapter {
            path: path.into(),
            reason: format!(
                "made for a model with in_channels {} and features {:?} ({}D), the base has {} and {:?} ({}D)",
                meta.config.in_channels,
                meta.config.features,
                meta.config.dims,
                base.config().in_channels,
                base.config().features,
                base.config().dims
            ),
        });
    }
    let mut model = base.clone();
    meta.spec
        .apply(&mut model, 0)
        .map_err(|e| CheckpointError::Adapter {
            path: path.into(),
            reason: e.to_string(),
        })?;
    let tensor_err = |source| CheckpointError::Tensors {
        path: path.into(),
        source,
    };
    let mut expected = Vec::new();
    for (name, p) in model.params_mut() {
        let Some(var) = p.var() else { continue };
        expected.push(name.clone());
        let t = tensors
            .get(&name)
            .ok_or_else(|| tensor_err(TensorSetError::Missing(name.clone())))?;
        if t.dims() != var.dims() {
            return Err(tensor_err(TensorSetError::Shape {
                name,
                got: t.dims().to_vec(),
                want: var.dims().to_vec(),
            }));
        }
        var.set(t).map_err(|source| CheckpointError::Candle {
            path: path.into(),
            source,
        })?;
    }
    let mut extra: Vec<&String> = tensors.keys().filter(|k| !expected.contains(k)).collect();
    extra.sort();
    if let Some(e) = extra.first() {
        return Err(tensor_err(TensorSetError::Extra((*e).clone())));
    }
    Ok((model, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::param::uniform;

    fn tiny() -> UnetConfig {
        UnetConfig::new(1, vec![4, 8, 16]).unwrap()
    }

    fn bits(model: &Unet2d) -> Vec<(String, Vec<u32>)> {
        model
            .params()
            .into_iter()
            .map(|p| {
                let v: Vec<f32> = p.param.tensor().flatten_all().unwrap().to_vec1().unwrap();
                (p.name, v.into_iter().map(f32::to_bits).collect())
            })
            .collect()
    }

    #[test]
    fn identical_models_give_identical_files() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let m = Unet2d::init(&tiny(), 7, &Device::Cpu)?;
        let hashes: Vec<String> = (0..4)
            .map(|i| {
                let p = dir.path().join(format!("b{i}.safetensors"));
                save_base(&m, &p).unwrap();
                file_sha256(&p).unwrap()
            })
            .collect();
        assert!(hashes.iter().all(|h| h == &hashes[0]), "{hashes:?}");
        Ok(())
    }

    #[test]
    fn base_round_trip_is_bit_exact() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let m = Unet2d::init(&tiny(), 7, &Device::Cpu)?;
        let p = dir.path().join("base.safetensors");
        save_base(&m, &p)?;
        let back = load_base(&p, &Device::Cpu)?;
        assert_eq!(bits(&m), bits(&back));
        assert_eq!(back.config(), &tiny());
        Ok(())
    }

    #[test]
    fn adapter_round_trip_for_every_kind() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let base = Unet2d::init(&tiny(), 7, &Device::Cpu)?;
        let base_path = dir.path().join("base.safetensors");
        save_base(&base, &base_path)?;
        let sha = file_sha256(&base_path)?;
        for kind in AdaptationKind::ALL
            .into_iter()
            .filter(|k| *k != AdaptationKind::None)
        {
            let spec = if kind.is_adapter() {
                AdaptationSpec::adapter(kind, Selector::new("decoder").unwrap(), 3)
            } else {
                AdaptationSpec::full(Selector::new("decoder").unwrap())
            };
            let mut m = base.clone();
            spec.apply(&mut m, 1)?;
            // Move every trainable tensor off its init so the round trip is not trivially zero.
            for (name, p) in m.params_mut() {
                if let Some(v) = p.var() {
                    v.set(&uniform(9, &name, v.dims(), 0.5, &Device::Cpu)?)?;
                }
            }
            let p = dir.path().join(format!("{kind}.safetensors"));
            save_adapter(&m, &spec, &sha, &p)?;
            let (back, meta) = load_adapter(&base, &p)?;
            assert_eq!(meta.spec.kind, kind);
            assert_eq!(meta.base_sha256, sha);
            assert_eq!(bits(&m), bits(&back), "{kind}");
        }
        Ok(())
    }

    #[test]
    fn refuses_files_that_disagree_with_the_model() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let m = Unet2d::init(&tiny(), 7, &Device::Cpu)?;
        let good: HashMap<String, Tensor> = m.base_tensors().into_iter().collect();
        let mut meta = config_meta(&tiny());
        meta.insert("format".into(), BASE_FORMAT.into());
        let write = |t: &HashMap<String, Tensor>, name: &str| -> anyhow::Result<PathBuf> {
            let p = dir.path().join(name);
            save(
                &p,
                t.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                meta.clone(),
            )?;
            Ok(p)
        };
        let mut missing = good.clone();
        missing.remove("decoder.1.conv2.weight");
        let err = load_base(&write(&missing, "a")?, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing tensor `decoder.1.conv2.weight`"),
            "{err}"
        );
        let mut extra = good.clone();
        extra.insert("decoder.9.conv1.weight".into(), good["head.bias"].clone());
        let err = load_base(&write(&extra, "b")?, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unexpected tensor `decoder.9.conv1.weight`"),
            "{err}"
        );
        let mut shaped = good.clone();
        shaped.insert("encoder.1.norm1.bias".into(), good["head.bias"].clone());
        let err = load_base(&write(&shaped, "c")?, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`encoder.1.norm1.bias` has shape [1], expected [8]"),
            "{err}"
        );
        std::fs::write(dir.path().join("junk"), b"not a checkpoint")?;
        let err = load_base(&dir.path().join("junk"), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("junk") && err.contains("not a safetensors file"),
            "{err}"
        );
        Ok(())
    }
}
