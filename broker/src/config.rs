//! The broker's configuration file: serde types with documented defaults,
//! and the cross-key checks that serde cannot express.
//!
//! One file configures either profile. A `province` broker has a node
//! listener (mutual TLS, the certificate's CN is the node id) and a loopback
//! service listener. A `national` broker has a bridge listener (TLS server
//! certificate, username and password) and a loopback service listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tollway_runtime::config::{ConfigError, Problems};
use tollway_topics::Province;
use tollway_topics::limits::MAX_PACKET_BYTES;

use crate::passwords::PasswordFile;

/// The tier this broker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// A provincial broker: edge nodes connect with client certificates.
    Province,
    /// The national broker: provincial bridges and ops tools connect with
    /// usernames and passwords.
    National,
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `province` or `national`. Required.
    pub profile: Profile,

    /// Two-digit province code (e.g. 44). Required for the `province`
    /// profile and rejected for `national`.
    #[serde(default)]
    pub province: Option<Province>,

    /// Directory for persistent state: retained messages live in
    /// `{data_dir}/retained`. Created if missing. Default: `data`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,

    /// Node-facing mutual-TLS listener. Required for `province`, rejected
    /// for `national`.
    #[serde(default)]
    pub node_listener: Option<NodeListener>,

    /// Bridge and ops-tool listener (TLS, username and password). Required
    /// for `national`, rejected for `province`.
    #[serde(default)]
    pub bridge_listener: Option<PasswordTlsListener>,

    /// Plain-TCP listener for centre services, protected by username and
    /// password. Required for both profiles.
    pub service_listener: ServiceListener,

    /// Retained-message storage.
    #[serde(default)]
    pub retained: RetainedConfig,

    /// Prometheus text endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,

    /// Seconds to wait for tasks to stop after SIGINT or SIGTERM. Default: 5.
    #[serde(default = "default_shutdown_deadline_s")]
    pub shutdown_deadline_s: u64,
}

/// The listener edge nodes connect to. TLS requires a client certificate
/// signed by `client_ca_file`, and the certificate's CN becomes the MQTT
/// username, which must equal the client id.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeListener {
    /// Address and port to bind. Default: `0.0.0.0:8883`.
    #[serde(default = "default_tls_bind")]
    pub bind: SocketAddr,
    /// PEM file with the server certificate (and chain). Required.
    pub cert_file: PathBuf,
    /// PEM file with the server's private key. Required.
    pub key_file: PathBuf,
    /// PEM file with the CA certificates that sign node certificates. Required.
    pub client_ca_file: PathBuf,
    /// Connection limits of this listener.
    #[serde(default)]
    pub limits: ListenerLimits,
}

/// A TLS listener with a server certificate only; clients log in with a
/// username and password from `password_file`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordTlsListener {
    /// Address and port to bind. Default: `0.0.0.0:8883`.
    #[serde(default = "default_tls_bind")]
    pub bind: SocketAddr,
    /// PEM file with the server certificate (and chain). Required.
    pub cert_file: PathBuf,
    /// PEM file with the server's private key. Required.
    pub key_file: PathBuf,
    /// Password file: one `username:PHC-hash` line per user (Argon2id).
    /// Required.
    pub password_file: PathBuf,
    /// Connection limits of this listener.
    #[serde(default)]
    pub limits: ListenerLimits,
}

/// The plain-TCP listener for centre services on the same host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceListener {
    /// Address and port to bind. Default: `127.0.0.1:1883`. The traffic is
    /// not encrypted, so keep it on loopback or a private network.
    #[serde(default = "default_service_bind")]
    pub bind: SocketAddr,
    /// Password file: one `username:PHC-hash` line per user (Argon2id).
    /// Required.
    pub password_file: PathBuf,
    /// Connection limits of this listener.
    #[serde(default)]
    pub limits: ListenerLimits,
}

/// Queue length per client on the node and bridge listeners by default.
pub const CLIENT_MQUEUE_LEN: usize = 1000;

