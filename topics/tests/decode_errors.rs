//! Every typed decode and encode error, each from the smallest input that
//! produces it, with the message type and field it must name.

use minicbor::Encoder;
use tollway_topics::limits::{MAX_RECORDS_PER_BATCH, MAX_SMALL_MESSAGE_BYTES};
use tollway_topics::samples;
use tollway_topics::{
    Command, Compression, DecodeError, DesiredState, EncodeError, Message, RecordAck, RecordBatch,
    TollRecord,
};

/// Writes one CBOR value into a map under construction.
type WriteValue<'a> = &'a dyn Fn(&mut Encoder<&mut Vec<u8>>);

/// Builds a CBOR map from (key, value-writer) pairs.
fn map(entries: &[(u64, WriteValue)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut e = Encoder::new(&mut out);
    e.map(entries.len() as u64).unwrap();
    for (key, write) in entries {
        e.u64(*key).unwrap();
        write(&mut e);
    }
    out
}

#[test]
fn oversized_payload_is_rejected_before_parsing() {
    let bytes = vec![0u8; MAX_SMALL_MESSAGE_BYTES + 1];
    let err = TollRecord::from_cbor(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::TooLarge {
                message: "TollRecord",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn non_map_payload_is_malformed() {
    for bytes in [&[][..], &[0x01], &[0x82, 0x01, 0x02], &[0xa2, 0x00]] {
        let err = RecordAck::from_cbor(bytes).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Malformed {
                    message: "RecordAck",
                    ..
                }
            ),
            "{bytes:?}: {err}"
        );
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut bytes = samples::record_ack().to_cbor().unwrap();
    bytes.push(0x00);
    let err = RecordAck::from_cbor(&bytes).unwrap_err();
    assert!(
        matches!(err, DecodeError::TrailingBytes { count: 1, .. }),
        "{err}"
    );
}

#[test]
fn duplicate_key_is_rejected() {
    let bytes = map(&[(0, &|e| drop(e.u64(1))), (0, &|e| drop(e.u64(2)))]);
    let err = RecordAck::from_cbor(&bytes).unwrap_err();
    assert!(
        matches!(err, DecodeError::DuplicateKey { key: 0, .. }),
        "{err}"
    );
}

#[test]
fn missing_required_field_names_it() {
    let bytes = map(&[]);
    let err = RecordAck::from_cbor(&bytes).unwrap_err();
    match err {
        DecodeError::MissingField {
            message,
            field,
            key,
        } => {
            assert_eq!(message, "RecordAck");
            assert_eq!(field, "stored_through");
            assert_eq!(key, 0);
        }
        other => panic!("expected MissingField, got {other}"),
    }
}

#[test]
fn wrong_type_names_field_and_expectation() {
    let bytes = map(&[(0, &|e| drop(e.str("many")))]);
    let err = RecordAck::from_cbor(&bytes).unwrap_err();
    match &err {
        DecodeError::WrongType {
            message,
            field,
            expected,
            ..
        } => {
            assert_eq!(*message, "RecordAck");
            assert_eq!(*field, "stored_through");
            assert!(expected.contains("unsigned integer"), "{expected}");
        }
        other => panic!("expected WrongType, got {other}"),
    }
    assert!(err.to_string().contains("stored_through"), "{err}");
}

#[test]
fn integer_overflow_is_a_wrong_type() {
    // A fee that does not fit u32.
    let mut record = samples::toll_record().to_cbor().unwrap();
    let fee_at = find_key(&record, 10);
    // 3550 is encoded as 0x19 0x0d 0xde; replace with a u64.
    record.splice(fee_at..fee_at + 3, [0x1b, 0, 0, 0, 1, 0, 0, 0, 0]);
    let err = TollRecord::from_cbor(&record).unwrap_err();
    assert!(
        matches!(err, DecodeError::WrongType { field: "fee", .. }),
        "{err}"
    );
}

#[test]
fn unknown_code_lists_valid_codes() {
    let mut record = samples::toll_record().to_cbor().unwrap();
    let colour_at = find_key(&record, 6);
    record[colour_at] = 0x09;
    let err = TollRecord::from_cbor(&record).unwrap_err();
    match &err {
        DecodeError::UnknownCode {
            field,
            code,
            expected,
            ..
        } => {
            assert_eq!(*field, "plate_colour");
            assert_eq!(*code, 9);
            assert!(expected.contains("blue"), "{expected}");
        }
        other => panic!("expected UnknownCode, got {other}"),
    }
}

#[test]
fn unknown_command_action_is_an_unknown_code() {
    let bytes = map(&[(0, &|e| drop(e.u64(1))), (1, &|e| drop(e.u64(99)))]);
    let err = Command::from_cbor(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::UnknownCode {
                field: "action",
                code: 99,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn corrupt_compressed_batch_is_a_decompression_error() {
    let bytes = map(&[
        (0, &|e| drop(e.str("node-1"))),
        (1, &|e| drop(e.u64(1))),
        (3, &|e| drop(e.bytes(b"not zstd at all"))),
        (4, &|e| drop(e.u64(1))),
    ]);
    let err = RecordBatch::from_cbor(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::Decompression {
                field: "records_zstd",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn compressed_count_mismatch_is_invalid() {
    let mut batch = samples::record_batch(Compression::Zstd).to_cbor().unwrap();
    // The count is the last entry: key 4, value 2.
    let last = batch.len() - 1;
    assert_eq!(batch[last], 0x02);
    batch[last] = 0x03;
    let err = RecordBatch::from_cbor(&batch).unwrap_err();
    assert!(
        matches!(&err, DecodeError::Invalid(invalid) if invalid.field == "record_count"),
        "{err}"
    );
}

#[test]
fn invalid_value_names_field() {
    let mut record = samples::toll_record();
    record.pay_fee += 1;
    let err = record.to_cbor().unwrap_err();
    assert!(
        matches!(&err, EncodeError::Invalid(invalid) if invalid.field == "pay_fee"),
        "{err}"
    );

    // The same record, encoded without validation, is rejected on decode.
    let bytes = tollway_topics::wire::MapWriter::write_message(&record);
    let err = TollRecord::from_cbor(&bytes).unwrap_err();
    assert!(
        matches!(&err, DecodeError::Invalid(invalid) if invalid.field == "pay_fee"),
        "{err}"
    );
}

#[test]
fn invalid_node_id_in_batch_is_rejected() {
    let bytes = map(&[(0, &|e| drop(e.str("node/1"))), (1, &|e| drop(e.u64(1)))]);
    let err = RecordBatch::from_cbor(&bytes).unwrap_err();
    assert!(
        matches!(&err, DecodeError::Invalid(invalid) if invalid.field == "node"),
        "{err}"
    );
    assert!(err.to_string().contains("node/1"), "{err}");
}

#[test]
fn too_many_records_rejected_both_ways() {
    let mut batch = samples::record_batch(Compression::None);
    batch.records = vec![samples::toll_record(); MAX_RECORDS_PER_BATCH + 1];
    let err = batch.to_cbor().unwrap_err();
    assert!(
        matches!(&err, EncodeError::Invalid(invalid) if invalid.field == "records"),
        "{err}"
    );

    // An array header that claims too many entries fails before decoding any.
    let bytes = map(&[
        (0, &|e| drop(e.str("node-1"))),
        (1, &|e| drop(e.u64(1))),
        (2, &|e| drop(e.array(MAX_RECORDS_PER_BATCH as u64 + 1))),
    ]);
    let err = RecordBatch::from_cbor(&bytes).unwrap_err();
    assert!(
        matches!(&err, DecodeError::Invalid(invalid) if invalid.field == "records")
            || matches!(err, DecodeError::Malformed { .. }),
        "{err}"
    );
}

#[test]
fn oversized_encode_is_too_large() {
    let mut state = samples::desired_state();
    for app in &mut state.apps {
        app.env = (0..60)
            .map(|i| (format!("VAR_{i}"), "x".repeat(4000)))
            .collect();
    }
    let err = state.to_cbor().unwrap_err();
    assert!(
        matches!(
            err,
            EncodeError::TooLarge {
                message: "DesiredState",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn duplicate_app_names_are_invalid() {
    let mut state = samples::desired_state();
    state.apps[1].name = state.apps[0].name.clone();
    let err = state.to_cbor().unwrap_err();
    assert!(
        matches!(&err, EncodeError::Invalid(invalid) if invalid.field == "apps"),
        "{err}"
    );
    let bytes = tollway_topics::wire::MapWriter::write_message(&state);
    assert!(DesiredState::from_cbor(&bytes).is_err());
}

#[test]
fn nested_error_names_nested_message() {
    let mut state = samples::desired_state();
    state.apps[0].image = String::new();
    let bytes = tollway_topics::wire::MapWriter::write_message(&state);
    let err = DesiredState::from_cbor(&bytes).unwrap_err();
    match &err {
        DecodeError::Invalid(invalid) => {
            assert_eq!(invalid.message, "AppSpec");
            assert_eq!(invalid.field, "image");
        }
        other => panic!("expected Invalid, got {other}"),
    }
}

/// Position of the value of top-level `key` in an encoded map whose keys are
/// all below 24 (one-byte keys).
fn find_key(encoded: &[u8], key: u8) -> usize {
    let mut d = minicbor::Decoder::new(encoded);
    let len = d.map().unwrap().unwrap();
    for _ in 0..len {
        let k = d.u8().unwrap();
        if k == key {
            return d.position();
        }
        d.skip().unwrap();
    }
    panic!("key {key} not found");
}
