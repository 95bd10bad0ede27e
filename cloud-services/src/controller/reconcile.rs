//! The reconcile step: placement, events for problems that are new or
//! changed, a step of every rollout, then each node's desired state.
//!
//! A node's generation is raised only when its list of apps changes, and
//! the new state is stored (synced) before it is queued for publishing.

use std::collections::{BTreeMap, BTreeSet};

use tollway_topics::limits::MAX_APPS_PER_NODE;
use tollway_topics::{AppSpec, DesiredState, EventKind, Message, NodeId, ObjectName};

use super::placement::{Clock, Problem, place};
use super::rollout::RolloutRecord;
use super::state::Controller;

impl Controller {
    /// Recomputes placement and publishes what changed. Cheap when nothing
    /// changed, so it also runs periodically to notice grace periods that
    /// ran out.
    pub fn reconcile(&mut self, now_ms: u64) {
        self.forget_departed(now_ms);
        let clock = Clock {
            now_ms,
            grace_ms: self.grace_ms,
        };
        let placement = place(
            &self.nodes,
            &self.deployments,
            &self.placement.assignments,
            clock,
        );
        if placement.assignments != self.placement.assignments {
            let removed: Vec<ObjectName> = self
                .placement
                .assignments
                .keys()
                .filter(|name| !placement.assignments.contains_key(*name))
                .cloned()
                .collect();
            if let Err(err) = self.store.put_placement(&placement.assignments, &removed) {
                tracing::error!(%err, "cannot store the placement; a restart may place replicas anew");
            }
            self.view_stale = true;
        }
        if placement.problems != self.placement.problems {
            self.view_stale = true;
        }
        self.placement = placement;
        self.report_problems(now_ms);
        self.step_rollouts(now_ms);
        self.update_desired_states();
        self.dirty = false;
    }

    /// Builds each node's apps and stores and queues the states that changed.
    fn update_desired_states(&mut self) {
        let apps_by_node = self.apps_by_node();
        let mut changed: Vec<(NodeId, DesiredState, Vec<u8>)> = Vec::new();

        for (node, record) in &self.nodes {
            let apps = apps_by_node.get(node).cloned().unwrap_or_default();
            let previous = self.desired.get(node);
            let reported = record.status.as_ref().map_or(0, |status| status.generation);
            let floor = previous
                .map_or(0, |desired| desired.generation)
                .max(reported);
            let unchanged = previous
                .is_some_and(|desired| desired.apps == apps && desired.generation >= reported);
            if unchanged {
                continue;
            }
            let desired = DesiredState {
                generation: floor + 1,
                apps,
            };
            match desired.to_cbor() {
                Ok(cbor) => changed.push((node.clone(), desired, cbor)),
                Err(err) => {
                    // NOTE: a node whose apps exceed the desired-state size
                    // limit keeps its previous state; only the log says so.
                    tracing::error!(%node, %err, "cannot encode the node's desired state; it keeps the previous one");
                }
            }
        }
        if changed.is_empty() {
            return;
        }

        let batch: Vec<(&NodeId, &[u8])> = changed
            .iter()
            .map(|(node, _, cbor)| (node, cbor.as_slice()))
            .collect();
        if let Err(err) = self.store.put_desired(&batch) {
            tracing::error!(%err, nodes = changed.len(), "cannot store new desired states; not publishing them, retrying at the next reconcile");
            self.dirty = true;
            return;
        }
        tracing::info!(nodes = changed.len(), "desired states changed");
        for (node, desired, cbor) in changed {
            tracing::debug!(%node, generation = desired.generation, apps = desired.apps.len(), "new desired state");
            self.pending_desired.insert(node.clone(), cbor);
            self.desired.insert(node, desired);
        }
        self.view_stale = true;
    }

    /// Returns the apps each node runs under the current placement and
    /// rollouts, sorted by app name and cut at the per-node limit.
    fn apps_by_node(&self) -> BTreeMap<NodeId, Vec<AppSpec>> {
        let rollouts: BTreeMap<&ObjectName, &RolloutRecord> = self
            .rollouts
            .values()
            .map(|record| (&record.spec.deployment, record))
            .collect();
        let mut apps: BTreeMap<NodeId, Vec<AppSpec>> = BTreeMap::new();
        for (name, nodes) in &self.placement.assignments {
            let Some(deployment) = self.deployments.get(name) else {
                continue;
            };
            let rollout = rollouts.get(name);
            for node in nodes {
                let spec = match rollout {
                    Some(rollout) => rollout.spec_for(node.as_str(), &deployment.app),
                    None => deployment.app.clone(),
                };
                apps.entry(node.clone()).or_default().push(spec);
            }
        }
        for (node, list) in &mut apps {
            list.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
            if list.len() > MAX_APPS_PER_NODE {
                tracing::error!(%node, apps = list.len(), limit = MAX_APPS_PER_NODE, "node would run more apps than a desired state may hold; the apps after the limit in name order are left out");
                list.truncate(MAX_APPS_PER_NODE);
            }
        }
        apps
    }

    /// Queues an event for each placement problem that is new or changed.
    fn report_problems(&mut self, now_ms: u64) {
        let current: BTreeMap<ObjectName, (EventKind, String)> = self
            .placement
            .problems
            .iter()
            .map(|(name, problem)| {
                let (kind, text) = match problem {
                    Problem::Rejected(reason) => (EventKind::ObjectRejected, reason),
                    Problem::Shortfall(reason) => (EventKind::PlacementShortfall, reason),
                };
                (name.clone(), (kind, text.clone()))
            })
            .collect();
        for (name, (kind, reason)) in &current {
            if self.reported.get(name) == Some(reason) {
                continue;
            }
            tracing::warn!(deployment = %name, reason, "deployment not placed as asked");
            let verb = match kind {
                EventKind::ObjectRejected => "rejected",
                _ => "placed in part",
            };
            self.queue_event(
                *kind,
                name.as_str(),
                format!("deployment {name} {verb}: {reason}"),
                now_ms,
            );
            self.reported.insert(name.clone(), reason.clone());
        }
        let keep: BTreeSet<&ObjectName> = current.keys().chain(self.rejected.keys()).collect();
        self.reported.retain(|name, _| keep.contains(name));
    }
}
