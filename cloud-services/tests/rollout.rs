//! Rollouts in the provincial controller against the real broker, with
//! simulated nodes that report on desired states as edge daemons do, and the
//! rollout driven through `tollwayctl`: a failure threshold that pauses a
//! 1,000-node rollout before its second wave (with rollback and resume),
//! and a controller restart in the middle of a wave.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use tollway_testkit::center::*;
use tollway_testkit::collect::Collector;
use tollway_testkit::ctl::Ctl;
use tollway_testkit::sim_fleet::{SIM_SWITCH_MS, SimFleet};
use tollway_testkit::*;
use tollway_topics::{CenterEvent, DesiredState, EventKind, Message};

const OLD: &str = "localhost/tollway/toll-app:1.0.0";
const NEW: &str = "localhost/tollway/toll-app:1.1.0";
const EVENTS: &str = "tollway/v1/44/center/events";

const DEPLOYMENT: &str = r#"
kind: Deployment
name: toll-app
selector: ["role = gantry"]
mode: per-node
app:
  name: toll-app
  image: localhost/tollway/toll-app:1.0.0
"#;

/// Returns labels for `count` gantry nodes: two nodes (active and
/// standby) per gantry, ten gantries' worth of nodes per section.
fn gantry_fleet(count: usize) -> BTreeMap<String, BTreeMap<String, String>> {
    (0..count)
        .map(|index| {
            let gantry = index / 2;
            let labels = BTreeMap::from([
                ("role".to_string(), "gantry".to_string()),
                ("gantry".to_string(), format!("G{gantry:05}")),
                ("section".to_string(), format!("S{}", gantry % 10)),
            ]);
            (format!("n{index:05}"), labels)
        })
        .collect()
}

/// A broker, a controller and `tollwayctl` on fresh ports and directories.
struct Province {
    files: BrokerFiles,
    _broker: Broker,
    data: tempfile::TempDir,
    api_port: u16,
    center: Option<Center>,
    ctl: Ctl,
}

impl Province {
    fn start() -> Self {
        let files = BrokerFiles::province();
        let broker = files.start();
        let data = tempfile::tempdir().unwrap();
        let api_port = pick_port();
        let mut province = Province {
            ctl: {
                write_password_file(files.dir.path());
                Ctl::new(&files, api_port, data.path())
            },
            files,
            _broker: broker,
            data,
            api_port,
            center: None,
        };
        province.start_center();
        province
    }

    fn start_center(&mut self) {
        let config = controller_config(
            &self.files,
            &self.data.path().join("controller"),
            self.api_port,
            600,
        );
        self.center = Some(Center::start(self.data.path(), &config, self.api_port));
    }

