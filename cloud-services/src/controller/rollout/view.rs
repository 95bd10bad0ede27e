//! The rollout status the API serves (`GET /v1/rollouts[/{name}]`) and
//! `tollwayctl rollout status` prints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tollway_topics::{NodeId, Rollout};

use super::super::state::Controller;
use super::{NodePhase, RolloutRecord, RolloutState, WavePhase};

/// One rollout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutView {
    pub name: String,
    pub deployment: String,
    pub image: String,
    /// The deployment's image when the rollout started.
    pub from_image: Option<String>,
    /// `running`, `paused`, `blocked`, `aborted`, `completed` or `rejected`.
    pub state: String,
    /// The reason the rollout is paused, blocked or rejected.
    pub reason: Option<String>,
    /// 1-based number of the wave in progress, or of the last wave once
    /// complete; 0 before the first starts.
    pub wave: usize,
    pub waves: usize,
    /// `prefetch`, `switch`, or `done` once complete.
    pub phase: String,
    /// The current wave's nodes by phase.
    pub wave_counts: BTreeMap<String, usize>,
    /// Every started wave's nodes by phase.
    pub total_counts: BTreeMap<String, usize>,
    /// Nodes that failed on the new image, with the reason, including
    /// failed nodes rolled back since.
    pub failures: Vec<NodeOutcome>,
    /// Every node of a started wave.
    pub nodes: Vec<NodeOutcome>,
    pub wave_history: Vec<WaveView>,
    /// The accepted object, which `tollwayctl rollout pause|resume|abort`
    /// publishes again with a new `control`; absent for a rejected one.
    pub spec: Option<Rollout>,
}

/// One node of a rollout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeOutcome {
    pub node: String,
    /// 1-based wave number.
    pub wave: usize,
    /// `prefetching`, `switching`, `succeeded`, `failed`, `rollback-pending`,
    /// `rolling-back` or `rolled-back`.
    pub phase: String,
    pub online: bool,
    pub reason: Option<String>,
    /// When the controller switched the node, Unix milliseconds.
    pub switched_ms: Option<u64>,
    /// The interruption the node measured at its last switch of the app
    /// (old container stop to new container running), in milliseconds.
    pub switch_ms: Option<u32>,
}

/// One started wave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaveView {
    pub wave: usize,
    pub nodes: usize,
    pub started_ms: u64,
    pub switch_started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

impl Controller {
    /// Builds the view of every rollout, rejected ones included.
    pub(in crate::controller) fn rollout_views(&self) -> Vec<RolloutView> {
        let mut views: Vec<RolloutView> = self
            .rollouts
            .values()
            .map(|record| self.rollout_view(record))
            .collect();
        for (name, reason) in &self.rejected_rollouts {
            if self.rollouts.contains_key(name) {
                // An accepted version keeps running; show the rejection on it.
                if let Some(view) = views.iter_mut().find(|view| view.name == name.as_str()) {
                    view.reason = Some(format!("newer object rejected: {reason}"));
                }
                continue;
            }
            views.push(RolloutView {
                name: name.to_string(),
                deployment: String::new(),
                image: String::new(),
                from_image: None,
                state: "rejected".to_string(),
                reason: Some(reason.clone()),
                wave: 0,
                waves: 0,
                phase: String::new(),
                wave_counts: BTreeMap::new(),
                total_counts: BTreeMap::new(),
                failures: Vec::new(),
                nodes: Vec::new(),
                wave_history: Vec::new(),
                spec: None,
            });
        }
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }

    fn rollout_view(&self, record: &RolloutRecord) -> RolloutView {
        let progress = &record.progress;
        let app = self
            .deployments
            .get(&record.spec.deployment)
            .map(|deployment| deployment.app.name.to_string());
        let nodes: Vec<NodeOutcome> = progress
            .nodes
            .iter()
            .map(|(node, node_progress)| {
                let node_record = NodeId::new(node.as_str())
                    .ok()
                    .and_then(|id| self.nodes.get(&id));
                let switched = matches!(
                    node_progress.phase,
                    NodePhase::Switching | NodePhase::Succeeded | NodePhase::Failed
                );
                let switch_ms = node_record
                    .and_then(|record| record.status.as_ref())
                    .and_then(|status| {
                        status
                            .apps
                            .iter()
                            .find(|status| Some(&status.name) == app.as_ref())
                    })
                    .and_then(|status| status.last_switch_ms)
                    .filter(|_| switched);
                NodeOutcome {
                    node: node.clone(),
                    wave: node_progress.wave + 1,
                    phase: phase_name(node_progress.phase).to_string(),
                    online: node_record.is_some_and(|record| record.online),
                    reason: node_progress.reason.clone(),
                    switched_ms: node_progress.switched_ms,
                    switch_ms,
                }
            })
            .collect();
        let current = progress.current_wave;
        let shown_wave = current.min(progress.waves.len().saturating_sub(1));
        let mut wave_counts = BTreeMap::new();
        let mut total_counts = BTreeMap::new();
        for node in &nodes {
            *total_counts.entry(node.phase.clone()).or_insert(0) += 1;
            if node.wave == shown_wave + 1 {
                *wave_counts.entry(node.phase.clone()).or_insert(0) += 1;
                if !node.online && matches!(node.phase.as_str(), "prefetching" | "switching") {
                    *wave_counts.entry("offline".to_string()).or_insert(0) += 1;
                }
            }
        }
        RolloutView {
            name: record.spec.name.to_string(),
            deployment: record.spec.deployment.to_string(),
            image: record.spec.image.clone(),
            from_image: progress.from_image.clone(),
            state: state_name(progress.state).to_string(),
            reason: progress.reason.clone(),
            wave: if progress.waves.is_empty() {
                0
            } else {
                shown_wave + 1
            },
            waves: record.spec.waves.len(),
            phase: match (progress.state, progress.wave_phase) {
                (RolloutState::Completed, _) => "done",
                (_, WavePhase::Prefetch) => "prefetch",
                (_, WavePhase::Switch) => "switch",
            }
            .to_string(),
            wave_counts,
            total_counts,
            failures: nodes
                .iter()
                .filter(|node| node.reason.is_some())
                .cloned()
                .collect(),
            nodes,
            wave_history: progress
                .waves
                .iter()
                .enumerate()
                .map(|(index, wave)| WaveView {
                    wave: index + 1,
                    nodes: wave.nodes.len(),
                    started_ms: wave.started_ms,
                    switch_started_ms: wave.switch_started_ms,
                    finished_ms: wave.finished_ms,
                })
                .collect(),
            spec: Some(record.spec.clone()),
        }
    }
}

fn phase_name(phase: NodePhase) -> &'static str {
    match phase {
        NodePhase::Prefetching => "prefetching",
        NodePhase::Switching => "switching",
        NodePhase::Succeeded => "succeeded",
        NodePhase::Failed => "failed",
        NodePhase::RollbackPending => "rollback-pending",
        NodePhase::RollingBack => "rolling-back",
        NodePhase::RolledBack => "rolled-back",
    }
}

fn state_name(state: RolloutState) -> &'static str {
    match state {
        RolloutState::Running => "running",
        RolloutState::Paused => "paused",
        RolloutState::Blocked => "blocked",
        RolloutState::Aborted => "aborted",
        RolloutState::Completed => "completed",
    }
}
