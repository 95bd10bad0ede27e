//! The per-listener limits of `[*_listener.limits]` and what a client sees
//! at each: connection count, keep-alive bounds, packet size, queue length,
//! message expiry and session expiry. Each test sets small limits on the
//! service listener of a provincial broker.

use std::time::Duration;

use rumqttc::{ConnectReturnCode, ConnectionError, MqttOptions, Packet, QoS};
use tollway_testkit::*;

const TOPIC: &str = "tollway/v1/44/center/limits";

/// Starts a provincial broker whose service listener has `limits` (TOML
/// lines of `[service_listener.limits]`).
fn broker_with_limits(limits: &str) -> (BrokerFiles, Broker) {
    let files = BrokerFiles::province();
    let mut config = std::fs::read_to_string(&files.config).unwrap();
    config.push_str("\n[service_listener.limits]\n");
    config.push_str(limits);
    std::fs::write(&files.config, config).unwrap();
    let broker = files.start();
    (files, broker)
}

fn service(files: &BrokerFiles, client_id: &str) -> MqttOptions {
    service_options(files, client_id, Some(SERVICE_PASSWORD))
}

/// Options for a persistent session (clean session off).
fn persistent(files: &BrokerFiles, client_id: &str) -> MqttOptions {
    let mut options = service(files, client_id);
    options.set_clean_session(false);
    options
}

/// Returns the value of an unlabelled counter from the metrics endpoint.
fn counter(files: &BrokerFiles, name: &str) -> u64 {
    metric_value(&scrape_metrics(files.ports.metrics), name)
}

/// Subscribes a persistent session to [`TOPIC`] and leaves it offline.
async fn subscribe_and_leave(files: &BrokerFiles, client_id: &str) {
    let (client, mut eventloop, ack) = connect(persistent(files, client_id)).await;
    ack.expect("subscriber was not accepted");
    client.subscribe(TOPIC, QoS::AtLeastOnce).await.unwrap();
    next_packet(&mut eventloop, Duration::from_secs(5), |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await
    .expect("no SUBACK");
    drop(eventloop);
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Publishes `payloads` to [`TOPIC`] at QoS 1 and waits for every PUBACK.
async fn publish_all(files: &BrokerFiles, payloads: &[&str]) {
    let (client, mut eventloop, ack) = connect(service(files, "publisher")).await;
    ack.expect("publisher was not accepted");
    for payload in payloads {
        client
            .publish(TOPIC, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .await
            .unwrap();
        next_puback(&mut eventloop, Duration::from_secs(5))
            .await
            .expect("no PUBACK");
    }
}

/// Reconnects the persistent session and collects what it receives within
/// one second.
async fn resume(files: &BrokerFiles, client_id: &str) -> (bool, Vec<String>) {
    let (_client, mut eventloop, ack) = connect(persistent(files, client_id)).await;
    let session_present = ack.expect("subscriber was not accepted").session_present;
    let mut received = Vec::new();
    while let Ok(payload) = next_packet(&mut eventloop, Duration::from_secs(1), |p| match p {
        Packet::Publish(publish) => Some(String::from_utf8_lossy(&publish.payload).into_owned()),
        _ => None,
    })
    .await
    {
        received.push(payload);
    }
    (session_present, received)
}

#[tokio::test]
async fn connection_limit_rejects_next_client() {
    let (files, _broker) = broker_with_limits("max_connections = 2\n");

    let (_a, _a_loop, ack) = connect(service(&files, "a")).await;
    ack.expect("first client was rejected");
    let (_b, _b_loop, ack) = connect(service(&files, "b")).await;
    ack.expect("second client was rejected");

    let (_c, _c_loop, ack) = connect(service(&files, "c")).await;
    match ack {
        Err(ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::NotAuthorized)
        }
        other => panic!("third client: expected not authorised, got {other:?}"),
    }
    let metrics = scrape_metrics(files.ports.metrics);
    assert!(
        metrics.contains("tollway_broker_rejections_total{listener=\"service_listener\"} 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn keep_alive_outside_bounds_refused() {
    let (files, _broker) = broker_with_limits("min_keep_alive_s = 10\nmax_keep_alive_s = 60\n");

    let cases = [
        (0, None),
        (5, Some(ConnectReturnCode::ServiceUnavailable)),
        (10, None),
        (60, None),
        (61, Some(ConnectReturnCode::ServiceUnavailable)),
    ];
    for (keep_alive_s, refusal) in cases {
        let mut options = service(&files, &format!("keep-alive-{keep_alive_s}"));
        options.set_keep_alive(Duration::from_secs(keep_alive_s));
        let (_client, _eventloop, ack) = connect(options).await;
        match (refusal, ack) {
            (None, Ok(ack)) => assert_eq!(ack.code, ConnectReturnCode::Success),
            (Some(code), Err(ConnectionError::ConnectionRefused(got))) => {
                assert_eq!(got, code, "keep-alive {keep_alive_s} s")
            }
            (expected, got) => {
                panic!("keep-alive {keep_alive_s} s: expected {expected:?}, got {got:?}")
            }
        }
    }
}

#[tokio::test]
async fn oversized_packet_closes_connection() {
    let (files, _broker) = broker_with_limits("max_packet_bytes = 1024\n");
    subscribe_and_leave(&files, "watcher").await;

    let (client, mut eventloop, ack) = connect(service(&files, "big")).await;
    ack.expect("publisher was not accepted");
    client
        .publish(TOPIC, QoS::AtLeastOnce, false, vec![b'x'; 2000])
        .await
        .unwrap();
    let ended = next_puback(&mut eventloop, Duration::from_secs(5)).await;
    assert!(ended.is_err(), "a 2000-byte PUBLISH was acknowledged");

    let (_, received) = resume(&files, "watcher").await;
    assert!(
        received.is_empty(),
        "oversized message delivered: {received:?}"
    );
}

#[tokio::test]
async fn full_queue_drops_oldest_messages() {
    let (files, _broker) = broker_with_limits("max_mqueue_len = 5\n");
    subscribe_and_leave(&files, "slow").await;
    let dropped_before = counter(&files, "tollway_broker_messages_dropped_total");

    let payloads: Vec<String> = (0..8).map(|n| format!("m{n}")).collect();
    let payloads: Vec<&str> = payloads.iter().map(String::as_str).collect();
    publish_all(&files, &payloads).await;

    let (session_present, received) = resume(&files, "slow").await;
    assert!(session_present);
    // rmqtt makes room for a new message by dropping the oldest one.
    assert_eq!(received, ["m3", "m4", "m5", "m6", "m7"]);
    let dropped = counter(&files, "tollway_broker_messages_dropped_total") - dropped_before;
    assert_eq!(dropped, 3);
}

#[tokio::test]
async fn queued_message_expires() {
    let (files, _broker) = broker_with_limits("message_expiry_s = 1\n");
    subscribe_and_leave(&files, "late").await;

    publish_all(&files, &["old"]).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    publish_all(&files, &["new"]).await;

    let (session_present, received) = resume(&files, "late").await;
    assert!(session_present);
    assert_eq!(received, ["new"]);
}

#[tokio::test]
async fn offline_session_expires() {
    let (files, _broker) = broker_with_limits("session_expiry_s = 2\n");

    subscribe_and_leave(&files, "brief").await;
    let (session_present, _) = resume(&files, "brief").await;
    assert!(session_present, "session gone well before its expiry");

    subscribe_and_leave(&files, "gone").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (session_present, _) = resume(&files, "gone").await;
    assert!(!session_present, "session kept past its expiry");
}
