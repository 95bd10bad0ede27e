//! A simulated fleet of edge nodes: thousands of MQTT sessions in one
//! process, spread over a few tokio tasks, each speaking the edge daemon's
//! protocol toward one broker.
//!
//! A simulated node connects with client id = node id (the CN of its
//! certificate on TLS runs), a clean session, and its retained `offline`
//! presence as the will message. Once connected it publishes its retained
//! `online` presence, subscribes to its `desired`, `cmd` and `records/ack`
//! topics, and is counted as up when the SUBACK grants all three. It then
//! sends keep-alives and, if configured, a status heartbeat. When the
//! session ends, it waits for its retry policy's delay and connects again.
//!
//! The scenario drives the fleet through [`Fleet`]: drop every session at
//! once (as a network cut would), switch the retry policy, or stop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{
    AsyncClient, ConnectionError, Event, LastWill, MqttOptions, NetworkOptions, Packet, QoS,
    SubscribeFilter, SubscribeReasonCode, TlsConfiguration,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollway_runtime::{Backoff, BackoffConfig};
use tollway_topics::limits::MAX_PACKET_BYTES;
use tollway_topics::{Message, NodeId, NodeKind, Presence, Province, Topic};

use crate::sessions::{UpCounter, UpGuard, spawn_spread};

/// Seconds of connection attempts kept per second; later attempts are
/// added to the last second, so a peak after this time reads too high.
const TRACKED_SECONDS: usize = 4 * 3600;

/// Capacity of each simulated node's rumqttc request channel. A node sends
/// at most a presence, a subscribe and one heartbeat at a time; a heartbeat
/// that does not fit is skipped and counted.
const REQUEST_CHANNEL_CAPACITY: usize = 8;

/// The wait between a node's connection attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPolicy {
    /// The edge daemon's decorrelated-jitter back-off.
    Jittered(BackoffConfig),
    /// A naive client: the same fixed delay every time, no jitter.
    Fixed(Duration),
}

impl RetryPolicy {
    /// Short name for reports: `backoff` or `fixed`.
    pub fn name(&self) -> &'static str {
        match self {
            RetryPolicy::Jittered(_) => "backoff",
            RetryPolicy::Fixed(_) => "fixed",
        }
    }
}

/// The authentication of every node.
#[derive(Clone)]
pub enum Access {
    /// Mutual TLS; one client configuration per node, in node order.
    Tls(Vec<Arc<rustls::ClientConfig>>),
    /// Plain TCP with one username and password for every node.
    Password { username: String, password: String },
}

/// Everything a fleet needs to run.
#[derive(Clone)]
pub struct FleetSpec {
    pub province: Province,
    pub nodes: Vec<NodeId>,
    pub broker: SocketAddr,
    pub access: Access,
    /// MQTT keep-alive; at least 1 s (rumqttc rejects shorter ones).
    pub keep_alive: Duration,
    /// Time allowed for TCP, TLS and CONNACK together (rumqttc's
    /// connection timeout), in whole seconds.
    pub connect_timeout: Duration,
    /// Interval of the status heartbeat; `None` sends none.
    pub heartbeat: Option<Duration>,
    pub retry: RetryPolicy,
    /// Number of tokio tasks the nodes are spread over.
    pub tasks: usize,
}

/// Counters shared by every node of a fleet.
pub struct FleetStats {
    started: Instant,
    sessions: UpCounter,
    /// Connection attempts since the fleet started.
    attempts: AtomicU64,
    /// Attempts that ended before the session was up.
    failures: AtomicU64,
    /// Of those, attempts that timed out before CONNACK.
    connect_timeouts: AtomicU64,
    /// Of those, CONNACKs with a refusal code.
    connect_refusals: AtomicU64,
    /// The same refusals by return code (`ServiceUnavailable`,
    /// `NotAuthorized`, ...). MQTT 3.1.1 defines five refusal codes, so the
    /// map stays small.
    refusal_codes: Mutex<BTreeMap<String, u64>>,
    /// Of those, TCP or TLS errors before CONNACK (including a broker that
    /// closed the connection).
    connect_errors: AtomicU64,
    /// Of those, sessions that failed after CONNACK but before SUBACK.
    lost_before_up: AtomicU64,
    /// Of those, sessions whose own subscriptions the broker refused.
    subscribe_rejections: AtomicU64,
    /// Sessions that were up and ended by an error (not by [`Fleet::drop_all`]).
    lost: AtomicU64,
    /// Heartbeats skipped because the node's request channel was full.
    skipped_heartbeats: AtomicU64,
    /// Connection attempts per second since `started`.
    attempts_per_second: Vec<AtomicU32>,
}

