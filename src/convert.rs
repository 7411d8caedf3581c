//! Datum <-> Hrana value, one codec per column.
//!
//! The storage encoding of every type is decided in `conductor_core::types`;
//! this module only moves bytes between Postgres' in-memory form and that
//! encoding. Values a node returns are checked, never trusted: a wrong type
//! or an out-of-range integer is an error naming the column, not a crash.

use crate::{gucs, remote};
use conductor_core::types::{ColumnType, TypedValue};
use conductor_hrana::Value;
use pgrx::pg_sys::{self, Datum, Oid};
use pgrx::varlena;

/// How one column travels. Built once per scan or modify, so the per-row path
/// does no catalog lookups.
pub struct ColumnCodec {
    pub name: String,
    pub ty: ColumnType,
    typmod: i32,
    /// Input/output functions for the types that travel as their text form
    /// (numeric, json, jsonb): looked up once, reused for every row.
    text_io: Option<TextIo>,
}

struct TextIo {
    input: Box<pg_sys::FmgrInfo>,
    ioparam: Oid,
    output: Box<pg_sys::FmgrInfo>,
}

/// A value that cannot be converted, with what is needed for a clear message.
#[derive(Debug)]
pub struct ConvertError {
    pub column: String,
    pub message: String,
}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "column \"{}\": {}", self.column, self.message)
    }
}

impl ColumnCodec {
    /// # Safety
    /// Must run in a backend, inside a transaction (it reads pg_type). The
    /// FmgrInfo caches live in CurrentMemoryContext, which must outlive the codec.
    pub unsafe fn new(name: &str, ty: ColumnType, typoid: Oid, typmod: i32) -> Self {
        let text_io = matches!(
            ty,
            ColumnType::Numeric | ColumnType::Json | ColumnType::Jsonb
        )
        .then(|| unsafe {
            let mut infunc = Oid::INVALID;
            let mut ioparam = Oid::INVALID;
            let mut outfunc = Oid::INVALID;
            let mut is_varlena = false;
            pg_sys::getTypeInputInfo(typoid, &mut infunc, &mut ioparam);
            pg_sys::getTypeOutputInfo(typoid, &mut outfunc, &mut is_varlena);
            let mut input: Box<pg_sys::FmgrInfo> = Box::new(std::mem::zeroed());
            let mut output: Box<pg_sys::FmgrInfo> = Box::new(std::mem::zeroed());
            pg_sys::fmgr_info_cxt(infunc, input.as_mut(), pg_sys::CurrentMemoryContext);
            pg_sys::fmgr_info_cxt(outfunc, output.as_mut(), pg_sys::CurrentMemoryContext);
            TextIo {
                input,
                ioparam,
                output,
            }
        });
        ColumnCodec {
            name: name.to_string(),
            ty,
            typmod,
            text_io,
        }
    }

    fn error(&self, message: impl Into<String>) -> ConvertError {
        ConvertError {
            column: self.name.clone(),
            message: message.into(),
        }
    }

    /// A Postgres value as the node stores it.
    ///
    /// # Safety
    /// `datum` must be a valid, non-null datum of this column's type.
    pub unsafe fn encode(&self, datum: Datum) -> Result<Value, ConvertError> {
        let typed = match self.ty {
            ColumnType::Numeric => TypedValue::Numeric(unsafe { self.output_text(datum)? }),
            ColumnType::Json | ColumnType::Jsonb => {
                TypedValue::Json(unsafe { self.output_text(datum)? })
            }
            ty => unsafe { typed_from_datum(ty, datum) }
                .ok_or_else(|| self.error("text is not valid UTF-8"))?,
        };
        let value = typed
            .to_value(&self.name)
            .map_err(|e| self.error(e.to_string()))?;
        match value {
            // Said here, naming the column, rather than by the client when
            // it cannot serialize the request.
            Value::Float(f)
                if !f.is_finite() && remote::wire_encoding() == gucs::WireEncoding::Json =>
            {
                let f = if f > 0.0 { "Infinity" } else { "-Infinity" };
                Err(self.error(format!(
                    "{f} cannot be sent to a node in the JSON encoding \
                     (conductor.wire_encoding = json), whose numbers are finite; \
                     the Protobuf encoding (auto or protobuf) carries it"
                )))
            }
            value => Ok(value),
        }
    }

