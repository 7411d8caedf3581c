//! Column types and how their values are stored on the SQLite nodes.
//!
//! The encoding is chosen so that every supported Postgres value round-trips
//! exactly and, where a range predicate may later be pushed down, SQLite's
//! ordering of the stored value equals Postgres' ordering of the original:
//!
//! | Postgres | SQLite decltype | stored value |
//! |---|---|---|
//! | int2, int4, int8 | INTEGER | the integer |
//! | bool | INTEGER | 0 / 1 |
//! | float4, float8 | (none) | the double (REAL), ±Infinity included; NaN (any NaN: Postgres treats them as one value) as the TEXT `'NaN'`, since SQLite turns a NaN REAL into NULL. SQLite orders numbers before text, so the stored order is Postgres' (-Infinity < numbers < Infinity < NaN) and `'NaN' = 'NaN'` holds. Only the Protobuf encoding carries ±Infinity; the JSON one cannot (its numbers are finite), see [`TypedValue::to_value`]. Declared without a type on purpose: a column with REAL affinity stores integral doubles as integers and turns `-0` into `0`; a column without affinity keeps the IEEE bits |
//! | numeric | TEXT | Postgres' canonical text form; declared TEXT so SQLite's affinity never turns it into a lossy REAL |
//! | text, varchar, bpchar | TEXT | the string (bpchar as Postgres outputs it) |
//! | bytea | BLOB | the bytes |
//! | uuid | TEXT | canonical lowercase 8-4-4-4-12; lowercase hex sorts like Postgres' memcmp order |
//! | date | INTEGER | days since 2000-01-01: Postgres' internal int32, so ±infinity and BC dates survive and order is kept |
//! | timestamp, timestamptz | INTEGER | microseconds since 2000-01-01 (UTC for timestamptz): Postgres' internal int64, same reasons |
//! | json, jsonb | TEXT | the JSON text |
//!
//! The FFI side converts datums to and from [`TypedValue`] (using Postgres'
//! internal date/timestamp integers directly); [`TypedValue::to_value`] and
//! [`TypedValue::from_value`] are the only places that know the wire form.

use conductor_hrana::Value;
use std::fmt;

/// A Postgres column type conductor can store on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ColumnType {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    Bool,
    Text,
    Varchar,
    Bpchar,
    Bytea,
    Uuid,
    Date,
    Timestamp,
    Timestamptz,
    Json,
    Jsonb,
}

/// The SQLite storage class a column's values travel and rest as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageClass {
    Integer,
    Real,
    Text,
    Blob,
}

impl ColumnType {
    /// Every supported type, for iteration in tests and error messages.
    pub const ALL: [ColumnType; 17] = [
        ColumnType::Int2,
        ColumnType::Int4,
        ColumnType::Int8,
        ColumnType::Float4,
        ColumnType::Float8,
        ColumnType::Numeric,
        ColumnType::Bool,
        ColumnType::Text,
        ColumnType::Varchar,
        ColumnType::Bpchar,
        ColumnType::Bytea,
        ColumnType::Uuid,
        ColumnType::Date,
        ColumnType::Timestamp,
        ColumnType::Timestamptz,
        ColumnType::Json,
        ColumnType::Jsonb,
    ];

