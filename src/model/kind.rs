//! `AdaptationKind`: the eight ways a pretrained Unet is adapted, as one enum so that invalid
//! combinations (a rank on `full`) cannot be written.

use serde::{Deserialize, Serialize};

/// The low-rank factorisation of ΔW (the "LoRA kind"); DoRA is a flag on top of any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Factorization {
    /// LoRA-C: ΔW = (B·A) reshaped, A (r·k, I·k), B (O·k, r·k).
    LoraC,
    /// convLoRA: ΔW[o] = Σ_j B[o,j]·A[j], A (r, I, k, k), B (O, r, 1, 1).
    ConvLora,
    /// CP-LoRA: a rank-r CP decomposition of the 4-way ΔW.
    Cp,
}

/// How a job adapts the pretrained model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdaptationKind {
    /// The pretrained model evaluated as is.
    None,
    /// Full fine-tuning of every tensor under the selector.
    Full,
    LoraC,
    ConvLora,
    CpLora,
    DoraC,
    ConvDora,
    CpDora,
}

impl AdaptationKind {
    pub const ALL: [AdaptationKind; 8] = [
        AdaptationKind::None,
        AdaptationKind::Full,
        AdaptationKind::LoraC,
        AdaptationKind::ConvLora,
        AdaptationKind::CpLora,
        AdaptationKind::DoraC,
        AdaptationKind::ConvDora,
        AdaptationKind::CpDora,
    ];

    /// The six adapter kinds.
    pub const ADAPTERS: [AdaptationKind; 6] = [
        AdaptationKind::LoraC,
        AdaptationKind::ConvLora,
        AdaptationKind::CpLora,
        AdaptationKind::DoraC,
        AdaptationKind::ConvDora,
        AdaptationKind::CpDora,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AdaptationKind::None => "none",
            AdaptationKind::Full => "full",
            AdaptationKind::LoraC => "lora-c",
            AdaptationKind::ConvLora => "conv-lora",
            AdaptationKind::CpLora => "cp-lora",
            AdaptationKind::DoraC => "dora-c",
            AdaptationKind::ConvDora => "conv-dora",
            AdaptationKind::CpDora => "cp-dora",
        }
    }

    /// The factorisation for adapter kinds, `None` for `none` and `full`.
    pub fn factorization(self) -> Option<Factorization> {
        match self {
            AdaptationKind::None | AdaptationKind::Full => None,
            AdaptationKind::LoraC | AdaptationKind::DoraC => Some(Factorization::LoraC),
            AdaptationKind::ConvLora | AdaptationKind::ConvDora => Some(Factorization::ConvLora),
            AdaptationKind::CpLora | AdaptationKind::CpDora => Some(Factorization::Cp),
        }
    }

    /// Whether the kind is one of the six low-rank adapters (takes a rank).
    pub fn is_adapter(self) -> bool {
        self.factorization().is_some()
    }

    /// Whether the adapter carries a DoRA magnitude.
    pub fn is_dora(self) -> bool {
        matches!(
            self,
            AdaptationKind::DoraC | AdaptationKind::ConvDora | AdaptationKind::CpDora
        )
    }

    /// Whether the kind takes a module selector (`none` does not).
    pub fn takes_module(self) -> bool {
        self != AdaptationKind::None
    }
}

impl std::fmt::Display for AdaptationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for AdaptationKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AdaptationKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = AdaptationKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown kind `{s}`: expected one of {}", names.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_serde() {
        for k in AdaptationKind::ALL {
            assert_eq!(k.name().parse::<AdaptationKind>().unwrap(), k);
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
        }
        let err = "lora".parse::<AdaptationKind>().unwrap_err();
        assert!(err.contains("conv-lora"), "{err}");
    }

    #[test]
    fn families_and_flags() {
        assert_eq!(AdaptationKind::ADAPTERS.len(), 6);
        assert!(AdaptationKind::ADAPTERS.iter().all(|k| k.is_adapter()));
        assert!(!AdaptationKind::Full.is_adapter() && !AdaptationKind::None.is_adapter());
        assert_eq!(
            AdaptationKind::CpDora.factorization(),
            Some(Factorization::Cp)
        );
        assert!(AdaptationKind::ConvDora.is_dora() && !AdaptationKind::ConvLora.is_dora());
    }
}
