//! Hrana's typed value. Integers travel as decimal strings so the whole i64
//! range survives JSON; blobs as standard base64.

use base64::Engine as _;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Float(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(if matches!(self, Value::Null) { 1 } else { 2 }))?;
        match self {
            Value::Null => m.serialize_entry("type", "null")?,
            Value::Integer(i) => {
                m.serialize_entry("type", "integer")?;
                // Formatted on the stack: no allocation per value.
                let mut buf = itoa::Buffer::new();
                m.serialize_entry("value", buf.format(*i))?;
            }
            Value::Float(f) => {
                if !f.is_finite() {
                    return Err(serde::ser::Error::custom(NON_FINITE_JSON));
                }
                m.serialize_entry("type", "float")?;
                m.serialize_entry("value", f)?;
            }
            Value::Text(t) => {
                m.serialize_entry("type", "text")?;
                m.serialize_entry("value", t)?;
            }
            Value::Blob(b) => {
                m.serialize_entry("type", "blob")?;
                m.serialize_entry(
                    "base64",
                    &base64::engine::general_purpose::STANDARD.encode(b),
                )?;
            }
        }
        m.end()
    }
}

/// Why a float is refused in JSON, whose numbers are finite (Protobuf
/// carries any double).
const NON_FINITE_JSON: &str =
    "a non-finite float (Infinity or NaN) cannot travel in the JSON encoding of Hrana; \
     the Protobuf encoding carries it";

/// The `value` field of a value object before its type is known (the
/// object's keys may come in any order): a string or a number, decoded
/// directly rather than through `serde_json::Value`.
enum Payload {
    None,
    /// `null`: how sqld writes a float infinity in JSON, losing its sign.
    Null,
    Str(String),
    Num(f64),
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct P;
        impl<'de> Visitor<'de> for P {
            type Value = Payload;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Payload, E> {
                Ok(Payload::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Payload, E> {
                Ok(Payload::Str(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Payload, E> {
                Ok(Payload::Num(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Payload, E> {
                Ok(Payload::Num(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Payload, E> {
                Ok(Payload::Num(v as f64))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Payload, E> {
                Ok(Payload::Null)
            }
        }
        d.deserialize_any(P)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a Hrana value object {\"type\": ..., ...}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut ty: Option<String> = None;
                let mut value = Payload::None;
                let mut b64: Option<String> = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "type" => ty = Some(map.next_value()?),
                        "value" => value = map.next_value::<Payload>()?,
                        "base64" => b64 = Some(map.next_value()?),
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                let ty = ty.ok_or_else(|| de::Error::missing_field("type"))?;
                match (ty.as_str(), value) {
                    ("null", _) => Ok(Value::Null),
                    ("integer", Payload::Str(s)) => s
                        .parse::<i64>()
                        .map(Value::Integer)
                        .map_err(|_| de::Error::custom(format!("invalid integer value {s:?}"))),
                    ("integer", _) => {
                        Err(de::Error::custom("integer value must be a decimal string"))
                    }
                    ("float", Payload::Num(f)) => Ok(Value::Float(f)),
                    ("float", Payload::Null) => Err(de::Error::custom(
                        "a float without a value: a server writes a float infinity so in JSON, \
                         whose numbers are finite (the Protobuf encoding carries it)",
                    )),
                    ("float", _) => Err(de::Error::custom("float value must be a JSON number")),
                    ("text", Payload::Str(s)) => Ok(Value::Text(s)),
                    ("text", _) => Err(de::Error::custom("text value must be a string")),
                    ("blob", _) => {
                        let b = b64.ok_or_else(|| de::Error::missing_field("base64"))?;
                        decode_base64(&b)
                            .map(Value::Blob)
                            .ok_or_else(|| de::Error::custom("invalid base64 in blob value"))
                    }
                    (other, _) => Err(de::Error::custom(format!("unknown value type {other:?}"))),
                }
            }
        }
        d.deserialize_map(V)
    }
}

/// Standard base64, padded or not (the spec's clients differ).
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    STANDARD
        .decode(s)
        .or_else(|_| STANDARD_NO_PAD.decode(s))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(v: Value) {
        let j = serde_json::to_string(&v).unwrap();
        let back: Value = serde_json::from_str(&j).unwrap();
        assert_eq!(back, v, "{j}");
    }

    #[test]
    fn values_round_trip() {
        rt(Value::Null);
        rt(Value::Integer(i64::MIN));
        rt(Value::Integer(i64::MAX));
        rt(Value::Float(-0.0));
        rt(Value::Float(1.0e308));
        rt(Value::Float(5e-324));
        rt(Value::Text("héllo \u{0} ' \" ;--".into()));
        rt(Value::Blob(vec![0, 1, 2, 255]));
        rt(Value::Blob(vec![]));
    }

    #[test]
    fn wire_forms_match_the_spec() {
        assert_eq!(
            serde_json::to_string(&Value::Integer(42)).unwrap(),
            r#"{"type":"integer","value":"42"}"#
        );
        let v: Value =
            serde_json::from_str(r#"{"value":"AAE=","type":"blob","base64":"AAE="}"#).unwrap();
        assert_eq!(v, Value::Blob(vec![0, 1]));
    }

    #[test]
    fn bad_encodings_are_errors() {
        for bad in [
            r#"{"type":"integer","value":42}"#,
            r#"{"type":"integer","value":"4.2"}"#,
            r#"{"type":"integer","value":"99999999999999999999"}"#,
            r#"{"type":"float","value":"1.5"}"#,
            r#"{"type":"float","value":null}"#,
            r#"{"type":"integer","value":null}"#,
            r#"{"type":"text","value":1}"#,
            r#"{"type":"blob","base64":"!!"}"#,
            r#"{"type":"bigint","value":"1"}"#,
            r#"{"value":"1"}"#,
        ] {
            assert!(serde_json::from_str::<Value>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn floats_round_trip_bit_exactly() {
        // A deterministic spread of bit patterns over the whole f64 range.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = f64::from_bits(x);
            if !f.is_finite() {
                continue;
            }
            let j = serde_json::to_string(&Value::Float(f)).unwrap();
            match serde_json::from_str::<Value>(&j).unwrap() {
                Value::Float(g) => assert_eq!(g.to_bits(), f.to_bits(), "{j}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn value_field_may_be_any_json_number_form() {
        let v: Value = serde_json::from_str(r#"{"type":"float","value":-3}"#).unwrap();
        assert_eq!(v, Value::Float(-3.0));
        let v: Value =
            serde_json::from_str(r#"{"type":"float","value":18446744073709551615}"#).unwrap();
        assert_eq!(v, Value::Float(18446744073709551615.0));
        assert!(serde_json::from_str::<Value>(r#"{"type":"text","value":true}"#).is_err());
        assert!(serde_json::from_str::<Value>(r#"{"type":"text","value":null}"#).is_err());
    }

    #[test]
    fn non_finite_floats_are_refused() {
        assert!(serde_json::to_string(&Value::Float(f64::NAN)).is_err());
    }
}
