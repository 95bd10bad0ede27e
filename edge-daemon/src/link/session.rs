//! The link task: polls rumqttc's event loop, reconnects with back-off,
//! fails over between endpoints and rebuilds the client after repeated
//! errors.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{
    AsyncClient, ConnAck, Event, EventLoop, LastWill, MqttOptions, Packet, QoS, TlsConfiguration,
    Transport,
};
use tokio::sync::watch;
use tollway_runtime::{Backoff, CancellationToken};
use tollway_topics::limits::MAX_PACKET_BYTES;
use tollway_topics::{Message, NodeId, NodeKind, Presence, Province, Topic};

use super::{Inbound, LinkConfig, LinkHandle, LinkState, TlsFiles};

/// Time a graceful stop waits for the offline presence and DISCONNECT to
/// leave before it drops the connection.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Delay after a connect without a session before the link subscribes to
/// its desired state a second time; see [`Link::resubscribe_desired`].
const DESIRED_RESUBSCRIBE_DELAY: Duration = Duration::from_secs(3);

/// The link task's state. Build it with [`Link::new`], then run it.
pub struct Link {
    node: NodeId,
    province: Province,
    version: String,
    /// Carried in the online presence so the controller can place apps.
    labels: BTreeMap<String, String>,
    config: LinkConfig,
    tls: TlsFiles,
    inbound: Inbound,
    /// Shared with every [`LinkHandle`]; replaced on each rebuild.
    client: Arc<Mutex<AsyncClient>>,
    eventloop: EventLoop,
    state: watch::Sender<LinkState>,
    /// Index into `config.endpoints` of the endpoint in use.
    endpoint: usize,
}

impl Link {
    /// Builds the first client (nothing connects until [`Link::run`]) and
    /// returns the link with a handle for publishers.
    pub fn new(
        node: NodeId,
        province: Province,
        version: &str,
        labels: BTreeMap<String, String>,
        config: LinkConfig,
        tls: TlsFiles,
        inbound: Inbound,
    ) -> (Link, LinkHandle) {
        let (client, eventloop) = build_client(&node, province, &config, &tls, 0);
        let client = Arc::new(Mutex::new(client));
        let (state_tx, state_rx) = watch::channel(LinkState {
            connected: false,
            connection: 0,
            endpoint: config.endpoints[0].name.clone(),
        });
        let handle = LinkHandle {
            node: node.clone(),
            province,
            client: Arc::clone(&client),
            state: state_rx,
        };
        let link = Link {
            node,
            province,
            version: version.to_string(),
            labels,
            config,
            tls,
            inbound,
            client,
            eventloop,
            state: state_tx,
            endpoint: 0,
        };
        (link, handle)
    }

    /// Polls the connection until `cancel` fires, then publishes the offline
    /// presence and disconnects.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(self.config.reconnect);
        // Errors since the last CONNACK.
        let mut errors: u32 = 0;
        // When to subscribe to the desired state again after a new session.
        let mut resubscribe_at: Option<tokio::time::Instant> = None;
        tracing::info!(node = %self.node, endpoint = %self.endpoint_name(), "link starting");

        loop {
            let resubscribe_due = async {
                match resubscribe_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                _ = cancel.cancelled() => break,
                () = resubscribe_due => {
                    resubscribe_at = None;
                    self.resubscribe_desired();
                    continue;
                }
                event = self.eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    errors = 0;
                    backoff.reset();
                    if !ack.session_present {
                        resubscribe_at =
                            Some(tokio::time::Instant::now() + DESIRED_RESUBSCRIBE_DELAY);
                    }
                    self.on_connected(ack);
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    self.inbound.dispatch(&self.node, publish);
                }
                Ok(_) => {}
                Err(err) => {
                    errors = errors.saturating_add(1);
                    self.set_disconnected();
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        node = %self.node,
                        endpoint = %self.endpoint_name(),
                        errors,
                        retry_in_ms = delay.as_millis() as u64,
                        error = %err,
                        "link connection failed"
                    );
                    self.after_error(errors);
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }

        self.say_goodbye().await;
        tracing::info!(node = %self.node, "link stopped");
    }

    /// Marks the link up, sets presence online and subscribes again when
    /// the broker kept no session.
    fn on_connected(&mut self, ack: ConnAck) {
        let client = self.current_client();
        if !ack.session_present {
            let filters = [NodeKind::Desired, NodeKind::Command, NodeKind::RecordsAck]
                .map(|kind| rumqttc::SubscribeFilter::new(self.topic(kind), QoS::AtLeastOnce));
            if let Err(err) = client.try_subscribe_many(filters) {
                tracing::error!(node = %self.node, error = %err, "cannot queue the subscriptions");
            }
        }

        let since_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let online = Presence::online(since_ms, self.version.clone(), self.labels.clone());
        match online.to_cbor() {
            Ok(payload) => {
                if let Err(err) = client.try_publish(
                    self.topic(NodeKind::Presence),
                    QoS::AtLeastOnce,
                    true,
                    payload,
                ) {
                    tracing::error!(node = %self.node, error = %err, "cannot queue the online presence");
                }
            }
            Err(err) => {
                tracing::error!(node = %self.node, error = %err, "cannot encode the online presence")
            }
        }

        self.state.send_modify(|state| {
            state.connected = true;
            state.connection += 1;
            state.endpoint = self.config.endpoints[self.endpoint].name.clone();
        });
        tracing::info!(
            node = %self.node,
            endpoint = %self.endpoint_name(),
            session_present = ack.session_present,
            "link connected"
        );
    }

    /// Subscribes to the desired state once more. rmqtt's retainer stores a
    /// retained message from a queue after routing it, so a desired state
    /// published while the first subscription is set up can miss both the
    /// live route and the retained lookup. The second subscription re-sends
    /// the retained state; an equal generation is ignored by the app
    /// manager.
    fn resubscribe_desired(&self) {
        let topic = self.topic(NodeKind::Desired);
        if let Err(err) = self.current_client().try_subscribe(topic, QoS::AtLeastOnce) {
            tracing::warn!(node = %self.node, error = %err, "cannot repeat the desired-state subscription");
        }
    }

    fn set_disconnected(&self) {
        self.state.send_if_modified(|state| {
            let was = state.connected;
            state.connected = false;
            was
        });
    }

    /// Moves to the next endpoint or rebuilds the client when the error
    /// count since the last CONNACK reaches the configured thresholds.
    ///
    /// NOTE: only connection errors count. A connection that stays up while
    /// rumqttc stops sending (its packet-id collision state after a
    /// reconnect) is not detected here; the uplink then resends on its
    /// timeout into the same stuck client.
    fn after_error(&mut self, errors: u32) {
        let endpoints = self.config.endpoints.len();
        let switch =
            endpoints > 1 && errors.is_multiple_of(self.config.failures_before_next_endpoint);
        let rebuild = errors.is_multiple_of(self.config.errors_before_rebuild);
        if switch {
            let from = self.endpoint_name().to_string();
            self.endpoint = (self.endpoint + 1) % endpoints;
            tracing::warn!(node = %self.node, from = %from, to = %self.endpoint_name(), errors, "moving to the next broker endpoint");
        }
        if switch || rebuild {
            self.rebuild();
        }
    }

    /// Discards the client and its event loop, with every request still
    /// queued in them, and builds new ones for the current endpoint.
    fn rebuild(&mut self) {
        let (client, eventloop) = build_client(
            &self.node,
            self.province,
            &self.config,
            &self.tls,
            self.endpoint,
        );
        *self
            .client
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = client;
        self.eventloop = eventloop;
        self.state.send_modify(|state| {
            state.endpoint = self.config.endpoints[self.endpoint].name.clone();
        });
        tracing::info!(node = %self.node, endpoint = %self.endpoint_name(), "MQTT client rebuilt");
    }

    /// Publishes the offline presence (a normal DISCONNECT suppresses the
    /// will) and disconnects, waiting at most [`GOODBYE_TIMEOUT`].
    async fn say_goodbye(&mut self) {
        if !self.state.borrow().connected {
            return;
        }
        let client = self.current_client();
        let offline = Presence::offline()
            .to_cbor()
            .expect("the offline presence always encodes");
        let queued = client
            .try_publish(
                self.topic(NodeKind::Presence),
                QoS::AtLeastOnce,
                true,
                offline,
            )
            .and_then(|()| client.try_disconnect());
        if let Err(err) = queued {
            tracing::warn!(node = %self.node, error = %err, "cannot queue the offline presence");
            return;
        }
        let sent = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        if sent.is_err() {
            tracing::warn!(node = %self.node, "offline presence not confirmed before the goodbye timeout");
        }
        self.set_disconnected();
    }

    fn current_client(&self) -> AsyncClient {
        self.client
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    fn topic(&self, kind: NodeKind) -> String {
        Topic::node(self.province, self.node.clone(), kind).to_string()
    }

    fn endpoint_name(&self) -> &str {
        &self.config.endpoints[self.endpoint].name
    }
}

/// Builds a client and event loop for one endpoint: client id = node id,
/// persistent session, the offline presence as will, mutual TLS and the
/// contract's packet limit.
fn build_client(
    node: &NodeId,
    province: Province,
    config: &LinkConfig,
    tls: &TlsFiles,
    endpoint: usize,
) -> (AsyncClient, EventLoop) {
    let endpoint = &config.endpoints[endpoint];
    let mut options = MqttOptions::new(node.as_str(), endpoint.host.clone(), endpoint.port);
    options.set_keep_alive(Duration::from_secs(config.keep_alive_s));
    options.set_clean_session(false);
    options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);

    let will_topic = Topic::node(province, node.clone(), NodeKind::Presence).to_string();
    let will = Presence::offline()
        .to_cbor()
        .expect("the offline presence always encodes");
    options.set_last_will(LastWill::new(will_topic, will, QoS::AtLeastOnce, true));
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::clone(&tls.client_config),
    )));

    let (client, mut eventloop) = AsyncClient::new(options, config.request_capacity);
    let mut network = eventloop.network_options();
    network.set_connection_timeout(config.connect_timeout_s);
    eventloop.set_network_options(network);
    (client, eventloop)
}
