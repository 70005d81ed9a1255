//! `UnetConfig`: the architecture's free parameters, validated once.

use serde::{Deserialize, Serialize};

/// Errors in a model configuration.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("`features`: expected at least 2 widths (encoder levels + bottleneck), got {0}")]
    TooFewLevels(usize),
    #[error("`features`: every width must be positive, got {0:?}")]
    ZeroWidth(Vec<usize>),
    #[error("`in_channels`: expected a positive integer, got 0")]
    NoInput,
    /// A size above its bound in [`crate::limits`].
    #[error("`{field}`: {}", crate::limits::too_large(field, limit, value))]
    TooLarge {
        field: &'static str,
        limit: usize,
        value: usize,
    },
    #[error("`dims`: expected 2 or 3, got {0}")]
    Dims(usize),
    #[error(
        "input {size} cannot be pooled {pools} times: every side must be a positive multiple of {multiple} (pad the input)"
    )]
    NotPoolable3 {
        size: String,
        pools: usize,
        multiple: usize,
    },
    #[error(
        "input {h}×{w} cannot be pooled {pools} times: height and width must be multiples of {multiple} (pad the input)"
    )]
    NotPoolable {
        h: usize,
        w: usize,
        pools: usize,
        multiple: usize,
    },
}

/// The Unet of the model contract: `in_channels` → `features` (the last is the bottleneck
/// width, so `features.len()` levels) → one logit channel; 2D (`dims` 2, the default) or 3D
/// (`dims` 3: 3×3×3 convs, 2×2×2 pooling and up-convs, the same tensor names with 5D shapes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnetConfig {
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    #[serde(default = "default_features")]
    pub features: Vec<usize>,
    /// Spatial dimensions, 2 or 3. Left out of the serialized form when 2, so 2D configs (and
    /// the job keys and checkpoints made from them) read as before.
    #[serde(default = "default_dims", skip_serializing_if = "is_2d")]
    pub dims: usize,
}

fn default_dims() -> usize {
    2
}

fn is_2d(d: &usize) -> bool {
    *d == 2
}

fn default_in_channels() -> usize {
    1
}

fn default_features() -> Vec<usize> {
    vec![16, 32, 64, 128]
}

impl Default for UnetConfig {
    fn default() -> Self {
        UnetConfig {
            in_channels: default_in_channels(),
            features: default_features(),
            dims: 2,
        }
    }
}

impl UnetConfig {
    pub fn new(in_channels: usize, features: Vec<usize>) -> Result<Self, ConfigError> {
        Self::with_dims(in_channels, features, 2)
    }

