//! A simulated fleet that reacts to desired states the way the edge daemon
//! does. On every desired state it receives, a node publishes a status for
//! that generation with each app running. Nodes connect as the other fleets
//! do (client id = node id, clean session, `offline` presence as will,
//! retained `online` presence with the label `role=gantry`, then one
//! SUBSCRIBE for `desired`, `cmd` and `records/ack`), and reconnect with the
//! daemon's back-off.
//!
//! The scenario names a target image. The first time a node publishes a
//! status for a desired state that runs the target image, it stores the
//! time since the target was set. That is the moment the node reports the
//! new generation. A node applies nothing, so the figure is the control
//! plane's own: the controller, the broker and the node's status.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{
    AsyncClient, Event, NetworkOptions, Packet, QoS, SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollway_topics::{
    AppState, AppStatus, DesiredState, Message, NodeKind, NodeStatus, Presence, Topic,
};

use crate::fleet::{FleetSpec, Retry, mqtt_options};
use crate::sessions::{UpCounter, UpGuard, spawn_spread};

/// Capacity of each node's rumqttc request channel: a presence, a
/// subscription and a few statuses. A status that does not fit is counted
/// and skipped, and the node reports again on the next desired state.
const REQUEST_CHANNEL_CAPACITY: usize = 8;

/// The image a change waits for and when it was published.
#[derive(Debug, Clone)]
struct Target {
    image: String,
    since: Instant,
}

/// Counters and per-node report times shared by the nodes.
pub struct DesiredStats {
    pub sessions: UpCounter,
    /// Desired states received.
    pub desired_received: AtomicU64,
    /// Desired states that did not decode.
    pub desired_invalid: AtomicU64,
    /// Statuses published.
    pub statuses_sent: AtomicU64,
    /// Statuses skipped because the request channel was full.
    pub statuses_skipped: AtomicU64,
    /// Sessions lost or connection attempts failed.
    pub session_failures: AtomicU64,
    target: Mutex<Option<Target>>,
    /// Per node: microseconds from the target's publish to the node's
    /// status for it, plus one; 0 while the node has not reported it.
    reported_us: Vec<AtomicU64>,
}