/// Queue length per client on the service listener by default. A few centre
/// services (ingest, controller, bridge) receive what the whole fleet sends,
/// so after a reconnect storm 10,000 nodes' presences and statuses arrive
/// together; 1000 would drop most of them. At about 1 KiB per status this
/// bounds one service client's queue near 50 MiB.
pub const SERVICE_MQUEUE_LEN: usize = 50_000;

/// Limits of one listener. The defaults are sized for a provincial broker
/// with up to 10,000 nodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerLimits {
    /// Maximum simultaneous MQTT connections on this listener; a client
    /// beyond it is rejected at CONNECT. Default: 20000 (twice the largest
    /// province, so that old and new sessions overlap during a storm).
    pub max_connections: usize,
    /// Maximum MQTT packet size in bytes, in both directions. Default and
    /// upper bound: the wire contract's `MAX_PACKET_BYTES` (1 MiB).
    pub max_packet_bytes: u32,
    /// Maximum unacknowledged QoS 1/2 messages in flight to one client.
    /// Default: 16.
    pub max_inflight: u16,
    /// Maximum messages queued for one client behind its in-flight window.
    /// When it is full, a new message pushes out the oldest, which is
    /// dropped and counted, so a broker's PUBACK is never custody. Default: 1000 on the node and
    /// bridge listeners, [`SERVICE_MQUEUE_LEN`] on the service listener.
    pub max_mqueue_len: Option<usize>,
    /// Whether keep-alive 0 (no keep-alive) is accepted, as MQTT 3.1.1
    /// allows. Default: true.
    pub allow_zero_keepalive: bool,
    /// Smallest keep-alive accepted, in seconds, apart from 0. A CONNECT
    /// below it is refused with "server unavailable". Default: 0.
    pub min_keep_alive_s: u16,
    /// Largest keep-alive accepted, in seconds. A CONNECT above it is
    /// refused with "server unavailable". Default: 3600.
    pub max_keep_alive_s: u16,
    /// Seconds a persistent session (clean session off) is kept after its
    /// client disconnected. After that its subscriptions and queued
    /// messages are discarded, and the client's next CONNACK reports no
    /// session. Default: 86400 (one day).
    pub session_expiry_s: u64,
    /// Seconds a message may wait in a client's queue. An older message is
    /// dropped when its turn comes and counted as dropped. Default: 86400,
    /// the same as `session_expiry_s`, so that a resumed session never
    /// finds its queue expired.
    pub message_expiry_s: u64,
    /// Maximum TLS and MQTT handshakes processed at once; the rest wait in
    /// a queue of at most `max_connections`. Default: 200.
    pub max_handshaking_limit: usize,
    /// New connections admitted per second once the burst is used up; the
    /// rest wait in the handshake queue. 0 turns pacing off. Default: 500
    /// (10,000 nodes are back within about 20 s).
    pub new_connections_per_second: u32,
    /// New connections admitted at once before pacing starts. Default: 200.
    pub new_connections_burst: u32,
    /// Seconds a client has to finish the TLS and MQTT handshake, including
    /// the time it waits for pacing; after that it is refused with "server
    /// unavailable" and retries later. Default: 30.
    pub handshake_timeout_s: u64,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 20_000,
            max_packet_bytes: MAX_PACKET_BYTES as u32,
            max_inflight: 16,
            max_mqueue_len: None,
            allow_zero_keepalive: true,
            min_keep_alive_s: 0,
            max_keep_alive_s: 3600,
            session_expiry_s: 86_400,
            message_expiry_s: 86_400,
            max_handshaking_limit: 200,
            new_connections_per_second: 500,
            new_connections_burst: 200,
            handshake_timeout_s: 30,
        }
    }
}

/// Retained messages, stored in `{data_dir}/retained` (sled) so they
/// survive a restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetainedConfig {
    /// Maximum number of retained topics; once reached, existing topics can
    /// be replaced but new ones are not retained. 0 means no limit.
    /// Default: 100000 (several per node for 10,000 nodes, plus ops objects).
    pub max_messages: usize,
    /// Largest payload kept as retained, in bytes; a larger retained publish
    /// is delivered but not kept. Default: `MAX_PACKET_BYTES` (1 MiB).
    pub max_payload_bytes: usize,
    /// Cache of the store in memory, in MiB. Default: 64.
    pub cache_mib: u64,
}

