//! Size budgets of the wire format. Encoded sizes are deterministic, so
//! these are exact checks, not benchmarks; docs/wire-format.md lists the
//! measured sizes this test prints (`cargo test -p tollway-topics --test
//! size_budget -- --nocapture`).

use tollway_topics::samples;
use tollway_topics::{Compression, Message, RecordBatch};

#[test]
fn typical_toll_record_fits_160_bytes() {
    let size = samples::toll_record().to_cbor().unwrap().len();
    println!("toll record: {size} bytes");
    assert!(
        size <= 160,
        "a typical toll record takes {size} bytes, over the 160-byte budget"
    );
}

#[test]
fn five_app_heartbeat_fits_96_bytes() {
    let size = samples::heartbeat_status().to_cbor().unwrap().len();
    println!("heartbeat status, 5 apps: {size} bytes");
    assert!(
        size <= 96,
        "a five-app heartbeat takes {size} bytes, over the 96-byte budget"
    );
}

#[test]
fn record_ack_fits_16_bytes() {
    let size = samples::record_ack().to_cbor().unwrap().len();
    println!("record acknowledgement: {size} bytes");
    assert!(
        size <= 16,
        "an acknowledgement takes {size} bytes, over the 16-byte budget"
    );
}

#[test]
fn compression_pays_on_full_batches() {
    let record = samples::toll_record();
    let records: Vec<_> = (0..500u64)
        .map(|i| {
            let mut r = record.clone();
            r.transaction_id = format!("G00154400100020101020261204{:08}", i);
            r.pass_time_ms += i * 1_700;
            r.media_id += i * 7919;
            r.plate = format!("粤B{:05}", (i * 37) % 100_000);
            r
        })
        .collect();
    let batch = |compression| RecordBatch {
        node: samples::node(),
        first_seq: 1,
        records: records.clone(),
        compression,
    };
    let plain = batch(Compression::None).to_cbor().unwrap().len();
    let zstd = batch(Compression::Zstd).to_cbor().unwrap().len();
    println!(
        "500-record batch: {plain} bytes plain, {zstd} bytes zstd ({:.1}x)",
        plain as f64 / zstd as f64
    );
    assert!(
        zstd * 2 < plain,
        "zstd batch {zstd} bytes is not under half of plain {plain} bytes"
    );
}
