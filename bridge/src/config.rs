//! The bridge's configuration file: serde types with documented defaults,
//! and the cross-key checks that serde cannot express.
//!
//! The bridge connects to two brokers. `[local]` is the provincial broker's
//! service listener (plain TCP on loopback, username and password).
//! `[remote]` is the national broker (TLS, username and password), reached
//! through an ordered list of addresses such as a private line, a proxy and
//! the public network.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tollway_runtime::BackoffConfig;
use tollway_runtime::config::{ConfigError, Problems};
use tollway_topics::Province;
use tollway_topics::limits::MAX_PACKET_BYTES;

use crate::rules::{Rule, RuleSet};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Two-digit province code (e.g. 44). Required: it names the default
    /// rules and the bridge-state topic.
    pub province: Province,

    /// MQTT client id on both brokers. Default: `tollway-bridge-{province}`.
    /// Sessions are persistent (clean session off), so the id must stay the
    /// same across restarts and be unique per province.
    #[serde(default)]
    pub client_id: Option<String>,

    /// The provincial broker's service listener.
    pub local: LocalBroker,

    /// The national broker.
    pub remote: RemoteBroker,

    /// Forwarding rules. Without this key the defaults for the province are
    /// used (see `rules.rs`); with it, exactly the listed rules are used.
    #[serde(default)]
    pub rules: Option<Vec<Rule>>,

    /// Reconnect delays for both sessions. Default: base 1000 ms, cap 60000 ms.
    #[serde(default = "default_backoff")]
    pub backoff: BackoffConfig,

    /// Bandwidth cap toward the national broker.
    #[serde(default)]
    pub bandwidth: BandwidthConfig,

    /// Queue bounds.
    #[serde(default)]
    pub queues: QueueConfig,

    /// Prometheus text endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,

    /// Seconds to wait for the sessions to stop after SIGINT or SIGTERM.
    /// Default: 5.
    #[serde(default = "default_shutdown_deadline_s")]
    pub shutdown_deadline_s: u64,
}

/// The provincial broker's service listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalBroker {
    /// `host:port` of the service listener. Default: `127.0.0.1:1883`.
    #[serde(default = "default_local_address")]
    pub address: String,
    /// Username in the broker's service password file. Required.
    pub username: String,
    /// File whose first line is the password. Required. Keep it mode 0600.
    pub password_file: PathBuf,
    /// MQTT keep-alive in seconds. Default: 30.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// Seconds to wait for a CONNACK before the attempt counts as failed.
    /// Default: 10.
    #[serde(default = "default_connect_timeout_s")]
    pub connect_timeout_s: u64,
}

/// The national broker, reached over TLS with username and password.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteBroker {
    /// `host:port` addresses tried in order (for example private line,
    /// proxy, public network). After a failure the bridge tries the next
    /// one; after every address failed it waits a back-off delay and starts
    /// over from the first. Required, at least one.
    pub addresses: Vec<String>,
    /// PEM file with the CA certificates that sign the national broker's
    /// server certificate. Required. The host part of each address must
    /// match the certificate (DNS name or IP address).
    pub ca_file: PathBuf,
    /// Username in the national broker's password file. Required.
    pub username: String,
    /// File whose first line is the password. Required. Keep it mode 0600.
    pub password_file: PathBuf,
    /// MQTT keep-alive in seconds. Default: 30.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// Seconds to wait for TCP, TLS and CONNACK on one address before
    /// trying the next. Default: 10.
    #[serde(default = "default_connect_timeout_s")]
    pub connect_timeout_s: u64,
}

/// The token bucket that caps traffic toward the national broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BandwidthConfig {
    /// Average rate of MQTT bytes sent to the national broker, in bytes per
    /// second; 0 turns the cap off. TLS, TCP and IP headers are not counted,
    /// so set it a few percent below the link's rate. Default: 0.
    pub up_bytes_per_second: u64,
    /// Bytes that may be sent at once after an idle period. Default: 16384.
    pub burst_bytes: u64,
}

impl Default for BandwidthConfig {
    fn default() -> Self {
        BandwidthConfig {
            up_bytes_per_second: 0,
            burst_bytes: 16 * 1024,
        }
    }
}

