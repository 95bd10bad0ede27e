//! Province-to-nation forwarding: sends the province's stored records in
//! forwarding-seq order as ForwardBatch messages on
//! `tollway/v1/{province}/center/records`, and advances only on the national
//! centre's RecordAck on `.../center/records/ack`.
//!
//! The forwarder keeps at most `window_records` seqs sent but unacknowledged.
//! It sends the whole window again when no acknowledgement has moved it for
//! `resend_after_s`, then after waits that grow with jitter up to
//! `resend_cap_s` while none comes (the one `Backoff`), and after every
//! reconnect of its publisher, because rumqttc drops queued publishes when a
//! reconnect finds no session. The national store drops the duplicates this
//! causes. While the national link is cut, the provincial broker queues each
//! resent copy for the bridge, so the growing wait keeps an outage of hours
//! from filling that queue with copies.
//!
//! NOTE: when the provincial broker dropped copies during an outage (its
//! queue for the bridge overflowed), forwarding resumes only at the next
//! resend after the link returns, up to `resend_cap_s` later. The bridge
//! publishes its online state on the national broker only, so the forwarder
//! cannot see the link return. Copies the broker kept reach the nation as
//! soon as the bridge reconnects (the outage benchmark drained 30,000
//! records in 4 s).
//!
//! NOTE: forwarding seqs are per store, and ForwardBatch names only the
//! province. Two ingest processes of one province that both run a forwarder
//! would send different records under the same seqs, and the national
//! watermark could then cover records it never received. Run one forwarder
//! per province until ForwardBatch names its source store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tollway_runtime::{Backoff, BackoffConfig, CancellationToken, Shutdown};
use tollway_topics::topic::center_filter;
use tollway_topics::{CenterKind, Compression, ForwardBatch, Message, Province, RecordAck, Topic};

use crate::config::ForwarderConfig;
use crate::mqtt::{
    Delivery, MqttSettings, Publisher, Subscription, spawn_publisher, spawn_subscriber,
};
use crate::stats::Stats;
use crate::store::{RecordStore, StoreError};

/// How often the forwarder looks for newly stored records and for an
/// expired window.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Acknowledgements received but not yet handled.
const ACK_QUEUE: usize = 16;

/// Starts the forwarder's connections and its task.
pub fn start(
    config: &ForwarderConfig,
    settings: &MqttSettings,
    store: Arc<RecordStore>,
    stats: Arc<Stats>,
    shutdown: &mut Shutdown,
) {
    let province = config.province;
    let filters = vec![center_filter(province, CenterKind::RecordsAck)];
    let acks = spawn_subscriber(
        shutdown,
        "forwarder-subscriber",
        settings.clone(),
        Subscription {
            role: "forwarder-sub",
            filters,
            clean_session: true,
            queue: ACK_QUEUE,
        },
        stats.clone(),
    );
    let publisher = spawn_publisher(
        shutdown,
        "forwarder-publisher",
        settings.clone(),
        "forwarder-pub",
    );
    let forwarder = Forwarder {
        province,
        store,
        stats,
        publisher,
        batch_records: config.batch_records,
        window: config.window_records,
        resend: BackoffConfig::new(
            Duration::from_secs(config.resend_after_s),
            Duration::from_secs(config.resend_cap_s),
        ),
    };
    let token = shutdown.token();
    shutdown.spawn("forwarder", async move {
        if let Err(err) = forwarder.run(acks, token).await {
            tracing::error!(%province, error = %err, "forwarder stopped on a store error");
        }
    });
    tracing::info!(%province, "forwarder started");
}

struct Forwarder {
    province: Province,
    store: Arc<RecordStore>,
    stats: Arc<Stats>,
    publisher: Publisher,
    batch_records: usize,
    window: u64,
    resend: BackoffConfig,
}

/// Progress of forwarding.
struct Window {
    /// Highest forwarding seq the national centre acknowledged (persisted).
    acked: u64,
    /// Highest forwarding seq sent; `acked` when nothing is outstanding.
    sent: u64,
    /// When the acknowledgement last moved, the window last opened or it
    /// was last sent again.
    since: Instant,
    /// How long to wait from `since` before sending the window again.
    resend_in: Duration,
    /// Grows `resend_in` while no acknowledgement comes.
    backoff: Backoff,
}

