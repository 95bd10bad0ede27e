//! Provincial record ingest: receives node record batches, hourly summaries
//! and command results through a shared subscription, stores records
//! de-duplicated by (node, seq), and acknowledges each node's highest
//! contiguous seq stored.
//!
//! Order for a batch: validate, store with a synced write, publish the
//! node's RecordAck, then PUBACK the message. A batch that cannot be stored
//! gets neither acknowledgement, so the node sends it again. An invalid
//! batch is logged with the node id, counted and PUBACKed, because sending
//! it again cannot make it valid.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tollway_runtime::{CancellationToken, Shutdown};
use tollway_topics::topic::{node_filter, shared};
use tollway_topics::{
    CommandResult, HourlySummary, Message, NodeId, NodeKind, Province, RecordAck, RecordBatch,
    Topic,
};

use crate::config::IngestConfig;
use crate::mqtt::{
    Delivery, MqttSettings, Publisher, Subscription, spawn_publisher, spawn_subscriber,
};
use crate::reconcile::Reconciler;
use crate::stats::Stats;
use crate::store::RecordStore;

/// Invalid messages logged at warn level before only every 1000th is.
const INVALID_LOG_BURST: u64 = 100;

/// Starts the ingest's connections, its message handler and its reconciler.
pub fn start(
    config: &IngestConfig,
    settings: &MqttSettings,
    store: Arc<RecordStore>,
    stats: Arc<Stats>,
    shutdown: &mut Shutdown,
) {
    let province = config.province;
    let filters = [
        NodeKind::Records,
        NodeKind::Summary,
        NodeKind::CommandResult,
    ]
    .into_iter()
    .map(|kind| shared(&config.group, &node_filter(province, kind)))
    .collect();
    // A persistent session keeps this process in the shared group while it
    // restarts, so its nodes' batches wait for it instead of moving to
    // another process that lacks their earlier seqs.
    // NOTE: when the group changes for good, the nodes that move start at a
    // gap in their new process. Only a replay from the node's retention
    // window fills that gap, and their RecordAck stays back until then.
    let deliveries = spawn_subscriber(
        shutdown,
        "ingest-subscriber",
        settings.clone(),
        Subscription {
            role: "ingest-sub",
            filters,
            clean_session: false,
            queue: config.queue,
        },
        stats.clone(),
    );
    let publisher = spawn_publisher(shutdown, "ingest-publisher", settings.clone(), "ingest-pub");

    let handler = Ingest {
        province,
        store: store.clone(),
        stats: stats.clone(),
        publisher: publisher.clone(),
        invalid_logged: AtomicU64::new(0),
    };
    let token = shutdown.token();
    shutdown.spawn("ingest", handler.run(deliveries, token));

    let reconciler = Reconciler::new(config, store, stats, publisher);
    let token = shutdown.token();
    shutdown.spawn("reconciler", reconciler.run(token));
    tracing::info!(%province, group = %config.group, "ingest started");
}

/// The handler of one process's share of the province's node messages.
struct Ingest {
    province: Province,
    store: Arc<RecordStore>,
    stats: Arc<Stats>,
    publisher: Publisher,
    /// Invalid messages seen, for rate-limiting their log lines.
    invalid_logged: AtomicU64,
}