impl Default for RetainedConfig {
    fn default() -> Self {
        RetainedConfig {
            max_messages: 100_000,
            max_payload_bytes: MAX_PACKET_BYTES,
            cache_mib: 64,
        }
    }
}

/// The Prometheus text endpoint (`GET /metrics`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Whether the endpoint is served. Default: true.
    pub enabled: bool,
    /// Address and port to bind. Default: `127.0.0.1:9464`.
    pub bind: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

fn default_shutdown_deadline_s() -> u64 {
    5
}

fn default_tls_bind() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8883))
}

fn default_service_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}

impl Config {
    /// Checks what serde cannot: keys that depend on the profile, limits
    /// that depend on each other and files that must exist. Every problem
    /// is reported in one error.
    pub fn validate(&self, path: Option<&Path>) -> Result<(), ConfigError> {
        let mut problems = Problems::default();

        match self.profile {
            Profile::Province => {
                if self.province.is_none() {
                    problems.push(
                        "province",
                        "(missing)",
                        "the province profile needs a province code, e.g. province = 44",
                    );
                }
                if self.node_listener.is_none() {
                    problems.push(
                        "node_listener",
                        "(missing)",
                        "the province profile needs a [node_listener] section",
                    );
                }
                if self.bridge_listener.is_some() {
                    problems.push(
                        "bridge_listener",
                        "(set)",
                        "only the national profile has a bridge listener; remove the section",
                    );
                }
            }
            Profile::National => {
                if let Some(province) = self.province {
                    problems.push(
                        "province",
                        province,
                        "the national profile serves every province; remove the key",
                    );
                }
                if self.node_listener.is_some() {
                    problems.push(
                        "node_listener",
                        "(set)",
                        "only the province profile has a node listener; remove the section",
                    );
                }
                if self.bridge_listener.is_none() {
                    problems.push(
                        "bridge_listener",
                        "(missing)",
                        "the national profile needs a [bridge_listener] section",
                    );
                }
            }
        }

        if let Some(node) = &self.node_listener {
            check_file(&mut problems, "node_listener.cert_file", &node.cert_file);
            check_file(&mut problems, "node_listener.key_file", &node.key_file);
            check_file(
                &mut problems,
                "node_listener.client_ca_file",
                &node.client_ca_file,
            );
            node.limits.check(&mut problems, "node_listener.limits");
        }
        if let Some(bridge) = &self.bridge_listener {
            check_file(
                &mut problems,
                "bridge_listener.cert_file",
                &bridge.cert_file,
            );
            check_file(&mut problems, "bridge_listener.key_file", &bridge.key_file);
            check_password_file(
                &mut problems,
                "bridge_listener.password_file",
                &bridge.password_file,
            );
            bridge.limits.check(&mut problems, "bridge_listener.limits");
        }
        check_password_file(
            &mut problems,
            "service_listener.password_file",
            &self.service_listener.password_file,
        );
        self.service_listener
            .limits
            .check(&mut problems, "service_listener.limits");

        self.check_ports(&mut problems);

        if self.retained.max_payload_bytes > MAX_PACKET_BYTES {
            problems.push(
                "retained.max_payload_bytes",
                self.retained.max_payload_bytes,
                &format!("must be at most MAX_PACKET_BYTES ({MAX_PACKET_BYTES})"),
            );
        }
        if self.retained.cache_mib == 0 {
            problems.push("retained.cache_mib", 0, "must be at least 1");
        }

        problems.into_result(path)
    }

    /// rmqtt identifies a listener by its port, so two listeners (or the
    /// metrics endpoint) on one port cannot coexist, even on different
    /// addresses. Port 0 is rejected for the same reason.
    fn check_ports(&self, problems: &mut Problems) {
        let mut seen: Vec<(&str, u16)> = Vec::new();
        let mut listeners = vec![("service_listener.bind", self.service_listener.bind)];
        if let Some(node) = &self.node_listener {
            listeners.push(("node_listener.bind", node.bind));
        }
        if let Some(bridge) = &self.bridge_listener {
            listeners.push(("bridge_listener.bind", bridge.bind));
        }
        if self.metrics.enabled {
            listeners.push(("metrics.bind", self.metrics.bind));
        }

        for (key, addr) in listeners {
            if addr.port() == 0 {
                problems.push(
                    key,
                    addr,
                    "choose a fixed port; rmqtt identifies listeners by port",
                );
            } else if let Some((other, _)) = seen.iter().find(|(_, port)| *port == addr.port()) {
                problems.push(key, addr, &format!("port is already used by {other}"));
            }
            seen.push((key, addr.port()));
        }
    }
}

