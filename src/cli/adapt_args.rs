//! Model and adaptation flags shared by `model summary`, `bench train-step` and others.

use clap::Args;

use crate::model::{AdaptationKind, AdaptationSpec, Selector, UnetConfig, config::parse_features};

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Channel widths per level, the last being the bottleneck.
    #[arg(long, default_value = "16,32,64,128")]
    pub features: String,
    /// Input channels (HU windows stacked as channels).
    #[arg(long, default_value_t = 1, value_parser = super::bounds::in_channels)]
    pub in_channels: usize,
    /// Spatial dimensions: 2 (the contract's Unet2D) or 3 (3×3×3 convs, 5D tensors).
    #[arg(long, default_value_t = 2)]
    pub dims: usize,
}

impl ModelArgs {
    pub fn config(&self) -> anyhow::Result<UnetConfig> {
        let features = parse_features(&self.features).map_err(anyhow::Error::msg)?;
        Ok(UnetConfig::with_dims(
            self.in_channels,
            features,
            self.dims,
        )?)
    }
}

#[derive(Args, Debug, Clone)]
pub struct AdaptArgs {
    /// Adaptation kind: none, full, lora-c, conv-lora, cp-lora, dora-c, conv-dora, cp-dora.
    #[arg(long)]
    pub kind: Option<AdaptationKind>,
    /// Module selector: encoder, bottleneck, decoder, head, all, or a glob (`decoder.2`, `*.conv1`).
    #[arg(long)]
    pub module: Option<Selector>,
    /// Adapter rank (adapter kinds only).
    #[arg(long, value_parser = super::bounds::rank)]
    pub rank: Option<usize>,
    /// Adapter alpha; scale = alpha / rank (default alpha = rank).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Also train the GroupNorm affine tensors under the selector (adapter kinds only).
    #[arg(long)]
    pub train_norms: bool,
}

impl AdaptArgs {
    /// The adaptation these flags describe, validated; `--kind` defaults to `none`.
    pub fn spec(&self) -> anyhow::Result<AdaptationSpec> {
        let spec = AdaptationSpec {
            kind: self.kind.unwrap_or(AdaptationKind::None),
            module: self.module.clone(),
            rank: self.rank,
            alpha: self.alpha,
            train_norms: self.train_norms,
        };
        spec.validate()?;
        Ok(spec)
    }

    pub fn is_given(&self) -> bool {
        self.kind.is_some()
            || self.module.is_some()
            || self.rank.is_some()
            || self.alpha.is_some()
            || self.train_norms
    }
}
