//! Hourly reconciliation: proves each node's hours complete against the
//! records stored, and requests a replay of what is missing.
//!
//! Each pass:
//! 1. collects the missing seq ranges between every node's watermark and the
//!    highest seq stored above it (the gaps that hold its RecordAck back);
//! 2. compares every pending hourly summary (count, pay-fee sum, seq range)
//!    with the stored records of its gantry and hour, adding the seqs of its
//!    range that are not stored;
//! 3. publishes one Replay command per missing range, at most
//!    `max_replays_per_pass` per pass and `max_replay_span` seqs each;
//! 4. publishes a CenterEvent for each hour found incomplete or complete.
//!
//! Commands are not retained: a node that misses one gets it again from the
//! next pass while the range is still missing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tollway_runtime::CancellationToken;
use tollway_topics::{
    CenterEvent, CenterKind, Command, CommandAction, EventKind, Message, NodeId, NodeKind,
    Province, Topic,
};

use crate::config::IngestConfig;
use crate::mqtt::Publisher;
use crate::stats::Stats;
use crate::store::{PendingSummary, RecordStore, StoreError, now_ms};

/// Pending summaries one pass reads; the rest wait for the next pass.
const MAX_SUMMARIES_PER_PASS: usize = 100_000;

/// Runs reconciliation passes for one province's store.
pub struct Reconciler {
    store: Arc<RecordStore>,
    stats: Arc<Stats>,
    publisher: Publisher,
    interval: Duration,
    max_replays: usize,
    max_span: u64,
    /// Source of command ids; starts at the current time in milliseconds so
    /// that ids of a restarted process do not repeat earlier ones.
    next_command_id: AtomicU64,
}

/// The findings of one pass, before anything is published.
#[derive(Default)]
struct Findings {
    /// Missing ranges per node, merged and sorted.
    missing: BTreeMap<(Province, NodeId), Vec<(u64, u64)>>,
    /// Events to publish, per province.
    events: Vec<(Province, CenterEvent)>,
    complete: Vec<PendingSummary>,
}

impl Reconciler {
    pub fn new(
        config: &IngestConfig,
        store: Arc<RecordStore>,
        stats: Arc<Stats>,
        publisher: Publisher,
    ) -> Self {
        Reconciler {
            store,
            stats,
            publisher,
            interval: Duration::from_secs(config.reconcile_interval_s),
            max_replays: config.max_replays_per_pass,
            max_span: config.max_replay_span,
            next_command_id: AtomicU64::new(now_ms()),
        }
    }