impl Config {
    /// Returns the sum of every listener's `max_connections`.
    pub fn max_connections(&self) -> usize {
        let node = self
            .node_listener
            .as_ref()
            .map(|l| l.limits.max_connections);
        let bridge = self
            .bridge_listener
            .as_ref()
            .map(|l| l.limits.max_connections);
        let service = Some(self.service_listener.limits.max_connections);
        [node, bridge, service].into_iter().flatten().sum()
    }
}

impl ListenerLimits {
    /// Returns the queue length per client: the configured one, or `default`.
    pub fn mqueue_len(&self, default: usize) -> usize {
        self.max_mqueue_len.unwrap_or(default)
    }

    fn check(&self, problems: &mut Problems, section: &str) {
        if self.max_connections == 0 {
            problems.push(
                &format!("{section}.max_connections"),
                0,
                "must be at least 1",
            );
        }
        if self.max_packet_bytes < 1024 || self.max_packet_bytes as usize > MAX_PACKET_BYTES {
            problems.push(
                &format!("{section}.max_packet_bytes"),
                self.max_packet_bytes,
                &format!("must be between 1024 and MAX_PACKET_BYTES ({MAX_PACKET_BYTES})"),
            );
        }
        if self.max_inflight == 0 {
            problems.push(&format!("{section}.max_inflight"), 0, "must be at least 1");
        }
        if self.max_mqueue_len == Some(0) {
            problems.push(
                &format!("{section}.max_mqueue_len"),
                0,
                "must be at least 1",
            );
        }
        if self.max_handshaking_limit == 0 {
            problems.push(
                &format!("{section}.max_handshaking_limit"),
                0,
                "must be at least 1",
            );
        }
        if self.new_connections_per_second > 0 && self.new_connections_burst == 0 {
            problems.push(
                &format!("{section}.new_connections_burst"),
                0,
                "must be at least 1 while new_connections_per_second is above 0",
            );
        }
        if self.min_keep_alive_s > self.max_keep_alive_s {
            problems.push(
                &format!("{section}.min_keep_alive_s"),
                self.min_keep_alive_s,
                &format!(
                    "must not be above max_keep_alive_s ({})",
                    self.max_keep_alive_s
                ),
            );
        }
        if self.session_expiry_s == 0 {
            problems.push(
                &format!("{section}.session_expiry_s"),
                0,
                "must be at least 1",
            );
        }
        if self.message_expiry_s == 0 {
            problems.push(
                &format!("{section}.message_expiry_s"),
                0,
                "must be at least 1",
            );
        }
        if self.handshake_timeout_s == 0 {
            problems.push(
                &format!("{section}.handshake_timeout_s"),
                0,
                "must be at least 1",
            );
        }
    }
}

fn check_file(problems: &mut Problems, key: &str, path: &Path) {
    if !path.is_file() {
        problems.push(key, path.display(), "file not found or not a regular file");
    }
}

