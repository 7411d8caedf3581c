//! Configuration parameters (`SET conductor.…`).

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::time::Duration;

/// Deadline of one shard request, in milliseconds.
pub static REQUEST_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);

/// Rows per INSERT batch when neither the table nor the server sets `batch_size`.
pub static DEFAULT_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(1000);

pub fn init() {
    GucRegistry::define_int_guc(
        c"conductor.request_timeout",
        c"Deadline of one request to a storage node.",
        c"A shard request that has not completed within this time fails with an error naming the node and shard.",
        &REQUEST_TIMEOUT_MS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"conductor.batch_size",
        c"Rows sent to the nodes per INSERT batch, unless the table or server sets batch_size.",
        c"",
        &DEFAULT_BATCH_SIZE,
        1,
        100_000,
        GucContext::Userset,
        GucFlags::default(),
    );
}

pub fn request_timeout() -> Duration {
    Duration::from_millis(REQUEST_TIMEOUT_MS.get().max(1) as u64)
}
