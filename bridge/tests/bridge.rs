//! The bridge between real brokers on loopback: our broker to our broker
//! in both directions, our broker to Mosquitto as the national broker,
//! failover, the bridge's retained state, rule overlap at start-up, lane
//! order under a bandwidth cap, a national broker and the bridge itself
//! killed mid-stream, and retained ops objects after a cut link.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use tollway_testkit::bridge::{BridgeFiles, BridgeSettings, bridge_state_topic};
use tollway_testkit::collect::{Collector, Received};
use tollway_testkit::gate::TcpGate;
use tollway_testkit::mosquitto::MosquittoFiles;
use tollway_testkit::*;
use tollway_topics::{BridgeState, Message};

const ARRIVAL: Duration = Duration::from_secs(20);

fn status_topic(node: &str) -> String {
    node_topic(node, "status")
}

/// Publishes probes on both local sessions' topics until both arrive at
/// `national`, which proves that every subscription of the bridge is in
/// place.
async fn wait_until_bridged(local: &Collector, national: &Collector) {
    for attempt in 0..100 {
        let bulk = format!("probe-bulk-{attempt}");
        let control = format!("probe-control-{attempt}");
        local
            .publish("tollway/v1/44/center/status", false, bulk.clone())
            .await;
        local
            .publish(&node_topic("probe", "cmd/result"), false, control.clone())
            .await;
        let both = national
            .wait_until(Duration::from_millis(200), |r| {
                r.iter().any(|m| m.payload == bulk.as_bytes())
                    && r.iter().any(|m| m.payload == control.as_bytes())
            })
            .await;
        if both {
            return;
        }
    }
    panic!("the bridge did not forward probes within 20 s");
}

/// Returns the payloads received on `topic`, as strings.
fn payloads_on(collector: &Collector, topic: &str) -> Vec<String> {
    collector
        .received()
        .into_iter()
        .filter(|m| m.topic == topic)
        .map(|m| String::from_utf8(m.payload).unwrap())
        .collect()
}

/// Starts a provincial and a national broker, each with its files.
fn start_brokers() -> (BrokerFiles, Broker, BrokerFiles, Broker) {
    let province = BrokerFiles::province();
    let province_broker = province.start();
    let national = BrokerFiles::national();
    let national_broker = national.start();
    (province, province_broker, national, national_broker)
}

/// Bridge settings from `province`'s service listener to the national
/// broker at loopback `remote_port` (its bridge listener, or a gate).
fn bridge_settings(
    province: &BrokerFiles,
    national: &BrokerFiles,
    remote_port: u16,
) -> BridgeSettings {
    BridgeSettings::new(
        province.ports.service,
        vec![format!("127.0.0.1:{remote_port}")],
        &national.ca.cert_pem,
    )
}

/// Starts a collector logged in to `broker`'s service listener as a
/// centre service, subscribed to `filters`.
async fn service_collector(broker: &BrokerFiles, client_id: &str, filters: &[&str]) -> Collector {
    Collector::start(
        service_options(broker, client_id, Some(SERVICE_PASSWORD)),
        filters,
    )
    .await
}

fn decode_state(payload: &[u8]) -> BridgeState {
    BridgeState::from_cbor(payload).expect("bridge state is not a valid BridgeState")
}

