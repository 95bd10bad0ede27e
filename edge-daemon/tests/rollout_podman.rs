//! A rollout end to end with real Podman. Four `tollway-edge` daemons (two
//! gantries, each an active/standby pair) run on the real broker beside
//! the provincial controller in `tollway-center`. `tollwayctl` applies a
//! deployment of the toll app 1.0.0, then a rollout to 1.1.0 in two waves.
//! The test checks that every node ends on 1.1.0, that the waves ran in
//! order and that the two nodes of a gantry never switched together, and
//! prints the interruption each daemon measured.

mod apps_support;
mod node;

use std::collections::BTreeMap;
use std::time::Duration;

use tollway_testkit::center::{Center, controller_config, http_json, pick_port, wait_for};
use tollway_testkit::ctl::Ctl;
use tollway_testkit::{BrokerFiles, podman};

use apps_support::unique_node;
use node::{Node, NodeOptions};

/// Settle time of the rollout, in seconds: longer than the daemons'
/// reconcile interval (1 s here), so a crash on the new image is seen.
const SETTLE_S: u64 = 3;

/// Removes the nodes' containers when the test ends, passed or failed.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for node in &self.0 {
            podman::remove_labelled("io.tollway.node", node);
        }
    }
}

/// Writes a node's configuration with its own labels and the apps section.
fn edge_node(files: &BrokerFiles, id: &str, gantry: &str, section: &str) -> Node {
    let mut node = Node::new(files, id, NodeOptions::default());
    let text = std::fs::read_to_string(&node.config).unwrap();
    let text = text.replace(
        "labels = { gantry = \"G001544001000201010\", arch = \"x86_64\" }",
        &format!(
            "labels = {{ gantry = \"{gantry}\", section = \"{section}\", role = \"gantry\" }}"
        ),
    );
    std::fs::write(&node.config, text).unwrap();
    node.enable_apps();
    node.start();
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_switches_real_nodes_in_waves() {
    let old = podman::toll_app_image("1.0.0");
    let new = podman::toll_app_image("1.1.0");
    let files = BrokerFiles::province();
    let _broker = files.start();
    let data = tempfile::tempdir().unwrap();
    let api_port = pick_port();
    let config = controller_config(&files, &data.path().join("controller"), api_port, 600);
    let _center = Center::start(data.path(), &config, api_port);
    let ctl = Ctl::new(&files, api_port, data.path());

    let layout = [
        ("a1", "GA", "A"),
        ("a2", "GA", "A"),
        ("b1", "GB", "B"),
        ("b2", "GB", "B"),
    ];
    let ids: Vec<String> = layout
        .iter()
        .map(|(tag, _, _)| unique_node(&format!("ro-{tag}")).to_string())
        .collect();
    let _containers = Containers(ids.clone());
    let gantry_of: BTreeMap<String, &str> = ids
        .iter()
        .zip(&layout)
        .map(|(id, (_, gantry, _))| (id.clone(), *gantry))
        .collect();
    let section_of: BTreeMap<String, &str> = ids
        .iter()
        .zip(&layout)
        .map(|(id, (_, _, section))| (id.clone(), *section))
        .collect();
    let mut nodes: Vec<Node> = ids
        .iter()
        .zip(&layout)
        .map(|(id, (_, gantry, section))| edge_node(&files, id, gantry, section))
        .collect();

    let deployment = data.path().join("deployment.yaml");
    std::fs::write(
        &deployment,
        format!(
            "kind: Deployment\nname: toll-app\nselector: [\"role = gantry\"]\nmode: per-node\napp:\n  name: toll-app\n  image: {old}\n  env:\n    TOLL_APP_RATE: \"1\"\n"
        ),
    )
    .unwrap();
    ctl.ok(&["apply", "-f", &deployment.display().to_string()]);
    wait_for(
        "4 nodes running toll-app 1.0.0",
        Duration::from_secs(120),
        || {
            let apps = http_json(api_port, "/v1/apps");
            match apps.as_array().and_then(|apps| apps.first()) {
                Some(app) if app["running"] == 4 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    );

    let rollout = data.path().join("rollout.yaml");
    std::fs::write(
        &rollout,
        format!(
            "kind: Rollout\nname: toll-app-1-1\ndeployment: toll-app\nimage: {new}\nwaves:\n  - selector: [\"section = A\"]\n  - percent: 100\nsuccess_threshold_pct: 100\nfailure_threshold_pct: 50\nrollback_on_pause: true\nprefetch_timeout_s: 120\nwave_timeout_s: 300\nsettle_s: {SETTLE_S}\npair_label: gantry\n"
        ),
    )
    .unwrap();
    let applied = ctl.ok(&["apply", &rollout.display().to_string()]);
    assert!(applied.contains("rollout/toll-app-1-1"), "{applied}");

    let done = wait_for("the rollout to complete", Duration::from_secs(240), || {
        let view = ctl.rollout_status("toll-app-1-1")?;
        if view["state"] == "completed" {
            Ok(view)
        } else {
            Err(format!(
                "{} wave {} {} {}",
                view["state"], view["wave"], view["phase"], view["wave_counts"]
            ))
        }
    });
    println!("{}", ctl.ok(&["rollout", "status", "toll-app-1-1"]));

    // Every node runs 1.1.0 in exactly one container.
    for id in &ids {
        let containers = podman::containers_labelled("io.tollway.node", id);
        assert_eq!(containers.len(), 1, "node {id}: {containers:?}");
        let image = podman::podman(&["inspect", "--format", "{{.ImageName}}", &containers[0]]);
        assert_eq!(image, new, "node {id}");
        let state = podman::podman(&["inspect", "--format", "{{.State.Status}}", &containers[0]]);
        assert_eq!(state, "running", "node {id}");
    }

    // The waves ran in order: section A first, then the rest.
    let history = done["wave_history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{done}");
    assert!(
        history[0]["finished_ms"].as_u64().unwrap() <= history[1]["started_ms"].as_u64().unwrap(),
        "wave 2 started before wave 1 finished: {history:?}"
    );
    let node_views = done["nodes"].as_array().unwrap();
    for node in node_views {
        let id = node["node"].as_str().unwrap();
        let expected_wave = if section_of[id] == "A" { 1 } else { 2 };
        assert_eq!(node["wave"], expected_wave, "node {id}");
        assert_eq!(node["phase"], "succeeded", "node {id}");
    }

    // The pair rule: the nodes of one gantry switched at least the settle
    // time apart, because the second waits for the first to run 1.1.0.
    let mut by_gantry: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for node in node_views {
        let id = node["node"].as_str().unwrap();
        let switched = node["switched_ms"]
            .as_u64()
            .expect("switched node has a time");
        by_gantry.entry(gantry_of[id]).or_default().push(switched);
    }
    for (gantry, mut times) in by_gantry {
        times.sort_unstable();
        assert_eq!(times.len(), 2, "gantry {gantry}");
        assert!(
            times[1] - times[0] >= SETTLE_S * 1000,
            "gantry {gantry}: its nodes switched {} ms apart",
            times[1] - times[0]
        );
    }

    // Each daemon measured its interruption (old container stop to new
    // container running).
    let mut interruptions: Vec<(String, u64)> = node_views
        .iter()
        .map(|node| {
            let id = node["node"].as_str().unwrap().to_string();
            let ms = node["switch_ms"]
                .as_u64()
                .unwrap_or_else(|| panic!("node {id} reported no interruption: {node}"));
            (id, ms)
        })
        .collect();
    interruptions.sort_by_key(|(_, ms)| *ms);
    for (id, ms) in &interruptions {
        println!("interruption {id}: {ms} ms");
        assert!(*ms < 10_000, "node {id} was out of service for {ms} ms");
    }
    let median = (interruptions[1].1 + interruptions[2].1) / 2;
    println!("interruption median over 4 nodes: {median} ms");

    let failures = done["failures"].as_array().cloned().unwrap_or_default();
    assert!(failures.is_empty(), "failures: {failures:?}");
    for node in &mut nodes {
        assert!(
            node.stop().success(),
            "tollway-edge {} did not exit cleanly",
            node.id
        );
    }
}
