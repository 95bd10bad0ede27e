//! A simulated fleet that sends toll records the way the edge daemon's
//! uplink does. Records numbered from seq 1 enter each node's outbox. They
//! leave in batches of up to `batch_records` on the node's `records` topic
//! at QoS 1, and stay in a bounded window of unacknowledged batches until
//! the centre's `RecordAck` covers them. The broker's PUBACK is not custody and
//! is ignored. When the oldest batch waits past the resend timeout, or the
//! session comes up again after a loss, every unacknowledged batch is sent
//! again from the acknowledgement watermark (go-back-N); the ingest drops
//! the duplicates by (node, seq).
//!
//! Records come from the toll app's generator, one gantry per node, so no
//! two records are alike. Each record's latency runs from the moment it
//! enters the outbox to the acknowledgement that covers it.
//!
//! Differences from the daemon: the outbox is in memory, not RocksDB, and
//! batch boundaries are fixed when a batch is first sent, so a resend
//! repeats the same batches. The ingest acknowledges whole batches, so the
//! watermark always falls on a batch boundary and the records resent are
//! the same as the daemon's.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, NetworkOptions, Packet, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollway_toll_app::generator::Generator;
use tollway_topics::{Compression, Message, NodeKind, Presence, RecordAck, RecordBatch, Topic};

use crate::fleet::{FleetSpec, Retry, mqtt_options};
use crate::sessions::{UpCounter, UpGuard, spawn_spread, task_count};

/// Interval at which a node in rate mode creates the records that are due.
const CREATE_TICK: Duration = Duration::from_millis(100);
/// Interval at which a node checks its window for an overdue batch, as the
/// daemon's uplink does.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// Largest latency the histogram holds, in microseconds (one hour); longer
/// ones are recorded as one hour.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// The speed at which nodes create records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Records per second for each node.
    Rate(f64),
    /// A node creates a full batch whenever its window has room, so the
    /// fleet sends as fast as acknowledgements allow.
    Ceiling,
}

/// The uplink settings of every node, as in the daemon's `uplink` section.
#[derive(Debug, Clone, Copy)]
pub struct UplinkSettings {
    /// Records per batch at most.
    pub batch_records: usize,
    /// Batches sent and not yet acknowledged, at most.
    pub window: usize,
    /// Time a partial batch waits for more records.
    pub linger: Duration,
    /// Time the oldest batch waits for its acknowledgement before every
    /// unacknowledged batch is sent again.
    pub resend_timeout: Duration,
    /// Compress batches with zstd.
    pub compress: bool,
}

/// The phase every node is in, set by the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connect and stay connected; create nothing yet.
    Connect,
    /// Create records at the pace and send them.
    Create,
    /// Create nothing more; keep sending until everything is acknowledged.
    Drain,
    /// Close the session and end.
    Stop,
}

/// Counters shared by the nodes of a record fleet.
pub struct UplinkStats {
    started: Instant,
    pub sessions: UpCounter,
    /// Sessions lost after they were up, and failed connection attempts.
    pub session_failures: AtomicU64,
    /// Records created (entered an outbox).
    pub created: AtomicU64,
    /// Records acknowledged by the centre.
    pub acknowledged: AtomicU64,
    /// Batches published the first time.
    pub batches_sent: AtomicU64,
    /// Batches published again after a timeout or a reconnect.
    pub batches_resent: AtomicU64,
    /// Acknowledgements for seqs not yet created, ignored as the daemon does.
    pub acks_beyond_created: AtomicU64,
    /// Acknowledgements that did not decode.
    pub acks_invalid: AtomicU64,
    /// Records acknowledged in each second since the fleet started.
    acknowledged_per_second: Vec<AtomicU64>,
    /// Each node's last created seq, by node index.
    created_through: Vec<AtomicU64>,
    /// Each node's acknowledgement watermark, by node index.
    acknowledged_through: Vec<AtomicU64>,
}