#[tokio::test]
async fn forwards_both_directions() {
    let (province, _province_broker, national, _national_broker) = start_brokers();

    // The first address refuses connections, so the bridge fails over to
    // the second.
    let dead_port = Ports::pick().node;
    let settings = BridgeSettings::new(
        province.ports.service,
        vec![
            format!("127.0.0.1:{dead_port}"),
            format!("127.0.0.1:{}", national.ports.node),
        ],
        &national.ca.cert_pem,
    );
    let bridge_files = BridgeFiles::write(&settings);

    let up = service_collector(&national, "national-ingest", &["tollway/v1/44/#"]).await;
    let down = service_collector(
        &province,
        "province-controller",
        &[
            "tollway/v1/44/node/+/cmd",
            "tollway/v1/ops/#",
            "tollway/v1/44/center/records/ack",
        ],
    )
    .await;
    let _bridge = bridge_files.start();
    wait_until_bridged(&down, &up).await;

    // Up: 50 status messages (bulk) and a presence (control, retained).
    for i in 0..50 {
        down.publish(&status_topic("G1"), false, format!("status {i}"))
            .await;
    }
    down.publish(&node_topic("G1", "presence"), true, "online")
        .await;
    // Node record batches stay in the province: published before the
    // marker on the same lane, they would arrive before it.
    down.publish(&node_topic("G1", "records"), false, "batch")
        .await;
    down.publish(&status_topic("G1"), false, "marker").await;

    // Down: an ops object, a command and a record acknowledgement.
    up.publish("tollway/v1/ops/deployments/toll-app", true, "deployment")
        .await;
    up.publish(&node_topic("G1", "cmd"), false, "replay").await;
    up.publish("tollway/v1/44/center/records/ack", false, "ack 17")
        .await;

    assert!(
        up.wait_until(ARRIVAL, |r| r.iter().any(|m| m.payload == b"marker"))
            .await,
        "the marker did not reach the national broker"
    );
    let statuses = payloads_on(&up, &status_topic("G1"));
    let expected: Vec<String> = (0..50)
        .map(|i| format!("status {i}"))
        .chain(["marker".to_string()])
        .collect();
    assert_eq!(statuses, expected, "status messages lost or out of order");
    assert_eq!(payloads_on(&up, &node_topic("G1", "presence")), ["online"]);
    assert!(
        payloads_on(&up, &node_topic("G1", "records")).is_empty(),
        "a node record batch crossed the bridge"
    );

    assert!(
        down.wait_until(ARRIVAL, |r| r.len() >= 3).await,
        "down messages missing: {:?}",
        down.received()
    );
    assert_eq!(
        payloads_on(&down, "tollway/v1/ops/deployments/toll-app"),
        ["deployment"]
    );
    assert_eq!(payloads_on(&down, &node_topic("G1", "cmd")), ["replay"]);
    assert_eq!(
        payloads_on(&down, "tollway/v1/44/center/records/ack"),
        ["ack 17"]
    );

    // Presence and ops objects are published retained on the destination,
    // so a subscriber that comes later still gets them.
    let late_national = service_collector(
        &national,
        "late-national",
        &["tollway/v1/44/node/G1/presence"],
    )
    .await;
    assert!(
        late_national
            .wait_until(ARRIVAL, |r| r
                .iter()
                .any(|m| m.retain && m.payload == b"online"))
            .await,
        "presence was not retained on the national broker"
    );
    let late_province = service_collector(&province, "late-province", &["tollway/v1/ops/#"]).await;
    assert!(
        late_province
            .wait_until(ARRIVAL, |r| r
                .iter()
                .any(|m| m.retain && m.payload == b"deployment"))
            .await,
        "the ops object was not retained on the provincial broker"
    );

    // The bridge's state is retained online, and names the address in use.
    let state = payloads_on_raw(&up, &bridge_state_topic());
    let state = decode_state(
        state
            .last()
            .expect("no bridge state on the national broker"),
    );
    assert!(state.online);
    assert_eq!(
        state.remote.as_deref(),
        Some(format!("127.0.0.1:{}", national.ports.node).as_str())
    );

    let metrics = scrape_metrics(bridge_files.metrics_port);
    assert!(
        metrics.contains("tollway_bridge_connected{session=\"remote\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metric_value(
            &metrics,
            "tollway_bridge_connection_errors_total{session=\"remote\"}"
        ) > 0,
        "the failed first address was not counted: {metrics}"
    );
    assert!(
        metric_value(&metrics, "tollway_bridge_forwarded_total{direction=\"up\"}") >= 50,
        "{metrics}"
    );
}

fn payloads_on_raw(collector: &Collector, topic: &str) -> Vec<Vec<u8>> {
    collector
        .received()
        .into_iter()
        .filter(|m| m.topic == topic)
        .map(|m| m.payload)
        .collect()
}