impl Ingest {
    /// Handles deliveries one at a time, in arrival order.
    ///
    /// NOTE: one synced write per batch bounds a process's throughput; it is
    /// not measured yet against a full province of nodes.
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
        tracing::info!(province = %self.province, "ingest stopped");
    }

    async fn handle(&self, delivery: Delivery) {
        let topic = match Topic::parse(&delivery.publish.topic) {
            Ok(Topic::Node {
                province,
                node,
                kind,
            }) if province == self.province => (node, kind),
            Ok(_) | Err(_) => {
                self.reject(
                    None,
                    "message",
                    &format!("unexpected topic {:?}", delivery.publish.topic),
                );
                delivery.ack().await;
                return;
            }
        };
        let (node, kind) = topic;
        match kind {
            NodeKind::Records => self.handle_batch(node, delivery).await,
            NodeKind::Summary => self.handle_summary(node, delivery).await,
            NodeKind::CommandResult => self.handle_command_result(node, delivery).await,
            _ => {
                self.reject(
                    Some(&node),
                    "message",
                    &format!("unexpected topic {:?}", delivery.publish.topic),
                );
                delivery.ack().await;
            }
        }
    }

    async fn handle_batch(&self, node: NodeId, delivery: Delivery) {
        Stats::add(&self.stats.batches_received, 1);
        let batch = match RecordBatch::from_cbor(&delivery.publish.payload) {
            Ok(batch) if batch.node == node => batch,
            Ok(batch) => {
                let problem = format!(
                    "batch names node {} but arrived on node {node}'s topic",
                    batch.node
                );
                self.reject_batch(&node, &problem);
                delivery.ack().await;
                return;
            }
            Err(err) => {
                self.reject_batch(&node, &err.to_string());
                delivery.ack().await;
                return;
            }
        };

        let store = self.store.clone();
        let province = self.province;
        let first_seq = batch.first_seq;
        let stored = tokio::task::spawn_blocking(move || {
            store.store_node_batch(province, &batch.node, batch.first_seq, &batch.records)
        })
        .await;
        let outcome = match stored {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(err)) => {
                Stats::add(&self.stats.store_errors, 1);
                tracing::error!(%node, first_seq, error = %err, "cannot store a batch; it stays unacknowledged");
                return;
            }
            Err(err) => {
                Stats::add(&self.stats.store_errors, 1);
                tracing::error!(%node, first_seq, error = %err, "store task failed; the batch stays unacknowledged");
                return;
            }
        };
        Stats::add(&self.stats.records_stored, outcome.stored);
        Stats::add(&self.stats.records_duplicate, outcome.duplicates);
        tracing::debug!(%node, first_seq, stored = outcome.stored, duplicates = outcome.duplicates, stored_through = outcome.stored_through, "batch stored");

        self.publish_ack(&node, outcome.stored_through).await;
        delivery.ack().await;
    }

    async fn publish_ack(&self, node: &NodeId, stored_through: u64) {
        let topic = Topic::node(self.province, node.clone(), NodeKind::RecordsAck).to_string();
        let payload = match (RecordAck { stored_through }).to_cbor() {
            Ok(payload) => payload,
            Err(err) => {
                tracing::error!(%node, stored_through, error = %err, "cannot encode a RecordAck");
                return;
            }
        };
        match self.publisher.publish(topic, payload).await {
            Ok(()) => {
                tracing::debug!(%node, stored_through, "RecordAck queued");
                Stats::add(&self.stats.acks_published, 1)
            }
            Err(err) => {
                tracing::warn!(%node, stored_through, error = %err, "RecordAck not published; the node's next batch brings another")
            }
        }
    }

    async fn handle_summary(&self, node: NodeId, delivery: Delivery) {
        Stats::add(&self.stats.summaries_received, 1);
        let summary = match HourlySummary::from_cbor(&delivery.publish.payload) {
            Ok(summary) => summary,
            Err(err) => {
                Stats::add(&self.stats.summaries_invalid, 1);
                self.reject(Some(&node), "summary", &err.to_string());
                delivery.ack().await;
                return;
            }
        };

        let store = self.store.clone();
        let province = self.province;
        let summary_node = node.clone();
        let stored = tokio::task::spawn_blocking(move || {
            store.put_summary(province, &summary_node, &summary)
        })
        .await;
        match stored {
            Ok(Ok(_)) => delivery.ack().await,
            Ok(Err(err)) => {
                Stats::add(&self.stats.store_errors, 1);
                tracing::error!(%node, error = %err, "cannot store an hourly summary; it stays unacknowledged");
            }
            Err(err) => {
                Stats::add(&self.stats.store_errors, 1);
                tracing::error!(%node, error = %err, "store task failed for an hourly summary");
            }
        }
    }

    async fn handle_command_result(&self, node: NodeId, delivery: Delivery) {
        Stats::add(&self.stats.command_results, 1);
        match CommandResult::from_cbor(&delivery.publish.payload) {
            Ok(result) if result.ok => {
                tracing::info!(%node, command = result.id, "command succeeded");
            }
            Ok(result) => {
                Stats::add(&self.stats.command_failures, 1);
                tracing::warn!(%node, command = result.id, message = result.message.as_deref().unwrap_or(""), "command failed on the node");
            }
            Err(err) => self.reject(Some(&node), "command result", &err.to_string()),
        }
        delivery.ack().await;
    }

    fn reject_batch(&self, node: &NodeId, problem: &str) {
        Stats::add(&self.stats.batches_invalid, 1);
        self.reject(Some(node), "record batch", problem);
    }

    /// Logs an invalid message, at warn level for the first
    /// [`INVALID_LOG_BURST`] and then for every 1000th.
    fn reject(&self, node: Option<&NodeId>, what: &str, problem: &str) {
        let seen = self.invalid_logged.fetch_add(1, Ordering::Relaxed);
        let node = node.map(NodeId::as_str).unwrap_or("(unknown)");
        if seen < INVALID_LOG_BURST || seen.is_multiple_of(1000) {
            tracing::warn!(
                node,
                what,
                problem,
                invalid_seen = seen + 1,
                "invalid message dropped"
            );
        } else {
            tracing::debug!(node, what, problem, "invalid message dropped");
        }
    }
}
