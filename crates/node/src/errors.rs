//! Errors as the protocol reports them: an `Error {message, code}` per
//! request or batch step, with codes a client can map (the `SQLITE_*` names
//! of SQLite's extended result codes, and sqld's names for protocol errors).

use conductor_hrana::Error;

/// Codes for failures that are not SQLite errors; the names follow sqld.
pub mod code {
    pub const SQL_NO_STATEMENT: &str = "SQL_NO_STATEMENT";
    pub const SQL_MANY_STATEMENTS: &str = "SQL_MANY_STATEMENTS";
    pub const SQL_INPUT_ERROR: &str = "SQL_INPUT_ERROR";
    pub const ARGS_INVALID: &str = "ARGS_INVALID";
    pub const STREAM_CLOSED: &str = "STREAM_CLOSED";
    pub const SQL_STORE_TOO_MANY: &str = "SQL_STORE_TOO_MANY";
    pub const SQL_NOT_FOUND: &str = "SQL_NOT_FOUND";
    pub const BATCH_COND_INVALID: &str = "BATCH_COND_INVALID";
    pub const PROTOCOL_ERROR: &str = "PROTOCOL_ERROR";
    pub const BATON_INVALID: &str = "BATON_INVALID";
    pub const BATON_REUSED: &str = "BATON_REUSED";
    pub const STREAM_EXPIRED: &str = "STREAM_EXPIRED";
    pub const STREAM_BUSY: &str = "STREAM_BUSY";
    pub const TOO_MANY_STREAMS: &str = "TOO_MANY_STREAMS";
    pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
    pub const NOT_FOUND: &str = "NOT_FOUND";
    pub const BODY_TOO_LARGE: &str = "BODY_TOO_LARGE";
    pub const INTERNAL: &str = "INTERNAL_ERROR";
    pub const VALUE_NOT_REPRESENTABLE: &str = "VALUE_NOT_REPRESENTABLE";
    pub const RESPONSE_TOO_LARGE: &str = "RESPONSE_TOO_LARGE";
}

pub fn error(code: &str, message: impl Into<String>) -> Error {
    Error {
        message: message.into(),
        code: Some(code.to_owned()),
    }
}

/// A rusqlite error as the protocol reports it.
/// Whether a statement failed only because a lock it needed was held by
/// another connection (it changed nothing, so it may run again).
pub fn lock_was_taken(e: &Error) -> bool {
    let code = e.code.as_deref().unwrap_or("");
    code.starts_with("SQLITE_BUSY") || code.starts_with("SQLITE_LOCKED")
}

pub fn from_sqlite(e: rusqlite::Error) -> Error {
    match e {
        rusqlite::Error::SqliteFailure(err, msg) => {
            let message = msg.unwrap_or_else(|| err.to_string());
            Error {
                message,
                code: Some(sqlite_code_name(err.extended_code).to_owned()),
            }
        }
        // A prepare error: the message names the token's offset.
        rusqlite::Error::SqlInputError {
            error, msg, offset, ..
        } => Error {
            message: if offset >= 0 {
                format!("{msg} (at byte {offset} of the SQL)")
            } else {
                msg
            },
            code: Some(sqlite_code_name(error.extended_code).to_owned()),
        },
        rusqlite::Error::Empty => error(code::SQL_NO_STATEMENT, "the SQL text has no statement"),
        rusqlite::Error::MultipleStatement => error(
            code::SQL_MANY_STATEMENTS,
            "the SQL text has more than one statement; send one statement per `sql` \
             (or use a `sequence` request)",
        ),
        rusqlite::Error::InvalidParameterName(n) => error(
            code::ARGS_INVALID,
            format!("the statement has no parameter named {n:?}"),
        ),
        rusqlite::Error::InvalidParameterCount(given, expected) => error(
            code::ARGS_INVALID,
            format!("{given} arguments given, the statement has {expected} parameters"),
        ),
        rusqlite::Error::NulError(_) => error(code::SQL_INPUT_ERROR, "the SQL text contains NUL"),
        other => error(code::INTERNAL, other.to_string()),
    }
}