    /// A node's value as a Postgres datum (None for NULL), allocated in
    /// CurrentMemoryContext.
    ///
    /// # Safety
    /// Must run in a backend; the datum lives in CurrentMemoryContext.
    pub unsafe fn decode(&self, value: &Value) -> Result<Option<Datum>, ConvertError> {
        let typed = TypedValue::from_value(&self.name, self.ty, value)
            .map_err(|e| self.error(e.to_string()))?;
        let Some(typed) = typed else {
            return Ok(None);
        };
        Ok(Some(match typed {
            TypedValue::Int2(v) => Datum::from(v),
            TypedValue::Int4(v) | TypedValue::Date(v) => Datum::from(v),
            TypedValue::Int8(v) | TypedValue::Timestamp(v) => Datum::from(v),
            TypedValue::Bool(b) => Datum::from(b),
            TypedValue::Float4(f) => Datum::from(f.to_bits()),
            TypedValue::Float8(f) => Datum::from(f.to_bits()),
            TypedValue::Text(s) => unsafe { text_datum(s.as_bytes()) },
            TypedValue::Bytea(b) => unsafe { text_datum(&b) },
            // SAFETY: palloc returns 16 writable bytes in CurrentMemoryContext.
            TypedValue::Uuid(bytes) => unsafe {
                let p = pg_sys::palloc(16) as *mut [u8; 16];
                p.write(bytes);
                Datum::from(p)
            },
            TypedValue::Numeric(s) | TypedValue::Json(s) => unsafe { self.input_text(&s)? },
        }))
    }

    unsafe fn output_text(&self, datum: Datum) -> Result<String, ConvertError> {
        let io = self
            .text_io
            .as_ref()
            .expect("text io for a text-encoded type");
        // SAFETY: output points at a valid FmgrInfo of this type's output function.
        let cstr =
            unsafe { pg_sys::OutputFunctionCall(io.output.as_ref() as *const _ as *mut _, datum) };
        let s = unsafe { std::ffi::CStr::from_ptr(cstr) }
            .to_str()
            .map_err(|_| self.error("value is not valid UTF-8"))?
            .to_owned();
        unsafe { pg_sys::pfree(cstr.cast()) };
        Ok(s)
    }

    unsafe fn input_text(&self, s: &str) -> Result<Datum, ConvertError> {
        let io = self
            .text_io
            .as_ref()
            .expect("text io for a text-encoded type");
        let c = std::ffi::CString::new(s)
            .map_err(|_| self.error("text from the node contains a NUL byte"))?;
        // SAFETY: input is this type's input function; a malformed value raises
        // a Postgres ERROR (invalid input syntax), which is the right outcome.
        Ok(unsafe {
            pg_sys::InputFunctionCall(
                io.input.as_ref() as *const _ as *mut _,
                c.as_ptr() as *mut _,
                io.ioparam,
                self.typmod,
            )
        })
    }
}

/// The conductor type of a built-in Postgres type; None for every other
/// type (domains, arrays, extension types), which conductor refuses.
pub fn column_type_of(typoid: Oid) -> Option<ColumnType> {
    Some(match typoid {
        pg_sys::INT2OID => ColumnType::Int2,
        pg_sys::INT4OID => ColumnType::Int4,
        pg_sys::INT8OID => ColumnType::Int8,
        pg_sys::FLOAT4OID => ColumnType::Float4,
        pg_sys::FLOAT8OID => ColumnType::Float8,
        pg_sys::NUMERICOID => ColumnType::Numeric,
        pg_sys::BOOLOID => ColumnType::Bool,
        pg_sys::TEXTOID => ColumnType::Text,
        pg_sys::VARCHAROID => ColumnType::Varchar,
        pg_sys::BPCHAROID => ColumnType::Bpchar,
        pg_sys::BYTEAOID => ColumnType::Bytea,
        pg_sys::UUIDOID => ColumnType::Uuid,
        pg_sys::DATEOID => ColumnType::Date,
        pg_sys::TIMESTAMPOID => ColumnType::Timestamp,
        pg_sys::TIMESTAMPTZOID => ColumnType::Timestamptz,
        pg_sys::JSONOID => ColumnType::Json,
        pg_sys::JSONBOID => ColumnType::Jsonb,
        _ => return None,
    })
}