impl DesiredStats {
    fn new(nodes: usize) -> Self {
        DesiredStats {
            sessions: UpCounter::default(),
            desired_received: AtomicU64::new(0),
            desired_invalid: AtomicU64::new(0),
            statuses_sent: AtomicU64::new(0),
            statuses_skipped: AtomicU64::new(0),
            session_failures: AtomicU64::new(0),
            target: Mutex::new(None),
            reported_us: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Returns the nodes that reported the target so far.
    pub fn reported(&self) -> usize {
        self.reported_us
            .iter()
            .filter(|us| us.load(Ordering::Relaxed) > 0)
            .count()
    }

    /// Returns each reporting node's time from the target's publish to its
    /// status, sorted, in seconds.
    pub fn report_times(&self) -> Vec<f64> {
        let mut times: Vec<f64> = self
            .reported_us
            .iter()
            .map(|us| us.load(Ordering::Relaxed))
            .filter(|&us| us > 0)
            .map(|us| (us - 1) as f64 / 1e6)
            .collect();
        times.sort_by(f64::total_cmp);
        times
    }

    fn target(&self) -> Option<Target> {
        match self.target.lock() {
            Ok(target) => target.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Records the report time of node `index` when `images`, the images
    /// of the desired state it just reported, include the target.
    fn note_report(&self, index: usize, images: &[&str]) {
        let Some(target) = self.target() else {
            return;
        };
        if !images.contains(&target.image.as_str()) {
            return;
        }
        let us = target.since.elapsed().as_micros() as u64 + 1;
        let _ =
            self.reported_us[index].compare_exchange(0, us, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// A running fleet of nodes that report on desired states.
pub struct DesiredFleet {
    stop_tx: watch::Sender<bool>,
    stats: Arc<DesiredStats>,
    size: usize,
    tasks: Vec<JoinHandle<()>>,
}

impl DesiredFleet {
    /// Starts every node at once.
    pub fn start(spec: FleetSpec) -> Self {
        let size = spec.nodes.len();
        let stats = Arc::new(DesiredStats::new(size));
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            will: Presence::offline().to_cbor().unwrap_or_default(),
            spec,
            stats: stats.clone(),
        });
        let tasks = spawn_spread(size, shared.spec.tasks, {
            let shared = shared.clone();
            move |index| run_node(shared.clone(), index, stop_rx.clone())
        });
        tracing::info!(
            nodes = size,
            tasks = tasks.len(),
            "desired-state fleet started"
        );
        DesiredFleet {
            stop_tx,
            stats,
            size,
            tasks,
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn stats(&self) -> &DesiredStats {
        &self.stats
    }

    /// Starts waiting for `image`: clears every node's report time and
    /// measures from now. Call it just before publishing the change.
    pub fn set_target(&self, image: &str) {
        for us in &self.stats.reported_us {
            us.store(0, Ordering::Relaxed);
        }
        let target = Target {
            image: image.to_string(),
            since: Instant::now(),
        };
        match self.stats.target.lock() {
            Ok(mut slot) => *slot = Some(target),
            Err(poisoned) => *poisoned.into_inner() = Some(target),
        }
    }

    /// Waits until every node is up, or `timeout`; returns whether all are.
    pub async fn wait_all_up(&self, timeout: Duration) -> bool {
        self.stats.sessions.wait_all_up(self.size, timeout).await
    }

    /// Waits until every node reported the target, or `timeout`; returns
    /// whether all did.
    pub async fn wait_all_reported(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.stats.reported() < self.size {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Closes every session and waits up to `deadline` for every task;
    /// returns whether all ended in time.
    pub async fn stop(self, deadline: Duration) -> bool {
        self.stop_tx.send_replace(true);
        let wait_all = futures_util::future::join_all(self.tasks);
        let stopped = tokio::time::timeout(deadline, wait_all).await.is_ok();
        tracing::info!(nodes = self.size, stopped, "desired-state fleet stopped");
        stopped
    }
}

struct Shared {
    spec: FleetSpec,
    will: Vec<u8>,
    stats: Arc<DesiredStats>,
}

/// Runs one node until the fleet stops.
async fn run_node(shared: Arc<Shared>, index: usize, mut stop_rx: watch::Receiver<bool>) {
    let mut retry = Retry::new(shared.spec.retry);
    loop {
        let was_up = tokio::select! {
            was_up = session(&shared, index) => was_up,
            _ = stop_rx.wait_for(|stop| *stop) => return,
        };
        shared
            .stats
            .session_failures
            .fetch_add(1, Ordering::Relaxed);
        if was_up {
            retry.reset();
        }
        tokio::select! {
            _ = tokio::time::sleep(retry.next_delay()) => {}
            _ = stop_rx.wait_for(|stop| *stop) => return,
        }
    }
}

/// Runs one session until it fails; returns whether it was up.
async fn session(shared: &Shared, index: usize) -> bool {
    let spec = &shared.spec;
    let node = &spec.nodes[index];
    let options = mqtt_options(spec, index, &shared.will);
    let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CHANNEL_CAPACITY);
    let mut network = NetworkOptions::new();
    network.set_connection_timeout(spec.connect_timeout.as_secs().max(1));
    eventloop.set_network_options(network);

    if let Err(err) = eventloop.poll().await {
        tracing::debug!(%node, error = %err, "connection attempt failed");
        return false;
    }
    let since_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let labels = BTreeMap::from([("role".to_string(), "gantry".to_string())]);
    let online = Presence::online(since_ms, env!("CARGO_PKG_VERSION").to_string(), labels)
        .to_cbor()
        .unwrap_or_default();
    let topic = |kind| Topic::node(spec.province, node.clone(), kind).to_string();
    let _ = client.try_publish(topic(NodeKind::Presence), QoS::AtLeastOnce, true, online);
    let filters = [NodeKind::Desired, NodeKind::Command, NodeKind::RecordsAck]
        .map(|kind| SubscribeFilter::new(topic(kind), QoS::AtLeastOnce));
    let _ = client.try_subscribe_many(filters);
    let desired_topic = topic(NodeKind::Desired);
    let status_topic = topic(NodeKind::Status);

    let mut _up: Option<UpGuard<'_>> = None;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let granted = ack
                    .return_codes
                    .iter()
                    .all(|code| matches!(code, SubscribeReasonCode::Success(_)));
                if !granted {
                    tracing::warn!(%node, "broker rejected the node's own subscriptions");
                    return _up.is_some();
                }
                _up = Some(shared.stats.sessions.guard());
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == desired_topic => {
                shared
                    .stats
                    .desired_received
                    .fetch_add(1, Ordering::Relaxed);
                let desired = match DesiredState::from_cbor(&publish.payload) {
                    Ok(desired) => desired,
                    Err(err) => {
                        shared.stats.desired_invalid.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%node, error = %err, "invalid desired state");
                        continue;
                    }
                };
                let status = running_status(&desired).to_cbor().unwrap_or_default();
                let sent =
                    client.try_publish(status_topic.as_str(), QoS::AtLeastOnce, false, status);
                if sent.is_err() {
                    shared
                        .stats
                        .statuses_skipped
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                shared.stats.statuses_sent.fetch_add(1, Ordering::Relaxed);
                // NOTE: the time is taken when the status is queued on the
                // node's connection, not when the controller reads it. The
                // scenario checks the controller's view only at the end.
                let images: Vec<&str> = desired.apps.iter().map(|app| app.image.as_str()).collect();
                shared.stats.note_report(index, &images);
            }
            Ok(_) => {}
            Err(err) => {
                tracing::debug!(%node, error = %err, "session lost");
                return _up.is_some();
            }
        }
    }
}

/// Builds the status a node sends once it runs `desired`: every app running.
fn running_status(desired: &DesiredState) -> NodeStatus {
    NodeStatus {
        generation: desired.generation,
        apps: desired
            .apps
            .iter()
            .map(|spec| AppStatus {
                name: spec.name.to_string(),
                state: AppState::Running,
                restarts: 0,
                reason: None,
                next_image_ready: spec.next_image.is_some(),
                last_switch_ms: None,
            })
            .collect(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..NodeStatus::default()
    }
}
