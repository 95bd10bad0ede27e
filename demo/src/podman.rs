//! Removal of the demo's app containers through the `podman` command line.
//! The edge daemons leave their apps running when they stop, as they should
//! on a real node, so the demo removes them itself, by node label.
//!
//! `podman --url` talks to the same API service as the daemons, so the
//! service's containers.conf applies.

use std::path::Path;
use std::process::Command;

/// The label every edge daemon puts on its containers, with the node id.
const NODE_LABEL: &str = "io.tollway.node";

/// Removes every container of `node`, running or not; returns how many were
/// removed. A failure is logged and counted as not removed.
pub fn remove_node_containers(socket: &Path, node: &str) -> usize {
    let url = format!("unix://{}", socket.display());
    let filter = format!("label={NODE_LABEL}={node}");
    let listed = Command::new("podman")
        .args([
            "--url",
            &url,
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &filter,
        ])
        .output();
    let ids: Vec<String> = match listed {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        Ok(output) => {
            tracing::warn!(node, error = %String::from_utf8_lossy(&output.stderr).trim(), "podman ps failed");
            return 0;
        }
        Err(err) => {
            tracing::warn!(node, error = %err, "cannot run podman");
            return 0;
        }
    };

    let mut removed = 0;
    for id in ids {
        match Command::new("podman")
            .args(["--url", &url, "rm", "-f", "-t", "0", &id])
            .output()
        {
            Ok(output) if output.status.success() => removed += 1,
            Ok(output) => {
                tracing::warn!(node, container = %id, error = %String::from_utf8_lossy(&output.stderr).trim(), "podman rm failed");
            }
            Err(err) => tracing::warn!(node, container = %id, error = %err, "cannot run podman"),
        }
    }
    removed
}