/// A non-null datum of a type whose value needs no type I/O function (every
/// type but numeric, json and jsonb, which return None, as does text that is
/// not UTF-8).
///
/// # Safety
/// `datum` must be a valid, non-null datum of type `ty`.
pub unsafe fn typed_from_datum(ty: ColumnType, datum: Datum) -> Option<TypedValue> {
    use ColumnType as T;
    Some(match ty {
        T::Int2 => TypedValue::Int2(datum.value() as i16),
        T::Int4 => TypedValue::Int4(datum.value() as i32),
        T::Int8 => TypedValue::Int8(datum.value() as i64),
        T::Bool => TypedValue::Bool(datum.value() & 0xff != 0),
        T::Date => TypedValue::Date(datum.value() as i32),
        T::Timestamp | T::Timestamptz => TypedValue::Timestamp(datum.value() as i64),
        T::Float4 => TypedValue::Float4(f32::from_bits(datum.value() as u32)),
        T::Float8 => TypedValue::Float8(f64::from_bits(datum.value() as u64)),
        T::Text | T::Varchar | T::Bpchar => TypedValue::Text(
            std::str::from_utf8(unsafe { detoasted_bytes(datum) })
                .ok()?
                .to_owned(),
        ),
        T::Bytea => TypedValue::Bytea(unsafe { detoasted_bytes(datum) }.to_vec()),
        // SAFETY: a uuid datum points to its 16 bytes (pg_uuid_t).
        T::Uuid => TypedValue::Uuid(unsafe { *datum.cast_mut_ptr::<[u8; 16]>() }),
        T::Numeric | T::Json | T::Jsonb => return None,
    })
}

/// The bytes of a text/bytea datum, detoasted into CurrentMemoryContext if needed.
unsafe fn detoasted_bytes<'a>(datum: Datum) -> &'a [u8] {
    // SAFETY: the caller passes a varlena datum; detoasting returns a pointer
    // that lives in CurrentMemoryContext (or is the datum itself).
    unsafe {
        let v = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
        varlena::varlena_to_byte_slice(v)
    }
}

/// A text/bytea varlena holding `bytes`, in CurrentMemoryContext.
unsafe fn text_datum(bytes: &[u8]) -> Datum {
    // SAFETY: cstring_to_text_with_len copies len bytes into a new varlena.
    unsafe {
        Datum::from(pg_sys::cstring_to_text_with_len(
            bytes.as_ptr().cast(),
            bytes.len() as i32,
        ))
    }
}

/// Evaluate an expression that needs no executor state (constants, immutable
/// and stable functions: no Var, no executor Param) and encode its value as
/// `codec`'s column stores it.
///
/// # Safety
/// `expr` is a planned expression tree; runs inside a transaction.
pub unsafe fn evaluate_standalone(
    expr: *mut pg_sys::Node,
    codec: &ColumnCodec,
) -> Result<Value, ConvertError> {
    // SAFETY: per the contract; the standalone context (and the datum in
    // it) lives until the value has been encoded into Rust memory.
    unsafe {
        let econtext = pg_sys::CreateStandaloneExprContext();
        let state = pg_sys::ExecInitExpr(expr.cast(), std::ptr::null_mut());
        let mut is_null = false;
        let datum = pg_sys::ExecEvalExprSwitchContext(state, econtext, &mut is_null);
        let value = if is_null {
            Ok(Value::Null)
        } else {
            codec.encode(datum)
        };
        pg_sys::FreeExprContext(econtext, true);
        value
    }
}
