//! Podman for integration tests: the API socket from the environment, the
//! toll app's local image built once per test process through
//! `scripts/build-toll-image`, and container inspection and clean-up
//! through the `podman` command line.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// Returns the socket of Podman's REST API from `TOLLWAY_PODMAN_SOCKET`,
/// which `scripts/podman-service start` prints.
pub fn socket() -> PathBuf {
    let socket = std::env::var_os("TOLLWAY_PODMAN_SOCKET").expect(
        "TOLLWAY_PODMAN_SOCKET is not set; run `export TOLLWAY_PODMAN_SOCKET=$(scripts/podman-service start)`",
    );
    PathBuf::from(socket)
}

/// Directory of the workspace, where `scripts/` lives.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in the workspace")
        .to_path_buf()
}

/// Versions already built by this process.
static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Returns `localhost/tollway/toll-app:VERSION`, building it through the
/// script when it is missing. Tests run in parallel processes and the
/// script compiles, so an existing image is used as it is. `scripts/test`
/// rebuilds the images from the current source before the tests.
pub fn toll_app_image(version: &str) -> String {
    let image = format!("localhost/tollway/toll-app:{version}");
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if built.iter().any(|done| done == version) {
        return image;
    }
    let exists = podman_env(Command::new("podman"))
        .args(["image", "exists", &image])
        .status()
        .is_ok_and(|status| status.success());
    if exists {
        built.push(version.to_string());
        return image;
    }
    let output = podman_env(Command::new(
        workspace_root().join("scripts/build-toll-image"),
    ))
    .arg(version)
    .output()
    .expect("scripts/build-toll-image runs");
    assert!(
        output.status.success(),
        "scripts/build-toll-image {version} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    built.push(version.to_string());
    image
}

/// Runs `podman ARGS` and returns its standard output, trimmed; panics with
/// its standard error when it fails.
pub fn podman(args: &[&str]) -> String {
    let output = podman_env(Command::new("podman"))
        .args(args)
        .output()
        .expect("podman runs");
    assert!(
        output.status.success(),
        "podman {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Ids of every container, running or not, with the label `key=value`.
pub fn containers_labelled(key: &str, value: &str) -> Vec<String> {
    let filter = format!("label={key}={value}");
    podman(&["ps", "-aq", "--no-trunc", "--filter", &filter])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Removes every container with the label `key=value`, ignoring failures.
pub fn remove_labelled(key: &str, value: &str) {
    for id in containers_labelled(key, value) {
        let _ = podman_env(Command::new("podman"))
            .args(["rm", "-f", "-t", "0", &id])
            .output();
    }
}

/// Runs `command` with the project's containers.conf, as the API service does.
fn podman_env(mut command: Command) -> Command {
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        command.env(
            "CONTAINERS_CONF",
            workspace_root().join("deploy/podman/containers.conf"),
        );
    }
    command
}
