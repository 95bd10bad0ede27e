//! Rollout objects from `tollway/v1/ops/rollouts/{name}`: accepted,
//! replaced, deleted (empty payload) or rejected with an event.
//!
//! A deployment has at most one rollout object. A second one is rejected,
//! because a completed rollout keeps overriding the deployment's image until
//! the rollout object is deleted.

use tollway_topics::{EventKind, Message, ObjectName, Rollout, Tombstone};

use super::super::state::Controller;
use super::{Progress, RolloutRecord, fingerprint};

impl Controller {
    /// Handles one publish on a rollout topic.
    pub(in crate::controller) fn handle_rollout(
        &mut self,
        name: ObjectName,
        payload: &[u8],
        now_ms: u64,
    ) {
        if Tombstone::deletes(payload) {
            self.delete_rollout(&name);
            return;
        }
        let spec = match Rollout::from_cbor(payload) {
            Ok(spec) => spec,
            Err(err) => {
                self.reject_rollout(&name, format!("invalid rollout object: {err}"), now_ms);
                return;
            }
        };
        if spec.name != name {
            self.reject_rollout(
                &name,
                format!(
                    "the object names rollout {} but was published on the topic of {name}; publish it on tollway/v1/ops/rollouts/{}",
                    spec.name, spec.name
                ),
                now_ms,
            );
            return;
        }
        if let Some(other) = self
            .rollouts
            .values()
            .find(|other| other.spec.name != name && other.spec.deployment == spec.deployment)
        {
            let reason = format!(
                "deployment {} already has rollout {}; set the deployment's image to {}, delete rollout {}, then apply this one",
                spec.deployment, other.spec.name, other.spec.image, other.spec.name
            );
            self.reject_rollout(&name, reason, now_ms);
            return;
        }
        let existing = self.rollouts.get(&name);
        if existing.is_some_and(|record| record.spec == spec) {
            // A retained copy seen again after a reconnect.
            self.rejected_rollouts.remove(&name);
            return;
        }
        if existing.is_none() && self.rollouts.len() >= self.max_deployments {
            self.reject_rollout(
                &name,
                format!(
                    "the province already has {} rollouts, the maximum (controller.max_deployments)",
                    self.max_deployments
                ),
                now_ms,
            );
            return;
        }

        let progress = match existing {
            Some(record) if record.progress.fingerprint == fingerprint(&spec) => {
                record.progress.clone()
            }
            Some(_) => {
                tracing::info!(rollout = %name, "rollout object changed its deployment, image or waves; starting over from the first wave");
                Progress::new(&spec)
            }
            None => Progress::new(&spec),
        };
        let record = RolloutRecord { spec, progress };
        if let Err(err) = self.store.put_rollout(&name, &record) {
            tracing::error!(rollout = %name, %err, "cannot store the rollout; ignoring it until it is published again");
            return;
        }
        tracing::info!(rollout = %name, deployment = %record.spec.deployment, image = record.spec.image, control = ?record.spec.control, "rollout accepted");
        self.rejected_rollouts.remove(&name);
        self.rollouts.insert(name, record);
        self.dirty = true;
        self.view_stale = true;
    }

    fn delete_rollout(&mut self, name: &ObjectName) {
        self.rejected_rollouts.remove(name);
        if self.rollouts.remove(name).is_none() {
            return;
        }
        if let Err(err) = self.store.delete_rollout(name) {
            tracing::error!(rollout = %name, %err, "cannot delete the stored rollout; it returns after a restart");
        }
        tracing::info!(rollout = %name, "rollout deleted; its nodes return to the deployment's image");
        self.dirty = true;
        self.view_stale = true;
    }

    fn reject_rollout(&mut self, name: &ObjectName, reason: String, now_ms: u64) {
        tracing::warn!(rollout = %name, reason, "rollout rejected");
        if self.rejected_rollouts.get(name) != Some(&reason) {
            self.queue_event(
                EventKind::ObjectRejected,
                name.as_str(),
                format!("rollout {name} rejected: {reason}"),
                now_ms,
            );
        }
        self.rejected_rollouts.insert(name.clone(), reason);
        self.view_stale = true;
    }
}
