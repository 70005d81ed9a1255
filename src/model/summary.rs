//! Per-layer parameter accounting, for `ranksweep model summary` and for results.

use serde::Serialize;

use super::adapt::AdaptationSpec;
use super::config::UnetConfig;
use super::unet::{Role, Unet2d};

/// One layer's row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LayerRow {
    /// Layer path, e.g. `decoder.1.conv2`.
    pub layer: String,
    /// Shape of the layer's weight (its first tensor).
    pub shape: Vec<usize>,
    pub base_params: usize,
    pub adapter_params: usize,
    pub trainable_params: usize,
    /// Names (relative to the layer) of the tensors that train.
    pub trainable: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelSummary {
    pub config: UnetConfig,
    pub adaptation: AdaptationSpec,
    pub layers: Vec<LayerRow>,
    pub base_params: usize,
    pub adapter_params: usize,
    /// Base + adapter parameters.
    pub total_params: usize,
    pub trainable_params: usize,
    /// Trainable parameters as a percentage of the base model.
    pub trainable_percent: f64,
    /// The adapter's per-layer count formula for this model's dims (adapter kinds only), with
    /// O, I the conv's channels, k = 3, r the rank.
    pub formula: Option<String>,
}

/// The per-layer trainable-parameter formula of an adapter kind in `dims` dimensions.
pub fn formula(kind: super::AdaptationKind, dims: usize) -> Option<String> {
    use super::Factorization as F;
    let lora = match (kind.factorization()?, dims) {
        (F::LoraC, 3) => "r·k²·(k·I + O)".to_string(),
        (F::LoraC, _) => "r·k²·(I + O)".to_string(),
        (F::ConvLora, 3) => "r·(I·k³ + O)".to_string(),
        (F::ConvLora, _) => "r·(I·k² + O)".to_string(),
        (F::Cp, 3) => "r·(O + I + 3k)".to_string(),
        (F::Cp, _) => "r·(O + I + 2k)".to_string(),
    };
    Some(if kind.is_dora() {
        format!("{lora} + O")
    } else {
        lora
    })
}

impl ModelSummary {
    pub fn of(model: &Unet2d, adaptation: &AdaptationSpec) -> Self {
        let mut layers: Vec<LayerRow> = Vec::new();
        for p in model.params() {
            let n = p.param.elem_count();
            if layers.last().map(|l| l.layer != p.layer).unwrap_or(true) {
                layers.push(LayerRow {
                    layer: p.layer.clone(),
                    shape: p.param.tensor().dims().to_vec(),
                    base_params: 0,
                    adapter_params: 0,
                    trainable_params: 0,
                    trainable: Vec::new(),
                });
            }
            let row = layers.last_mut().expect("pushed above");
            match p.role {
                Role::Base => row.base_params += n,
                Role::Adapter => row.adapter_params += n,
            }
            if p.param.is_trainable() {
                row.trainable_params += n;
                row.trainable.push(p.name[p.layer.len() + 1..].to_string());
            }
        }
        let base_params: usize = layers.iter().map(|l| l.base_params).sum();
        let adapter_params: usize = layers.iter().map(|l| l.adapter_params).sum();
        let trainable_params: usize = layers.iter().map(|l| l.trainable_params).sum();
        ModelSummary {
            config: model.config().clone(),
            adaptation: adaptation.clone(),
            layers,
            base_params,
            adapter_params,
            total_params: base_params + adapter_params,
            trainable_params,
            trainable_percent: 100.0 * trainable_params as f64 / base_params.max(1) as f64,
            formula: formula(adaptation.kind, model.config().dims),
        }
    }
}
