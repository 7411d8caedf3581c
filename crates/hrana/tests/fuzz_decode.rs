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
