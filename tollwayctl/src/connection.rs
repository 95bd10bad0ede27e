//! Connection settings of the fleet commands and their two transports.
//!
//! Settings come from flags or from the `[connection]` section of the
//! configuration file, and flags win. `apply` and `delete` publish to the
//! broker over MQTT; `get`, `describe` and `fleet` read the controller's and
//! aggregator's loopback HTTP APIs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde::Deserialize;

use crate::locale::text;

/// The `[connection]` section of the configuration file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    pub broker_host: Option<String>,
    pub broker_port: Option<u16>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub controller_url: Option<String>,
    pub aggregator_url: Option<String>,
}

/// Connection flags; each overrides the configuration file.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Broker host for `apply` and `delete` [default: 127.0.0.1].
    #[arg(long, global = true)]
    pub broker_host: Option<String>,
    /// Port of the broker's password listener [default: 1883].
    #[arg(long, global = true)]
    pub broker_port: Option<u16>,
    /// Username on the broker's password listener.
    #[arg(long, global = true)]
    pub username: Option<String>,
    /// File whose first line is the broker password.
    #[arg(long, global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Base URL of the controller API [default: http://127.0.0.1:8470].
    #[arg(long, global = true, value_name = "URL")]
    pub controller_url: Option<String>,
    /// Base URL of the aggregator API [default: http://127.0.0.1:8471].
    #[arg(long, global = true, value_name = "URL")]
    pub aggregator_url: Option<String>,
}

/// The settings in effect.
#[derive(Debug, Clone)]
pub struct Connection {
    pub broker_host: String,
    pub broker_port: u16,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub controller_url: String,
    pub aggregator_url: String,
}

/// How long a publish waits for the broker's acknowledgement.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an HTTP read waits for the whole response.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

impl Connection {
    pub fn resolve(args: &ConnectionArgs, config: &ConnectionConfig) -> Self {
        Connection {
            broker_host: args
                .broker_host
                .clone()
                .or_else(|| config.broker_host.clone())
                .unwrap_or_else(|| "127.0.0.1".to_string()),
            broker_port: args.broker_port.or(config.broker_port).unwrap_or(1883),
            username: args.username.clone().or_else(|| config.username.clone()),
            password_file: args
                .password_file
                .clone()
                .or_else(|| config.password_file.clone()),
            controller_url: args
                .controller_url
                .clone()
                .or_else(|| config.controller_url.clone())
                .unwrap_or_else(|| "http://127.0.0.1:8470".to_string()),
            aggregator_url: args
                .aggregator_url
                .clone()
                .or_else(|| config.aggregator_url.clone())
                .unwrap_or_else(|| "http://127.0.0.1:8471".to_string()),
        }
    }

    /// Publishes each `(topic, payload)` retained at QoS 1 and waits until
    /// the broker acknowledged every one.
    pub fn publish_retained(&self, messages: &[(String, Vec<u8>)]) -> Result<(), String> {
        let client_id = format!("tollwayctl-{}", std::process::id());
        let mut options = MqttOptions::new(client_id, &self.broker_host, self.broker_port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(
            tollway_topics::limits::MAX_PACKET_BYTES,
            tollway_topics::limits::MAX_PACKET_BYTES,
        );
        if let Some(username) = &self.username {
            let password = match &self.password_file {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|err| {
                        format!("cannot read the password file {}: {err}", path.display())
                    })?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
                None => String::new(),
            };
            options.set_credentials(username, password);
        }
        let (client, mut connection) = Client::new(options, messages.len().max(1) + 1);
        for (topic, payload) in messages {
            client
                .publish(topic, QoS::AtLeastOnce, true, payload.clone())
                .map_err(|err| format!("cannot queue the publish to {topic}: {err}"))?;
        }

        let deadline = Instant::now() + PUBLISH_TIMEOUT;
        let mut acknowledged = 0;
        while acknowledged < messages.len() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match connection.recv_timeout(remaining) {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acknowledged += 1,
                Ok(Ok(Event::Incoming(Packet::ConnAck(ack))))
                    if ack.code != rumqttc::ConnectReturnCode::Success =>
                {
                    return Err(format!(
                        "broker {}:{} refused the connection: {:?}",
                        self.broker_host, self.broker_port, ack.code
                    ));
                }
                Ok(Ok(_)) => {}
                Ok(Err(rumqttc::ConnectionError::ConnectionRefused(code))) => {
                    return Err(format!(
                        "{} {}:{} ({code:?}); {}",
                        text("the broker rejected the login at", "broker 拒绝了登录："),
                        self.broker_host,
                        self.broker_port,
                        text(
                            "check --username and --password-file",
                            "请检查 --username 和 --password-file"
                        )
                    ));
                }
                Ok(Err(err)) => {
                    return Err(format!(
                        "{} {}:{}: {err}; {}",
                        text("cannot reach the broker at", "无法连接 broker"),
                        self.broker_host,
                        self.broker_port,
                        text(
                            "check --broker-host, --broker-port, --username and --password-file",
                            "请检查 --broker-host、--broker-port、--username 和 --password-file"
                        )
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "{} {:?} ({acknowledged}/{})",
                        text(
                            "timed out waiting for the broker to acknowledge after",
                            "等待 broker 确认超时："
                        ),
                        PUBLISH_TIMEOUT,
                        messages.len()
                    ));
                }
            }
        }
        let _ = client.disconnect();
        Ok(())
    }

    /// Reads JSON from the controller API.
    pub fn controller_get(&self, path: &str) -> Result<serde_json::Value, String> {
        http_get_json(&self.controller_url, path, "--controller-url")
    }

    /// Reads JSON from the aggregator API.
    pub fn aggregator_get(&self, path: &str) -> Result<serde_json::Value, String> {
        http_get_json(&self.aggregator_url, path, "--aggregator-url")
    }
}

fn http_get_json(base: &str, path: &str, flag: &str) -> Result<serde_json::Value, String> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(HTTP_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.get(&url).call().map_err(|err| {
        format!(
            "GET {url} {}: {err}; {} {flag}",
            text("failed", "失败"),
            text("check", "请检查")
        )
    })?;
    let status = response.status().as_u16();
    let body: serde_json::Value = response
        .body_mut()
        .read_json()
        .map_err(|err| format!("GET {url}: {} {err}", text("invalid JSON:", "JSON 无效：")))?;
    if status == 200 {
        Ok(body)
    } else {
        let reason = body["error"].as_str().unwrap_or("").to_string();
        Err(format!("GET {url}: HTTP {status}: {reason}"))
    }
}
