//! Value newtypes of the spec that reject bad input while deserializing, so that serde_yaml
//! attaches the value's `line:column` and path to the error (`grid[2].rank[1]: expected a
//! positive integer, got -4`).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::model::Selector;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

macro_rules! reject_rest {
    ($what:expr) => {
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Err(E::custom(format!("expected {}, got {v}", $what)))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Err(E::custom(format!("expected {}, got `{v}`", $what)))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Err(E::custom(format!("expected {}, got nothing", $what)))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(de::Error::custom(format!("expected {}, got a list", $what)))
        }
        fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(de::Error::custom(format!(
                "expected {}, got a mapping",
                $what
            )))
        }
    };
}

/// An integer ≥ 1: ranks, steps, batch sizes, widths, fold counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Positive(pub usize);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const WHAT: &str = "a positive integer";
        impl<'de> Visitor<'de> for V {
            type Value = Positive;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(WHAT)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Positive, E> {
                match usize::try_from(v) {
                    Ok(n) if n >= 1 => Ok(Positive(n)),
                    _ => Err(E::custom(format!("expected {WHAT}, got {v}"))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Positive, E> {
                if v >= 1 {
                    self.visit_u64(v as u64)
                } else {
                    Err(E::custom(format!("expected {WHAT}, got {v}")))
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Positive, E> {
                Err(E::custom(format!("expected {WHAT}, got {v}")))
            }
            reject_rest!(WHAT);
        }
        d.deserialize_any(V)
    }
}

/// A finite number > 0: learning rates, alpha.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct PositiveF64(pub f64);

/// A finite number ≥ 0: weight decay.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct NonNegF64(pub f64);

macro_rules! float_newtype {
    ($t:ident, $what:expr, $ok:expr) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$t, E> {
                        let ok: fn(f64) -> bool = $ok;
                        if v.is_finite() && ok(v) {
                            Ok($t(v))
                        } else {
                            Err(E::custom(format!("expected {}, got {v}", $what)))
                        }
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$t, E> {
                        self.visit_f64(v as f64)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$t, E> {
                        self.visit_f64(v as f64)
                    }
                    reject_rest!($what);
                }
                d.deserialize_any(V)
            }
        }
    };
}

float_newtype!(PositiveF64, "a positive number", |v| v > 0.0);
float_newtype!(NonNegF64, "a number ≥ 0", |v| v >= 0.0);

/// `alpha`: `rank` (scale 1, the default) or a positive number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Alpha {
    Rank,
    Value(f64),
}

impl Alpha {
    /// The number for a given rank.
    pub fn resolve(self, rank: usize) -> f64 {
        match self {
            Alpha::Rank => rank as f64,
            Alpha::Value(v) => v,
        }
    }
}

