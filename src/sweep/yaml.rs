//! YAML helpers that keep `file:line:column` on every spec error.
//!
//! serde_yaml 0.9 attaches the position and the path (`grid[2].rank`) of the node being
//! deserialized to any error raised there, so value checks live in `Deserialize` impls
//! ([`OneOrMany`], the newtypes in `spec.rs`). Cross-field errors are found after parsing; for
//! those, [`locate`] re-reads the text with a probe that fails on purpose at a given path, and
//! serde_yaml reports where that node is. The probe runs only on the error path, so a valid spec
//! is parsed once.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{
    self, DeserializeSeed, IgnoredAny, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde::{Deserialize, Deserializer};

/// A position in the spec text, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// One step of a path into the YAML tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(&'static str),
    Index(usize),
}

/// A path such as `grid[2].rank` (what serde_yaml prints for the same node).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct YamlPath(pub Vec<Seg>);

impl YamlPath {
    pub fn root() -> Self {
        YamlPath(Vec::new())
    }

    pub fn key(&self, k: &'static str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k));
        YamlPath(v)
    }

    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        YamlPath(v)
    }
}

impl fmt::Display for YamlPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A parse error split into its parts: position, field path (may be empty) and message.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub pos: Option<Pos>,
    pub field: String,
    pub message: String,
}

/// Splits a serde_yaml error into position, path and message (its `Display` glues them as
/// `path: message at line L column C`).
pub fn split_error(err: &serde_yaml::Error) -> Located {
    let pos = err.location().map(|l| Pos {
        line: l.line(),
        column: l.column(),
    });
    let mut text = err.to_string();
    if let Some(p) = pos {
        let suffix = format!(" at line {} column {}", p.line, p.column);
        if let Some(i) = text.find(&suffix) {
            text.replace_range(i..i + suffix.len(), "");
        }
    }
    // The path prefix has no spaces (`grid[2].rank: ...`); messages always do.
    let (field, message) = match text.split_once(": ") {
        Some((head, rest)) if !head.is_empty() && !head.contains(char::is_whitespace) => {
            (head.to_string(), rest.to_string())
        }
        _ => (String::new(), text),
    };
    Located {
        pos,
        field,
        message,
    }
}

const PROBE: &str = "ranksweep-probe";

/// Where the node at `path` starts in `text`, or `None` when the path does not exist.
pub fn locate(text: &str, path: &YamlPath) -> Option<Pos> {
    let de = serde_yaml::Deserializer::from_str(text);
    match Probe(&path.0).deserialize(de) {
        Ok(()) => None,
        Err(e) if e.to_string().contains(PROBE) => e.location().map(|l| Pos {
            line: l.line(),
            column: l.column(),
        }),
        Err(_) => None,
    }
}

/// Walks to the node at the path and fails there, so that serde_yaml records its position.
struct Probe<'a>(&'a [Seg]);

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Probe<'_> {
    fn leaf<E: de::Error>(&self) -> Result<(), E> {
        if self.0.is_empty() {
            Err(E::custom(PROBE))
        } else {
            Ok(())
        }
    }
}

macro_rules! probe_scalar {
    ($($name:ident: $t:ty),*) => {$(
        fn $name<E: de::Error>(self, _: $t) -> Result<(), E> {
            self.leaf()
        }
    )*};
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }

    probe_scalar!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.leaf()
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.leaf()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.leaf()?;
        let mut i = 0;
        loop {
            let hit = self.0[0] == Seg::Index(i);
            let more = if hit {
                seq.next_element_seed(Probe(&self.0[1..]))?.is_some()
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.leaf()?;
        while let Some(key) = map.next_key::<serde_yaml::Value>()? {
            let hit = matches!((&self.0[0], key.as_str()), (Seg::Key(k), Some(s)) if *k == s);
            if hit {
                map.next_value_seed(Probe(&self.0[1..]))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// A list where a single value is also accepted (`rank: 4` = `rank: [4]`). Remembers which form
/// was written so that errors point at `rank` or `rank[1]` as the text does.
#[derive(Debug, Clone, PartialEq)]
pub struct OneOrMany<T> {
    pub items: Vec<T>,
    pub was_list: bool,
}

impl<T> OneOrMany<T> {
    /// The path of item `i` given the path of the key.
    pub fn item_path(&self, key: &YamlPath, i: usize) -> YamlPath {
        if self.was_list {
            key.index(i)
        } else {
            key.clone()
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OneOrManyVisitor(PhantomData))
    }
}

struct OneOrManyVisitor<T>(PhantomData<T>);

impl<T> OneOrManyVisitor<T> {
    fn one(item: T) -> OneOrMany<T> {
        OneOrMany {
            items: vec![item],
            was_list: false,
        }
    }
}

macro_rules! forward_scalar {
    ($($name:ident: $t:ty),*) => {$(
        fn $name<E: de::Error>(self, v: $t) -> Result<Self::Value, E> {
            T::deserialize(v.into_deserializer()).map(Self::one)
        }
    )*};
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrManyVisitor<T> {
    type Value = OneOrMany<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value or a list of values")
    }

    forward_scalar!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(E::custom(
            "expected a value or a list of values, got nothing",
        ))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(x) = seq.next_element()? {
            items.push(x);
        }
        Ok(OneOrMany {
            items,
            was_list: true,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(Self::one)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "name: x\ngrid:\n  - kind: none\n  - kind: [full, lora-c]\n    rank: 4\n";

    #[test]
    fn locates_keys_values_and_list_items() {
        let p = YamlPath::root();
        assert_eq!(
            locate(TEXT, &p.key("name")),
            Some(Pos { line: 1, column: 7 })
        );
        let g = p.key("grid");
        assert_eq!(
            locate(TEXT, &g.index(1).key("kind").index(1)),
            Some(Pos {
                line: 4,
                column: 18
            })
        );
        assert_eq!(
            locate(TEXT, &g.index(1).key("rank")),
            Some(Pos {
                line: 5,
                column: 11
            })
        );
        // A mapping is located at its first key.
        assert_eq!(locate(TEXT, &g.index(0)), Some(Pos { line: 3, column: 5 }));
        assert_eq!(locate(TEXT, &g.index(5)), None);
        assert_eq!(locate(TEXT, &p.key("seeds")), None);
    }

    #[test]
    fn paths_print_like_serde_yaml() {
        let p = YamlPath::root().key("grid").index(2).key("rank").index(0);
        assert_eq!(p.to_string(), "grid[2].rank[0]");
    }

    #[test]
    fn one_or_many_accepts_scalars_lists_and_keeps_positions() {
        let v: OneOrMany<u32> = serde_yaml::from_str("4").unwrap();
        assert_eq!((v.items, v.was_list), (vec![4], false));
        let v: OneOrMany<u32> = serde_yaml::from_str("[4, 8]").unwrap();
        assert_eq!((v.items, v.was_list), (vec![4, 8], true));
        let err = serde_yaml::from_str::<OneOrMany<u32>>("[4, x]").unwrap_err();
        let l = split_error(&err);
        assert_eq!(l.pos, Some(Pos { line: 1, column: 5 }));
        assert_eq!(l.field, ".[1]");
        assert!(l.message.contains("invalid type"), "{}", l.message);
    }
}
