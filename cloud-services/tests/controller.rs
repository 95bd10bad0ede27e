//! The provincial controller against the real `tollway-broker`, with
//! simulated nodes over mutual TLS and deployments published as operators
//! publish them: every placement mode, stable placement, late joiners, the
//! grace-period move, invalid objects, broker data loss, a controller
//! restart and the records per hour in the province status.

use std::collections::BTreeMap;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use serde_json::Value;
use tollway_testkit::center::*;
use tollway_testkit::*;
use tollway_topics::{
    AppSpec, CenterEvent, Deployment, DesiredState, EventKind, HourlySummary, Message, ObjectName,
    PlacementMode, ProvinceStatus, Selector, SpreadBy, Tombstone, Topic, samples,
};

const WAIT: Duration = Duration::from_secs(15);

/// A broker and a controller on fresh ports and directories.
struct Province {
    files: BrokerFiles,
    broker: Option<Broker>,
    data: tempfile::TempDir,
    api_port: u16,
    grace_period_s: u64,
    /// `controller.forget_after_s`; the default when `None`.
    forget_after_s: Option<u64>,
    center: Option<Center>,
}

impl Province {
    fn start(grace_period_s: u64) -> Self {
        Province::start_forgetting(grace_period_s, None)
    }

    fn start_forgetting(grace_period_s: u64, forget_after_s: Option<u64>) -> Self {
        let files = BrokerFiles::province();
        let broker = files.start();
        let data = tempfile::tempdir().unwrap();
        let api_port = pick_port();
        let mut province = Province {
            files,
            broker: Some(broker),
            data,
            api_port,
            grace_period_s,
            forget_after_s,
            center: None,
        };
        province.start_center();
        province
    }

    fn start_center(&mut self) {
        let mut config = controller_config(
            &self.files,
            &self.data.path().join("controller"),
            self.api_port,
            self.grace_period_s,
        );
        if let Some(forget_after_s) = self.forget_after_s {
            config = config.replace(
                "[controller.broker]",
                &format!("forget_after_s = {forget_after_s}\n\n[controller.broker]"),
            );
        }
        self.center = Some(Center::start(self.data.path(), &config, self.api_port));
    }

    fn node(&self, id: &str) -> Value {
        http_json(self.api_port, &format!("/v1/nodes/{id}"))
    }

    /// Waits until the node's desired apps equal `apps`; returns the node view.
    fn wait_apps(&self, id: &str, apps: &[&str]) -> Value {
        wait_for(&format!("node {id} to run {apps:?}"), WAIT, || {
            let (code, body) = http_get(self.api_port, &format!("/v1/nodes/{id}"));
            if code != 200 {
                return Err(format!("{code} {body}"));
            }
            let node: Value = serde_json::from_str(&body).unwrap();
            if node["desired_apps"] == serde_json::json!(apps) {
                Ok(node)
            } else {
                Err(node["desired_apps"].to_string())
            }
        })
    }

    fn deployment(&self, name: &str) -> Option<Value> {
        let list = http_json(self.api_port, "/v1/deployments");
        list.as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .cloned()
    }

    fn wait_deployment(&self, name: &str, check: impl Fn(&Value) -> bool) -> Value {
        wait_for(&format!("deployment {name}"), WAIT, || {
            match self.deployment(name) {
                Some(d) if check(&d) => Ok(d),
                other => Err(format!("{other:?}")),
            }
        })
    }
}

/// Connects an operator's service client and polls its event loop in the background.
async fn operator(files: &BrokerFiles, id: &str) -> AsyncClient {
    let (client, eventloop, ack) =
        connect(service_options(files, id, Some(SERVICE_PASSWORD))).await;
    ack.expect("operator connects");
    spawn_poll(eventloop);
    client
}

fn spawn_poll(mut eventloop: EventLoop) {
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
}

fn app(name: &str) -> AppSpec {
    let mut app = samples::app_spec();
    app.name = ObjectName::new(name).unwrap();
    app.next_image = None;
    app
}

fn deployment(
    name: &str,
    selector: &[&str],
    placement: PlacementMode,
    colocate: Option<&str>,
) -> Deployment {
    Deployment {
        name: ObjectName::new(name).unwrap(),
        selector: Selector::parse(selector).unwrap(),
        placement,
        colocate_with: colocate.map(|c| ObjectName::new(c).unwrap()),
        app: app(name),
    }
}

async fn apply(client: &AsyncClient, deployment: &Deployment) {
    publish_raw(
        client,
        deployment.name.as_str(),
        deployment.to_cbor().unwrap(),
    )
    .await;
}