    /// The type for a `pg_type.typname`, or `None` when conductor cannot
    /// store it (the caller refuses the column with a clear error).
    pub fn from_pg_name(typname: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.pg_name() == typname)
    }

    /// The `pg_type.typname` of this type.
    pub fn pg_name(&self) -> &'static str {
        match self {
            ColumnType::Int2 => "int2",
            ColumnType::Int4 => "int4",
            ColumnType::Int8 => "int8",
            ColumnType::Float4 => "float4",
            ColumnType::Float8 => "float8",
            ColumnType::Numeric => "numeric",
            ColumnType::Bool => "bool",
            ColumnType::Text => "text",
            ColumnType::Varchar => "varchar",
            ColumnType::Bpchar => "bpchar",
            ColumnType::Bytea => "bytea",
            ColumnType::Uuid => "uuid",
            ColumnType::Date => "date",
            ColumnType::Timestamp => "timestamp",
            ColumnType::Timestamptz => "timestamptz",
            ColumnType::Json => "json",
            ColumnType::Jsonb => "jsonb",
        }
    }

    /// Storage class of the encoded values (see the module table).
    pub fn storage_class(&self) -> StorageClass {
        use ColumnType::*;
        match self {
            Int2 | Int4 | Int8 | Bool | Date | Timestamp | Timestamptz => StorageClass::Integer,
            Float4 | Float8 => StorageClass::Real,
            Numeric | Text | Varchar | Bpchar | Uuid | Json | Jsonb => StorageClass::Text,
            Bytea => StorageClass::Blob,
        }
    }

    /// The declared type of the column in the node's CREATE TABLE, which
    /// fixes SQLite's type affinity. Empty for floats: no affinity, so `-0`
    /// keeps its sign (REAL affinity would store it as the integer 0).
    pub fn sqlite_decltype(&self) -> &'static str {
        match self.storage_class() {
            StorageClass::Integer => "INTEGER",
            StorageClass::Real => "",
            StorageClass::Text => "TEXT",
            StorageClass::Blob => "BLOB",
        }
    }

    /// Whether this type may be a shard key (docs/ARCHITECTURE.md, Placement).
    pub fn is_shard_key_type(&self) -> bool {
        use ColumnType::*;
        matches!(self, Int2 | Int4 | Int8 | Text | Varchar | Uuid)
    }

    /// Whether values that Postgres' `=` calls equal always have one
    /// stored form in a column of this type with type modifier `typmod`.
    /// A node keeps a primary key or unique index unique by comparing
    /// stored forms, so only such columns can be in one. Not numeric
    /// without a declared scale (`1.0` and `1.00` are equal, stored as
    /// their own text), bpchar without a length (trailing blanks are kept
    /// but `=` ignores them), jsonb (a number inside keeps its scale) or
    /// json (which has no `=` at all).
    pub fn equal_values_stored_alike(&self, typmod: i32) -> bool {
        use ColumnType::*;
        match self {
            Numeric | Bpchar => typmod != -1,
            Json | Jsonb => false,
            _ => true,
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.pg_name())
    }
}

