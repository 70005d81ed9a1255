//! `Unet2d` exactly as the model contract names and shapes it, with its layers; with
//! `UnetConfig::dims` 3 the same tree runs in 3D (3×3×3 convs, 2×2×2 pooling and up-convs,
//! 5D tensors under the same names), so every caller handles both through one type.
//!
//! Tensor names follow from the layer tree (`encoder.0.conv1.weight`, `decoder.1.up.bias`,
//! `head.weight`). Every tensor is a [`Param`]: frozen tensors never enter the gradient graph,
//! trainable ones are `Var`s.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Result, Tensor};

use super::adapter::Adapter;
use super::config::UnetConfig;
use super::param::{Param, ones, uniform, zeros};
use crate::nn;

/// A 3×3 conv (padding 1, no bias) with an optional adapter.
#[derive(Debug, Clone)]
pub struct AdaptedConv {
    path: String,
    weight: Param,
    adapter: Option<Adapter>,
}

impl AdaptedConv {
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn adapter(&self) -> Option<&Adapter> {
        self.adapter.as_ref()
    }

    /// The weight the conv runs with (merged when adapted).
    pub fn effective_weight(&self) -> Result<Tensor> {
        match &self.adapter {
            None => Ok(self.weight.tensor().clone()),
            Some(a) => a.weight(self.weight.tensor()),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv(x, &self.effective_weight()?)
    }
}

/// The 2D or 3D convolution, by the kernel's rank.
fn conv(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if w.rank() == 5 {
        nn::conv3d(x, w)
    } else {
        nn::conv2d(x, w)
    }
}

/// GroupNorm with min(8, C) groups and a per-channel affine transform.
#[derive(Debug, Clone)]
pub struct Norm {
    path: String,
    groups: usize,
    weight: Param,
    bias: Param,
}

impl Norm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        nn::group_norm(
            x,
            self.groups,
            self.weight.tensor(),
            self.bias.tensor(),
            1e-5,
        )
    }
}

/// conv3×3 → GroupNorm → ReLU, twice.
#[derive(Debug, Clone)]
pub struct DoubleConv {
    pub conv1: AdaptedConv,
    pub norm1: Norm,
    pub conv2: AdaptedConv,
    pub norm2: Norm,
}

impl DoubleConv {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = nn::relu(&self.norm1.forward(&self.conv1.forward(x)?)?)?;
        nn::relu(&self.norm2.forward(&self.conv2.forward(&x)?)?)
    }
}

/// A decoder level: 2×2 stride-2 transposed conv, concatenation with the skip, DoubleConv.
#[derive(Debug, Clone)]
pub struct DecoderBlock {
    pub up_weight: Param,
    pub up_bias: Param,
    pub block: DoubleConv,
}

/// The Unet: encoder levels, bottleneck, decoder levels (deepest first), 1×1 head; 2D or 3D
/// by its config (`Unet3d` names the same type).
#[derive(Debug, Clone)]
pub struct Unet2d {
    cfg: UnetConfig,
    pub encoder: Vec<DoubleConv>,
    pub bottleneck: DoubleConv,
    pub decoder: Vec<DecoderBlock>,
    pub head_weight: Param,
    pub head_bias: Param,
}

/// The 3D Unet: [`Unet2d`] built from a config with `dims` 3.
pub type Unet3d = Unet2d;

/// Where a tensor sits: a base tensor of the contract, or an adapter tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Base,
    Adapter,
}

/// One named tensor of the model.
#[derive(Debug, Clone)]
pub struct NamedParam<'a> {
    /// Full name, e.g. `decoder.1.conv2.lora_A.weight`.
    pub name: String,
    /// The layer it belongs to, e.g. `decoder.1.conv2`.
    pub layer: String,
    pub role: Role,
    pub param: &'a Param,
}

