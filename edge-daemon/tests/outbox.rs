//! Outbox tests against real RocksDB databases in temporary directories:
//! sequence numbers, resends by transaction id, the delivery watermark,
//! replay, retention, the disk cap and a property test against a simple
//! model.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use tollway_edge::outbox::{BatchLimits, Outbox, OutboxError, SeqRange};
use tollway_topics::{Message, NodeId};

use common::{config, node, open, record, records};

fn transaction_ids(batch: &tollway_topics::RecordBatch) -> Vec<String> {
    batch
        .records
        .iter()
        .map(|r| r.transaction_id.clone())
        .collect()
}

fn expected_ids(range: std::ops::RangeInclusive<u64>) -> Vec<String> {
    range.map(|n| record(n).transaction_id).collect()
}

#[tokio::test]
async fn sequence_numbers_start_at_one_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let outbox = open(dir.path());
        assert_eq!(
            outbox.append(&records(1..=3)).await.unwrap().seqs,
            Some(SeqRange { first: 1, last: 3 })
        );
        assert_eq!(
            outbox.append(&records(4..=4)).await.unwrap().seqs,
            Some(SeqRange { first: 4, last: 4 })
        );
    }

    let outbox = open(dir.path());
    let stats = outbox.stats(SystemTime::now()).unwrap();
    assert_eq!(stats.next_seq, 5, "next seq after reopen");
    assert_eq!(stats.depth, 4, "undelivered records after reopen");
    assert_eq!(
        outbox.append(&records(5..=6)).await.unwrap().seqs,
        Some(SeqRange { first: 5, last: 6 })
    );

    let batch = outbox
        .pending(BatchLimits::default())
        .unwrap()
        .expect("records are pending");
    assert_eq!(batch.first_seq, 1);
    assert_eq!(transaction_ids(&batch), expected_ids(1..=6));
}

#[tokio::test]
async fn outbox_of_another_node_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));

    let other = NodeId::new("G0015-4401-0099").unwrap();
    match Outbox::open(other, &config(dir.path())) {
        Err(OutboxError::WrongNode { stored, .. }) => assert_eq!(stored, node().as_str()),
        Err(other) => panic!("expected WrongNode, got {other}"),
        Ok(_) => panic!("another node's outbox was opened"),
    }
}

#[tokio::test]
async fn ack_moves_watermark_and_pending_skips_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path());
    outbox.append(&records(1..=10)).await.unwrap();

    assert_eq!(outbox.acknowledge(4).await.unwrap(), 4);
    let batch = outbox.pending(BatchLimits::default()).unwrap().unwrap();
    assert_eq!(batch.first_seq, 5, "pending starts above the watermark");
    assert_eq!(transaction_ids(&batch), expected_ids(5..=10));

    // A late or repeated ack changes nothing.
    assert_eq!(outbox.acknowledge(2).await.unwrap(), 4);
    let stats = outbox.stats(SystemTime::now()).unwrap();
    assert_eq!(stats.delivered_through, 4);
    assert_eq!(stats.depth, 6);

    assert_eq!(outbox.acknowledge(10).await.unwrap(), 10);
    assert!(
        outbox.pending(BatchLimits::default()).unwrap().is_none(),
        "nothing pending after the full ack"
    );
    let stats = outbox.stats(SystemTime::now()).unwrap();
    assert_eq!(stats.undelivered_bytes, 0);
    assert_eq!(stats.oldest_undelivered_age, None);
}

/// An app that missed its PUBACK sends the record again. The outbox returns
/// no new seq, in the same group, in later groups and after a reopen,
/// and forgets the record only when retention prunes it.
#[tokio::test]
async fn resent_record_takes_no_new_seq() {
    let dir = tempfile::tempdir().unwrap();
    {
        let outbox = open(dir.path());
        outbox.append(&records(1..=3)).await.unwrap();

        let resend = outbox.append(&[record(2)]).await.unwrap();
        assert_eq!((resend.seqs, resend.duplicates), (None, 1));

        // A resend mixed with new records, and a record twice in one append.
        let mixed = outbox
            .append(&[record(2), record(4), record(4), record(5)])
            .await
            .unwrap();
        assert_eq!(mixed.seqs, Some(SeqRange { first: 4, last: 5 }));
        assert_eq!(mixed.duplicates, 2);

        // Pipelined appends land in one group commit.
        let first = outbox.submit(&[record(6)]).await.unwrap();
        let again = outbox.submit(&[record(6)]).await.unwrap();
        assert_eq!(
            first.await.unwrap().seqs,
            Some(SeqRange { first: 6, last: 6 })
        );
        assert_eq!(again.await.unwrap().duplicates, 1);
    }

    let outbox = open(dir.path());
    let resend = outbox.append(&[record(3)]).await.unwrap();
    assert_eq!((resend.seqs, resend.duplicates), (None, 1), "after reopen");
    let stats = outbox.stats(SystemTime::now()).unwrap();
    assert_eq!(stats.next_seq, 7);
    let batch = outbox.pending(BatchLimits::default()).unwrap().unwrap();
    assert_eq!(transaction_ids(&batch), expected_ids(1..=6));

    // Once retention prunes record 1, a resend of it is stored again.
    outbox.acknowledge(6).await.unwrap();
    let later = SystemTime::now() + Duration::from_secs(8 * 24 * 3600);
    assert_eq!(outbox.prune(later).await.unwrap().removed, 6);
    let late = outbox.append(&[record(1)]).await.unwrap();
    assert_eq!(late.seqs, Some(SeqRange { first: 7, last: 7 }));
}

