//! A provincial broker against real MQTT clients on loopback: node
//! confinement by certificate CN and to the contract's topics,
//! certificate checks, service passwords, retained messages across a
//! restart, immediate rebinding, connection pacing and metrics.

use std::time::Duration;

use rumqttc::{ConnectReturnCode, Packet, QoS, SubscribeReasonCode};
use time::OffsetDateTime;
use tollway_testkit::*;

const SHORT: Duration = Duration::from_secs(2);

async fn suback(eventloop: &mut rumqttc::EventLoop) -> Vec<SubscribeReasonCode> {
    next_packet(eventloop, SHORT, |p| match p {
        Packet::SubAck(ack) => Some(ack.return_codes.clone()),
        _ => None,
    })
    .await
    .expect("no SUBACK")
}

#[tokio::test]
async fn node_uses_own_topics() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let pem = files.ca.node_cert("A");

    let (client, mut eventloop, ack) =
        connect(node_options(&files, "A", Some(&pem), &files.ca.cert_pem)).await;
    assert_eq!(
        ack.expect("node A was not accepted").code,
        ConnectReturnCode::Success
    );

    client
        .subscribe(node_topic("A", "cmd"), QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        suback(&mut eventloop).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    // A command from the centre reaches the node.
    let (centre, mut centre_loop, ack) =
        connect(service_options(&files, "ctl", Some(SERVICE_PASSWORD))).await;
    ack.expect("service login failed");
    let centre_poll = tokio::spawn(async move { while centre_loop.poll().await.is_ok() {} });
    centre
        .publish(
            node_topic("A", "cmd"),
            QoS::AtLeastOnce,
            false,
            b"replay".to_vec(),
        )
        .await
        .unwrap();
    let received = next_packet(&mut eventloop, SHORT, |p| match p {
        Packet::Publish(publish) => Some((publish.topic.clone(), publish.payload.to_vec())),
        _ => None,
    })
    .await
    .expect("node A did not receive its command");
    assert_eq!(received, (node_topic("A", "cmd"), b"replay".to_vec()));
    centre_poll.abort();

    // The node's status is acknowledged.
    client
        .publish(
            node_topic("A", "status"),
            QoS::AtLeastOnce,
            false,
            b"up".to_vec(),
        )
        .await
        .unwrap();
    next_puback(&mut eventloop, SHORT)
        .await
        .expect("node A's status was not acknowledged");
}

/// A node publishes only what the contract has it send, and retains only
/// its presence: a retained message on another of its topics disconnects
/// it, so one node cannot fill the broker's retained store.
#[tokio::test]
async fn node_cannot_retain_outside_presence() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let pem = files.ca.node_cert("A");

    let (client, mut eventloop, ack) =
        connect(node_options(&files, "A", Some(&pem), &files.ca.cert_pem)).await;
    ack.expect("node A was not accepted");
    client
        .publish(
            node_topic("A", "presence"),
            QoS::AtLeastOnce,
            true,
            b"online".to_vec(),
        )
        .await
        .unwrap();
    next_puback(&mut eventloop, SHORT)
        .await
        .expect("the retained presence was not acknowledged");

    // One node per case: a node the broker has just disconnected may be
    // refused for a moment if it reconnects at once (see takeover.rs).
    for (node, kind, retain) in [
        ("C1", "status", true),
        ("C2", "junk/1", false),
        ("C3", "desired", false),
    ] {
        let pem = files.ca.node_cert(node);
        let (client, mut eventloop, ack) =
            connect(node_options(&files, node, Some(&pem), &files.ca.cert_pem)).await;
        ack.expect("node was not accepted");
        client
            .publish(
                node_topic(node, kind),
                QoS::AtLeastOnce,
                retain,
                b"x".to_vec(),
            )
            .await
            .unwrap();
        let outcome = next_puback(&mut eventloop, SHORT).await;
        assert!(
            outcome.is_err(),
            "node {node}'s publish to {kind} (retain {retain}) was acknowledged"
        );
    }
}

