//! Golden vectors: one checked-in hex file per message type.
//!
//! Each test decodes its vector, compares it with the sample value it was
//! made from, and re-encodes it byte for byte, so any change to the wire
//! format shows up as a failing vector. After a deliberate change, rewrite
//! the files with `TOLLWAY_BLESS=1 cargo test -p tollway-topics --test vectors`
//! and review the diff.

use std::fmt::Debug;
use std::path::PathBuf;

use tollway_topics::samples;
use tollway_topics::{Compression, Message, TollRecord};

fn vector_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(format!("{name}.hex"))
}

/// Reads a vector file: hex digits, whitespace ignored, `#` starts a comment.
fn read_vector(name: &str) -> Vec<u8> {
    let path = vector_path(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "cannot read {}: {err}; create it with TOLLWAY_BLESS=1",
            path.display()
        )
    });
    let digits: String = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(str::split_whitespace)
        .collect();
    hex::decode(&digits).unwrap_or_else(|err| panic!("{} is not hex: {err}", path.display()))
}

fn write_vector(name: &str, bytes: &[u8]) {
    let mut text = format!("# {name}: {} bytes of CBOR\n", bytes.len());
    for chunk in bytes.chunks(32) {
        text.push_str(&hex::encode(chunk));
        text.push('\n');
    }
    std::fs::write(vector_path(name), text).expect("write vector");
}

/// Checks one vector against `expected`, or rewrites it when blessing.
fn check_vector<M: Message + PartialEq + Debug>(name: &str, expected: M) {
    let encoded = expected.to_cbor().expect("sample encodes");
    if std::env::var_os("TOLLWAY_BLESS").is_some() {
        write_vector(name, &encoded);
        return;
    }

    let bytes = read_vector(name);
    let decoded = M::from_cbor(&bytes).unwrap_or_else(|err| panic!("{name}: {err}"));
    assert_eq!(
        decoded, expected,
        "{name}: decoded value differs from the sample"
    );
    let reencoded = decoded.to_cbor().expect("decoded value encodes");
    assert_eq!(
        hex::encode(&reencoded),
        hex::encode(&bytes),
        "{name}: re-encoding changed the bytes"
    );
    assert_eq!(
        encoded, bytes,
        "{name}: the sample no longer encodes to the vector"
    );
}

#[test]
fn toll_record_vector() {
    check_vector("toll_record", samples::toll_record());
}

#[test]
fn truck_record_vector() {
    check_vector("truck_record", samples::truck_record());
}

#[test]
fn record_batch_vector() {
    check_vector("record_batch", samples::record_batch(Compression::None));
}

#[test]
fn record_batch_zstd_vector() {
    check_vector(
        "record_batch_zstd",
        samples::record_batch(Compression::Zstd),
    );
}

#[test]
fn record_ack_vector() {
    check_vector("record_ack", samples::record_ack());
}

#[test]
fn desired_state_vector() {
    check_vector("desired_state", samples::desired_state());
}

#[test]
fn heartbeat_status_vector() {
    check_vector("node_status_heartbeat", samples::heartbeat_status());
}

#[test]
fn troubled_status_vector() {
    check_vector("node_status_troubled", samples::troubled_status());
}

#[test]
fn switched_status_vector() {
    check_vector("node_status_switched", samples::switched_status());
}

#[test]
fn presence_vectors() {
    check_vector("presence_online", samples::presence_online());
    check_vector("presence_offline", tollway_topics::Presence::offline());
    check_vector("presence_labelled", samples::presence_labelled());
}

#[test]
fn command_vectors() {
    check_vector("command_replay", samples::replay_command());
    check_vector("command_collect_logs", samples::logs_command());
    check_vector("command_result", samples::command_result());
}

#[test]
fn hourly_summary_vector() {
    check_vector("hourly_summary", samples::hourly_summary());
}

#[test]
fn forward_batch_vectors() {
    check_vector("forward_batch", samples::forward_batch(Compression::None));
    check_vector(
        "forward_batch_zstd",
        samples::forward_batch(Compression::Zstd),
    );
}

#[test]
fn bridge_state_and_event_vectors() {
    check_vector("bridge_state", samples::bridge_state());
    check_vector("center_event", samples::center_event());
    check_vector(
        "center_event_rollout_paused",
        samples::rollout_paused_event(),
    );
}

#[test]
fn province_status_vector() {
    check_vector("province_status", samples::province_status());
}

#[test]
fn ops_object_vectors() {
    check_vector("deployment_per_node", samples::deployment());
    check_vector("deployment_replicas", samples::replicated_deployment());
    check_vector("rollout", samples::rollout());
    check_vector("rollout_resumed", samples::rollout_resumed());
}

/// A vector written by a newer sender, with two keys this version does not
/// know (31, and the text key "x"), decodes to the same record.
#[test]
fn unknown_keys_vector_decodes() {
    let name = "toll_record_unknown_keys";
    if std::env::var_os("TOLLWAY_BLESS").is_some() {
        write_vector(
            name,
            &with_extra_entries(&samples::toll_record().to_cbor().unwrap()),
        );
        return;
    }
    let bytes = read_vector(name);
    let decoded = TollRecord::from_cbor(&bytes).unwrap_or_else(|err| panic!("{name}: {err}"));
    assert_eq!(decoded, samples::toll_record());
}

/// Appends `31: "future"` and `"x": [1, 2]` to an encoded map whose header
/// is a single byte (fewer than 22 entries).
fn with_extra_entries(encoded: &[u8]) -> Vec<u8> {
    let count = encoded[0] - 0xa0;
    assert!(count < 22, "helper only handles small maps");
    let mut out = vec![0xa0 + count + 2];
    out.extend_from_slice(&encoded[1..]);
    out.extend_from_slice(&[0x18, 31, 0x66]);
    out.extend_from_slice(b"future");
    out.extend_from_slice(&[0x61, b'x', 0x82, 0x01, 0x02]);
    out
}
