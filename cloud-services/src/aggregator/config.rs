//! The `[aggregator]` section of `tollway-center`'s configuration.

use std::net::SocketAddr;

use serde::Deserialize;

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

fn default_api_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8471))
}
fn default_stale_after_s() -> u64 {
    180
}
