//! An app's life on a node, driven through the whole `tollway-edge` process
//! rather than its app manager. A centre publishes desired states retained
//! on the real `tollway-broker`, and the daemon acts on them in real Podman.
//! The test reads the daemon's status and Podman's containers.
//!
//! In order: deploy with a next image (prefetched and reported ready), the
//! switch to that image, an invalid desired state (rejected in status, the
//! app untouched), drift (the container removed by hand and put back), and
//! a reboot without network (the daemon restarts with the broker gone and
//! runs the persisted desired state).

mod apps_support;
mod node;

use std::time::{Duration, Instant};

use tollway_testkit::{BrokerFiles, podman};
use tollway_topics::wire::MapWriter;
use tollway_topics::{AppState, DesiredState, Message, NodeStatus};

use apps_support::{toll_app, unique_node};
use node::{Centre, Containers, Node, NodeOptions};

const PATIENCE: Duration = Duration::from_secs(90);

/// Returns the id and image of the node's one running toll-app container.
fn running_app(node: &str) -> Option<(String, String)> {
    let filter_node = format!("label=io.tollway.node={node}");
    let listed = podman::podman(&[
        "ps",
        "--no-trunc",
        "--filter",
        &filter_node,
        "--filter",
        "status=running",
        "--format",
        "{{.ID}} {{.Image}}",
    ]);
    let mut lines = listed.lines();
    let line = lines.next()?;
    assert!(
        lines.next().is_none(),
        "more than one running container: {listed}"
    );
    let (id, image) = line.split_once(' ')?;
    Some((id.to_string(), image.to_string()))
}

/// Waits until Podman runs the node's app with `image` and returns the id.
async fn wait_for_image(node: &str, image: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some((id, running)) = running_app(node)
            && running == image
        {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "node {node} does not run {image} after {PATIENCE:?}; running: {:?}",
            running_app(node)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn app_running(status: &NodeStatus) -> bool {
    status
        .apps
        .iter()
        .any(|a| a.name == "toll-app" && a.state == AppState::Running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_lifecycle_through_the_daemon() {
    let old = podman::toll_app_image("1.0.0");
    let new = podman::toll_app_image("1.1.0");
    let files = BrokerFiles::province();
    let broker = files.start();
    let centre = Centre::start(&files, "centre-lifecycle");
    let node_id = unique_node("life");
    let id = node_id.as_str().to_string();
    let _containers = Containers(id.clone());

    let mut node = Node::new(&files, &id, NodeOptions::default());
    node.enable_apps();
    node.start();

    // Deploy 1.0.0 with 1.1.0 as the next image: it runs the old image and
    // reports the new one prefetched.
    let mut app = toll_app(&old);
    app.next_image = Some(new.clone());
    let desired = DesiredState {
        generation: 1,
        apps: vec![app.clone()],
    };
    centre
        .publish_to(&id, "desired", desired.to_cbor().unwrap(), true)
        .await;
    centre
        .wait_until(
            PATIENCE,
            "generation 1 running, next image ready",
            |state| {
                state.statuses.iter().any(|(from, status)| {
                    from == &id
                        && status.generation == 1
                        && app_running(status)
                        && status.apps.iter().any(|a| a.next_image_ready)
                })
            },
        )
        .await;
    wait_for_image(&id, &old).await;

    // Switch to the prefetched image.
    app.image = new.clone();
    app.next_image = None;
    let desired = DesiredState {
        generation: 2,
        apps: vec![app.clone()],
    };
    centre
        .publish_to(&id, "desired", desired.to_cbor().unwrap(), true)
        .await;
    let switched = wait_for_image(&id, &new).await;
    centre
        .wait_until(PATIENCE, "generation 2 running", |state| {
            state
                .statuses
                .iter()
                .any(|(from, status)| from == &id && status.generation == 2 && app_running(status))
        })
        .await;

    // Generation 3 names an image with a space. It encodes (the writer does
    // not validate) and the daemon must reject it and keep the app.
    let mut broken = app.clone();
    broken.image = "localhost/tollway/toll-app 9.9.9".to_string();
    let payload = MapWriter::write_message(&DesiredState {
        generation: 3,
        apps: vec![broken],
    });
    centre.publish_to(&id, "desired", payload, false).await;
    centre
        .wait_until(PATIENCE, "generation 3 rejected in status", |state| {
            state.statuses.iter().any(|(from, status)| {
                from == &id
                    && status.rejected_generation == Some(3)
                    && status
                        .rejected_reason
                        .as_deref()
                        .is_some_and(|reason| reason.contains("image"))
                    && status.generation == 2
            })
        })
        .await;
    assert_eq!(
        running_app(&id).map(|(container, _)| container),
        Some(switched.clone()),
        "the rejected state touched the running app"
    );

    // Drift: the container removed by hand comes back.
    podman::remove_labelled("io.tollway.node", &id);
    let repaired = wait_for_image(&id, &new).await;
    assert_ne!(repaired, switched, "the removed container is still there");

    // Reboot without network: the daemon stops, the broker is gone, the
    // container is removed, and the daemon started again runs the
    // persisted desired state by itself.
    let exit = node.stop();
    assert!(exit.success(), "tollway-edge exited with {exit}");
    drop(centre);
    drop(broker);
    podman::remove_labelled("io.tollway.node", &id);
    node.start();
    let rebooted = wait_for_image(&id, &new).await;
    assert_ne!(rebooted, repaired);

    let exit = node.stop();
    assert!(
        exit.success(),
        "tollway-edge exited with {exit}\n{}",
        node.log()
    );
}
