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

/// The Unet2D of the model contract: `in_channels` → `features` (the last is the bottleneck
/// width, so `features.len()` levels) → one logit channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnetConfig {
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    #[serde(default = "default_features")]
    pub features: Vec<usize>,
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
        }
    }
}

impl UnetConfig {
    pub fn new(in_channels: usize, features: Vec<usize>) -> Result<Self, ConfigError> {
        let cfg = UnetConfig {
            in_channels,
            features,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.in_channels == 0 {
            return Err(ConfigError::NoInput);
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
        let mut n = 0usize;
        let mut prev = self.in_channels;
        for (l, &f) in self.features.iter().enumerate() {
            n += 9 * f * (prev + f) + 4 * f;
            if let Some(&next) = self.features.get(l + 1) {
                n += 9 * f * (2 * f + f) + 4 * next * f + 4 * f;
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
