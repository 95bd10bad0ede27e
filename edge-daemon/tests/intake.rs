//! Intake tests over real loopback sockets, with Mosquitto's `mosquitto_pub`,
//! a rumqttc client and a raw MQTT client, against a real outbox.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, Subscribe, SubscribeReasonCode};
use rumqttc::{AsyncClient, Event, MqttOptions};
use tollway_edge::intake::{INTAKE_TOPIC, Intake, IntakeConfig, IntakeCounters};
use tollway_edge::outbox::{BatchLimits, Outbox};
use tollway_runtime::CancellationToken;
use tollway_topics::Message;

use common::{PATIENCE, RawClient, node, record};

/// A running intake with its outbox; the intake stops when this is dropped.
struct Harness {
    addr: std::net::SocketAddr,
    outbox: Arc<Outbox>,
    counters: Arc<IntakeCounters>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(config: IntakeConfig, outbox_cap: Option<u64>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut outbox_config = common::config(dir.path());
    if let Some(cap) = outbox_cap {
        outbox_config.max_undelivered_bytes = cap;
    }
    let outbox = Arc::new(Outbox::open(node(), &outbox_config).unwrap());

    let config = IntakeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..config
    };
    let intake = Intake::bind(config, Arc::clone(&outbox)).await.unwrap();
    let addr = intake.local_addr().unwrap();
    let counters = intake.counters();
    let shutdown = CancellationToken::new();
    tokio::spawn(intake.run(shutdown.clone()));
    Harness {
        addr,
        outbox,
        counters,
        shutdown,
        _dir: dir,
    }
}

fn stored_ids(outbox: &Outbox) -> Vec<String> {
    match outbox.pending(BatchLimits::default()).unwrap() {
        None => Vec::new(),
        Some(batch) => batch
            .records
            .iter()
            .map(|r| r.transaction_id.clone())
            .collect(),
    }
}

async fn mosquitto_pub(
    addr: std::net::SocketAddr,
    topic: &str,
    payload: &[u8],
) -> std::process::Output {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), payload).unwrap();
    let run = tokio::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-i",
            "mosquitto-test",
        ])
        .arg("-f")
        .arg(file.path())
        .output();
    tokio::time::timeout(PATIENCE, run)
        .await
        .expect("mosquitto_pub did not finish in time")
        .expect("mosquitto_pub runs (install mosquitto-clients)")
}

