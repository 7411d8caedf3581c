//! Property-based fuzzing of the decoders a node's answers go through:
//! whatever bytes arrive — random, or a real answer from `tests/corpus`
//! truncated, with bytes flipped or spliced — decoding returns a value or
//! an error and never panics; and every corpus answer still decodes and
//! round-trips. proptest keeps failing inputs in `proptest-regressions/`.

use conductor_hrana::{
    CursorEntry, CursorRespBody, PipelineReqBody, PipelineRespBody, StreamResult, Value,
};
use proptest::prelude::*;

const PIPELINE_OK: &str = include_str!("corpus/pipeline_ok.json");
const PIPELINE_BATCH_ERROR: &str = include_str!("corpus/pipeline_batch_error.json");
const CURSOR_BODY: &str = include_str!("corpus/cursor_body.ndjson");
// Answers in sqld's shapes (see sqld_corpus.rs).
const SQLD_PIPELINES: [&str; 3] = [
    include_str!("corpus/sqld/pipeline_execute.json"),
    include_str!("corpus/sqld/pipeline_batch.json"),
    include_str!("corpus/sqld/pipeline_error.json"),
];
const SQLD_CURSOR: &str = include_str!("corpus/sqld/cursor.ndjson");

fn corpus() -> Vec<Vec<u8>> {
    let mut c = vec![
        PIPELINE_OK.trim().as_bytes().to_vec(),
        PIPELINE_BATCH_ERROR.trim().as_bytes().to_vec(),
    ];
    c.extend(SQLD_PIPELINES.iter().map(|p| p.trim().as_bytes().to_vec()));
    c.extend(CURSOR_BODY.lines().map(|l| l.as_bytes().to_vec()));
    c.extend(SQLD_CURSOR.lines().map(|l| l.as_bytes().to_vec()));
    c
}

/// Every decoder of node output, applied to one input: none may panic.
fn decode_everything(bytes: &[u8]) {
    let _ = serde_json::from_slice::<PipelineRespBody>(bytes);
    let _ = serde_json::from_slice::<PipelineReqBody>(bytes);
    let _ = serde_json::from_slice::<CursorRespBody>(bytes);
    let _ = serde_json::from_slice::<CursorEntry>(bytes);
    let _ = CursorEntry::decode(bytes);
    let _ = serde_json::from_slice::<StreamResult>(bytes);
    let _ = serde_json::from_slice::<Value>(bytes);
    let _ = serde_json::from_slice::<Vec<Value>>(bytes);
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (
            any::<usize>(),
            prop::collection::vec(
                prop_oneof![
                    Just(b'"'),
                    Just(b'{'),
                    Just(b'}'),
                    Just(b'['),
                    Just(b']'),
                    Just(b','),
                    Just(b':'),
                    Just(b'\\'),
                    any::<u8>()
                ],
                1..8
            )
        )
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::Truncate(i) => bytes.truncate(i % len),
            Mutation::Flip(i, b) => {
                if !bytes.is_empty() {
                    let i = i % bytes.len();
                    bytes[i] ^= b | 1;
                }
            }
            Mutation::Insert(i, v) => {
                let i = i % (bytes.len() + 1);
                bytes.splice(i..i, v.iter().copied());
            }
            Mutation::Delete(i, n) => {
                if !bytes.is_empty() {
                    let i = i % bytes.len();
                    let end = (i + n).min(bytes.len());
                    bytes.drain(i..end);
                }
            }
        }
    }
    bytes
}

#[test]
fn the_corpus_decodes_and_round_trips() {
    let resp: PipelineRespBody = serde_json::from_str(PIPELINE_OK).unwrap();
    let again: PipelineRespBody =
        serde_json::from_str(&serde_json::to_string(&resp).unwrap()).unwrap();
    assert_eq!(resp, again);
    let resp: PipelineRespBody = serde_json::from_str(PIPELINE_BATCH_ERROR).unwrap();
    assert_eq!(resp.results.len(), 2);
    let mut lines = CURSOR_BODY.lines();
    let _: CursorRespBody = serde_json::from_str(lines.next().unwrap()).unwrap();
    for line in lines {
        let entry: CursorEntry = serde_json::from_str(line).unwrap();
        let again: CursorEntry =
            serde_json::from_str(&serde_json::to_string(&entry).unwrap()).unwrap();
        assert_eq!(entry, again);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
    }

    #[test]
    fn mutated_answers_never_panic(
        which in 0usize..32,
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let corpus = corpus();
        let seed = corpus[which % corpus.len()].clone();
        decode_everything(&apply(seed, &mutations));
    }

    #[test]
    fn values_round_trip_exactly(
        v in prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::Float),
            ".*".prop_map(Value::Text),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(Value::Blob),
        ]
    ) {
        let json = serde_json::to_string(&v).unwrap();
        let back: Value = serde_json::from_str(&json).unwrap();
        match (&v, &back) {
            (Value::Float(a), Value::Float(b)) => prop_assert_eq!(a.to_bits(), b.to_bits()),
            _ => prop_assert_eq!(&v, &back),
        }
    }
}

