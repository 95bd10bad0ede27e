//! The national fleet view: the latest status, bridge state and events of
//! each province, as the bridges carry them up.
//!
//! Memory is bounded by the number of provinces (34 codes) and
//! [`MAX_EVENTS_PER_PROVINCE`] recent events each.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use tollway_topics::{BridgeState, CenterEvent, CenterKind, Message, ProvinceStatus, Topic};

/// Recent events kept per province; older ones are dropped.
pub const MAX_EVENTS_PER_PROVINCE: usize = 20;

/// The fleet as `tollwayctl fleet` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetView {
    pub provinces: Vec<ProvinceView>,
}

/// One province.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProvinceView {
    pub province: u8,
    pub name: String,
    /// Whether the last status is older than the stale limit.
    pub stale: bool,
    /// When the last status arrived, Unix milliseconds.
    pub status_received_ms: Option<u64>,
    pub nodes_total: u32,
    pub nodes_online: u32,
    pub nodes_offline: u32,
    pub nodes_converged: u32,
    pub nodes_behind: u32,
    pub nodes_rejecting: u32,
    pub outbox_backlog: u64,
    pub oldest_undelivered_s: Option<u32>,
    pub nodes_backpressure: u32,
    pub apps_failed: u32,
    pub deployments: u32,
    pub deployments_rejected: u32,
    pub records_per_hour: Option<u64>,
    /// The bridge's retained state: `online`, `offline` or `unknown`.
    pub bridge: String,
    pub recent_events: Vec<EventView>,
}

/// A recent centre event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventView {
    pub kind: String,
    pub subject: String,
    pub message: String,
    pub time_ms: u64,
}

#[derive(Debug, Default)]
struct ProvinceEntry {
    status: Option<(ProvinceStatus, u64)>,
    bridge: Option<BridgeState>,
    events: VecDeque<CenterEvent>,
}

/// The aggregator's state.
#[derive(Debug, Default)]
pub struct Fleet {
    provinces: BTreeMap<u8, ProvinceEntry>,
}

impl Fleet {
    /// Applies one message from the national broker.
    pub fn handle_message(&mut self, topic: &str, payload: &[u8], now_ms: u64) {
        let Ok(Topic::Center { province, kind }) = Topic::parse(topic) else {
            tracing::warn!(topic, "ignored a message outside the centre topics");
            return;
        };
        let entry = self.provinces.entry(province.code()).or_default();
        match kind {
            CenterKind::Status => match ProvinceStatus::from_cbor(payload) {
                Ok(status) if status.province == province => entry.status = Some((status, now_ms)),
                Ok(status) => {
                    tracing::warn!(%province, claimed = %status.province, "ignored a province status published under another province's topic");
                }
                Err(err) => tracing::warn!(%province, %err, "ignored an invalid province status"),
            },
            CenterKind::Bridge if payload.is_empty() => entry.bridge = None,
            CenterKind::Bridge => match BridgeState::from_cbor(payload) {
                Ok(state) => entry.bridge = Some(state),
                Err(err) => tracing::warn!(%province, %err, "ignored an invalid bridge state"),
            },
            CenterKind::Events => match CenterEvent::from_cbor(payload) {
                Ok(event) => {
                    if entry.events.len() >= MAX_EVENTS_PER_PROVINCE {
                        entry.events.pop_front();
                    }
                    entry.events.push_back(event);
                }
                Err(err) => tracing::warn!(%province, %err, "ignored an invalid centre event"),
            },
            _ => {}
        }
    }

    /// Builds the view served to operators.
    pub fn view(&self, now_ms: u64, stale_after_ms: u64) -> FleetView {
        let provinces = self
            .provinces
            .iter()
            .map(|(code, entry)| {
                let name = tollway_topics::Province::new(*code)
                    .map(|province| province.name().to_string())
                    .unwrap_or_default();
                let mut view = ProvinceView {
                    province: *code,
                    name,
                    stale: true,
                    bridge: match &entry.bridge {
                        Some(state) if state.online => "online",
                        Some(_) => "offline",
                        None => "unknown",
                    }
                    .to_string(),
                    recent_events: entry.events.iter().map(event_view).collect(),
                    ..ProvinceView::default()
                };
                if let Some((status, received_ms)) = &entry.status {
                    view.stale = now_ms.saturating_sub(*received_ms) > stale_after_ms;
                    view.status_received_ms = Some(*received_ms);
                    view.nodes_total = status.nodes_total;
                    view.nodes_online = status.nodes_online;
                    view.nodes_offline = status.nodes_total.saturating_sub(status.nodes_online);
                    view.nodes_converged = status.nodes_converged;
                    view.nodes_behind = status.nodes_behind;
                    view.nodes_rejecting = status.nodes_rejecting;
                    view.outbox_backlog = status.outbox_backlog;
                    view.oldest_undelivered_s = status.oldest_undelivered_s;
                    view.nodes_backpressure = status.nodes_backpressure;
                    view.apps_failed = status.apps_failed;
                    view.deployments = status.deployments;
                    view.deployments_rejected = status.deployments_rejected;
                    view.records_per_hour = status.records_per_hour;
                }
                view
            })
            .collect();
        FleetView { provinces }
    }
}

fn event_view(event: &CenterEvent) -> EventView {
    EventView {
        kind: format!("{:?}", event.kind),
        subject: event.subject.clone(),
        message: event.message.clone(),
        time_ms: event.time_ms,
    }
}
