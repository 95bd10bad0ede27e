//! One MQTT session of the bridge: it connects to one broker (trying its
//! addresses in order, with back-off between rounds), reads the topics its
//! rules subscribe to and hands them to the other broker's lanes, and
//! publishes what the other side's sessions queued for this broker.
//!
//! Acknowledgements flow back: a message read here is acknowledged to this
//! broker only after the destination broker acknowledged it, so a crash of
//! the bridge loses nothing that a broker considers delivered.
//!
//! rumqttc's client and event loop are rebuilt for every connection, because
//! rumqttc drops its queue when a session is not resumed and can livelock
//! after a reconnect with publishes in flight. The session therefore keeps
//! its own record of what is in flight and sends it again after a reconnect.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Outgoing, Packet, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tollway_runtime::{Backoff, CancellationToken};
use tollway_topics::{BridgeState, Message};

use crate::endpoint::{Endpoint, REQUEST_CAPACITY};
use crate::lanes::{Forward, LaneSender, Outbound, QueueError, SourceAck};
use crate::metrics::{Metrics, SessionMetrics};
use crate::rules::{Direction, Lane, RuleSet};

/// Events buffered between rumqttc's event loop and the session. When the
/// session stops reading events (a full lane), the event loop stops too.
const EVENT_BUFFER: usize = 64;

/// How long a stopping session waits for its last PUBACK (the bridge's
/// offline state) before it disconnects anyway.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a session is for.
pub struct SessionPlan {
    /// `local`, `local-bulk` or `remote`: used in logs and metrics.
    pub name: &'static str,
    /// Selects this session's counters in [`Metrics`].
    pub metrics: fn(&Metrics) -> &SessionMetrics,
    pub endpoint: Endpoint,
    /// Filters subscribed on this broker, with the QoS of their rules.
    pub subscriptions: Vec<(String, QoS)>,
    /// Whether to subscribe again after every connect, even when the
    /// broker resumed the session. A new SUBSCRIBE makes the broker send
    /// every retained message under the filters again. So a retained
    /// object that the broker dropped from this session's queue while the
    /// bridge was away (queue full, or expired) still arrives.
    pub resubscribe_on_connect: bool,
    /// The direction of messages read from this broker.
    pub reads: Direction,
    /// The direction of messages published to this broker.
    pub writes: Direction,
    /// The bridge-state topic, for the session to the national broker: it
    /// publishes `online` there after each connect and registers `offline`
    /// as its will.
    pub state_topic: Option<String>,
}

/// Wiring of a session to the rest of the bridge.
pub struct SessionLinks {
    pub rules: Arc<RuleSet>,
    /// Messages to publish to this broker; `None` for a read-only session.
    pub outbound: Option<Outbound>,
    /// The lanes toward the other broker.
    pub to_peer: LaneSender,
    pub metrics: Arc<Metrics>,
    pub backoff: Backoff,
    /// Messages read from this broker may wait here while their lane is
    /// full, at most this many; beyond it the session stops reading.
    pub max_pending: usize,
    /// Messages published to this broker and not yet acknowledged.
    pub max_inflight: usize,
    pub stop: CancellationToken,
}

/// A running session.
pub struct Session {
    plan: SessionPlan,
    links: SessionLinks,
    /// Acknowledgements for messages read here, sent by whichever session
    /// delivered them. Unbounded, but it holds at most one entry per
    /// forwarded message, and those are bounded by the lanes and windows.
    acks_tx: mpsc::UnboundedSender<SourceAck>,
    acks_rx: mpsc::UnboundedReceiver<SourceAck>,
    /// Messages read here whose lane was full, oldest first.
    pending: VecDeque<Forward>,
    /// Connection attempts so far; tags each delivery with the connection
    /// it came on.
    generation: u64,
    /// Subscribe after the next CONNACK even if the session was resumed:
    /// true at start-up, so changed rules take effect, and after a
    /// rejected subscription.
    needs_subscribe: bool,
}

/// How a connection ended.
enum End {
    Stopped,
    Lost(String),
}

