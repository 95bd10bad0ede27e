//! Publishes the hourly per-gantry summaries (count, fee sum, first and
//! last seq) of closed hours on the node's `summary` topic.
//!
//! The tallies live in the outbox and change with the records they count
//! (see `outbox::summary`). An hour counts as closed once the local clock,
//! in China Standard Time, is past it: gantries number their hourly
//! batches `YYYYMMDDHH` in that zone. A tally is published when its hour is
//! closed and again whenever late records change it, and it is marked
//! published in the outbox, so a restart does not publish it again.
//!
//! NOTE: "published" means handed to the MQTT client with QoS 1, not
//! stored by the centre. A summary lost on the way stays lost until the
//! centre sends a ResendSummary command for its hour.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use time::OffsetDateTime;
use tollway_runtime::CancellationToken;
use tollway_topics::{Message, NodeKind, hour_batch_at};

use crate::link::LinkHandle;
use crate::outbox::Outbox;

/// Summaries published per round at most; the rest follow next round.
const MAX_PER_ROUND: usize = 256;

/// The `summary` section of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryConfig {
    /// Seconds between looks for summaries due. Default 60, so a summary
    /// leaves within about a minute of its hour's end.
    #[serde(default = "default_interval_s")]
    pub interval_s: u64,
}

fn default_interval_s() -> u64 {
    60
}

impl Default for SummaryConfig {
    fn default() -> Self {
        SummaryConfig {
            interval_s: default_interval_s(),
        }
    }
}

impl SummaryConfig {
    /// Lists every setting that is out of range, each starting with its key.
    pub fn problems(&self) -> Vec<String> {
        if self.interval_s == 0 {
            vec!["interval_s must be at least 1".to_string()]
        } else {
            Vec::new()
        }
    }
}

/// Publishes due summaries every `interval_s` and after each reconnect,
/// until `cancel` fires.
pub async fn run_summaries(
    outbox: Arc<Outbox>,
    link: LinkHandle,
    config: SummaryConfig,
    cancel: CancellationToken,
) {
    let mut link_state = link.state();
    let mut ticker = tokio::time::interval(Duration::from_secs(config.interval_s));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticker.tick() => {}
            changed = link_state.changed() => {
                if changed.is_err() {
                    break;
                }
                link_state.borrow_and_update();
            }
        }
        if link.is_connected() {
            publish_due(&outbox, &link).await;
        }
    }
    tracing::debug!("summary task stopped");
}

/// Publishes every summary of a closed hour that changed since it was
/// last published.
async fn publish_due(outbox: &Outbox, link: &LinkHandle) {
    let current = current_hour_batch(OffsetDateTime::now_utc());
    let due = match outbox.unpublished_summaries(current, MAX_PER_ROUND) {
        Ok(due) => due,
        Err(err) => {
            tracing::error!(node = %link.node(), error = %err, "cannot read hourly tallies");
            return;
        }
    };
    for summary in due {
        let payload = match summary.to_cbor() {
            Ok(payload) => payload,
            Err(err) => {
                tracing::error!(node = %link.node(), hour_batch = summary.hour_batch, gantry = %summary.gantry_id, error = %err, "cannot encode an hourly summary");
                continue;
            }
        };
        if let Err(err) = link.publish(NodeKind::Summary, payload) {
            tracing::debug!(node = %link.node(), error = %err, "hourly summary not sent; retrying next round");
            return;
        }
        tracing::info!(
            node = %link.node(),
            hour_batch = summary.hour_batch,
            gantry = %summary.gantry_id,
            count = summary.count,
            fee_sum = summary.fee_sum,
            "hourly summary sent"
        );
        if let Err(err) = outbox.mark_summary_published(&summary).await {
            tracing::error!(node = %link.node(), hour_batch = summary.hour_batch, error = %err, "cannot mark an hourly summary published; it is sent again");
        }
    }
}

/// Returns the hour batch (`YYYYMMDDHH`, China Standard Time) of `now`.
pub fn current_hour_batch(now: OffsetDateTime) -> u32 {
    let unix_ms = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    hour_batch_at(unix_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hour_batch_in_china_standard_time() {
        // 2026-12-04 22:30 UTC is 2026-12-05 06:30 in UTC+8.
        let now = OffsetDateTime::from_unix_timestamp(1_796_423_400).unwrap();
        assert_eq!(current_hour_batch(now), 2026120506);
    }
}