/// rmqtt publishes a will without the publish check, so the broker judges
/// a node's will at CONNECT. Only its presence, retained or not, is
/// accepted. Any other will gets CONNACK "not authorised".
#[tokio::test]
async fn node_will_limited_to_presence() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let pem = files.ca.node_cert("A");

    let cases = [
        (node_topic("A", "presence"), true, true),
        (node_topic("A", "presence"), false, true),
        (node_topic("A", "desired"), true, false),
        (node_topic("A", "status"), true, false),
        (node_topic("A", "status"), false, false),
        (node_topic("A", "junk/1"), false, false),
        (node_topic("B", "presence"), true, false),
        ("tollway/v1/ops/deployments/evil".to_string(), true, false),
        ("tollway/v1/44/center/records/ack".to_string(), false, false),
    ];
    for (topic, retain, accepted) in cases {
        let mut options = node_options(&files, "A", Some(&pem), &files.ca.cert_pem);
        options.set_last_will(rumqttc::LastWill::new(
            &topic,
            b"x".to_vec(),
            QoS::AtLeastOnce,
            retain,
        ));
        let (_client, _eventloop, ack) = connect(options).await;
        match (accepted, ack) {
            (true, Ok(ack)) => assert_eq!(ack.code, ConnectReturnCode::Success, "{topic}"),
            (false, Err(rumqttc::ConnectionError::ConnectionRefused(code))) => {
                assert_eq!(code, ConnectReturnCode::NotAuthorized, "{topic}")
            }
            (accepted, other) => {
                panic!(
                    "will on {topic} (retain {retain}): accepted should be {accepted}, got {other:?}"
                )
            }
        }
    }
}

/// A node's first SUBSCRIBE and PUBLISH, sent in the same flight as its
/// CONNECT, are judged like any later one. The `rmqtt-acl` plugin this
/// broker used before set up each node's rule in a task spawned after
/// CONNACK, so on a busy broker the first SUBSCRIBE was refused and the
/// first PUBLISH disconnected the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_packets_after_connect_are_authorised() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let _ = rustls::crypto::ring::default_provider().install_default();

    let mut nodes = tokio::task::JoinSet::new();
    for i in 0..60 {
        let id = format!("burst{i}");
        let pem = files.ca.node_cert(&id);
        let options = node_options(&files, &id, Some(&pem), &files.ca.cert_pem);
        nodes.spawn(async move {
            // Queued before the first poll, so rumqttc writes both right
            // after the CONNACK.
            let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
            client
                .subscribe(node_topic(&id, "records/ack"), QoS::AtLeastOnce)
                .await
                .unwrap();
            client
                .publish(node_topic(&id, "records"), QoS::AtLeastOnce, false, vec![1])
                .await
                .unwrap();

            let (mut suback, mut puback) = (None, false);
            let outcome = tokio::time::timeout(Duration::from_secs(20), async {
                while suback.is_none() || !puback {
                    match eventloop.poll().await {
                        Ok(rumqttc::Event::Incoming(Packet::SubAck(ack))) => {
                            suback = Some(ack.return_codes)
                        }
                        Ok(rumqttc::Event::Incoming(Packet::PubAck(_))) => puback = true,
                        Ok(_) => {}
                        Err(err) => return Err(format!("{id}: connection lost: {err}")),
                    }
                }
                Ok(())
            })
            .await;
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(lost)) => return Err(lost),
                Err(_) => return Err(format!("{id}: no SUBACK or PUBACK within 20 s")),
            }
            match suback {
                Some(codes) if codes == vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)] => {
                    Ok(())
                }
                other => Err(format!("{id}: SUBACK {other:?}")),
            }
        });
    }

    let mut failures = Vec::new();
    while let Some(result) = nodes.join_next().await {
        if let Err(failure) = result.unwrap() {
            failures.push(failure);
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn node_cannot_subscribe_elsewhere() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let pem = files.ca.node_cert("A");

    let (client, mut eventloop, ack) =
        connect(node_options(&files, "A", Some(&pem), &files.ca.cert_pem)).await;
    ack.expect("node A was not accepted");

    client
        .subscribe(node_topic("B", "desired"), QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        suback(&mut eventloop).await,
        vec![SubscribeReasonCode::Failure],
        "B's topic"
    );

    client.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        suback(&mut eventloop).await,
        vec![SubscribeReasonCode::Failure],
        "#"
    );

    client
        .subscribe(
            format!("tollway/v1/{PROVINCE}/node/+/status"),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    assert_eq!(
        suback(&mut eventloop).await,
        vec![SubscribeReasonCode::Failure],
        "+ over nodes"
    );
}

#[tokio::test]
async fn node_cannot_publish_to_other_node() {
    let files = BrokerFiles::province();
    let _broker = files.start();

    // A service watches every node topic, so a leaked message would show.
    let (service, mut service_loop, ack) =
        connect(service_options(&files, "watcher", Some(SERVICE_PASSWORD))).await;
    ack.expect("service login failed");
    service
        .subscribe(format!("tollway/v1/{PROVINCE}/node/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        suback(&mut service_loop).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    let pem = files.ca.node_cert("A");
    let (client, mut eventloop, ack) =
        connect(node_options(&files, "A", Some(&pem), &files.ca.cert_pem)).await;
    ack.expect("node A was not accepted");
    client
        .publish(
            node_topic("B", "status"),
            QoS::AtLeastOnce,
            false,
            b"forged".to_vec(),
        )
        .await
        .unwrap();

    let ended = next_puback(&mut eventloop, SHORT).await;
    assert!(
        ended.is_err(),
        "the forged publish was acknowledged instead of disconnecting A"
    );

    let leaked = next_packet(&mut service_loop, SHORT, |p| match p {
        Packet::Publish(publish) => Some(publish.topic.clone()),
        _ => None,
    })
    .await;
    assert!(leaked.is_err(), "the service received {leaked:?}");
}

#[tokio::test]
async fn username_of_other_node_ignored() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let pem = files.ca.node_cert("A");

    let mut options = node_options(&files, "A", Some(&pem), &files.ca.cert_pem);
    options.set_credentials("B", "anything");
    let (client, mut eventloop, ack) = connect(options).await;
    ack.expect("node A with username B was not accepted");

    client
        .subscribe(node_topic("B", "desired"), QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        suback(&mut eventloop).await,
        vec![SubscribeReasonCode::Failure],
        "B's topics"
    );
    client
        .subscribe(node_topic("A", "desired"), QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        suback(&mut eventloop).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
        "A's topics"
    );
}

#[tokio::test]
async fn client_id_of_other_node_rejected() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let pem = files.ca.node_cert("A");

    let (_client, _eventloop, ack) =
        connect(node_options(&files, "B", Some(&pem), &files.ca.cert_pem)).await;
    match ack {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::NotAuthorized)
        }
        other => panic!("node A using client id B got {other:?}"),
    }
}

