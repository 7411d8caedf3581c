//! FDW options: what may be set where, validated when it is set
//! (CREATE/ALTER SERVER, USER MAPPING, FOREIGN TABLE), read when needed.

use crate::errors::raise;
use pgrx::prelude::*;
use pgrx::PgList;
use pgrx::PgSqlErrorCode;
use std::ffi::CStr;

/// An option: its name, where it may appear and how its value is checked.
struct OptionSpec {
    name: &'static str,
    catalog: pg_sys::Oid,
    check: fn(&str) -> Result<(), String>,
}

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "token",
        catalog: pg_sys::UserMappingRelationId,
        check: non_empty,
    },
    OptionSpec {
        name: "batch_size",
        catalog: pg_sys::ForeignServerRelationId,
        check: positive_int,
    },
    OptionSpec {
        name: "batch_size",
        catalog: pg_sys::ForeignTableRelationId,
        check: positive_int,
    },
    OptionSpec {
        name: "table_name",
        catalog: pg_sys::ForeignTableRelationId,
        check: remote_table_name,
    },
    OptionSpec {
        name: "primary_key",
        catalog: pg_sys::ForeignTableRelationId,
        check: non_empty,
    },
];

fn non_empty(v: &str) -> Result<(), String> {
    if v.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(())
    }
}

fn positive_int(v: &str) -> Result<(), String> {
    match v.trim().parse::<i64>() {
        Ok(n) if (1..=100_000).contains(&n) => Ok(()),
        _ => Err("must be an integer between 1 and 100000".into()),
    }
}

fn remote_table_name(v: &str) -> Result<(), String> {
    // Shard tables are named <table_name>_NNNN; keep the base printable and
    // short so every node accepts it and logs stay readable.
    if v.is_empty() || v.len() > 48 || v.chars().any(|c| c.is_control()) {
        Err("must be 1 to 48 printable characters".into())
    } else {
        Ok(())
    }
}

fn catalog_name(catalog: pg_sys::Oid) -> &'static str {
    match catalog {
        c if c == pg_sys::UserMappingRelationId => "user mapping",
        c if c == pg_sys::ForeignServerRelationId => "server",
        c if c == pg_sys::ForeignTableRelationId => "foreign table",
        c if c == pg_sys::AttributeRelationId => "column",
        _ => "foreign-data wrapper",
    }
}

#[pg_extern]
fn conductor_fdw_validator(options: Option<Vec<Option<String>>>, catalog: Option<pg_sys::Oid>) {
    let catalog = catalog.unwrap_or(pg_sys::Oid::INVALID);
    for option in options.unwrap_or_default().into_iter().flatten() {
        let (name, value) = option.split_once('=').unwrap_or((option.as_str(), ""));
        let Some(spec) = OPTIONS
            .iter()
            .find(|s| s.name == name && s.catalog == catalog)
        else {
            let valid: Vec<&str> = OPTIONS
                .iter()
                .filter(|s| s.catalog == catalog)
                .map(|s| s.name)
                .collect();
            raise(
                PgSqlErrorCode::ERRCODE_FDW_INVALID_OPTION_NAME,
                format!(
                    "invalid option \"{name}\" for a conductor {}",
                    catalog_name(catalog)
                ),
            )
            .hint(if valid.is_empty() {
                "There are no valid options in this context.".to_string()
            } else {
                format!("Valid options in this context are: {}", valid.join(", "))
            })
            .error()
        };
        if let Err(why) = (spec.check)(value) {
            raise(
                PgSqlErrorCode::ERRCODE_FDW_INVALID_ATTRIBUTE_VALUE,
                format!("invalid value for option \"{name}\": {why}"),
            )
            .error()
        }
    }
}

/// (name, value) pairs of a List of DefElem, as Postgres keeps FDW options.
///
/// # Safety
/// `list` must be NIL or a List of DefElem nodes with string arguments.
pub unsafe fn def_elems(list: *mut pg_sys::List) -> Vec<(String, String)> {
    // SAFETY: per the contract above; defGetString copies nothing we keep.
    unsafe {
        PgList::<pg_sys::DefElem>::from_pg(list)
            .iter_ptr()
            .map(|def| {
                let name = CStr::from_ptr((*def).defname)
                    .to_string_lossy()
                    .into_owned();
                let value = CStr::from_ptr(pg_sys::defGetString(def))
                    .to_string_lossy()
                    .into_owned();
                (name, value)
            })
            .collect()
    }
}

/// One option of a foreign table, falling back to its server.
pub fn table_option(relid: pg_sys::Oid, name: &str) -> Option<String> {
    // SAFETY: GetForeignTable/GetForeignServer read the catalogs inside a
    // transaction and return palloc'd copies.
    unsafe {
        let table = pg_sys::GetForeignTable(relid);
        if let Some((_, v)) = def_elems((*table).options)
            .into_iter()
            .find(|(k, _)| k == name)
        {
            return Some(v);
        }
        let server = pg_sys::GetForeignServer((*table).serverid);
        def_elems((*server).options)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}
