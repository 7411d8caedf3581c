//! The Hrana-over-HTTP wire format (libSQL remote protocol, JSON encoding).
//!
//! One set of types for both sides: conductor-node decodes requests and
//! encodes responses with them, conductor's client does the reverse. The
//! authority is `docs/HRANA_3_SPEC.md` of tursodatabase/libsql; field names
//! and tags here are exactly the spec's.
//!
//! Decoding is as tolerant as the spec asks of a peer: an unknown field is
//! ignored everywhere (no type here denies unknown fields), so the extra
//! fields a libSQL server (sqld) sends, such as `replication_index`, decode
//! fine; cursor entries a client need not understand are skipped by
//! [`CursorEntry::decode`]; a stream response of a type this crate does not
//! know decodes as [`StreamResponse::Unknown`]. What a client does need —
//! values, rows, columns, the tag of a result — stays strictly validated.

pub mod checksum;
pub mod decimal;
#[cfg(feature = "protobuf")]
pub mod protobuf;
mod value;

pub use value::Value;

use serde::{Deserialize, Serialize};

/// `POST /v2/pipeline` and `/v3/pipeline` request body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineReqBody {
    #[serde(default)]
    pub baton: Option<String>,
    pub requests: Vec<StreamRequest>,
}

/// `POST /v2/pipeline` and `/v3/pipeline` response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineRespBody {
    pub baton: Option<String>,
    pub base_url: Option<String>,
    pub results: Vec<StreamResult>,
    /// Not part of the body: how long the node says the request waited for
    /// its write lock, from the `x-conductor-lock-wait-us` response header
    /// (zero when absent; other servers do not send it).
    #[serde(skip)]
    pub lock_wait_us: u64,
}

/// One entry of `PipelineRespBody::results`, in request order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamResult {
    Ok { response: StreamResponse },
    Error { error: Error },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamRequest {
    Close,
    Execute {
        stmt: Stmt,
    },
    Batch {
        batch: Batch,
    },
    Sequence {
        #[serde(default)]
        sql: Option<String>,
        #[serde(default)]
        sql_id: Option<i32>,
    },
    Describe {
        #[serde(default)]
        sql: Option<String>,
        #[serde(default)]
        sql_id: Option<i32>,
    },
    StoreSql {
        sql_id: i32,
        sql: String,
    },
    CloseSql {
        sql_id: i32,
    },
    GetAutocommit,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamResponse {
    Close,
    Execute {
        result: StmtResult,
    },
    Batch {
        result: BatchResult,
    },
    Sequence,
    Describe {
        result: DescribeResult,
    },
    StoreSql,
    CloseSql,
    GetAutocommit {
        is_autocommit: bool,
    },
    /// A response of a type this crate does not know (a newer server's),
    /// whatever its fields. Never sent; a caller that needs a particular
    /// response treats it like any other unexpected one.
    #[serde(other)]
    Unknown,
}

/// One SQL statement with its arguments. Values always travel here, never
/// spliced into `sql`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Stmt {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_id: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_args: Vec<NamedArg>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub want_rows: Option<bool>,
}