#[tokio::test]
async fn bad_certificates_rejected() {
    let files = BrokerFiles::province();
    let _broker = files.start();

    let foreign = TestCa::new("another CA").node_cert("A");
    let expired = files
        .ca
        .node_cert_until("A", OffsetDateTime::now_utc() - time::Duration::days(1));
    let cases = [
        ("another CA", Some(&foreign)),
        ("expired", Some(&expired)),
        ("no certificate", None),
    ];

    for (case, pem) in cases {
        let (_client, _eventloop, ack) =
            connect(node_options(&files, "A", pem, &files.ca.cert_pem)).await;
        assert!(
            ack.is_err(),
            "{case}: the broker accepted the connection: {ack:?}"
        );
    }

    // The same broker still accepts a valid certificate, so the rejections
    // above are about the certificates.
    let valid = files.ca.node_cert("A");
    let (_client, _eventloop, ack) =
        connect(node_options(&files, "A", Some(&valid), &files.ca.cert_pem)).await;
    ack.expect("a valid certificate was rejected");
}

#[tokio::test]
async fn service_password_checked() {
    let files = BrokerFiles::province();
    let _broker = files.start();

    for (case, password) in [("wrong password", Some("wrong")), ("no password", None)] {
        let (_client, _eventloop, ack) = connect(service_options(&files, "svc", password)).await;
        match ack {
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                assert_eq!(code, ConnectReturnCode::NotAuthorized, "{case}")
            }
            other => panic!("{case}: expected CONNACK not authorised, got {other:?}"),
        }
    }

    let (_client, _eventloop, ack) =
        connect(service_options(&files, "svc", Some(SERVICE_PASSWORD))).await;
    assert_eq!(
        ack.expect("the right password was rejected").code,
        ConnectReturnCode::Success
    );
}

#[tokio::test]
async fn retained_survives_restart() {
    let files = BrokerFiles::province();
    let broker = files.start();
    let topic = node_topic("A", "desired");

    let (service, mut service_loop, ack) =
        connect(service_options(&files, "ctl", Some(SERVICE_PASSWORD))).await;
    ack.expect("service login failed");
    service
        .publish(&topic, QoS::AtLeastOnce, true, b"generation 7".to_vec())
        .await
        .unwrap();
    next_puback(&mut service_loop, SHORT)
        .await
        .expect("no PUBACK for the retained publish");
    // Stopped right after the PUBACK: the retainer writes in the
    // background, and the broker waits for it at shutdown.
    drop(service);
    drop(service_loop);

    let status = broker.stop();
    assert!(
        status.success(),
        "broker exited with {status} after SIGTERM"
    );
    let _broker = files.start();

    let pem = files.ca.node_cert("A");
    let (client, mut eventloop, ack) =
        connect(node_options(&files, "A", Some(&pem), &files.ca.cert_pem)).await;
    ack.expect("node A was not accepted after the restart");
    client.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
    let retained = next_packet(&mut eventloop, SHORT, |p| match p {
        Packet::Publish(publish) => Some((publish.retain, publish.payload.to_vec())),
        _ => None,
    })
    .await
    .expect("no retained desired state after the restart");
    assert_eq!(retained, (true, b"generation 7".to_vec()));
}