/// The name of a SQLite (extended) result code, e.g. 1555 →
/// `SQLITE_CONSTRAINT_PRIMARYKEY`. An extended name always starts with its
/// primary code's name, so a client matching the prefix `SQLITE_CONSTRAINT`
/// also understands sqld, which sends primary codes only.
pub fn sqlite_code_name(extended: i32) -> &'static str {
    let ext = extended >> 8;
    let primary = extended & 0xff;
    let named = match (primary, ext) {
        (1, 1) => Some("SQLITE_ERROR_MISSING_COLLSEQ"),
        (1, 2) => Some("SQLITE_ERROR_RETRY"),
        (1, 3) => Some("SQLITE_ERROR_SNAPSHOT"),
        (4, 2) => Some("SQLITE_ABORT_ROLLBACK"),
        (5, 1) => Some("SQLITE_BUSY_RECOVERY"),
        (5, 2) => Some("SQLITE_BUSY_SNAPSHOT"),
        (5, 3) => Some("SQLITE_BUSY_TIMEOUT"),
        (6, 1) => Some("SQLITE_LOCKED_SHAREDCACHE"),
        (6, 2) => Some("SQLITE_LOCKED_VTAB"),
        (8, 1) => Some("SQLITE_READONLY_RECOVERY"),
        (8, 2) => Some("SQLITE_READONLY_CANTLOCK"),
        (8, 3) => Some("SQLITE_READONLY_ROLLBACK"),
        (8, 4) => Some("SQLITE_READONLY_DBMOVED"),
        (8, 5) => Some("SQLITE_READONLY_CANTINIT"),
        (8, 6) => Some("SQLITE_READONLY_DIRECTORY"),
        (10, 1) => Some("SQLITE_IOERR_READ"),
        (10, 2) => Some("SQLITE_IOERR_SHORT_READ"),
        (10, 3) => Some("SQLITE_IOERR_WRITE"),
        (10, 4) => Some("SQLITE_IOERR_FSYNC"),
        (10, 6) => Some("SQLITE_IOERR_TRUNCATE"),
        (10, 10) => Some("SQLITE_IOERR_DELETE"),
        (10, 12) => Some("SQLITE_IOERR_NOMEM"),
        (10, 13) => Some("SQLITE_IOERR_ACCESS"),
        (10, 15) => Some("SQLITE_IOERR_LOCK"),
        (10, 18) => Some("SQLITE_IOERR_SHMOPEN"),
        (10, 19) => Some("SQLITE_IOERR_SHMSIZE"),
        (11, 1) => Some("SQLITE_CORRUPT_VTAB"),
        (11, 2) => Some("SQLITE_CORRUPT_SEQUENCE"),
        (11, 3) => Some("SQLITE_CORRUPT_INDEX"),
        (14, 1) => Some("SQLITE_CANTOPEN_NOTEMPDIR"),
        (14, 2) => Some("SQLITE_CANTOPEN_ISDIR"),
        (14, 3) => Some("SQLITE_CANTOPEN_FULLPATH"),
        (19, 1) => Some("SQLITE_CONSTRAINT_CHECK"),
        (19, 2) => Some("SQLITE_CONSTRAINT_COMMITHOOK"),
        (19, 3) => Some("SQLITE_CONSTRAINT_FOREIGNKEY"),
        (19, 4) => Some("SQLITE_CONSTRAINT_FUNCTION"),
        (19, 5) => Some("SQLITE_CONSTRAINT_NOTNULL"),
        (19, 6) => Some("SQLITE_CONSTRAINT_PRIMARYKEY"),
        (19, 7) => Some("SQLITE_CONSTRAINT_TRIGGER"),
        (19, 8) => Some("SQLITE_CONSTRAINT_UNIQUE"),
        (19, 9) => Some("SQLITE_CONSTRAINT_VTAB"),
        (19, 10) => Some("SQLITE_CONSTRAINT_ROWID"),
        (19, 11) => Some("SQLITE_CONSTRAINT_PINNED"),
        (19, 12) => Some("SQLITE_CONSTRAINT_DATATYPE"),
        (23, 1) => Some("SQLITE_AUTH_USER"),
        _ => None,
    };
    named.unwrap_or(match primary {
        1 => "SQLITE_ERROR",
        2 => "SQLITE_INTERNAL",
        3 => "SQLITE_PERM",
        4 => "SQLITE_ABORT",
        5 => "SQLITE_BUSY",
        6 => "SQLITE_LOCKED",
        7 => "SQLITE_NOMEM",
        8 => "SQLITE_READONLY",
        9 => "SQLITE_INTERRUPT",
        10 => "SQLITE_IOERR",
        11 => "SQLITE_CORRUPT",
        12 => "SQLITE_NOTFOUND",
        13 => "SQLITE_FULL",
        14 => "SQLITE_CANTOPEN",
        15 => "SQLITE_PROTOCOL",
        16 => "SQLITE_EMPTY",
        17 => "SQLITE_SCHEMA",
        18 => "SQLITE_TOOBIG",
        19 => "SQLITE_CONSTRAINT",
        20 => "SQLITE_MISMATCH",
        21 => "SQLITE_MISUSE",
        22 => "SQLITE_NOLFS",
        23 => "SQLITE_AUTH",
        24 => "SQLITE_FORMAT",
        25 => "SQLITE_RANGE",
        26 => "SQLITE_NOTADB",
        27 => "SQLITE_NOTICE",
        28 => "SQLITE_WARNING",
        _ => "SQLITE_UNKNOWN",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_codes_name_their_primary_code() {
        assert_eq!(
            sqlite_code_name(19 | (6 << 8)),
            "SQLITE_CONSTRAINT_PRIMARYKEY"
        );
        assert_eq!(sqlite_code_name(19 | (8 << 8)), "SQLITE_CONSTRAINT_UNIQUE");
        assert_eq!(sqlite_code_name(19 | (30 << 8)), "SQLITE_CONSTRAINT");
        assert_eq!(sqlite_code_name(1), "SQLITE_ERROR");
        assert_eq!(sqlite_code_name(5 | (3 << 8)), "SQLITE_BUSY_TIMEOUT");
    }
}
