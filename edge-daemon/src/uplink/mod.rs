//! The uplink: sends the outbox's undelivered records to the centre in
//! batches on the node's `records` topic, and moves the outbox's delivery
//! watermark when the centre acknowledges them.
//!
//! A broker's PUBACK is not custody, so the uplink ignores it. Only a
//! `RecordAck` from the centre (the highest contiguous seq it stored)
//! advances the watermark. At most `window` batches are in flight. When the
//! oldest is not acknowledged within `resend_timeout_s`, or the link
//! reconnects, every unacknowledged record is sent again from the
//! watermark; the centre drops duplicates by (node, seq).

mod config;
mod window;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tollway_runtime::CancellationToken;
use tollway_topics::{Compression, Message, NodeKind, RecordBatch};

use crate::link::{LinkHandle, PublishError};
use crate::outbox::{Outbox, OutboxError};

pub use config::UplinkConfig;
use window::Window;

/// How often the uplink looks at its window when nothing else happens: to
/// resend after a timeout and to retry a publish the link refused.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Runs the uplink until `cancel` fires. `acks` carries the highest
/// `stored_through` the centre sent.
pub async fn run_uplink(
    outbox: Arc<Outbox>,
    link: LinkHandle,
    acks: watch::Receiver<u64>,
    config: UplinkConfig,
    cancel: CancellationToken,
) {
    let mut uplink = Uplink {
        window: Window::new(config.window),
        outbox,
        link,
        config,
        linger_until: None,
        connection: 0,
        watermark: 0,
    };
    uplink.watermark = uplink
        .outbox
        .stats(std::time::SystemTime::now())
        .map_or(0, |s| s.delivered_through);
    uplink.run(acks, cancel).await;
}

struct Uplink {
    outbox: Arc<Outbox>,
    link: LinkHandle,
    config: UplinkConfig,
    window: Window,
    /// When a batch that is not full may leave; `None` while no partial
    /// batch waits.
    linger_until: Option<Instant>,
    /// The link's connection count when the window was last restarted.
    connection: u64,
    /// The outbox's delivery watermark as last seen.
    watermark: u64,
}

impl Uplink {
    async fn run(&mut self, mut acks: watch::Receiver<u64>, cancel: CancellationToken) {
        let mut appended = self.outbox.appended();
        let mut link_state = self.link.state();
        let mut check = tokio::time::interval(CHECK_INTERVAL);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(node = %self.outbox.node(), watermark = self.watermark, "uplink starting");

        loop {
            let linger = self.linger_until;
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = acks.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let stored_through = *acks.borrow_and_update();
                    self.acknowledge(stored_through).await;
                }
                changed = link_state.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let state = link_state.borrow_and_update().clone();
                    if state.connected && state.connection != self.connection {
                        self.connection = state.connection;
                        if self.window.len() > 0 {
                            tracing::info!(node = %self.outbox.node(), from = self.watermark + 1, "link reconnected; resending unacknowledged records");
                        }
                        self.window.restart();
                    }
                }
                changed = appended.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(linger.unwrap_or_else(Instant::now)), if linger.is_some() => {}
                _ = check.tick() => self.resend_if_overdue(),
            }
            let last_appended = *appended.borrow_and_update();
            self.send_ready(last_appended).await;
        }
        tracing::info!(node = %self.outbox.node(), watermark = self.watermark, in_flight = self.window.len(), "uplink stopped");
    }

    /// Moves the outbox's watermark to the centre's acknowledgement and
    /// drops the batches it covers.
    async fn acknowledge(&mut self, stored_through: u64) {
        match self.outbox.acknowledge(stored_through).await {
            Ok(watermark) => {
                self.watermark = watermark;
                self.window.acknowledge(watermark);
                tracing::debug!(node = %self.outbox.node(), watermark, "centre acknowledged records");
            }
            Err(err @ OutboxError::AckBeyondAppended { .. }) => {
                tracing::warn!(node = %self.outbox.node(), error = %err, "ignoring the centre's acknowledgement");
            }
            Err(err) => {
                tracing::error!(node = %self.outbox.node(), stored_through, error = %err, "cannot record the centre's acknowledgement; it applies with the next one");
            }
        }
    }

    /// Sends every unacknowledged record again when the oldest batch in
    /// flight has waited past the resend timeout.
    fn resend_if_overdue(&mut self) {
        let now = Instant::now().into_std();
        if let Some(first) = self.window.overdue(now, self.config.resend_timeout()) {
            tracing::warn!(
                node = %self.outbox.node(),
                first_seq = first,
                from = self.watermark + 1,
                timeout_s = self.config.resend_timeout_s,
                "no acknowledgement in time; resending unacknowledged records"
            );
            self.window.restart();
        }
    }

    /// Sends batches while the link is up, the window has room and records
    /// wait, holding back a partial batch until its linger time has passed.
    async fn send_ready(&mut self, last_appended: u64) {
        while self.link.is_connected() && self.window.has_room() {
            let from = self.window.next_from(self.watermark);
            if from > last_appended {
                self.linger_until = None;
                return;
            }
            let waiting = last_appended - from + 1;
            if waiting < self.config.max_records as u64 && !self.linger_passed() {
                return;
            }
            if !self.send_batch(from).await {
                return;
            }
            self.linger_until = None;
        }
    }

    /// True once a partial batch has waited its linger time; starts the
    /// wait on the first call.
    fn linger_passed(&mut self) -> bool {
        let now = Instant::now();
        match self.linger_until {
            Some(until) => now >= until,
            None => {
                self.linger_until = Some(now + self.config.linger());
                self.config.linger_ms == 0
            }
        }
    }

    /// Reads and publishes one batch from `from`. Returns false when it
    /// could not be sent, so the caller stops until the next event.
    async fn send_batch(&mut self, from: u64) -> bool {
        let outbox = Arc::clone(&self.outbox);
        let limits = self.config.batch_limits();
        let read = tokio::task::spawn_blocking(move || outbox.pending_from(from, limits)).await;
        let batch = match read {
            Ok(Ok(Some(batch))) => batch,
            Ok(Ok(None)) => return false,
            Ok(Err(err)) => {
                tracing::error!(node = %self.outbox.node(), from, error = %err, "cannot read records to send");
                return false;
            }
            Err(err) => {
                tracing::error!(node = %self.outbox.node(), from, error = %err, "outbox read task failed");
                return false;
            }
        };
        let Some(last) = batch.last_seq() else {
            return false;
        };

        let payload = match self.encode(batch) {
            Some(payload) => payload,
            None => return false,
        };
        let bytes = payload.len();
        match self.link.publish(NodeKind::Records, payload) {
            Ok(()) => {
                self.window.sent(from, last, Instant::now().into_std());
                tracing::debug!(node = %self.outbox.node(), first_seq = from, last_seq = last, bytes, "record batch sent");
                true
            }
            Err(err @ PublishError::Busy { .. }) => {
                tracing::debug!(node = %self.outbox.node(), first_seq = from, error = %err, "record batch deferred");
                false
            }
            Err(PublishError::NotConnected { .. }) => false,
        }
    }

    fn encode(&self, mut batch: RecordBatch) -> Option<Vec<u8>> {
        if self.config.compress {
            batch.compression = Compression::Zstd;
        }
        match batch.to_cbor() {
            Ok(payload) => Some(payload),
            Err(err) => {
                tracing::error!(node = %self.outbox.node(), first_seq = batch.first_seq, error = %err, "cannot encode a record batch");
                None
            }
        }
    }
}