// ---- the Protobuf encoding: cursor bodies cut into length-delimited
// messages by `protobuf::FrameReader` and decoded by
// `protobuf::decode_cursor_entry` (what conductor's client runs on every
// `/v3-protobuf/cursor` answer) ----

mod protobuf_cursor {
    use super::*;
    use conductor_hrana::protobuf::{self as pb, Frame, FrameReader};
    use prost::Message as _;

    /// The cursor bodies of the corpus in the Protobuf encoding, as the
    /// frames of each body (header first).
    fn bodies() -> Vec<Vec<Vec<u8>>> {
        [CURSOR_BODY, SQLD_CURSOR]
            .iter()
            .map(|body| {
                let mut lines = body.lines();
                let head: CursorRespBody = serde_json::from_str(lines.next().unwrap()).unwrap();
                let mut frames =
                    vec![pb::CursorRespBody::from(head).encode_length_delimited_to_vec()];
                for l in lines {
                    if let Some(e) = CursorEntry::decode(l.as_bytes()).unwrap() {
                        frames.push(pb::CursorEntry::from(e).encode_length_delimited_to_vec());
                    }
                }
                // sqld's last entry: replication_index (field 6), skipped.
                frames.push(vec![2, 0x30, 9]);
                frames
            })
            .collect()
    }

