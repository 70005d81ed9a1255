//! Module selectors: `encoder`, `bottleneck`, `decoder`, `head`, `all`, or a glob over layer
//! paths (`decoder.2`, `encoder.*`, `*.conv1`).
//!
//! A selector matches a layer path when it matches the path itself or one of its ancestors, so
//! `decoder` selects `decoder.1.conv2` and `encoder.*` selects everything under each encoder
//! block. Resolution against a model happens at plan time, and a selector that matches nothing
//! usable is an error that repeats it (PEFT's `NoMatchingPeftModuleError`).

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SelectorError {
    #[error("invalid module selector `{selector}`: {reason}")]
    Invalid { selector: String, reason: String },
}

/// A validated module selector.
#[derive(Debug, Clone)]
pub struct Selector {
    text: String,
    /// Shared: cells clone selectors often (a 100k-cell grid), and a matcher holds a regex.
    matcher: std::sync::Arc<globset::GlobMatcher>,
}

impl PartialEq for Selector {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl Eq for Selector {}

impl std::hash::Hash for Selector {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state)
    }
}

impl Selector {
    /// The preset names, each a top-level module (plus `all`).
    pub const PRESETS: [&'static str; 5] = ["encoder", "bottleneck", "decoder", "head", "all"];

    pub fn new(text: &str) -> Result<Self, SelectorError> {
        let t = text.trim();
        let invalid = |reason: &str| SelectorError::Invalid {
            selector: text.to_string(),
            reason: reason.to_string(),
        };
        if t.is_empty() {
            return Err(invalid(
                "expected a module name or glob, got an empty string",
            ));
        }
        if !t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._*?[]{},-".contains(c))
        {
            return Err(invalid(
                "only letters, digits, `.`, `_` and glob characters are allowed",
            ));
        }
        let pattern = if t == "all" { "*" } else { t };
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(false)
            .build()
            .map_err(|e| invalid(&e.kind().to_string()))?;
        Ok(Selector {
            text: t.to_string(),
            matcher: std::sync::Arc::new(glob.compile_matcher()),
        })
    }

    pub fn all() -> Self {
        Selector::new("all").expect("`all` is a valid selector")
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the layer at `path` (e.g. `decoder.1.conv2`) is under this selector.
    pub fn selects(&self, path: &str) -> bool {
        if self.text == "all" {
            return true;
        }
        let mut end = path.len();
        loop {
            if self.matcher.is_match(&path[..end]) {
                return true;
            }
            match path[..end].rfind('.') {
                Some(i) => end = i,
                None => return false,
            }
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::new(s)
    }
}

impl Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Selector::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_select_their_subtree() {
        let dec = Selector::new("decoder").unwrap();
        assert!(dec.selects("decoder.1.conv2"));
        assert!(dec.selects("decoder.0.up"));
        assert!(!dec.selects("encoder.0.conv1"));
        assert!(!dec.selects("decoderx.0"));
        assert!(Selector::all().selects("head"));
    }

    #[test]
    fn globs_match_paths_and_ancestors() {
        let s = Selector::new("encoder.*").unwrap();
        assert!(s.selects("encoder.0.conv1") && s.selects("encoder.2.norm2"));
        assert!(!s.selects("bottleneck.conv1"));
        let s = Selector::new("*.conv1").unwrap();
        assert!(s.selects("decoder.2.conv1") && !s.selects("decoder.2.conv2"));
        let s = Selector::new("decoder.2").unwrap();
        assert!(s.selects("decoder.2.conv1") && !s.selects("decoder.1.conv1"));
    }

    #[test]
    fn rejects_bad_selectors() {
        assert!(Selector::new("").is_err());
        assert!(Selector::new("enc/oder").is_err());
        assert!(Selector::new("decoder.[").is_err());
    }
}