    /// Runs a pass every interval until `token` is cancelled.
    pub async fn run(self, token: CancellationToken) {
        tracing::info!(interval_s = self.interval.as_secs(), "reconciler started");
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
            if let Err(err) = self.pass().await {
                tracing::error!(error = %err, "reconciliation pass failed; the next pass tries again");
            }
        }
        tracing::info!("reconciler stopped");
    }

    async fn pass(&self) -> Result<(), StoreError> {
        let store = self.store.clone();
        let findings = tokio::task::spawn_blocking(move || find(&store))
            .await
            .map_err(|err| StoreError::Task(err.to_string()))??;

        let replays = self.publish_replays(&findings.missing).await;
        for (province, event) in &findings.events {
            let counter = match event.kind {
                EventKind::HourComplete => &self.stats.hours_complete,
                _ => &self.stats.hours_incomplete,
            };
            Stats::add(counter, 1);
            self.publish_event(*province, event).await;
        }
        for summary in findings.complete {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.mark_summary_complete(&summary))
                .await
                .map_err(|err| StoreError::Task(err.to_string()))??;
        }
        Stats::add(&self.stats.reconcile_passes, 1);
        tracing::info!(
            nodes_missing = findings.missing.len(),
            replays,
            events = findings.events.len(),
            "reconciliation pass finished"
        );
        Ok(())
    }

    /// Publishes Replay commands for the missing ranges, within the pass's
    /// budget. Returns how many it published.
    async fn publish_replays(
        &self,
        missing: &BTreeMap<(Province, NodeId), Vec<(u64, u64)>>,
    ) -> usize {
        let mut published = 0;
        for ((province, node), ranges) in missing {
            for &(from, to) in ranges {
                let mut start = from;
                while start <= to {
                    if published >= self.max_replays {
                        tracing::warn!(
                            max_replays_per_pass = self.max_replays,
                            "replay budget of this pass used up; the next pass continues"
                        );
                        return published;
                    }
                    let end = to.min(start.saturating_add(self.max_span - 1));
                    if self.publish_replay(*province, node, start, end).await {
                        published += 1;
                    }
                    start = end + 1;
                }
            }
        }
        published
    }

    async fn publish_replay(
        &self,
        province: Province,
        node: &NodeId,
        from_seq: u64,
        to_seq: u64,
    ) -> bool {
        let command = Command {
            id: self.next_command_id.fetch_add(1, Ordering::Relaxed),
            action: CommandAction::Replay { from_seq, to_seq },
        };
        let topic = Topic::node(province, node.clone(), NodeKind::Command).to_string();
        let payload = match command.to_cbor() {
            Ok(payload) => payload,
            Err(err) => {
                tracing::error!(%node, from_seq, to_seq, error = %err, "cannot encode a Replay command");
                return false;
            }
        };
        match self.publisher.publish(topic, payload).await {
            Ok(()) => {
                Stats::add(&self.stats.replays_requested, 1);
                tracing::info!(%node, command = command.id, from_seq, to_seq, "replay requested");
                true
            }
            Err(err) => {
                tracing::warn!(%node, from_seq, to_seq, error = %err, "Replay command not published; the next pass tries again");
                false
            }
        }
    }

    async fn publish_event(&self, province: Province, event: &CenterEvent) {
        let topic = Topic::center(province, CenterKind::Events).to_string();
        let payload = match event.to_cbor() {
            Ok(payload) => payload,
            Err(err) => {
                tracing::error!(subject = %event.subject, error = %err, "cannot encode a CenterEvent");
                return;
            }
        };
        if let Err(err) = self.publisher.publish(topic, payload).await {
            tracing::warn!(subject = %event.subject, error = %err, "CenterEvent not published");
        }
    }
}

/// Reads the store and decides what to replay and report.
fn find(store: &RecordStore) -> Result<Findings, StoreError> {
    let mut findings = Findings::default();
    for gaps in store.gaps_above_watermarks()? {
        findings
            .missing
            .entry((gaps.province, gaps.node))
            .or_default()
            .extend(gaps.ranges);
    }

    let now = now_ms();
    for pending in store.pending_summaries(MAX_SUMMARIES_PER_PASS)? {
        let summary = &pending.summary;
        let tally = store.tally(pending.province, &pending.node, summary)?;
        let subject = format!("{}/{}", summary.gantry_id, summary.hour_batch);
        let complete = tally.missing.is_empty()
            && tally.count == summary.count
            && tally.fee_sum == summary.fee_sum;
        if complete {
            findings.events.push((
                pending.province,
                CenterEvent {
                    kind: EventKind::HourComplete,
                    subject,
                    message: format!(
                        "node {}: {} records, pay fee sum {} fen",
                        pending.node, tally.count, tally.fee_sum
                    ),
                    time_ms: now,
                },
            ));
            findings.complete.push(pending);
            continue;
        }
        findings.events.push((pending.province, CenterEvent {
            kind: EventKind::HourIncomplete,
            subject,
            message: format!(
                "node {}: stored {} of {} records, pay fee sum {} of {} fen, {} seq ranges missing",
                pending.node, tally.count, summary.count, tally.fee_sum, summary.fee_sum, tally.missing.len()
            ),
            time_ms: now,
        }));
        findings
            .missing
            .entry((pending.province, pending.node.clone()))
            .or_default()
            .extend(tally.missing);
    }

    for ranges in findings.missing.values_mut() {
        *ranges = merge_ranges(std::mem::take(ranges));
    }
    findings.missing.retain(|_, ranges| !ranges.is_empty());
    Ok(findings)
}

/// Sorts inclusive ranges and merges those that overlap or touch.
fn merge_ranges(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (from, to) in ranges {
        match merged.last_mut() {
            Some(last) if from <= last.1.saturating_add(1) => last.1 = last.1.max(to),
            _ => merged.push((from, to)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::merge_ranges;

    #[test]
    fn overlapping_ranges_merge() {
        assert_eq!(
            merge_ranges(vec![(5, 9), (1, 3), (4, 4), (12, 20), (15, 16)]),
            vec![(1, 9), (12, 20)]
        );
    }
}