    /// A 2D (`dims` 2) or 3D (`dims` 3) config.
    pub fn with_dims(
        in_channels: usize,
        features: Vec<usize>,
        dims: usize,
    ) -> Result<Self, ConfigError> {
        let cfg = UnetConfig {
            in_channels,
            features,
            dims,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn is_3d(&self) -> bool {
        self.dims == 3
    }

    /// A short label of the architecture for reports: `2d 16,32,64,128` / `3d 4,8,16`.
    pub fn label(&self) -> String {
        let f: Vec<String> = self.features.iter().map(|v| v.to_string()).collect();
        format!("{}d {}", self.dims, f.join(","))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.in_channels == 0 {
            return Err(ConfigError::NoInput);
        }
        if !matches!(self.dims, 2 | 3) {
            return Err(ConfigError::Dims(self.dims));
        }
        if self.features.len() < 2 {
            return Err(ConfigError::TooFewLevels(self.features.len()));
        }
        if self.features.contains(&0) {
            return Err(ConfigError::ZeroWidth(self.features.clone()));
        }
        use crate::limits::{MAX_IN_CHANNELS, MAX_LEVELS, MAX_WIDTH};
        let too_large = |field, limit, value| {
            Err(ConfigError::TooLarge {
                field,
                limit,
                value,
            })
        };
        if self.in_channels > MAX_IN_CHANNELS {
            return too_large("in_channels", MAX_IN_CHANNELS, self.in_channels);
        }
        if self.features.len() > MAX_LEVELS {
            return too_large("features (levels)", MAX_LEVELS, self.features.len());
        }
        if let Some(&w) = self.features.iter().find(|&&w| w > MAX_WIDTH) {
            return too_large("features", MAX_WIDTH, w);
        }
        let params = self.estimated_params();
        if params > crate::limits::MAX_PARAMS {
            return too_large("features (parameters)", crate::limits::MAX_PARAMS, params);
        }
        Ok(())
    }

    /// An upper estimate of the parameter count (3×3 convs of both halves plus the 2×2 up
    /// convolutions), computed with widths already bounded, so no overflow.
    pub fn estimated_params(&self) -> usize {
        // Taps of a 3×3(×3) kernel and of a 2×2(×2) up-conv.
        let (k, up) = if self.is_3d() { (27, 8) } else { (9, 4) };
        let mut n = 0usize;
        let mut prev = self.in_channels;
        for (l, &f) in self.features.iter().enumerate() {
            n += k * f * (prev + f) + 4 * f;
            if let Some(&next) = self.features.get(l + 1) {
                n += k * f * (2 * f + f) + up * next * f + 4 * f;
            }
            prev = f;
        }
        n
    }

    /// Number of 2×2 poolings (= encoder levels).
    pub fn pools(&self) -> usize {
        self.features.len() - 1
    }

    /// Inputs must be a multiple of this in height and width: 2^(levels − 1).
    pub fn multiple(&self) -> usize {
        1 << self.pools()
    }

    /// Checks that an input of `h`×`w` pools cleanly.
    pub fn check_input(&self, h: usize, w: usize) -> Result<(), ConfigError> {
        let m = self.multiple();
        if h == 0 || w == 0 || !h.is_multiple_of(m) || !w.is_multiple_of(m) {
            return Err(ConfigError::NotPoolable {
                h,
                w,
                pools: self.pools(),
                multiple: m,
            });
        }
        Ok(())
    }

    /// Checks that a 3D input of `d`×`h`×`w` pools cleanly.
    pub fn check_input3(&self, d: usize, h: usize, w: usize) -> Result<(), ConfigError> {
        let m = self.multiple();
        if [d, h, w].iter().any(|&v| v == 0 || !v.is_multiple_of(m)) {
            return Err(ConfigError::NotPoolable3 {
                size: format!("{d}×{h}×{w}"),
                pools: self.pools(),
                multiple: m,
            });
        }
        Ok(())
    }

    /// The shape of a k×k (k×k×k in 3D) kernel's spatial part.
    pub fn kernel(&self, k: usize) -> Vec<usize> {
        vec![k; self.dims]
    }

    /// GroupNorm groups for `c` channels: min(8, c), reduced until it divides `c`.
    pub fn groups(c: usize) -> usize {
        let mut g = c.min(8);
        while !c.is_multiple_of(g) {
            g -= 1;
        }
        g
    }
}

/// Parses `16,32,64,128`.
pub fn parse_features(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(|t| {
            t.trim().parse::<usize>().map_err(|_| {
                format!("`features`: expected comma-separated positive integers like 16,32,64,128, got `{s}`")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_features_and_inputs() {
        assert!(UnetConfig::default().validate().is_ok());
        assert_eq!(
            UnetConfig::new(1, vec![16]).unwrap_err(),
            ConfigError::TooFewLevels(1)
        );
        assert!(UnetConfig::new(1, vec![16, 0]).is_err());
        assert!(UnetConfig::new(0, vec![4, 8]).is_err());
        let e = UnetConfig::new(1_000_000_000, vec![4, 8])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`in_channels`") && e.contains("at most 64"),
            "{e}"
        );
        let e = UnetConfig::new(1, vec![4, 1 << 30])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`features`") && e.contains("at most 4096"),
            "{e}"
        );
        assert!(UnetConfig::new(1, vec![4; 11]).is_err());
        let e = UnetConfig::new(1, vec![4096; 10]).unwrap_err().to_string();
        assert!(e.contains("parameters"), "{e}");
        // The paper's model is far below the bound.
        assert!(UnetConfig::new(3, vec![32, 64, 128, 256, 512]).is_ok());
        let cfg = UnetConfig::default();
        assert_eq!(cfg.multiple(), 8);
        assert!(cfg.check_input(128, 64).is_ok());
        let err = cfg.check_input(100, 128).unwrap_err().to_string();
        assert!(err.contains("multiples of 8"), "{err}");
    }

    #[test]
    fn dims_default_to_2_and_only_3d_is_serialized() {
        let c2 = UnetConfig::default();
        assert_eq!(
            serde_json::to_string(&c2).unwrap(),
            r#"{"in_channels":1,"features":[16,32,64,128]}"#
        );
        let c3 = UnetConfig::with_dims(1, vec![4, 8, 16], 3).unwrap();
        let js = serde_json::to_string(&c3).unwrap();
        assert_eq!(js, r#"{"in_channels":1,"features":[4,8,16],"dims":3}"#);
        assert_eq!(serde_json::from_str::<UnetConfig>(&js).unwrap(), c3);
        assert_eq!(
            UnetConfig::with_dims(1, vec![4, 8], 4).unwrap_err(),
            ConfigError::Dims(4)
        );
        assert!(c3.check_input3(16, 8, 4).is_ok());
        let err = c3.check_input3(16, 8, 6).unwrap_err().to_string();
        assert!(
            err.contains("16×8×6") && err.contains("multiple of 4"),
            "{err}"
        );
        assert_eq!(c3.label(), "3d 4,8,16");
    }

    #[test]
    fn group_count_follows_the_contract() {
        assert_eq!(UnetConfig::groups(16), 8);
        assert_eq!(UnetConfig::groups(4), 4);
        assert_eq!(UnetConfig::groups(1), 1);
        assert_eq!(UnetConfig::groups(12), 6);
    }

    #[test]
    fn parses_feature_lists() {
        assert_eq!(parse_features("4, 8,16").unwrap(), vec![4, 8, 16]);
        assert!(parse_features("4,x").is_err());
    }
}
