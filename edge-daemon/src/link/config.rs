//! Settings of the MQTT link to the provincial broker: endpoints in order of
//! preference, the node's TLS files, keep-alive and reconnect policy.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tollway_runtime::BackoffConfig;

/// The `link` section of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// Broker endpoints in order of preference (private line, proxy, public
    /// network). The link starts with the first and moves to the next after
    /// `failures_before_next_endpoint` failed attempts in a row.
    pub endpoints: Vec<Endpoint>,
    /// PEM file of the CA that signed the brokers' certificates.
    pub ca_file: PathBuf,
    /// PEM file of the node's client certificate (CN = node id).
    pub cert_file: PathBuf,
    /// PEM file of the node's private key.
    pub key_file: PathBuf,

    /// MQTT keep-alive, in seconds. Each interval without traffic costs one
    /// PINGREQ and PINGRESP. Default 120; the broker drops the connection
    /// after 1.5 × this without a packet.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// Delay between connection attempts: decorrelated jitter from 1 s up
    /// to 120 s by default, reset after each successful CONNACK.
    #[serde(default = "default_reconnect")]
    pub reconnect: BackoffConfig,
    /// Failed attempts in a row before moving to the next endpoint (after
    /// the last, back to the first). Default 3.
    #[serde(default = "default_failures_before_next_endpoint")]
    pub failures_before_next_endpoint: u32,
    /// Connection errors in a row before the MQTT client and its event loop
    /// are discarded and built again. A rebuilt client forgets rumqttc's
    /// queued publishes, which the uplink resends from the outbox. Default 3.
    #[serde(default = "default_errors_before_rebuild")]
    pub errors_before_rebuild: u32,
    /// Time one connection attempt (TCP, TLS and CONNACK) may take, in
    /// seconds. Default 10.
    #[serde(default = "default_connect_timeout_s")]
    pub connect_timeout_s: u64,
    /// Requests (publishes, subscribes) queued for the MQTT client at most.
    /// A publish beyond it is refused at once and retried by its sender.
    /// Default 64.
    #[serde(default = "default_request_capacity")]
    pub request_capacity: usize,
}

/// One broker address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// A name for logs, e.g. `private` or `public`.
    pub name: String,
    /// Host name or IP address; also the name checked against the broker's
    /// certificate.
    pub host: String,
    /// TCP port of the broker's node listener (mutual TLS).
    pub port: u16,
}

fn default_keep_alive_s() -> u64 {
    120
}

fn default_reconnect() -> BackoffConfig {
    BackoffConfig::new(Duration::from_secs(1), Duration::from_secs(120))
}

fn default_failures_before_next_endpoint() -> u32 {
    3
}

fn default_errors_before_rebuild() -> u32 {
    3
}

fn default_connect_timeout_s() -> u64 {
    10
}

fn default_request_capacity() -> usize {
    64
}

impl LinkConfig {
    /// Settings with every default for the given endpoints and TLS files.
    pub fn new(
        endpoints: Vec<Endpoint>,
        ca_file: PathBuf,
        cert_file: PathBuf,
        key_file: PathBuf,
    ) -> Self {
        LinkConfig {
            endpoints,
            ca_file,
            cert_file,
            key_file,
            keep_alive_s: default_keep_alive_s(),
            reconnect: default_reconnect(),
            failures_before_next_endpoint: default_failures_before_next_endpoint(),
            errors_before_rebuild: default_errors_before_rebuild(),
            connect_timeout_s: default_connect_timeout_s(),
            request_capacity: default_request_capacity(),
        }
    }

    /// Lists every setting that is out of range, each starting with its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.endpoints.is_empty() {
            problems.push("endpoints must list at least one broker".to_string());
        }
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            if endpoint.host.is_empty() {
                problems.push(format!("endpoints[{index}].host must not be empty"));
            }
            if endpoint.port == 0 {
                problems.push(format!("endpoints[{index}].port must be 1 to 65535"));
            }
        }
        // MQTT carries keep-alive as 16 bits of seconds; 0 would turn it off
        // and leave a dead connection unnoticed.
        if !(1..=u64::from(u16::MAX)).contains(&self.keep_alive_s) {
            problems.push(format!(
                "keep_alive_s ({}) must be 1 to 65535",
                self.keep_alive_s
            ));
        }
        if let Some(problem) = self.reconnect.problem() {
            problems.push(format!("reconnect.{problem}"));
        }
        if self.failures_before_next_endpoint == 0 {
            problems.push("failures_before_next_endpoint must be at least 1".to_string());
        }
        if self.errors_before_rebuild == 0 {
            problems.push("errors_before_rebuild must be at least 1".to_string());
        }
        if self.connect_timeout_s == 0 {
            problems.push("connect_timeout_s must be at least 1".to_string());
        }
        if self.request_capacity == 0 {
            problems.push("request_capacity must be at least 1".to_string());
        }
        problems
    }
}
