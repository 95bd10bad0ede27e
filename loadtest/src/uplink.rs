//! Simulated edge nodes that send toll records the way the edge daemon's
//! uplink does, for scenarios that count records end to end.
//!
//! Each node produces realistic transactions (the toll app's generator) at
//! its share of the fleet's rate, numbers them from seq 1 and keeps every
//! one in an in-memory outbox until the centre acknowledges it. It sends
//! zstd-compressed `RecordBatch`es of up to `batch_records`, or fewer once
//! the oldest has waited `linger`, on its
//! `records` topic at QoS 1, with at most `window` batches unacknowledged,
//! and moves its watermark on each `RecordAck`. After a reconnect, or when
//! the oldest batch waits longer than `resend_timeout`, it sends again
//! from the watermark, as the daemon does. Its connection uses mutual TLS
//! with its own certificate, a retained `online` presence and the
//! `offline` will, and the daemon's decorrelated-jitter back-off.
//!
//! One tokio task per node: the scenarios that use this module run tens to
//! hundreds of nodes, not the storm's thousands.
//!
//! NOTE: [`crate::record_fleet`] simulates the same uplink for the
//! `records` scenario, many nodes per task and with latency histograms.
//! The outbox, batching and resend logic exist in both, and a change to
//! the daemon's uplink has to be made in both until they are one fleet.
//!
//! Bounds: the in-memory outbox contains what the node produced and the
//! centre has not acknowledged. Once it contains `max_outbox` records, the
//! node rejects new ones and counts them, as the daemon rejects records at
//! its disk cap.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, TlsConfiguration};
use rustls::ClientConfig;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep};
use tollway_runtime::{Backoff, BackoffConfig};
use tollway_toll_app::generator::Generator;
use tollway_topics::limits::MAX_PACKET_BYTES;
use tollway_topics::{
    Compression, Message, NodeId, NodeKind, Presence, Province, RecordAck, RecordBatch, TollRecord,
    Topic,
};

/// How often a node produces records and looks at its window.
const TICK: Duration = Duration::from_millis(100);

/// Settings of the simulated nodes.
#[derive(Debug, Clone)]
pub struct UplinkSpec {
    pub province: Province,
    /// The broker's node listener (mutual TLS).
    pub broker: SocketAddr,
    pub nodes: Vec<NodeId>,
    /// One TLS client configuration per node, in the order of `nodes`.
    pub tls: Vec<Arc<ClientConfig>>,
    /// Records per second of the whole fleet, shared evenly by the nodes.
    pub rate: f64,
    /// Records per batch at most (the daemon's default is 500).
    pub batch_records: usize,
    /// Time a batch that is not full waits for more records (the daemon's
    /// `linger_ms`, default 500 ms). A full batch leaves at once.
    pub linger: Duration,
    /// Batches sent and not acknowledged at most (the daemon's default is 4).
    pub window: usize,
    /// Wait for an acknowledgement of the oldest batch before sending
    /// again from the watermark (the daemon's default is 30 s).
    pub resend_timeout: Duration,
    /// Unacknowledged records a node keeps before it rejects new ones.
    pub max_outbox: usize,
    pub keep_alive: Duration,
    pub backoff: BackoffConfig,
}

/// Live counters of one node, read by the scenario while it runs.
#[derive(Debug, Default)]
struct Progress {
    produced: AtomicU64,
    acknowledged: AtomicU64,
}

/// The tally of one node, once it stopped.
#[derive(Debug, Clone, Serialize)]
pub struct NodeTally {
    pub node: String,
    pub gantry: String,
    /// Seq of the last record produced; records 1 to this exist.
    pub last_seq: u64,
    /// Highest seq the centre acknowledged.
    pub acknowledged_through: u64,
    /// Sum of the produced records' fees and paid fees, in fen.
    pub fee_sum: u64,
    pub pay_fee_sum: u64,
    /// Records not produced because the outbox was full.
    pub refused: u64,
    /// Sessions after the first one.
    pub reconnects: u64,
    /// Batches sent again from the watermark.
    pub resends: u64,
}

/// A running fleet of uplink nodes.
pub struct UplinkFleet {
    producing: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    progress: Arc<Vec<Progress>>,
    tasks: Vec<JoinHandle<NodeTally>>,
}

impl UplinkFleet {
    /// Starts every node; they connect at once and produce records until
    /// [`UplinkFleet::stop_producing`].
    pub fn start(spec: UplinkSpec) -> UplinkFleet {
        let (producing, producing_rx) = watch::channel(true);
        let (stop, stop_rx) = watch::channel(false);
        let progress: Arc<Vec<Progress>> =
            Arc::new((0..spec.nodes.len()).map(|_| Progress::default()).collect());
        let spec = Arc::new(spec);

        let tasks = (0..spec.nodes.len())
            .map(|index| {
                let node = Node::new(spec.clone(), index, progress.clone());
                tokio::spawn(node.run(producing_rx.clone(), stop_rx.clone()))
            })
            .collect();
        UplinkFleet {
            producing,
            stop,
            progress,
            tasks,
        }
    }

