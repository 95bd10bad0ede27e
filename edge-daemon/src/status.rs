//! The node's status message on its `status` topic: applied generation and
//! app states (from the app manager's report), outbox depth and age of the
//! oldest undelivered record, free disk, daemon version and back-pressure.
//!
//! The task samples the status every `debounce_ms` and publishes when a
//! field that operators act on changed: generation, apps, rejection,
//! back-pressure, or the outbox turning empty or non-empty. Depth, age and
//! free disk change with every record, so they travel with those messages
//! and with the heartbeat (`heartbeat_s`) only. A new connection always
//! gets a status at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::time::Instant;
use tollway_runtime::CancellationToken;
use tollway_topics::{Message, NodeKind, NodeStatus};

use crate::apps::{AppsReport, ReportReader};
use crate::link::LinkHandle;
use crate::outbox::Outbox;

/// The `status` section of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// Seconds between status messages when nothing changes. Default 300.
    #[serde(default = "default_heartbeat_s")]
    pub heartbeat_s: u64,
    /// Sampling interval, in milliseconds: changes within it are sent as
    /// one message. Default 2000.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
}

fn default_heartbeat_s() -> u64 {
    300
}

fn default_debounce_ms() -> u64 {
    2000
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            heartbeat_s: default_heartbeat_s(),
            debounce_ms: default_debounce_ms(),
        }
    }
}

impl StatusConfig {
    /// Lists every setting that is out of range, each starting with its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.heartbeat_s == 0 {
            problems.push("heartbeat_s must be at least 1".to_string());
        }
        if !(10..=60_000).contains(&self.debounce_ms) {
            problems.push(format!(
                "debounce_ms ({}) must be 10 to 60000",
                self.debounce_ms
            ));
        }
        problems
    }
}

/// Publishes the node's status until `cancel` fires.
pub async fn run_status(
    outbox: Arc<Outbox>,
    link: LinkHandle,
    report: ReportReader,
    data_dir: PathBuf,
    config: StatusConfig,
    cancel: CancellationToken,
) {
    let mut link_state = link.state();
    let mut connection = 0;
    let mut sample = tokio::time::interval(Duration::from_millis(config.debounce_ms));
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let heartbeat = Duration::from_secs(config.heartbeat_s);
    let mut last_sent: Option<(NodeStatus, Instant)> = None;

    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = sample.tick() => {}
            changed = link_state.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
        let state = link_state.borrow_and_update().clone();
        if !state.connected {
            continue;
        }
        let reconnected = state.connection != connection;

        let status = match build_status(&outbox, &report.borrow(), &data_dir) {
            Ok(status) => status,
            Err(err) => {
                tracing::error!(node = %link.node(), error = %err, "cannot build the status");
                continue;
            }
        };
        let due = match &last_sent {
            None => true,
            Some((previous, at)) => {
                reconnected || differs(previous, &status) || at.elapsed() >= heartbeat
            }
        };
        if !due {
            continue;
        }
        let payload = match status.to_cbor() {
            Ok(payload) => payload,
            Err(err) => {
                tracing::error!(node = %link.node(), error = %err, "cannot encode the status");
                continue;
            }
        };
        let bytes = payload.len();
        match link.publish(NodeKind::Status, payload) {
            Ok(()) => {
                connection = state.connection;
                tracing::debug!(node = %link.node(), bytes, depth = status.outbox_depth, backpressure = status.backpressure, "status sent");
                last_sent = Some((status, Instant::now()));
            }
            Err(err) => {
                tracing::debug!(node = %link.node(), error = %err, "status not sent; retrying at the next sample")
            }
        }
    }
    tracing::debug!("status task stopped");
}

/// Builds the status from the app report, the outbox and the data
/// directory's file system.
pub fn build_status(
    outbox: &Outbox,
    report: &AppsReport,
    data_dir: &std::path::Path,
) -> Result<NodeStatus, crate::outbox::OutboxError> {
    let stats = outbox.stats(SystemTime::now())?;
    let (rejected_generation, rejected_reason) = match &report.rejected {
        Some((generation, reason)) => (Some(*generation), Some(reason.clone())),
        None => (None, None),
    };
    Ok(NodeStatus {
        generation: report.generation,
        apps: report.apps.clone(),
        outbox_depth: stats.depth,
        oldest_undelivered_s: stats
            .oldest_undelivered_age
            .map(|age| u32::try_from(age.as_secs()).unwrap_or(u32::MAX)),
        free_disk_mb: free_disk_mb(data_dir),
        version: env!("CARGO_PKG_VERSION").to_string(),
        rejected_generation,
        rejected_reason,
        backpressure: stats.at_cap(),
    })
}

/// True when a field operators act on differs (see the module comment).
fn differs(previous: &NodeStatus, current: &NodeStatus) -> bool {
    previous.generation != current.generation
        || previous.apps != current.apps
        || previous.rejected_generation != current.rejected_generation
        || previous.rejected_reason != current.rejected_reason
        || previous.backpressure != current.backpressure
        || previous.version != current.version
        || (previous.outbox_depth == 0) != (current.outbox_depth == 0)
}

/// Free space for unprivileged users on the file system of `dir`, in MiB;
/// 0 when it cannot be measured (logged at debug level).
fn free_disk_mb(dir: &std::path::Path) -> u32 {
    match rustix::fs::statvfs(dir) {
        Ok(stat) => {
            let bytes = stat.f_bavail.saturating_mul(stat.f_frsize);
            u32::try_from(bytes / (1024 * 1024)).unwrap_or(u32::MAX)
        }
        Err(err) => {
            tracing::debug!(dir = %dir.display(), error = %err, "cannot measure free disk space");
            0
        }
    }
}
