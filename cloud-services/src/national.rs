//! National ingest: receives every province's ForwardBatch on
//! `tollway/v1/+/center/records` through a shared subscription, stores the
//! records de-duplicated by (province, node, seq), and acknowledges each
//! province's highest contiguous forwarding seq on
//! `tollway/v1/{province}/center/records/ack`.
//!
//! As in the provincial ingest, a batch is stored with a synced write before
//! its RecordAck and PUBACK; one that cannot be stored gets neither, and an
//! invalid one is logged with its province, counted and PUBACKed.

use std::sync::Arc;

use tokio::sync::mpsc;
use tollway_runtime::{CancellationToken, Shutdown};
use tollway_topics::topic::{all_centers_filter, shared};
use tollway_topics::{CenterKind, ForwardBatch, Message, Province, RecordAck, Topic};

use crate::config::NationalIngestConfig;
use crate::mqtt::{
    Delivery, MqttSettings, Publisher, Subscription, spawn_publisher, spawn_subscriber,
};
use crate::stats::Stats;
use crate::store::RecordStore;

/// Starts the national ingest's connections and handler.
pub fn start(
    config: &NationalIngestConfig,
    settings: &MqttSettings,
    store: Arc<RecordStore>,
    stats: Arc<Stats>,
    shutdown: &mut Shutdown,
) {
    let filters = vec![shared(
        &config.group,
        &all_centers_filter(CenterKind::Records),
    )];
    let deliveries = spawn_subscriber(
        shutdown,
        "national-subscriber",
        settings.clone(),
        Subscription {
            role: "national-sub",
            filters,
            clean_session: false,
            queue: config.queue,
        },
        stats.clone(),
    );
    let publisher = spawn_publisher(
        shutdown,
        "national-publisher",
        settings.clone(),
        "national-pub",
    );
    let ingest = NationalIngest {
        store,
        stats,
        publisher,
    };
    let token = shutdown.token();
    shutdown.spawn("national-ingest", ingest.run(deliveries, token));
    tracing::info!(group = %config.group, "national ingest started");
}

struct NationalIngest {
    store: Arc<RecordStore>,
    stats: Arc<Stats>,
    publisher: Publisher,
}

impl NationalIngest {
    async fn run(self, mut deliveries: mpsc::Receiver<Delivery>, token: CancellationToken) {
        loop {
            let delivery = tokio::select! {
                _ = token.cancelled() => break,
                delivery = deliveries.recv() => match delivery {
                    Some(delivery) => delivery,
                    None => break,
                },
            };
            self.handle(delivery).await;
        }
        tracing::info!("national ingest stopped");
    }

    async fn handle(&self, delivery: Delivery) {
        Stats::add(&self.stats.national_batches_received, 1);
        let province = match Topic::parse(&delivery.publish.topic) {
            Ok(Topic::Center {
                province,
                kind: CenterKind::Records,
            }) => province,
            _ => {
                self.reject(
                    None,
                    &format!("unexpected topic {:?}", delivery.publish.topic),
                );
                delivery.ack().await;
                return;
            }
        };
        let batch = match ForwardBatch::from_cbor(&delivery.publish.payload) {
            Ok(batch) if batch.province == province => batch,
            Ok(batch) => {
                self.reject(
                    Some(province),
                    &format!(
                        "batch names province {} but arrived on province {province}'s topic",
                        batch.province
                    ),
                );
                delivery.ack().await;
                return;
            }
            Err(err) => {
                self.reject(Some(province), &err.to_string());
                delivery.ack().await;
                return;
            }
        };

        let store = self.store.clone();
        let first_seq = batch.first_seq;
        let stored = tokio::task::spawn_blocking(move || {
            store.store_forward_batch(province, batch.first_seq, &batch.records)
        })
        .await;
        let outcome = match stored {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(err)) => {
                Stats::add(&self.stats.store_errors, 1);
                tracing::error!(%province, first_seq, error = %err, "cannot store a forwarded batch; it stays unacknowledged");
                return;
            }
            Err(err) => {
                Stats::add(&self.stats.store_errors, 1);
                tracing::error!(%province, first_seq, error = %err, "store task failed; the forwarded batch stays unacknowledged");
                return;
            }
        };
        Stats::add(&self.stats.national_records_stored, outcome.stored);
        Stats::add(&self.stats.national_records_duplicate, outcome.duplicates);
        tracing::debug!(%province, first_seq, stored = outcome.stored, duplicates = outcome.duplicates, forward_through = outcome.forward_through, "forwarded batch stored");

        self.publish_ack(province, outcome.forward_through).await;
        delivery.ack().await;
    }

    async fn publish_ack(&self, province: Province, stored_through: u64) {
        let topic = Topic::center(province, CenterKind::RecordsAck).to_string();
        let payload = match (RecordAck { stored_through }).to_cbor() {
            Ok(payload) => payload,
            Err(err) => {
                tracing::error!(%province, stored_through, error = %err, "cannot encode a RecordAck");
                return;
            }
        };
        if let Err(err) = self.publisher.publish(topic, payload).await {
            tracing::warn!(%province, stored_through, error = %err, "RecordAck not published; the province resends and gets another");
        }
    }

    fn reject(&self, province: Option<Province>, problem: &str) {
        Stats::add(&self.stats.national_batches_invalid, 1);
        let province = province
            .map(|p| p.to_string())
            .unwrap_or_else(|| "(unknown)".to_string());
        tracing::warn!(province, problem, "invalid forwarded batch dropped");
    }
}
