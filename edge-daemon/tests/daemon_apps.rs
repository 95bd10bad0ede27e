//! The whole daemon with its apps, end to end. A centre publishes a desired
//! state retained on the real `tollway-broker`. The running `tollway-edge`
//! receives it over its mutual-TLS link and starts the toll app in real
//! Podman. The app's records come back through the intake and the uplink,
//! and the status reports the generation that runs. The app tests drive
//! the app manager directly, so this test checks the wiring in `main.rs`.

mod apps_support;
mod node;

use std::time::Duration;

use tollway_testkit::{BrokerFiles, podman};
use tollway_topics::{AppState, DesiredState, Message};

use apps_support::{toll_app, unique_node};
use node::{Centre, Containers, Node, NodeOptions};

const PATIENCE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_state_runs_app_end_to_end() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let centre = Centre::start(&files, "centre-daemon-apps");
    let node_id = unique_node("daemon");
    let id = node_id.as_str().to_string();
    let _containers = Containers(id.clone());

    let mut node = Node::new(&files, &id, NodeOptions::default());
    node.enable_apps();
    node.start();

    // The toll app on the host network hands records to this node's intake.
    let mut app = toll_app(&podman::toll_app_image("1.0.0"));
    app.env
        .insert("TOLL_APP_INTAKE".to_string(), node.intake.to_string());
    app.env
        .insert("TOLL_APP_RATE".to_string(), "20".to_string());
    app.env
        .insert("TOLL_APP_CLIENT_ID".to_string(), format!("{id}-toll-app"));
    let desired = DesiredState {
        generation: 1,
        apps: vec![app],
    };
    centre
        .publish_to(&id, "desired", desired.to_cbor().unwrap(), true)
        .await;

    centre
        .wait_until(
            PATIENCE,
            "a status with generation 1 and the app running",
            |state| {
                state.statuses.iter().any(|(from, status)| {
                    from == &id
                        && status.generation == 1
                        && status
                            .apps
                            .iter()
                            .any(|a| a.name == "toll-app" && a.state == AppState::Running)
                })
            },
        )
        .await;
    centre
        .wait_until(
            PATIENCE,
            "100 of the app's records stored by the centre",
            |state| state.stored_through(&id) >= 100,
        )
        .await;

    let exit = node.stop();
    assert!(exit.success(), "tollway-edge exited with {exit}");
    let log = node.log();
    let state = centre.state.lock().unwrap();
    assert!(
        state.conflicts.is_empty(),
        "a seq carried two different records: {:?}\n{log}",
        state.conflicts
    );
}
