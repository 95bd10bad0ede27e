//! A national broker against real MQTT clients on loopback: bridge logins
//! over TLS with username and password, the loopback service listener,
//! and retained messages across a restart.

use std::time::Duration;

use rumqttc::{ConnectReturnCode, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tollway_testkit::*;

const SHORT: Duration = Duration::from_secs(2);

async fn expect_not_authorised(options: MqttOptions, case: &str) {
    let (_client, _eventloop, ack) = connect(options).await;
    match ack {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::NotAuthorized, "{case}")
        }
        other => panic!("{case}: expected CONNACK not authorised, got {other:?}"),
    }
}

#[tokio::test]
async fn bridge_login_over_tls() {
    let files = BrokerFiles::national();
    let _broker = files.start();

    let (_client, _eventloop, ack) =
        connect(bridge_options(&files, "tollway-bridge-44", BRIDGE_PASSWORD)).await;
    assert_eq!(
        ack.expect("the bridge's password was rejected").code,
        ConnectReturnCode::Success
    );

    expect_not_authorised(
        bridge_options(&files, "tollway-bridge-44", "wrong"),
        "wrong bridge password",
    )
    .await;
    let mut anonymous = bridge_options(&files, "anonymous", BRIDGE_PASSWORD);
    anonymous.set_credentials("", "");
    expect_not_authorised(anonymous, "empty credentials").await;
}

#[tokio::test]
async fn bridge_listener_requires_tls() {
    let files = BrokerFiles::national();
    let _broker = files.start();

    // Plain MQTT to the TLS port never gets a CONNACK.
    let mut plain = MqttOptions::new("plain", "127.0.0.1", files.ports.node);
    plain.set_credentials(BRIDGE_USER, BRIDGE_PASSWORD);
    let (client, eventloop) = rumqttc::AsyncClient::new(plain, 4);
    let mut eventloop = eventloop;
    let result = tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await;
    drop(client);
    if let Ok(Ok(rumqttc::Event::Incoming(Packet::ConnAck(ack)))) = result {
        panic!("plain TCP on the TLS listener got a CONNACK: {ack:?}");
    }
}

#[tokio::test]
async fn listeners_keep_separate_passwords() {
    let files = BrokerFiles::national();
    let _broker = files.start();

    let (_client, _eventloop, ack) =
        connect(service_options(&files, "ingest", Some(SERVICE_PASSWORD))).await;
    assert_eq!(
        ack.expect("the service password was rejected").code,
        ConnectReturnCode::Success
    );

    // The bridge's login is not valid on the service listener, nor the
    // service's on the bridge listener.
    let mut bridge_on_service = service_options(&files, "bridge", None);
    bridge_on_service.set_credentials(BRIDGE_USER, BRIDGE_PASSWORD);
    expect_not_authorised(bridge_on_service, "bridge login on the service listener").await;

    let mut service_on_bridge = bridge_options(&files, "ingest", SERVICE_PASSWORD);
    service_on_bridge.set_credentials(SERVICE_USER, SERVICE_PASSWORD);
    expect_not_authorised(service_on_bridge, "service login on the bridge listener").await;

    expect_not_authorised(
        service_options(&files, "ingest", Some("wrong")),
        "wrong service password",
    )
    .await;
}

#[tokio::test]
async fn bridge_and_service_exchange_messages() {
    let files = BrokerFiles::national();
    let _broker = files.start();

    let (bridge, mut bridge_loop, ack) =
        connect(bridge_options(&files, "tollway-bridge-44", BRIDGE_PASSWORD)).await;
    ack.expect("bridge login failed");
    bridge
        .subscribe("tollway/v1/ops/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let suback = next_packet(&mut bridge_loop, SHORT, |p| match p {
        Packet::SubAck(ack) => Some(ack.return_codes.clone()),
        _ => None,
    })
    .await
    .expect("no SUBACK");
    assert_eq!(suback, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);

    let (ops, mut ops_loop, ack) =
        connect(service_options(&files, "ops", Some(SERVICE_PASSWORD))).await;
    ack.expect("service login failed");
    ops.publish(
        "tollway/v1/ops/deployments/toll-app",
        QoS::AtLeastOnce,
        false,
        b"deployment".to_vec(),
    )
    .await
    .unwrap();
    next_puback(&mut ops_loop, SHORT)
        .await
        .expect("no PUBACK for the ops publish");

    let received = next_packet(&mut bridge_loop, SHORT, |p| match p {
        Packet::Publish(publish) => Some((publish.topic.clone(), publish.payload.to_vec())),
        _ => None,
    })
    .await
    .expect("the bridge did not receive the ops object");
    assert_eq!(
        received,
        (
            "tollway/v1/ops/deployments/toll-app".to_string(),
            b"deployment".to_vec()
        )
    );
}

#[tokio::test]
async fn retained_survives_restart() {
    let files = BrokerFiles::national();
    let broker = files.start();
    let topic = "tollway/v1/ops/deployments/toll-app";

    let (ops, mut ops_loop, ack) =
        connect(service_options(&files, "ops", Some(SERVICE_PASSWORD))).await;
    ack.expect("service login failed");
    ops.publish(topic, QoS::AtLeastOnce, true, b"generation 3".to_vec())
        .await
        .unwrap();
    next_puback(&mut ops_loop, SHORT)
        .await
        .expect("no PUBACK for the retained publish");
    // Stopped right after the PUBACK: the retainer writes in the
    // background, and the broker waits for it at shutdown.
    drop(ops);
    drop(ops_loop);

    let status = broker.stop();
    assert!(
        status.success(),
        "broker exited with {status} after SIGTERM"
    );
    let _broker = files.start();

    let (bridge, mut bridge_loop, ack) =
        connect(bridge_options(&files, "tollway-bridge-44", BRIDGE_PASSWORD)).await;
    ack.expect("bridge login failed after the restart");
    bridge.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    let retained = next_packet(&mut bridge_loop, SHORT, |p| match p {
        Packet::Publish(publish) => Some((publish.retain, publish.payload.to_vec())),
        _ => None,
    })
    .await
    .expect("no retained ops object after the restart");
    assert_eq!(retained, (true, b"generation 3".to_vec()));
}