/// The contract's base tensors (name, shape) for a config, in model order.
pub fn base_shapes(cfg: &UnetConfig) -> Vec<(String, Vec<usize>)> {
    let f = &cfg.features;
    let l = f.len();
    let mut v = Vec::new();
    // (a, b) followed by the kernel's spatial sides.
    let shape = |a: usize, b: usize, k: usize| [vec![a, b], cfg.kernel(k)].concat();
    let double = |prefix: &str, cin: usize, cout: usize, v: &mut Vec<(String, Vec<usize>)>| {
        v.push((format!("{prefix}.conv1.weight"), shape(cout, cin, 3)));
        v.push((format!("{prefix}.norm1.weight"), vec![cout]));
        v.push((format!("{prefix}.norm1.bias"), vec![cout]));
        v.push((format!("{prefix}.conv2.weight"), shape(cout, cout, 3)));
        v.push((format!("{prefix}.norm2.weight"), vec![cout]));
        v.push((format!("{prefix}.norm2.bias"), vec![cout]));
    };
    for i in 0..l - 1 {
        let cin = if i == 0 { cfg.in_channels } else { f[i - 1] };
        double(&format!("encoder.{i}"), cin, f[i], &mut v);
    }
    double("bottleneck", f[l - 2], f[l - 1], &mut v);
    for j in 0..l - 1 {
        let (cin, cout) = (f[l - 1 - j], f[l - 2 - j]);
        v.push((format!("decoder.{j}.up.weight"), shape(cin, cout, 2)));
        v.push((format!("decoder.{j}.up.bias"), vec![cout]));
        double(&format!("decoder.{j}"), 2 * cout, cout, &mut v);
    }
    v.push(("head.weight".into(), shape(1, f[0], 1)));
    v.push(("head.bias".into(), vec![1]));
    v
}

/// The layer a tensor name belongs to: the name without its last one or two components
/// (`decoder.1.up.weight` → `decoder.1.up`, `decoder.1.conv2.lora_A.weight` → `decoder.1.conv2`).
pub fn layer_of(name: &str) -> String {
    let suffixes = [
        ".lora_A.weight",
        ".lora_B.weight",
        ".cp.out",
        ".cp.in",
        ".cp.kd",
        ".cp.kh",
        ".cp.kw",
        ".magnitude",
        ".weight",
        ".bias",
    ];
    for s in suffixes {
        if let Some(p) = name.strip_suffix(s) {
            return p.to_string();
        }
    }
    name.to_string()
}

/// PyTorch's default initialisation (kaiming-uniform with a = √5 → U(±1/√fan_in) for weights
/// and biases; GroupNorm weight 1, bias 0), seeded per tensor name.
pub fn init_tensors(
    cfg: &UnetConfig,
    seed: u64,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut map = HashMap::new();
    let shapes = base_shapes(cfg);
    let fan_in_of: HashMap<String, usize> = shapes
        .iter()
        .filter(|(n, _)| n.ends_with(".weight") && !n.contains(".norm"))
        .map(|(n, s)| {
            // PyTorch takes fan_in from dim 1: I·k·k(·k) for convs, O·k·k(·k) for transposed.
            (layer_of(n), s[1..].iter().product::<usize>())
        })
        .collect();
    for (name, shape) in shapes {
        let layer = layer_of(&name);
        let t = if layer.contains(".norm") {
            if name.ends_with(".weight") {
                ones(&shape, device)?
            } else {
                zeros(&shape, device)?
            }
        } else {
            let bound = 1.0 / (fan_in_of[&layer] as f64).sqrt();
            uniform(seed, &name, &shape, bound, device)?
        };
        map.insert(name, t);
    }
    Ok(map)
}

/// Errors building a model from named tensors.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorSetError {
    #[error("missing tensor `{0}`")]
    Missing(String),
    #[error("unexpected tensor `{0}` (not part of this model)")]
    Extra(String),
    #[error("tensor `{name}` has shape {got:?}, expected {want:?}")]
    Shape {
        name: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
}

