//! Merge: turn the shards' row streams into the one stream the FDW reads.
//!
//! For now that is a plain union in arrival order (what [`ScanHandle`]
//! yields), flattened to one row at a time. k-way merge for pushed ORDER BY,
//! first-n for LIMIT and partial-aggregate combining come later.

use crate::executor::{ScanHandle, ScanPoll, ShardError};
use conductor_hrana::Value;
use std::time::Duration;

/// What [`Union::next_row`] saw within its wait.
#[derive(Debug)]
pub enum RowPoll {
    /// One row and the shard it came from.
    Row {
        /// The shard the row came from.
        shard_id: u32,
        /// The row's values, as many as the scan asked for.
        row: Vec<Value>,
    },
    /// Nothing arrived within the wait: check for cancel, then call again.
    Pending,
    /// Every shard finished and every row was handed out.
    Done,
    /// A shard failed; the scan is aborted.
    Failed(ShardError),
}

/// The union of all shards of a scan, row by row, in arrival order.
#[derive(Debug)]
pub struct Union {
    scan: ScanHandle,
    current: Option<(u32, std::vec::IntoIter<Vec<Value>>)>,
}

impl Union {
    /// Flatten `scan` into single rows.
    pub fn new(scan: ScanHandle) -> Self {
        Union {
            scan,
            current: None,
        }
    }

    /// The next row, waiting up to `wait` when none is buffered.
    pub fn next_row(&mut self, wait: Duration) -> RowPoll {
        loop {
            if let Some((shard_id, rows)) = &mut self.current {
                if let Some(row) = rows.next() {
                    return RowPoll::Row {
                        shard_id: *shard_id,
                        row,
                    };
                }
                self.current = None;
            }
            match self.scan.next(wait) {
                ScanPoll::Rows(c) => self.current = Some((c.shard_id, c.rows.into_iter())),
                ScanPoll::Pending => return RowPoll::Pending,
                ScanPoll::Done => return RowPoll::Done,
                ScanPoll::Failed(e) => return RowPoll::Failed(e),
            }
        }
    }

    /// The underlying scan (stats, abort).
    pub fn scan(&self) -> &ScanHandle {
        &self.scan
    }

    /// The underlying scan, mutably.
    pub fn scan_mut(&mut self) -> &mut ScanHandle {
        &mut self.scan
    }
}