/// One live connection: the rumqttc client, its event loop in a task, and
/// what was published on it.
struct Connection {
    client: AsyncClient,
    events: mpsc::Receiver<Result<Event, ConnectionError>>,
    poller: JoinHandle<()>,
    address: String,
    generation: u64,
    /// Publishes handed to rumqttc and not yet written; rumqttc writes them
    /// in order and reports each packet id with `Outgoing::Publish`.
    unwritten: VecDeque<(u64, Forward)>,
    /// Written QoS 1 publishes waiting for a PUBACK, by packet id, with
    /// their send order.
    unacked: HashMap<u16, (u64, Forward)>,
    sent: u64,
}

impl Connection {
    fn outstanding(&self) -> usize {
        self.unwritten.len() + self.unacked.len()
    }

    /// Returns every unacknowledged publish, in the order it was sent.
    fn take_outstanding(&mut self) -> Vec<Forward> {
        let mut outstanding: Vec<(u64, Forward)> = self.unacked.drain().map(|(_, v)| v).collect();
        outstanding.extend(self.unwritten.drain(..));
        outstanding.sort_by_key(|(order, _)| *order);
        outstanding
            .into_iter()
            .map(|(_, forward)| forward)
            .collect()
    }
}

impl Session {
    pub fn new(plan: SessionPlan, links: SessionLinks) -> Self {
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        Session {
            plan,
            links,
            acks_tx,
            acks_rx,
            pending: VecDeque::new(),
            generation: 0,
            needs_subscribe: true,
        }
    }

    fn metrics(&self) -> &SessionMetrics {
        (self.plan.metrics)(&self.links.metrics)
    }

    /// Connects, serves and reconnects until the stop token is cancelled.
    pub async fn run(mut self) {
        let name = self.plan.name;
        tracing::info!(session = name, addresses = ?self.plan.endpoint.addresses, "session started");
        loop {
            let Some(mut connection) = self.connect().await else {
                break;
            };
            let end = self.serve(&mut connection).await;
            self.metrics().connected.store(0, Ordering::Relaxed);

            match end {
                End::Stopped => {
                    self.say_goodbye(connection).await;
                    break;
                }
                End::Lost(reason) => {
                    self.metrics()
                        .connection_errors
                        .fetch_add(1, Ordering::Relaxed);
                    connection.poller.abort();
                    self.requeue_outstanding(&mut connection);
                    let delay = self.links.backoff.next_delay();
                    tracing::warn!(
                        session = name,
                        address = %connection.address,
                        generation = connection.generation,
                        reason,
                        delay_ms = delay.as_millis() as u64,
                        "connection lost; reconnecting after back-off"
                    );
                    if !self.sleep_unless_stopped(delay).await {
                        break;
                    }
                }
            }
        }
        tracing::info!(session = name, "session stopped");
    }

