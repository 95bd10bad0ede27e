//! The `[controller]` section of `tollway-center`'s configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use tollway_runtime::config::Problems;
use tollway_topics::Province;

use crate::mqtt_link::BrokerConfig;

/// Settings of the provincial controller.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// The province's two-digit code, e.g. 44.
    pub province: u8,
    /// RocksDB directory for the node inventory, deployments, placement and
    /// generations.
    pub data_dir: PathBuf,
    /// Seconds a node may stay offline before its replica instances move
    /// to other nodes; per-node instances never move. Default 600.
    #[serde(default = "default_grace_period_s")]
    pub grace_period_s: u64,
    /// Seconds a node may stay offline before the controller forgets it:
    /// it leaves the inventory and the store, and its retained presence
    /// and desired state are cleared from the broker. A node that returns
    /// later joins as a new node. 0 never forgets. Default 2,592,000
    /// (30 days).
    #[serde(default = "default_forget_after_s")]
    pub forget_after_s: u64,
    /// Seconds between province status messages on `center/status`.
    /// Default 60.
    #[serde(default = "default_status_interval_s")]
    pub status_interval_s: u64,
    /// Loopback address of the read-only HTTP API that `tollwayctl get` and
    /// `describe` use. Default `127.0.0.1:8470`.
    #[serde(default = "default_api_bind")]
    pub api_bind: SocketAddr,
    /// Maximum nodes in the inventory; presence or status from further
    /// nodes is logged and ignored. Default 20,000.
    #[serde(default = "default_max_nodes")]
    pub max_nodes: usize,
    /// Maximum deployments; further deployments are rejected with an event.
    /// Default 256.
    #[serde(default = "default_max_deployments")]
    pub max_deployments: usize,
    pub broker: BrokerConfig,
}

fn default_grace_period_s() -> u64 {
    600
}
fn default_forget_after_s() -> u64 {
    30 * 24 * 3600
}
fn default_status_interval_s() -> u64 {
    60
}
fn default_api_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8470))
}
fn default_max_nodes() -> usize {
    20_000
}
fn default_max_deployments() -> usize {
    256
}

impl ControllerConfig {
    /// Records every problem with the settings, each naming its key.
    pub fn check(&self, problems: &mut Problems) {
        if let Err(err) = Province::new(self.province) {
            problems.push("controller.province", self.province, &err.to_string());
        }
        if !self.api_bind.ip().is_loopback() {
            problems.push(
                "controller.api_bind",
                self.api_bind,
                "must be a loopback address; the controller API has no authentication",
            );
        }
        if self.status_interval_s == 0 {
            problems.push("controller.status_interval_s", 0, "must be at least 1");
        }
        if self.forget_after_s != 0 && self.forget_after_s < self.grace_period_s {
            problems.push(
                "controller.forget_after_s",
                self.forget_after_s,
                &format!(
                    "is shorter than controller.grace_period_s ({}); set it to 0 (never) or at least the grace period",
                    self.grace_period_s
                ),
            );
        }
        if self.max_nodes == 0 {
            problems.push("controller.max_nodes", 0, "must be at least 1");
        }
        if self.max_deployments == 0 {
            problems.push("controller.max_deployments", 0, "must be at least 1");
        }
        self.broker
            .backoff
            .check(problems, "controller.broker.backoff");
    }
}
