//! The Protobuf encoding of Hrana 3 over HTTP (`/v3-protobuf/pipeline` and
//! `/v3-protobuf/cursor`), as `prost` messages written by hand after the
//! spec's schema (packages `hrana` and `hrana.http`), so no `protoc` runs at
//! build time. Field numbers and types are the schema's; the statistics of
//! `StmtResult` (fields 6–8) follow sqld, which adds them to the schema.
//!
//! The messages mirror the JSON types of this crate; `From` conversions go
//! both ways. Differences of the encoding itself:
//! - a `BatchResult` holds maps from step index to result or error, so the
//!   number of steps is not on the wire: [`BatchResult`] converts to vectors
//!   as long as the highest step present (a caller that needs the batch's
//!   full length pads with `None`);
//! - `last_insert_rowid` is a `sint64`; an `Error`'s `code` is a plain
//!   string, empty when there is none;
//! - unknown fields, and unknown members of a `oneof` (a newer peer's
//!   request, response or cursor entry such as sqld's `replication_index`),
//!   are skipped when decoding, as the spec requires.

use crate as json;
use std::collections::BTreeMap;

/// A message with no fields (`CloseStreamReq`, `Value.Null`, …).
#[derive(Clone, Copy, PartialEq, Eq, ::prost::Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct PipelineReqBody {
    #[prost(string, optional, tag = "1")]
    pub baton: Option<String>,
    #[prost(message, repeated, tag = "2")]
    pub requests: Vec<StreamRequest>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct PipelineRespBody {
    #[prost(string, optional, tag = "1")]
    pub baton: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub base_url: Option<String>,
    #[prost(message, repeated, tag = "3")]
    pub results: Vec<StreamResult>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct StreamResult {
    #[prost(oneof = "stream_result::Result", tags = "1, 2")]
    pub result: Option<stream_result::Result>,
}

pub mod stream_result {
    #[derive(Clone, PartialEq, ::prost::Oneof)]
    pub enum Result {
        #[prost(message, tag = "1")]
        Ok(super::StreamResponse),
        #[prost(message, tag = "2")]
        Error(super::Error),
    }
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct CursorReqBody {
    #[prost(string, optional, tag = "1")]
    pub baton: Option<String>,
    #[prost(message, optional, tag = "2")]
    pub batch: Option<Batch>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct CursorRespBody {
    #[prost(string, optional, tag = "1")]
    pub baton: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub base_url: Option<String>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct StreamRequest {
    #[prost(oneof = "stream_request::Request", tags = "1, 2, 3, 4, 5, 6, 7, 8")]
    pub request: Option<stream_request::Request>,
}

pub mod stream_request {
    #[derive(Clone, PartialEq, ::prost::Oneof)]
    pub enum Request {
        #[prost(message, tag = "1")]
        Close(super::Empty),
        #[prost(message, tag = "2")]
        Execute(super::ExecuteStreamReq),
        #[prost(message, tag = "3")]
        Batch(super::BatchStreamReq),
        #[prost(message, tag = "4")]
        Sequence(super::SqlRef),
        #[prost(message, tag = "5")]
        Describe(super::SqlRef),
        #[prost(message, tag = "6")]
        StoreSql(super::StoreSqlStreamReq),
        #[prost(message, tag = "7")]
        CloseSql(super::CloseSqlStreamReq),
        #[prost(message, tag = "8")]
        GetAutocommit(super::Empty),
    }
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct StreamResponse {
    #[prost(oneof = "stream_response::Response", tags = "1, 2, 3, 4, 5, 6, 7, 8")]
    pub response: Option<stream_response::Response>,
}

pub mod stream_response {
    #[derive(Clone, PartialEq, ::prost::Oneof)]
    pub enum Response {
        #[prost(message, tag = "1")]
        Close(super::Empty),
        #[prost(message, tag = "2")]
        Execute(super::ExecuteStreamResp),
        #[prost(message, tag = "3")]
        Batch(super::BatchStreamResp),
        #[prost(message, tag = "4")]
        Sequence(super::Empty),
        #[prost(message, tag = "5")]
        Describe(super::DescribeStreamResp),
        #[prost(message, tag = "6")]
        StoreSql(super::Empty),
        #[prost(message, tag = "7")]
        CloseSql(super::Empty),
        #[prost(message, tag = "8")]
        GetAutocommit(super::GetAutocommitStreamResp),
    }
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ExecuteStreamReq {
    #[prost(message, optional, tag = "1")]
    pub stmt: Option<Stmt>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ExecuteStreamResp {
    #[prost(message, optional, tag = "1")]
    pub result: Option<StmtResult>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct BatchStreamReq {
    #[prost(message, optional, tag = "1")]
    pub batch: Option<Batch>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct BatchStreamResp {
    #[prost(message, optional, tag = "1")]
    pub result: Option<BatchResult>,
}

/// `SequenceStreamReq` and `DescribeStreamReq`, which have the same fields.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct SqlRef {
    #[prost(string, optional, tag = "1")]
    pub sql: Option<String>,
    #[prost(int32, optional, tag = "2")]
    pub sql_id: Option<i32>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct DescribeStreamResp {
    #[prost(message, optional, tag = "1")]
    pub result: Option<DescribeResult>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct StoreSqlStreamReq {
    #[prost(int32, tag = "1")]
    pub sql_id: i32,
    #[prost(string, tag = "2")]
    pub sql: String,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct CloseSqlStreamReq {
    #[prost(int32, tag = "1")]
    pub sql_id: i32,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct GetAutocommitStreamResp {
    #[prost(bool, tag = "1")]
    pub is_autocommit: bool,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Error {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(string, tag = "2")]
    pub code: String,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Stmt {
    #[prost(string, optional, tag = "1")]
    pub sql: Option<String>,
    #[prost(int32, optional, tag = "2")]
    pub sql_id: Option<i32>,
    #[prost(message, repeated, tag = "3")]
    pub args: Vec<Value>,
    #[prost(message, repeated, tag = "4")]
    pub named_args: Vec<NamedArg>,
    #[prost(bool, optional, tag = "5")]
    pub want_rows: Option<bool>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct NamedArg {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Value>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct StmtResult {
    #[prost(message, repeated, tag = "1")]
    pub cols: Vec<Col>,
    #[prost(message, repeated, tag = "2")]
    pub rows: Vec<Row>,
    #[prost(uint64, tag = "3")]
    pub affected_row_count: u64,
    #[prost(sint64, optional, tag = "4")]
    pub last_insert_rowid: Option<i64>,
    // 5 is sqld's replication_index, which this crate does not carry.
    #[prost(uint64, optional, tag = "6")]
    pub rows_read: Option<u64>,
    #[prost(uint64, optional, tag = "7")]
    pub rows_written: Option<u64>,
    #[prost(double, optional, tag = "8")]
    pub query_duration_ms: Option<f64>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Col {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub decltype: Option<String>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Row {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<Value>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Batch {
    #[prost(message, repeated, tag = "1")]
    pub steps: Vec<BatchStep>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct BatchStep {
    #[prost(message, optional, tag = "1")]
    pub condition: Option<BatchCond>,
    #[prost(message, optional, tag = "2")]
    pub stmt: Option<Stmt>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct BatchCond {
    #[prost(oneof = "batch_cond::Cond", tags = "1, 2, 3, 4, 5, 6")]
    pub cond: Option<batch_cond::Cond>,
}

pub mod batch_cond {
    #[derive(Clone, PartialEq, ::prost::Oneof)]
    pub enum Cond {
        #[prost(uint32, tag = "1")]
        StepOk(u32),
        #[prost(uint32, tag = "2")]
        StepError(u32),
        #[prost(message, tag = "3")]
        Not(::prost::alloc::boxed::Box<super::BatchCond>),
        #[prost(message, tag = "4")]
        And(super::CondList),
        #[prost(message, tag = "5")]
        Or(super::CondList),
        #[prost(message, tag = "6")]
        IsAutocommit(super::Empty),
    }
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct CondList {
    #[prost(message, repeated, tag = "1")]
    pub conds: Vec<BatchCond>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct BatchResult {
    #[prost(btree_map = "uint32, message", tag = "1")]
    pub step_results: BTreeMap<u32, StmtResult>,
    #[prost(btree_map = "uint32, message", tag = "2")]
    pub step_errors: BTreeMap<u32, Error>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct CursorEntry {
    #[prost(oneof = "cursor_entry::Entry", tags = "1, 2, 3, 4, 5")]
    pub entry: Option<cursor_entry::Entry>,
}

pub mod cursor_entry {
    #[derive(Clone, PartialEq, ::prost::Oneof)]
    pub enum Entry {
        #[prost(message, tag = "1")]
        StepBegin(super::StepBeginEntry),
        #[prost(message, tag = "2")]
        StepEnd(super::StepEndEntry),
        #[prost(message, tag = "3")]
        StepError(super::StepErrorEntry),
        #[prost(message, tag = "4")]
        Row(super::Row),
        #[prost(message, tag = "5")]
        Error(super::Error),
    }
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct StepBeginEntry {
    #[prost(uint32, tag = "1")]
    pub step: u32,
    #[prost(message, repeated, tag = "2")]
    pub cols: Vec<Col>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct StepEndEntry {
    #[prost(uint64, tag = "1")]
    pub affected_row_count: u64,
    #[prost(sint64, optional, tag = "2")]
    pub last_insert_rowid: Option<i64>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct StepErrorEntry {
    #[prost(uint32, tag = "1")]
    pub step: u32,
    #[prost(message, optional, tag = "2")]
    pub error: Option<Error>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct DescribeResult {
    #[prost(message, repeated, tag = "1")]
    pub params: Vec<DescribeParam>,
    #[prost(message, repeated, tag = "2")]
    pub cols: Vec<DescribeCol>,
    #[prost(bool, tag = "3")]
    pub is_explain: bool,
    #[prost(bool, tag = "4")]
    pub is_readonly: bool,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct DescribeParam {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct DescribeCol {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, optional, tag = "2")]
    pub decltype: Option<String>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Value {
    #[prost(oneof = "value::Value", tags = "1, 2, 3, 4, 5")]
    pub value: Option<value::Value>,
}

pub mod value {
    #[derive(Clone, PartialEq, ::prost::Oneof)]
    pub enum Value {
        #[prost(message, tag = "1")]
        Null(super::Empty),
        #[prost(sint64, tag = "2")]
        Integer(i64),
        #[prost(double, tag = "3")]
        Float(f64),
        #[prost(string, tag = "4")]
        Text(::prost::alloc::string::String),
        #[prost(bytes = "vec", tag = "5")]
        Blob(::prost::alloc::vec::Vec<u8>),
    }
}

/// Why a decoded Protobuf message does not make a request: a required
/// member (a statement, a batch, a `oneof` choice) is missing or unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incomplete(pub String);

impl std::fmt::Display for Incomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Incomplete {}

fn missing(what: &str) -> Incomplete {
    Incomplete(format!("{what} is missing or of an unknown kind"))
}

// ---- Protobuf to JSON types (what a server decodes) ----

impl TryFrom<PipelineReqBody> for json::PipelineReqBody {
    type Error = Incomplete;
    fn try_from(p: PipelineReqBody) -> Result<Self, Incomplete> {
        Ok(json::PipelineReqBody {
            baton: p.baton,
            requests: p
                .requests
                .into_iter()
                .map(json::StreamRequest::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl TryFrom<CursorReqBody> for json::CursorReqBody {
    type Error = Incomplete;
    fn try_from(p: CursorReqBody) -> Result<Self, Incomplete> {
        Ok(json::CursorReqBody {
            baton: p.baton,
            batch: p
                .batch
                .ok_or_else(|| missing("the cursor's batch"))?
                .try_into()?,
        })
    }
}

impl TryFrom<StreamRequest> for json::StreamRequest {
    type Error = Incomplete;
    fn try_from(p: StreamRequest) -> Result<Self, Incomplete> {
        use stream_request::Request as R;
        Ok(match p.request.ok_or_else(|| missing("a request"))? {
            R::Close(_) => json::StreamRequest::Close,
            R::Execute(e) => json::StreamRequest::Execute {
                stmt: e
                    .stmt
                    .ok_or_else(|| missing("an execute's stmt"))?
                    .try_into()?,
            },
            R::Batch(b) => json::StreamRequest::Batch {
                batch: b
                    .batch
                    .ok_or_else(|| missing("a batch's batch"))?
                    .try_into()?,
            },
            R::Sequence(s) => json::StreamRequest::Sequence {
                sql: s.sql,
                sql_id: s.sql_id,
            },
            R::Describe(s) => json::StreamRequest::Describe {
                sql: s.sql,
                sql_id: s.sql_id,
            },
            R::StoreSql(s) => json::StreamRequest::StoreSql {
                sql_id: s.sql_id,
                sql: s.sql,
            },
            R::CloseSql(s) => json::StreamRequest::CloseSql { sql_id: s.sql_id },
            R::GetAutocommit(_) => json::StreamRequest::GetAutocommit,
        })
    }
}

impl TryFrom<Stmt> for json::Stmt {
    type Error = Incomplete;
    fn try_from(p: Stmt) -> Result<Self, Incomplete> {
        Ok(json::Stmt {
            sql: p.sql,
            sql_id: p.sql_id,
            args: p
                .args
                .into_iter()
                .map(json::Value::try_from)
                .collect::<Result<_, _>>()?,
            named_args: p
                .named_args
                .into_iter()
                .map(|a| {
                    Ok(json::NamedArg {
                        name: a.name,
                        value: a
                            .value
                            .ok_or_else(|| missing("a named argument's value"))?
                            .try_into()?,
                    })
                })
                .collect::<Result<_, Incomplete>>()?,
            want_rows: p.want_rows,
        })
    }
}

impl TryFrom<Batch> for json::Batch {
    type Error = Incomplete;
    fn try_from(p: Batch) -> Result<Self, Incomplete> {
        Ok(json::Batch {
            steps: p
                .steps
                .into_iter()
                .map(|s| {
                    Ok(json::BatchStep {
                        stmt: s
                            .stmt
                            .ok_or_else(|| missing("a batch step's stmt"))?
                            .try_into()?,
                        condition: s.condition.map(json::BatchCond::try_from).transpose()?,
                    })
                })
                .collect::<Result<_, Incomplete>>()?,
        })
    }
}

impl TryFrom<BatchCond> for json::BatchCond {
    type Error = Incomplete;
    fn try_from(p: BatchCond) -> Result<Self, Incomplete> {
        use batch_cond::Cond as C;
        let list = |l: CondList| {
            l.conds
                .into_iter()
                .map(json::BatchCond::try_from)
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(match p.cond.ok_or_else(|| missing("a batch condition"))? {
            C::StepOk(step) => json::BatchCond::Ok { step },
            C::StepError(step) => json::BatchCond::Error { step },
            C::Not(c) => json::BatchCond::Not {
                cond: Box::new((*c).try_into()?),
            },
            C::And(l) => json::BatchCond::And { conds: list(l)? },
            C::Or(l) => json::BatchCond::Or { conds: list(l)? },
            C::IsAutocommit(_) => json::BatchCond::IsAutocommit,
        })
    }
}

impl TryFrom<Value> for json::Value {
    type Error = Incomplete;
    fn try_from(p: Value) -> Result<Self, Incomplete> {
        use value::Value as V;
        Ok(match p.value.ok_or_else(|| missing("a value"))? {
            V::Null(_) => json::Value::Null,
            V::Integer(i) => json::Value::Integer(i),
            V::Float(f) => json::Value::Float(f),
            V::Text(t) => json::Value::Text(t),
            V::Blob(b) => json::Value::Blob(b),
        })
    }
}

// ---- JSON types to Protobuf (what a server encodes) ----

impl From<json::PipelineRespBody> for PipelineRespBody {
    fn from(j: json::PipelineRespBody) -> Self {
        PipelineRespBody {
            baton: j.baton,
            base_url: j.base_url,
            results: j.results.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<json::CursorRespBody> for CursorRespBody {
    fn from(j: json::CursorRespBody) -> Self {
        CursorRespBody {
            baton: j.baton,
            base_url: j.base_url,
        }
    }
}

impl From<json::StreamResult> for StreamResult {
    fn from(j: json::StreamResult) -> Self {
        StreamResult {
            result: Some(match j {
                json::StreamResult::Ok { response } => stream_result::Result::Ok(response.into()),
                json::StreamResult::Error { error } => stream_result::Result::Error(error.into()),
            }),
        }
    }
}

impl From<json::StreamResponse> for StreamResponse {
    fn from(j: json::StreamResponse) -> Self {
        use stream_response::Response as R;
        let response = match j {
            json::StreamResponse::Close => Some(R::Close(Empty {})),
            json::StreamResponse::Execute { result } => Some(R::Execute(ExecuteStreamResp {
                result: Some(result.into()),
            })),
            json::StreamResponse::Batch { result } => Some(R::Batch(BatchStreamResp {
                result: Some(result.into()),
            })),
            json::StreamResponse::Sequence => Some(R::Sequence(Empty {})),
            json::StreamResponse::Describe { result } => Some(R::Describe(DescribeStreamResp {
                result: Some(result.into()),
            })),
            json::StreamResponse::StoreSql => Some(R::StoreSql(Empty {})),
            json::StreamResponse::CloseSql => Some(R::CloseSql(Empty {})),
            json::StreamResponse::GetAutocommit { is_autocommit } => {
                Some(R::GetAutocommit(GetAutocommitStreamResp { is_autocommit }))
            }
            json::StreamResponse::Unknown => None,
        };
        StreamResponse { response }
    }
}

/// A decimal rowid as the `sint64` of the Protobuf encoding (a rowid that
/// is not an integer, which no server sends, is dropped).
fn rowid_to_pb(r: Option<String>) -> Option<i64> {
    r.and_then(|r| r.parse().ok())
}

impl From<json::StmtResult> for StmtResult {
    fn from(j: json::StmtResult) -> Self {
        StmtResult {
            cols: j.cols.into_iter().map(Into::into).collect(),
            rows: j
                .rows
                .into_iter()
                .map(|r| Row {
                    values: r.into_iter().map(Into::into).collect(),
                })
                .collect(),
            affected_row_count: j.affected_row_count,
            last_insert_rowid: rowid_to_pb(j.last_insert_rowid),
            rows_read: j.rows_read,
            rows_written: j.rows_written,
            query_duration_ms: j.query_duration_ms,
        }
    }
}

impl From<json::Col> for Col {
    fn from(j: json::Col) -> Self {
        Col {
            name: j.name,
            decltype: j.decltype,
        }
    }
}

impl From<json::BatchResult> for BatchResult {
    fn from(j: json::BatchResult) -> Self {
        BatchResult {
            step_results: j
                .step_results
                .into_iter()
                .enumerate()
                .filter_map(|(i, r)| Some((i as u32, r?.into())))
                .collect(),
            step_errors: j
                .step_errors
                .into_iter()
                .enumerate()
                .filter_map(|(i, e)| Some((i as u32, e?.into())))
                .collect(),
        }
    }
}

impl From<json::DescribeResult> for DescribeResult {
    fn from(j: json::DescribeResult) -> Self {
        DescribeResult {
            params: j
                .params
                .into_iter()
                .map(|p| DescribeParam { name: p.name })
                .collect(),
            cols: j
                .cols
                .into_iter()
                .map(|c| DescribeCol {
                    name: c.name.unwrap_or_default(),
                    decltype: c.decltype,
                })
                .collect(),
            is_explain: j.is_explain,
            is_readonly: j.is_readonly,
        }
    }
}

impl From<json::Error> for Error {
    fn from(j: json::Error) -> Self {
        Error {
            message: j.message,
            code: j.code.unwrap_or_default(),
        }
    }
}

impl From<json::CursorEntry> for CursorEntry {
    fn from(j: json::CursorEntry) -> Self {
        use cursor_entry::Entry as E;
        let entry = match j {
            json::CursorEntry::StepBegin { step, cols } => E::StepBegin(StepBeginEntry {
                step,
                cols: cols.into_iter().map(Into::into).collect(),
            }),
            json::CursorEntry::StepEnd {
                affected_row_count,
                last_insert_rowid,
            } => E::StepEnd(StepEndEntry {
                affected_row_count,
                last_insert_rowid: rowid_to_pb(last_insert_rowid),
            }),
            json::CursorEntry::StepError { step, error } => E::StepError(StepErrorEntry {
                step,
                error: Some(error.into()),
            }),
            json::CursorEntry::Row { row } => E::Row(Row {
                values: row.into_iter().map(Into::into).collect(),
            }),
            json::CursorEntry::Error { error } => E::Error(error.into()),
        };
        CursorEntry { entry: Some(entry) }
    }
}

impl From<json::Value> for Value {
    fn from(j: json::Value) -> Self {
        Value::from(&j)
    }
}

impl From<&json::Value> for Value {
    fn from(j: &json::Value) -> Self {
        use value::Value as V;
        Value {
            value: Some(match j {
                json::Value::Null => V::Null(Empty {}),
                json::Value::Integer(i) => V::Integer(*i),
                json::Value::Float(f) => V::Float(*f),
                json::Value::Text(t) => V::Text(t.clone()),
                json::Value::Blob(b) => V::Blob(b.clone()),
            }),
        }
    }
}

// ---- the reverse directions, for clients (and tests) ----

impl From<json::PipelineReqBody> for PipelineReqBody {
    fn from(j: json::PipelineReqBody) -> Self {
        PipelineReqBody {
            baton: j.baton,
            requests: j.requests.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<json::CursorReqBody> for CursorReqBody {
    fn from(j: json::CursorReqBody) -> Self {
        CursorReqBody {
            baton: j.baton,
            batch: Some(j.batch.into()),
        }
    }
}

impl From<json::StreamRequest> for StreamRequest {
    fn from(j: json::StreamRequest) -> Self {
        use stream_request::Request as R;
        let request = match j {
            json::StreamRequest::Close => R::Close(Empty {}),
            json::StreamRequest::Execute { stmt } => R::Execute(ExecuteStreamReq {
                stmt: Some(stmt.into()),
            }),
            json::StreamRequest::Batch { batch } => R::Batch(BatchStreamReq {
                batch: Some(batch.into()),
            }),
            json::StreamRequest::Sequence { sql, sql_id } => R::Sequence(SqlRef { sql, sql_id }),
            json::StreamRequest::Describe { sql, sql_id } => R::Describe(SqlRef { sql, sql_id }),
            json::StreamRequest::StoreSql { sql_id, sql } => {
                R::StoreSql(StoreSqlStreamReq { sql_id, sql })
            }
            json::StreamRequest::CloseSql { sql_id } => R::CloseSql(CloseSqlStreamReq { sql_id }),
            json::StreamRequest::GetAutocommit => R::GetAutocommit(Empty {}),
        };
        StreamRequest {
            request: Some(request),
        }
    }
}

impl From<json::Stmt> for Stmt {
    fn from(j: json::Stmt) -> Self {
        Stmt {
            sql: j.sql,
            sql_id: j.sql_id,
            args: j.args.into_iter().map(Into::into).collect(),
            named_args: j
                .named_args
                .into_iter()
                .map(|a| NamedArg {
                    name: a.name,
                    value: Some(a.value.into()),
                })
                .collect(),
            want_rows: j.want_rows,
        }
    }
}

impl From<json::Batch> for Batch {
    fn from(j: json::Batch) -> Self {
        Batch {
            steps: j
                .steps
                .into_iter()
                .map(|s| BatchStep {
                    condition: s.condition.map(Into::into),
                    stmt: Some(s.stmt.into()),
                })
                .collect(),
        }
    }
}

impl From<json::BatchCond> for BatchCond {
    fn from(j: json::BatchCond) -> Self {
        use batch_cond::Cond as C;
        let list = |conds: Vec<json::BatchCond>| CondList {
            conds: conds.into_iter().map(Into::into).collect(),
        };
        BatchCond {
            cond: Some(match j {
                json::BatchCond::Ok { step } => C::StepOk(step),
                json::BatchCond::Error { step } => C::StepError(step),
                json::BatchCond::Not { cond } => C::Not(Box::new((*cond).into())),
                json::BatchCond::And { conds } => C::And(list(conds)),
                json::BatchCond::Or { conds } => C::Or(list(conds)),
                json::BatchCond::IsAutocommit => C::IsAutocommit(Empty {}),
            }),
        }
    }
}

impl From<PipelineRespBody> for json::PipelineRespBody {
    fn from(p: PipelineRespBody) -> Self {
        json::PipelineRespBody {
            baton: p.baton,
            base_url: p.base_url,
            results: p.results.into_iter().map(Into::into).collect(),
            lock_wait_us: 0,
        }
    }
}

impl From<CursorRespBody> for json::CursorRespBody {
    fn from(p: CursorRespBody) -> Self {
        json::CursorRespBody {
            baton: p.baton,
            base_url: p.base_url,
        }
    }
}

/// A result with no `oneof` member (a newer server's kind of result) is
/// an `ok` of an unknown response: whoever needs a particular response
/// sees that this is not it.
impl From<StreamResult> for json::StreamResult {
    fn from(p: StreamResult) -> Self {
        match p.result {
            Some(stream_result::Result::Error(error)) => json::StreamResult::Error {
                error: error.into(),
            },
            Some(stream_result::Result::Ok(response)) => json::StreamResult::Ok {
                response: response.into(),
            },
            None => json::StreamResult::Ok {
                response: json::StreamResponse::Unknown,
            },
        }
    }
}

impl From<StreamResponse> for json::StreamResponse {
    fn from(p: StreamResponse) -> Self {
        use stream_response::Response as R;
        match p.response {
            Some(R::Close(_)) => json::StreamResponse::Close,
            Some(R::Execute(e)) => json::StreamResponse::Execute {
                result: e.result.unwrap_or_default().into(),
            },
            Some(R::Batch(b)) => json::StreamResponse::Batch {
                result: b.result.unwrap_or_default().into(),
            },
            Some(R::Sequence(_)) => json::StreamResponse::Sequence,
            Some(R::Describe(d)) => json::StreamResponse::Describe {
                result: d.result.unwrap_or_default().into(),
            },
            Some(R::StoreSql(_)) => json::StreamResponse::StoreSql,
            Some(R::CloseSql(_)) => json::StreamResponse::CloseSql,
            Some(R::GetAutocommit(g)) => json::StreamResponse::GetAutocommit {
                is_autocommit: g.is_autocommit,
            },
            None => json::StreamResponse::Unknown,
        }
    }
}

impl From<StmtResult> for json::StmtResult {
    fn from(p: StmtResult) -> Self {
        json::StmtResult {
            cols: p.cols.into_iter().map(Into::into).collect(),
            rows: p
                .rows
                .into_iter()
                .map(|r| r.values.into_iter().map(value_from_pb).collect())
                .collect(),
            affected_row_count: p.affected_row_count,
            last_insert_rowid: p.last_insert_rowid.map(|r| r.to_string()),
            rows_read: p.rows_read,
            rows_written: p.rows_written,
            query_duration_ms: p.query_duration_ms,
        }
    }
}

impl From<Col> for json::Col {
    fn from(p: Col) -> Self {
        json::Col {
            name: p.name,
            decltype: p.decltype,
        }
    }
}

impl From<BatchResult> for json::BatchResult {
    fn from(p: BatchResult) -> Self {
        let len = p
            .step_results
            .keys()
            .chain(p.step_errors.keys())
            .max()
            .map_or(0, |&k| k as usize + 1);
        let mut step_results = vec![None; len];
        let mut step_errors = vec![None; len];
        for (k, r) in p.step_results {
            step_results[k as usize] = Some(r.into());
        }
        for (k, e) in p.step_errors {
            step_errors[k as usize] = Some(e.into());
        }
        json::BatchResult {
            step_results,
            step_errors,
        }
    }
}

impl From<DescribeResult> for json::DescribeResult {
    fn from(p: DescribeResult) -> Self {
        json::DescribeResult {
            params: p
                .params
                .into_iter()
                .map(|d| json::DescribeParam { name: d.name })
                .collect(),
            cols: p
                .cols
                .into_iter()
                .map(|c| json::Col {
                    name: Some(c.name),
                    decltype: c.decltype,
                })
                .collect(),
            is_explain: p.is_explain,
            is_readonly: p.is_readonly,
        }
    }
}

impl From<Error> for json::Error {
    fn from(p: Error) -> Self {
        json::Error {
            message: p.message,
            code: (!p.code.is_empty()).then_some(p.code),
        }
    }
}

/// A cursor entry as a client reads it: `None` for an entry with no
/// `oneof` member this crate knows (sqld's `replication_index`, or a newer
/// kind), which a client skips, as with [`json::CursorEntry::decode`].
pub fn cursor_entry_from_pb(p: CursorEntry) -> Option<json::CursorEntry> {
    use cursor_entry::Entry as E;
    Some(match p.entry? {
        E::StepBegin(b) => json::CursorEntry::StepBegin {
            step: b.step,
            cols: b.cols.into_iter().map(Into::into).collect(),
        },
        E::StepEnd(e) => json::CursorEntry::StepEnd {
            affected_row_count: e.affected_row_count,
            last_insert_rowid: e.last_insert_rowid.map(|r| r.to_string()),
        },
        E::StepError(e) => json::CursorEntry::StepError {
            step: e.step,
            error: e.error.unwrap_or_default().into(),
        },
        E::Row(r) => json::CursorEntry::Row {
            row: r.values.into_iter().map(value_from_pb).collect(),
        },
        E::Error(e) => json::CursorEntry::Error { error: e.into() },
    })
}

/// A value from a server; one with no `oneof` member (a newer kind of
/// value) cannot be represented and reads as NULL.
fn value_from_pb(p: Value) -> json::Value {
    json::Value::try_from(p).unwrap_or(json::Value::Null)
}

// ---- reading a Protobuf cursor body (clients) ----

/// Cuts a `/v3-protobuf/cursor` body into its messages: each is
/// length-delimited (a varint length, then that many bytes), the first a
/// [`CursorRespBody`], every later one a [`CursorEntry`]. Bytes are fed as
/// they arrive; at most one incomplete message (plus the chunk being split)
/// is held, and a declared length over `max_frame` is refused before any of
/// it is buffered.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    max_frame: usize,
}

/// What [`FrameReader::next_frame`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A whole message: [`FrameReader::bytes`] of this range, valid until
    /// the next [`FrameReader::feed`].
    Full(std::ops::Range<usize>),
    /// No whole message is buffered: feed more bytes.
    Need,
}

/// A body that cannot be cut into messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A length prefix that is not a varint of at most 64 bits.
    BadLength,
    /// A declared message length over the limit.
    TooLarge(u64),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::BadLength => f.write_str("invalid length prefix"),
            FrameError::TooLarge(n) => write!(f, "a message of {n} bytes"),
        }
    }
}

impl FrameReader {
    /// A reader refusing messages longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameReader {
            max_frame,
            ..Default::default()
        }
    }

    /// The longest message accepted.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Append bytes of the body (dropping the messages already taken).
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, if buffered.
    pub fn next_frame(&mut self) -> Result<Frame, FrameError> {
        let pending = &self.buf[self.start..];
        let mut len: u64 = 0;
        let mut prefix = 0;
        loop {
            let Some(&b) = pending.get(prefix) else {
                return Ok(Frame::Need);
            };
            // The tenth byte of a varint may only hold the 64th bit.
            if prefix == 9 && b > 1 {
                return Err(FrameError::BadLength);
            }
            len |= u64::from(b & 0x7f) << (7 * prefix);
            prefix += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if len > self.max_frame as u64 {
            return Err(FrameError::TooLarge(len));
        }
        let len = len as usize;
        if pending.len() - prefix < len {
            return Ok(Frame::Need);
        }
        let from = self.start + prefix;
        self.start = from + len;
        Ok(Frame::Full(from..from + len))
    }

    /// The bytes of a message [`next_frame`](Self::next_frame) returned.
    pub fn bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// Bytes received that make no whole message yet: at the end of the
    /// body, anything but 0 means it was cut inside a message.
    pub fn leftover(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// Why a cursor entry could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

/// One message of a Protobuf cursor body after its header, as a client
/// reads it: `None` for an entry to skip (sqld's `replication_index`, or a
/// kind this crate does not know), an error for anything malformed. Unlike
/// [`cursor_entry_from_pb`], a value of an unknown kind is an error (as in
/// JSON), never read as NULL.
pub fn decode_cursor_entry(bytes: &[u8]) -> Result<Option<json::CursorEntry>, DecodeError> {
    decode_cursor_entry_sized(bytes, 0)
}

/// [`decode_cursor_entry`] with the expected width of a row (the columns
/// of the step), so a row's values are allocated once.
///
/// A row entry in the shape servers send — the entry holds only `row`, the
/// row only `values`, each value one known member — is decoded straight
/// into [`json::Value`]s; anything else (unknown fields, a malformed or
/// unusual encoding) goes through the generic decoder, which gives the same
/// values for the same bytes and reports what is wrong.
pub fn decode_cursor_entry_sized(
    bytes: &[u8],
    width: usize,
) -> Result<Option<json::CursorEntry>, DecodeError> {
    if let Some(row) = fast_row(bytes, width) {
        return Ok(Some(json::CursorEntry::Row { row }));
    }
    decode_cursor_entry_generic(bytes)
}

/// A varint at `*pos` (at most 10 bytes, 64 bits); `None` if cut or too long.
fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let b = *buf.get(*pos)?;
        *pos += 1;
        if i == 9 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// `len` bytes at `*pos` (after a length prefix).
fn delimited<'a>(buf: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let len = usize::try_from(varint(buf, pos)?).ok()?;
    let end = pos.checked_add(len)?;
    let out = buf.get(*pos..end)?;
    *pos = end;
    Some(out)
}

/// The fast path of [`decode_cursor_entry_sized`]: `None` for anything but
/// a plainly encoded row entry.
fn fast_row(bytes: &[u8], width: usize) -> Option<Vec<json::Value>> {
    // CursorEntry { row (4, length-delimited) } and nothing else.
    if bytes.first() != Some(&0x22) {
        return None;
    }
    let mut pos = 1;
    let row = delimited(bytes, &mut pos)?;
    if pos != bytes.len() {
        return None;
    }
    let mut values = Vec::with_capacity(width);
    let mut pos = 0;
    while pos < row.len() {
        // Row { values (1, length-delimited) }.
        if row[pos] != 0x0a {
            return None;
        }
        pos += 1;
        values.push(fast_value(delimited(row, &mut pos)?)?);
    }
    Some(values)
}

/// One `Value` message with known members only (the last one wins, as in
/// any Protobuf decoder); `None` otherwise.
fn fast_value(v: &[u8]) -> Option<json::Value> {
    let mut out = None;
    let mut pos = 0;
    while pos < v.len() {
        let tag = v[pos];
        pos += 1;
        out = Some(match tag {
            // null (1): an empty message.
            0x0a => {
                if !delimited(v, &mut pos)?.is_empty() {
                    return None;
                }
                json::Value::Null
            }
            // integer (2): sint64, zigzag.
            0x10 => {
                let z = varint(v, &mut pos)?;
                json::Value::Integer(((z >> 1) as i64) ^ -((z & 1) as i64))
            }
            // float (3): double, fixed 8 bytes little-endian.
            0x19 => {
                let b: [u8; 8] = v.get(pos..pos + 8)?.try_into().ok()?;
                pos += 8;
                json::Value::Float(f64::from_le_bytes(b))
            }
            // text (4): UTF-8.
            0x22 => json::Value::Text(std::str::from_utf8(delimited(v, &mut pos)?).ok()?.into()),
            // blob (5).
            0x2a => json::Value::Blob(delimited(v, &mut pos)?.to_vec()),
            _ => return None,
        });
    }
    out
}

/// The generic path of [`decode_cursor_entry_sized`] (prost's decoder).
pub fn decode_cursor_entry_generic(bytes: &[u8]) -> Result<Option<json::CursorEntry>, DecodeError> {
    use prost::Message as _;
    let entry = CursorEntry::decode(bytes).map_err(|e| DecodeError(e.to_string()))?;
    if let Some(cursor_entry::Entry::Row(row)) = entry.entry {
        let row = row
            .values
            .into_iter()
            .map(|v| json::Value::try_from(v).map_err(|e| DecodeError(e.0)))
            .collect::<Result<_, _>>()?;
        return Ok(Some(json::CursorEntry::Row { row }));
    }
    Ok(cursor_entry_from_pb(entry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// Bytes written by hand from the spec's schema: a mistake in a field
    /// number or type here would be invisible to a round trip.
    #[test]
    fn wire_bytes_follow_the_schema() {
        // Value.integer = 2 (sint64, zigzag): -1 -> 1.
        let v: Value = (&json::Value::Integer(-1)).into();
        assert_eq!(v.encode_to_vec(), [0x10, 0x01]);
        // Value.null = 1 (empty message).
        let v: Value = (&json::Value::Null).into();
        assert_eq!(v.encode_to_vec(), [0x0a, 0x00]);
        // Value.float = 3 (double, fixed64).
        let v: Value = (&json::Value::Float(1.0)).into();
        assert_eq!(v.encode_to_vec(), [0x19, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f]);
        // Value.text = 4, Value.blob = 5 (length-delimited).
        let v: Value = (&json::Value::Text("hi".into())).into();
        assert_eq!(v.encode_to_vec(), [0x22, 2, b'h', b'i']);
        let v: Value = (&json::Value::Blob(vec![7])).into();
        assert_eq!(v.encode_to_vec(), [0x2a, 1, 7]);
        // StreamRequest.close = 1; PipelineReqBody.requests = 2.
        let body: PipelineReqBody = json::PipelineReqBody {
            baton: None,
            requests: vec![json::StreamRequest::Close],
        }
        .into();
        assert_eq!(body.encode_to_vec(), [0x12, 2, 0x0a, 0x00]);
        // BatchCond.step_error = 2 (uint32).
        let c: BatchCond = json::BatchCond::Error { step: 3 }.into();
        assert_eq!(c.encode_to_vec(), [0x10, 3]);
        // BatchResult.step_errors = 2: map entry {key = 1: 1, value = 2: Error}.
        let r: BatchResult = json::BatchResult {
            step_results: vec![None, None],
            step_errors: vec![
                None,
                Some(json::Error {
                    message: "m".into(),
                    code: None,
                }),
            ],
        }
        .into();
        assert_eq!(
            r.encode_to_vec(),
            [0x12, 7, 0x08, 1, 0x12, 3, 0x0a, 1, b'm']
        );
        // StmtResult.last_insert_rowid = 4 (sint64): 5 -> 10.
        let r: StmtResult = json::StmtResult {
            last_insert_rowid: Some("5".into()),
            ..Default::default()
        }
        .into();
        assert_eq!(r.encode_to_vec(), [0x20, 10]);
        // CursorEntry.step_end = 2 {affected_row_count = 1: 1}.
        let e: CursorEntry = json::CursorEntry::StepEnd {
            affected_row_count: 1,
            last_insert_rowid: None,
        }
        .into();
        assert_eq!(e.encode_to_vec(), [0x12, 2, 0x08, 1]);
    }

    #[test]
    fn unknown_members_are_skipped() {
        // sqld's CursorEntry.replication_index = 6 (uint64 12).
        let e = CursorEntry::decode(&[0x30, 12][..]).unwrap();
        assert_eq!(cursor_entry_from_pb(e), None);
        // An unknown field beside a known one.
        let e = CursorEntry::decode(&[0x12, 2, 0x08, 1, 0xf8, 0x07, 1][..]).unwrap();
        assert_eq!(
            cursor_entry_from_pb(e),
            Some(json::CursorEntry::StepEnd {
                affected_row_count: 1,
                last_insert_rowid: None
            })
        );
        // A request of an unknown kind decodes, but makes no request.
        let r = PipelineReqBody::decode(&[0x12, 2, 0x4a, 0x00][..]).unwrap();
        assert!(json::PipelineReqBody::try_from(r).is_err());
    }

    proptest::proptest! {
        /// Whatever bytes a peer sends, decoding and converting them is a
        /// value or an error, never a panic (prost bounds nesting depth).
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            if let Ok(p) = PipelineReqBody::decode(&bytes[..]) {
                let _ = json::PipelineReqBody::try_from(p);
            }
            if let Ok(p) = CursorReqBody::decode(&bytes[..]) {
                let _ = json::CursorReqBody::try_from(p);
            }
            if let Ok(p) = PipelineRespBody::decode(&bytes[..]) {
                let _ = json::PipelineRespBody::from(p);
            }
            let mut buf = &bytes[..];
            while let Ok(e) = CursorEntry::decode_length_delimited(&mut buf) {
                let _ = cursor_entry_from_pb(e);
            }
        }
    }

    #[test]
    fn deeply_nested_conditions_are_refused() {
        let mut c = json::BatchCond::IsAutocommit;
        for _ in 0..200 {
            c = json::BatchCond::Not { cond: Box::new(c) };
        }
        let bytes = BatchCond::from(c).encode_to_vec();
        assert!(BatchCond::decode(&bytes[..]).is_err());
    }

    #[test]
    fn batch_results_keep_their_step_positions() {
        let j = json::BatchResult {
            step_results: vec![Some(json::StmtResult::default()), None, None],
            step_errors: vec![
                None,
                Some(json::Error {
                    message: "m".into(),
                    code: Some("C".into()),
                }),
                None,
            ],
        };
        let back: json::BatchResult =
            BatchResult::decode(&*BatchResult::from(j.clone()).encode_to_vec())
                .unwrap()
                .into();
        // The trailing skipped step is not on the wire.
        assert_eq!(back.step_results, j.step_results[..2]);
        assert_eq!(back.step_errors, j.step_errors[..2]);
    }
}