/// Bounds of the bridge's queues.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Messages each lane (control, bulk) of each direction holds. When a
    /// lane is full, the session that reads the source stops reading until
    /// the lane has room; nothing is dropped. Default: 1000.
    pub lane_capacity: usize,
    /// Messages published to a destination and not yet acknowledged by it.
    /// Once reached, the bridge waits for PUBACKs before sending more.
    /// Default: 32.
    pub max_inflight: u16,
    /// Largest MQTT packet accepted from or sent to either broker, in
    /// bytes; a larger packet ends the connection. Default: the wire
    /// contract's `MAX_PACKET_BYTES` (1 MiB).
    ///
    /// NOTE: keep it at least as large as both brokers' own packet limit.
    /// A source broker redelivers an unacknowledged message after every
    /// reconnect, so one message above this limit would end the session's
    /// connection again and again.
    pub max_packet_bytes: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            lane_capacity: 1000,
            max_inflight: 32,
            max_packet_bytes: MAX_PACKET_BYTES,
        }
    }
}

/// The Prometheus text endpoint (`GET /metrics`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Whether the endpoint is served. Default: true.
    pub enabled: bool,
    /// Address and port to bind. Default: `127.0.0.1:9465`.
    pub bind: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 9465)),
        }
    }
}

fn default_backoff() -> BackoffConfig {
    BackoffConfig {
        base_ms: 1000,
        cap_ms: 60_000,
    }
}

fn default_local_address() -> String {
    "127.0.0.1:1883".to_string()
}

fn default_keep_alive_s() -> u64 {
    30
}

fn default_connect_timeout_s() -> u64 {
    10
}

fn default_shutdown_deadline_s() -> u64 {
    5
}

impl Config {
    /// Returns the MQTT client id used on both brokers.
    pub fn client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("tollway-bridge-{}", self.province))
    }

    /// Returns the rule set: the configured rules, or the province's defaults.
    pub fn rule_set(&self) -> RuleSet {
        match &self.rules {
            Some(rules) => RuleSet::new(rules.clone()),
            None => RuleSet::defaults(self.province),
        }
    }

    /// Checks what serde cannot: addresses, limits, files and the rule set
    /// (including up and down rules that overlap). Every problem is
    /// reported in one error.
    pub fn validate(&self, path: Option<&Path>) -> Result<(), ConfigError> {
        let mut problems = Problems::default();

        check_address(&mut problems, "local.address", &self.local.address);
        check_password_file(
            &mut problems,
            "local.password_file",
            &self.local.password_file,
        );
        if self.remote.addresses.is_empty() {
            problems.push(
                "remote.addresses",
                "[]",
                "list at least one host:port of the national broker",
            );
        }
        for (index, address) in self.remote.addresses.iter().enumerate() {
            check_address(
                &mut problems,
                &format!("remote.addresses[{index}]"),
                address,
            );
        }
        check_file(&mut problems, "remote.ca_file", &self.remote.ca_file);
        check_password_file(
            &mut problems,
            "remote.password_file",
            &self.remote.password_file,
        );
        for (key, value) in [
            ("local.keep_alive_s", self.local.keep_alive_s),
            ("local.connect_timeout_s", self.local.connect_timeout_s),
            ("remote.keep_alive_s", self.remote.keep_alive_s),
            ("remote.connect_timeout_s", self.remote.connect_timeout_s),
        ] {
            if value == 0 || value > 65_535 {
                problems.push(key, value, "must be between 1 and 65535 seconds");
            }
        }

        self.backoff.check(&mut problems, "backoff");
        if self.bandwidth.up_bytes_per_second > 0 && self.bandwidth.burst_bytes == 0 {
            problems.push(
                "bandwidth.burst_bytes",
                0,
                "must be at least 1 while up_bytes_per_second is above 0",
            );
        }
        if self.queues.lane_capacity == 0 {
            problems.push("queues.lane_capacity", 0, "must be at least 1");
        }
        if self.queues.max_inflight == 0 {
            problems.push("queues.max_inflight", 0, "must be at least 1");
        }
        if self.queues.max_packet_bytes < 1024 || self.queues.max_packet_bytes > MAX_PACKET_BYTES {
            problems.push(
                "queues.max_packet_bytes",
                self.queues.max_packet_bytes,
                &format!("must be between 1024 and MAX_PACKET_BYTES ({MAX_PACKET_BYTES})"),
            );
        }
        if self.metrics.enabled && self.metrics.bind.port() == 0 {
            problems.push(
                "metrics.bind",
                self.metrics.bind,
                "choose a fixed port so that Prometheus can find it",
            );
        }

        self.rule_set().check(&mut problems);
        problems.into_result(path)
    }
}

