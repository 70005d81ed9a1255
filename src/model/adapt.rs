//! Applying an adaptation to a pretrained model: which tensors train, which adapters attach.

use serde::{Deserialize, Serialize};

use super::adapter::Adapter;
use super::kind::AdaptationKind;
use super::selector::Selector;
use super::unet::{Role, Unet2d};

/// What to adapt and how: the model-side half of a job's adaptation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptationSpec {
    pub kind: AdaptationKind,
    /// Module selector; absent for `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<Selector>,
    /// Adapter rank; only for adapter kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    /// Adapter alpha (scale = alpha / rank); default = rank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Also train the GroupNorm affine tensors under the selector (adapters only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub train_norms: bool,
}

/// Why an adaptation cannot be applied; each message names the field.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AdaptError {
    #[error(
        "`rank`: `{kind}` takes no rank (only the adapter kinds lora-c, conv-lora, cp-lora, dora-c, conv-dora, cp-dora do)"
    )]
    RankNotAllowed { kind: AdaptationKind },
    #[error("`alpha`: `{kind}` takes no alpha")]
    AlphaNotAllowed { kind: AdaptationKind },
    #[error("`rank`: `{kind}` needs a rank (a positive integer)")]
    RankMissing { kind: AdaptationKind },
    #[error("`rank`: expected a positive integer, got 0")]
    RankZero,
    #[error("`rank`: {}", crate::limits::too_large("rank", crate::limits::MAX_RANK, .0))]
    RankTooLarge(usize),
    #[error("`alpha`: expected a positive finite number, got {0}")]
    BadAlpha(f64),
    #[error("`module`: `none` takes no module")]
    ModuleNotAllowed,
    #[error(
        "`module`: `{kind}` needs a module selector (encoder, bottleneck, decoder, head, all or a glob)"
    )]
    ModuleMissing { kind: AdaptationKind },
    #[error("`train_norms` applies to adapter kinds only, not `{kind}`")]
    TrainNormsNotAllowed { kind: AdaptationKind },
    #[error(
        "`module`: selector `{selector}` matches no 3×3 conv, so `{kind}` has nothing to adapt (3×3 convs are `<block>.conv1`/`conv2` under encoder, bottleneck and decoder)"
    )]
    NoConv {
        selector: String,
        kind: AdaptationKind,
    },
    #[error("`module`: selector `{selector}` matches no tensor of the model")]
    NoTensor { selector: String },
    #[error("the model is already adapted")]
    AlreadyAdapted,
    #[error("{0}")]
    Tensor(String),
}

impl AdaptationSpec {
    pub fn none() -> Self {
        AdaptationSpec {
            kind: AdaptationKind::None,
            module: None,
            rank: None,
            alpha: None,
            train_norms: false,
        }
    }

    pub fn full(module: Selector) -> Self {
        AdaptationSpec {
            kind: AdaptationKind::Full,
            module: Some(module),
            rank: None,
            alpha: None,
            train_norms: false,
        }
    }

    pub fn adapter(kind: AdaptationKind, module: Selector, rank: usize) -> Self {
        AdaptationSpec {
            kind,
            module: Some(module),
            rank: Some(rank),
            alpha: None,
            train_norms: false,
        }
    }

    /// Field-level checks that need no model.
    pub fn validate(&self) -> Result<(), AdaptError> {
        let kind = self.kind;
        if kind.is_adapter() {
            match self.rank {
                None => return Err(AdaptError::RankMissing { kind }),
                Some(0) => return Err(AdaptError::RankZero),
                Some(r) if r > crate::limits::MAX_RANK => {
                    return Err(AdaptError::RankTooLarge(r));
                }
                Some(_) => {}
            }
            if let Some(a) = self.alpha
                && !(a.is_finite() && a > 0.0)
            {
                return Err(AdaptError::BadAlpha(a));
            }
        } else {
            if self.rank.is_some() {
                return Err(AdaptError::RankNotAllowed { kind });
            }
            if self.alpha.is_some() {
                return Err(AdaptError::AlphaNotAllowed { kind });
            }
            if self.train_norms {
                return Err(AdaptError::TrainNormsNotAllowed { kind });
            }
        }
        match (kind.takes_module(), &self.module) {
            (false, Some(_)) => Err(AdaptError::ModuleNotAllowed),
            (true, None) => Err(AdaptError::ModuleMissing { kind }),
            _ => Ok(()),
        }
    }

    /// alpha, defaulting to the rank (scale 1).
    pub fn alpha_or_default(&self) -> f64 {
        self.alpha.unwrap_or(self.rank.unwrap_or(1) as f64)
    }

    /// Checks the spec against a model's layers without changing it (plan time).
    pub fn check_against(&self, model: &Unet2d) -> Result<(), AdaptError> {
        self.validate()?;
        let Some(sel) = &self.module else {
            return Ok(());
        };
        if self.kind.is_adapter() {
            if !model.convs().iter().any(|c| sel.selects(c.path())) {
                return Err(AdaptError::NoConv {
                    selector: sel.to_string(),
                    kind: self.kind,
                });
            }
        } else if !model.params().iter().any(|p| sel.selects(&p.layer)) {
            return Err(AdaptError::NoTensor {
                selector: sel.to_string(),
            });
        }
        Ok(())
    }