#[tokio::test]
async fn mosquitto_as_national_broker() {
    let province = BrokerFiles::province();
    let _province_broker = province.start();
    let mosquitto = MosquittoFiles::national();
    let _mosquitto = mosquitto.start();

    let settings = BridgeSettings::new(
        province.ports.service,
        vec![format!("127.0.0.1:{}", mosquitto.tls_port)],
        &mosquitto.ca.cert_pem,
    );
    let bridge_files = BridgeFiles::write(&settings);

    let up = Collector::start(
        mosquitto.plain_options("national-ingest"),
        &["tollway/v1/44/#"],
    )
    .await;
    let down = service_collector(
        &province,
        "province-controller",
        &["tollway/v1/44/node/+/cmd", "tollway/v1/ops/#"],
    )
    .await;
    let _bridge = bridge_files.start();
    wait_until_bridged(&down, &up).await;

    for i in 0..20 {
        down.publish(&status_topic("G7"), false, format!("status {i}"))
            .await;
    }
    up.publish("tollway/v1/ops/rollouts/toll-app", true, "rollout")
        .await;
    up.publish(&node_topic("G7", "cmd"), false, "collect logs")
        .await;

    assert!(
        up.wait_until(ARRIVAL, |r| r.iter().any(|m| m.payload == b"status 19"))
            .await,
        "status messages did not reach Mosquitto"
    );
    let expected: Vec<String> = (0..20).map(|i| format!("status {i}")).collect();
    assert_eq!(payloads_on(&up, &status_topic("G7")), expected);

    assert!(
        down.wait_until(ARRIVAL, |r| r.len() >= 2).await,
        "down messages missing: {:?}",
        down.received()
    );
    assert_eq!(
        payloads_on(&down, "tollway/v1/ops/rollouts/toll-app"),
        ["rollout"]
    );
    assert_eq!(
        payloads_on(&down, &node_topic("G7", "cmd")),
        ["collect logs"]
    );

    let states = payloads_on_raw(&up, &bridge_state_topic());
    assert!(
        decode_state(states.last().expect("no bridge state on Mosquitto")).online,
        "the bridge state is not online"
    );
}

#[tokio::test]
async fn state_goes_offline_on_stop_and_crash() {
    let (province, _province_broker, national, _national_broker) = start_brokers();
    let settings = bridge_settings(&province, &national, national.ports.node);
    let bridge_files = BridgeFiles::write(&settings);
    let watcher = service_collector(&national, "watcher", &[bridge_state_topic().as_str()]).await;
    let topic = bridge_state_topic();
    let online_count = |received: &[Received], online: bool| {
        received
            .iter()
            .filter(|m| m.topic == topic && decode_state(&m.payload).online == online)
            .count()
    };

    // SIGTERM: the bridge publishes offline itself and exits 0.
    let bridge = bridge_files.start();
    assert!(
        watcher
            .wait_until(ARRIVAL, |r| online_count(r, true) >= 1)
            .await,
        "no online state"
    );
    let status = bridge.stop();
    assert!(
        status.success(),
        "bridge exited with {status} after SIGTERM"
    );
    assert!(
        watcher
            .wait_until(ARRIVAL, |r| online_count(r, false) >= 1)
            .await,
        "no offline state after SIGTERM"
    );

    // SIGKILL: the national broker publishes the will.
    let bridge = bridge_files.start();
    assert!(
        watcher
            .wait_until(ARRIVAL, |r| online_count(r, true) >= 2)
            .await,
        "no online state after the restart"
    );
    drop(bridge);
    assert!(
        watcher
            .wait_until(Duration::from_secs(90), |r| online_count(r, false) >= 2)
            .await,
        "no offline will after SIGKILL"
    );
}

