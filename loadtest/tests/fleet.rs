//! Simulated nodes against the real `tollway-broker` on loopback: they
//! connect with their own client certificates, publish retained `online`
//! presence, leave `offline` presence through their will when dropped, and
//! come back after the back-off. A centre service on the service listener
//! watches the presence topics as the real centre would.

use std::collections::HashMap;
use std::time::Duration;

use rumqttc::{Packet, QoS};
use tollway_loadtest::fleet::{Access, Fleet, FleetSpec, RetryPolicy};
use tollway_loadtest::pki::client_configs;
use tollway_runtime::BackoffConfig;
use tollway_testkit::{
    BrokerFiles, PROVINCE, SERVICE_PASSWORD, connect, next_packet, service_options,
};
use tollway_topics::{Message, NodeId, Presence, Province};

const NODES: usize = 20;

fn node_ids() -> Vec<NodeId> {
    (0..NODES)
        .map(|index| NodeId::new(format!("fleet-test-{index:02}")).unwrap())
        .collect()
}

/// Collects presence messages until the latest presence of every node has
/// `online == want`, or `timeout` passes. Returns the latest presence per topic.
async fn wait_for_presence(
    eventloop: &mut rumqttc::EventLoop,
    want: bool,
    timeout: Duration,
) -> Result<HashMap<String, bool>, String> {
    let mut latest: HashMap<String, bool> = HashMap::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let publish = next_packet(eventloop, remaining, |packet| match packet {
            Packet::Publish(publish) => Some(publish.clone()),
            _ => None,
        })
        .await
        .map_err(|err| format!("{err}; presence so far: {latest:?}"))?;
        let presence = Presence::from_cbor(&publish.payload)
            .map_err(|err| format!("presence on {} does not decode: {err}", publish.topic))?;
        latest.insert(publish.topic.clone(), presence.online);
        if latest.len() == NODES && latest.values().all(|online| *online == want) {
            return Ok(latest);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_publish_presence_and_come_back_after_drop() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let nodes = node_ids();
    let spec = FleetSpec {
        province: Province::new(PROVINCE).unwrap(),
        nodes: nodes.clone(),
        broker: std::net::SocketAddr::from(([127, 0, 0, 1], files.ports.node)),
        access: Access::Tls(client_configs(&files.ca, &nodes).unwrap()),
        keep_alive: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(10),
        heartbeat: None,
        retry: RetryPolicy::Jittered(BackoffConfig::new(
            Duration::from_millis(100),
            Duration::from_secs(2),
        )),
        tasks: 2,
    };

    // The centre watches every node's presence.
    let (centre, mut eventloop, connack) = connect(service_options(
        &files,
        "presence-watch",
        Some(SERVICE_PASSWORD),
    ))
    .await;
    connack.expect("service login failed");
    centre
        .subscribe(
            format!("tollway/v1/{PROVINCE}/node/+/presence"),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();

    let fleet = Fleet::start(spec);
    let back = fleet.wait_all_back(0, Duration::from_secs(30)).await;
    assert!(
        back.is_some(),
        "not every node connected: {:?}",
        fleet.stats().counters()
    );
    wait_for_presence(&mut eventloop, true, Duration::from_secs(10))
        .await
        .expect("every node publishes online presence");

    // Dropping every session fires every will, then the nodes return.
    let before = fleet.stats().counters();
    fleet.drop_all();
    wait_for_presence(&mut eventloop, false, Duration::from_secs(10))
        .await
        .expect("every dropped node's will sets offline presence");
    let back = fleet
        .wait_all_back(before.ups, Duration::from_secs(30))
        .await;
    assert!(
        back.is_some(),
        "not every node came back: {:?}",
        fleet.stats().counters()
    );
    wait_for_presence(&mut eventloop, true, Duration::from_secs(10))
        .await
        .expect("every returning node publishes online presence again");

    let counters = fleet.stats().counters();
    assert_eq!(counters.up, NODES);
    assert!(counters.attempts >= 2 * NODES as u64, "{counters:?}");
    fleet
        .stop(Duration::from_secs(10))
        .await
        .expect("fleet stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_foreign_certificate_never_comes_up() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let other_ca = tollway_testkit::TestCa::new("another CA");
    let nodes = vec![NodeId::new("stranger").unwrap()];
    let spec = FleetSpec {
        province: Province::new(PROVINCE).unwrap(),
        nodes: nodes.clone(),
        broker: std::net::SocketAddr::from(([127, 0, 0, 1], files.ports.node)),
        access: Access::Tls(client_configs(&other_ca, &nodes).unwrap()),
        keep_alive: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(5),
        heartbeat: None,
        retry: RetryPolicy::Fixed(Duration::from_millis(200)),
        tasks: 1,
    };

    let fleet = Fleet::start(spec);
    let back = fleet.wait_all_back(0, Duration::from_secs(2)).await;

    assert!(back.is_none(), "a node signed by a foreign CA came up");
    let counters = fleet.stats().counters();
    assert_eq!(counters.up, 0);
    assert!(
        counters.failures >= 2,
        "the node did not retry: {counters:?}"
    );
    fleet
        .stop(Duration::from_secs(10))
        .await
        .expect("fleet stops");
}