    /// What a client makes of a body fed in the given chunks: the entries
    /// decoded (header skipped), or the first error; and the bytes left
    /// over at the end (non-zero: cut inside a message).
    fn read(chunks: &[&[u8]], max: usize) -> (Result<Vec<CursorEntry>, String>, usize) {
        let mut r = FrameReader::new(max);
        let mut out = Vec::new();
        let mut header = true;
        for c in chunks {
            r.feed(c);
            loop {
                match r.next_frame() {
                    Ok(Frame::Need) => break,
                    Ok(Frame::Full(range)) => {
                        let bytes = r.bytes(range.clone());
                        assert!(bytes.len() <= max, "a frame over the limit");
                        if header {
                            header = false;
                            if let Err(e) = pb::CursorRespBody::decode(bytes) {
                                return (Err(e.to_string()), r.leftover());
                            }
                            continue;
                        }
                        match pb::decode_cursor_entry(bytes) {
                            Ok(Some(e)) => out.push(e),
                            Ok(None) => {}
                            Err(e) => return (Err(e.to_string()), r.leftover()),
                        }
                    }
                    Err(e) => return (Err(e.to_string()), r.leftover()),
                }
            }
        }
        (Ok(out), r.leftover())
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>().prop_map(Value::Float),
            ".{0,12}".prop_map(Value::Text),
            prop::collection::vec(any::<u8>(), 0..16).prop_map(Value::Blob),
        ]
    }

    /// A decoded entry with floats as their bits (NaN compares equal).
    fn bits(
        r: &Result<Option<CursorEntry>, pb::DecodeError>,
    ) -> Result<Option<String>, pb::DecodeError> {
        r.clone().map(|e| {
            e.map(|e| match e {
                CursorEntry::Row { row } => format!(
                    "{:?}",
                    row.iter()
                        .map(|v| match v {
                            Value::Float(f) => format!("float {:x}", f.to_bits()),
                            other => format!("{other:?}"),
                        })
                        .collect::<Vec<_>>()
                ),
                other => format!("{other:?}"),
            })
        })
    }

    fn cut<'a>(body: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        cuts.sort();
        cuts.dedup();
        let mut chunks = Vec::new();
        let mut from = 0;
        for c in cuts.into_iter().chain([body.len()]) {
            chunks.push(&body[from..c]);
            from = c;
        }
        chunks
    }

    #[test]
    fn the_corpus_reads_as_in_json() {
        for (frames, json) in bodies().iter().zip([CURSOR_BODY, SQLD_CURSOR]) {
            let want: Vec<CursorEntry> = json
                .lines()
                .skip(1)
                .filter_map(|l| CursorEntry::decode(l.as_bytes()).unwrap())
                .collect();
            let body = frames.concat();
            let (got, left) = read(&[&body], 1 << 20);
            assert_eq!(got.unwrap(), want);
            assert_eq!(left, 0);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// However a body is cut into chunks, the same entries come out.
        #[test]
        fn chunking_does_not_matter(
            which in 0usize..2,
            cuts in prop::collection::vec(any::<usize>(), 0..16),
        ) {
            let body = bodies()[which].concat();
            let (whole, _) = read(&[&body], 1 << 20);
            let (pieces, left) = read(&cut(&body, &cuts), 1 << 20);
            prop_assert_eq!(whole, pieces);
            prop_assert_eq!(left, 0);
        }

        /// A body cut anywhere but between two messages is noticed: bytes
        /// are left over, so the client reports truncation.
        #[test]
        fn truncation_inside_a_message_is_noticed(which in 0usize..2, at in any::<usize>()) {
            let frames = &bodies()[which];
            let body = frames.concat();
            let at = at % (body.len() + 1);
            let boundaries: Vec<usize> = frames
                .iter()
                .scan(0, |end, f| { *end += f.len(); Some(*end) })
                .collect();
            let (r, left) = read(&[&body[..at]], 1 << 20);
            if r.is_ok() {
                prop_assert_eq!(left == 0, at == 0 || boundaries.contains(&at));
            }
        }

        /// Random bytes, and corpus bodies mutated, cut into random
        /// chunks: a value or an error, never a panic, never a frame over
        /// the limit.
        #[test]
        fn mutated_bodies_never_panic(
            which in 0usize..2,
            mutations in prop::collection::vec(mutation(), 1..6),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
            max in 1usize..4096,
        ) {
            let body = apply(bodies()[which].concat(), &mutations);
            let _ = read(&cut(&body, &cuts), max);
        }

        #[test]
        fn random_bytes_never_panic_in_frames(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let _ = read(&cut(&bytes, &cuts), 256);
            let _ = pb::decode_cursor_entry(&bytes);
        }

        /// The direct row decoder agrees with prost's on any bytes: random,
        /// and encoded rows with mutations (it hands anything unusual to
        /// the generic decoder, so the two can only differ by a bug).
        #[test]
        fn direct_row_decoding_agrees_with_prost(
            row in prop::collection::vec(value(), 0..8),
            mutations in prop::collection::vec(mutation(), 0..4),
            random in prop::collection::vec(any::<u8>(), 0..64),
            width in 0usize..10,
        ) {
            let encoded = pb::CursorEntry::from(CursorEntry::Row { row }).encode_to_vec();
            for bytes in [apply(encoded, &mutations), random.clone(), {
                let mut r = vec![0x22, random.len() as u8];
                r.extend_from_slice(&random);
                r
            }] {
                let fast = pb::decode_cursor_entry_sized(&bytes, width);
                let generic = pb::decode_cursor_entry_generic(&bytes);
                prop_assert_eq!(format!("{:?}", bits(&fast)), format!("{:?}", bits(&generic)));
            }
        }

        /// Every value survives the encoding exactly.
        #[test]
        fn row_values_round_trip_exactly(
            row in prop::collection::vec(prop_oneof![
                Just(Value::Null),
                any::<i64>().prop_map(Value::Integer),
                any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::Float),
                ".*".prop_map(Value::Text),
                prop::collection::vec(any::<u8>(), 0..64).prop_map(Value::Blob),
            ], 0..12)
        ) {
            let bytes = pb::CursorEntry::from(CursorEntry::Row { row: row.clone() }).encode_to_vec();
            let Some(CursorEntry::Row { row: back }) = pb::decode_cursor_entry(&bytes).unwrap() else {
                panic!("not a row")
            };
            prop_assert_eq!(row.len(), back.len());
            for (a, b) in row.iter().zip(&back) {
                match (a, b) {
                    (Value::Float(x), Value::Float(y)) => prop_assert_eq!(x.to_bits(), y.to_bits()),
                    _ => prop_assert_eq!(a, b),
                }
            }
        }
    }
}
