//! The controller's in-memory state and its outbound queues.
//!
//! One task owns [`Controller`]; the message intake (`intake.rs`), the
//! reconcile step (`reconcile.rs`) and the views (`view.rs`) are `impl`
//! blocks on it. Nothing here awaits the broker: messages to publish wait
//! in bounded queues that [`Controller::flush`] drains with `try_publish`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rumqttc::{AsyncClient, QoS};
use tollway_topics::{
    CenterEvent, CenterKind, Deployment, DesiredState, EventKind, NodeId, NodeKind, ObjectName,
    Province, Topic,
};

use super::inventory::NodeRecord;
use super::placement::Placement;
use super::rollout::RolloutRecord;
use super::store::{Loaded, Store};

/// Maximum events waiting to be published. Beyond it the oldest is dropped
/// and logged: events are advisory, and the API also serves the state they
/// describe.
pub const MAX_PENDING_EVENTS: usize = 1024;

/// The provincial controller's state.
pub struct Controller {
    pub(super) province: Province,
    pub(super) store: Store,
    pub(super) grace_ms: u64,
    /// Offline time after which a node is forgotten; `None` never.
    pub(super) forget_ms: Option<u64>,
    pub(super) max_nodes: usize,
    pub(super) max_deployments: usize,

    pub(super) nodes: BTreeMap<NodeId, NodeRecord>,
    pub(super) deployments: BTreeMap<ObjectName, Deployment>,
    /// Objects rejected at intake (undecodable, invalid, over the limit),
    /// with the reason. An accepted earlier version keeps running.
    pub(super) rejected: BTreeMap<ObjectName, String>,
    pub(super) placement: Placement,
    /// Each node's last published desired state.
    pub(super) desired: BTreeMap<NodeId, DesiredState>,
    /// Accepted rollouts and their progress.
    pub(super) rollouts: BTreeMap<ObjectName, RolloutRecord>,
    /// Rollout objects rejected at intake, with the reason.
    pub(super) rejected_rollouts: BTreeMap<ObjectName, String>,

    /// Desired states stored but not yet handed to the client, at most one
    /// per node (a newer one replaces an older one).
    pub(super) pending_desired: BTreeMap<NodeId, Vec<u8>>,
    /// Forgotten nodes whose retained presence is still to be cleared.
    pub(super) pending_presence_clears: BTreeSet<NodeId>,
    pub(super) pending_events: VecDeque<CenterEvent>,
    /// The last problem published per deployment, so each is published once.
    pub(super) reported: BTreeMap<ObjectName, String>,

    /// Set when placement inputs changed since the last reconcile.
    pub(super) dirty: bool,
    /// Set when the API snapshot is out of date.
    pub(super) view_stale: bool,
    /// Messages ignored because the node limit was reached, for the log.
    pub(super) ignored_nodes: u64,
    /// Records per hour from the nodes' hourly summaries.
    pub(super) hourly: super::throughput::HourlyCounts,
}

impl Controller {
    /// Builds the controller from what the store holds.
    pub fn new(
        province: Province,
        store: Store,
        loaded: Loaded,
        grace_ms: u64,
        forget_ms: Option<u64>,
        max_nodes: usize,
        max_deployments: usize,
    ) -> Self {
        let placement = Placement {
            assignments: loaded.placement,
            problems: BTreeMap::new(),
        };
        Controller {
            province,
            store,
            grace_ms,
            forget_ms,
            max_nodes,
            max_deployments,
            nodes: loaded.nodes,
            deployments: loaded.deployments,
            rejected: BTreeMap::new(),
            placement,
            desired: loaded.desired,
            rollouts: loaded.rollouts,
            rejected_rollouts: BTreeMap::new(),
            pending_desired: BTreeMap::new(),
            pending_presence_clears: BTreeSet::new(),
            pending_events: VecDeque::new(),
            reported: BTreeMap::new(),
            dirty: true,
            view_stale: true,
            ignored_nodes: 0,
            hourly: Default::default(),
        }
    }

    /// Queues every node's desired state again: after a connect without a
    /// session the broker may have lost its retained messages.
    pub fn republish_all(&mut self) {
        for (node, desired) in &self.desired {
            match tollway_topics::Message::to_cbor(desired) {
                Ok(cbor) => {
                    self.pending_desired.insert(node.clone(), cbor);
                }
                Err(err) => {
                    tracing::error!(%node, generation = desired.generation, %err, "cannot encode a stored desired state");
                }
            }
        }
        tracing::info!(
            nodes = self.pending_desired.len(),
            "queued every node's desired state for publishing"
        );
    }

    /// Queues an event for operators.
    pub(super) fn queue_event(
        &mut self,
        kind: EventKind,
        subject: &str,
        message: String,
        now_ms: u64,
    ) {
        if self.pending_events.len() >= MAX_PENDING_EVENTS
            && let Some(dropped) = self.pending_events.pop_front()
        {
            tracing::warn!(
                subject = dropped.subject,
                "event queue full; dropped the oldest event"
            );
        }
        let mut subject = subject.to_string();
        subject.truncate(tollway_topics::limits::MAX_SHORT_TEXT_LEN);
        let mut message = message;
        if message.len() > tollway_topics::limits::MAX_TEXT_LEN {
            let mut end = tollway_topics::limits::MAX_TEXT_LEN;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        self.pending_events.push_back(CenterEvent {
            kind,
            subject,
            message,
            time_ms: now_ms,
        });
    }

    /// Hands queued desired states and events to the client until its
    /// request channel is full; the rest stay queued for the next call.
    pub fn flush(&mut self, client: &AsyncClient) {
        let province = self.province;
        let sent: Vec<NodeId> = self
            .pending_desired
            .iter()
            .take_while(|(node, cbor)| {
                let topic = Topic::node(province, (*node).clone(), NodeKind::Desired).to_string();
                client
                    .try_publish(topic, QoS::AtLeastOnce, true, (*cbor).clone())
                    .is_ok()
            })
            .map(|(node, _)| node.clone())
            .collect();
        for node in sent {
            self.pending_desired.remove(&node);
        }

        let cleared: Vec<NodeId> = self
            .pending_presence_clears
            .iter()
            .take_while(|node| {
                let topic = Topic::node(province, (*node).clone(), NodeKind::Presence).to_string();
                client
                    .try_publish(topic, QoS::AtLeastOnce, true, Vec::new())
                    .is_ok()
            })
            .cloned()
            .collect();
        for node in cleared {
            self.pending_presence_clears.remove(&node);
        }

        let topic = Topic::center(province, CenterKind::Events).to_string();
        while let Some(event) = self.pending_events.front() {
            let payload = match tollway_topics::Message::to_cbor(event) {
                Ok(payload) => payload,
                Err(err) => {
                    tracing::error!(subject = event.subject, %err, "cannot encode an event; dropped");
                    self.pending_events.pop_front();
                    continue;
                }
            };
            if client
                .try_publish(&topic, QoS::AtLeastOnce, false, payload)
                .is_err()
            {
                break;
            }
            self.pending_events.pop_front();
        }
    }

    /// Number of desired states waiting to be handed to the client.
    pub fn pending_publishes(&self) -> usize {
        self.pending_desired.len()
    }

    /// Deployment names with a problem from intake or placement.
    pub(super) fn problem_names(&self) -> BTreeSet<&ObjectName> {
        self.rejected
            .keys()
            .chain(self.placement.problems.keys())
            .collect()
    }
}