impl<'de> Deserialize<'de> for Alpha {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const WHAT: &str = "a positive number or `rank`";
        impl<'de> Visitor<'de> for V {
            type Value = Alpha;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(WHAT)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Alpha, E> {
                if v.is_finite() && v > 0.0 {
                    Ok(Alpha::Value(v))
                } else {
                    Err(E::custom(format!("expected {WHAT}, got {v}")))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Alpha, E> {
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Alpha, E> {
                self.visit_f64(v as f64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Alpha, E> {
                if v == "rank" {
                    Ok(Alpha::Rank)
                } else {
                    Err(E::custom(format!("expected {WHAT}, got `{v}`")))
                }
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Alpha, E> {
                Err(E::custom(format!("expected {WHAT}, got {v}")))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Alpha, E> {
                Err(E::custom(format!("expected {WHAT}, got nothing")))
            }
        }
        d.deserialize_any(V)
    }
}

/// A wall-clock duration written as `2h`, `30m`, `90s` or `1h 30m` (humantime syntax), > 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationValue(pub Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const WHAT: &str = "a duration such as 2h, 30m or 90s";
        impl<'de> Visitor<'de> for V {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(WHAT)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationValue, E> {
                match humantime::parse_duration(v.trim()) {
                    Ok(d) if !d.is_zero() => Ok(DurationValue(d)),
                    Ok(_) => Err(E::custom(format!("expected {WHAT}, got `{v}` (zero)"))),
                    Err(e) => Err(E::custom(format!("expected {WHAT}, got `{v}` ({e})"))),
                }
            }
            // A bare number has no unit: refuse it rather than guess seconds.
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationValue, E> {
                Err(E::custom(format!("expected {WHAT}, got {v} (no unit)")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationValue, E> {
                Err(E::custom(format!("expected {WHAT}, got {v} (no unit)")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<DurationValue, E> {
                Err(E::custom(format!("expected {WHAT}, got {v} (no unit)")))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<DurationValue, E> {
                Err(E::custom(format!("expected {WHAT}, got {v}")))
            }
            fn visit_unit<E: de::Error>(self) -> Result<DurationValue, E> {
                Err(E::custom(format!("expected {WHAT}, got nothing")))
            }
        }
        d.deserialize_any(V)
    }
}

/// A module selector checked while deserializing, so that a bad one is reported at its own
/// position (`Selector`'s own impl checks after the value is read, which serde_yaml places at
/// the enclosing list).
#[derive(Debug, Clone, PartialEq)]
pub struct SelectorValue(pub Selector);

impl<'de> Deserialize<'de> for SelectorValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const WHAT: &str = "a module selector (encoder, bottleneck, decoder, head, all or a glob)";
        impl<'de> Visitor<'de> for V {
            type Value = SelectorValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(WHAT)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SelectorValue, E> {
                Selector::new(v).map(SelectorValue).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SelectorValue, E> {
                Err(E::custom(format!("expected {WHAT}, got {v}")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SelectorValue, E> {
                Err(E::custom(format!("expected {WHAT}, got {v}")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<SelectorValue, E> {
                Err(E::custom(format!("expected {WHAT}, got {v}")))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<SelectorValue, E> {
                Err(E::custom(format!("expected {WHAT}, got {v}")))
            }
            fn visit_unit<E: de::Error>(self) -> Result<SelectorValue, E> {
                Err(E::custom(format!("expected {WHAT}, got nothing")))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err<T: for<'de> Deserialize<'de> + fmt::Debug>(text: &str) -> String {
        serde_yaml::from_str::<T>(text).unwrap_err().to_string()
    }

    #[test]
    fn positive_rejects_zero_negative_fraction_and_text() {
        assert_eq!(
            serde_yaml::from_str::<Positive>("16").unwrap(),
            Positive(16)
        );
        assert!(err::<Positive>("0").contains("expected a positive integer, got 0"));
        assert!(err::<Positive>("-4").contains("expected a positive integer, got -4"));
        assert!(err::<Positive>("2.5").contains("got 2.5"));
        assert!(err::<Positive>("four").contains("got `four`"));
        assert!(err::<Positive>("[1]").contains("got a list"));
    }

    #[test]
    fn floats_and_alpha() {
        assert_eq!(
            serde_yaml::from_str::<PositiveF64>("1.0e-3").unwrap().0,
            1e-3
        );
        assert_eq!(serde_yaml::from_str::<PositiveF64>("2").unwrap().0, 2.0);
        assert!(err::<PositiveF64>("0").contains("expected a positive number, got 0"));
        assert!(err::<PositiveF64>(".nan").contains("got NaN"));
        assert_eq!(serde_yaml::from_str::<NonNegF64>("0").unwrap().0, 0.0);
        assert!(err::<NonNegF64>("-1").contains("got -1"));
        assert_eq!(serde_yaml::from_str::<Alpha>("rank").unwrap(), Alpha::Rank);
        assert_eq!(
            serde_yaml::from_str::<Alpha>("8").unwrap(),
            Alpha::Value(8.0)
        );
        assert!(err::<Alpha>("-8").contains("expected a positive number or `rank`, got -8"));
        assert!(err::<Alpha>("ranks").contains("got `ranks`"));
        assert_eq!(Alpha::Rank.resolve(16), 16.0);
        assert_eq!(Alpha::Value(2.0).resolve(16), 2.0);
    }

    #[test]
    fn durations_need_a_unit() {
        let d = |s: &str| serde_yaml::from_str::<DurationValue>(s).unwrap().0;
        assert_eq!(d("2h"), Duration::from_secs(7200));
        assert_eq!(d("30m"), Duration::from_secs(1800));
        assert_eq!(d("90s"), Duration::from_secs(90));
        assert_eq!(d("1h 30m"), Duration::from_secs(5400));
        assert!(err::<DurationValue>("2x").contains("expected a duration such as 2h"));
        assert!(err::<DurationValue>("7200").contains("no unit"));
        assert!(err::<DurationValue>("0s").contains("zero"));
    }
}