    /// Records produced so far by all nodes.
    pub fn produced(&self) -> u64 {
        self.progress
            .iter()
            .map(|p| p.produced.load(Ordering::Relaxed))
            .sum()
    }

    /// Records acknowledged so far by the centre, over all nodes.
    pub fn acknowledged(&self) -> u64 {
        self.progress
            .iter()
            .map(|p| p.acknowledged.load(Ordering::Relaxed))
            .sum()
    }

    /// Nodes stop producing; they keep sending what they hold.
    pub fn stop_producing(&self) {
        let _ = self.producing.send(false);
    }

    /// Waits until every produced record is acknowledged, or `timeout`.
    /// Returns whether everything was acknowledged.
    pub async fn wait_all_acknowledged(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.acknowledged() == self.produced() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every node and returns their tallies, in node order.
    pub async fn stop(self) -> Vec<NodeTally> {
        let _ = self.producing.send(false);
        let _ = self.stop.send(true);
        let mut tallies = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            match task.await {
                Ok(tally) => tallies.push(tally),
                Err(err) => tracing::error!(%err, "an uplink node task failed"),
            }
        }
        tallies
    }
}

/// One simulated node's outbox and link.
struct Node {
    spec: Arc<UplinkSpec>,
    index: usize,
    progress: Arc<Vec<Progress>>,
    generator: Generator,
    /// Produced and not yet acknowledged, in seq order, with the time each
    /// was produced.
    outbox: VecDeque<(u64, Instant, TollRecord)>,
    next_seq: u64,
    /// Records offered by the simulated app, produced or refused.
    offered: u64,
    /// Highest seq acknowledged.
    watermark: u64,
    /// Highest seq sent in this session.
    sent_through: u64,
    /// When the oldest unacknowledged batch was sent.
    waiting_since: Option<Instant>,
    tally: NodeTally,
}

impl Node {
    fn new(spec: Arc<UplinkSpec>, index: usize, progress: Arc<Vec<Progress>>) -> Self {
        let gantry = gantry_id(index);
        let generator = Generator::new(
            gantry.clone(),
            spec.province.code(),
            StdRng::seed_from_u64(index as u64),
        );
        let tally = NodeTally {
            node: spec.nodes[index].to_string(),
            gantry,
            last_seq: 0,
            acknowledged_through: 0,
            fee_sum: 0,
            pay_fee_sum: 0,
            refused: 0,
            reconnects: 0,
            resends: 0,
        };
        Node {
            spec,
            index,
            progress,
            generator,
            outbox: VecDeque::new(),
            next_seq: 1,
            offered: 0,
            watermark: 0,
            sent_through: 0,
            waiting_since: None,
            tally,
        }
    }

    fn topic(&self, kind: NodeKind) -> String {
        Topic::node(
            self.spec.province,
            self.spec.nodes[self.index].clone(),
            kind,
        )
        .to_string()
    }