impl Forwarder {
    async fn run(
        self,
        mut acks: mpsc::Receiver<Delivery>,
        token: CancellationToken,
    ) -> Result<(), StoreError> {
        let acked = self.blocking(|store| store.forward_acked_through()).await?;
        let mut window = Window {
            acked,
            sent: acked,
            since: Instant::now(),
            resend_in: self.first_resend(),
            backoff: Backoff::new(self.resend),
        };
        let mut connections = self.publisher.connections();
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tracing::info!(province = %self.province, acked, "forwarding from the acknowledged seq");

        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                delivery = acks.recv() => match delivery {
                    Some(delivery) => self.handle_ack(delivery, &mut window).await?,
                    None => break,
                },
                changed = connections.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.rewind(&mut window, "publisher reconnected");
                }
                _ = tick.tick() => {
                    if window.sent > window.acked && window.since.elapsed() >= window.resend_in {
                        self.rewind(&mut window, "no acknowledgement in time");
                        window.resend_in = window.backoff.next_delay();
                    }
                    self.fill_window(&mut window).await?;
                }
            }
        }
        tracing::info!(province = %self.province, acked = window.acked, "forwarder stopped");
        Ok(())
    }

    async fn handle_ack(&self, delivery: Delivery, window: &mut Window) -> Result<(), StoreError> {
        let ack = match RecordAck::from_cbor(&delivery.publish.payload) {
            Ok(ack) => ack,
            Err(err) => {
                tracing::warn!(province = %self.province, error = %err, "invalid RecordAck from the national centre dropped");
                delivery.ack().await;
                return Ok(());
            }
        };
        Stats::add(&self.stats.forward_acks_received, 1);
        if ack.stored_through > window.acked {
            let last = self.blocking(|store| store.last_forward_seq()).await?;
            // An acknowledgement beyond what this store assigned would skip
            // records never sent; it can come from a national store that
            // outlived a rebuilt provincial store.
            let through = ack.stored_through.min(last);
            window.acked = self
                .blocking(move |store| store.set_forward_acked_through(through))
                .await?;
            window.sent = window.sent.max(window.acked);
            window.since = Instant::now();
            window.backoff.reset();
            window.resend_in = self.first_resend();
            tracing::debug!(province = %self.province, acked = window.acked, "national centre acknowledged");
        }
        delivery.ack().await;
        Ok(())
    }

    /// Marks the whole window for sending again.
    fn rewind(&self, window: &mut Window, reason: &str) {
        if window.sent > window.acked {
            Stats::add(&self.stats.forward_resends, 1);
            tracing::info!(province = %self.province, from = window.acked + 1, to = window.sent, reason, wait_ms = window.resend_in.as_millis() as u64, "resending the forwarding window");
        }
        window.sent = window.acked;
        window.since = Instant::now();
    }

    /// Sends batches of stored records until the window is full or nothing
    /// new is stored.
    async fn fill_window(&self, window: &mut Window) -> Result<(), StoreError> {
        loop {
            let room = self.window - (window.sent - window.acked);
            if room == 0 {
                return Ok(());
            }
            let max = (self.batch_records as u64).min(room) as usize;
            let from = window.sent + 1;
            let province = self.province;
            let records = self
                .blocking(move |store| store.forward_range(province, from, max))
                .await?;
            if records.is_empty() {
                return Ok(());
            }

            let count = records.len() as u64;
            let batch = ForwardBatch {
                province,
                first_seq: from,
                records,
                compression: Compression::Zstd,
            };
            let payload = match batch.to_cbor() {
                Ok(payload) => payload,
                Err(err) => {
                    // NOTE: a batch over the size limit stops forwarding
                    // here; lower forwarder.batch_records to get past it.
                    tracing::error!(%province, first_seq = from, error = %err, "cannot encode a ForwardBatch; lower forwarder.batch_records");
                    return Ok(());
                }
            };
            let topic = Topic::center(province, CenterKind::Records).to_string();
            if let Err(err) = self.publisher.publish(topic, payload).await {
                tracing::warn!(%province, first_seq = from, error = %err, "ForwardBatch not published; resending after resend_after_s");
                return Ok(());
            }
            if window.sent == window.acked {
                window.since = Instant::now();
            }
            window.sent += count;
            Stats::add(&self.stats.forward_batches_sent, 1);
            tracing::debug!(%province, first_seq = from, count, "forward batch sent");
        }
    }

    /// Returns the wait before the first resend of an unacknowledged window.
    fn first_resend(&self) -> Duration {
        Duration::from_millis(self.resend.base_ms)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&RecordStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || read(&store))
            .await
            .map_err(|err| StoreError::Task(err.to_string()))?
    }
}
