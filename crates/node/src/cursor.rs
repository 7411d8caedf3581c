//! `/v3/cursor`: a batch whose rows are written out as SQLite produces them.
//!
//! Runs on a blocking thread and sends newline-delimited JSON (or
//! length-delimited Protobuf messages) in chunks of
//! about `CHUNK_BYTES` through a bounded channel to the HTTP body, so the
//! node holds at most `CHANNEL_CHUNKS + 1` chunks of a result however large
//! the table is, and a slow client slows the scan instead of filling memory.

use crate::encoding::Encoding;
use crate::errors::from_sqlite;
use crate::exec::{self, StepOutcomes, StreamCtx};
use crate::stats::Stats;
use bytes::Bytes;
use conductor_hrana::{Batch, CursorEntry, Error, Value};
use rusqlite::Connection;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

pub const CHANNEL_CHUNKS: usize = 4;
const CHUNK_BYTES: usize = 64 * 1024;

/// The client went away; stop executing.
struct Disconnected;

struct Writer<'a> {
    buf: Vec<u8>,
    encoding: Encoding,
    tx: &'a mpsc::Sender<Bytes>,
    /// How long a client may leave a chunk unread before the cursor gives
    /// up (so a stalled client cannot pin a connection and its read
    /// transaction, which would stop WAL checkpoints, forever).
    stall: Duration,
    rt: tokio::runtime::Handle,
}

impl Writer<'_> {
    fn line(&mut self, entry: &CursorEntry) -> Result<(), Disconnected> {
        self.encoding.cursor_entry(entry, &mut self.buf);
        self.written()
    }

    fn row(&mut self, row: &[Value]) -> Result<(), Disconnected> {
        self.encoding.cursor_row(row, &mut self.buf);
        self.written()
    }

    fn written(&mut self) -> Result<(), Disconnected> {
        if self.buf.len() >= CHUNK_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Disconnected> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES + 4096));
        // This runs on a blocking-pool thread, where blocking on the runtime
        // handle is allowed.
        match self.rt.block_on(tokio::time::timeout(
            self.stall,
            self.tx.send(Bytes::from(chunk)),
        )) {
            Ok(Ok(())) => Ok(()),
            _ => Err(Disconnected),
        }
    }
}

/// Where a cursor's body goes, and how it is encoded.
pub struct Output<'a> {
    /// The response body's channel.
    pub tx: &'a mpsc::Sender<Bytes>,
    pub encoding: Encoding,
    /// See `Writer::stall`.
    pub stall: Duration,
}

/// The last chunk of a cursor's body, held back by [`run`]. The caller hands
/// the stream back first and sends this after: a client that has read the
/// whole body then finds the stream free for its next request (a close
/// sent at once would otherwise race the hand-back and be refused as busy).
pub struct Tail<'a>(Option<Writer<'a>>);

impl Tail<'_> {
    pub fn send(self) {
        if let Some(mut w) = self.0 {
            let _ = w.flush();
        }
    }
}

/// Writes `first_line` (the encoded `CursorRespBody`) then the batch's
/// entries to `out`, all but the last chunk (see [`Tail`]). Call from a
/// blocking-pool thread of the runtime.
pub fn run<'a>(
    conn: &Connection,
    ctx: &StreamCtx,
    batch: &Batch,
    first_line: Vec<u8>,
    out: Output<'a>,
    stats: &Stats,
) -> Tail<'a> {
    let mut w = Writer {
        buf: first_line,
        encoding: out.encoding,
        tx: out.tx,
        stall: out.stall,
        rt: tokio::runtime::Handle::current(),
    };
    match run_steps(conn, ctx, batch, &mut w, stats) {
        Ok(()) => Tail(Some(w)),
        Err(Disconnected) => Tail(None),
    }
}

fn run_steps(
    conn: &Connection,
    ctx: &StreamCtx,
    batch: &Batch,
    w: &mut Writer<'_>,
    stats: &Stats,
) -> Result<(), Disconnected> {
    let mut outcomes = StepOutcomes::new(batch.steps.len());
    for (i, step) in batch.steps.iter().enumerate() {
        if let Some(cond) = &step.condition {
            match outcomes.eval(cond, i, conn) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(error) => return w.line(&CursorEntry::Error { error }),
            }
        }
        stats.statements.fetch_add(1, Ordering::Relaxed);
        let ok = run_step(conn, ctx, i as u32, &step.stmt, w, stats)?;
        outcomes.record(i, ok);
    }
    Ok(())
}

/// One step: `step_begin`, rows, `step_end` — or `step_error` at any point.
fn run_step(
    conn: &Connection,
    ctx: &StreamCtx,
    step: u32,
    stmt: &conductor_hrana::Stmt,
    w: &mut Writer<'_>,
    stats: &Stats,
) -> Result<bool, Disconnected> {
    let step_error = |w: &mut Writer<'_>, error: Error| {
        w.line(&CursorEntry::StepError { step, error })
            .map(|()| false)
    };
    let mut prepared = match exec::prepare(conn, &ctx.sqls, stmt) {
        Ok(p) => p,
        Err(e) => return step_error(w, e),
    };
    let before = conn.total_changes();
    let cols = exec::columns(&prepared);
    let ncols = cols.len();
    w.line(&CursorEntry::StepBegin { step, cols })?;
    let want_rows = stmt.want_rows.unwrap_or(true);
    let mut row_buf: Vec<Value> = Vec::with_capacity(ncols);
    let mut rows = prepared.raw_query();
    let mut stepped = 0u64;
    loop {
        let row = match rows.next() {
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(e) => return step_error(w, from_sqlite(e)),
        };
        stepped += 1;
        if !want_rows {
            continue;
        }
        row_buf.clear();
        for i in 0..ncols {
            row_buf.push(exec::to_value(row.get_ref_unwrap(i)));
        }
        if w.encoding == Encoding::Json {
            if let Some(e) = exec::unrepresentable_in_json(&row_buf) {
                return step_error(w, e);
            }
        }
        w.row(&row_buf)?;
    }
    drop(rows);
    let written = conn.total_changes().saturating_sub(before);
    stats.add_rows(stepped.max(written), written);
    w.line(&CursorEntry::StepEnd {
        affected_row_count: exec::affected_rows(conn, before),
        last_insert_rowid: Some(conn.last_insert_rowid().to_string()),
    })?;
    Ok(true)
}

/// The `error` entry for a cursor whose stream could not be set up.
pub fn fatal(first_line: Vec<u8>, error: Error, encoding: Encoding) -> Bytes {
    let mut buf = first_line;
    encoding.cursor_entry(&CursorEntry::Error { error }, &mut buf);
    Bytes::from(buf)
}
