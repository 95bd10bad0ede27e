//! Intake of incoming messages: node presence and status into the
//! inventory, hourly summaries into the records-per-hour count, deployment
//! objects into the accepted set or the rejected list. Rollout objects are
//! handled in `rollout/intake.rs`.
//!
//! A malformed message is logged with the node or object it names and
//! ignored (a rejected deployment also becomes an event); it never stops
//! the controller.

use tollway_topics::{
    Deployment, EventKind, HourlySummary, Message, NodeId, NodeKind, NodeStatus, ObjectName,
    OpsKind, Presence, Tombstone, Topic,
};

use super::inventory::NodeRecord;
use super::state::Controller;

impl Controller {
    /// Handles one publish from the broker.
    pub fn handle_message(&mut self, topic: &str, payload: &[u8], now_ms: u64) {
        let parsed = match Topic::parse(topic) {
            Ok(parsed) => parsed,
            Err(err) => {
                tracing::warn!(topic, %err, "ignored a message on a topic outside the contract");
                return;
            }
        };
        match parsed {
            Topic::Node {
                province,
                node,
                kind,
            } if province == self.province => match kind {
                NodeKind::Presence => self.handle_presence(node, payload, now_ms),
                NodeKind::Status => self.handle_status(node, payload, now_ms),
                NodeKind::Summary => self.handle_summary(node, payload),
                // Our own retained desired states come back on subscribe.
                _ => {}
            },
            Topic::Ops {
                kind: OpsKind::Deployment,
                name,
            } => self.handle_deployment(name, payload, now_ms),
            Topic::Ops {
                kind: OpsKind::Rollout,
                name,
            } => self.handle_rollout(name, payload, now_ms),
            _ => {}
        }
    }

    fn handle_presence(&mut self, node: NodeId, payload: &[u8], now_ms: u64) {
        if payload.is_empty() {
            // An empty retained payload clears presence; the inventory keeps the node.
            return;
        }
        let presence = match Presence::from_cbor(payload) {
            Ok(presence) => presence,
            Err(err) => {
                tracing::warn!(%node, %err, "ignored an invalid presence message");
                return;
            }
        };
        let Some(record) = self.node_entry(&node) else {
            return;
        };
        let before = (record.online, record.labels.clone());
        record.apply_presence(&presence, now_ms);
        let changed = before != (record.online, record.labels.clone());
        let record = record.clone();
        if changed {
            tracing::info!(%node, online = record.online, labels = record.labels.len(), "node presence changed");
            self.dirty = true;
        }
        self.view_stale = true;
        self.persist_node(&node, &record);
    }

    /// Counts a node's hourly summary towards the province's records per
    /// hour. The ingest checks summaries against the store; here only the
    /// count matters, and only from nodes in the inventory.
    fn handle_summary(&mut self, node: NodeId, payload: &[u8]) {
        if !self.nodes.contains_key(&node) {
            return;
        }
        match HourlySummary::from_cbor(payload) {
            Ok(summary) => {
                self.hourly.record(&node, &summary);
                self.view_stale = true;
            }
            Err(err) => tracing::warn!(%node, %err, "ignored an invalid hourly summary"),
        }
    }

    fn handle_status(&mut self, node: NodeId, payload: &[u8], now_ms: u64) {
        let status = match NodeStatus::from_cbor(payload) {
            Ok(status) => status,
            Err(err) => {
                tracing::warn!(%node, %err, "ignored an invalid status message");
                return;
            }
        };
        let Some(record) = self.node_entry(&node) else {
            return;
        };
        let was_online = record.online;
        record.apply_status(&status, now_ms);
        let record = record.clone();
        if !was_online {
            self.dirty = true;
        }
        if let Some(generation) = status.rejected_generation {
            tracing::warn!(%node, generation, reason = status.rejected_reason.as_deref().unwrap_or(""), "node rejected its desired state");
        }
        // A node that applied a generation newer than any this controller
        // published (its store was lost or replaced) raises the floor, so
        // the next generation sent is newer still.
        let stored = self
            .desired
            .get(&node)
            .map_or(0, |desired| desired.generation);
        if status.generation > stored {
            tracing::warn!(%node, generation = status.generation, "node reports a generation newer than the stored one; publishing above it");
            self.dirty = true;
        }
        self.view_stale = true;
        self.persist_node(&node, &record);
    }

