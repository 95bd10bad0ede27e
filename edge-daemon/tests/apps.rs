//! The app manager against real Podman and the locally built toll app
//! image: deploy, upgrade with prefetch, drift repair, invalid documents,
//! an offline reboot, two nodes on one Podman host, containers that are not
//! ours, and crash restarts with back-off.
//!
//! Needs `TOLLWAY_PODMAN_SOCKET` (see `scripts/podman-service`).

mod apps_support;

use apps_support::*;
use tollway_edge::apps::{APP, MANAGED_BY, NODE, SPEC_HASH};
use tollway_edge::intake::{Intake, IntakeConfig};
use tollway_edge::outbox::BatchLimits;
use tollway_testkit::podman;
use tollway_topics::wire::MapWriter;
use tollway_topics::{AppState, Mount, RestartPolicy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_creates_labelled_container() {
    let image = podman::toll_app_image("1.0.0");
    let mut node = TestNode::start("deploy", test_config());

    node.send(&desired(1, vec![toll_app(&image)]));
    let report = node.wait_running(1, "toll-app").await;
    assert_eq!(report.rejected, None);

    let containers = node.containers();
    assert_eq!(containers.len(), 1, "containers: {containers:?}");
    let id = &containers[0];
    assert_eq!(inspect(id, "{{.State.Status}}"), "running");
    assert_eq!(inspect(id, "{{.ImageName}}"), image);
    let labels = inspect(id, "{{json .Config.Labels}}");
    for (key, value) in [
        (MANAGED_BY, "tollway"),
        (NODE, node.node.as_str()),
        (APP, "toll-app"),
    ] {
        assert!(
            labels.contains(&format!("\"{key}\":\"{value}\"")),
            "label {key}={value} missing in {labels}"
        );
    }
    assert!(labels.contains(SPEC_HASH), "no spec hash in {labels}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_prefetches_then_switches() {
    let old = podman::toll_app_image("1.0.0");
    let new = podman::toll_app_image("1.1.0");
    let mut node = TestNode::start("update", test_config());

    let mut spec = toll_app(&old);
    spec.next_image = Some(new.clone());
    node.send(&desired(1, vec![spec.clone()]));
    let report = node
        .wait_for("next image ready at generation 1", |report| {
            report.generation == 1
                && app_status(report, "toll-app")
                    .is_some_and(|s| s.state == AppState::Running && s.next_image_ready)
        })
        .await;
    assert_eq!(report.apps.len(), 1);
    let first = app_status(&report, "toll-app").unwrap();
    assert_eq!(
        first.last_switch_ms, None,
        "a first start is not a switch: {first:?}"
    );
    let before = node.containers();
    assert_eq!(before.len(), 1, "containers: {before:?}");

    spec.image = new.clone();
    spec.next_image = None;
    node.send(&desired(2, vec![spec]));
    let report = node.wait_running(2, "toll-app").await;
    let switched = app_status(&report, "toll-app").unwrap();
    let switch_ms = switched
        .last_switch_ms
        .expect("the switch reports its interruption");
    assert!(
        switch_ms < 60_000,
        "interruption {switch_ms} ms is longer than the stop timeout allows"
    );

    let after = node.containers();
    assert_eq!(after.len(), 1, "old container not removed: {after:?}");
    assert_ne!(after[0], before[0], "the container was not replaced");
    assert_eq!(inspect(&after[0], "{{.ImageName}}"), new);
    assert_eq!(inspect(&after[0], "{{.State.Status}}"), "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_repair_recreates_removed_container() {
    let image = podman::toll_app_image("1.0.0");
    let mut node = TestNode::start("drift", test_config());
    node.send(&desired(1, vec![toll_app(&image)]));
    node.wait_running(1, "toll-app").await;
    let first = node.containers();
    assert_eq!(first.len(), 1);

    podman::podman(&["rm", "-f", "-t", "0", &first[0]]);

    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = node.containers();
        if now.len() == 1
            && now[0] != first[0]
            && inspect(&now[0], "{{.State.Status}}") == "running"
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "container removed by hand was not recreated; containers now: {now:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_desired_state_is_rejected() {
    let image = podman::toll_app_image("1.0.0");
    let mut node = TestNode::start("invalid", test_config());
    node.send(&desired(1, vec![toll_app(&image)]));
    node.wait_running(1, "toll-app").await;
    let running = node.containers();

    // Generation 2 names an image with a space: it encodes (the writer does
    // not validate) but the daemon must reject it.
    let mut broken = toll_app("localhost/tollway/toll-app 2.0.0");
    broken.env.clear();
    let payload = MapWriter::write_message(&desired(2, vec![broken]));
    node.send_raw(payload);
    let report = node
        .wait_for("rejection of generation 2", |report| {
            report.rejected.is_some()
        })
        .await;
    let (generation, reason) = report.rejected.clone().unwrap();
    assert_eq!(generation, 2);
    assert!(
        reason.contains("image"),
        "reason does not name the field: {reason}"
    );
    assert_eq!(report.generation, 1);

    // Bytes that are not CBOR at all are rejected too, with generation 0.
    node.send_raw(b"not a desired state".to_vec());
    let report = node
        .wait_for("rejection of garbage", |report| {
            report
                .rejected
                .as_ref()
                .is_some_and(|(generation, _)| *generation == 0)
        })
        .await;
    assert_eq!(report.generation, 1);

    // An older or equal generation is ignored, whatever it contains.
    node.send(&desired(1, Vec::new()));
    node.send(&desired(0, Vec::new()));
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(node.containers(), running, "running apps were touched");
    assert_eq!(node.reports.borrow().generation, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_reboot_runs_stored_state() {
    let image = podman::toll_app_image("1.0.0");
    let dir = tempfile::tempdir().unwrap();
    let id = unique_node("reboot");

    let mut node = TestNode::start_in(id.clone(), dir.path(), test_config());
    node.send(&desired(3, vec![toll_app(&image)]));
    node.wait_running(3, "toll-app").await;
    node.stop().await;

    // The reboot: every container is gone and no network brings a document.
    podman::remove_labelled(NODE, id.as_str());
    assert!(node.containers().is_empty());
    drop(node);

    let mut node = TestNode::start_in(id, dir.path(), test_config());
    let report = node.wait_running(3, "toll-app").await;
    assert_eq!(report.rejected, None);
    assert_eq!(node.containers().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_touch_only_their_own() {
    let image = podman::toll_app_image("1.0.0");
    let mut first = TestNode::start("pair-a", test_config());
    let mut second = TestNode::start("pair-b", test_config());
    first.send(&desired(1, vec![toll_app(&image)]));
    second.send(&desired(1, vec![toll_app(&image)]));
    first.wait_running(1, "toll-app").await;
    second.wait_running(1, "toll-app").await;
    let second_containers = second.containers();
    assert_eq!(second_containers.len(), 1);

    // The first node drops its app: only its own container goes.
    first.send(&desired(2, Vec::new()));
    first
        .wait_for("generation 2 applied", |report| {
            report.generation == 2 && report.apps.is_empty()
        })
        .await;
    assert!(
        first.containers().is_empty(),
        "first node kept {:?}",
        first.containers()
    );

    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        second.containers(),
        second_containers,
        "second node's container was touched"
    );
    assert_eq!(
        inspect(&second_containers[0], "{{.State.Status}}"),
        "running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlabeled_containers_left_alone() {
    let image = podman::toll_app_image("1.0.0");
    let mut node = TestNode::start("unlabeled", test_config());
    let tag = format!("t-unlabeled-{}", std::process::id());
    // One container with no labels, one with only the node label (not
    // marked as managed), both named after the node's app.
    let bare = podman::podman(&["create", "--label", &format!("test={tag}"), &image]);
    let node_only = podman::podman(&[
        "create",
        "--label",
        &format!("test={tag}"),
        "--label",
        &format!("{NODE}={}", node.node),
        "--label",
        "io.tollway.app=toll-app",
        &image,
    ]);

    node.send(&desired(1, Vec::new()));
    node.wait_for("generation 1 applied", |report| report.generation == 1)
        .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;

    let left = podman::containers_labelled("test", &tag);
    assert!(left.contains(&bare), "unlabeled container was removed");
    assert!(
        left.contains(&node_only),
        "container without the managed-by label was removed"
    );
    podman::remove_labelled("test", &tag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restarts_with_backoff() {
    let image = podman::toll_app_image("1.0.0");
    let mut node = TestNode::start("crash", test_config());
    // An invalid rate makes the app exit with status 2 right after start.
    let mut spec = toll_app(&image);
    spec.env
        .insert("TOLL_APP_RATE".to_string(), "0".to_string());
    spec.restart = RestartPolicy::Always;
    node.send(&desired(1, vec![spec.clone()]));

    let report = node
        .wait_for("three restarts", |report| {
            app_status(report, "toll-app").is_some_and(|s| s.restarts >= 3)
        })
        .await;
    let status = app_status(&report, "toll-app").unwrap();
    assert_eq!(
        node.containers().len(),
        1,
        "restarts must reuse the container"
    );

    let report = node
        .wait_for("a failed state with the exit code", |report| {
            app_status(report, "toll-app").is_some_and(|s| {
                s.state == AppState::Failed
                    && s.reason
                        .as_deref()
                        .is_some_and(|r| r.contains("exited with code 2"))
            })
        })
        .await;
    assert!(app_status(&report, "toll-app").unwrap().restarts >= status.restarts);

    // Under `never`, a new spec's crash is reported and not restarted.
    spec.restart = RestartPolicy::Never;
    node.send(&desired(2, vec![spec]));
    let report = node
        .wait_for("failed without restarts at generation 2", |report| {
            report.generation == 2
                && app_status(report, "toll-app").is_some_and(|s| {
                    s.state == AppState::Failed && s.reason.as_deref() == Some("exited with code 2")
                })
        })
        .await;
    assert_eq!(app_status(&report, "toll-app").unwrap().restarts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_reported_as_failed() {
    let mut node = TestNode::start("missing", test_config());
    // No registry listens on localhost, so the pull fails.
    node.send(&desired(
        1,
        vec![toll_app("localhost/tollway/no-such-app:0.0.1")],
    ));
    let report = node
        .wait_for("a failed pull", |report| {
            app_status(report, "toll-app").is_some_and(|s| {
                s.state == AppState::Failed
                    && s.reason.as_deref().is_some_and(|r| r.contains("pull"))
            })
        })
        .await;
    assert_eq!(report.generation, 1);
    assert!(
        node.containers().is_empty(),
        "a container was created without its image"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toll_app_records_reach_intake() {
    let image = podman::toll_app_image("1.0.0");
    let mut node = TestNode::start("records", test_config());
    let outbox = node.outbox();
    let intake = Intake::bind(
        IntakeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..IntakeConfig::default()
        },
        std::sync::Arc::clone(&outbox),
    )
    .await
    .expect("intake binds");
    let intake_addr = intake.local_addr().unwrap();
    let stop_intake = tollway_runtime::CancellationToken::new();
    let intake_task = tokio::spawn(intake.run(stop_intake.clone()));

    let counts_dir = tempfile::tempdir().unwrap();
    let mut spec = toll_app(&image);
    spec.env.insert("TOLL_APP_RATE".into(), "50".into());
    spec.env
        .insert("TOLL_APP_INTAKE".into(), intake_addr.to_string());
    spec.env
        .insert("TOLL_APP_COUNTS_DIR".into(), "/data".into());
    spec.mounts.push(Mount {
        source: counts_dir.path().display().to_string(),
        target: "/data".into(),
        read_only: false,
    });
    node.send(&desired(1, vec![spec]));
    node.wait_running(1, "toll-app").await;

    let deadline = tokio::time::Instant::now() + PATIENCE;
    while outbox.stats(std::time::SystemTime::now()).unwrap().next_seq <= 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than 20 records reached the outbox"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Removing the app stops it with SIGTERM; its handler writes final counts.
    node.send(&desired(2, Vec::new()));
    node.wait_for("app removed", |report| report.generation == 2)
        .await;
    let counts_path = counts_dir.path().join("counts-1.0.0.json");
    let counts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&counts_path).expect("counts file written")).unwrap();
    assert_eq!(
        counts["stopped"], true,
        "no final counts after SIGTERM: {counts}"
    );
    let acked = counts["acked"].as_u64().unwrap();
    let stored = outbox.stats(std::time::SystemTime::now()).unwrap().next_seq - 1;
    assert!(acked >= 20, "counts: {counts}");
    // Every acknowledged record is in the outbox; a record can be stored
    // without its PUBACK reaching the app before it stopped.
    assert!(
        stored >= acked,
        "outbox holds {stored} records, app saw {acked} acknowledged"
    );

    let batch = outbox
        .read_range(1, stored.min(500), BatchLimits::default())
        .expect("records read back");
    assert!(!batch.records.is_empty());
    for record in &batch.records {
        assert_eq!(record.fee, record.pay_fee + record.discount_fee);
        assert!(!record.plate.is_empty());
    }

    stop_intake.cancel();
    let _ = intake_task.await;
}

// Four workers, because the counts polling below blocks one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toll_app_resends_after_intake_restart() {
    let image = podman::toll_app_image("1.0.0");
    let mut node = TestNode::start("resend", test_config());
    let outbox = node.outbox();
    let config = IntakeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..IntakeConfig::default()
    };
    let intake = Intake::bind(config.clone(), std::sync::Arc::clone(&outbox))
        .await
        .expect("intake binds");
    let intake_addr = intake.local_addr().unwrap();
    let stop_first = tollway_runtime::CancellationToken::new();
    let first_task = tokio::spawn(intake.run(stop_first.clone()));

    let counts_dir = tempfile::tempdir().unwrap();
    let mut spec = toll_app(&image);
    spec.env.insert("TOLL_APP_RATE".into(), "100".into());
    spec.env
        .insert("TOLL_APP_INTAKE".into(), intake_addr.to_string());
    spec.env
        .insert("TOLL_APP_COUNTS_DIR".into(), "/data".into());
    spec.mounts.push(Mount {
        source: counts_dir.path().display().to_string(),
        target: "/data".into(),
        read_only: false,
    });
    node.send(&desired(1, vec![spec]));
    node.wait_running(1, "toll-app").await;
    let counts_path = counts_dir.path().join("counts-1.0.0.json");
    let read_counts = || -> serde_json::Value {
        std::fs::read(&counts_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    };
    let wait_counts = |what: &'static str, done: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let counts = read_counts();
            if done(&counts) {
                return counts;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}; counts: {counts}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    wait_counts("no records acknowledged", &|c| {
        c["acked"].as_u64() > Some(50)
    });

    // The intake goes away for a while, then comes back on the same port.
    stop_first.cancel();
    first_task.await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let second = Intake::bind(
        IntakeConfig {
            listen: intake_addr,
            ..config
        },
        std::sync::Arc::clone(&outbox),
    )
    .await
    .expect("intake binds again on the same port");
    let stop_second = tollway_runtime::CancellationToken::new();
    let second_task = tokio::spawn(second.run(stop_second.clone()));

    let before = read_counts()["acked"].as_u64().unwrap();
    wait_counts(
        "acknowledgements did not resume after the intake came back",
        &|c| c["reconnects"].as_u64() >= Some(1) && c["acked"].as_u64() > Some(before + 100),
    );

    // Stop the app so its counts are final, then compare with the outbox.
    node.send(&desired(2, Vec::new()));
    node.wait_for("app removed", |report| report.generation == 2)
        .await;
    let counts = wait_counts("no final counts", &|c| c["stopped"] == true);
    let acked = counts["acked"].as_u64().unwrap();
    let stored = outbox.stats(std::time::SystemTime::now()).unwrap().next_seq - 1;
    assert!(
        stored >= acked,
        "outbox holds {stored} records, the app saw {acked} acknowledged"
    );

    stop_second.cancel();
    second_task.await.unwrap();
}
