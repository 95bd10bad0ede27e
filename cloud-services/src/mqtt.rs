//! MQTT connections of the centre services: a subscriber that hands each
//! message to a service and acknowledges it only when the service calls `ack`,
//! and a publisher for acknowledgements, commands and forwarded batches.
//!
//! Each is its own rumqttc connection with its own poll task. Keeping them
//! apart means the subscriber's poll task can wait for room in the service's
//! queue (which stops reading from the socket, so the broker holds further
//! messages) while the service waits on the publisher, without either
//! waiting on the other. Both reconnect with [`Backoff`] and rebuild their
//! client after repeated errors, because rumqttc 0.25 can livelock after a
//! reconnect with publishes in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ClientError, Event, EventLoop, MqttOptions, Packet, Publish, QoS,
    SubscribeReasonCode,
};
use tokio::sync::{mpsc, watch};
use tollway_runtime::{Backoff, BackoffConfig, CancellationToken, Shutdown};
use tollway_topics::limits::MAX_PACKET_BYTES;

use crate::config::BrokerConfig;
use crate::stats::Stats;

/// Requests (publishes, acks) a publisher's client queues before `publish`
/// waits. While the broker is unreachable, callers wait here.
const PUBLISH_QUEUE: usize = 256;

/// Maximum of messages a broker can have sent to one connection without an
/// acknowledgement yet: QoS 1 packet ids are 16 bits and nonzero, and two
/// unacknowledged messages never share one (MQTT 3.1.1, section 2.3.1).
const MAX_UNACKED: usize = u16::MAX as usize;

/// Connection settings resolved from the configuration, password included.
#[derive(Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    pub client_id_prefix: String,
    pub keep_alive: Duration,
    pub backoff: BackoffConfig,
    pub rebuild_after_errors: u32,
}

impl std::fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("client_id_prefix", &self.client_id_prefix)
            .finish_non_exhaustive()
    }
}

impl MqttSettings {
    pub fn from_config(config: &BrokerConfig, password: String) -> Self {
        MqttSettings {
            host: config.host.clone(),
            port: config.port,
            username: config.username.clone(),
            password,
            client_id_prefix: config.client_id.clone(),
            keep_alive: Duration::from_secs(u64::from(config.keep_alive_s)),
            backoff: config.backoff,
            rebuild_after_errors: config.rebuild_after_errors,
        }
    }

    fn options(&self, role: &str, clean_session: bool, manual_acks: bool) -> MqttOptions {
        let client_id = format!("{}-{role}", self.client_id_prefix);
        let mut options = MqttOptions::new(client_id, self.host.clone(), self.port);
        options.set_keep_alive(self.keep_alive);
        options.set_credentials(self.username.clone(), self.password.clone());
        options.set_clean_session(clean_session);
        options.set_manual_acks(manual_acks);
        options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        options
    }
}

/// One received message. The broker gets its PUBACK only from [`Delivery::ack`].
pub struct Delivery {
    pub publish: Publish,
    client: AsyncClient,
    /// The connection the message arrived on.
    connection: u64,
    /// The subscriber's current connection. An ack for a message of an
    /// earlier connection is skipped, because its packet id may name a
    /// different message on the new connection.
    current: Arc<AtomicU64>,
}

impl Delivery {
    /// Sends the PUBACK, after the service stored what the message carried.
    pub async fn ack(self) {
        if self.current.load(Ordering::Acquire) != self.connection {
            tracing::debug!(topic = %self.publish.topic, "connection changed since delivery; the broker resends, no ack sent");
            return;
        }
        if self.client.try_ack(&self.publish).is_ok() {
            return;
        }
        // Not reached while the broker keeps packet ids distinct. The wait
        // below can stall this service (see `run_subscriber`).
        tracing::warn!(
            topic = %self.publish.topic,
            pkid = self.publish.pkid,
            "cannot queue the ack at once; waiting"
        );
        if let Err(err) = self.client.ack(&self.publish).await {
            tracing::debug!(error = %err, topic = %self.publish.topic, "ack not sent; the connection is gone");
        }
    }
}