impl Unet2d {
    /// A freshly initialised model, every tensor frozen.
    pub fn init(cfg: &UnetConfig, seed: u64, device: &Device) -> Result<Self> {
        let tensors = init_tensors(cfg, seed, device)?;
        Unet2d::from_tensors(cfg, &tensors).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    /// Builds a model from exactly the contract's tensors (all frozen). Refuses a missing,
    /// extra or mis-shaped tensor, naming it.
    pub fn from_tensors(
        cfg: &UnetConfig,
        tensors: &HashMap<String, Tensor>,
    ) -> std::result::Result<Self, TensorSetError> {
        let shapes = base_shapes(cfg);
        let wanted: BTreeMap<&str, &Vec<usize>> =
            shapes.iter().map(|(n, s)| (n.as_str(), s)).collect();
        let mut extra: Vec<&String> = tensors
            .keys()
            .filter(|k| !wanted.contains_key(k.as_str()))
            .collect();
        extra.sort();
        if let Some(e) = extra.first() {
            return Err(TensorSetError::Extra((*e).clone()));
        }
        for (name, want) in &shapes {
            let t = tensors
                .get(name)
                .ok_or_else(|| TensorSetError::Missing(name.clone()))?;
            if t.dims() != want.as_slice() {
                return Err(TensorSetError::Shape {
                    name: name.clone(),
                    got: t.dims().to_vec(),
                    want: want.clone(),
                });
            }
        }
        let get = |n: String| Param::Frozen(tensors[&n].clone());
        let double = |prefix: &str, cout: usize| DoubleConv {
            conv1: AdaptedConv {
                path: format!("{prefix}.conv1"),
                weight: get(format!("{prefix}.conv1.weight")),
                adapter: None,
            },
            norm1: Norm {
                path: format!("{prefix}.norm1"),
                groups: UnetConfig::groups(cout),
                weight: get(format!("{prefix}.norm1.weight")),
                bias: get(format!("{prefix}.norm1.bias")),
            },
            conv2: AdaptedConv {
                path: format!("{prefix}.conv2"),
                weight: get(format!("{prefix}.conv2.weight")),
                adapter: None,
            },
            norm2: Norm {
                path: format!("{prefix}.norm2"),
                groups: UnetConfig::groups(cout),
                weight: get(format!("{prefix}.norm2.weight")),
                bias: get(format!("{prefix}.norm2.bias")),
            },
        };
        let f = &cfg.features;
        let l = f.len();
        let model = Unet2d {
            cfg: cfg.clone(),
            encoder: (0..l - 1)
                .map(|i| double(&format!("encoder.{i}"), f[i]))
                .collect(),
            bottleneck: double("bottleneck", f[l - 1]),
            decoder: (0..l - 1)
                .map(|j| DecoderBlock {
                    up_weight: get(format!("decoder.{j}.up.weight")),
                    up_bias: get(format!("decoder.{j}.up.bias")),
                    block: double(&format!("decoder.{j}"), f[l - 2 - j]),
                })
                .collect(),
            head_weight: get("head.weight".into()),
            head_bias: get("head.bias".into()),
        };
        Ok(model)
    }

    pub fn config(&self) -> &UnetConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        self.head_weight.tensor().device()
    }

