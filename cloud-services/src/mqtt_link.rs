//! The MQTT connection of a centre service: settings, and the task that
//! polls rumqttc, re-subscribes after every connect and hands incoming
//! publishes to the service over a bounded channel.
//!
//! rumqttc has no reconnect delay of its own, so the poll loop waits with
//! [`Backoff`] after each connection error. The loop never awaits a publish
//! or subscribe itself. Services publish with `try_publish`, so they never
//! block on the request channel that this loop drains.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde::Deserialize;
use tokio::sync::mpsc;
use tollway_runtime::{Backoff, BackoffConfig, CancellationToken};
use tollway_topics::limits::MAX_PACKET_BYTES;

/// Connection settings for the broker's service listener (`[*.broker]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Broker host. Default `127.0.0.1`.
    #[serde(default = "default_host")]
    pub host: String,
    /// Port of the broker's password listener. Default 1883.
    #[serde(default = "default_port")]
    pub port: u16,
    /// MQTT client id; must be unique on the broker.
    pub client_id: String,
    /// Username on the password listener; without it the service logs in
    /// anonymously, which a Tollway broker rejects.
    #[serde(default)]
    pub username: Option<String>,
    /// File whose first line is the password, so that the password stays
    /// out of the configuration file.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Keep-alive interval, in seconds. Default 30.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// Delay between reconnect attempts. Default 200 ms to 30 s.
    #[serde(default = "default_backoff")]
    pub backoff: BackoffConfig,
    /// Capacity of rumqttc's request channel (publishes and subscribes not
    /// yet written to the socket). When it is full, `try_publish` fails and
    /// the service keeps the message for a later attempt. Default 1024.
    #[serde(default = "default_request_capacity")]
    pub request_capacity: usize,
}

fn default_host() -> String {
    "127.0.0.1".to_string()
}
fn default_port() -> u16 {
    1883
}
fn default_keep_alive_s() -> u64 {
    30
}
fn default_backoff() -> BackoffConfig {
    BackoffConfig::new(Duration::from_millis(200), Duration::from_secs(30))
}
fn default_request_capacity() -> usize {
    1024
}

/// A broker connection that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot read the broker password file {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("broker setting {key} = {value} is invalid: {expected}")]
    Setting {
        key: &'static str,
        value: String,
        expected: String,
    },
}

/// What the poll loop reports to its service.
#[derive(Debug)]
pub enum LinkEvent {
    /// A CONNACK arrived and the subscriptions were requested again.
    Connected { session_present: bool },
    /// A publish arrived on one of the subscriptions.
    Message { topic: String, payload: Vec<u8> },
}

impl BrokerConfig {
    /// Builds rumqttc options, reading the password file.
    pub fn mqtt_options(&self) -> Result<MqttOptions, LinkError> {
        if let Some(problem) = self.backoff.problem() {
            return Err(LinkError::Setting {
                key: "backoff",
                value: format!("{:?}", self.backoff),
                expected: problem,
            });
        }
        if self.request_capacity == 0 {
            return Err(LinkError::Setting {
                key: "request_capacity",
                value: "0".to_string(),
                expected: "at least 1".to_string(),
            });
        }
        let mut options = MqttOptions::new(&self.client_id, &self.host, self.port);
        options.set_keep_alive(Duration::from_secs(self.keep_alive_s.max(5)));
        options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        options.set_clean_session(true);
        if let Some(username) = &self.username {
            let password = match &self.password_file {
                Some(path) => read_password(path)?,
                None => String::new(),
            };
            options.set_credentials(username, password);
        }
        Ok(options)
    }
}

fn read_password(path: &PathBuf) -> Result<String, LinkError> {
    let text = std::fs::read_to_string(path).map_err(|source| LinkError::PasswordFile {
        path: path.clone(),
        source,
    })?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// Creates the client and its event loop.
pub fn connect(config: &BrokerConfig) -> Result<(AsyncClient, EventLoop), LinkError> {
    let options = config.mqtt_options()?;
    Ok(AsyncClient::new(options, config.request_capacity))
}

/// Polls `eventloop` until `token` is cancelled: subscribes to `filters` at
/// QoS 1 after every CONNACK and forwards publishes to `events`.
///
/// `events` is bounded; while the service is busy the loop waits for room,
/// so the broker's per-client queue takes the overflow (and drops QoS 1
/// messages beyond its limit, as every MQTT broker does).
pub async fn run_link(
    name: &'static str,
    client: AsyncClient,
    mut eventloop: EventLoop,
    filters: Vec<String>,
    backoff: BackoffConfig,
    events: mpsc::Sender<LinkEvent>,
    token: CancellationToken,
) {
    let mut backoff = Backoff::new(backoff);
    loop {
        let polled = tokio::select! {
            () = token.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        let event = match polled {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                tracing::info!(
                    service = name,
                    session_present = ack.session_present,
                    "connected to the broker"
                );
                for filter in &filters {
                    if let Err(err) = client.try_subscribe(filter, QoS::AtLeastOnce) {
                        tracing::error!(service = name, filter, %err, "cannot request a subscription");
                    }
                }
                LinkEvent::Connected {
                    session_present: ack.session_present,
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => LinkEvent::Message {
                topic: publish.topic,
                payload: publish.payload.to_vec(),
            },
            Ok(_) => continue,
            Err(err) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    service = name,
                    %err,
                    attempt = backoff.attempts(),
                    delay_ms = delay.as_millis() as u64,
                    "broker connection failed; retrying"
                );
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        if events.send(event).await.is_err() {
            break;
        }
    }
    let _ = client.try_disconnect();
    tracing::info!(service = name, "broker link stopped");
}