/// A non-NULL Postgres value in the form the FFI layer hands over (dates and
/// timestamps as Postgres' internal integers). NULL is `Option::None` around it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum TypedValue {
    Int2(i16),
    Int4(i32),
    Int8(i64),
    /// Serialized (in plans) by its bits: JSON has no NaN or infinity.
    Float4(#[serde(with = "f32_bits")] f32),
    Float8(#[serde(with = "f64_bits")] f64),
    /// Canonical text form (`numeric_out`), including `NaN` and `Infinity`.
    Numeric(String),
    Bool(bool),
    /// text, varchar and bpchar.
    Text(String),
    Bytea(Vec<u8>),
    Uuid([u8; 16]),
    /// Days since 2000-01-01 (`DateADT`).
    Date(i32),
    /// Microseconds since 2000-01-01 (`Timestamp` / `TimestampTz`, UTC).
    Timestamp(i64),
    /// json or jsonb, as text.
    Json(String),
}

impl TypedValue {
    /// The Hrana value to send as a statement argument. A float infinity
    /// is a REAL infinity, which only the Protobuf encoding of the protocol
    /// can carry: the client refuses to send it in JSON, with that reason.
    /// Never fails today; the `Result` keeps callers ready for a value that
    /// has no stored form.
    pub fn to_value(&self, _column: &str) -> Result<Value, DecodeError> {
        Ok(match self {
            TypedValue::Int2(v) => Value::Integer(i64::from(*v)),
            TypedValue::Int4(v) => Value::Integer(i64::from(*v)),
            TypedValue::Int8(v) => Value::Integer(*v),
            TypedValue::Float4(v) => float_value(f64::from(*v)),
            TypedValue::Float8(v) => float_value(*v),
            TypedValue::Bool(b) => Value::Integer(i64::from(*b)),
            TypedValue::Numeric(s) | TypedValue::Text(s) | TypedValue::Json(s) => {
                Value::Text(s.clone())
            }
            TypedValue::Bytea(b) => Value::Blob(b.clone()),
            TypedValue::Uuid(u) => Value::Text(uuid_to_text(*u)),
            TypedValue::Date(d) => Value::Integer(i64::from(*d)),
            TypedValue::Timestamp(t) => Value::Integer(*t),
        })
    }

    /// Decode a value a node returned for a column of type `ty`. `Ok(None)`
    /// is SQL NULL. Anything that is not exactly what [`to_value`] would have
    /// produced (wrong storage class, out-of-range integer, bad uuid text) is
    /// a [`DecodeError`] naming the column, never a panic.
    ///
    /// [`to_value`]: TypedValue::to_value
    pub fn from_value(
        column: &str,
        ty: ColumnType,
        value: &Value,
    ) -> Result<Option<TypedValue>, DecodeError> {
        let err = |reason: &str| DecodeError::new(column, ty, value, reason);
        let int = |v: &Value| match v {
            Value::Integer(i) => Ok(*i),
            _ => Err(err("expected an integer")),
        };
        let text = |v: &Value| match v {
            Value::Text(s) => Ok(s.clone()),
            _ => Err(err("expected text")),
        };
        if matches!(value, Value::Null) {
            return Ok(None);
        }
        let range = |_| err("integer out of range");
        let decoded = match ty {
            ColumnType::Int2 => TypedValue::Int2(i16::try_from(int(value)?).map_err(range)?),
            ColumnType::Int4 => TypedValue::Int4(i32::try_from(int(value)?).map_err(range)?),
            ColumnType::Int8 => TypedValue::Int8(int(value)?),
            ColumnType::Float4 | ColumnType::Float8 => {
                let f = match value {
                    Value::Float(f) => *f,
                    Value::Text(s) if s == NAN_TEXT => f64::NAN,
                    // A REAL column may hand back an integral value as an
                    // integer (no STRICT tables); accept it when exact.
                    Value::Integer(i) if (*i as f64) as i64 == *i => *i as f64,
                    _ => return Err(err("expected a float")),
                };
                if ty == ColumnType::Float4 {
                    // Exact for every value that came from an f32.
                    TypedValue::Float4(f as f32)
                } else {
                    TypedValue::Float8(f)
                }
            }
            ColumnType::Numeric => TypedValue::Numeric(match value {
                Value::Text(s) => s.clone(),
                Value::Integer(i) => i.to_string(),
                _ => return Err(err("expected numeric text")),
            }),
            ColumnType::Bool => match int(value)? {
                0 => TypedValue::Bool(false),
                1 => TypedValue::Bool(true),
                _ => return Err(err("expected 0 or 1")),
            },
            ColumnType::Text | ColumnType::Varchar | ColumnType::Bpchar => {
                TypedValue::Text(text(value)?)
            }
            ColumnType::Bytea => match value {
                Value::Blob(b) => TypedValue::Bytea(b.clone()),
                _ => return Err(err("expected a blob")),
            },
            ColumnType::Uuid => match value {
                Value::Text(s) => TypedValue::Uuid(uuid_from_text(s).map_err(|e| err(&e.0))?),
                _ => return Err(err("expected uuid text")),
            },
            ColumnType::Date => TypedValue::Date(i32::try_from(int(value)?).map_err(range)?),
            ColumnType::Timestamp | ColumnType::Timestamptz => TypedValue::Timestamp(int(value)?),
            ColumnType::Json | ColumnType::Jsonb => TypedValue::Json(text(value)?),
        };
        Ok(Some(decoded))
    }
}

mod f32_bits {
    pub fn serialize<S: serde::Serializer>(f: &f32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(f.to_bits())
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        <u32 as serde::Deserialize>::deserialize(d).map(f32::from_bits)
    }
}

mod f64_bits {
    pub fn serialize<S: serde::Serializer>(f: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(f.to_bits())
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        <u64 as serde::Deserialize>::deserialize(d).map(f64::from_bits)
    }
}

/// How a float column stores NaN (see the module table).
pub const NAN_TEXT: &str = "NaN";

/// The stored form of a float: NaN (whatever its sign and payload, all one
/// value to Postgres) as [`NAN_TEXT`], anything else as the REAL itself.
pub fn float_value(f: f64) -> Value {
    if f.is_nan() {
        Value::Text(NAN_TEXT.to_string())
    } else {
        Value::Float(f)
    }
}

/// A value that does not fit its column: which column, which type, what
/// value (abbreviated) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub column: String,
    pub column_type: ColumnType,
    /// Short rendering of the offending value (at most ~64 characters).
    pub value: String,
    pub reason: String,
}

impl DecodeError {
    fn new(column: &str, ty: ColumnType, value: &Value, reason: &str) -> Self {
        let mut shown = match value {
            Value::Null => "NULL".to_string(),
            Value::Integer(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Text(s) => format!("{s:?}"),
            Value::Blob(b) => format!("blob of {} bytes", b.len()),
        };
        if shown.chars().count() > 64 {
            shown = shown.chars().take(61).collect::<String>() + "...";
        }
        DecodeError {
            column: column.to_string(),
            column_type: ty,
            value: shown,
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "column \"{}\" ({}): invalid value {}: {}",
            self.column, self.column_type, self.value, self.reason
        )
    }
}

impl std::error::Error for DecodeError {}

/// Invalid uuid text (the message says why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UuidParseError(pub String);

impl fmt::Display for UuidParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UuidParseError {}

/// Canonical lowercase 8-4-4-4-12 text of a uuid (the stored form).
pub fn uuid_to_text(u: [u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0xf)] as char);
    }
    s
}

