//! The SQL API in schema conductor: nodes, distributed tables, placement.

mod cleanup;
pub mod explain;
pub mod moves;
mod nodes;
pub mod schema;
mod sizes;
mod tables;
mod vindex;

use crate::errors::raise;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::ffi::{CStr, CString};

/// The oid of a foreign server that uses the conductor wrapper.
fn conductor_server(name: &str) -> pg_sys::Oid {
    let cname = CString::new(name).unwrap_or_else(|_| error!("server name contains a NUL byte"));
    // SAFETY: catalog lookups inside a transaction; missing_ok=false raises a
    // clear "server does not exist" error.
    unsafe {
        let oid = pg_sys::get_foreign_server_oid(cname.as_ptr(), false);
        check_conductor_server(oid, name);
        oid
    }
}

/// Refuse servers of other foreign-data wrappers.
fn check_conductor_server(server_id: pg_sys::Oid, display: &str) {
    // SAFETY: catalog lookups inside a transaction.
    let fdw_name = unsafe {
        let server = pg_sys::GetForeignServer(server_id);
        let fdw = pg_sys::GetForeignDataWrapper((*server).fdwid);
        CStr::from_ptr((*fdw).fdwname)
            .to_string_lossy()
            .into_owned()
    };
    if fdw_name != "conductor" {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("server \"{display}\" does not use the conductor foreign-data wrapper"),
        )
        .detail(format!("It uses \"{fdw_name}\"."))
        .error()
    }
}

/// Which build of the extension this backend runs: its version, whether it
/// is the optimized (release) or the debug build, and the GNU build id of
/// the library this backend loaded (NULL if the linker wrote none). The id
/// is read from memory, not from the file, which a later install may have
/// replaced: equal to `readelf -n conductor.so`'s "Build ID" exactly when
/// the backend runs that file's build.
#[pg_extern]
fn build_info() -> TableIterator<
    'static,
    (
        name!(version, String),
        name!(profile, String),
        name!(build_id, Option<String>),
    ),
> {
    TableIterator::once((
        env!("CARGO_PKG_VERSION").to_string(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .to_string(),
        loaded_build_id(),
    ))
}

/// The build id note of the loaded object that contains this function.
fn loaded_build_id() -> Option<String> {
    struct Search {
        addr: usize,
        id: Option<Vec<u8>>,
    }
    const NT_GNU_BUILD_ID: u32 = 3;

    /// The desc of the GNU build id note among the notes in `notes`.
    fn find_note(mut notes: &[u8]) -> Option<Vec<u8>> {
        let word = |b: &[u8], i: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?))
        };
        let align4 = |n: usize| (n + 3) & !3;
        while notes.len() >= 12 {
            let namesz = word(notes, 0)? as usize;
            let descsz = word(notes, 4)? as usize;
            let kind = word(notes, 8)?;
            let name_at = 12;
            let desc_at = name_at + align4(namesz);
            let end = desc_at + align4(descsz);
            let name = notes.get(name_at..name_at + namesz)?;
            let desc = notes.get(desc_at..desc_at + descsz)?;
            if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
                return Some(desc.to_vec());
            }
            notes = notes.get(end..)?;
        }
        None
    }

    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader hands us a valid dl_phdr_info whose program
        // headers and segments are mapped for the duration of the call;
        // data is the Search that loaded_build_id passed in.
        let (info, search) = unsafe { (&*info, &mut *(data as *mut Search)) };
        let bias = info.dlpi_addr as usize;
        let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
        let ours = phdrs.iter().any(|ph| {
            let start = bias.wrapping_add(ph.p_vaddr as usize);
            ph.p_type == libc::PT_LOAD
                && (start..start.wrapping_add(ph.p_memsz as usize)).contains(&search.addr)
        });
        if !ours {
            return 0;
        }
        search.id = phdrs
            .iter()
            .filter(|ph| ph.p_type == libc::PT_NOTE)
            .find_map(|ph| {
                let start = bias.wrapping_add(ph.p_vaddr as usize) as *const u8;
                find_note(unsafe { std::slice::from_raw_parts(start, ph.p_memsz as usize) })
            });
        1
    }

    let mut search = Search {
        addr: loaded_build_id as *const () as usize,
        id: None,
    };
    // SAFETY: visit only reads the loader's structures and writes search,
    // which outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(visit), &mut search as *mut Search as *mut libc::c_void);
    }
    let id = search.id?;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}