#[tokio::test]
async fn mosquitto_pub_qos1_record_is_stored() {
    let harness = start(IntakeConfig::default(), None).await;

    let output = mosquitto_pub(harness.addr, INTAKE_TOPIC, &record(7).to_cbor().unwrap()).await;
    assert!(
        output.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // mosquitto_pub exits after the PUBACK, so the record must be durable now.
    assert_eq!(stored_ids(&harness.outbox), vec![record(7).transaction_id]);
}

/// The same record published twice (an app resending after a lost PUBACK)
/// is acknowledged both times and stored once.
#[tokio::test]
async fn resent_record_is_acknowledged_and_stored_once() {
    let harness = start(IntakeConfig::default(), None).await;
    let payload = record(8).to_cbor().unwrap();

    for attempt in 1..=2 {
        let output = mosquitto_pub(harness.addr, INTAKE_TOPIC, &payload).await;
        assert!(
            output.status.success(),
            "attempt {attempt}: mosquitto_pub failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    assert_eq!(stored_ids(&harness.outbox), vec![record(8).transaction_id]);
    assert_eq!(IntakeCounters::get(&harness.counters.records), 2);
    assert_eq!(IntakeCounters::get(&harness.counters.duplicates), 1);
}

#[tokio::test]
async fn mosquitto_pub_with_bad_payload_stores_nothing() {
    let harness = start(IntakeConfig::default(), None).await;

    let output = mosquitto_pub(harness.addr, INTAKE_TOPIC, b"not cbor").await;
    // The intake closes the connection instead of sending a PUBACK, which
    // mosquitto_pub 2.0.11 reports as "The connection was lost" (exit 7).
    assert!(
        !output.status.success(),
        "mosquitto_pub succeeded without a PUBACK"
    );
    assert!(stored_ids(&harness.outbox).is_empty());
    assert_eq!(
        IntakeCounters::get(&harness.counters.rejections),
        1,
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn rumqttc_client_gets_pubacks_for_stored_records() {
    let harness = start(IntakeConfig::default(), None).await;

    let mut options = MqttOptions::new("toll-app", "127.0.0.1", harness.addr.port());
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let publisher = tokio::spawn(async move {
        for n in 1..=50 {
            client
                .publish(
                    INTAKE_TOPIC,
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    record(n).to_cbor().unwrap(),
                )
                .await
                .unwrap();
        }
        client
    });

    let mut pubacks = 0;
    tokio::time::timeout(PATIENCE, async {
        while pubacks < 50 {
            match eventloop.poll().await {
                Ok(Event::Incoming(rumqttc::Packet::PubAck(_))) => pubacks += 1,
                Ok(_) => {}
                Err(err) => panic!("rumqttc connection failed: {err}"),
            }
        }
    })
    .await
    .expect("50 PUBACKs did not arrive in time");
    let _client = publisher.await.unwrap();

    let expected: Vec<String> = (1..=50).map(|n| record(n).transaction_id).collect();
    assert_eq!(
        stored_ids(&harness.outbox),
        expected,
        "records stored in publish order"
    );
    assert_eq!(IntakeCounters::get(&harness.counters.records), 50);
}

#[tokio::test]
async fn qos0_record_is_stored_without_puback() {
    let harness = start(IntakeConfig::default(), None).await;
    let mut client = RawClient::connect(harness.addr, "qos0-app").await;

    client
        .publish(
            0,
            QoS::AtMostOnce,
            INTAKE_TOPIC,
            record(1).to_cbor().unwrap(),
        )
        .await;
    // A PINGRESP proves the publish before it was read; QoS 0 gets no PUBACK.
    client.send(Packet::PingReq).await;
    assert_eq!(client.recv().await.unwrap().unwrap(), Packet::PingResp);

    tokio::time::timeout(PATIENCE, async {
        while stored_ids(&harness.outbox).is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("QoS 0 record was never stored");
    assert_eq!(stored_ids(&harness.outbox), vec![record(1).transaction_id]);
}

#[tokio::test]
async fn bad_payload_closes_only_that_connection() {
    let harness = start(IntakeConfig::default(), None).await;
    let mut good = RawClient::connect(harness.addr, "good-app").await;
    let mut bad = RawClient::connect(harness.addr, "bad-app").await;

    bad.publish(1, QoS::AtLeastOnce, INTAKE_TOPIC, vec![0xa1, 0x00])
        .await;
    bad.expect_closed("invalid toll record").await;

    good.publish(
        1,
        QoS::AtLeastOnce,
        INTAKE_TOPIC,
        record(1).to_cbor().unwrap(),
    )
    .await;
    match good.recv().await {
        Some(Ok(Packet::PubAck(ack))) => assert_eq!(ack.pkid, 1),
        other => panic!("the good client expected its PUBACK, got {other:?}"),
    }
    assert_eq!(stored_ids(&harness.outbox), vec![record(1).transaction_id]);
    assert_eq!(IntakeCounters::get(&harness.counters.rejections), 1);
}

#[tokio::test]
async fn rejections_close_the_connection() {
    let harness = start(IntakeConfig::default(), None).await;
    let payload = record(1).to_cbor().unwrap();

    let mut client = RawClient::connect(harness.addr, "wrong-topic").await;
    client
        .publish(
            1,
            QoS::AtLeastOnce,
            "tollway/v1/44/node/x/records",
            payload.clone(),
        )
        .await;
    client.expect_closed("unknown topic").await;

    let mut client = RawClient::connect(harness.addr, "qos2").await;
    client
        .publish(1, QoS::ExactlyOnce, INTAKE_TOPIC, payload.clone())
        .await;
    client.expect_closed("QoS 2").await;

    let mut client = RawClient::connect(harness.addr, "oversized").await;
    client
        .publish(1, QoS::AtLeastOnce, INTAKE_TOPIC, vec![0u8; 64 * 1024])
        .await;
    client.expect_closed("packet over max_packet_bytes").await;

    let mut client = RawClient::open(harness.addr).await;
    client.send(Packet::PingReq).await;
    client.expect_closed("first packet is not CONNECT").await;

    assert!(stored_ids(&harness.outbox).is_empty());
    assert_eq!(IntakeCounters::get(&harness.counters.rejections), 4);
}

#[tokio::test]
async fn subscribe_gets_failure_suback_and_connection_stays() {
    let harness = start(IntakeConfig::default(), None).await;
    let mut client = RawClient::connect(harness.addr, "subscriber").await;

    client
        .send(Packet::Subscribe(Subscribe::new("#", QoS::AtLeastOnce)))
        .await;
    match client.recv().await {
        Some(Ok(Packet::SubAck(ack))) => {
            assert_eq!(ack.return_codes, vec![SubscribeReasonCode::Failure])
        }
        other => panic!("expected a failure SUBACK, got {other:?}"),
    }

    client
        .publish(
            9,
            QoS::AtLeastOnce,
            INTAKE_TOPIC,
            record(1).to_cbor().unwrap(),
        )
        .await;
    match client.recv().await {
        Some(Ok(Packet::PubAck(ack))) => assert_eq!(ack.pkid, 9),
        other => panic!("expected a PUBACK after the rejected SUBSCRIBE, got {other:?}"),
    }
}

#[tokio::test]
async fn silent_client_is_closed_after_keep_alive() {
    let harness = start(IntakeConfig::default(), None).await;
    // Keep-alive 1 s: the intake closes after 1.5 s without a packet.
    let mut client = RawClient::connect_with_keep_alive(harness.addr, "silent-app", 1).await;
    client.expect_closed("keep-alive expired").await;
    assert_eq!(IntakeCounters::get(&harness.counters.rejections), 1);
}

#[tokio::test]
async fn connections_over_the_limit_are_closed() {
    let config = IntakeConfig {
        max_connections: 1,
        ..IntakeConfig::default()
    };
    let harness = start(config, None).await;
    let mut first = RawClient::connect(harness.addr, "first").await;

    let mut second = RawClient::open(harness.addr).await;
    second.expect_closed("connection limit").await;
    assert_eq!(
        IntakeCounters::get(&harness.counters.connections_over_limit),
        1
    );

    // The first connection still works.
    first.send(Packet::PingReq).await;
    assert_eq!(first.recv().await.unwrap().unwrap(), Packet::PingResp);
}

#[tokio::test]
async fn full_outbox_withholds_puback_until_acknowledged() {
    let harness = start(IntakeConfig::default(), Some(32 * 1024)).await;

    // Fill the outbox directly up to its cap.
    let mut last = 0;
    for n in 1.. {
        match harness.outbox.append(&[record(n)]).await {
            Ok(done) => last = done.seqs.unwrap().last,
            Err(err) if err.is_backpressure() => break,
            Err(err) => panic!("unexpected outbox error: {err}"),
        }
    }
    assert!(harness.outbox.stats(SystemTime::now()).unwrap().at_cap());

    let mut client = RawClient::connect(harness.addr, "held-app").await;
    client
        .publish(
            1,
            QoS::AtLeastOnce,
            INTAKE_TOPIC,
            record(1_000_000).to_cbor().unwrap(),
        )
        .await;
    // The connection stays open and returns PINGRESP, but sends no PUBACK.
    client.send(Packet::PingReq).await;
    assert_eq!(client.recv().await.unwrap().unwrap(), Packet::PingResp);
    assert!(
        client
            .recv_within(Duration::from_millis(500))
            .await
            .is_none(),
        "the intake acknowledged a record the outbox had no room for"
    );
    assert!(IntakeCounters::get(&harness.counters.backpressure_retries) >= 1);

    // The centre acknowledges everything: the held record goes in and the
    // PUBACK follows.
    harness.outbox.acknowledge(last).await.unwrap();
    match client.recv().await {
        Some(Ok(Packet::PubAck(ack))) => assert_eq!(ack.pkid, 1),
        other => panic!("expected the PUBACK after room was made, got {other:?}"),
    }
    assert_eq!(
        stored_ids(&harness.outbox),
        vec![record(1_000_000).transaction_id]
    );
    assert_eq!(harness.counters.rejections.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn non_loopback_listen_address_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Arc::new(common::open(dir.path()));
    let config = IntakeConfig {
        listen: "0.0.0.0:1884".parse().unwrap(),
        ..IntakeConfig::default()
    };
    match Intake::bind(config, outbox).await {
        Err(err) => assert!(err.to_string().contains("loopback"), "{err}"),
        Ok(_) => panic!("the intake listened on a non-loopback address"),
    }
}
