//! The `[aggregator]` section of `tollway-center`'s configuration.

use std::net::SocketAddr;

use serde::Deserialize;
use tollway_runtime::config::Problems;

use crate::mqtt_link::BrokerConfig;

/// Settings of the national fleet aggregator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorConfig {
    /// Loopback address of the HTTP API that `tollwayctl fleet` reads.
    /// Default `127.0.0.1:8471`.
    #[serde(default = "default_api_bind")]
    pub api_bind: SocketAddr,
    /// Seconds after which a province's last status counts as stale (its
    /// bridge or controller is silent). Default 180, three status intervals
    /// at the controller's default.
    #[serde(default = "default_stale_after_s")]
    pub stale_after_s: u64,
    /// The national broker.
    pub broker: BrokerConfig,
}

impl AggregatorConfig {
    /// Records every problem with the settings, each naming its key.
    pub fn check(&self, problems: &mut Problems) {
        if !self.api_bind.ip().is_loopback() {
            problems.push(
                "aggregator.api_bind",
                self.api_bind,
                "must be a loopback address; the aggregator API has no authentication",
            );
        }
        if self.stale_after_s == 0 {
            problems.push("aggregator.stale_after_s", 0, "must be at least 1");
        }
        self.broker
            .backoff
            .check(problems, "aggregator.broker.backoff");
    }
}

fn default_api_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8471))
}
fn default_stale_after_s() -> u64 {
    180
}
