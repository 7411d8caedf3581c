#!/usr/bin/env python3
"""Independent reference for conductor's placement hash, version 1
(docs/ARCHITECTURE.md, Placement).

Prints the fixed vectors hard-coded in crates/core/src/placement.rs tests.
Needs the `xxhash` PyPI package (pip install xxhash); run:
    python3 crates/core/tests/reference/placement_vectors.py
"""
import struct
import uuid

import xxhash

MASK = (1 << 64) - 1


def jump(key: int, buckets: int) -> int:
    # Lamping & Veach 2014, with the exact float arithmetic of
    # docs/ARCHITECTURE.md, Placement.
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & MASK
        j = int(float(b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def h_int(v: int) -> int:
    return xxhash.xxh3_64_intdigest(struct.pack("<q", v))


def h_text(s: str) -> int:
    return xxhash.xxh3_64_intdigest(s.encode("utf-8"))


def h_uuid(u: str) -> int:
    return xxhash.xxh3_64_intdigest(uuid.UUID(u).bytes)


INTS = [0, 1, -1, 42, 1000000, 9223372036854775807, -9223372036854775808]
TEXTS = ["", "a", "hello", "héllo wörld", "🦀", "user@example.com"]
UUIDS = [
    "00000000-0000-0000-0000-000000000000",
    "123e4567-e89b-12d3-a456-426614174000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
]
SHARD_COUNTS = [1, 2, 16, 1000]
JUMP_KEYS = [0, 1, 2, 0xDEADBEEF, MASK, 123456789012345678]
JUMP_BUCKETS = [1, 2, 3, 10, 16, 1000, 65536]

print("// ints: (value, xxh3, [shard for n in", SHARD_COUNTS, "])")
for v in INTS:
    h = h_int(v)
    print(f"({v}, 0x{h:016x}, {[jump(h, n) for n in SHARD_COUNTS]}),")
print("// texts")
for s in TEXTS:
    h = h_text(s)
    print(f"({s!r}, 0x{h:016x}, {[jump(h, n) for n in SHARD_COUNTS]}),")
print("// uuids")
for u in UUIDS:
    h = h_uuid(u)
    print(f"({u!r}, 0x{h:016x}, {[jump(h, n) for n in SHARD_COUNTS]}),")
print("// jump: (key, [bucket for n in", JUMP_BUCKETS, "])")
for k in JUMP_KEYS:
    print(f"(0x{k:016x}, {[jump(k, n) for n in JUMP_BUCKETS]}),")