impl Stmt {
    pub fn new(sql: impl Into<String>, args: Vec<Value>) -> Self {
        Stmt {
            sql: Some(sql.into()),
            args,
            want_rows: Some(true),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedArg {
    pub name: String,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StmtResult {
    pub cols: Vec<Col>,
    pub rows: Vec<Vec<Value>>,
    pub affected_row_count: u64,
    #[serde(default, deserialize_with = "rowid::deserialize")]
    pub last_insert_rowid: Option<String>,
    /// The statement's statistics, which sqld (and conductor-node) send in
    /// every result; absent from older servers' answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_read: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_written: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_duration_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Col {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub decltype: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Batch {
    pub steps: Vec<BatchStep>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchStep {
    pub stmt: Stmt,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<BatchCond>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BatchCond {
    Ok { step: u32 },
    Error { step: u32 },
    Not { cond: Box<BatchCond> },
    And { conds: Vec<BatchCond> },
    Or { conds: Vec<BatchCond> },
    IsAutocommit,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BatchResult {
    pub step_results: Vec<Option<StmtResult>>,
    pub step_errors: Vec<Option<Error>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DescribeResult {
    pub params: Vec<DescribeParam>,
    pub cols: Vec<Col>,
    pub is_explain: bool,
    pub is_readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DescribeParam {
    #[serde(default)]
    pub name: Option<String>,
}

/// An error of a request, a batch step or a whole HTTP request.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Error {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// `POST /v3/cursor` request body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CursorReqBody {
    #[serde(default)]
    pub baton: Option<String>,
    pub batch: Batch,
}

/// First line of a `/v3/cursor` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CursorRespBody {
    pub baton: Option<String>,
    pub base_url: Option<String>,
}

/// Every later line of a `/v3/cursor` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CursorEntry {
    StepBegin {
        step: u32,
        cols: Vec<Col>,
    },
    StepEnd {
        affected_row_count: u64,
        /// A decimal string. sqld sends a JSON number here; either decodes.
        #[serde(default, deserialize_with = "rowid::deserialize")]
        last_insert_rowid: Option<String>,
    },
    StepError {
        step: u32,
        error: Error,
    },
    Row {
        row: Vec<Value>,
    },
    Error {
        error: Error,
    },
}

impl CursorEntry {
    /// Decodes one line of a `/v3/cursor` body as a client should: `None`
    /// for an entry it may skip — sqld's `replication_index` entry, or an
    /// entry of a type this crate does not know — and an error for anything
    /// malformed, including a known entry of the wrong shape.
    pub fn decode(line: &[u8]) -> Result<Option<CursorEntry>, serde_json::Error> {
        Ok(match serde_json::from_slice::<AnyCursorEntry>(line)? {
            AnyCursorEntry::StepBegin { step, cols } => Some(CursorEntry::StepBegin { step, cols }),
            AnyCursorEntry::StepEnd {
                affected_row_count,
                last_insert_rowid,
            } => Some(CursorEntry::StepEnd {
                affected_row_count,
                last_insert_rowid,
            }),
            AnyCursorEntry::StepError { step, error } => {
                Some(CursorEntry::StepError { step, error })
            }
            AnyCursorEntry::Row { row } => Some(CursorEntry::Row { row }),
            AnyCursorEntry::Error { error } => Some(CursorEntry::Error { error }),
            AnyCursorEntry::Skipped => None,
        })
    }
}

/// [`CursorEntry`] as it may arrive from any Hrana 3 server: the same
/// entries, plus a catch-all for those a client skips.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AnyCursorEntry {
    StepBegin {
        step: u32,
        cols: Vec<Col>,
    },
    StepEnd {
        affected_row_count: u64,
        #[serde(default, deserialize_with = "rowid::deserialize")]
        last_insert_rowid: Option<String>,
    },
    StepError {
        step: u32,
        error: Error,
    },
    Row {
        row: Vec<Value>,
    },
    Error {
        error: Error,
    },
    /// `replication_index` (sqld's last entry: the frame its answer reflects)
    /// and any entry type a later protocol version adds.
    #[serde(other)]
    Skipped,
}

/// A `last_insert_rowid`: the spec's decimal string (taken as it is), or the
/// JSON integer sqld writes in `step_end` (turned into its decimal string);
/// `null` or absent is `None`.
mod rowid {
    use serde::de::{self, Deserializer, Visitor};
    use std::fmt;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<String>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a rowid as a decimal string or an integer, or null")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(V)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Some(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(|v| Some(v.to_string()))
                    .map_err(|_| E::custom(format!("rowid {v} is out of range")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Some(v.to_owned()))
            }
        }
        d.deserialize_option(V)
    }
}