#[tokio::test]
async fn watermark_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let outbox = open(dir.path());
        outbox.append(&records(1..=5)).await.unwrap();
        outbox.acknowledge(3).await.unwrap();
    }
    let outbox = open(dir.path());
    let batch = outbox.pending(BatchLimits::default()).unwrap().unwrap();
    assert_eq!(batch.first_seq, 4);
    assert_eq!(batch.records.len(), 2);
}

#[tokio::test]
async fn ack_beyond_last_appended_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path());
    outbox.append(&records(1..=3)).await.unwrap();

    match outbox.acknowledge(4).await {
        Err(OutboxError::AckBeyondAppended {
            stored_through,
            last_appended,
            ..
        }) => {
            assert_eq!(stored_through, 4);
            assert_eq!(last_appended, 3);
        }
        other => panic!("expected AckBeyondAppended, got {other:?}"),
    }
    assert_eq!(
        outbox.stats(SystemTime::now()).unwrap().delivered_through,
        0
    );
}

#[tokio::test]
async fn pending_respects_record_and_byte_limits() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path());
    outbox.append(&records(1..=300)).await.unwrap();

    let by_count = BatchLimits {
        max_records: 100,
        max_bytes: 256 * 1024,
    };
    let batch = outbox.pending(by_count).unwrap().unwrap();
    assert_eq!(batch.records.len(), 100);

    let record_bytes = record(1).to_cbor().unwrap().len();
    let by_bytes = BatchLimits {
        max_records: 2000,
        max_bytes: 16 * 1024,
    };
    let batch = outbox.pending(by_bytes).unwrap().unwrap();
    let total: usize = batch
        .records
        .iter()
        .map(|r| r.to_cbor().unwrap().len())
        .sum();
    assert!(total <= 16 * 1024, "batch carries {total} bytes");
    assert!(
        total + record_bytes > 16 * 1024,
        "batch stopped early at {total} bytes"
    );

    // Pipelining: the next batch starts where the previous one ended.
    let next = outbox
        .pending_from(batch.last_seq().unwrap() + 1, by_bytes)
        .unwrap()
        .unwrap();
    assert_eq!(next.first_seq, batch.last_seq().unwrap() + 1);

    let bad = BatchLimits {
        max_records: 0,
        max_bytes: 64 * 1024,
    };
    assert!(matches!(
        outbox.pending(bad),
        Err(OutboxError::InvalidLimits { .. })
    ));
}

#[tokio::test]
async fn replay_reads_delivered_range_until_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path());
    outbox.append(&records(1..=50)).await.unwrap();
    outbox.acknowledge(50).await.unwrap();

    let batch = outbox.read_range(10, 20, BatchLimits::default()).unwrap();
    assert_eq!(batch.first_seq, 10);
    assert_eq!(transaction_ids(&batch), expected_ids(10..=20));

    // A range beyond the last appended record is rejected.
    assert!(matches!(
        outbox.read_range(45, 51, BatchLimits::default()),
        Err(OutboxError::NotRetained { .. })
    ));
    assert!(matches!(
        outbox.read_range(20, 10, BatchLimits::default()),
        Err(OutboxError::NotRetained { .. })
    ));

    // Everything is delivered and older than the window once time passes.
    let later = SystemTime::now() + Duration::from_secs(8 * 24 * 3600);
    let report = outbox.prune(later).await.unwrap();
    assert_eq!(report.removed, 50);
    assert_eq!(report.first_retained, 51);
    match outbox.read_range(10, 20, BatchLimits::default()) {
        Err(OutboxError::NotRetained { first_retained, .. }) => assert_eq!(first_retained, 51),
        other => panic!("expected NotRetained after pruning, got {other:?}"),
    }
}

