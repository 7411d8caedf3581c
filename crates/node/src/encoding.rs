//! The two encodings of Hrana 3 over HTTP: JSON (`/v2/*`, `/v3/*`) and
//! Protobuf (`/v3-protobuf/*`). Requests are decoded into, and responses
//! encoded from, the same `conductor_hrana` types, so everything between is
//! shared; only the bytes differ.

use crate::errors::{self, code};
use crate::exec;
use crate::handlers::Failure;
use conductor_hrana::protobuf as pb;
use conductor_hrana::{
    CursorEntry, CursorReqBody, CursorRespBody, Error, PipelineReqBody, PipelineRespBody,
    StmtResult, StreamResponse, StreamResult, Value,
};
use prost::Message as _;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Protobuf,
}

impl Encoding {
    /// Content type of a pipeline response or an error body.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Protobuf => "application/x-protobuf",
        }
    }

    /// Content type of a cursor response.
    pub fn cursor_content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/x-ndjson",
            Encoding::Protobuf => "application/octet-stream",
        }
    }

    pub fn pipeline_request(self, body: &[u8]) -> Result<PipelineReqBody, Failure> {
        match self {
            Encoding::Json => parse_json(body, "pipeline"),
            Encoding::Protobuf => parse_pb::<pb::PipelineReqBody, _>(body, "pipeline"),
        }
    }

    pub fn cursor_request(self, body: &[u8]) -> Result<CursorReqBody, Failure> {
        match self {
            Encoding::Json => parse_json(body, "cursor"),
            Encoding::Protobuf => parse_pb::<pb::CursorReqBody, _>(body, "cursor"),
        }
    }

    pub fn pipeline_response(self, resp: PipelineRespBody) -> Result<Vec<u8>, Failure> {
        match self {
            Encoding::Json => {
                let resp = without_non_finite(resp);
                let mut out = Vec::with_capacity(512);
                serde_json::to_writer(&mut out, &resp)
                    .map_err(|e| Failure::internal(format!("encoding the response: {e}")))?;
                Ok(out)
            }
            Encoding::Protobuf => Ok(pb::PipelineRespBody::from(resp).encode_to_vec()),
        }
    }

    /// An error body of a request that failed as a whole.
    pub fn error_body(self, e: &Error) -> Vec<u8> {
        match self {
            Encoding::Json => serde_json::to_vec(e).expect("serializes"),
            Encoding::Protobuf => pb::Error::from(e.clone()).encode_to_vec(),
        }
    }

    /// Appends the first item of a cursor body: a JSON line, or a
    /// length-delimited message.
    pub fn cursor_head(self, head: &CursorRespBody, out: &mut Vec<u8>) {
        match self {
            Encoding::Json => json_line(head, out),
            Encoding::Protobuf => pb::CursorRespBody::from(head.clone())
                .encode_length_delimited(out)
                .expect("a Vec grows"),
        }
    }

    /// Appends one cursor entry.
    pub fn cursor_entry(self, entry: &CursorEntry, out: &mut Vec<u8>) {
        match self {
            Encoding::Json => json_line(entry, out),
            Encoding::Protobuf => pb::CursorEntry::from(entry.clone())
                .encode_length_delimited(out)
                .expect("a Vec grows"),
        }
    }

    /// Appends a `row` entry, borrowing its values (the hot path of a
    /// cursor: one buffer serves every row).
    pub fn cursor_row(self, row: &[Value], out: &mut Vec<u8>) {
        match self {
            Encoding::Json => json_line(&RowEntry { ty: "row", row }, out),
            Encoding::Protobuf => pb::CursorEntry {
                entry: Some(pb::cursor_entry::Entry::Row(pb::Row {
                    values: row.iter().map(pb::Value::from).collect(),
                })),
            }
            .encode_length_delimited(out)
            .expect("a Vec grows"),
        }
    }
}

/// The answer with every statement result that holds a float infinity
/// (which JSON cannot represent) replaced by that statement's error.
fn without_non_finite(mut resp: PipelineRespBody) -> PipelineRespBody {
    let stmt_error = |r: &StmtResult| {
        r.rows
            .iter()
            .find_map(|row| exec::unrepresentable_in_json(row))
    };
    for result in &mut resp.results {
        match result {
            StreamResult::Ok {
                response: StreamResponse::Execute { result: r },
            } => {
                if let Some(error) = stmt_error(r) {
                    *result = StreamResult::Error { error };
                }
            }
            StreamResult::Ok {
                response: StreamResponse::Batch { result: b },
            } => {
                for (r, e) in b.step_results.iter_mut().zip(b.step_errors.iter_mut()) {
                    if let Some(error) = r.as_ref().and_then(stmt_error) {
                        *r = None;
                        *e = Some(error);
                    }
                }
            }
            _ => {}
        }
    }
    resp
}

/// A row entry borrowing its values.
#[derive(Serialize)]
struct RowEntry<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    row: &'a [Value],
}

fn json_line(item: &impl Serialize, out: &mut Vec<u8>) {
    // Serializing our own types cannot fail, except for non-finite floats,
    // which the cursor turns into a step error before writing a JSON row.
    serde_json::to_writer(&mut *out, item).expect("cursor entry serializes");
    out.push(b'\n');
}

fn parse_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| {
        Failure::bad_request(errors::error(
            code::PROTOCOL_ERROR,
            format!("invalid {what} request body: {e}"),
        ))
    })
}

fn parse_pb<P, T>(body: &[u8], what: &str) -> Result<T, Failure>
where
    P: prost::Message + Default + TryInto<T, Error = pb::Incomplete>,
{
    let invalid = |e: String| {
        Failure::bad_request(errors::error(
            code::PROTOCOL_ERROR,
            format!("invalid {what} request body (Protobuf): {e}"),
        ))
    };
    P::decode(body)
        .map_err(|e| invalid(e.to_string()))?
        .try_into()
        .map_err(|e: pb::Incomplete| invalid(e.0))
}