/// Parse the canonical 8-4-4-4-12 form (either case). Only the canonical
/// form is accepted: this reads what [`uuid_to_text`] stored, not user input.
pub fn uuid_from_text(s: &str) -> Result<[u8; 16], UuidParseError> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return Err(UuidParseError(format!(
            "uuid text must be 36 characters, got {}",
            b.len()
        )));
    }
    let mut out = [0u8; 16];
    let mut nibbles = 0usize;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return Err(UuidParseError(format!("expected '-' at position {i}")));
            }
            continue;
        }
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return Err(UuidParseError(format!("invalid hex digit at position {i}"))),
        };
        out[nibbles / 2] |= if nibbles.is_multiple_of(2) { v << 4 } else { v };
        nibbles += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_need_one_stored_form_per_value() {
        use ColumnType::*;
        for ty in ColumnType::ALL {
            let alike = ty.equal_values_stored_alike(-1);
            assert_eq!(
                alike,
                !matches!(ty, Numeric | Bpchar | Json | Jsonb),
                "{ty}"
            );
        }
        // numeric(10,2) and char(5): the modifier fixes the scale and length.
        assert!(Numeric.equal_values_stored_alike(655366));
        assert!(Bpchar.equal_values_stored_alike(9));
        assert!(!Jsonb.equal_values_stored_alike(4));
    }

    use super::*;

    #[test]
    fn names_round_trip() {
        for t in ColumnType::ALL {
            assert_eq!(ColumnType::from_pg_name(t.pg_name()), Some(t));
        }
        assert_eq!(ColumnType::from_pg_name("money"), None);
        assert_eq!(ColumnType::from_pg_name("INT4"), None);
    }

    #[test]
    fn decltypes() {
        use ColumnType::*;
        assert_eq!(Int8.sqlite_decltype(), "INTEGER");
        assert_eq!(Bool.sqlite_decltype(), "INTEGER");
        assert_eq!(Float4.sqlite_decltype(), "");
        assert_eq!(Numeric.sqlite_decltype(), "TEXT");
        assert_eq!(Uuid.sqlite_decltype(), "TEXT");
        assert_eq!(Bytea.sqlite_decltype(), "BLOB");
        assert_eq!(Date.sqlite_decltype(), "INTEGER");
        assert_eq!(Timestamptz.sqlite_decltype(), "INTEGER");
        assert_eq!(Jsonb.sqlite_decltype(), "TEXT");
    }

    fn ty_of(v: &TypedValue) -> ColumnType {
        match v {
            TypedValue::Int2(_) => ColumnType::Int2,
            TypedValue::Int4(_) => ColumnType::Int4,
            TypedValue::Int8(_) => ColumnType::Int8,
            TypedValue::Float4(_) => ColumnType::Float4,
            TypedValue::Float8(_) => ColumnType::Float8,
            TypedValue::Numeric(_) => ColumnType::Numeric,
            TypedValue::Bool(_) => ColumnType::Bool,
            TypedValue::Text(_) => ColumnType::Text,
            TypedValue::Bytea(_) => ColumnType::Bytea,
            TypedValue::Uuid(_) => ColumnType::Uuid,
            TypedValue::Date(_) => ColumnType::Date,
            TypedValue::Timestamp(_) => ColumnType::Timestamptz,
            TypedValue::Json(_) => ColumnType::Jsonb,
        }
    }

    #[test]
    fn values_round_trip_through_the_wire() {
        let vals = [
            TypedValue::Int2(i16::MIN),
            TypedValue::Int2(i16::MAX),
            TypedValue::Int4(i32::MIN),
            TypedValue::Int8(i64::MAX),
            TypedValue::Int8(i64::MIN),
            TypedValue::Float4(f32::MIN_POSITIVE),
            TypedValue::Float4(-3.4028235e38),
            TypedValue::Float4(0.1),
            TypedValue::Float8(-0.0),
            TypedValue::Float8(5e-324),
            TypedValue::Float8(f64::MAX),
            TypedValue::Numeric("-123456789012345678901234567890.000100".into()),
            TypedValue::Numeric("NaN".into()),
            TypedValue::Numeric("Infinity".into()),
            TypedValue::Bool(true),
            TypedValue::Bool(false),
            TypedValue::Text("".into()),
            TypedValue::Text("héllo 🦀 '\"; --\0".into()),
            TypedValue::Bytea(vec![]),
            TypedValue::Bytea((0..=255).collect()),
            TypedValue::Uuid([0xab; 16]),
            TypedValue::Date(i32::MIN), // -infinity
            TypedValue::Date(i32::MAX), // infinity
            TypedValue::Date(-730_000), // BC
            TypedValue::Timestamp(i64::MIN),
            TypedValue::Timestamp(0),
            TypedValue::Json(r#"{"a": [1, 2.5, null]}"#.into()),
        ];
        for v in vals {
            let ty = ty_of(&v);
            let wire = v.to_value("c").expect("encodable");
            // Through JSON too: this is what the node sends back.
            let json = serde_json::to_string(&wire).expect("serializable");
            let back: Value = serde_json::from_str(&json).expect("parsable");
            let decoded = TypedValue::from_value("c", ty, &back).expect("decodable");
            match (&v, decoded) {
                (TypedValue::Float8(a), Some(TypedValue::Float8(b))) => {
                    assert_eq!(a.to_bits(), b.to_bits())
                }
                (_, d) => assert_eq!(d, Some(v.clone())),
            }
        }
    }

    #[test]
    fn null_decodes_to_none() {
        for t in ColumnType::ALL {
            assert_eq!(TypedValue::from_value("c", t, &Value::Null), Ok(None));
        }
    }

    fn float_bits(v: Option<TypedValue>) -> u64 {
        match v {
            Some(TypedValue::Float8(f)) => f.to_bits(),
            Some(TypedValue::Float4(f)) => u64::from(f.to_bits()),
            other => panic!("not a float: {other:?}"),
        }
    }

    #[test]
    fn special_floats_round_trip() {
        // Infinities are REALs: through Protobuf (which carries any double)
        // they come back bit for bit; JSON cannot carry them at all.
        for f in [f64::INFINITY, f64::NEG_INFINITY, -0.0, f64::MAX, -f64::MAX] {
            let wire = TypedValue::Float8(f).to_value("c").unwrap();
            assert_eq!(wire, Value::Float(f));
            let bytes =
                prost::Message::encode_to_vec(&conductor_hrana::protobuf::Value::from(&wire));
            let pb: conductor_hrana::protobuf::Value = prost::Message::decode(&bytes[..]).unwrap();
            let back = Value::try_from(pb).unwrap();
            let decoded = TypedValue::from_value("c", ColumnType::Float8, &back).unwrap();
            assert_eq!(float_bits(decoded), f.to_bits());
            if f.is_infinite() {
                assert!(serde_json::to_string(&wire).is_err());
            }
        }
        for f in [f32::INFINITY, f32::NEG_INFINITY] {
            let wire = TypedValue::Float4(f).to_value("c").unwrap();
            let decoded = TypedValue::from_value("c", ColumnType::Float4, &wire).unwrap();
            assert_eq!(float_bits(decoded), u64::from(f.to_bits()));
        }
        // Every NaN is the one text value, on either encoding, and reads
        // back as Postgres' NaN.
        let nans = [
            f64::NAN,
            -f64::NAN,
            f64::from_bits(0x7ff0_0000_0000_0001),
            f64::INFINITY - f64::INFINITY,
        ];
        for f in nans {
            let wire = TypedValue::Float8(f).to_value("c").unwrap();
            assert_eq!(wire, Value::Text(NAN_TEXT.into()));
            let json = serde_json::to_string(&wire).unwrap();
            let back: Value = serde_json::from_str(&json).unwrap();
            let decoded = TypedValue::from_value("c", ColumnType::Float8, &back).unwrap();
            assert_eq!(float_bits(decoded), f64::NAN.to_bits());
        }
        let wire = TypedValue::Float4(f32::NAN).to_value("c").unwrap();
        assert_eq!(wire, Value::Text(NAN_TEXT.into()));
        let decoded = TypedValue::from_value("c", ColumnType::Float4, &wire).unwrap();
        assert_eq!(float_bits(decoded), u64::from(f32::NAN.to_bits()));
    }

    #[test]
    fn plans_carry_any_float() {
        for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 0.1] {
            let json = serde_json::to_string(&TypedValue::Float8(f)).unwrap();
            let back: TypedValue = serde_json::from_str(&json).unwrap();
            assert_eq!(float_bits(Some(back)), f.to_bits(), "{json}");
        }
        let json = serde_json::to_string(&TypedValue::Float4(f32::NEG_INFINITY)).unwrap();
        let back: TypedValue = serde_json::from_str(&json).unwrap();
        assert_eq!(back, TypedValue::Float4(f32::NEG_INFINITY));
    }

    #[test]
    fn only_the_nan_text_is_a_float() {
        for bad in ["nan", "NAN", "Infinity", "1.5", ""] {
            let e = TypedValue::from_value("c", ColumnType::Float8, &Value::Text(bad.into()))
                .unwrap_err();
            assert_eq!(e.column_type, ColumnType::Float8, "{bad}");
        }
    }

    #[test]
    fn stored_float_order_is_postgres_order() {
        // Postgres: NULL aside, -Infinity < finite < Infinity < NaN; the
        // stored forms sort the same way under SQLite's rules (numbers
        // before text), which the merge's comparison reproduces.
        let ordered = [
            f64::NEG_INFINITY,
            -f64::MAX,
            -1.5,
            0.0,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::INFINITY,
            f64::NAN,
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                let (x, y) = (float_value(*a), float_value(*b));
                assert_eq!(
                    crate::merge::compare_values(&x, &y),
                    i.cmp(&j),
                    "{a} vs {b}"
                );
            }
        }
        assert_eq!(
            crate::merge::compare_values(&float_value(-0.0), &float_value(0.0)),
            std::cmp::Ordering::Equal
        );
    }

    #[test]
    fn wrong_values_are_decode_errors() {
        use ColumnType::*;
        let cases = [
            (Int2, Value::Integer(40_000)),
            (Int4, Value::Integer(i64::from(i32::MAX) + 1)),
            (Int8, Value::Text("1".into())),
            (Bool, Value::Integer(2)),
            (Float8, Value::Text("1.5".into())),
            (Text, Value::Integer(1)),
            (Bytea, Value::Text("x".into())),
            (Uuid, Value::Text("not-a-uuid".into())),
            (
                Uuid,
                Value::Text("123e4567-e89b-12d3-a456-42661417400g".into()),
            ),
            (Date, Value::Integer(i64::MAX)),
            (Jsonb, Value::Blob(vec![1])),
            (Numeric, Value::Float(1.5)),
        ];
        for (ty, v) in cases {
            let e = TypedValue::from_value("col", ty, &v).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("\"col\"") && msg.contains(ty.pg_name()),
                "{msg}"
            );
        }
    }

    #[test]
    fn decode_error_abbreviates_long_values() {
        let e = TypedValue::from_value("c", ColumnType::Int8, &Value::Text("x".repeat(1000)))
            .unwrap_err();
        assert!(e.value.chars().count() <= 64, "{}", e.value);
    }

    #[test]
    fn uuid_text_both_ways() {
        let u = [
            0x12, 0x3e, 0x45, 0x67, 0xe8, 0x9b, 0x12, 0xd3, 0xa4, 0x56, 0x42, 0x66, 0x14, 0x17,
            0x40, 0x00,
        ];
        assert_eq!(uuid_to_text(u), "123e4567-e89b-12d3-a456-426614174000");
        assert_eq!(
            uuid_from_text("123E4567-E89B-12D3-A456-426614174000"),
            Ok(u)
        );
        assert_eq!(uuid_from_text(&uuid_to_text([0xff; 16])), Ok([0xff; 16]));
        for bad in [
            "",
            "123e4567e89b12d3a456426614174000",
            "123e4567-e89b-12d3-a456_426614174000",
        ] {
            assert!(uuid_from_text(bad).is_err(), "{bad}");
        }
        // Multi-byte characters must not panic.
        assert!(uuid_from_text("ééééééééééééééééé-ü").is_err());
    }

    #[test]
    fn uuid_text_sorts_like_bytes() {
        let mut us: Vec<[u8; 16]> = (0u8..=255)
            .map(|i| {
                let mut u = [0u8; 16];
                u[0] = i.wrapping_mul(37);
                u[15] = i;
                u
            })
            .collect();
        let mut texts: Vec<String> = us.iter().map(|u| uuid_to_text(*u)).collect();
        us.sort();
        texts.sort();
        let sorted: Vec<String> = us.iter().map(|u| uuid_to_text(*u)).collect();
        assert_eq!(texts, sorted);
    }
}
