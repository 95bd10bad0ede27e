//! The retention service: runs the record store's prune passes (records,
//! then completed hourly summaries) at a fixed interval in a process that
//! forwards records (a province) or receives them (the national centre). Which records may go is the store's rule
//! (`store/retention.rs`).

use std::sync::Arc;
use std::time::Duration;

use tollway_runtime::Shutdown;

use crate::config::StoreConfig;
use crate::stats::Stats;
use crate::store::{PruneScope, RecordStore, now_ms};

const DAY_MS: u64 = 24 * 3600 * 1000;

/// Starts the retention task.
pub fn start(
    config: &StoreConfig,
    scope: PruneScope,
    store: Arc<RecordStore>,
    stats: Arc<Stats>,
    shutdown: &mut Shutdown,
) {
    let retention_ms = u64::from(config.retention_days) * DAY_MS;
    let interval = Duration::from_secs(config.prune_interval_s);
    let max = config.max_prune_records;
    let token = shutdown.token();
    tracing::info!(
        ?scope,
        retention_days = config.retention_days,
        interval_s = config.prune_interval_s,
        "retention started"
    );

    shutdown.spawn("retention", async move {
        loop {
            let cutoff_ms = now_ms().saturating_sub(retention_ms);
            run_pass(&store, &stats, scope, cutoff_ms, max).await;
            prune_summaries(&store, &stats, cutoff_ms, max).await;
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    });
}

/// Prunes in batches of `max` until nothing more is due or a batch fails.
async fn run_pass(
    store: &Arc<RecordStore>,
    stats: &Arc<Stats>,
    scope: PruneScope,
    cutoff_ms: u64,
    max: usize,
) {
    let mut removed = 0;
    loop {
        let batch_store = Arc::clone(store);
        let result =
            tokio::task::spawn_blocking(move || batch_store.prune(scope, cutoff_ms, max)).await;
        match result {
            Ok(Ok(report)) => {
                removed += report.removed;
                Stats::add(&stats.records_pruned, report.removed);
                if !report.more {
                    break;
                }
            }
            Ok(Err(err)) => {
                tracing::error!(?scope, removed, error = %err, "retention pass stopped; the next pass tries again");
                return;
            }
            Err(err) => {
                tracing::error!(?scope, removed, error = %err, "retention task failed; the next pass tries again");
                return;
            }
        }
    }
    if removed > 0 {
        tracing::info!(?scope, removed, cutoff_ms, "expired records deleted");
    }
}

/// Deletes completed hourly summaries older than the cutoff, in batches of
/// `max`, until none is left or a batch fails.
async fn prune_summaries(store: &Arc<RecordStore>, stats: &Arc<Stats>, cutoff_ms: u64, max: usize) {
    let mut removed = 0;
    loop {
        let batch_store = Arc::clone(store);
        let result =
            tokio::task::spawn_blocking(move || batch_store.prune_summaries(cutoff_ms, max)).await;
        match result {
            Ok(Ok(report)) => {
                removed += report.removed;
                Stats::add(&stats.summaries_pruned, report.removed);
                if !report.more {
                    break;
                }
            }
            Ok(Err(err)) => {
                tracing::error!(removed, error = %err, "summary retention pass stopped; the next pass tries again");
                return;
            }
            Err(err) => {
                tracing::error!(removed, error = %err, "summary retention task failed; the next pass tries again");
                return;
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, cutoff_ms, "expired hourly summaries deleted");
    }
}