/// The filters and session settings of a subscriber connection.
pub struct Subscription {
    /// Suffix of the client id, e.g. `ingest-sub`.
    pub role: &'static str,
    pub filters: Vec<String>,
    /// False keeps the session (and a shared-group membership) on the broker
    /// while this process is disconnected.
    pub clean_session: bool,
    /// Capacity of the delivery queue.
    pub queue: usize,
}

/// Starts a subscriber connection that subscribes on every CONNACK and
/// queues each message in the returned channel, which has room for
/// `subscription.queue` messages.
pub fn spawn_subscriber(
    shutdown: &mut Shutdown,
    task: &'static str,
    settings: MqttSettings,
    subscription: Subscription,
    stats: Arc<Stats>,
) -> mpsc::Receiver<Delivery> {
    let (deliveries_tx, deliveries_rx) = mpsc::channel(subscription.queue);
    let token = shutdown.token();
    shutdown.spawn(task, async move {
        run_subscriber(settings, subscription, deliveries_tx, stats, token).await;
    });
    deliveries_rx
}

async fn run_subscriber(
    settings: MqttSettings,
    subscription: Subscription,
    deliveries_tx: mpsc::Sender<Delivery>,
    stats: Arc<Stats>,
    token: CancellationToken,
) {
    let Subscription {
        role,
        filters,
        clean_session,
        queue: _,
    } = subscription;
    let mut backoff = Backoff::new(settings.backoff);
    let connection = Arc::new(AtomicU64::new(0));
    // Room for an ack of every message the broker can have unacknowledged
    // (one per packet id), plus subscribes, so that `Delivery::ack` does not
    // wait. While the service's queue is full, this task waits in `send` and
    // does not poll, so nothing drains this channel, and a service waiting
    // to ack would take no further message: a deadlock. Mosquitto 2.0.11
    // with `max_inflight_messages 16` left 384 acks queued towards the
    // ingest, the earlier capacity. flume allocates the channel as it fills.
    // Pinned by `ingest_keeps_reading_mosquitto_burst`.
    let capacity = MAX_UNACKED + filters.len() + 16;

    loop {
        let mut options = settings.options(role, clean_session, true);
        options.set_request_channel_capacity(capacity);
        let (client, mut eventloop) = AsyncClient::new(options, capacity);
        let mut errors = 0u32;
        tracing::info!(role, host = %settings.host, port = settings.port, "connecting to the broker");

        loop {
            let event = tokio::select! {
                _ = token.cancelled() => {
                    let _ = client.try_disconnect();
                    tracing::info!(role, "subscriber stopped");
                    return;
                }
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    connection.fetch_add(1, Ordering::AcqRel);
                    backoff.reset();
                    errors = 0;
                    tracing::info!(
                        role,
                        session_present = ack.session_present,
                        "connected; subscribing"
                    );
                    for filter in &filters {
                        if let Err(err) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                            tracing::error!(role, %filter, error = %err, "cannot queue the subscription");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|code| matches!(code, SubscribeReasonCode::Failure))
                    {
                        tracing::error!(role, ?filters, "the broker rejected a subscription");
                    } else {
                        Stats::add(&stats.subscriptions_granted, 1);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let delivery = Delivery {
                        publish,
                        client: client.clone(),
                        connection: connection.load(Ordering::Acquire),
                        current: connection.clone(),
                    };
                    tokio::select! {
                        _ = token.cancelled() => continue,
                        sent = deliveries_tx.send(delivery) => if sent.is_err() {
                            tracing::info!(role, "service stopped reading; subscriber stops");
                            return;
                        },
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    errors += 1;
                    if !wait_after_error(&mut backoff, &token, role, &err.to_string()).await {
                        continue;
                    }
                    if errors >= settings.rebuild_after_errors {
                        tracing::info!(
                            role,
                            errors,
                            "rebuilding the MQTT client after repeated errors"
                        );
                        break;
                    }
                }
            }
        }
    }
}

/// Logs a connection error and sleeps for the next back-off delay. Returns
/// false when shutdown began during the wait.
async fn wait_after_error(
    backoff: &mut Backoff,
    token: &CancellationToken,
    role: &str,
    error: &str,
) -> bool {
    let delay = backoff.next_delay();
    tracing::warn!(
        role,
        error,
        attempt = backoff.attempts(),
        delay_ms = delay.as_millis() as u64,
        "broker connection failed; retrying"
    );
    tokio::select! {
        _ = token.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// A publishing connection, shared by clones.
#[derive(Clone)]
pub struct Publisher {
    /// The current client; the poll task sends a new one after a rebuild.
    client_rx: watch::Receiver<AsyncClient>,
    /// Counts CONNACKs, so that a caller can resend after a reconnect.
    connected_rx: watch::Receiver<u64>,
}

/// A publish that did not reach the client's queue.
#[derive(Debug, thiserror::Error)]
#[error("cannot publish on {topic}: {source}")]
pub struct PublishError {
    pub topic: String,
    #[source]
    pub source: ClientError,
}

impl Publisher {
    /// Queues a QoS 1 publish. Waits while the client's queue is full, which
    /// happens while the broker is unreachable.
    ///
    /// NOTE: rumqttc drops queued and unacknowledged publishes when a
    /// reconnect finds no session, so a returned `Ok` is no proof of delivery.
    /// Every caller's message is idempotent and sent again by its own logic
    /// (the next batch's ack, the next reconciliation, the forwarder's resend).
    pub async fn publish(&self, topic: String, payload: Vec<u8>) -> Result<(), PublishError> {
        let client = self.client_rx.borrow().clone();
        client
            .publish(topic.clone(), QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|source| PublishError { topic, source })
    }

    /// Returns a receiver of the count of CONNACKs so far.
    pub fn connections(&self) -> watch::Receiver<u64> {
        self.connected_rx.clone()
    }
}

/// Starts a publishing connection named `role`.
pub fn spawn_publisher(
    shutdown: &mut Shutdown,
    task: &'static str,
    settings: MqttSettings,
    role: &'static str,
) -> Publisher {
    let (client, eventloop) = AsyncClient::new(settings.options(role, true, false), PUBLISH_QUEUE);
    let (client_tx, client_rx) = watch::channel(client);
    let (connected_tx, connected_rx) = watch::channel(0u64);
    let token = shutdown.token();
    shutdown.spawn(task, async move {
        run_publisher(settings, role, eventloop, client_tx, connected_tx, token).await;
    });
    Publisher {
        client_rx,
        connected_rx,
    }
}

async fn run_publisher(
    settings: MqttSettings,
    role: &'static str,
    mut eventloop: EventLoop,
    client_tx: watch::Sender<AsyncClient>,
    connected_tx: watch::Sender<u64>,
    token: CancellationToken,
) {
    let mut backoff = Backoff::new(settings.backoff);
    let mut errors = 0u32;
    tracing::info!(role, host = %settings.host, port = settings.port, "connecting to the broker");
    loop {
        let event = tokio::select! {
            _ = token.cancelled() => {
                let _ = client_tx.borrow().try_disconnect();
                tracing::info!(role, "publisher stopped");
                return;
            }
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                errors = 0;
                connected_tx.send_modify(|count| *count += 1);
                tracing::info!(role, "connected");
            }
            Ok(_) => {}
            Err(err) => {
                errors += 1;
                if !wait_after_error(&mut backoff, &token, role, &err.to_string()).await {
                    continue;
                }
                if errors >= settings.rebuild_after_errors {
                    tracing::info!(
                        role,
                        errors,
                        "rebuilding the MQTT client after repeated errors"
                    );
                    let (client, new_eventloop) =
                        AsyncClient::new(settings.options(role, true, false), PUBLISH_QUEUE);
                    eventloop = new_eventloop;
                    client_tx.send_replace(client);
                    errors = 0;
                }
            }
        }
    }
}