#[tokio::test]
async fn prune_by_age_keeps_undelivered_records() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path());
    outbox.append(&records(1..=20)).await.unwrap();
    outbox.acknowledge(12).await.unwrap();

    // Within the window nothing goes.
    assert_eq!(outbox.prune(SystemTime::now()).await.unwrap().removed, 0);

    let later = SystemTime::now() + Duration::from_secs(8 * 24 * 3600);
    let report = outbox.prune(later).await.unwrap();
    assert_eq!(report.removed, 12, "only delivered records are pruned");
    assert!(!report.more);

    let stats = outbox.stats(later).unwrap();
    assert_eq!(stats.first_retained, 13);
    assert_eq!(stats.depth, 8);
    assert!(stats.oldest_undelivered_age.unwrap() >= Duration::from_secs(8 * 24 * 3600));
    let batch = outbox.pending(BatchLimits::default()).unwrap().unwrap();
    assert_eq!(transaction_ids(&batch), expected_ids(13..=20));

    // The pruned position survives a reopen.
    drop(outbox);
    let outbox = open(dir.path());
    assert_eq!(outbox.stats(SystemTime::now()).unwrap().first_retained, 13);
}

#[tokio::test]
async fn prune_by_size_removes_oldest_delivered_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    let per_record = 8 + 8 + record(1).to_cbor().unwrap().len() as u64;
    config.retention_bytes = per_record * 10;
    config.max_prune_records = 15;
    let outbox = Outbox::open(node(), &config).unwrap();
    outbox.append(&records(1..=100)).await.unwrap();
    outbox.acknowledge(90).await.unwrap();

    // 90 delivered, room for 10: 80 go, at most 15 per call.
    let mut removed = 0;
    loop {
        let report = outbox.prune(SystemTime::now()).await.unwrap();
        assert!(report.removed <= 15, "one call removed {}", report.removed);
        removed += report.removed;
        if !report.more {
            break;
        }
    }
    assert_eq!(removed, 80);

    let stats = outbox.stats(SystemTime::now()).unwrap();
    assert_eq!(stats.first_retained, 81);
    assert_eq!(
        stats.retained_bytes - stats.undelivered_bytes,
        per_record * 10
    );
    let batch = outbox.read_range(81, 90, BatchLimits::default()).unwrap();
    assert_eq!(transaction_ids(&batch), expected_ids(81..=90));
}

#[tokio::test]
async fn disk_cap_applies_backpressure_without_dropping() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_undelivered_bytes = 32 * 1024;
    let outbox = Outbox::open(node(), &config).unwrap();

    // Fill until the cap rejects an append.
    let mut appended = 0u64;
    let rejection = loop {
        match outbox.append(&[record(appended + 1)]).await {
            Ok(done) => appended = done.seqs.unwrap().last,
            Err(err) => break err,
        }
        assert!(appended < 10_000, "the cap never applied");
    };
    match &rejection {
        OutboxError::Backpressure {
            next_seq,
            cap_bytes,
            ..
        } => {
            assert_eq!(*next_seq, appended + 1);
            assert_eq!(*cap_bytes, 32 * 1024);
        }
        other => panic!("expected Backpressure, got {other}"),
    }
    assert!(rejection.is_backpressure());
    let stats = outbox.stats(SystemTime::now()).unwrap();
    assert!(stats.at_cap());
    assert_eq!(stats.depth, appended, "every accepted record is kept");

    // The rejected append took no seq; after an ack it goes through.
    outbox.acknowledge(appended).await.unwrap();
    let done = outbox.append(&[record(appended + 1)]).await.unwrap();
    assert_eq!(done.seqs.unwrap().first, appended + 1);
}

#[tokio::test]
async fn append_larger_than_cap_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_undelivered_bytes = 32 * 1024;
    let outbox = Outbox::open(node(), &config).unwrap();

    // 1000 records of about 170 bytes can never fit under 32 KiB.
    match outbox.append(&records(1..=1000)).await {
        Err(OutboxError::AppendOverCap { cap_bytes, .. }) => assert_eq!(cap_bytes, 32 * 1024),
        other => panic!("expected AppendOverCap, got {other:?}"),
    }
    assert_eq!(outbox.stats(SystemTime::now()).unwrap().next_seq, 1);
}