impl UplinkStats {
    fn new(nodes: usize, tracked_seconds: usize) -> Self {
        UplinkStats {
            started: Instant::now(),
            sessions: UpCounter::default(),
            session_failures: AtomicU64::new(0),
            created: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            batches_sent: AtomicU64::new(0),
            batches_resent: AtomicU64::new(0),
            acks_beyond_created: AtomicU64::new(0),
            acks_invalid: AtomicU64::new(0),
            acknowledged_per_second: (0..tracked_seconds.max(1))
                .map(|_| AtomicU64::new(0))
                .collect(),
            created_through: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            acknowledged_through: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn load(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Records acknowledged between `from` and `to`, in whole seconds since
    /// the fleet started (`to` excluded).
    pub fn acknowledged_between(&self, from: Instant, to: Instant) -> u64 {
        let first = self.second_index(from);
        let last = self.second_index(to);
        self.acknowledged_per_second[first..last]
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    /// The last created seq and the acknowledgement watermark of node
    /// `index`.
    pub fn node_seqs(&self, index: usize) -> (u64, u64) {
        (
            self.created_through[index].load(Ordering::Relaxed),
            self.acknowledged_through[index].load(Ordering::Relaxed),
        )
    }

    fn second_index(&self, at: Instant) -> usize {
        let second = at.saturating_duration_since(self.started).as_secs() as usize;
        second.min(self.acknowledged_per_second.len() - 1)
    }

    fn record_acknowledged(&self, records: u64) {
        self.acknowledged.fetch_add(records, Ordering::Relaxed);
        let index = self.second_index(Instant::now());
        self.acknowledged_per_second[index].fetch_add(records, Ordering::Relaxed);
    }
}

/// A running record fleet.
pub struct RecordFleet {
    phase_tx: watch::Sender<Phase>,
    stats: Arc<UplinkStats>,
    /// One latency histogram per task, merged when read.
    latencies: Vec<Arc<Mutex<Histogram<u64>>>>,
    size: usize,
    tasks: Vec<JoinHandle<()>>,
}

impl RecordFleet {
    /// Starts every node in [`Phase::Connect`]. `tracked_seconds` bounds the
    /// per-second acknowledgement counts; later ones count in the last
    /// second.
    pub fn start(
        spec: FleetSpec,
        settings: UplinkSettings,
        pace: Pace,
        seed: u64,
        tracked_seconds: usize,
    ) -> RecordFleet {
        let size = spec.nodes.len();
        let stats = Arc::new(UplinkStats::new(size, tracked_seconds));
        let (phase_tx, phase_rx) = watch::channel(Phase::Connect);
        let will = Presence::offline().to_cbor().unwrap_or_default();
        let shared = Arc::new(Shared {
            spec,
            settings,
            pace,
            seed,
            will,
            stats: stats.clone(),
        });

        // One latency histogram per task, so that nodes on different tasks
        // do not contend for one lock.
        let task_count = task_count(size, shared.spec.tasks);
        let latencies: Vec<_> = (0..task_count)
            .map(|_| Arc::new(Mutex::new(new_histogram())))
            .collect();
        let tasks = spawn_spread(size, shared.spec.tasks, {
            let shared = shared.clone();
            let latencies = latencies.clone();
            move |index| {
                let histogram = latencies[index % task_count].clone();
                run_node(shared.clone(), index, phase_rx.clone(), histogram)
            }
        });
        tracing::info!(
            nodes = size,
            tasks = tasks.len(),
            ?pace,
            "record fleet started"
        );
        RecordFleet {
            phase_tx,
            stats,
            latencies,
            size,
            tasks,
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn stats(&self) -> &UplinkStats {
        &self.stats
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase_tx.send_replace(phase);
    }

    /// Returns the latencies of every acknowledged record so far, in
    /// microseconds.
    pub fn latencies(&self) -> Histogram<u64> {
        let mut merged = new_histogram();
        for histogram in &self.latencies {
            let histogram = match histogram.lock() {
                Ok(histogram) => histogram,
                Err(poisoned) => poisoned.into_inner(),
            };
            // Both have the same bounds, so adding cannot fail.
            let _ = merged.add(&*histogram);
        }
        merged
    }

    /// Waits until every node is up, or `timeout`; returns whether all are.
    pub async fn wait_all_up(&self, timeout: Duration) -> bool {
        self.stats.sessions.wait_all_up(self.size, timeout).await
    }

    /// Waits until every created record is acknowledged, or `timeout`;
    /// returns whether all are.
    pub async fn wait_all_acknowledged(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let created = UplinkStats::load(&self.stats.created);
            let acknowledged = UplinkStats::load(&self.stats.acknowledged);
            if acknowledged >= created {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Closes every session and waits up to `deadline` for every task;
    /// returns whether all ended in time.
    pub async fn stop(self, deadline: Duration) -> bool {
        self.set_phase(Phase::Stop);
        let wait_all = futures_util::future::join_all(self.tasks);
        let stopped = tokio::time::timeout(deadline, wait_all).await.is_ok();
        tracing::info!(nodes = self.size, stopped, "record fleet stopped");
        stopped
    }
}

fn new_histogram() -> Histogram<u64> {
    // Three significant digits from 1 µs to one hour are valid bounds.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Read-only state shared by every node.
struct Shared {
    spec: FleetSpec,
    settings: UplinkSettings,
    pace: Pace,
    seed: u64,
    will: Vec<u8>,
    stats: Arc<UplinkStats>,
}

/// A batch in the window.
struct InFlight {
    first: u64,
    last: u64,
    payload: Vec<u8>,
    /// When each record entered the outbox, in seq order.
    created: Vec<Instant>,
    /// When it was last published; `None` while it waits to be (re)sent.
    sent_at: Option<Instant>,
}

/// One node's outbox, window and generator.
struct NodeUplink {
    index: usize,
    generator: Generator,
    /// Records not yet in a batch, with their creation time.
    outbox: VecDeque<(Instant, tollway_topics::TollRecord)>,
    next_seq: u64,
    watermark: u64,
    window: VecDeque<InFlight>,
    linger_until: Option<Instant>,
    /// Fractional records due in rate mode.
    credit: f64,
    last_created_at: Instant,
    records_topic: String,
    ack_topic: String,
}

impl NodeUplink {
    fn new(shared: &Shared, index: usize) -> Self {
        let spec = &shared.spec;
        let node = spec.nodes[index].clone();
        // A gantry id per node: G0015 44 00 + eight digits + direction 10.
        let gantry = format!("G00154400{index:08}10");
        let rng = StdRng::seed_from_u64(shared.seed ^ (index as u64).wrapping_mul(0x9E37_79B9));
        NodeUplink {
            index,
            generator: Generator::new(gantry, spec.province.code(), rng),
            outbox: VecDeque::new(),
            next_seq: 1,
            watermark: 0,
            window: VecDeque::with_capacity(shared.settings.window),
            linger_until: None,
            credit: 0.0,
            last_created_at: Instant::now(),
            records_topic: Topic::node(spec.province, node.clone(), NodeKind::Records).to_string(),
            ack_topic: Topic::node(spec.province, node, NodeKind::RecordsAck).to_string(),
        }
    }

    /// Creates the records due at the fleet's rate since the last call.
    fn create_due(&mut self, shared: &Shared, phase: Phase) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last_created_at).as_secs_f64();
        self.last_created_at = now;
        let Pace::Rate(per_second) = shared.pace else {
            return;
        };
        if phase != Phase::Create {
            self.credit = 0.0;
            return;
        }
        self.credit += per_second * elapsed;
        let due = self.credit.floor();
        self.credit -= due;
        self.create(shared, due as usize, now);
    }

    fn create(&mut self, shared: &Shared, count: usize, now: Instant) {
        if count == 0 {
            return;
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for _ in 0..count {
            let record = self.generator.next_record(now_ms);
            self.outbox.push_back((now, record));
        }
        self.next_seq += count as u64;
        shared
            .stats
            .created
            .fetch_add(count as u64, Ordering::Relaxed);
        shared.stats.created_through[self.index].store(self.next_seq - 1, Ordering::Relaxed);
    }

    /// Marks every batch in the window for sending again.
    fn restart_window(&mut self) {
        for batch in &mut self.window {
            batch.sent_at = None;
        }
    }

    /// Applies the centre's acknowledgement and records the latencies of
    /// the batches it covers.
    fn acknowledge(
        &mut self,
        shared: &Shared,
        stored_through: u64,
        latencies: &Mutex<Histogram<u64>>,
    ) {
        if stored_through >= self.next_seq {
            shared
                .stats
                .acks_beyond_created
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node = %shared.spec.nodes[self.index], stored_through, created_through = self.next_seq - 1, "ignoring an acknowledgement beyond the records created");
            return;
        }
        if stored_through <= self.watermark {
            return;
        }
        self.watermark = stored_through;
        shared.stats.acknowledged_through[self.index].store(stored_through, Ordering::Relaxed);

        let now = Instant::now();
        let mut histogram = match latencies.lock() {
            Ok(histogram) => histogram,
            Err(poisoned) => poisoned.into_inner(),
        };
        while self
            .window
            .front()
            .is_some_and(|batch| batch.last <= stored_through)
        {
            let Some(batch) = self.window.pop_front() else {
                break;
            };
            for created in &batch.created {
                let micros = now.duration_since(*created).as_micros() as u64;
                histogram.saturating_record(micros.clamp(1, MAX_LATENCY_US));
            }
            shared
                .stats
                .record_acknowledged(batch.last - batch.first + 1);
        }
    }

    /// Marks the oldest batch's window for resending when it waited past
    /// the resend timeout.
    fn resend_if_overdue(&mut self, shared: &Shared) {
        let overdue = self
            .window
            .front()
            .and_then(|batch| batch.sent_at)
            .is_some_and(|sent| sent.elapsed() >= shared.settings.resend_timeout);
        if overdue {
            tracing::warn!(node = %shared.spec.nodes[self.index], from = self.watermark + 1, "no acknowledgement in time; resending unacknowledged records");
            self.restart_window();
        }
    }

    /// Publishes the batches waiting to be resent, then new batches while
    /// the window has room: a full batch at once, a partial one after its
    /// linger time.
    fn send_ready(&mut self, shared: &Shared, client: &AsyncClient, phase: Phase) {
        let now = Instant::now();
        for batch in self
            .window
            .iter_mut()
            .filter(|batch| batch.sent_at.is_none())
        {
            let sent = client.try_publish(
                self.records_topic.as_str(),
                QoS::AtLeastOnce,
                false,
                batch.payload.clone(),
            );
            if sent.is_err() {
                return;
            }
            batch.sent_at = Some(now);
            shared.stats.batches_resent.fetch_add(1, Ordering::Relaxed);
        }

        let limit = shared.settings.batch_records;
        while self.window.len() < shared.settings.window {
            if shared.pace == Pace::Ceiling && phase == Phase::Create && self.outbox.len() < limit {
                self.create(shared, limit - self.outbox.len(), now);
            }
            if self.outbox.is_empty() {
                self.linger_until = None;
                return;
            }
            if self.outbox.len() < limit && !self.linger_passed(shared, now) {
                return;
            }
            let Some(batch) = self.take_batch(shared) else {
                return;
            };
            let sent = client.try_publish(
                self.records_topic.as_str(),
                QoS::AtLeastOnce,
                false,
                batch.payload.clone(),
            );
            let sent_at = sent.is_ok().then_some(now);
            if sent_at.is_some() {
                shared.stats.batches_sent.fetch_add(1, Ordering::Relaxed);
            }
            self.window.push_back(InFlight { sent_at, ..batch });
            self.linger_until = None;
            if sent_at.is_none() {
                return;
            }
        }
    }

    fn linger_passed(&mut self, shared: &Shared, now: Instant) -> bool {
        match self.linger_until {
            Some(until) => now >= until,
            None => {
                self.linger_until = Some(now + shared.settings.linger);
                shared.settings.linger.is_zero()
            }
        }
    }

    /// Moves up to `batch_records` records from the outbox into an encoded
    /// batch.
    fn take_batch(&mut self, shared: &Shared) -> Option<InFlight> {
        let count = self.outbox.len().min(shared.settings.batch_records);
        let first = self.next_seq - self.outbox.len() as u64;
        let (created, records): (Vec<Instant>, Vec<_>) = self.outbox.drain(..count).unzip();
        let batch = RecordBatch {
            node: shared.spec.nodes[self.index].clone(),
            first_seq: first,
            records,
            compression: if shared.settings.compress {
                Compression::Zstd
            } else {
                Compression::None
            },
        };
        match batch.to_cbor() {
            Ok(payload) => Some(InFlight {
                first,
                last: first + count as u64 - 1,
                payload,
                created,
                sent_at: None,
            }),
            Err(err) => {
                // NOTE: a batch that does not encode is dropped here. The toll
                // app's tests check that generated records encode, so this
                // path is not expected to run.
                tracing::error!(node = %shared.spec.nodes[self.index], first_seq = first, error = %err, "cannot encode a batch");
                None
            }
        }
    }
}

/// Runs one node until the phase is [`Phase::Stop`].
async fn run_node(
    shared: Arc<Shared>,
    index: usize,
    mut phase_rx: watch::Receiver<Phase>,
    latencies: Arc<Mutex<Histogram<u64>>>,
) {
    let mut uplink = NodeUplink::new(&shared, index);
    let mut retry = Retry::new(shared.spec.retry);
    // Spread the nodes' record ticks over one tick period.
    let phase_offset = CREATE_TICK.mul_f64((index as f64 * 0.618_033_988_749_895).fract());
    let mut create_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + phase_offset, CREATE_TICK);
    create_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if *phase_rx.borrow() == Phase::Stop {
            return;
        }
        let was_up = session(
            &shared,
            &mut uplink,
            &mut phase_rx,
            &mut create_tick,
            &latencies,
        )
        .await;
        let Some(was_up) = was_up else {
            return;
        };
        shared
            .stats
            .session_failures
            .fetch_add(1, Ordering::Relaxed);
        if was_up {
            retry.reset();
        }

        // Wait out the retry delay; records keep entering the outbox.
        let wait = tokio::time::sleep(retry.next_delay());
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                _ = create_tick.tick() => {
                    let phase = *phase_rx.borrow();
                    uplink.create_due(&shared, phase);
                }
                changed = phase_rx.changed() => {
                    if changed.is_err() || *phase_rx.borrow() == Phase::Stop {
                        return;
                    }
                }
            }
        }
    }
}

/// Runs one session. Returns `None` when the fleet stops, else whether the
/// session was up before it ended.
async fn session(
    shared: &Shared,
    uplink: &mut NodeUplink,
    phase_rx: &mut watch::Receiver<Phase>,
    create_tick: &mut tokio::time::Interval,
    latencies: &Mutex<Histogram<u64>>,
) -> Option<bool> {
    let index = uplink.index;
    let options = mqtt_options(&shared.spec, index, &shared.will);
    // Room for the presence, the subscription and a whole window of batches.
    let (client, mut eventloop) = AsyncClient::new(options, shared.settings.window + 4);
    let mut network = NetworkOptions::new();
    network.set_connection_timeout(shared.spec.connect_timeout.as_secs().max(1));
    eventloop.set_network_options(network);

    if let Err(err) = connect(shared, uplink, phase_rx, create_tick, &mut eventloop).await? {
        tracing::debug!(node = %shared.spec.nodes[index], error = %err, "connection attempt failed");
        return Some(false);
    }
    subscribe(shared, uplink, &client);

    let mut check = tokio::time::interval(CHECK_INTERVAL);
    let mut _up: Option<UpGuard<'_>> = None;
    loop {
        let linger = uplink.linger_until;
        tokio::select! {
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let granted = ack.return_codes.iter().all(|code| matches!(code, SubscribeReasonCode::Success(_)));
                    if !granted {
                        tracing::warn!(node = %shared.spec.nodes[index], "broker rejected the node's own subscriptions");
                        return Some(_up.is_some());
                    }
                    // A new session: everything unacknowledged goes again.
                    uplink.restart_window();
                    _up = Some(shared.stats.sessions.guard());
                }
                Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == uplink.ack_topic => {
                    match RecordAck::from_cbor(&publish.payload) {
                        Ok(ack) => uplink.acknowledge(shared, ack.stored_through, latencies),
                        Err(err) => {
                            shared.stats.acks_invalid.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(node = %shared.spec.nodes[index], error = %err, "invalid RecordAck");
                        }
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(node = %shared.spec.nodes[index], error = %err, "session lost");
                    return Some(_up.is_some());
                }
            },
            _ = create_tick.tick() => {
                let phase = *phase_rx.borrow();
                uplink.create_due(shared, phase);
            }
            _ = tokio::time::sleep_until(linger.map_or_else(tokio::time::Instant::now, Into::into)), if linger.is_some() => {}
            _ = check.tick() => uplink.resend_if_overdue(shared),
            changed = phase_rx.changed() => {
                if changed.is_err() || *phase_rx.borrow() == Phase::Stop {
                    return None;
                }
            }
        }
        if _up.is_some() {
            let phase = *phase_rx.borrow();
            uplink.send_ready(shared, &client, phase);
        }
    }
}

/// Polls the event loop until CONNACK, creating due records meanwhile.
/// Returns `None` when the fleet stops.
async fn connect(
    shared: &Shared,
    uplink: &mut NodeUplink,
    phase_rx: &mut watch::Receiver<Phase>,
    create_tick: &mut tokio::time::Interval,
    eventloop: &mut EventLoop,
) -> Option<Result<(), ConnectionError>> {
    let connecting = eventloop.poll();
    tokio::pin!(connecting);
    loop {
        tokio::select! {
            result = &mut connecting => return Some(result.map(|_| ())),
            _ = create_tick.tick() => {
                let phase = *phase_rx.borrow();
                uplink.create_due(shared, phase);
            }
            changed = phase_rx.changed() => {
                if changed.is_err() || *phase_rx.borrow() == Phase::Stop {
                    return None;
                }
            }
        }
    }
}

/// Publishes the retained `online` presence and subscribes to the node's
/// `desired`, `cmd` and `records/ack` topics, as the daemon does.
fn subscribe(shared: &Shared, uplink: &NodeUplink, client: &AsyncClient) {
    let spec = &shared.spec;
    let node = spec.nodes[uplink.index].clone();
    let since_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let labels = std::collections::BTreeMap::from([("role".to_string(), "gantry".to_string())]);
    let online = Presence::online(since_ms, env!("CARGO_PKG_VERSION").to_string(), labels)
        .to_cbor()
        .unwrap_or_default();
    let presence = Topic::node(spec.province, node.clone(), NodeKind::Presence).to_string();
    let _ = client.try_publish(presence, QoS::AtLeastOnce, true, online);
    let filters = [NodeKind::Desired, NodeKind::Command, NodeKind::RecordsAck].map(|kind| {
        SubscribeFilter::new(
            Topic::node(spec.province, node.clone(), kind).to_string(),
            QoS::AtLeastOnce,
        )
    });
    let _ = client.try_subscribe_many(filters);
}