    fn stop_center(&mut self) {
        if let Some(center) = self.center.take() {
            assert!(
                center.stop().success(),
                "tollway-center did not exit cleanly"
            );
        }
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.data.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// Waits until `running` nodes report the app running.
    fn wait_app_running(&self, running: u64) {
        wait_for(
            &format!("{running} nodes running toll-app"),
            Duration::from_secs(120),
            || {
                let apps = http_json(self.api_port, "/v1/apps");
                let app = apps
                    .as_array()
                    .and_then(|apps| apps.iter().find(|app| app["app"] == "toll-app"));
                match app {
                    Some(app) if app["running"].as_u64() == Some(running) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        );
    }

    /// Waits until the rollout's status satisfies `check`.
    fn wait_rollout(&self, what: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, timeout, || {
            let (code, body) = http_get(self.api_port, "/v1/rollouts/toll-app-1-1");
            if code != 200 {
                return Err(format!("{code} {body}"));
            }
            let view: Value = serde_json::from_str(&body).map_err(|err| err.to_string())?;
            if check(&view) {
                Ok(view)
            } else {
                Err(summary(&view))
            }
        })
    }
}

fn summary(view: &Value) -> String {
    format!(
        "state {} wave {} phase {} reason {} wave counts {} total {}",
        view["state"],
        view["wave"],
        view["phase"],
        view["reason"],
        view["wave_counts"],
        view["total_counts"]
    )
}

fn rollout_yaml(waves: &str, settle_s: u32, rollback: bool) -> String {
    format!(
        r#"kind: Rollout
name: toll-app-1-1
deployment: toll-app
image: {NEW}
waves:
{waves}
success_threshold_pct: 95
failure_threshold_pct: 10
rollback_on_pause: {rollback}
prefetch_timeout_s: 60
wave_timeout_s: 120
settle_s: {settle_s}
pair_label: gantry
"#
    )
}

/// Decodes the rollout events received so far, in order.
fn rollout_events(collector: &Collector) -> Vec<CenterEvent> {
    collector
        .received()
        .iter()
        .filter_map(|received| CenterEvent::from_cbor(&received.payload).ok())
        .filter(|event| event.subject == "toll-app-1-1")
        .collect()
}

/// Reads a node's retained desired state from the broker.
async fn retained_desired(files: &BrokerFiles, node: &str) -> DesiredState {
    let topic = node_topic(node, "desired");
    let reader = Collector::start(
        service_options(files, &format!("reader-{node}"), Some(SERVICE_PASSWORD)),
        &[topic.as_str()],
    )
    .await;
    assert!(
        reader
            .wait_until(Duration::from_secs(5), |received| !received.is_empty())
            .await,
        "no retained desired state for {node}"
    );
    DesiredState::from_cbor(&reader.received()[0].payload).unwrap()
}

/// Asserts that no two nodes of one gantry switched within `settle_ms` of
/// each other: the second may switch only once the first has run the new
/// image for the settle time (or failed).
fn assert_pairs_staggered(
    view: &Value,
    labels: &BTreeMap<String, BTreeMap<String, String>>,
    settle_ms: u64,
) {
    let mut by_gantry: BTreeMap<&str, Vec<(u64, &str)>> = BTreeMap::new();
    for node in view["nodes"].as_array().unwrap() {
        let Some(switched) = node["switched_ms"].as_u64() else {
            continue;
        };
        let id = node["node"].as_str().unwrap();
        let gantry = labels[id]["gantry"].as_str();
        by_gantry.entry(gantry).or_default().push((switched, id));
    }
    let mut pairs = 0;
    for (gantry, mut switches) in by_gantry {
        if switches.len() < 2 {
            continue;
        }
        pairs += 1;
        switches.sort();
        let gap = switches[1].0 - switches[0].0;
        assert!(
            gap >= settle_ms,
            "gantry {gantry}: {} and {} switched {gap} ms apart, less than the settle time",
            switches[0].1,
            switches[1].1
        );
    }
    assert!(pairs > 0, "no gantry had both nodes switched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_nodes_pause_on_failures() {
    let province = Province::start();
    let events = Collector::start(
        service_options(&province.files, "events", Some(SERVICE_PASSWORD)),
        &[EVENTS],
    )
    .await;
    let labels = gantry_fleet(1_000);
    let fleet = SimFleet::start(&province.files, labels.clone()).await;

    let deployment = province.write("deployment.yaml", DEPLOYMENT);
    province.ctl.ok(&["apply", "-f", &deployment]);
    province.wait_app_running(1_000);

    // Wave 1 is section S0 (100 nodes); 20 of them crash on the new image,
    // twice the failure threshold of 10%.
    let section_0: Vec<String> = labels
        .iter()
        .filter(|(_, labels)| labels["section"] == "S0")
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(section_0.len(), 100);
    let failing: BTreeSet<String> = section_0.iter().step_by(5).cloned().collect();
    assert_eq!(failing.len(), 20);
    fleet.fail_on(NEW, failing.iter().cloned());

    let rollout = province.write(
        "rollout.yaml",
        &rollout_yaml(
            "  - selector: [\"section = S0\"]\n  - percent: 100",
            1,
            true,
        ),
    );
    let applied = province.ctl.ok(&["apply", &rollout]);
    assert!(applied.contains("rollout/toll-app-1-1"), "{applied}");

    let paused = province.wait_rollout("the rollout to pause", Duration::from_secs(120), |view| {
        view["state"] == "paused"
    });
    println!("paused: {}", summary(&paused));
    assert_eq!(paused["wave"], 1, "paused in the first wave");
    assert_eq!(paused["wave_history"].as_array().unwrap().len(), 1);
    let reason = paused["reason"].as_str().unwrap();
    assert!(reason.contains("failure threshold"), "{reason}");
    let failed: BTreeSet<String> = paused["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|node| {
            node["reason"]
                .as_str()
                .is_some_and(|reason| reason.contains("restarted") || reason.contains("failed"))
        })
        .map(|node| node["node"].as_str().unwrap().to_string())
        .collect();
    assert!(
        failed.len() >= 10 && failed.is_subset(&failing),
        "failures {failed:?} are not among the failing nodes"
    );
    // The wave goes back to the previous image under the pair rule: never
    // two nodes of one gantry going back at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let rolled_back = loop {
        let view = province.ctl.rollout_status("toll-app-1-1").unwrap();
        let mut going_back: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut unfinished = 0;
        let mut rolled_back = 0;
        for node in view["nodes"].as_array().unwrap() {
            let id = node["node"].as_str().unwrap();
            match node["phase"].as_str().unwrap() {
                "rolling-back" => {
                    unfinished += 1;
                    going_back
                        .entry(labels[id]["gantry"].as_str())
                        .or_default()
                        .push(id);
                }
                "rollback-pending" => unfinished += 1,
                "rolled-back" => rolled_back += 1,
                _ => {}
            }
        }
        for (gantry, nodes) in &going_back {
            assert!(
                nodes.len() < 2,
                "gantry {gantry}: {nodes:?} go back at once"
            );
        }
        if unfinished == 0 {
            break rolled_back;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rollback not finished: {}",
            summary(&view)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(rolled_back >= 10, "rolled back: {rolled_back}");

    // The pause holds: no second wave, and the rollout status names it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = province.ctl.rollout_status("toll-app-1-1").unwrap();
    assert_eq!(still["state"], "paused");
    assert_eq!(still["wave_history"].as_array().unwrap().len(), 1);
    assert_eq!(
        still["total_counts"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>(),
        100
    );
    let table = province.ctl.ok(&["rollout", "status", "toll-app-1-1"]);
    println!("{table}");
    assert!(table.contains("paused"), "{table}");
    assert!(table.contains("Failures:"), "{table}");

    // Rolled-back nodes are back on the previous image, without prefetch.
    let sample = failed.iter().next().unwrap();
    let desired = retained_desired(&province.files, sample).await;
    assert_eq!(desired.apps[0].image, OLD, "{desired:?}");
    assert_eq!(desired.apps[0].next_image, None, "{desired:?}");
    let node = http_json(province.api_port, &format!("/v1/nodes/{sample}"));
    assert_eq!(node["status"]["apps"][0]["state"], "running", "{node}");

    let kinds: Vec<EventKind> = rollout_events(&events).iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::RolloutWaveStarted, EventKind::RolloutPaused],
        "events in order"
    );

    // The bad image is fixed on the nodes; resume repeats wave 1 and goes on.
    fleet.behaviour.lock().unwrap().failing.clear();
    province.ctl.ok(&["rollout", "resume", "toll-app-1-1"]);
    let done = province.wait_rollout(
        "the rollout to complete",
        Duration::from_secs(240),
        |view| view["state"] == "completed",
    );
    println!("completed: {}", summary(&done));
    assert_eq!(
        done["total_counts"]["succeeded"],
        1_000,
        "{}",
        summary(&done)
    );
    assert_pairs_staggered(&done, &labels, 1_000);
    let interruptions: Vec<u64> = done["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|node| node["switch_ms"].as_u64())
        .collect();
    assert_eq!(interruptions.len(), 1_000);
    assert!(
        interruptions
            .iter()
            .all(|ms| *ms == u64::from(SIM_SWITCH_MS))
    );

    let kinds: Vec<EventKind> = rollout_events(&events).iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::RolloutWaveStarted,
            EventKind::RolloutPaused,
            EventKind::RolloutWaveFinished,
            EventKind::RolloutWaveStarted,
            EventKind::RolloutWaveFinished,
            EventKind::RolloutCompleted,
        ],
        "events in order"
    );
    assert!(fleet.statuses_sent() >= 3_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_resumes_the_wave() {
    let mut province = Province::start();
    let labels = gantry_fleet(40);
    let _fleet = SimFleet::start(&province.files, labels.clone()).await;

    let deployment = province.write("deployment.yaml", DEPLOYMENT);
    province.ctl.ok(&["apply", "-f", &deployment]);
    province.wait_app_running(40);

    // A long settle time keeps the first wave busy across the restart.
    let rollout = province.write(
        "rollout.yaml",
        &rollout_yaml("  - percent: 50\n  - percent: 100", 4, false),
    );
    province.ctl.ok(&["apply", "-f", &rollout]);
    let switching = province.wait_rollout("wave 1 to switch", Duration::from_secs(60), |view| {
        view["phase"] == "switch" && view["wave_counts"]["switching"].as_u64().unwrap_or(0) > 0
    });
    let first_wave = switching["wave_history"][0].clone();

    province.stop_center();
    province.start_center();

    let resumed = province.ctl.rollout_status("toll-app-1-1").unwrap();
    assert_eq!(resumed["wave"], 1, "{}", summary(&resumed));
    assert_eq!(
        resumed["wave_history"][0]["started_ms"], first_wave["started_ms"],
        "the restarted controller started wave 1 again"
    );
    let done = province.wait_rollout(
        "the rollout to complete",
        Duration::from_secs(120),
        |view| view["state"] == "completed",
    );
    let history = done["wave_history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["started_ms"], first_wave["started_ms"]);
    assert!(history[0]["finished_ms"].as_u64() <= history[1]["started_ms"].as_u64());
    assert_eq!(done["total_counts"]["succeeded"], 40, "{}", summary(&done));
    assert_pairs_staggered(&done, &labels, 4_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_resume_abort_through_tollwayctl() {
    let province = Province::start();
    let _fleet = SimFleet::start(&province.files, gantry_fleet(20)).await;
    let deployment = province.write("deployment.yaml", DEPLOYMENT);
    province.ctl.ok(&["apply", "-f", &deployment]);
    province.wait_app_running(20);

    // One wave of 20 nodes in 10 gantries: each gantry's second node waits
    // for the first to settle, 3 s here.
    let rollout = province.write("rollout.yaml", &rollout_yaml("  - percent: 100", 3, false));
    province.ctl.ok(&["apply", "-f", &rollout]);
    province.wait_rollout("the wave to switch", Duration::from_secs(60), |view| {
        view["wave_counts"]["switching"].as_u64().unwrap_or(0) > 0
    });

    let output = province.ctl.ok(&["rollout", "pause", "toll-app-1-1"]);
    assert!(output.contains("pause requested"), "{output}");
    let paused = province.wait_rollout("the pause", Duration::from_secs(15), |view| {
        view["state"] == "paused"
    });
    assert_eq!(paused["reason"], "paused by an operator");
    let switched_at_pause = switched_count(&paused);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let later = province.ctl.rollout_status("toll-app-1-1").unwrap();
    assert_eq!(
        switched_count(&later),
        switched_at_pause,
        "nodes were switched while paused"
    );

    // The status reads in Simplified Chinese under a zh_CN locale.
    let chinese = province
        .ctl
        .run_in_locale(&["rollout", "status", "toll-app-1-1"], "zh_CN.UTF-8");
    let text = String::from_utf8_lossy(&chinese.stdout);
    assert!(text.contains("批次"), "{text}");
    assert!(text.contains("状态"), "{text}");

    province.ctl.ok(&["rollout", "resume", "toll-app-1-1"]);
    province.wait_rollout(
        "more switches after resume",
        Duration::from_secs(30),
        |view| view["state"] == "running" && switched_count(view) > switched_at_pause,
    );

    let output = province.ctl.ok(&["rollout", "abort", "toll-app-1-1"]);
    assert!(output.contains("abort requested"), "{output}");
    let aborted = province.wait_rollout("the abort", Duration::from_secs(15), |view| {
        view["state"] == "aborted"
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let aborted = province
        .ctl
        .rollout_status("toll-app-1-1")
        .unwrap_or(aborted);
    for node in aborted["nodes"].as_array().unwrap() {
        let id = node["node"].as_str().unwrap();
        let desired = retained_desired(&province.files, id).await;
        let app = &desired.apps[0];
        if node["phase"] == "prefetching" {
            assert_eq!(app.image, OLD, "node {id} was not switched: {app:?}");
            assert_eq!(app.next_image, None, "node {id} still prefetches: {app:?}");
        } else {
            assert_eq!(app.image, NEW, "node {id} was switched: {app:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_node_neither_blocks_nor_is_forgotten() {
    let province = Province::start();
    let labels = gantry_fleet(10);
    let mut fleet = SimFleet::start(&province.files, labels).await;
    let deployment = province.write("deployment.yaml", DEPLOYMENT);
    province.ctl.ok(&["apply", "-f", &deployment]);
    province.wait_app_running(10);

    let offline = "n00004";
    fleet.disconnect(offline);
    wait_for("the node to be offline", Duration::from_secs(15), || {
        let node = http_json(province.api_port, &format!("/v1/nodes/{offline}"));
        if node["online"] == false {
            Ok(())
        } else {
            Err(node.to_string())
        }
    });

    // wave_timeout_s is 5 s: after it the offline node no longer counts.
    let rollout = rollout_yaml("  - percent: 100", 1, false)
        .replace("wave_timeout_s: 120", "wave_timeout_s: 5");
    let rollout = province.write("rollout.yaml", &rollout);
    province.ctl.ok(&["apply", "-f", &rollout]);
    let done = province.wait_rollout("the rollout to complete", Duration::from_secs(60), |view| {
        view["state"] == "completed"
    });
    let node = |view: &Value| {
        view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|node| node["node"] == offline)
            .cloned()
            .unwrap()
    };
    assert_eq!(node(&done)["phase"], "prefetching", "{}", node(&done));
    assert_eq!(node(&done)["online"], false);
    assert_eq!(done["total_counts"]["succeeded"], 9, "{}", summary(&done));

    fleet.reconnect(&province.files, offline).await;
    let converged = province.wait_rollout(
        "the returning node to switch",
        Duration::from_secs(60),
        |view| node(view)["phase"] == "succeeded",
    );
    assert_eq!(converged["total_counts"]["succeeded"], 10);
    let desired = retained_desired(&province.files, offline).await;
    assert_eq!(desired.apps[0].image, NEW, "{desired:?}");
}

/// A node that goes offline in the middle of its switch may finish it the
/// moment it reconnects, so its gantry partner waits `wave_timeout_s` from
/// that switch before switching itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partner_waits_for_a_node_lost_mid_switch() {
    let province = Province::start();
    let labels = gantry_fleet(2);
    let mut fleet = SimFleet::start(&province.files, labels).await;
    let deployment = province.write("deployment.yaml", DEPLOYMENT);
    province.ctl.ok(&["apply", "-f", &deployment]);
    province.wait_app_running(2);

    // A long settle time keeps the first node switching; the wave timeout
    // is the hold.
    let rollout = rollout_yaml("  - percent: 100", 30, false)
        .replace("wave_timeout_s: 120", "wave_timeout_s: 8");
    let rollout = province.write("rollout.yaml", &rollout);
    province.ctl.ok(&["apply", "-f", &rollout]);
    let phase = |view: &Value, id: &str| {
        view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|node| node["node"] == id)
            .map(|node| node["phase"].as_str().unwrap().to_string())
            .unwrap()
    };
    let switching = province.wait_rollout("one node to switch", Duration::from_secs(30), |view| {
        ["n00000", "n00001"]
            .iter()
            .any(|id| phase(view, id) == "switching")
    });
    let (lost, partner) = if phase(&switching, "n00000") == "switching" {
        ("n00000", "n00001")
    } else {
        ("n00001", "n00000")
    };
    assert_eq!(phase(&switching, partner), "prefetching");

    fleet.disconnect(lost);
    wait_for("the node to be offline", Duration::from_secs(15), || {
        let node = http_json(province.api_port, &format!("/v1/nodes/{lost}"));
        if node["online"] == false {
            Ok(())
        } else {
            Err(node.to_string())
        }
    });
    let offline_at = std::time::Instant::now();
    while offline_at.elapsed() < Duration::from_secs(2) {
        let view = province.ctl.rollout_status("toll-app-1-1").unwrap();
        assert_eq!(
            phase(&view, partner),
            "prefetching",
            "{partner} switched while {lost} was lost mid-switch"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // After the hold the partner goes on, so one lost node cannot keep
    // its gantry on the old image.
    province.wait_rollout("the partner to switch", Duration::from_secs(30), |view| {
        phase(view, partner) == "switching"
    });
}

/// Returns how many nodes of a rollout view have been switched.
fn switched_count(view: &Value) -> usize {
    view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|node| node["switched_ms"].is_u64())
        .count()
}