async fn publish_raw(client: &AsyncClient, name: &str, payload: Vec<u8>) {
    let topic = Topic::deployment(ObjectName::new(name).unwrap()).to_string();
    client
        .publish(topic, QoS::AtLeastOnce, true, payload)
        .await
        .unwrap();
}

/// Reads the retained desired state of `node` from the broker with a fresh client.
async fn retained_desired(files: &BrokerFiles, node: &str) -> Option<DesiredState> {
    retained(files, node, "desired")
        .await
        .map(|payload| DesiredState::from_cbor(&payload).unwrap())
}

/// Reads the retained message on one of `node`'s topics with a fresh
/// client; `None` when the broker has none.
async fn retained(files: &BrokerFiles, node: &str, kind: &str) -> Option<Vec<u8>> {
    let (client, mut eventloop, ack) = connect(service_options(
        files,
        &format!("reader-{node}-{}", kind.replace('/', "-")),
        Some(SERVICE_PASSWORD),
    ))
    .await;
    ack.expect("reader connects");
    client
        .subscribe(node_topic(node, kind), QoS::AtLeastOnce)
        .await
        .unwrap();
    let found = next_packet(
        &mut eventloop,
        Duration::from_secs(2),
        |packet| match packet {
            Packet::Publish(publish) => Some(publish.payload.to_vec()),
            _ => None,
        },
    )
    .await
    .ok();
    let _ = client.disconnect().await;
    found
}

fn gantry(station: &str, section: &str) -> Vec<(&'static str, String)> {
    vec![
        ("role", "gantry".to_string()),
        ("station", station.to_string()),
        ("section", section.to_string()),
    ]
}

async fn sim(files: &BrokerFiles, id: &str, labels: &[(&str, String)]) -> SimNode {
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    SimNode::connect(files, id, &labels).await
}

fn generation(node: &Value) -> u64 {
    node["desired_generation"]
        .as_u64()
        .expect("node has a desired generation")
}