    /// Logits (B, 1, H, W) for an input (B, in_channels, H, W) whose H and W are multiples of
    /// 2^(levels − 1); in 3D, (B, 1, D, H, W) for (B, in_channels, D, H, W).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let vol = self.cfg.is_3d();
        let msg = |e: super::config::ConfigError| candle_core::Error::Msg(e.to_string());
        let c = if vol {
            let (_, c, d, h, w) = x.dims5()?;
            self.cfg.check_input3(d, h, w).map_err(msg)?;
            c
        } else {
            let (_, c, h, w) = x.dims4()?;
            self.cfg.check_input(h, w).map_err(msg)?;
            c
        };
        if c != self.cfg.in_channels {
            candle_core::bail!(
                "input has {c} channels, the model expects {}",
                self.cfg.in_channels
            )
        }
        let mut x = x.clone();
        let mut skips = Vec::with_capacity(self.encoder.len());
        for block in &self.encoder {
            x = block.forward(&x)?;
            skips.push(x.clone());
            x = if vol {
                nn::max_pool2x2x2(&x)?
            } else {
                nn::max_pool2x2(&x)?
            };
        }
        x = self.bottleneck.forward(&x)?;
        for (dec, skip) in self.decoder.iter().zip(skips.iter().rev()) {
            let (w, b) = (dec.up_weight.tensor(), dec.up_bias.tensor());
            let up = if vol {
                nn::conv_transpose2x2x2(&x, w, b)?
            } else {
                nn::conv_transpose2x2(&x, w, b)?
            };
            x = dec.block.forward(&Tensor::cat(&[&up, skip], 1)?)?;
        }
        let y = conv(&x, self.head_weight.tensor())?;
        let ones = vec![1usize; y.rank()];
        y.broadcast_add(&self.head_bias.tensor().reshape(ones.as_slice())?)
    }

    /// The 3×3 convs, in model order.
    pub fn convs(&self) -> Vec<&AdaptedConv> {
        self.double_convs()
            .into_iter()
            .flat_map(|d| [&d.conv1, &d.conv2])
            .collect()
    }

    pub fn convs_mut(&mut self) -> Vec<&mut AdaptedConv> {
        self.double_convs_mut()
            .into_iter()
            .flat_map(|d| [&mut d.conv1, &mut d.conv2])
            .collect()
    }

    fn double_convs(&self) -> Vec<&DoubleConv> {
        let mut v: Vec<&DoubleConv> = self.encoder.iter().collect();
        v.push(&self.bottleneck);
        v.extend(self.decoder.iter().map(|d| &d.block));
        v
    }

    fn double_convs_mut(&mut self) -> Vec<&mut DoubleConv> {
        let mut v: Vec<&mut DoubleConv> = self.encoder.iter_mut().collect();
        v.push(&mut self.bottleneck);
        v.extend(self.decoder.iter_mut().map(|d| &mut d.block));
        v
    }

    /// Every tensor with its full name, base tensors in contract order, each conv's adapter
    /// tensors right after that conv's weight.
    pub fn params(&self) -> Vec<NamedParam<'_>> {
        fn push<'a>(out: &mut Vec<NamedParam<'a>>, name: String, role: Role, param: &'a Param) {
            out.push(NamedParam {
                layer: layer_of(&name),
                name,
                role,
                param,
            });
        }
        fn visit<'a>(d: &'a DoubleConv, out: &mut Vec<NamedParam<'a>>) {
            for (conv, norm) in [(&d.conv1, &d.norm1), (&d.conv2, &d.norm2)] {
                push(
                    out,
                    format!("{}.weight", conv.path),
                    Role::Base,
                    &conv.weight,
                );
                if let Some(a) = &conv.adapter {
                    for (t, p) in a.params() {
                        push(out, format!("{}.{t}", conv.path), Role::Adapter, p);
                    }
                }
                push(
                    out,
                    format!("{}.weight", norm.path),
                    Role::Base,
                    &norm.weight,
                );
                push(out, format!("{}.bias", norm.path), Role::Base, &norm.bias);
            }
        }
        let mut out = Vec::new();
        for d in &self.encoder {
            visit(d, &mut out);
        }
        visit(&self.bottleneck, &mut out);
        for (j, dec) in self.decoder.iter().enumerate() {
            push(
                &mut out,
                format!("decoder.{j}.up.weight"),
                Role::Base,
                &dec.up_weight,
            );
            push(
                &mut out,
                format!("decoder.{j}.up.bias"),
                Role::Base,
                &dec.up_bias,
            );
            visit(&dec.block, &mut out);
        }
        push(
            &mut out,
            "head.weight".into(),
            Role::Base,
            &self.head_weight,
        );
        push(&mut out, "head.bias".into(), Role::Base, &self.head_bias);
        out
    }

    /// Mutable access to every tensor by full name (same order as [`Unet2d::params`]).
    pub fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        let mut out: Vec<(String, &mut Param)> = Vec::new();
        fn visit<'a>(d: &'a mut DoubleConv, out: &mut Vec<(String, &'a mut Param)>) {
            let DoubleConv {
                conv1,
                norm1,
                conv2,
                norm2,
            } = d;
            for (conv, norm) in [(conv1, norm1), (conv2, norm2)] {
                out.push((format!("{}.weight", conv.path), &mut conv.weight));
                if let Some(a) = &mut conv.adapter {
                    for (t, p) in a.params_mut() {
                        out.push((format!("{}.{t}", conv.path), p));
                    }
                }
                out.push((format!("{}.weight", norm.path), &mut norm.weight));
                out.push((format!("{}.bias", norm.path), &mut norm.bias));
            }
        }
        for d in &mut self.encoder {
            visit(d, &mut out);
        }
        visit(&mut self.bottleneck, &mut out);
        for (j, dec) in self.decoder.iter_mut().enumerate() {
            out.push((format!("decoder.{j}.up.weight"), &mut dec.up_weight));
            out.push((format!("decoder.{j}.up.bias"), &mut dec.up_bias));
            visit(&mut dec.block, &mut out);
        }
        out.push(("head.weight".into(), &mut self.head_weight));
        out.push(("head.bias".into(), &mut self.head_bias));
        out
    }

    /// Attaches an adapter to the conv at `path`.
    pub(crate) fn set_adapter(conv: &mut AdaptedConv, adapter: Adapter) {
        conv.adapter = Some(adapter);
    }

    /// Base tensors as they are now (for a base checkpoint).
    pub fn base_tensors(&self) -> Vec<(String, Tensor)> {
        self.params()
            .into_iter()
            .filter(|p| p.role == Role::Base)
            .map(|p| (p.name, p.param.tensor().clone()))
            .collect()
    }

    /// A plain model with every adapter folded into its conv's weight (`merge`): its output
    /// equals the adapted model's, and it has no adapters and no trainable tensors.
    pub fn merged(&self) -> Result<Unet2d> {
        let mut m = self.clone();
        for conv in m.convs_mut() {
            let w = conv.effective_weight()?.detach().copy()?;
            conv.weight = Param::Frozen(w);
            conv.adapter = None;
        }
        for (_, p) in m.params_mut() {
            *p = p.frozen_copy()?;
        }
        Ok(m)
    }

    /// The same model with every tensor cast to `dtype` (trainable stays trainable). Used for
    /// f64 finite-difference checks.
    pub fn to_dtype(&self, dtype: candle_core::DType) -> Result<Unet2d> {
        let mut m = self.clone();
        for (_, p) in m.params_mut() {
            let t = p.tensor().to_dtype(dtype)?;
            *p = match p {
                Param::Frozen(_) => Param::Frozen(t),
                Param::Trainable(_) => Param::Trainable(candle_core::Var::from_tensor(&t)?),
            };
        }
        Ok(m)
    }

    /// Total number of parameters (base + adapters).
    pub fn total_params(&self) -> usize {
        self.params().iter().map(|p| p.param.elem_count()).sum()
    }

    pub fn trainable_params(&self) -> usize {
        self.params()
            .iter()
            .filter(|p| p.param.is_trainable())
            .map(|p| p.param.elem_count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_model_has_the_contract_count() -> Result<()> {
        let m = Unet2d::init(&UnetConfig::default(), 0, &Device::Cpu)?;
        assert_eq!(m.total_params(), 482_449);
        assert_eq!(m.trainable_params(), 0);
        let names: Vec<String> = m.params().into_iter().map(|p| p.name).collect();
        assert!(names.contains(&"encoder.0.conv1.weight".to_string()));
        assert!(names.contains(&"decoder.2.up.bias".to_string()));
        assert!(names.contains(&"bottleneck.norm2.weight".to_string()));
        assert_eq!(names.len(), base_shapes(&UnetConfig::default()).len());
        Ok(())
    }

    #[test]
    fn forward_shapes_and_refuses_unpoolable_inputs() -> Result<()> {
        let cfg = UnetConfig::new(2, vec![4, 8, 16]).unwrap();
        let m = Unet2d::init(&cfg, 1, &Device::Cpu)?;
        let x = Tensor::zeros((2, 2, 16, 8), candle_core::DType::F32, &Device::Cpu)?;
        assert_eq!(m.forward(&x)?.dims(), &[2, 1, 16, 8]);
        let bad = Tensor::zeros((1, 2, 10, 8), candle_core::DType::F32, &Device::Cpu)?;
        assert!(
            m.forward(&bad)
                .unwrap_err()
                .to_string()
                .contains("multiples of 4")
        );
        Ok(())
    }

    #[test]
    fn refuses_missing_extra_and_misshaped_tensors() -> Result<()> {
        let cfg = UnetConfig::new(1, vec![4, 8]).unwrap();
        let mut t = init_tensors(&cfg, 0, &Device::Cpu)?;
        let w = t.remove("decoder.0.up.bias").unwrap();
        assert_eq!(
            Unet2d::from_tensors(&cfg, &t).unwrap_err(),
            TensorSetError::Missing("decoder.0.up.bias".into())
        );
        t.insert("decoder.0.up.bias".into(), w.clone());
        t.insert("decoder.0.extra".into(), w.clone());
        assert_eq!(
            Unet2d::from_tensors(&cfg, &t).unwrap_err(),
            TensorSetError::Extra("decoder.0.extra".into())
        );
        t.remove("decoder.0.extra");
        t.insert(
            "head.bias".into(),
            Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu)?,
        );
        let err = Unet2d::from_tensors(&cfg, &t).unwrap_err().to_string();
        assert!(err.contains("head.bias") && err.contains("[2]"), "{err}");
        Ok(())
    }
}