    async fn run(
        mut self,
        mut producing: watch::Receiver<bool>,
        mut stop: watch::Receiver<bool>,
    ) -> NodeTally {
        let (client, mut eventloop) = AsyncClient::new(self.options(), self.spec.window + 8);
        let mut backoff = Backoff::new(self.spec.backoff);
        let mut ticker = interval(TICK);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let per_node_rate = self.spec.rate / self.spec.nodes.len().max(1) as f64;
        let started = Instant::now();
        let mut connected = false;
        let mut sessions = 0u64;

        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = ticker.tick() => {
                    if *producing.borrow_and_update() {
                        let due = (started.elapsed().as_secs_f64() * per_node_rate) as u64;
                        self.produce_until(due);
                    }
                    if connected {
                        self.check_resend_timeout();
                        self.send_window(&client);
                    }
                }
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        sessions += 1;
                        backoff.reset();
                        self.on_connected(&client, sessions);
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        self.on_ack(&publish.payload);
                        self.send_window(&client);
                    }
                    Ok(_) => {}
                    Err(err) => {
                        connected = false;
                        let delay = backoff.next_delay();
                        tracing::debug!(node = %self.tally.node, %err, ?delay, "uplink node lost its session; reconnecting after the back-off");
                        tokio::select! {
                            _ = stop.changed() => break,
                            _ = sleep(delay) => {}
                        }
                    }
                },
            }
        }

        let _ = client.try_disconnect();
        self.tally.last_seq = self.next_seq - 1;
        self.tally.acknowledged_through = self.watermark;
        self.tally.reconnects = sessions.saturating_sub(1);
        self.tally
    }

    fn options(&self) -> MqttOptions {
        let node = &self.spec.nodes[self.index];
        let addr = self.spec.broker;
        let mut options = MqttOptions::new(node.as_str(), addr.ip().to_string(), addr.port());
        options.set_keep_alive(self.spec.keep_alive);
        options.set_clean_session(true);
        options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        options.set_last_will(LastWill::new(
            self.topic(NodeKind::Presence),
            Presence::offline().to_cbor().unwrap_or_default(),
            QoS::AtLeastOnce,
            true,
        ));
        options.set_transport(rumqttc::Transport::tls_with_config(
            TlsConfiguration::Rustls(self.spec.tls[self.index].clone()),
        ));
        options
    }

    /// Starts a new session: publishes presence, subscribes to
    /// acknowledgements and sends the unacknowledged outbox again from the
    /// watermark.
    fn on_connected(&mut self, client: &AsyncClient, sessions: u64) {
        let presence = Presence::online(
            unix_ms(),
            env!("CARGO_PKG_VERSION").to_string(),
            BTreeMap::from([("gantry".to_string(), self.tally.gantry.clone())]),
        );
        if let Ok(payload) = presence.to_cbor() {
            let _ = client.try_publish(
                self.topic(NodeKind::Presence),
                QoS::AtLeastOnce,
                true,
                payload,
            );
        }
        let _ = client.try_subscribe(self.topic(NodeKind::RecordsAck), QoS::AtLeastOnce);
        if sessions > 1 && self.sent_through > self.watermark {
            self.tally.resends += 1;
        }
        self.sent_through = self.watermark;
        self.waiting_since = None;
        self.send_window(client);
    }

    /// Offers records until `due` have been offered since the start.
    /// A record offered while the outbox is full is rejected and counted,
    /// as the daemon rejects an app's record at its disk cap. It is not
    /// produced later.
    fn produce_until(&mut self, due: u64) {
        while self.offered < due {
            self.offered += 1;
            if self.outbox.len() >= self.spec.max_outbox {
                self.tally.refused += 1;
                continue;
            }
            let record = self.generator.next_record(unix_ms());
            self.tally.fee_sum += u64::from(record.fee);
            self.tally.pay_fee_sum += u64::from(record.pay_fee);
            self.outbox
                .push_back((self.next_seq, Instant::now(), record));
            self.next_seq += 1;
        }
        self.progress[self.index]
            .produced
            .store(self.next_seq - 1, Ordering::Relaxed);
    }

    fn check_resend_timeout(&mut self) {
        if let Some(since) = self.waiting_since
            && since.elapsed() >= self.spec.resend_timeout
        {
            tracing::debug!(node = %self.tally.node, watermark = self.watermark, "no acknowledgement within the resend timeout; sending again from the watermark");
            self.tally.resends += 1;
            self.sent_through = self.watermark;
            self.waiting_since = None;
        }
    }

    /// Sends batches while the window has room and records wait.
    fn send_window(&mut self, client: &AsyncClient) {
        let batch = self.spec.batch_records as u64;
        let window_records = batch * self.spec.window as u64;
        loop {
            let in_flight = self.sent_through - self.watermark;
            let first = self.sent_through + 1;
            let available = (self.next_seq - first).min(batch);
            if available == 0 || in_flight + available > window_records {
                return;
            }
            let offset = (first - self.watermark - 1) as usize;
            let lingering = self
                .outbox
                .get(offset)
                .is_some_and(|(_, produced, _)| produced.elapsed() < self.spec.linger);
            if available < batch && lingering {
                return;
            }
            let records: Vec<TollRecord> = self
                .outbox
                .iter()
                .skip(offset)
                .take(available as usize)
                .map(|(_, _, record)| record.clone())
                .collect();
            let batch = RecordBatch {
                node: self.spec.nodes[self.index].clone(),
                first_seq: first,
                records,
                compression: Compression::Zstd,
            };
            let payload = match batch.to_cbor() {
                Ok(payload) => payload,
                Err(err) => {
                    tracing::error!(node = %self.tally.node, first_seq = first, %err, "cannot encode a record batch");
                    return;
                }
            };
            if client
                .try_publish(
                    self.topic(NodeKind::Records),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .is_err()
            {
                // The request channel is full; the next tick tries again.
                return;
            }
            self.sent_through = first + available - 1;
            self.waiting_since.get_or_insert_with(Instant::now);
        }
    }

    fn on_ack(&mut self, payload: &[u8]) {
        let ack = match RecordAck::from_cbor(payload) {
            Ok(ack) => ack,
            Err(err) => {
                tracing::warn!(node = %self.tally.node, %err, "undecodable record acknowledgement");
                return;
            }
        };
        let through = ack.stored_through.min(self.next_seq - 1);
        if through <= self.watermark {
            return;
        }
        while self
            .outbox
            .front()
            .is_some_and(|(seq, _, _)| *seq <= through)
        {
            self.outbox.pop_front();
        }
        self.watermark = through;
        self.sent_through = self.sent_through.max(through);
        self.waiting_since = (self.sent_through > self.watermark).then(Instant::now);
        self.progress[self.index]
            .acknowledged
            .store(through, Ordering::Relaxed);
    }
}

/// Returns the gantry id of node `index`: one gantry per node, province 44.
pub fn gantry_id(index: usize) -> String {
    format!("G0044{index:07}010")
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