    /// Adapts `model` in place: `full` turns the selected base tensors trainable, adapter kinds
    /// attach a freshly initialised adapter (seeded by `seed` and the layer name) to each
    /// selected 3×3 conv. Everything else stays frozen.
    pub fn apply(&self, model: &mut Unet2d, seed: u64) -> Result<(), AdaptError> {
        self.check_against(model)?;
        if model
            .params()
            .iter()
            .any(|p| p.role == Role::Adapter || p.param.is_trainable())
        {
            return Err(AdaptError::AlreadyAdapted);
        }
        let terr = |e: candle_core::Error| AdaptError::Tensor(e.to_string());
        let Some(sel) = self.module.clone() else {
            return Ok(());
        };
        if self.kind == AdaptationKind::Full {
            for (name, p) in model.params_mut() {
                if sel.selects(&super::unet::layer_of(&name)) {
                    p.make_trainable().map_err(terr)?;
                }
            }
            return Ok(());
        }
        let rank = self.rank.expect("validated: adapters have a rank");
        let alpha = self.alpha_or_default();
        for conv in model.convs_mut() {
            if sel.selects(conv.path()) {
                let w0 = conv.effective_weight().map_err(terr)?;
                let adapter =
                    Adapter::init(self.kind, rank, alpha, &w0, conv.path(), seed).map_err(terr)?;
                Unet2d::set_adapter(conv, adapter);
            }
        }
        if self.train_norms {
            for (name, p) in model.params_mut() {
                let layer = super::unet::layer_of(&name);
                if layer.contains(".norm") && sel.selects(&layer) {
                    p.make_trainable().map_err(terr)?;
                }
            }
        }
        Ok(())
    }

    /// A short label such as `conv-lora/decoder/r16`.
    pub fn label(&self) -> String {
        let mut s = self.kind.to_string();
        if let Some(m) = &self.module {
            s.push('/');
            s.push_str(m.as_str());
        }
        if let Some(r) = self.rank {
            s.push_str(&format!("/r{r}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UnetConfig;
    use candle_core::Device;

    fn sel(s: &str) -> Option<Selector> {
        Some(Selector::new(s).unwrap())
    }

    #[test]
    fn conditional_fields_are_checked() {
        let mut s = AdaptationSpec::none();
        assert!(s.validate().is_ok());
        s.rank = Some(4);
        assert_eq!(
            s.validate().unwrap_err(),
            AdaptError::RankNotAllowed {
                kind: AdaptationKind::None
            }
        );
        let mut f = AdaptationSpec::full(Selector::new("decoder").unwrap());
        f.rank = Some(4);
        assert!(
            f.validate()
                .unwrap_err()
                .to_string()
                .contains("`rank`: `full` takes no rank")
        );
        let mut a = AdaptationSpec {
            kind: AdaptationKind::CpLora,
            module: sel("decoder"),
            rank: None,
            alpha: None,
            train_norms: false,
        };
        assert_eq!(
            a.validate().unwrap_err(),
            AdaptError::RankMissing {
                kind: AdaptationKind::CpLora
            }
        );
        a.rank = Some(0);
        assert_eq!(a.validate().unwrap_err(), AdaptError::RankZero);
        a.rank = Some(1_000_000_000);
        let e = a.validate().unwrap_err();
        assert_eq!(e, AdaptError::RankTooLarge(1_000_000_000));
        assert!(e.to_string().contains("at most 1024"), "{e}");
        a.rank = Some(2);
        a.module = None;
        assert!(matches!(
            a.validate().unwrap_err(),
            AdaptError::ModuleMissing { .. }
        ));
        let mut n = AdaptationSpec::none();
        n.module = sel("decoder");
        assert_eq!(n.validate().unwrap_err(), AdaptError::ModuleNotAllowed);
    }

    #[test]
    fn adapter_on_head_has_no_conv() {
        let m = Unet2d::init(&UnetConfig::new(1, vec![4, 8]).unwrap(), 0, &Device::Cpu).unwrap();
        let s = AdaptationSpec::adapter(AdaptationKind::LoraC, Selector::new("head").unwrap(), 4);
        let err = s.check_against(&m).unwrap_err();
        assert!(matches!(err, AdaptError::NoConv { .. }), "{err}");
        assert!(
            AdaptationSpec::full(Selector::new("head").unwrap())
                .check_against(&m)
                .is_ok()
        );
        assert!(
            AdaptationSpec::full(Selector::new("nothing.*").unwrap())
                .check_against(&m)
                .is_err()
        );
    }

    #[test]
    fn serde_round_trip_skips_absent_fields() {
        let s =
            AdaptationSpec::adapter(AdaptationKind::ConvDora, Selector::new("all").unwrap(), 16);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"kind":"conv-dora","module":"all","rank":16}"#);
        assert_eq!(serde_json::from_str::<AdaptationSpec>(&json).unwrap(), s);
    }
}
