//! Work that follows the Postgres transaction's outcome: the remote write
//! transactions on the nodes (`streams`) and node DDL that waits for commit
//! (`ddl`). One pair of callbacks dispatches both.

pub mod autocommit;
pub mod changed;
pub mod ddl;
pub mod streams;

use pgrx::prelude::*;

pub use ddl::on_commit;

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        // The last moment an ERROR can still abort the transaction.
        XACT_EVENT_PRE_COMMIT => streams::commit_all(),
        XACT_EVENT_PRE_PREPARE => {
            streams::refuse_prepare();
            ddl::refuse_prepare();
        }
        XACT_EVENT_COMMIT => {
            autocommit::release_cancel_at_commit();
            crate::stats::at_commit();
            ddl::at_commit();
            crate::vindex::repair_observed();
            crate::catalog::credentials::forget_remembered();
            changed::forget();
        }
        XACT_EVENT_ABORT => {
            autocommit::release_cancel();
            crate::stats::at_abort();
            streams::rollback_all();
            ddl::at_abort();
            crate::vindex::forget_observed();
            crate::catalog::credentials::forget_remembered();
            changed::forget();
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    // SAFETY: reads backend transaction state.
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    match event {
        SUBXACT_EVENT_ABORT_SUB => {
            crate::stats::at_subabort(level);
            streams::rollback_to(level);
            ddl::at_subabort(level);
        }
        SUBXACT_EVENT_COMMIT_SUB => {
            streams::release(level);
            ddl::at_subcommit(level);
        }
        _ => {}
    }
}

pub fn register_callbacks() {
    // SAFETY: registered once per backend from _PG_init; the callbacks only
    // touch this backend's thread-local state.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}