/// The province status reports the newest hour's records, summed from
/// the nodes' hourly summaries, with a resent summary replacing its count.
#[tokio::test(flavor = "multi_thread")]
async fn province_status_counts_records_per_hour() {
    let province = Province::start(600);
    let n1 = sim(&province.files, "n1", &gantry("T1", "S1")).await;
    let n2 = sim(&province.files, "n2", &gantry("T2", "S1")).await;
    province.wait_apps("n1", &[]);
    province.wait_apps("n2", &[]);

    let send = |node: &SimNode, gantry: &str, hour_batch: u32, count: u64| {
        let summary = HourlySummary {
            gantry_id: gantry.to_string(),
            hour_batch,
            count,
            fee_sum: count * 1000,
            first_seq: Some(1),
            last_seq: Some(count),
        };
        let (client, topic) = (node.client.clone(), node_topic(&node.id, "summary"));
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, false, summary.to_cbor().unwrap())
                .await
                .unwrap();
        }
    };
    send(&n1, "G1", 2026120409, 900).await;
    send(&n1, "G1", 2026120410, 1200).await;
    send(&n1, "G2", 2026120410, 300).await;
    send(&n2, "G3", 2026120410, 40).await;
    // n2 resends G3 after a late record.
    send(&n2, "G3", 2026120410, 41).await;

    let (client, mut eventloop, ack) = connect(service_options(
        &province.files,
        "status-reader",
        Some(SERVICE_PASSWORD),
    ))
    .await;
    ack.expect("reader connects");
    client
        .subscribe("tollway/v1/44/center/status", QoS::AtLeastOnce)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        let status = next_packet(&mut eventloop, WAIT, |packet| match packet {
            Packet::Publish(publish) => Some(ProvinceStatus::from_cbor(&publish.payload).unwrap()),
            _ => None,
        })
        .await
        .unwrap();
        if status.records_per_hour == Some(1541) {
            return;
        }
        last = Some(status.records_per_hour);
    }
    panic!("records_per_hour never reached 1541; last seen {last:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn per_node_includes_late_joiners() {
    let province = Province::start(600);
    let ops = operator(&province.files, "ops").await;
    let n1 = sim(&province.files, "n1", &gantry("T1", "S1")).await;
    let n2 = sim(&province.files, "n2", &gantry("T2", "S1")).await;
    let _station = sim(&province.files, "s1", &[("role", "station".to_string())]).await;

    apply(
        &ops,
        &deployment(
            "toll-app",
            &["role in (gantry)"],
            PlacementMode::PerNode,
            None,
        ),
    )
    .await;
    let before = province.wait_apps("n1", &["toll-app"]);
    province.wait_apps("n2", &["toll-app"]);
    province.wait_apps("s1", &[]);

    // A node that joins later gets the per-node app; others keep their generation.
    let _n3 = sim(&province.files, "n3", &gantry("T3", "S2")).await;
    province.wait_apps("n3", &["toll-app"]);
    assert_eq!(
        generation(&province.node("n1")),
        generation(&before),
        "an unrelated join changed n1's generation"
    );

    // The broker keeps the same state as a retained message.
    let retained = retained_desired(&province.files, "n2")
        .await
        .expect("n2 has a retained desired state");
    assert_eq!(retained.apps.len(), 1);
    assert_eq!(retained.apps[0].name.as_str(), "toll-app");
    drop((n1, n2));
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_spread_and_colocate() {
    let province = Province::start(600);
    let ops = operator(&province.files, "ops").await;
    let mut nodes = Vec::new();
    for (id, station, section) in [
        ("a1", "T1", "S1"),
        ("a2", "T1", "S1"),
        ("b1", "T2", "S1"),
        ("b2", "T2", "S2"),
        ("c1", "T3", "S2"),
        ("c2", "T3", "S2"),
    ] {
        nodes.push(sim(&province.files, id, &gantry(station, section)).await);
    }

    // Base per-node app only in section S2; the audit app is colocated with it.
    apply(
        &ops,
        &deployment("base", &["section = S2"], PlacementMode::PerNode, None),
    )
    .await;
    let replicas = |replicas, spread_by| PlacementMode::Replicas {
        replicas,
        spread_by,
    };
    apply(
        &ops,
        &deployment(
            "by-station",
            &["role = gantry"],
            replicas(3, SpreadBy::Station),
            None,
        ),
    )
    .await;
    apply(
        &ops,
        &deployment("by-section", &[], replicas(2, SpreadBy::Section), None),
    )
    .await;
    apply(
        &ops,
        &deployment("audit", &[], replicas(2, SpreadBy::Node), Some("base")),
    )
    .await;

    let station =
        province.wait_deployment("by-station", |d| d["nodes"].as_array().unwrap().len() == 3);
    let stations: std::collections::BTreeSet<char> = station["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().chars().next().unwrap())
        .collect();
    assert_eq!(stations.len(), 3, "replicas share a station: {station}");

    let section =
        province.wait_deployment("by-section", |d| d["nodes"].as_array().unwrap().len() == 2);
    let sections: Vec<&str> = section["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| match n.as_str().unwrap() {
            "a1" | "a2" | "b1" => "S1",
            _ => "S2",
        })
        .collect();
    assert_ne!(
        sections[0], sections[1],
        "replicas share a section: {section}"
    );

    let audit = province.wait_deployment("audit", |d| d["nodes"].as_array().unwrap().len() == 2);
    for node in audit["nodes"].as_array().unwrap() {
        assert!(
            ["b2", "c1", "c2"].contains(&node.as_str().unwrap()),
            "audit placed on {node}, which does not run base"
        );
    }

    // An unrelated deployment moves nothing.
    apply(
        &ops,
        &deployment("other", &["section = S1"], PlacementMode::PerNode, None),
    )
    .await;
    province.wait_deployment("other", |d| d["nodes"].as_array().unwrap().len() == 3);
    assert_eq!(
        province.deployment("by-station").unwrap()["nodes"],
        station["nodes"]
    );
    assert_eq!(
        province.deployment("audit").unwrap()["nodes"],
        audit["nodes"]
    );

    // Three replicas by section cannot fit in two sections: a shortfall.
    apply(
        &ops,
        &deployment("too-many", &[], replicas(3, SpreadBy::Section), None),
    )
    .await;
    let short = province.wait_deployment("too-many", |d| d["state"] == "shortfall");
    assert_eq!(short["nodes"].as_array().unwrap().len(), 2, "{short}");
}

#[tokio::test(flavor = "multi_thread")]
async fn grace_period_moves_replicas_only() {
    let province = Province::start(2);
    let ops = operator(&province.files, "ops").await;
    let mut nodes = BTreeMap::new();
    for id in ["g1", "g2"] {
        nodes.insert(id, sim(&province.files, id, &gantry(id, "S1")).await);
    }
    apply(
        &ops,
        &deployment("agent", &[], PlacementMode::PerNode, None),
    )
    .await;
    let replicas = PlacementMode::Replicas {
        replicas: 1,
        spread_by: SpreadBy::Node,
    };
    apply(&ops, &deployment("single", &[], replicas, None)).await;
    let placed = province.wait_deployment("single", |d| d["nodes"].as_array().unwrap().len() == 1);
    let holder = placed["nodes"][0].as_str().unwrap().to_string();
    let other = if holder == "g1" { "g2" } else { "g1" };
    let holder_view = province.wait_apps(&holder, &["agent", "single"]);

    nodes.remove(holder.as_str()).unwrap().go_offline().await;
    let moved = province.wait_deployment("single", |d| d["nodes"][0] == other);
    assert_eq!(moved["nodes"].as_array().unwrap().len(), 1);
    province.wait_apps(other, &["agent", "single"]);

    // The offline node keeps its per-node instance.
    let after = province.wait_apps(&holder, &["agent"]);
    assert!(generation(&after) > generation(&holder_view));
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_objects_are_rejected_with_events() {
    let province = Province::start(600);
    let ops = operator(&province.files, "ops").await;
    let (watcher, mut events, ack) = connect(service_options(
        &province.files,
        "watcher",
        Some(SERVICE_PASSWORD),
    ))
    .await;
    ack.expect("watcher connects");
    watcher
        .subscribe("tollway/v1/44/center/events", QoS::AtLeastOnce)
        .await
        .unwrap();
    let _node = sim(&province.files, "n1", &gantry("T1", "S1")).await;

    publish_raw(&ops, "garbage", vec![0xa1, 0x00]).await;
    apply(
        &ops,
        &deployment("orphan", &[], PlacementMode::PerNode, Some("missing")),
    )
    .await;
    let mut renamed = deployment("inner-name", &[], PlacementMode::PerNode, None);
    let payload = renamed.to_cbor().unwrap();
    publish_raw(&ops, "outer-name", payload).await;
    renamed.name = ObjectName::new("zz-dup").unwrap();
    renamed.app = app("orphan");
    apply(&ops, &renamed).await;

    let mut seen = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < 4 && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(Event::Incoming(Packet::Publish(publish)))) =
            tokio::time::timeout(Duration::from_secs(1), events.poll()).await
        {
            let event = CenterEvent::from_cbor(&publish.payload).unwrap();
            seen.insert(event.subject.clone(), event);
        }
    }
    for (subject, expected) in [
        ("garbage", "invalid deployment object"),
        ("orphan", "colocate_with names deployment missing"),
        (
            "outer-name",
            "publish it on tollway/v1/ops/deployments/inner-name",
        ),
    ] {
        let event = seen
            .get(subject)
            .unwrap_or_else(|| panic!("no event for {subject}; got {seen:?}"));
        assert_eq!(event.kind, EventKind::ObjectRejected);
        assert!(
            event.message.contains(expected),
            "{subject}: {}",
            event.message
        );
    }
    // "zz-dup" and "orphan" use the same app name; the first by name keeps it.
    let dup = seen.get("zz-dup").expect("no event for zz-dup");
    assert!(
        dup.message.contains("app name orphan is already used"),
        "{}",
        dup.message
    );

    province.wait_deployment("garbage", |d| d["state"] == "rejected");
    province.wait_apps("n1", &[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_data_loss_republishes_desired() {
    let mut province = Province::start(600);
    let ops = operator(&province.files, "ops").await;
    let _n1 = sim(&province.files, "n1", &gantry("T1", "S1")).await;
    apply(
        &ops,
        &deployment("toll-app", &[], PlacementMode::PerNode, None),
    )
    .await;
    let view = province.wait_apps("n1", &["toll-app"]);
    assert!(retained_desired(&province.files, "n1").await.is_some());

    // Restart the broker with an empty data directory: retained messages are gone.
    province.broker.take().unwrap().stop();
    std::fs::remove_dir_all(province.files.dir.path().join("data")).unwrap();
    province.broker = Some(province.files.start());

    let restored = wait_for_async(|| retained_desired(&province.files, "n1")).await;
    assert_eq!(
        restored.generation,
        generation(&view),
        "the republished state has a new generation"
    );
    assert_eq!(restored.apps[0].name.as_str(), "toll-app");
}

async fn wait_for_async<F, Fut>(mut read: F) -> DesiredState
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<DesiredState>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(state) = read().await {
            return state;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retained desired state within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_generations_and_placement() {
    let mut province = Province::start(600);
    let ops = operator(&province.files, "ops").await;
    let n1 = sim(&province.files, "n1", &gantry("T1", "S1")).await;
    let _n2 = sim(&province.files, "n2", &gantry("T2", "S1")).await;
    apply(
        &ops,
        &deployment("toll-app", &[], PlacementMode::PerNode, None),
    )
    .await;
    let replicas = PlacementMode::Replicas {
        replicas: 1,
        spread_by: SpreadBy::Node,
    };
    apply(
        &ops,
        &deployment("single", &["station = T2"], replicas, None),
    )
    .await;
    let placed = province.wait_deployment("single", |d| d["nodes"].as_array().unwrap().len() == 1);
    let n1_view = province.wait_apps("n1", &["toll-app"]);
    n1.publish_status(generation(&n1_view)).await;

    let status = province.center.take().unwrap().stop();
    assert!(status.success(), "controller exited with {status}");
    province.start_center();

    // Right after the restart, before any retained message could matter,
    // the API serves the stored inventory and generations.
    let after = province.node("n1");
    assert_eq!(generation(&after), generation(&n1_view));
    assert_eq!(after["labels"]["station"], "T1");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        generation(&province.node("n1")),
        generation(&n1_view),
        "restart raised the generation"
    );
    assert_eq!(
        province.deployment("single").unwrap()["nodes"],
        placed["nodes"]
    );

    // A real change raises it by one.
    let mut changed = deployment("toll-app", &[], PlacementMode::PerNode, None);
    changed.app.image = "localhost/tollway/toll-app:1.5.0".to_string();
    apply(&ops, &changed).await;
    wait_for("n1's generation to rise", WAIT, || {
        let current = generation(&province.node("n1"));
        if current == generation(&n1_view) + 1 {
            Ok(())
        } else {
            Err(current.to_string())
        }
    });
}

/// A deployment deleted while the controller is down is gone once it is
/// back: `tollwayctl delete` leaves a retained tombstone, which the
/// controller receives with the other retained objects. An empty retained
/// payload would have left no trace of the delete on the broker.
#[tokio::test(flavor = "multi_thread")]
async fn delete_while_controller_down_takes_effect() {
    let mut province = Province::start(600);
    let ops = operator(&province.files, "ops").await;
    let _n1 = sim(&province.files, "n1", &gantry("T1", "S1")).await;
    apply(
        &ops,
        &deployment("toll-app", &[], PlacementMode::PerNode, None),
    )
    .await;
    apply(&ops, &deployment("gone", &[], PlacementMode::PerNode, None)).await;
    province.wait_apps("n1", &["gone", "toll-app"]);

    let status = province.center.take().unwrap().stop();
    assert!(status.success(), "controller exited with {status}");
    let tombstone = Tombstone {
        name: ObjectName::new("gone").unwrap(),
        deleted_at_ms: 1_796_400_000_000,
    };
    publish_raw(&ops, "gone", tombstone.to_cbor().unwrap()).await;
    province.start_center();

    province.wait_apps("n1", &["toll-app"]);
    assert_eq!(province.deployment("gone"), None);
    assert!(province.deployment("toll-app").is_some());
}

/// A node offline longer than `forget_after_s` leaves the inventory, and
/// its retained presence and desired state are cleared, so a restarted
/// controller does not add it again. A node that is still online stays.
#[tokio::test(flavor = "multi_thread")]
async fn departed_node_is_forgotten() {
    let mut province = Province::start_forgetting(1, Some(3));
    let ops = operator(&province.files, "ops").await;
    let n1 = sim(&province.files, "n1", &gantry("T1", "S1")).await;
    let _n2 = sim(&province.files, "n2", &gantry("T2", "S1")).await;
    apply(
        &ops,
        &deployment("toll-app", &[], PlacementMode::PerNode, None),
    )
    .await;
    province.wait_apps("n1", &["toll-app"]);
    province.wait_apps("n2", &["toll-app"]);
    assert!(retained(&province.files, "n1", "presence").await.is_some());

    n1.go_offline().await;
    let api_port = province.api_port;
    wait_for("n1 to leave the inventory", WAIT, || {
        match http_get(api_port, "/v1/nodes/n1") {
            (404, _) => Ok(()),
            (code, body) => Err(format!("{code} {body}")),
        }
    });
    assert_eq!(retained_desired(&province.files, "n1").await, None);
    assert_eq!(retained(&province.files, "n1", "presence").await, None);

    let status = province.center.take().unwrap().stop();
    assert!(status.success(), "controller exited with {status}");
    province.start_center();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(http_get(api_port, "/v1/nodes/n1").0, 404);
    assert_eq!(province.node("n2")["online"], true);
}