#[tokio::test]
async fn overlapping_rules_rejected_at_start() {
    let national = TestCa::new("unused");
    let mut settings = BridgeSettings::new(1883, vec!["127.0.0.1:8883".into()], &national.cert_pem);
    settings.extra = "[[rules]]\n\
                      direction = \"up\"\n\
                      filter = \"tollway/v1/44/node/+/status\"\n\
                      [[rules]]\n\
                      direction = \"down\"\n\
                      filter = \"tollway/v1/44/node/#\"\n"
        .to_string();
    let files = BridgeFiles::write(&settings);

    let output = Command::new(bin_path("tollway-bridge"))
        .arg("--config")
        .arg(&files.config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("rules[0].filter = tollway/v1/44/node/+/status"),
        "{stderr}"
    );
    assert!(
        stderr.contains("overlaps the down rule rules[1] (tollway/v1/44/node/#)"),
        "{stderr}"
    );
}

#[tokio::test]
async fn default_rules_printed_by_check() {
    let national = TestCa::new("unused");
    let settings = BridgeSettings::new(1883, vec!["127.0.0.1:8883".into()], &national.cert_pem);
    let files = BridgeFiles::write(&settings);

    let output = Command::new(bin_path("tollway-bridge"))
        .arg("--config")
        .arg(&files.config)
        .arg("--check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("up   bulk    qos 1 retain false tollway/v1/44/node/+/status"),
        "{stdout}"
    );
    assert!(
        stdout.contains("down control qos 1 retain true  tollway/v1/ops/#"),
        "{stdout}"
    );
    assert!(!stdout.contains("node/+/records"), "{stdout}");
}

/// A scaled-down run of the bandwidth benchmark that checks correctness,
/// not speed: under a cap that bulk traffic saturates, control messages
/// overtake queued bulk messages and nothing is lost or reordered within
/// its lane.
#[tokio::test]
async fn capped_link_keeps_lanes_in_order() {
    let (province, _province_broker, national, _national_broker) = start_brokers();

    let mut settings = bridge_settings(&province, &national, national.ports.node);
    // About 100 bulk messages of 1 KB at 50 KB/s: two seconds of backlog.
    settings.up_bytes_per_second = 50_000;
    settings.burst_bytes = 2_000;
    let bridge_files = BridgeFiles::write(&settings);

    let up = service_collector(
        &national,
        "national-ingest",
        &[
            "tollway/v1/44/center/status",
            "tollway/v1/44/node/+/cmd/result",
        ],
    )
    .await;
    let local = service_collector(&province, "province-services", &[]).await;
    let _bridge = bridge_files.start();
    wait_until_bridged(&local, &up).await;
    let probes = up.received().len();

    let filler = "x".repeat(1000);
    for i in 0..100 {
        local
            .publish(
                "tollway/v1/44/center/status",
                false,
                format!("bulk {i:03} {filler}"),
            )
            .await;
    }
    // Let the backlog build, then send control messages behind it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..5 {
        local
            .publish(
                &node_topic("G1", "cmd/result"),
                false,
                format!("control {i}"),
            )
            .await;
    }

    assert!(
        up.wait_until(ARRIVAL, |r| r.len() >= probes + 105).await,
        "only {} of 105 messages arrived",
        up.received().len() - probes
    );
    let arrivals: Vec<String> = up.received()[probes..]
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload[..m.payload.len().min(9)]).into_owned())
        .collect();
    let bulk: Vec<&String> = arrivals.iter().filter(|a| a.starts_with("bulk")).collect();
    let expected_bulk: Vec<String> = (0..100).map(|i| format!("bulk {i:03}")).collect();
    assert_eq!(
        bulk.iter()
            .map(|s| s.trim().to_string())
            .collect::<Vec<_>>(),
        expected_bulk,
        "bulk messages lost or reordered"
    );
    let control: Vec<usize> = arrivals
        .iter()
        .enumerate()
        .filter(|(_, a)| a.starts_with("control"))
        .map(|(index, _)| index)
        .collect();
    assert_eq!(control.len(), 5, "{arrivals:?}");
    let last_bulk = arrivals
        .iter()
        .rposition(|a| a.starts_with("bulk"))
        .unwrap();
    assert!(
        control.iter().all(|&index| index < last_bulk),
        "control messages waited behind the bulk backlog: {arrivals:?}"
    );
}