/// A snapshot of [`FleetStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetCounters {
    pub up: usize,
    pub ups: u64,
    pub attempts: u64,
    pub failures: u64,
    pub connect_timeouts: u64,
    pub connect_refusals: u64,
    pub connect_errors: u64,
    pub lost_before_up: u64,
    pub subscribe_rejections: u64,
    pub lost: u64,
    pub skipped_heartbeats: u64,
}

impl FleetStats {
    fn new() -> Self {
        FleetStats {
            started: Instant::now(),
            sessions: UpCounter::default(),
            attempts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            connect_timeouts: AtomicU64::new(0),
            connect_refusals: AtomicU64::new(0),
            refusal_codes: Mutex::new(BTreeMap::new()),
            connect_errors: AtomicU64::new(0),
            lost_before_up: AtomicU64::new(0),
            subscribe_rejections: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            skipped_heartbeats: AtomicU64::new(0),
            attempts_per_second: (0..TRACKED_SECONDS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    pub fn counters(&self) -> FleetCounters {
        FleetCounters {
            up: self.sessions.up(),
            ups: self.sessions.ups(),
            attempts: self.attempts.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            connect_timeouts: self.connect_timeouts.load(Ordering::Relaxed),
            connect_refusals: self.connect_refusals.load(Ordering::Relaxed),
            connect_errors: self.connect_errors.load(Ordering::Relaxed),
            lost_before_up: self.lost_before_up.load(Ordering::Relaxed),
            subscribe_rejections: self.subscribe_rejections.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            skipped_heartbeats: self.skipped_heartbeats.load(Ordering::Relaxed),
        }
    }

    /// Returns the maximum number of connection attempts in one whole second
    /// between `from` and `to`.
    pub fn peak_attempts_per_second(&self, from: Instant, to: Instant) -> u32 {
        let first = self.second_index(from);
        let last = self.second_index(to);
        self.attempts_per_second[first..=last]
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }

    fn second_index(&self, at: Instant) -> usize {
        let second = at.saturating_duration_since(self.started).as_secs() as usize;
        second.min(TRACKED_SECONDS - 1)
    }

    /// Returns the CONNACK refusals so far, by return code.
    pub fn refusal_codes(&self) -> BTreeMap<String, u64> {
        match self.refusal_codes.lock() {
            Ok(codes) => codes.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn record_refusal(&self, code: rumqttc::ConnectReturnCode) {
        self.connect_refusals.fetch_add(1, Ordering::Relaxed);
        let mut codes = match self.refusal_codes.lock() {
            Ok(codes) => codes,
            Err(poisoned) => poisoned.into_inner(),
        };
        *codes.entry(format!("{code:?}")).or_insert(0) += 1;
    }

    fn record_attempt(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let index = self.second_index(Instant::now());
        self.attempts_per_second[index].fetch_add(1, Ordering::Relaxed);
    }
}

/// The command the scenario gives every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Stay connected; reconnect after failures.
    Run,
    /// Close the current session now, then reconnect after a retry delay.
    DropAll,
    /// Close the session and end the node's task.
    Stop,
}

/// The command on the control channel. `epoch` grows with every command, so
/// a node acts on each `DropAll` once.
#[derive(Debug, Clone, Copy)]
struct Control {
    epoch: u64,
    action: Action,
    retry: RetryPolicy,
}

/// A fleet that could not stop in time.
#[derive(Debug, thiserror::Error)]
#[error("{running} of {tasks} fleet tasks still running {deadline:?} after stop")]
pub struct StopTimedOut {
    pub running: usize,
    pub tasks: usize,
    pub deadline: Duration,
}

/// A running fleet.
pub struct Fleet {
    /// Commands to every node. Nodes hold receivers; the fleet sends.
    control_tx: watch::Sender<Control>,
    stats: Arc<FleetStats>,
    size: usize,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// Starts every node at once: the first connection is itself a storm.
    pub fn start(spec: FleetSpec) -> Fleet {
        let size = spec.nodes.len();
        let stats = Arc::new(FleetStats::new());
        let (control_tx, control_rx) = watch::channel(Control {
            epoch: 0,
            action: Action::Run,
            retry: spec.retry,
        });
        let shared = Arc::new(Shared::new(spec, stats.clone()));

        let tasks = spawn_spread(size, shared.spec.tasks, {
            let shared = shared.clone();
            move |index| run_node(shared.clone(), index, control_rx.clone())
        });
        tracing::info!(nodes = size, tasks = tasks.len(), "fleet started");
        Fleet {
            control_tx,
            stats,
            size,
            tasks,
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn stats(&self) -> &FleetStats {
        &self.stats
    }

    /// Closes every node's session at once, as a network cut would; each
    /// node reconnects after its retry delay.
    pub fn drop_all(&self) {
        self.send(Action::DropAll, None);
    }

    /// Switches every node to `retry` without touching its session.
    pub fn set_retry(&self, retry: RetryPolicy) {
        self.send(Action::Run, Some(retry));
    }

    /// Waits until every node is up with a session that came up after the
    /// `ups_before` snapshot, or until `timeout`. Returns the time waited
    /// when all are back.
    pub async fn wait_all_back(&self, ups_before: u64, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        loop {
            let counters = self.stats.counters();
            if counters.up == self.size && counters.ups - ups_before >= self.size as u64 {
                return Some(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes every session and waits up to `deadline` for every task.
    pub async fn stop(self, deadline: Duration) -> Result<(), StopTimedOut> {
        self.send(Action::Stop, None);
        let tasks = self.tasks.len();
        let mut running = tasks;
        let wait_all = async {
            for task in self.tasks {
                let _ = task.await;
                running -= 1;
            }
        };
        match tokio::time::timeout(deadline, wait_all).await {
            Ok(()) => {
                tracing::info!(nodes = self.size, "fleet stopped");
                Ok(())
            }
            Err(_) => Err(StopTimedOut {
                running,
                tasks,
                deadline,
            }),
        }
    }

    fn send(&self, action: Action, retry: Option<RetryPolicy>) {
        self.control_tx.send_modify(|control| {
            control.epoch += 1;
            control.action = action;
            if let Some(retry) = retry {
                control.retry = retry;
            }
        });
    }
}

/// Read-only state shared by every node of a fleet.
struct Shared {
    spec: FleetSpec,
    stats: Arc<FleetStats>,
    /// The encoded will message (`offline` presence), the same for all.
    will: Vec<u8>,
    /// The encoded heartbeat status, the same for all.
    heartbeat: Vec<u8>,
}

impl Shared {
    fn new(spec: FleetSpec, stats: Arc<FleetStats>) -> Self {
        // These fixed messages are valid, so encoding does not fail; the
        // fleet tests decode the presence a centre receives.
        let will = Presence::offline().to_cbor().unwrap_or_default();
        let heartbeat = tollway_topics::samples::heartbeat_status()
            .to_cbor()
            .unwrap_or_default();
        Shared {
            spec,
            stats,
            will,
            heartbeat,
        }
    }

    fn topic(&self, index: usize, kind: NodeKind) -> String {
        Topic::node(self.spec.province, self.spec.nodes[index].clone(), kind).to_string()
    }

    fn options(&self, index: usize) -> MqttOptions {
        mqtt_options(&self.spec, index, &self.will)
    }
}

/// Builds node `index`'s MQTT options: client id = node id, clean session,
/// `will` as its retained presence will, and the spec's TLS or password
/// access.
pub(crate) fn mqtt_options(spec: &FleetSpec, index: usize, will: &[u8]) -> MqttOptions {
    let node = &spec.nodes[index];
    let addr = spec.broker;
    let mut options = MqttOptions::new(node.as_str(), addr.ip().to_string(), addr.port());
    options.set_keep_alive(spec.keep_alive);
    options.set_clean_session(true);
    options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    let presence = Topic::node(spec.province, node.clone(), NodeKind::Presence).to_string();
    options.set_last_will(LastWill::new(
        presence,
        will.to_vec(),
        QoS::AtLeastOnce,
        true,
    ));
    match &spec.access {
        Access::Tls(configs) => {
            options.set_transport(rumqttc::Transport::tls_with_config(
                TlsConfiguration::Rustls(configs[index].clone()),
            ));
        }
        Access::Password { username, password } => {
            options.set_credentials(username.clone(), password.clone());
        }
    }
    options
}

/// The retry delays of one node.
pub(crate) enum Retry {
    Jittered(Backoff),
    Fixed(Duration),
}

impl Retry {
    pub(crate) fn new(policy: RetryPolicy) -> Self {
        match policy {
            RetryPolicy::Jittered(config) => Retry::Jittered(Backoff::new(config)),
            RetryPolicy::Fixed(delay) => Retry::Fixed(delay),
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        match self {
            Retry::Jittered(backoff) => backoff.next_delay(),
            Retry::Fixed(delay) => *delay,
        }
    }

    pub(crate) fn reset(&mut self) {
        if let Retry::Jittered(backoff) = self {
            backoff.reset();
        }
    }
}

/// Runs one node until the fleet stops.
async fn run_node(shared: Arc<Shared>, index: usize, mut control_rx: watch::Receiver<Control>) {
    let mut control = *control_rx.borrow_and_update();
    let mut retry = Retry::new(control.retry);
    let mut delay: Option<Duration> = None;

    loop {
        // Paragraph 1: wait out the retry delay, still obeying commands.
        if let Some(wait) = delay.take() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                changed = control_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let next = *control_rx.borrow_and_update();
                    if next.action == Action::Stop {
                        return;
                    }
                    if next.retry != control.retry {
                        retry = Retry::new(next.retry);
                    }
                    control = next;
                    delay = Some(retry.next_delay());
                    continue;
                }
            }
        }

        // Paragraph 2: run one session until it ends or a command ends it.
        let reached_up = AtomicBool::new(false);
        let ended_by_command = {
            let session = session(&shared, index, &reached_up);
            tokio::pin!(session);
            loop {
                tokio::select! {
                    end = &mut session => {
                        end.record(&shared, index, reached_up.load(Ordering::Relaxed));
                        break false;
                    }
                    changed = control_rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let next = *control_rx.borrow_and_update();
                        if next.retry != control.retry {
                            retry = Retry::new(next.retry);
                        }
                        control = next;
                        match next.action {
                            Action::Stop => return,
                            Action::DropAll => break true,
                            Action::Run => continue,
                        }
                    }
                }
            }
        };

        // Paragraph 3: a session that was up starts the back-off over.
        if reached_up.load(Ordering::Relaxed) {
            retry.reset();
        }
        if ended_by_command {
            tracing::trace!(node = %shared.spec.nodes[index], "session dropped on command");
        }
        delay = Some(retry.next_delay());
    }
}

/// The way a session ended by itself.
enum SessionEnd {
    /// TCP, TLS or CONNECT failed, or CONNACK refused the node.
    ConnectFailed(ConnectionError),
    /// The broker refused one of the node's own subscriptions.
    SubscribeRejected,
    /// The session was up and then failed.
    Lost(ConnectionError),
}

impl SessionEnd {
    fn record(&self, shared: &Shared, index: usize, was_up: bool) {
        let node = &shared.spec.nodes[index];
        let stats = &shared.stats;
        match self {
            SessionEnd::ConnectFailed(err) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                match err {
                    ConnectionError::NetworkTimeout => {
                        stats.connect_timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                    ConnectionError::ConnectionRefused(code) => stats.record_refusal(*code),
                    _ => {
                        stats.connect_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tracing::debug!(%node, error = %err, "connection attempt failed");
            }
            SessionEnd::SubscribeRejected => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                stats.subscribe_rejections.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%node, "broker rejected the node's own subscriptions");
            }
            SessionEnd::Lost(err) if was_up => {
                stats.lost.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%node, error = %err, "session lost");
            }
            SessionEnd::Lost(err) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                stats.lost_before_up.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%node, error = %err, "session failed before its SUBACK");
            }
        }
    }
}

/// Connects one node and keeps its session until it fails. Dropping the
/// future closes the socket without a DISCONNECT, so the broker publishes
/// the node's will.
async fn session(shared: &Shared, index: usize, reached_up: &AtomicBool) -> SessionEnd {
    let (client, mut eventloop) = AsyncClient::new(shared.options(index), REQUEST_CHANNEL_CAPACITY);
    let mut network = NetworkOptions::new();
    network.set_connection_timeout(shared.spec.connect_timeout.as_secs().max(1));
    eventloop.set_network_options(network);

    // The first poll connects and returns the CONNACK or the error.
    shared.stats.record_attempt();
    // A refused CONNACK comes back as an error too.
    if let Err(err) = eventloop.poll().await {
        return SessionEnd::ConnectFailed(err);
    }

    // Requests go through the client's channel and are sent by the polls
    // below; nothing here awaits the event loop.
    let since_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    // NOTE: simulated nodes carry one label. Real nodes carry four or five
    // (gantry, station, section, arch), about 80 more bytes per presence.
    let labels = std::collections::BTreeMap::from([("role".to_string(), "gantry".to_string())]);
    let online = Presence::online(since_ms, env!("CARGO_PKG_VERSION").to_string(), labels)
        .to_cbor()
        .unwrap_or_default();
    let presence = shared.topic(index, NodeKind::Presence);
    let _ = client.try_publish(presence, QoS::AtLeastOnce, true, online);
    let filters = [NodeKind::Desired, NodeKind::Command, NodeKind::RecordsAck]
        .map(|kind| SubscribeFilter::new(shared.topic(index, kind), QoS::AtLeastOnce));
    let _ = client.try_subscribe_many(filters);

    let mut heartbeat = shared.spec.heartbeat.map(|period| {
        // A random phase keeps a fleet's heartbeats from arriving together.
        let phase = period.mul_f64(phase_fraction(index));
        tokio::time::interval_at(tokio::time::Instant::now() + phase, period)
    });
    let status_topic = shared.topic(index, NodeKind::Status);
    let mut _up: Option<UpGuard<'_>> = None;

    loop {
        tokio::select! {
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let granted = ack
                        .return_codes
                        .iter()
                        .all(|code| matches!(code, SubscribeReasonCode::Success(_)));
                    if !granted {
                        return SessionEnd::SubscribeRejected;
                    }
                    _up = Some(shared.stats.sessions.guard());
                    reached_up.store(true, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(err) => return SessionEnd::Lost(err),
            },
            _ = tick(&mut heartbeat) => {
                let sent = client.try_publish(
                    status_topic.as_str(),
                    QoS::AtLeastOnce,
                    false,
                    shared.heartbeat.clone(),
                );
                if sent.is_err() {
                    shared.stats.skipped_heartbeats.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Waits for the next heartbeat, or forever when there is none.
async fn tick(heartbeat: &mut Option<tokio::time::Interval>) {
    match heartbeat {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// A fraction in [0, 1) spread evenly over the fleet by node index (the
/// golden-ratio sequence), so phases differ without a random generator.
fn phase_fraction(index: usize) -> f64 {
    (index as f64 * 0.618_033_988_749_895).fract()
}