    /// Returns the node's record, creating it unless the node limit is reached.
    fn node_entry(&mut self, node: &NodeId) -> Option<&mut NodeRecord> {
        if !self.nodes.contains_key(node) {
            if self.nodes.len() >= self.max_nodes {
                self.ignored_nodes += 1;
                if self.ignored_nodes.is_power_of_two() {
                    tracing::error!(%node, max_nodes = self.max_nodes, ignored = self.ignored_nodes, "node limit reached; ignoring messages from new nodes (raise controller.max_nodes)");
                }
                return None;
            }
            tracing::info!(%node, "new node in the inventory");
            self.dirty = true;
        }
        Some(self.nodes.entry(node.clone()).or_default())
    }

    fn persist_node(&mut self, node: &NodeId, record: &NodeRecord) {
        if let Err(err) = self.store.put_node(node, record) {
            tracing::error!(%node, %err, "cannot store the node record; it lives in memory until the next change");
        }
    }

    fn handle_deployment(&mut self, name: ObjectName, payload: &[u8], now_ms: u64) {
        if Tombstone::deletes(payload) {
            self.delete_deployment(&name);
            return;
        }
        let deployment = match Deployment::from_cbor(payload) {
            Ok(deployment) => deployment,
            Err(err) => {
                self.reject(&name, format!("invalid deployment object: {err}"), now_ms);
                return;
            }
        };
        if deployment.name != name {
            self.reject(
                &name,
                format!(
                    "the object names deployment {} but was published on the topic of {name}; publish it on tollway/v1/ops/deployments/{}",
                    deployment.name, deployment.name
                ),
                now_ms,
            );
            return;
        }
        if self.deployments.get(&name) == Some(&deployment) {
            // A retained copy seen again after a reconnect.
            self.rejected.remove(&name);
            return;
        }
        if !self.deployments.contains_key(&name) && self.deployments.len() >= self.max_deployments {
            self.reject(
                &name,
                format!(
                    "the province already has {} deployments, the maximum (controller.max_deployments)",
                    self.max_deployments
                ),
                now_ms,
            );
            return;
        }
        if let Err(err) = self.store.put_deployment(&deployment, payload) {
            tracing::error!(deployment = %name, %err, "cannot store the deployment; ignoring it until it is published again");
            return;
        }
        tracing::info!(deployment = %name, "deployment accepted");
        self.rejected.remove(&name);
        self.deployments.insert(name, deployment);
        self.dirty = true;
    }

    fn delete_deployment(&mut self, name: &ObjectName) {
        self.rejected.remove(name);
        if self.deployments.remove(name).is_none() {
            return;
        }
        if let Err(err) = self.store.delete_deployment(name) {
            tracing::error!(deployment = %name, %err, "cannot delete the stored deployment; it returns after a restart");
        }
        tracing::info!(deployment = %name, "deployment deleted");
        self.dirty = true;
    }

    fn reject(&mut self, name: &ObjectName, reason: String, now_ms: u64) {
        tracing::warn!(deployment = %name, reason, "deployment rejected");
        if self.rejected.get(name) != Some(&reason) {
            self.queue_event(
                EventKind::ObjectRejected,
                name.as_str(),
                format!("deployment {name} rejected: {reason}"),
                now_ms,
            );
            self.reported.insert(name.clone(), reason.clone());
        }
        self.rejected.insert(name.clone(), reason);
        self.view_stale = true;
    }
}