/// Checks that `address` is `host:port` with a valid port. The host is
/// resolved only at connect time, so a DNS name that does not resolve yet
/// is not an error here.
fn check_address(problems: &mut Problems, key: &str, address: &str) {
    let valid = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid {
        problems.push(key, address, "expected host:port, e.g. 10.0.0.5:8883");
    }
}

fn check_file(problems: &mut Problems, key: &str, path: &Path) {
    if !path.is_file() {
        problems.push(key, path.display(), "file not found or not a regular file");
    }
}

/// Checks that `path` exists and contains a password on its first line, so
/// that `--check` and start-up report an empty file with the rest.
fn check_password_file(problems: &mut Problems, key: &str, path: &Path) {
    if !path.is_file() {
        check_file(problems, key, path);
    } else if let Err(message) = read_password(path) {
        problems.push(key, path.display(), &message);
    }
}

/// Reads a password file: the first line, without its line ending.
pub fn read_password(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read password file {}: {err}", path.display()))?;
    let password = text.lines().next().unwrap_or("").to_string();
    if password.trim().is_empty() {
        return Err(format!(
            "password file {} has no password on its first line (empty or only spaces); write the password there",
            path.display()
        ));
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollway_runtime::config::parse_config;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_config(text, Path::new("bridge.toml"))
    }

    const MINIMAL: &str = r#"
province = 44
[local]
username = "bridge"
password_file = "/nonexistent/local"
[remote]
addresses = ["national.example:8883"]
ca_file = "/nonexistent/ca.crt"
username = "bridge-44"
password_file = "/nonexistent/remote"
"#;

    #[test]
    fn unknown_key_is_rejected() {
        let err = parse(&format!("{MINIMAL}\nbandwith = 1")).unwrap_err();
        assert!(err.to_string().contains("bandwith"), "{err}");
    }

    #[test]
    fn defaults_apply() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.client_id(), "tollway-bridge-44");
        assert_eq!(config.backoff.base_ms, 1000);
        assert_eq!(config.backoff.cap_ms, 60_000);
        assert_eq!(config.bandwidth.up_bytes_per_second, 0);
        assert_eq!(config.local.address, "127.0.0.1:1883");
        assert!(config.rules.is_none());
    }

    #[test]
    fn problems_are_reported_together() {
        let text = MINIMAL.replace("national.example:8883", "no-port");
        let config = parse(&format!("{text}\n[queues]\nlane_capacity = 0\n")).unwrap();
        let err = config.validate(None).unwrap_err().to_string();
        assert!(err.contains("remote.addresses[0] = no-port"), "{err}");
        assert!(err.contains("queues.lane_capacity"), "{err}");
        assert!(err.contains("local.password_file"), "{err}");
        assert!(err.contains("remote.ca_file"), "{err}");
    }

    #[test]
    fn overlapping_rules_are_rejected() {
        let text = format!(
            "{MINIMAL}\n\
             [[rules]]\ndirection = \"up\"\nfilter = \"tollway/v1/44/node/+/status\"\n\
             [[rules]]\ndirection = \"down\"\nfilter = \"tollway/v1/44/node/#\"\n"
        );
        let config = parse(&text).unwrap();
        let err = config.validate(None).unwrap_err().to_string();
        assert!(err.contains("tollway/v1/44/node/#"), "{err}");
        assert!(err.contains("overlaps"), "{err}");
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../deploy/examples/bridge.toml");
        let config = parse(text).unwrap();
        assert_eq!(config.province.code(), 44);
        assert_eq!(config.remote.addresses.len(), 3);
        assert_eq!(config.bandwidth.up_bytes_per_second, 350_000);
        // Only the files are missing on a build machine.
        let err = config.validate(None).unwrap_err().to_string();
        for line in err.lines().skip(1) {
            assert!(line.contains("_file"), "{err}");
        }
    }

    #[test]
    fn password_file_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(read_password(&path).unwrap(), "s3cret");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_password(&path).unwrap_err().contains("empty"));
    }
}