/// The national broker is killed with SIGKILL while the bridge forwards,
/// then restarted. Every message arrives: those delivered before the
/// crash, those the bridge held while the broker was down, and those
/// published after the restart.
#[tokio::test]
async fn national_killed_mid_stream() {
    let (province, _province_broker, national, national_broker) = start_brokers();
    // The bridge reaches the national broker through a gate, so the test
    // decides when the bridge may reconnect after the restart.
    let gate = TcpGate::start(national.ports.node);

    let mut settings = bridge_settings(&province, &national, gate.port);
    // 200 messages of about 120 bytes take about 2.5 s at 10 KB/s, so the
    // crash comes while the bridge holds messages.
    settings.up_bytes_per_second = 10_000;
    settings.burst_bytes = 1_000;
    let bridge_files = BridgeFiles::write(&settings);

    let before = service_collector(
        &national,
        "ingest-before",
        &[
            "tollway/v1/44/node/+/status",
            "tollway/v1/44/center/status",
            "tollway/v1/44/node/+/cmd/result",
        ],
    )
    .await;
    let local = service_collector(
        &province,
        "province-services",
        &["tollway/v1/44/node/+/cmd"],
    )
    .await;
    let _bridge = bridge_files.start();
    wait_until_bridged(&local, &before).await;

    let message = |i: usize| format!("status {i:04} {}", "y".repeat(100));
    for i in 0..200 {
        local.publish(&status_topic("G9"), false, message(i)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Crash. The gate stays closed until a new subscriber is in place.
    national_broker.kill();
    gate.close();
    let delivered_before: BTreeSet<String> = payloads_on(&before, &status_topic("G9"))
        .into_iter()
        .collect();
    assert!(
        delivered_before.len() < 200,
        "every message arrived before the crash; the test proves nothing"
    );
    drop(before);

    let _national_broker = national.start();
    let after =
        service_collector(&national, "ingest-after", &["tollway/v1/44/node/+/status"]).await;
    // Published while the national broker is unreachable: held by the
    // bridge and the provincial broker.
    for i in 200..300 {
        local.publish(&status_topic("G9"), false, message(i)).await;
    }
    // The bridge's back-off decides when it tries again; wait for one
    // refused attempt rather than a fixed time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while gate.refused() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gate.refused() > 0,
        "the bridge did not try to reconnect within 20 s"
    );
    gate.open();
    // Published after the bridge may reconnect.
    for i in 300..400 {
        local.publish(&status_topic("G9"), false, message(i)).await;
    }

    // Messages 200..400 were published after the crash: the bridge held
    // them, so every one must arrive. Of 0..200, the national broker may
    // have acknowledged a few to the bridge and died before routing them to
    // a subscriber: a broker keeps nothing across SIGKILL, which is why
    // forwarded records carry their own end-to-end acknowledgements. Those
    // can only be the few in flight at the crash, never more than the
    // bridge's in-flight window (32).
    let held: BTreeSet<String> = (200..400).map(message).collect();
    let held_arrived = after
        .wait_until(Duration::from_secs(60), |received| {
            let seen: BTreeSet<String> = received
                .iter()
                .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
                .collect();
            held.iter().all(|m| seen.contains(m))
        })
        .await;

    let mut seen: BTreeSet<String> = payloads_on(&after, &status_topic("G9"))
        .into_iter()
        .collect();
    seen.extend(delivered_before.iter().cloned());
    let missing_held: Vec<&String> = held.difference(&seen).collect();
    assert!(
        held_arrived,
        "{} of the 200 messages held by the bridge missing after the restart, first: {:?}",
        missing_held.len(),
        missing_held.first().map(|m| &m[..11])
    );
    let before_crash: BTreeSet<String> = (0..200).map(message).collect();
    let lost_in_broker = before_crash.difference(&seen).count();
    assert!(
        lost_in_broker <= 32,
        "{lost_in_broker} messages published before the crash never arrived; \
         more than the bridge's in-flight window, so the bridge lost some"
    );

    // The restarted broker had no session for the bridge, so the bridge
    // must have subscribed again for commands to come down.
    after
        .publish(&node_topic("G9", "cmd"), false, "after the restart")
        .await;
    assert!(
        local
            .wait_until(ARRIVAL, |r| r
                .iter()
                .any(|m| m.payload == b"after the restart"))
            .await,
        "no command came down after the restart; the bridge did not subscribe again"
    );

    let metrics = scrape_metrics(bridge_files.metrics_port);
    assert!(
        metric_value(
            &metrics,
            "tollway_bridge_connection_errors_total{session=\"remote\"}"
        ) > 0,
        "{metrics}"
    );
}

/// Ops objects published while the national link is cut wait in the
/// bridge's session on the national broker, whose queue here keeps two:
/// the oldest are pushed out. The bridge's fresh SUBSCRIBE after the
/// reconnect brings every retained object down all the same.
#[tokio::test]
async fn retained_ops_arrive_after_queue_overflowed() {
    let province = BrokerFiles::province();
    let _province_broker = province.start();
    let national = BrokerFiles::national();
    let mut config = std::fs::read_to_string(&national.config).unwrap();
    config.push_str("\n[bridge_listener.limits]\nmax_mqueue_len = 2\n");
    std::fs::write(&national.config, config).unwrap();
    let _national_broker = national.start();
    let gate = TcpGate::start(national.ports.node);

    let settings = bridge_settings(&province, &national, gate.port);
    let bridge_files = BridgeFiles::write(&settings);
    let up = service_collector(&national, "national-ops", &["tollway/v1/44/#"]).await;
    let down = service_collector(&province, "province-controller", &["tollway/v1/ops/#"]).await;
    let _bridge = bridge_files.start();
    wait_until_bridged(&down, &up).await;

    gate.close();
    // Let the national broker see the connection end, so that the objects
    // queue in the bridge's offline session.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let topics: Vec<String> = (0..5)
        .map(|n| format!("tollway/v1/ops/deployments/while-cut-{n}"))
        .collect();
    for topic in &topics {
        up.publish(topic, true, "deployment").await;
    }
    gate.open();

    let all_arrived = down
        .wait_until(ARRIVAL, |r| {
            topics
                .iter()
                .all(|topic| r.iter().any(|m| &m.topic == topic))
        })
        .await;
    let arrived: BTreeSet<String> = down.received().into_iter().map(|m| m.topic).collect();
    assert!(
        all_arrived,
        "not every retained ops object reached the province: {arrived:?}"
    );
}

/// The bridge killed with SIGKILL while it has messages in hand. It
/// acknowledges a message to the provincial broker only after the national
/// broker acknowledged it, so the provincial broker sends the rest again
/// to the restarted bridge and every message arrives (some perhaps twice).
#[tokio::test]
async fn bridge_killed_mid_stream_loses_nothing() {
    let (province, _province_broker, national, _national_broker) = start_brokers();

    let mut settings = bridge_settings(&province, &national, national.ports.node);
    // 200 messages of about 120 bytes take about 2.5 s at 10 KB/s, so the
    // crash comes while the bridge has messages in hand.
    settings.up_bytes_per_second = 10_000;
    settings.burst_bytes = 1_000;
    let bridge_files = BridgeFiles::write(&settings);

    let national_ingest =
        service_collector(&national, "national-ingest", &["tollway/v1/44/#"]).await;
    let local = service_collector(
        &province,
        "province-services",
        &["tollway/v1/44/node/+/cmd"],
    )
    .await;
    let bridge = bridge_files.start();
    wait_until_bridged(&local, &national_ingest).await;

    let message = |i: usize| format!("status {i:04} {}", "z".repeat(100));
    for i in 0..200 {
        local.publish(&status_topic("G7"), false, message(i)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    drop(bridge);
    let before_crash = payloads_on(&national_ingest, &status_topic("G7")).len();
    assert!(
        before_crash < 200,
        "every message arrived before the crash; the test proves nothing"
    );

    let _bridge = bridge_files.start();
    let sent: BTreeSet<String> = (0..200).map(message).collect();
    let all_arrived = national_ingest
        .wait_until(Duration::from_secs(60), |received| {
            let seen: BTreeSet<String> = received
                .iter()
                .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
                .collect();
            sent.iter().all(|m| seen.contains(m))
        })
        .await;
    let seen: BTreeSet<String> = payloads_on(&national_ingest, &status_topic("G7"))
        .into_iter()
        .collect();
    let missing: Vec<&String> = sent.difference(&seen).collect();
    assert!(
        all_arrived,
        "{} of 200 messages lost after the bridge was killed ({before_crash} had arrived before), first: {:?}",
        missing.len(),
        missing.first().map(|m| &m[..11])
    );
}

/// The provincial broker killed and restarted under the bridge. It keeps
/// no sessions across a restart, so the bridge must reconnect its local
/// sessions and subscribe again. Statuses published after the restart go
/// up, and commands come down.
#[tokio::test]
async fn province_broker_restart_reconnects_local_side() {
    let (province, province_broker, national, _national_broker) = start_brokers();
    let settings = bridge_settings(&province, &national, national.ports.node);
    let bridge_files = BridgeFiles::write(&settings);
    let up = service_collector(&national, "national-ingest", &["tollway/v1/44/#"]).await;
    let local = service_collector(
        &province,
        "province-services",
        &["tollway/v1/44/node/+/cmd"],
    )
    .await;
    let _bridge = bridge_files.start();
    wait_until_bridged(&local, &up).await;
    drop(local);

    province_broker.kill();
    let _province_broker = province.start();
    let local = service_collector(
        &province,
        "province-services-after",
        &["tollway/v1/44/node/+/cmd"],
    )
    .await;

    // Up: the bridge's local sessions must be back and subscribed again.
    wait_until_bridged(&local, &up).await;

    // Down: a command published nationally reaches the restarted broker.
    up.publish(
        &node_topic("G5", "cmd"),
        false,
        "after the province restart",
    )
    .await;
    assert!(
        local
            .wait_until(ARRIVAL, |r| r
                .iter()
                .any(|m| m.payload == b"after the province restart"))
            .await,
        "no command came down after the provincial broker restarted"
    );

    let metrics = scrape_metrics(bridge_files.metrics_port);
    assert!(
        metric_value(&metrics, "tollway_bridge_connects_total{session=\"local\"}") >= 2,
        "{metrics}"
    );
}

/// A lane of five messages under a slow cap: the bridge stops reading the
/// provincial broker while the lane is full (counted as back-pressure) and
/// resumes as it drains, so all 100 messages arrive, in order, none
/// dropped.
#[tokio::test]
async fn full_lane_stops_reading_and_drops_nothing() {
    let (province, _province_broker, national, _national_broker) = start_brokers();

    let mut settings = bridge_settings(&province, &national, national.ports.node);
    // 100 messages of about 120 bytes take about 2.5 s at 5 KB/s.
    settings.up_bytes_per_second = 5_000;
    settings.burst_bytes = 1_000;
    settings.extra = "[queues]\nlane_capacity = 5\nmax_inflight = 2\n".to_string();
    let bridge_files = BridgeFiles::write(&settings);
    let up = service_collector(&national, "national-ingest", &["tollway/v1/44/#"]).await;
    let local = service_collector(&province, "province-services", &[]).await;
    let _bridge = bridge_files.start();
    wait_until_bridged(&local, &up).await;

    let message = |i: usize| format!("status {i:04} {}", "w".repeat(100));
    for i in 0..100 {
        local.publish(&status_topic("G3"), false, message(i)).await;
    }

    let sent: Vec<String> = (0..100).map(message).collect();
    let all_arrived = up
        .wait_until(Duration::from_secs(60), |received| {
            received
                .iter()
                .filter(|m| m.topic == status_topic("G3"))
                .count()
                >= 100
        })
        .await;
    let arrived = payloads_on(&up, &status_topic("G3"));
    assert!(all_arrived, "{} of 100 messages arrived", arrived.len());
    assert_eq!(arrived, sent, "messages lost, repeated or reordered");

    let metrics = scrape_metrics(bridge_files.metrics_port);
    assert!(
        metric_value(
            &metrics,
            "tollway_bridge_backpressure_total{session=\"local-bulk\"}"
        ) > 0,
        "the full lane never held the reading back: {metrics}"
    );
}
