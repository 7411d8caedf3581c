//! Placement: which shard a shard-key value lives on (hash version 1,
//! docs/ARCHITECTURE.md, Placement). Other tools must reproduce this bit for
//! bit, so the encoding and arithmetic here are exactly the documented ones;
//! the tests pin fixed vectors computed by an independent Python
//! implementation (`tests/reference/placement_vectors.py`).

/// The placement hash version implemented here; recorded per table so a
/// later version can coexist with tables created under this one.
pub const HASH_VERSION: i32 = 1;

/// A shard-key value, already reduced to one of the three encodable kinds.
/// smallint/integer/bigint all become `Int` (so `42::int2` and `42::int8`
/// land on the same shard); text and varchar become `Text`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyValue<'a> {
    Int(i64),
    Text(&'a str),
    Uuid([u8; 16]),
}

/// XXH3-64 (seed 0) of the key's canonical bytes: ints as 8 bytes
/// little-endian, text as UTF-8, uuid as its 16 bytes.
pub fn key_hash(key: &KeyValue) -> u64 {
    use xxhash_rust::xxh3::xxh3_64;
    match key {
        KeyValue::Int(i) => xxh3_64(&i.to_le_bytes()),
        KeyValue::Text(s) => xxh3_64(s.as_bytes()),
        KeyValue::Uuid(u) => xxh3_64(u),
    }
}

/// Jump consistent hash (Lamping & Veach 2014), exactly as
/// docs/ARCHITECTURE.md (Placement) writes it, including the f64
/// arithmetic. `buckets == 0` has no valid answer; it returns 0 rather than
/// panicking (callers validate shard counts).
pub fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    let n = i64::from(buckets);
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < n {
        b = j;
        key = key.wrapping_mul(2862933555777941757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    // b is in [0, buckets) here whenever buckets > 0.
    b.max(0) as u32
}

/// The shard (in `0..shard_count`) that holds `key`.
pub fn shard_for(key: &KeyValue, shard_count: u32) -> u32 {
    jump_consistent_hash(key_hash(key), shard_count)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COUNTS: [u32; 4] = [1, 2, 16, 1000];

    // Vectors printed by crates/core/tests/reference/placement_vectors.py
    // (Python `xxhash.xxh3_64_intdigest` + a Python jump hash).
    const INTS: &[(i64, u64, [u32; 4])] = &[
        (0, 0xc77b3abb6f87acd9, [0, 1, 11, 910]),
        (1, 0x2fbc593564db792e, [0, 1, 15, 611]),
        (-1, 0x5111c7e47d784413, [0, 0, 4, 509]),
        (42, 0xd5a6f8c838df27c8, [0, 0, 3, 54]),
        (1000000, 0x2c27ac0713086960, [0, 0, 8, 298]),
        (i64::MAX, 0xa233cf376558df46, [0, 0, 14, 196]),
        (i64::MIN, 0x828f2476789a0e5f, [0, 1, 11, 402]),
    ];
    const TEXTS: &[(&str, u64, [u32; 4])] = &[
        ("", 0x2d06800538d394c2, [0, 0, 0, 241]),
        ("a", 0xe6c632b61e964e1f, [0, 1, 14, 350]),
        ("hello", 0x9555e8555c62dcfd, [0, 0, 7, 296]),
        ("héllo wörld", 0xca5aeb8da2d76864, [0, 1, 4, 387]),
        ("🦀", 0x38256e7e50056328, [0, 0, 11, 60]),
        ("user@example.com", 0x0277dc9aa6f80b74, [0, 1, 7, 225]),
    ];
    const UUIDS: &[(&str, u64, [u32; 4])] = &[
        (
            "00000000-0000-0000-0000-000000000000",
            0xd0a66a65c7528968,
            [0, 1, 12, 746],
        ),
        (
            "123e4567-e89b-12d3-a456-426614174000",
            0x0bb452c5ab5577f8,
            [0, 0, 5, 623],
        ),
        (
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            0x722a202f07a4b313,
            [0, 1, 1, 704],
        ),
    ];
    const JUMP_BUCKETS: [u32; 7] = [1, 2, 3, 10, 16, 1000, 65536];
    const JUMPS: &[(u64, [u32; 7])] = &[
        (0x0000000000000000, [0, 0, 0, 0, 0, 0, 0]),
        (0x0000000000000001, [0, 0, 0, 6, 6, 549, 21134]),
        (0x0000000000000002, [0, 0, 0, 6, 15, 338, 3927]),
        (0x00000000deadbeef, [0, 1, 2, 5, 5, 285, 64244]),
        (0xffffffffffffffff, [0, 1, 2, 9, 10, 313, 18311]),
        (0x01b69b4ba630f34e, [0, 1, 1, 1, 1, 670, 26487]),
    ];

    fn check(key: KeyValue, hash: u64, shards: [u32; 4]) {
        assert_eq!(key_hash(&key), hash, "{key:?}");
        for (n, want) in COUNTS.iter().zip(shards) {
            assert_eq!(shard_for(&key, *n), want, "{key:?} over {n}");
        }
    }

    #[test]
    fn fixed_vectors_ints() {
        for &(v, h, s) in INTS {
            check(KeyValue::Int(v), h, s);
        }
    }

    #[test]
    fn fixed_vectors_text() {
        for &(v, h, s) in TEXTS {
            check(KeyValue::Text(v), h, s);
        }
    }

    #[test]
    fn fixed_vectors_uuid() {
        for &(v, h, s) in UUIDS {
            let u = crate::types::uuid_from_text(v).expect("valid uuid");
            check(KeyValue::Uuid(u), h, s);
        }
    }

    #[test]
    fn fixed_vectors_jump() {
        for &(k, want) in JUMPS {
            for (n, w) in JUMP_BUCKETS.iter().zip(want) {
                assert_eq!(jump_consistent_hash(k, *n), w, "key {k:#x} over {n}");
            }
        }
    }

    #[test]
    fn zero_buckets_does_not_panic() {
        assert_eq!(jump_consistent_hash(12345, 0), 0);
    }

    #[test]
    fn keys_spread_evenly() {
        let n = 16u32;
        let keys = 160_000i64;
        let mut counts = vec![0u32; n as usize];
        for k in 0..keys {
            counts[shard_for(&KeyValue::Int(k), n) as usize] += 1;
        }
        let expect = (keys / i64::from(n)) as f64;
        for (i, c) in counts.iter().enumerate() {
            let dev = (f64::from(*c) - expect).abs() / expect;
            assert!(dev < 0.05, "shard {i} holds {c}, expected ~{expect}");
        }
    }

    #[test]
    fn growing_buckets_moves_about_one_nth() {
        let keys = 100_000u32;
        for n in [1u32, 4, 15, 100] {
            let mut moved = 0u32;
            for k in 0..keys {
                let h = key_hash(&KeyValue::Int(i64::from(k)));
                let (a, b) = (jump_consistent_hash(h, n), jump_consistent_hash(h, n + 1));
                if a != b {
                    // A key only ever moves to the new bucket.
                    assert_eq!(b, n);
                    moved += 1;
                }
            }
            let expect = f64::from(keys) / f64::from(n + 1);
            let dev = (f64::from(moved) - expect).abs() / expect;
            assert!(
                dev < 0.1,
                "{n}->{}: moved {moved}, expected ~{expect}",
                n + 1
            );
        }
    }

    #[test]
    fn int_widths_agree() {
        // int2/int4/int8 keys are all widened to i64 before hashing.
        assert_eq!(
            shard_for(&KeyValue::Int(i64::from(7i16)), 16),
            shard_for(&KeyValue::Int(7), 16)
        );
    }
}
