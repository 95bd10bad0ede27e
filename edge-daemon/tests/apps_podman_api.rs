//! Pins how `podman-api` 0.11 reads the responses of the Podman on this
//! host (4.3.1 when written) for the calls the app manager makes, and that
//! the raw-JSON fallback reads the container list the same way.
//!
//! With Podman 4.3.1, every call the manager makes decoded. The raw
//! fallback covers the container list, which every reconcile pass needs.
//! If a Podman or crate upgrade breaks a decode, the matching assertion
//! here fails and names the call.

use podman_api::Podman;
use podman_api::opts::{ContainerListFilter, ContainerListOpts};
use tollway_edge::apps::{NODE, PodmanClient, RunState, is_decode_error, parse_raw_list};
use tollway_testkit::podman;
use tollway_topics::NodeId;

#[tokio::test]
async fn podman_api_decodes_podman_responses() {
    let image = podman::toll_app_image("1.0.0");
    let node = NodeId::new(format!("t-pin-{}", std::process::id())).unwrap();
    let labels = [
        "--label".to_string(),
        "io.tollway.managed-by=tollway".to_string(),
        "--label".to_string(),
        format!("{NODE}={node}"),
        "--label".to_string(),
        "io.tollway.app=toll-app".to_string(),
        "--label".to_string(),
        "io.tollway.spec-hash=0000000000000000".to_string(),
    ];
    let mut args: Vec<&str> = vec!["run", "-d", "--network", "host"];
    args.extend(labels.iter().map(String::as_str));
    args.push(&image);
    let running = podman::podman(&args);
    let mut args: Vec<&str> = vec!["run", "--network", "host"];
    args.extend(labels.iter().map(String::as_str));
    args.extend([&image as &str, "--rate", "0"]);
    // Exits at once with status 2 (invalid rate): an exited container.
    let _ = std::process::Command::new("podman").args(&args).output();

    let api = Podman::unix(podman::socket());
    let opts = ContainerListOpts::builder()
        .all(true)
        .filter([ContainerListFilter::LabelKeyVal(
            NODE.to_string(),
            node.to_string(),
        )])
        .build();
    let listed = api.containers().list(&opts).await;
    if let Err(err) = &listed {
        assert!(
            !is_decode_error(err),
            "podman-api cannot decode the container list: {err}"
        );
    }
    let listed = listed.expect("container list");
    assert_eq!(listed.len(), 2, "listed: {listed:?}");

    let inspected = api.containers().get(&running).inspect().await;
    assert!(
        inspected.is_ok(),
        "podman-api cannot decode inspect: {:?}",
        inspected.err()
    );
    let exists = api.images().get(&image).exists().await;
    assert!(matches!(exists, Ok(true)), "image exists: {exists:?}");

    // The wrapper and the raw fallback read the same containers and states.
    let client = PodmanClient::new(&podman::socket(), std::time::Duration::from_secs(30));
    let mut through_api = client.list_owned(&node).await.expect("wrapper lists");
    through_api.sort_by(|a, b| a.id.cmp(&b.id));
    let raw_json = raw_list(&node);
    let mut through_raw = parse_raw_list(&node, &raw_json);
    through_raw.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(through_api, through_raw);
    assert!(
        through_api
            .iter()
            .any(|c| c.id == running && c.state == RunState::Running)
    );
    assert!(
        through_api.iter().any(|c| c.state == RunState::Exited(2)),
        "no container exited with 2: {through_api:?}"
    );

    podman::remove_labelled(NODE, node.as_str());
}

/// Reads the libpod container list with curl, as raw JSON.
fn raw_list(node: &NodeId) -> serde_json::Value {
    let socket = podman::socket();
    let output = std::process::Command::new("curl")
        .args([
            "-sf",
            "--unix-socket",
            &socket.display().to_string(),
            "-G",
            "http://d/v4.0.0/libpod/containers/json",
            "--data-urlencode",
            "all=true",
            "--data-urlencode",
            &format!("filters={{\"label\":[\"{NODE}={node}\"]}}"),
        ])
        .output()
        .expect("curl runs");
    assert!(output.status.success(), "curl failed: {output:?}");
    serde_json::from_slice(&output.stdout).expect("list is JSON")
}
