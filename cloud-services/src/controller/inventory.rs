//! The node inventory: what the controller knows about each node from its
//! presence and status messages.
//!
//! Records are persisted (see `store.rs`), so a restarted controller knows
//! every node, its labels and when it went offline without waiting for
//! thousands of retained presence messages.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tollway_topics::{AppState, NodeStatus, Presence};

/// One node as the controller knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Labels from the node's last online presence.
    pub labels: BTreeMap<String, String>,
    pub online: bool,
    /// When the node was last seen going offline, Unix milliseconds; `None`
    /// while online or when it was never seen offline.
    pub offline_since_ms: Option<u64>,
    /// When the controller last heard from the node, Unix milliseconds.
    pub last_seen_ms: u64,
    /// Daemon version from presence.
    pub version: Option<String>,
    /// The node's last status, if any.
    pub status: Option<StatusSummary>,
}

/// The parts of a node's status the controller keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSummary {
    /// Generation the node reports as applied.
    pub generation: u64,
    pub apps: Vec<AppSummary>,
    pub outbox_depth: u64,
    pub oldest_undelivered_s: Option<u32>,
    pub free_disk_mb: u32,
    pub backpressure: bool,
    pub rejected_generation: Option<u64>,
    pub rejected_reason: Option<String>,
    /// When the status arrived, Unix milliseconds.
    pub received_ms: u64,
}

/// One app's state on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSummary {
    pub name: String,
    /// `pending`, `pulling`, `starting`, `running`, `failed` or `stopped`.
    pub state: String,
    pub restarts: u32,
    pub reason: Option<String>,
    pub failed: bool,
    /// True once the node has pulled the spec's next image.
    #[serde(default)]
    pub next_image_ready: bool,
    /// The app's interruption at its last image switch, in milliseconds.
    #[serde(default)]
    pub last_switch_ms: Option<u32>,
}

impl NodeRecord {
    /// Applies a presence message. The will message carries no labels, so
    /// the labels of the last online message stay.
    pub fn apply_presence(&mut self, presence: &Presence, now_ms: u64) {
        self.last_seen_ms = now_ms;
        if presence.online {
            self.online = true;
            self.offline_since_ms = None;
            self.labels = presence.labels.clone();
            self.version = presence.version.clone();
        } else if self.online || self.offline_since_ms.is_none() {
            self.online = false;
            self.offline_since_ms = Some(now_ms);
        }
    }

    /// Applies a status message. A node that sends status is connected, so
    /// it counts as online even if its online presence was missed.
    pub fn apply_status(&mut self, status: &NodeStatus, now_ms: u64) {
        self.last_seen_ms = now_ms;
        if !self.online {
            self.online = true;
            self.offline_since_ms = None;
        }
        self.status = Some(StatusSummary {
            generation: status.generation,
            apps: status
                .apps
                .iter()
                .map(|app| AppSummary {
                    name: app.name.clone(),
                    state: state_name(app.state).to_string(),
                    restarts: app.restarts,
                    reason: app.reason.clone(),
                    failed: app.state == AppState::Failed,
                    next_image_ready: app.next_image_ready,
                    last_switch_ms: app.last_switch_ms,
                })
                .collect(),
            outbox_depth: status.outbox_depth,
            oldest_undelivered_s: status.oldest_undelivered_s,
            free_disk_mb: status.free_disk_mb,
            backpressure: status.backpressure,
            rejected_generation: status.rejected_generation,
            rejected_reason: status.rejected_reason.clone(),
            received_ms: now_ms,
        });
    }

    /// Returns how long the node has been offline, in milliseconds; `None`
    /// while it is online. A node known only from the store counts from
    /// `last_seen_ms`.
    pub fn offline_for_ms(&self, now_ms: u64) -> Option<u64> {
        match (self.online, self.offline_since_ms) {
            (true, _) => None,
            (false, Some(since)) => Some(now_ms.saturating_sub(since)),
            (false, None) => Some(now_ms.saturating_sub(self.last_seen_ms)),
        }
    }

    /// Reports whether replica instances may stay on or move to this node:
    /// it is online, or offline for less than `grace_ms`.
    pub fn within_grace(&self, now_ms: u64, grace_ms: u64) -> bool {
        match (self.online, self.offline_since_ms) {
            (true, _) => true,
            (false, Some(since)) => now_ms.saturating_sub(since) < grace_ms,
            // Known only from the store, never seen offline: treat like a
            // node that just went offline would be treated at `last_seen_ms`.
            (false, None) => now_ms.saturating_sub(self.last_seen_ms) < grace_ms,
        }
    }
}

fn state_name(state: AppState) -> &'static str {
    match state {
        AppState::Pending => "pending",
        AppState::Pulling => "pulling",
        AppState::Starting => "starting",
        AppState::Running => "running",
        AppState::Failed => "failed",
        AppState::Stopped => "stopped",
    }
}
