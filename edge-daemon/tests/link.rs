//! The MQTT link in-process against the real `tollway-broker`: what the
//! centre sends on the node's topics reaches the app manager's desired-state
//! inbox, the command queue and the acknowledgement watch.

mod common;
mod node;

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tollway_edge::link::{Endpoint, Inbound, Link, LinkConfig, TlsFiles};
use tollway_runtime::CancellationToken;
use tollway_testkit::{BrokerFiles, PROVINCE};
use tollway_topics::{Message, NodeId, Province, RecordAck, samples};

use node::Centre;

const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centre_messages_reach_link_outputs() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let centre = Centre::start(&files, "centre-link");

    // The desired state is retained before the node connects, as after a
    // node's reboot.
    let desired = samples::desired_state().to_cbor().unwrap();
    centre
        .publish_to("G0015-0200", "desired", desired.clone(), true)
        .await;

    let dir = tempfile::tempdir().unwrap();
    let pem = files.ca.node_cert("G0015-0200");
    std::fs::write(dir.path().join("ca.crt"), &files.ca.cert_pem).unwrap();
    std::fs::write(dir.path().join("node.crt"), &pem.cert).unwrap();
    std::fs::write(dir.path().join("node.key"), &pem.key).unwrap();
    let endpoint = Endpoint {
        name: "province".to_string(),
        host: "127.0.0.1".to_string(),
        port: files.ports.node,
    };
    let config = LinkConfig::new(
        vec![endpoint],
        dir.path().join("ca.crt"),
        dir.path().join("node.crt"),
        dir.path().join("node.key"),
    );
    let tls = TlsFiles::load(&config).expect("test PKI files load");

    let (desired_tx, mut desired_rx) = watch::channel(None);
    let (commands_tx, mut commands_rx) = mpsc::channel(4);
    let (acks_tx, mut acks_rx) = watch::channel(0u64);
    let inbound = Inbound {
        desired: desired_tx,
        commands: commands_tx,
        acks: acks_tx,
    };
    let node = NodeId::new("G0015-0200").unwrap();
    let province = Province::new(PROVINCE).unwrap();
    let labels = std::collections::BTreeMap::from([("role".to_string(), "gantry".to_string())]);
    let (link, handle) = Link::new(node, province, "test", labels, config, tls, inbound);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(link.run(cancel.clone()));

    tokio::time::timeout(PATIENCE, desired_rx.changed())
        .await
        .expect("the retained desired state reaches the inbox")
        .unwrap();
    assert_eq!(
        desired_rx.borrow_and_update().as_deref(),
        Some(desired.as_slice())
    );
    assert!(handle.is_connected());

    let ack = RecordAck { stored_through: 5 }.to_cbor().unwrap();
    centre
        .publish_to("G0015-0200", "records/ack", ack, false)
        .await;
    tokio::time::timeout(PATIENCE, acks_rx.changed())
        .await
        .expect("the acknowledgement reaches the uplink's watch")
        .unwrap();
    assert_eq!(*acks_rx.borrow(), 5);

    let command = samples::replay_command().to_cbor().unwrap();
    centre
        .publish_to("G0015-0200", "cmd", command.clone(), false)
        .await;
    let received = tokio::time::timeout(PATIENCE, commands_rx.recv())
        .await
        .expect("the command reaches the command queue");
    assert_eq!(received, Some(command));

    cancel.cancel();
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the link stops after cancellation")
        .unwrap();
    assert!(
        !handle.is_connected(),
        "the link reports itself down after stopping"
    );
}
