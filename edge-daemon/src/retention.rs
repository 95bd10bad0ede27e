//! The retention task: prunes delivered records from the outbox on a fixed
//! interval, so replay data stays within its age and size limits.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tollway_runtime::CancellationToken;

use crate::outbox::Outbox;

/// Prunes the outbox every `interval` until `cancel` fires. A prune call
/// that reports more work is followed at once by another, so a large backlog
/// is cleared in steps of the outbox's `max_prune_records`. A failed prune
/// is logged and retried at the next interval.
pub async fn run_retention(outbox: Arc<Outbox>, interval: Duration, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }

        loop {
            match outbox.prune(SystemTime::now()).await {
                Ok(report) if report.more && !cancel.is_cancelled() => continue,
                Ok(report) => {
                    if report.removed > 0 {
                        tracing::info!(
                            node = %outbox.node(),
                            removed = report.removed,
                            first_retained = report.first_retained,
                            "pruned delivered records past retention"
                        );
                    }
                    break;
                }
                Err(err) => {
                    tracing::error!(node = %outbox.node(), error = %err, "retention prune failed; retrying at the next interval");
                    break;
                }
            }
        }
    }
    tracing::debug!("retention task stopped");
}