#[tokio::test]
async fn invalid_and_empty_appends_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path());

    assert!(matches!(
        outbox.append(&[]).await,
        Err(OutboxError::EmptyAppend { .. })
    ));

    let mut bad = record(1);
    bad.pay_fee += 1; // pay_fee + discount no longer equals fee
    match outbox.append(&[record(1), bad]).await {
        Err(OutboxError::InvalidRecord { index, .. }) => assert_eq!(index, 1),
        other => panic!("expected InvalidRecord, got {other:?}"),
    }
    assert_eq!(
        outbox.stats(SystemTime::now()).unwrap().next_seq,
        1,
        "a rejected append takes no seq"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_distinct_consecutive_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Arc::new(open(dir.path()));

    let mut tasks = Vec::new();
    for task in 0..40u64 {
        let outbox = Arc::clone(&outbox);
        tasks.push(tokio::spawn(async move {
            let mut ranges = Vec::new();
            for i in 0..25u64 {
                let n = task * 1000 + i;
                ranges.push((n, outbox.append(&[record(n)]).await.unwrap().seqs.unwrap()));
            }
            ranges
        }));
    }
    let mut by_seq = std::collections::BTreeMap::new();
    for task in tasks {
        for (n, range) in task.await.unwrap() {
            assert_eq!(range.len(), 1);
            assert!(
                by_seq.insert(range.first, n).is_none(),
                "seq {} given twice",
                range.first
            );
        }
    }
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (1..=1000).collect::<Vec<_>>()
    );

    // Each seq stores the record its append carried.
    let batch = outbox
        .read_range(
            1,
            1000,
            BatchLimits {
                max_records: 2000,
                max_bytes: 500 * 1024,
            },
        )
        .unwrap();
    assert_eq!(batch.records.len(), 1000);
    for (seq, stored) in batch.sequenced() {
        assert_eq!(
            stored.transaction_id,
            record(by_seq[&seq]).transaction_id,
            "seq {seq}"
        );
    }
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Step {
    Append(u64),
    /// Sends a retained record again, chosen by this number.
    Resend(u64),
    Ack(u64),
    PruneAll,
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u64..40).prop_map(Step::Append),
        2 => any::<u64>().prop_map(Step::Resend),
        2 => (0u64..200).prop_map(Step::Ack),
        1 => Just(Step::PruneAll),
        1 => Just(Step::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Against a model (next seq, watermark, first retained), the outbox
    /// assigns the same seqs, moves the watermark the same way and returns
    /// exactly the records the model expects, across reopens and prunes; a
    /// resent record never takes a seq.
    #[test]
    fn outbox_matches_model(steps in proptest::collection::vec(step(), 1..25)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let dir = tempfile::tempdir().unwrap();
            let mut outbox = open(dir.path());
            let (mut next_seq, mut delivered, mut first_retained) = (1u64, 0u64, 1u64);
            let limits = BatchLimits { max_records: 2000, max_bytes: 500 * 1024 };

            for step in steps {
                match step {
                    Step::Append(count) => {
                        let batch = records(next_seq..=next_seq + count - 1);
                        let done = outbox.append(&batch).await.unwrap();
                        prop_assert_eq!(done.seqs, Some(SeqRange { first: next_seq, last: next_seq + count - 1 }));
                        next_seq += count;
                    }
                    Step::Resend(choice) => {
                        if first_retained < next_seq {
                            let n = first_retained + choice % (next_seq - first_retained);
                            let done = outbox.append(&[record(n)]).await.unwrap();
                            prop_assert_eq!((done.seqs, done.duplicates), (None, 1), "resend of {}", n);
                        }
                    }
                    Step::Ack(target) => {
                        let result = outbox.acknowledge(target).await;
                        if target >= next_seq {
                            prop_assert!(result.is_err(), "ack {} beyond last {} accepted", target, next_seq - 1);
                        } else {
                            delivered = delivered.max(target);
                            prop_assert_eq!(result.unwrap(), delivered);
                        }
                    }
                    Step::PruneAll => {
                        let later = SystemTime::now() + Duration::from_secs(30 * 24 * 3600);
                        let report = outbox.prune(later).await.unwrap();
                        prop_assert_eq!(report.removed, delivered + 1 - first_retained);
                        first_retained = delivered + 1;
                    }
                    Step::Reopen => {
                        drop(outbox);
                        outbox = open(dir.path());
                    }
                }

                let stats = outbox.stats(SystemTime::now()).unwrap();
                prop_assert_eq!(stats.next_seq, next_seq);
                prop_assert_eq!(stats.delivered_through, delivered);
                prop_assert_eq!(stats.first_retained, first_retained);
                prop_assert_eq!(stats.depth, next_seq - 1 - delivered);
                match outbox.pending(limits).unwrap() {
                    None => prop_assert_eq!(delivered, next_seq - 1),
                    Some(batch) => {
                        prop_assert_eq!(batch.first_seq, delivered + 1);
                        prop_assert_eq!(transaction_ids(&batch), expected_ids(delivered + 1..=next_seq - 1));
                    }
                }
                if first_retained < next_seq {
                    let all = outbox.read_range(first_retained, next_seq - 1, limits).unwrap();
                    prop_assert_eq!(transaction_ids(&all), expected_ids(first_retained..=next_seq - 1));
                }
            }
            Ok(())
        })?;
    }
}
