//! Serde helpers: NaN (or ±inf) is written as JSON `null` and read back as NaN.
//!
//! serde_json already writes a NaN `f64` as `null` but refuses to read `null` into an `f64`, so
//! results with undefined metrics (an empty mask's Dice or HD95) would not round-trip. Use with
//! `#[serde(with = "nan_null")]` on every `f64` field that may be NaN.

use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
    if value.is_finite() {
        s.serialize_f64(*value)
    } else {
        s.serialize_none()
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug)]
    struct Row {
        #[serde(with = "super")]
        a: f64,
    }

    #[test]
    fn nan_round_trips_through_null() {
        let json = serde_json::to_string(&Row { a: f64::NAN }).unwrap();
        assert_eq!(json, r#"{"a":null}"#);
        assert!(serde_json::from_str::<Row>(&json).unwrap().a.is_nan());
        let back: Row = serde_json::from_str(r#"{"a":0.25}"#).unwrap();
        assert_eq!(back.a, 0.25);
    }
}
