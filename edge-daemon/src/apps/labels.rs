//! The labels that mark a container as one of this node's apps, and the
//! spec hash that shows whether a container still matches its app's spec.
//!
//! Several daemons can share one Podman host (in tests and the demo), so
//! every container the daemon creates carries the managed-by label and its
//! node id, and the daemon lists, stops and removes only containers that
//! carry both. Containers without them are never touched.

use std::collections::HashMap;

use tollway_topics::{AppSpec, Message, NodeId};

use super::config::NetworkMode;

/// Marks a container as created by a Tollway edge daemon.
pub const MANAGED_BY: &str = "io.tollway.managed-by";
/// Value of [`MANAGED_BY`].
pub const MANAGED_BY_VALUE: &str = "tollway";
/// The node whose daemon owns the container.
pub const NODE: &str = "io.tollway.node";
/// The app the container runs.
pub const APP: &str = "io.tollway.app";
/// Hash of the spec the container was created from; see [`spec_hash`].
pub const SPEC_HASH: &str = "io.tollway.spec-hash";

/// Returns the labels of a new container of `app` on `node`.
pub fn container_labels(node: &NodeId, app: &str, hash: &str) -> HashMap<String, String> {
    HashMap::from([
        (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
        (NODE.to_string(), node.to_string()),
        (APP.to_string(), app.to_string()),
        (SPEC_HASH.to_string(), hash.to_string()),
    ])
}

/// Reports whether a container's labels mark it as `node`'s.
pub fn owned_by(labels: &HashMap<String, String>, node: &NodeId) -> bool {
    labels.get(MANAGED_BY).map(String::as_str) == Some(MANAGED_BY_VALUE)
        && labels.get(NODE).map(String::as_str) == Some(node.as_str())
        && labels.contains_key(APP)
        && labels.contains_key(SPEC_HASH)
}

/// Returns the hash of everything that decides how an app's container is
/// created: the spec without `next_image` (prefetching must not recreate
/// the container) and the node's network mode. 16 hex digits of 64-bit
/// FNV-1a over the spec's deterministic CBOR encoding; it detects change,
/// it is not a security boundary.
pub fn spec_hash(spec: &AppSpec, network: NetworkMode) -> String {
    let mut relevant = spec.clone();
    relevant.next_image = None;
    let mut bytes = match relevant.to_cbor() {
        Ok(bytes) => bytes,
        // A spec that passed validation always encodes; the debug form is a
        // stable stand-in should that ever change.
        Err(_) => format!("{relevant:?}").into_bytes(),
    };
    bytes.extend_from_slice(network.as_str().as_bytes());
    format!("{:016x}", fnv1a(&bytes))
}

/// Returns the container name of `app` on `node` with spec hash `hash`. The
/// hash is part of the name so that the container of a new spec can be
/// created while the old one still runs.
pub fn container_name(node: &NodeId, app: &str, hash: &str) -> String {
    format!("tollway-{node}-{app}-{}", &hash[..hash.len().min(8)])
}

fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use tollway_topics::samples;

    use super::*;

    #[test]
    fn hash_ignores_next_image() {
        let spec = samples::app_spec();
        let mut prefetching = spec.clone();
        prefetching.next_image = Some("localhost/tollway/toll-app:9.9.9".to_string());
        assert_eq!(
            spec_hash(&spec, NetworkMode::Host),
            spec_hash(&prefetching, NetworkMode::Host)
        );
    }

    #[test]
    fn hash_follows_image_and_network() {
        let spec = samples::app_spec();
        let mut upgraded = spec.clone();
        upgraded.image = "localhost/tollway/toll-app:1.5.0".to_string();
        assert_ne!(
            spec_hash(&spec, NetworkMode::Host),
            spec_hash(&upgraded, NetworkMode::Host)
        );
        assert_ne!(
            spec_hash(&spec, NetworkMode::Host),
            spec_hash(&spec, NetworkMode::Bridge)
        );
    }

    #[test]
    fn ownership_needs_node_and_marker() {
        let node = samples::node();
        let labels = container_labels(&node, "toll-app", "0011223344556677");
        assert!(owned_by(&labels, &node));

        let other = NodeId::new("G0015-4401-0099").unwrap();
        assert!(!owned_by(&labels, &other));

        let mut unmarked = labels.clone();
        unmarked.remove(MANAGED_BY);
        assert!(!owned_by(&unmarked, &node));
    }
}
