//! The row checksum two copies of a shard are compared by when a shard
//! moves: XXH3 of each row's values (each tagged with its storage class,
//! lengths before text and blobs, so `1` and `'1'`, or `('ab','c')` and
//! `('a','bc')`, differ), added up with wrapping, so the order rows are
//! read in does not matter. conductor computes it over fetched rows;
//! conductor-node computes the same sum in SQL, `CHECKSUM_FUNCTION(col, …)`,
//! so that a shard is compared without sending its rows.

use crate::Value;

/// The aggregate conductor-node registers: the wrapping sum of the row
/// hashes of its arguments' rows, as a signed 64-bit integer (0 over no
/// rows).
pub const CHECKSUM_FUNCTION: &str = "conductor_row_checksum";

/// The function conductor-node registers that answers how many bytes its
/// database's file system has free (less the node's `--reserve-bytes`):
/// what a shard move checks before it copies a shard there.
pub const FREE_BYTES_FUNCTION: &str = "conductor_free_bytes";

/// One row's hash, fed value by value.
#[derive(Default)]
pub struct RowHasher {
    bytes: Vec<u8>,
}

impl RowHasher {
    pub fn null(&mut self) {
        self.bytes.push(0);
    }
    pub fn integer(&mut self, i: i64) {
        self.bytes.push(1);
        self.bytes.extend_from_slice(&i.to_le_bytes());
    }
    pub fn float(&mut self, f: f64) {
        self.bytes.push(2);
        self.bytes.extend_from_slice(&f.to_bits().to_le_bytes());
    }
    pub fn text(&mut self, t: &[u8]) {
        self.bytes.push(3);
        self.bytes
            .extend_from_slice(&(t.len() as u64).to_le_bytes());
        self.bytes.extend_from_slice(t);
    }
    pub fn blob(&mut self, b: &[u8]) {
        self.bytes.push(4);
        self.bytes
            .extend_from_slice(&(b.len() as u64).to_le_bytes());
        self.bytes.extend_from_slice(b);
    }
    pub fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.null(),
            Value::Integer(i) => self.integer(*i),
            Value::Float(f) => self.float(*f),
            Value::Text(s) => self.text(s.as_bytes()),
            Value::Blob(b) => self.blob(b),
        }
    }
    pub fn finish(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.bytes)
    }
}

/// The hash of one row.
pub fn row_hash(row: &[Value]) -> u64 {
    row_hasher(row).finish()
}

/// The bytes a row's hash is taken of: equal exactly when the rows hold
/// the same values of the same storage classes (floats compared by bits),
/// so they can stand for the row in a set.
pub fn row_bytes(row: &[Value]) -> Vec<u8> {
    row_hasher(row).bytes
}

fn row_hasher(row: &[Value]) -> RowHasher {
    let mut h = RowHasher::default();
    for v in row {
        h.value(v);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_bytes_tell_rows_apart_exactly() {
        let row = |v: Vec<Value>| row_bytes(&v);
        assert_eq!(row(vec![Value::Integer(1)]), row(vec![Value::Integer(1)]));
        assert_ne!(
            row(vec![Value::Integer(1)]),
            row(vec![Value::Text("1".into())])
        );
        assert_ne!(
            row(vec![Value::Text("ab".into()), Value::Text("c".into())]),
            row(vec![Value::Text("a".into()), Value::Text("bc".into())])
        );
        // A NaN key is one row, and 0.0 and -0.0 are two values.
        assert_eq!(
            row(vec![Value::Float(f64::NAN)]),
            row(vec![Value::Float(f64::NAN)])
        );
        assert_ne!(row(vec![Value::Float(0.0)]), row(vec![Value::Float(-0.0)]));
        assert_eq!(
            row_hash(&[Value::Integer(7)]),
            xxhash_rust::xxh3::xxh3_64(&row(vec![Value::Integer(7)]))
        );
    }
}