    /// Tries each address in order until one accepts, waiting a back-off
    /// delay after each full round. Returns `None` once stopped.
    async fn connect(&mut self) -> Option<Connection> {
        let name = self.plan.name;
        loop {
            for address in self.plan.endpoint.addresses.clone() {
                if self.links.stop.is_cancelled() {
                    return None;
                }
                self.generation += 1;
                let stop = self.links.stop.clone();
                let attempt = tokio::select! {
                    _ = stop.cancelled() => return None,
                    attempt = self.open(&address) => attempt,
                };
                match attempt {
                    Ok(connection) => {
                        self.links.backoff.reset();
                        return Some(connection);
                    }
                    Err(reason) => {
                        self.metrics()
                            .connection_errors
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            session = name,
                            address,
                            reason,
                            "connection attempt failed"
                        );
                    }
                }
            }

            let delay = self.links.backoff.next_delay();
            tracing::info!(
                session = name,
                attempts = self.links.backoff.attempts(),
                delay_ms = delay.as_millis() as u64,
                "every address failed; retrying after back-off"
            );
            if !self.sleep_unless_stopped(delay).await {
                return None;
            }
        }
    }

    /// Opens one connection: CONNECT, CONNACK, then subscriptions and the
    /// bridge state as needed.
    async fn open(&mut self, address: &str) -> Result<Connection, String> {
        let options = self.plan.endpoint.options(address)?;
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let timeout = self.plan.endpoint.connect_timeout;
        let connack = tokio::time::timeout(timeout, wait_for_connack(&mut eventloop))
            .await
            .map_err(|_| format!("no CONNACK within {} s", timeout.as_secs()))??;

        let (events_tx, events) = mpsc::channel(EVENT_BUFFER);
        let poller = tokio::spawn(poll_events(eventloop, events_tx));
        let connection = Connection {
            client,
            events,
            poller,
            address: address.to_string(),
            generation: self.generation,
            unwritten: VecDeque::new(),
            unacked: HashMap::new(),
            sent: 0,
        };

        let metrics = self.metrics();
        metrics.connected.store(1, Ordering::Relaxed);
        metrics.connects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            session = self.plan.name,
            address,
            session_present = connack.session_present,
            generation = self.generation,
            "connected"
        );

        let subscribe =
            !connack.session_present || self.needs_subscribe || self.plan.resubscribe_on_connect;
        if subscribe && !self.plan.subscriptions.is_empty() {
            let filters = self
                .plan
                .subscriptions
                .iter()
                .map(|(filter, qos)| SubscribeFilter::new(filter.clone(), *qos));
            if let Err(err) = connection.client.try_subscribe_many(filters) {
                connection.poller.abort();
                return Err(format!("cannot queue the subscription: {err}"));
            }
        }
        if let Some(topic) = &self.plan.state_topic {
            let online = bridge_state(topic, true, Some(address));
            if let Some(outbound) = self.links.outbound.as_mut() {
                outbound.requeue([online]);
            }
        }
        Ok(connection)
    }

    /// Serves one connection until it is lost or the bridge stops.
    async fn serve(&mut self, connection: &mut Connection) -> End {
        loop {
            let window_open = connection.outstanding() < self.links.max_inflight;
            let reading = self.pending.len() < self.links.max_pending;
            let waiting_lane = self.pending.front().map(|forward| forward.lane);

            let step = tokio::select! {
                biased;
                _ = self.links.stop.cancelled() => Step::Stop,
                ack = self.acks_rx.recv() => Step::Ack(ack),
                event = connection.events.recv(), if reading => Step::Event(event),
                () = wait_for_room(&self.links.to_peer, waiting_lane), if waiting_lane.is_some() => Step::Room,
                forward = next_outbound(&mut self.links.outbound), if window_open => Step::Publish(forward),
            };

            let result = match step {
                Step::Stop => return End::Stopped,
                Step::Ack(Some(ack)) => self.acknowledge(connection, ack),
                // `acks_tx` lives in `self`, so the channel never closes.
                Step::Ack(None) => Ok(()),
                Step::Event(Some(Ok(event))) => self.handle_event(connection, event),
                Step::Event(Some(Err(err))) => Err(err.to_string()),
                Step::Event(None) => Err("the event loop ended".to_string()),
                Step::Room => {
                    self.flush_pending();
                    Ok(())
                }
                Step::Publish(Some(forward)) => self.publish(connection, forward),
                // The other sessions dropped their lane senders: shutdown.
                Step::Publish(None) => return End::Stopped,
            };
            if let Err(reason) = result {
                return End::Lost(reason);
            }
        }
    }

    /// Acknowledges a message to this broker after its destination did.
    fn acknowledge(&mut self, connection: &Connection, ack: SourceAck) -> Result<(), String> {
        if ack.generation != connection.generation {
            self.metrics().stale_acks.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        connection
            .client
            .try_ack(&ack.publish)
            .map_err(|err| format!("cannot queue a PUBACK: {err}"))
    }

    fn handle_event(&mut self, connection: &mut Connection, event: Event) -> Result<(), String> {
        match event {
            Event::Incoming(Packet::Publish(publish)) => {
                self.receive(connection, publish);
                Ok(())
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                match connection.unacked.remove(&ack.pkid) {
                    Some((_, forward)) => self.delivered(forward),
                    None => tracing::debug!(
                        session = self.plan.name,
                        pkid = ack.pkid,
                        "PUBACK for an unknown packet id"
                    ),
                }
                self.update_inflight(connection);
                Ok(())
            }
            Event::Incoming(Packet::SubAck(ack)) => self.check_suback(&ack.return_codes),
            Event::Incoming(Packet::Disconnect) => Err("the broker sent DISCONNECT".to_string()),
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let Some((order, forward)) = connection.unwritten.pop_front() else {
                    return Err(format!(
                        "rumqttc wrote publish {pkid} that the bridge did not send"
                    ));
                };
                if forward.qos == QoS::AtMostOnce {
                    self.delivered(forward);
                } else {
                    connection.unacked.insert(pkid, (order, forward));
                }
                self.update_inflight(connection);
                Ok(())
            }
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => Err(format!(
                "packet id {pkid} is still in flight; rebuilding the client"
            )),
            _ => Ok(()),
        }
    }

    /// Routes a message read from this broker to the other broker's lane.
    fn receive(&mut self, connection: &Connection, publish: Publish) {
        let Some(rule) = self.links.rules.route(self.plan.reads, &publish.topic) else {
            // A subscription left over from an older rule set: acknowledge
            // it so the broker stops sending it, and forward nothing.
            self.metrics().unrouted.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                session = self.plan.name,
                topic = %publish.topic,
                "message matches no rule; acknowledged and not forwarded"
            );
            let _ = connection.client.try_ack(&publish);
            return;
        };

        let qos = if rule.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let source = (publish.qos != QoS::AtMostOnce).then(|| {
            // Acknowledging needs only the packet id and QoS, so the
            // payload is not kept twice.
            let mut receipt = Publish::new("", publish.qos, Vec::<u8>::new());
            receipt.pkid = publish.pkid;
            SourceAck {
                generation: connection.generation,
                publish: receipt,
                reply: self.acks_tx.clone(),
            }
        });
        let forward = Forward {
            topic: publish.topic.clone(),
            payload: publish.payload.to_vec(),
            qos,
            retain: rule.retain || publish.retain,
            lane: rule.lane,
            source,
        };

        if !self.pending.is_empty() {
            self.pending.push_back(forward);
            return;
        }
        match self.links.to_peer.try_send(forward) {
            Ok(()) => {}
            Err(QueueError::Full(forward)) => {
                self.metrics().backpressure.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    session = self.plan.name,
                    lane = forward.lane.label(),
                    "lane full; holding messages and no longer acknowledging the source"
                );
                self.pending.push_back(*forward);
            }
            // The other session stopped: the bridge is shutting down, and
            // the source broker delivers the unacknowledged message again.
            Err(QueueError::Closed(_)) => {}
        }
    }

    /// Moves held messages into their lanes while there is room.
    fn flush_pending(&mut self) {
        while let Some(forward) = self.pending.pop_front() {
            match self.links.to_peer.try_send(forward) {
                Ok(()) => {}
                Err(QueueError::Full(forward)) => {
                    self.pending.push_front(*forward);
                    return;
                }
                Err(QueueError::Closed(_)) => {}
            }
        }
    }

    /// Hands a message to rumqttc for this broker.
    fn publish(&mut self, connection: &mut Connection, forward: Forward) -> Result<(), String> {
        let queued = connection.client.try_publish(
            forward.topic.clone(),
            forward.qos,
            forward.retain,
            forward.payload.clone(),
        );
        connection.sent += 1;
        connection.unwritten.push_back((connection.sent, forward));
        self.update_inflight(connection);
        queued.map_err(|err| format!("cannot queue a publish: {err}"))
    }

    /// Counts a delivered message and acknowledges it to its source.
    fn delivered(&self, forward: Forward) {
        let metrics = self.links.metrics.direction(self.plan.writes);
        metrics.forwarded.fetch_add(1, Ordering::Relaxed);
        metrics
            .forwarded_bytes
            .fetch_add(forward.cost(), Ordering::Relaxed);
        if let Some(source) = forward.source {
            // A send fails only when the source session has stopped; its
            // broker then delivers the message again.
            let reply = source.reply.clone();
            let _ = reply.send(source);
        }
    }

    fn check_suback(&mut self, codes: &[SubscribeReasonCode]) -> Result<(), String> {
        let rejected: Vec<&str> = codes
            .iter()
            .zip(&self.plan.subscriptions)
            .filter(|(code, _)| matches!(code, SubscribeReasonCode::Failure))
            .map(|(_, (filter, _))| filter.as_str())
            .collect();
        if rejected.is_empty() {
            self.needs_subscribe = false;
            tracing::info!(
                session = self.plan.name,
                filters = self.plan.subscriptions.len(),
                "subscribed"
            );
            return Ok(());
        }
        self.needs_subscribe = true;
        Err(format!(
            "the broker rejected the subscription to {rejected:?}; check its ACL for the bridge's user"
        ))
    }

    fn update_inflight(&self, connection: &Connection) {
        self.links
            .metrics
            .direction(self.plan.writes)
            .inflight
            .store(connection.outstanding() as u64, Ordering::Relaxed);
    }

    /// Puts what was in flight on a lost connection back in front of the
    /// queue. A bridge state from that connection is dropped, because the
    /// next connection publishes a fresh one.
    fn requeue_outstanding(&mut self, connection: &mut Connection) {
        let state_topic = self.plan.state_topic.as_deref();
        let outstanding: Vec<Forward> = connection
            .take_outstanding()
            .into_iter()
            .filter(|forward| {
                Some(forward.topic.as_str()) != state_topic || forward.source.is_some()
            })
            .collect();
        self.update_inflight(connection);
        if outstanding.is_empty() {
            return;
        }
        self.links
            .metrics
            .direction(self.plan.writes)
            .resent
            .fetch_add(outstanding.len() as u64, Ordering::Relaxed);
        if let Some(outbound) = self.links.outbound.as_mut() {
            outbound.requeue(outstanding);
        }
    }

    /// Stops a connection cleanly: the session to the national broker
    /// first replaces its retained state with `offline` (a clean DISCONNECT
    /// suppresses the will), then every session disconnects.
    async fn say_goodbye(&mut self, mut connection: Connection) {
        if let Some(topic) = &self.plan.state_topic {
            let offline = bridge_state(topic, false, None);
            let published = connection.client.try_publish(
                offline.topic,
                QoS::AtLeastOnce,
                true,
                offline.payload,
            );
            if published.is_ok() {
                let acked = tokio::time::timeout(GOODBYE_TIMEOUT, async {
                    while let Some(Ok(event)) = connection.events.recv().await {
                        if let Event::Incoming(Packet::PubAck(_)) = event {
                            return;
                        }
                    }
                })
                .await;
                if acked.is_err() {
                    tracing::warn!(
                        session = self.plan.name,
                        "no PUBACK for the offline state; the will message will set it"
                    );
                }
            }
        }
        let _ = connection.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(Ok(_)) = connection.events.recv().await {}
        })
        .await;
        connection.poller.abort();
    }

    async fn sleep_unless_stopped(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = self.links.stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

/// What woke the serve loop.
enum Step {
    Stop,
    Ack(Option<SourceAck>),
    Event(Option<Result<Event, ConnectionError>>),
    Room,
    Publish(Option<Forward>),
}

async fn wait_for_connack(eventloop: &mut EventLoop) -> Result<rumqttc::ConnAck, String> {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack),
            Ok(_) => {}
            Err(err) => return Err(err.to_string()),
        }
    }
}

