//! Intake settings: where it listens and the bounds on connections, packets
//! and records in flight, each with what happens when it is reached.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tollway_runtime::BackoffConfig;
use tollway_topics::limits::MAX_SMALL_MESSAGE_BYTES;

/// The topic apps publish toll records to, one CBOR `TollRecord` per message.
pub const INTAKE_TOPIC: &str = tollway_topics::LOCAL_RECORDS_TOPIC;

/// Largest packet size a configuration may set, in bytes.
pub const MAX_PACKET_BYTES_LIMIT: usize = 1024 * 1024;

/// The intake section of the daemon's configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeConfig {
    /// Address to listen on; it must be a loopback address, because the
    /// intake has no authentication. Default 127.0.0.1:1884.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,

    /// Open connections at most. A connection beyond it is closed right
    /// after it is accepted, before any MQTT packet. Default 64.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,

    /// Largest MQTT packet accepted, in bytes of remaining length (topic,
    /// packet id and payload). A larger packet closes the connection.
    /// Default: one maximum-size toll record plus 512 bytes.
    #[serde(default = "default_max_packet_bytes")]
    pub max_packet_bytes: usize,

    /// Records per connection that are received but not yet durable (or
    /// held by back-pressure). When reached, the intake stops reading that
    /// connection until the oldest settles. Set it above the apps' own
    /// in-flight window (rumqttc 100, Mosquitto clients 20 by default), so
    /// their PINGREQs are still read during back-pressure. Default 128.
    /// Together with `max_connections` it bounds the records held in memory:
    /// at the defaults, at most 64 × 128 records of up to 16 KiB (128 MiB)
    /// in the worst case, and about 1.2 MB with typical 150-byte records.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: usize,

    /// Time a new connection has to send CONNECT, in milliseconds; then it
    /// is closed. Default 5000.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,

    /// Delay between retries of a record rejected by the outbox's disk cap.
    /// Default 100 ms rising to 5 s.
    #[serde(default = "default_backpressure_retry")]
    pub backpressure_retry: BackoffConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1884))
}

fn default_max_connections() -> usize {
    64
}

fn default_max_packet_bytes() -> usize {
    MAX_SMALL_MESSAGE_BYTES + 512
}

fn default_max_inflight() -> usize {
    128
}

fn default_connect_timeout_ms() -> u64 {
    5000
}

fn default_backpressure_retry() -> BackoffConfig {
    BackoffConfig::new(Duration::from_millis(100), Duration::from_secs(5))
}

impl Default for IntakeConfig {
    fn default() -> Self {
        IntakeConfig {
            listen: default_listen(),
            max_connections: default_max_connections(),
            max_packet_bytes: default_max_packet_bytes(),
            max_inflight: default_max_inflight(),
            connect_timeout_ms: default_connect_timeout_ms(),
            backpressure_retry: default_backpressure_retry(),
        }
    }
}

impl IntakeConfig {
    /// Lists every setting that is out of range, so one run reports them all.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.listen.ip().is_loopback() {
            problems.push(format!(
                "listen ({}) must be a loopback address such as 127.0.0.1, because the intake has no authentication",
                self.listen
            ));
        }
        if self.max_connections == 0 {
            problems.push("max_connections must be at least 1".to_string());
        }
        if self.max_packet_bytes < 256 || self.max_packet_bytes > MAX_PACKET_BYTES_LIMIT {
            problems.push(format!(
                "max_packet_bytes ({}) must be 256 to {MAX_PACKET_BYTES_LIMIT}",
                self.max_packet_bytes
            ));
        }
        if self.max_inflight == 0 {
            problems.push("max_inflight must be at least 1".to_string());
        }
        if self.connect_timeout_ms == 0 {
            problems.push("connect_timeout_ms must be at least 1".to_string());
        }
        if let Some(problem) = self.backpressure_retry.problem() {
            problems.push(format!("backpressure_retry: {problem}"));
        }
        problems
    }
}
