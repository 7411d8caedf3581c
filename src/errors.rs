//! Raising Postgres errors with SQLSTATE, DETAIL and HINT.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// An error (or warning) under construction: `raise(code, msg).detail(..).hint(..).error()`.
pub struct Raise(ErrorReport);

#[track_caller]
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>) -> Raise {
    Raise(ErrorReport::new(code, message.into(), "conductor"))
}

impl Raise {
    pub fn detail(self, detail: impl Into<String>) -> Self {
        Raise(self.0.set_detail(detail))
    }

    pub fn hint(self, hint: impl Into<String>) -> Self {
        Raise(self.0.set_hint(hint))
    }

    pub fn error(self) -> ! {
        self.0.report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }

    pub fn warning(self) {
        self.0.report(PgLogLevel::WARNING);
    }
}