/// Checks that `path` exists and is a valid password file, so that a bad
/// line is reported with the rest of the configuration.
fn check_password_file(problems: &mut Problems, key: &str, path: &Path) {
    if !path.is_file() {
        check_file(problems, key, path);
        return;
    }
    if let Err(err) = PasswordFile::load(path) {
        problems.push(key, path.display(), &err.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollway_runtime::config::parse_config;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_config(text, Path::new("broker.toml"))
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err =
            parse("profile = \"national\"\nservice_listener.password_file = \"p\"\nmax_conn = 1")
                .unwrap_err();
        assert!(err.to_string().contains("max_conn"), "{err}");
    }

    #[test]
    fn province_without_node_listener_reports_all_problems() {
        let config = parse(
            "profile = \"province\"\n\
             [service_listener]\npassword_file = \"/nonexistent/passwd\"\n\
             [service_listener.limits]\nmax_inflight = 0\n",
        )
        .unwrap();
        let text = config
            .validate(Some(Path::new("broker.toml")))
            .unwrap_err()
            .to_string();
        assert!(text.contains("province = (missing)"), "{text}");
        assert!(text.contains("node_listener = (missing)"), "{text}");
        assert!(text.contains("service_listener.password_file"), "{text}");
        assert!(
            text.contains("service_listener.limits.max_inflight"),
            "{text}"
        );
    }

    #[test]
    fn queue_length_defaults_per_listener() {
        let config = parse(
            "profile = \"national\"\n\
             [service_listener]\npassword_file = \"p\"\n\
             [service_listener.limits]\nmax_inflight = 32\n",
        )
        .unwrap();
        let limits = &config.service_listener.limits;
        assert_eq!(limits.mqueue_len(SERVICE_MQUEUE_LEN), 50_000);

        let config = parse(
            "profile = \"national\"\n\
             [service_listener]\npassword_file = \"p\"\n\
             [service_listener.limits]\nmax_mqueue_len = 10\n",
        )
        .unwrap();
        let limits = &config.service_listener.limits;
        assert_eq!(limits.mqueue_len(SERVICE_MQUEUE_LEN), 10);
    }

    #[test]
    fn shared_port_is_rejected() {
        let config = parse(
            "profile = \"national\"\n\
             [service_listener]\nbind = \"127.0.0.1:9464\"\npassword_file = \"p\"\n",
        )
        .unwrap();
        let text = config.validate(None).unwrap_err().to_string();
        assert!(text.contains("metrics.bind"), "{text}");
        assert!(
            text.contains("already used by service_listener.bind"),
            "{text}"
        );
    }

    #[test]
    fn packet_size_above_wire_limit_is_rejected() {
        let config = parse(&format!(
            "profile = \"national\"\n\
             [service_listener]\npassword_file = \"p\"\n\
             [service_listener.limits]\nmax_packet_bytes = {}\n",
            MAX_PACKET_BYTES + 1
        ))
        .unwrap();
        let text = config.validate(None).unwrap_err().to_string();
        assert!(
            text.contains("service_listener.limits.max_packet_bytes"),
            "{text}"
        );
    }

    #[test]
    fn keep_alive_and_expiry_bounds_are_checked() {
        let config = parse(
            "profile = \"national\"\n\
             [service_listener]\npassword_file = \"p\"\n\
             [service_listener.limits]\nmin_keep_alive_s = 600\nmax_keep_alive_s = 60\n\
             session_expiry_s = 0\nmessage_expiry_s = 0\n",
        )
        .unwrap();
        let text = config.validate(None).unwrap_err().to_string();
        for key in [
            "service_listener.limits.min_keep_alive_s",
            "service_listener.limits.session_expiry_s",
            "service_listener.limits.message_expiry_s",
        ] {
            assert!(text.contains(key), "{key} not named in: {text}");
        }
        assert!(
            text.contains("must not be above max_keep_alive_s (60)"),
            "{text}"
        );
    }

    #[test]
    fn example_configs_parse() {
        let examples = [
            (
                "province-broker.toml",
                include_str!("../../deploy/examples/province-broker.toml"),
                Profile::Province,
            ),
            (
                "national-broker.toml",
                include_str!("../../deploy/examples/national-broker.toml"),
                Profile::National,
            ),
        ];
        for (name, text, profile) in examples {
            let config = parse(text).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_eq!(config.profile, profile, "{name}");
            // Only the files are missing on a build machine.
            let err = config.validate(None).unwrap_err().to_string();
            for line in err.lines().skip(1) {
                assert!(line.contains("_file"), "{name}: {err}");
            }
        }
    }

    #[test]
    fn defaults_follow_wire_limits() {
        let limits = ListenerLimits::default();
        assert_eq!(limits.max_packet_bytes as usize, MAX_PACKET_BYTES);
        assert!(limits.allow_zero_keepalive);
    }
}
