//! Provincial ingest against a real `tollway-broker`: simulated nodes publish
//! record batches over mutual TLS, `tollway-center` stores and acknowledges
//! them, and the query API reports what the store contains.

mod common;

use std::time::Duration;

use common::{BASE_TIME_MS, Center, CenterSpec, EventWatcher, GANTRY, HOUR, SimNode, pay_fee_sum};
use tollway_testkit::BrokerFiles;
use tollway_topics::{EventKind, Message, NodeId, RecordBatch};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread")]
async fn ingest_stores_and_acknowledges() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let center = Center::start(
        &files,
        &files.dir.path().join("center"),
        &CenterSpec::ingest("center"),
    );
    let mut node = SimNode::connect(&files, "n1").await;

    node.send(1, 10).await;
    assert_eq!(node.next_ack(WAIT).await, 10);
    node.send(11, 20).await;
    assert_eq!(node.next_ack(WAIT).await, 20);

    assert_eq!(center.stored_through("n1"), 20);
    let records = center.gantry_records();
    assert_eq!(records.len(), 20);
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    assert_eq!(records[0]["plate"], "粤B12345");
    assert_eq!(records[0]["forward_seq"], 1);
    assert_eq!(records[19]["pay_fee"], 920);

    let hours = center.get_ok(&format!(
        "/v1/hours?gantry={GANTRY}&from_ms={BASE_TIME_MS}&to_ms={}",
        BASE_TIME_MS + 100_000
    ));
    assert_eq!(hours["hours"].as_array().unwrap().len(), 1, "{hours}");
    assert_eq!(hours["hours"][0]["hour_batch"], HOUR);
    assert_eq!(hours["hours"][0]["count"], 20);
    assert_eq!(hours["hours"][0]["pay_fee_sum"], pay_fee_sum(1, 20));
    assert_eq!(
        hours["hours"][0]["fee_sum"],
        (1..=20u64).map(|s| 1000 + s).sum::<u64>()
    );

    // A time range that covers seqs 5..=9 only (pass time BASE + seq s).
    let window = center.get_ok(&format!(
        "/v1/records?gantry={GANTRY}&from_ms={}&to_ms={}",
        BASE_TIME_MS + 5_000,
        BASE_TIME_MS + 10_000
    ));
    assert_eq!(window["count"], 5, "{window}");
    let limited = center.get_ok(&format!(
        "/v1/records?gantry={GANTRY}&from_ms={BASE_TIME_MS}&to_ms={}&limit=3",
        BASE_TIME_MS + 100_000
    ));
    assert_eq!(limited["count"], 3);
    assert_eq!(limited["truncated"], true);

    assert_eq!(center.stat("records_stored"), 20);
    assert_eq!(center.stat("records_duplicate"), 0);
    assert_eq!(center.stat("acks_published"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn query_api_rejects_bad_parameters() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let center = Center::start(
        &files,
        &files.dir.path().join("center"),
        &CenterSpec::ingest("center"),
    );

    let cases = [
        ("/v1/records?from_ms=1&to_ms=2", "gantry"),
        (
            &*format!("/v1/records?gantry={GANTRY}&from_ms=5&to_ms=5"),
            "from_ms 5",
        ),
        (
            &*format!("/v1/records?gantry={GANTRY}&from_ms=1&to_ms=5&limit=0"),
            "limit 0",
        ),
        (&*format!("/v1/hours?gantry={GANTRY}&to_ms=5"), "from_ms"),
        ("/v1/nodes/99/n1", "province"),
        ("/v1/nodes/44/bad+node", "node"),
    ];
    for (path, named) in cases {
        let (status, body) = center.get(path);
        assert_eq!(status, 400, "{path}: {body}");
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains(named),
            "{path}: {message:?} does not name {named}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_batch_is_stored_once() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let center = Center::start(
        &files,
        &files.dir.path().join("center"),
        &CenterSpec::ingest("center"),
    );
    let mut node = SimNode::connect(&files, "n1").await;

    node.send(1, 10).await;
    assert_eq!(node.next_ack(WAIT).await, 10);
    // The node missed the ack and sends the batch again, then an
    // overlapping one.
    node.send(1, 10).await;
    assert_eq!(node.next_ack(WAIT).await, 10);
    node.send(6, 15).await;
    assert_eq!(node.next_ack(WAIT).await, 15);

    assert_eq!(center.stat("records_stored"), 15);
    assert_eq!(center.stat("records_duplicate"), 15);
    assert_eq!(center.gantry_records().len(), 15);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_batches_are_counted_not_fatal() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let center = Center::start(
        &files,
        &files.dir.path().join("center"),
        &CenterSpec::ingest("center"),
    );
    let mut node = SimNode::connect(&files, "n1").await;

    // Not CBOR at all.
    node.send_raw("records", b"\xff\x00garbage".to_vec()).await;
    // A valid batch that names another node.
    let foreign = RecordBatch {
        node: NodeId::new("n2").unwrap(),
        first_seq: 1,
        records: vec![common::record("n2", 1)],
        compression: tollway_topics::Compression::None,
    };
    node.send_raw("records", foreign.to_cbor().unwrap()).await;
    // A batch whose first seq is 0, encoded by hand because the encoder
    // refuses it: map {0: "n1", 1: 0, 2: []}.
    node.send_raw(
        "records",
        vec![0xa3, 0x00, 0x62, b'n', b'1', 0x01, 0x00, 0x02, 0x80],
    )
    .await;
    // An invalid summary.
    node.send_raw("summary", vec![0xa0]).await;

    center.wait_stat("batches_invalid", 3, WAIT);
    center.wait_stat("summaries_invalid", 1, WAIT);
    node.send(1, 3).await;
    assert_eq!(node.next_ack(WAIT).await, 3);

    assert_eq!(center.stat("batches_received"), 4);
    assert_eq!(center.stat("batches_invalid"), 3);
    assert_eq!(center.stat("records_stored"), 3);
    assert_eq!(center.stored_through("n2"), 0);
    assert_eq!(center.gantry_records().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn gap_is_filled_by_reconciliation_replay() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let mut events = EventWatcher::connect(&files).await;
    let spec = CenterSpec {
        reconcile_interval_s: 1,
        ..CenterSpec::ingest("center")
    };
    let center = Center::start(&files, &files.dir.path().join("center"), &spec);
    let mut node = SimNode::connect(&files, "n1").await;

    // Batch 6..=10 is lost on the way; 11..=15 arrives, so the ack stays at 5.
    node.send(1, 5).await;
    assert_eq!(node.next_ack(WAIT).await, 5);
    node.send(11, 15).await;
    assert_eq!(node.next_ack(WAIT).await, 5);
    node.send_summary(1, 15).await;
    center.wait_stat("summaries_received", 1, WAIT);

    let command = node.next_command(WAIT).await;
    assert_eq!(SimNode::replay_range(&command), (6, 10));
    let incomplete = events.wait_for(EventKind::HourIncomplete, WAIT).await;
    assert_eq!(incomplete.subject, format!("{GANTRY}/{HOUR}"));
    assert!(
        incomplete.message.contains("stored 10 of 15"),
        "{}",
        incomplete.message
    );

    node.send(6, 10).await;
    node.send_result(command.id).await;
    assert_eq!(node.next_ack(WAIT).await, 15);
    let complete = events.wait_for(EventKind::HourComplete, WAIT).await;
    assert_eq!(complete.subject, format!("{GANTRY}/{HOUR}"));

    center.wait_stat("command_results", 1, WAIT);
    assert_eq!(center.stored_through("n1"), 15);
    assert_eq!(center.stat("records_stored"), 15);
    center.wait_stat("hours_complete", 1, WAIT);
    assert_eq!(center.stat("hours_complete"), 1);
    assert!(center.stat("hours_incomplete") >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_every_record() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let dir = files.dir.path().join("center");
    let center = Center::start(&files, &dir, &CenterSpec::ingest("center"));
    let mut node = SimNode::connect(&files, "n1").await;

    node.send(1, 10).await;
    assert_eq!(node.next_ack(WAIT).await, 10);
    let status = center.stop();
    assert!(
        status.success(),
        "tollway-center exited with {status} on SIGTERM"
    );

    let center = Center::restart(&dir, 3);
    node.send(5, 20).await;
    assert_eq!(node.next_ack(WAIT).await, 20);

    assert_eq!(center.stat("records_stored"), 10);
    assert_eq!(center.stat("records_duplicate"), 6);
    assert_eq!(center.stored_through("n1"), 20);
    assert_eq!(center.gantry_records().len(), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_ingests_share_the_nodes() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let a = Center::start(
        &files,
        &files.dir.path().join("a"),
        &CenterSpec::ingest("center-a"),
    );
    let b = Center::start(
        &files,
        &files.dir.path().join("b"),
        &CenterSpec::ingest("center-b"),
    );

    let mut nodes = Vec::new();
    for i in 0..20 {
        nodes.push(SimNode::connect(&files, &format!("n{i}")).await);
    }
    for node in &nodes {
        node.send(1, 5).await;
    }
    for node in &mut nodes {
        assert_eq!(node.next_ack(WAIT).await, 5, "node {}", node.id);
    }
    for node in &nodes {
        node.send(6, 8).await;
    }
    for node in &mut nodes {
        assert_eq!(node.next_ack(WAIT).await, 8, "node {}", node.id);
    }

    // Each node's records are in exactly one store, all of them.
    let mut in_a = 0;
    for node in &nodes {
        let (through_a, through_b) = (a.stored_through(&node.id), b.stored_through(&node.id));
        assert!(
            (through_a, through_b) == (8, 0) || (through_a, through_b) == (0, 8),
            "node {}: a has {through_a}, b has {through_b}",
            node.id
        );
        in_a += usize::from(through_a == 8);
    }
    assert!(
        in_a > 0 && in_a < 20,
        "one process got every node ({in_a} of 20 in a)"
    );
    assert_eq!(a.stat("records_stored") + b.stat("records_stored"), 160);
    assert_eq!(a.stat("records_duplicate") + b.stat("records_duplicate"), 0);
    assert_eq!(a.gantry_records().len() + b.gantry_records().len(), 160);
}

#[tokio::test(flavor = "multi_thread")]
async fn records_query_command_prints_records() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let center = Center::start(
        &files,
        &files.dir.path().join("center"),
        &CenterSpec::ingest("center"),
    );
    let mut node = SimNode::connect(&files, "n1").await;
    node.send(1, 12).await;
    assert_eq!(node.next_ack(WAIT).await, 12);

    let api = format!("127.0.0.1:{}", center.query_port);
    let from = BASE_TIME_MS.to_string();
    let to = (BASE_TIME_MS + 100_000).to_string();
    let query = |extra: &[&str]| {
        let mut args = vec![
            "records", "query", "--api", &api, "--gantry", GANTRY, "--from", &from, "--to", &to,
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(tollway_testkit::bin_path("tollwayctl"))
            .args(&args)
            .output()
            .unwrap()
    };

    let table = query(&[]);
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let table = String::from_utf8(table.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 14, "header, 12 records, total:\n{table}");
    assert!(lines[1].contains("粤B12345"), "{table}");
    assert_eq!(lines[13], "12 records");

    let json = query(&["--limit", "5", "-o", "json"]);
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["count"], 5);
    assert_eq!(json["truncated"], true);

    let hourly = query(&["--hourly"]);
    let hourly = String::from_utf8(hourly.stdout).unwrap();
    let row: Vec<&str> = hourly.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row,
        [
            HOUR.to_string(),
            "12".into(),
            (1..=12u64).map(|s| 1000 + s).sum::<u64>().to_string(),
            pay_fee_sum(1, 12).to_string()
        ]
    );

    // The API rejects an empty range: exit status 1 and the API's reason.
    let rejected = std::process::Command::new(tollway_testkit::bin_path("tollwayctl"))
        .args([
            "records", "query", "--api", &api, "--gantry", GANTRY, "--from", "5", "--to", "5",
        ])
        .output()
        .unwrap();
    assert_eq!(rejected.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&rejected.stderr).contains("from_ms 5"));

    // A missing flag is a usage error: exit status 2.
    let usage = std::process::Command::new(tollway_testkit::bin_path("tollwayctl"))
        .args(["records", "query"])
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_reconnects_after_broker_restart() {
    let files = BrokerFiles::province();
    let broker = files.start();
    let center = Center::start(
        &files,
        &files.dir.path().join("center"),
        &CenterSpec::ingest("center"),
    );
    {
        let mut node = SimNode::connect(&files, "n1").await;
        node.send(1, 10).await;
        assert_eq!(node.next_ack(WAIT).await, 10);
    }

    let granted = center.stat("subscriptions_granted");
    assert_eq!(granted, 3);
    let status = broker.stop();
    assert!(status.success(), "broker exited with {status}");
    let _broker = files.start();
    // The ingest reconnects with back-off and subscribes again. Batches
    // published before that reach no subscriber; a node sends them again.
    center.wait_stat(
        "subscriptions_granted",
        granted + 3,
        Duration::from_secs(20),
    );

    // The ingest's publishing connection may still be reconnecting, so an
    // ack published meanwhile is lost. Like the edge daemon, the node sends
    // the batch again until it is acknowledged.
    let mut node = SimNode::connect(&files, "n1").await;
    let mut acked = None;
    for _ in 0..10 {
        node.send(11, 20).await;
        acked = node.try_next_ack(Duration::from_secs(2)).await;
        if acked.is_some() {
            break;
        }
    }
    assert_eq!(acked, Some(20));
    assert_eq!(center.stat("records_stored"), 20);
    assert_eq!(center.gantry_records().len(), 20);
}