/// Drives rumqttc's event loop and passes every event on, until the
/// connection fails or the session drops the receiver.
async fn poll_events(
    mut eventloop: EventLoop,
    events: mpsc::Sender<Result<Event, ConnectionError>>,
) {
    loop {
        let event = eventloop.poll().await;
        let failed = event.is_err();
        if events.send(event).await.is_err() || failed {
            return;
        }
    }
}

async fn wait_for_room(to_peer: &LaneSender, lane: Option<Lane>) {
    if let Some(lane) = lane {
        to_peer.wait_for_room(lane).await;
    }
}

async fn next_outbound(outbound: &mut Option<Outbound>) -> Option<Forward> {
    match outbound {
        Some(outbound) => outbound.next().await,
        None => std::future::pending().await,
    }
}

/// Builds the bridge's retained state message.
fn bridge_state(topic: &str, online: bool, remote: Option<&str>) -> Forward {
    let since_ms = online.then(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    });
    let state = BridgeState {
        online,
        since_ms,
        remote: remote.map(str::to_string),
    };
    Forward {
        topic: topic.to_string(),
        // NOTE: a remote address longer than 128 bytes fails validation;
        // the state is then sent without it rather than not at all.
        payload: state
            .to_cbor()
            .or_else(|_| {
                BridgeState {
                    remote: None,
                    ..state.clone()
                }
                .to_cbor()
            })
            .unwrap_or_default(),
        qos: QoS::AtLeastOnce,
        retain: true,
        lane: Lane::Control,
        source: None,
    }
}

/// Returns the will message of the session to the national broker.
pub fn offline_will(topic: &str) -> rumqttc::LastWill {
    let offline = bridge_state(topic, false, None);
    rumqttc::LastWill::new(offline.topic, offline.payload, QoS::AtLeastOnce, true)
}