#[tokio::test]
async fn restart_binds_immediately() {
    let files = BrokerFiles::province();
    let broker = files.start();

    // Connections closed by the broker leave its side in TIME_WAIT, which
    // blocks a new bind without SO_REUSEADDR.
    let pem = files.ca.node_cert("A");
    let (_node, _node_loop, ack) =
        connect(node_options(&files, "A", Some(&pem), &files.ca.cert_pem)).await;
    ack.expect("node A was not accepted");
    let (_svc, _svc_loop, ack) =
        connect(service_options(&files, "svc", Some(SERVICE_PASSWORD))).await;
    ack.expect("service login failed");

    broker.stop();
    // `start` panics if the new process exits, e.g. on "Address already in use".
    let _broker = files.start();
    let (_node, _node_loop, ack) =
        connect(node_options(&files, "A", Some(&pem), &files.ca.cert_pem)).await;
    ack.expect("node A was not accepted after the restart");
}

#[tokio::test]
async fn metrics_count_connections() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let pem = files.ca.node_cert("A");

    let (_client, _eventloop, ack) =
        connect(node_options(&files, "A", Some(&pem), &files.ca.cert_pem)).await;
    ack.expect("node A was not accepted");
    let (_svc, _svc_loop, ack) = connect(service_options(&files, "svc", Some("wrong"))).await;
    assert!(ack.is_err(), "a wrong password was accepted");

    let response = scrape_metrics(files.ports.metrics);
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.contains("tollway_broker_connections{listener=\"node_listener\"} 1\n"),
        "{response}"
    );
    assert!(
        response.contains("tollway_broker_connects_total{listener=\"node_listener\"} 1\n"),
        "{response}"
    );
    assert!(
        response.contains("tollway_broker_rejections_total{listener=\"service_listener\"} 1\n"),
        "{response}"
    );
}

/// Pacing at one new connection per second: node A uses the burst. B, C
/// and D arrive together half a second later and get slots about 0.5 s,
/// 1.5 s and 2.5 s away, in whatever order they arrive. The first two are
/// accepted; the last passes the 2 s handshake timeout and is refused with
/// "server unavailable". The metrics count three paced connections and one
/// pacing refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pacing_delays_then_refuses_past_handshake_timeout() {
    let files = BrokerFiles::province();
    let mut config = std::fs::read_to_string(&files.config).unwrap();
    config.push_str(
        "\n[node_listener.limits]\nnew_connections_per_second = 1\nnew_connections_burst = 1\nhandshake_timeout_s = 2\n",
    );
    std::fs::write(&files.config, config).unwrap();
    let _broker = files.start();
    let node = |name: &str| {
        let pem = files.ca.node_cert(name);
        node_options(&files, name, Some(&pem), &files.ca.cert_pem)
    };

    let (_a, _a_loop, ack) = connect(node("A")).await;
    ack.expect("node A, within the burst, was refused");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (b, c, d) = tokio::join!(connect(node("B")), connect(node("C")), connect(node("D")));
    let mut accepted = 0;
    let mut refused = 0;
    for (name, (_, _, ack)) in [("B", b), ("C", c), ("D", d)] {
        match ack {
            Ok(_) => accepted += 1,
            Err(rumqttc::ConnectionError::ConnectionRefused(
                ConnectReturnCode::ServiceUnavailable,
            )) => refused += 1,
            Err(other) => panic!("node {name}: unexpected {other:?}"),
        }
    }
    assert_eq!(accepted, 2, "nodes paced within the handshake timeout");
    assert_eq!(refused, 1, "nodes paced past the handshake timeout");

    let metrics = scrape_metrics(files.ports.metrics);
    for expected in [
        "tollway_broker_paced_connects_total{listener=\"node_listener\"} 3\n",
        "tollway_broker_pacing_refusals_total{listener=\"node_listener\"} 1\n",
        "tollway_broker_connects_total{listener=\"node_listener\"} 3\n",
    ] {
        assert!(metrics.contains(expected), "no {expected:?} in {metrics}");
    }
}
