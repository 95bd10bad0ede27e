//! The rollout state machine: one step per reconcile, reading the node
//! inventory and the published desired states and moving each rollout on.
//!
//! A node's outcome counts only once its status reports the generation of
//! its current desired state, so a status sent before the node saw the
//! switch is never taken for success.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use tollway_topics::{Deployment, DesiredState, EventKind, NodeId, ObjectName, RolloutControl};

use super::super::inventory::{AppSummary, NodeRecord};
use super::super::state::Controller;
use super::{NodePhase, Progress, RolloutRecord, RolloutState, WavePhase, WaveProgress, threshold};

/// The controller state a step reads.
pub struct Inputs<'a> {
    pub nodes: &'a BTreeMap<NodeId, NodeRecord>,
    pub desired: &'a BTreeMap<NodeId, DesiredState>,
    pub assignments: &'a BTreeMap<ObjectName, BTreeSet<NodeId>>,
    pub deployments: &'a BTreeMap<ObjectName, Deployment>,
}

/// An event for the controller to publish: its kind and message.
pub type StepEvent = (EventKind, String);

impl Controller {
    /// Moves every rollout on, stores the ones that changed and queues
    /// their events.
    pub(in crate::controller) fn step_rollouts(&mut self, now_ms: u64) {
        let names: Vec<ObjectName> = self.rollouts.keys().cloned().collect();
        for name in names {
            let inputs = Inputs {
                nodes: &self.nodes,
                desired: &self.desired,
                assignments: &self.placement.assignments,
                deployments: &self.deployments,
            };
            let Some(record) = self.rollouts.get(&name) else {
                continue;
            };
            let mut next = record.clone();
            let events = step(&name, &mut next, &inputs, now_ms);
            if next == *record {
                continue;
            }
            if let Err(err) = self.store.put_rollout(&name, &next) {
                tracing::error!(rollout = %name, %err, "cannot store rollout progress; a restart resumes from the last stored step");
            }
            self.rollouts.insert(name.clone(), next);
            self.view_stale = true;
            for (kind, message) in events {
                tracing::info!(rollout = %name, message, "rollout event");
                self.queue_event(kind, name.as_str(), message, now_ms);
            }
        }
    }

    /// Reports whether a rollout needs a step sooner than the periodic
    /// reconcile.
    pub fn rollouts_active(&self) -> bool {
        self.rollouts.values().any(RolloutRecord::needs_steps)
    }
}

/// Moves one rollout on and returns the events of the step.
pub fn step(
    name: &ObjectName,
    record: &mut RolloutRecord,
    inputs: &Inputs<'_>,
    now_ms: u64,
) -> Vec<StepEvent> {
    let mut events = Vec::new();
    apply_control(name, record, now_ms, &mut events);
    let state = record.progress.state;
    if state == RolloutState::Paused {
        if let Some(deployment) = inputs.deployments.get(&record.spec.deployment) {
            roll_back_eligible(record, inputs, deployment.app.name.as_str());
        }
        return events;
    }
    if state == RolloutState::Aborted {
        return events;
    }

    let deployment = inputs.deployments.get(&record.spec.deployment);
    let placed = inputs.assignments.contains_key(&record.spec.deployment);
    if state == RolloutState::Completed && (deployment.is_none() || !placed) {
        // A completed rollout stays complete; it applies again once the
        // deployment is back.
        return events;
    }
    let Some(deployment) = deployment else {
        block(
            record,
            format!("deployment {} not found", record.spec.deployment),
        );
        return events;
    };
    let Some(targets) = inputs.assignments.get(&record.spec.deployment) else {
        block(
            record,
            format!(
                "deployment {} is not placed on any node",
                record.spec.deployment
            ),
        );
        return events;
    };
    if state == RolloutState::Blocked {
        record.progress.state = RolloutState::Running;
        record.progress.reason = None;
    }
    if record.progress.from_image.is_none() {
        record.progress.from_image = Some(deployment.app.image.clone());
        if deployment.app.image == record.spec.image {
            record.progress.state = RolloutState::Completed;
            record.progress.current_wave = record.spec.waves.len();
            events.push((
                EventKind::RolloutCompleted,
                format!(
                    "rollout {name} completed at once: deployment {} already runs {}",
                    record.spec.deployment, record.spec.image
                ),
            ));
            return events;
        }
    }

    let app = deployment.app.name.as_str();
    evaluate_outcomes(record, inputs, app, now_ms);
    if record.progress.state == RolloutState::Completed {
        let last = record.progress.waves.len().saturating_sub(1);
        switch_eligible(record, inputs, last, now_ms);
        return events;
    }
    advance_waves(name, record, inputs, targets, app, now_ms, &mut events);
    events
}

/// Follows the object's `control` field: pause, resume or abort.
fn apply_control(
    name: &ObjectName,
    record: &mut RolloutRecord,
    now_ms: u64,
    events: &mut Vec<StepEvent>,
) {
    let progress = &mut record.progress;
    match record.spec.control {
        RolloutControl::Abort => {
            if !matches!(
                progress.state,
                RolloutState::Aborted | RolloutState::Completed
            ) {
                progress.state = RolloutState::Aborted;
                progress.reason = Some("aborted by an operator".to_string());
                events.push((
                    EventKind::RolloutAborted,
                    format!(
                        "rollout {name} aborted in wave {} of {}; switched nodes keep {}, the others keep the previous image",
                        progress.current_wave + 1,
                        record.spec.waves.len(),
                        record.spec.image
                    ),
                ));
            }
        }
        RolloutControl::Pause => {
            if matches!(
                progress.state,
                RolloutState::Running | RolloutState::Blocked
            ) {
                progress.state = RolloutState::Paused;
                progress.reason = Some("paused by an operator".to_string());
                events.push((
                    EventKind::RolloutPaused,
                    format!(
                        "rollout {name} paused by an operator in wave {} of {}",
                        progress.current_wave + 1,
                        record.spec.waves.len()
                    ),
                ));
            }
        }
        RolloutControl::Run => {
            if progress.state != RolloutState::Paused {
                return;
            }
            match progress.failure_pause_resume {
                None => {
                    tracing::info!(rollout = %name, "rollout resumed by an operator");
                    progress.state = RolloutState::Running;
                    progress.reason = None;
                }
                Some(at) if record.spec.resume > at => {
                    tracing::info!(rollout = %name, wave = progress.current_wave + 1, "rollout resumed after a failure pause; repeating the wave");
                    repeat_wave(progress, now_ms);
                }
                Some(_) => {}
            }
        }
    }
}

/// Starts the current wave again after a failure pause: rolled-back nodes
/// prefetch again and failed nodes are watched again.
fn repeat_wave(progress: &mut Progress, now_ms: u64) {
    progress.state = RolloutState::Running;
    progress.reason = None;
    progress.failure_pause_resume = None;
    progress.wave_phase = WavePhase::Prefetch;
    let wave = progress.current_wave;
    if let Some(current) = progress.waves.get_mut(wave) {
        current.started_ms = now_ms;
        current.switch_started_ms = None;
    }
    for node in progress.nodes.values_mut().filter(|node| node.wave == wave) {
        match node.phase {
            NodePhase::RolledBack | NodePhase::RollingBack => {
                node.phase = NodePhase::Prefetching;
                node.switched_ms = None;
            }
            // Still on the new image: watched again like a failed node.
            NodePhase::Failed | NodePhase::RollbackPending => {
                node.phase = NodePhase::Switching;
                node.switched_ms = Some(now_ms);
            }
            _ => continue,
        }
        node.running_since_ms = None;
        node.reason = None;
    }
}

fn block(record: &mut RolloutRecord, reason: String) {
    if record.progress.reason.as_ref() != Some(&reason) {
        tracing::warn!(rollout = %record.spec.name, reason, "rollout blocked");
    }
    record.progress.state = RolloutState::Blocked;
    record.progress.reason = Some(reason);
}

/// Starts, prefetches, switches and finishes waves until one has to wait.
fn advance_waves(
    name: &ObjectName,
    record: &mut RolloutRecord,
    inputs: &Inputs<'_>,
    targets: &BTreeSet<NodeId>,
    app: &str,
    now_ms: u64,
    events: &mut Vec<StepEvent>,
) {
    let wave_count = record.spec.waves.len();
    loop {
        let current = record.progress.current_wave;
        if current >= wave_count {
            record.progress.state = RolloutState::Completed;
            events.push((
                EventKind::RolloutCompleted,
                format!(
                    "rollout {name} completed: deployment {} runs {} on every wave's nodes",
                    record.spec.deployment, record.spec.image
                ),
            ));
            return;
        }
        if record.progress.waves.len() <= current {
            start_wave(name, record, inputs, targets, now_ms, events);
        }
        match record.progress.wave_phase {
            WavePhase::Prefetch => {
                if !prefetch_done(record, inputs, app, now_ms) {
                    return;
                }
                record.progress.wave_phase = WavePhase::Switch;
                record.progress.waves[current].switch_started_ms = Some(now_ms);
                tracing::info!(rollout = %name, wave = current + 1, "prefetch done; switching the wave");
            }
            WavePhase::Switch => {
                switch_eligible(record, inputs, current, now_ms);
                let counts = wave_counts(record, inputs, current, now_ms);
                if counts.failed > 0
                    && counts.failed >= threshold(record.spec.failure_threshold_pct, counts.total)
                {
                    pause_on_failures(name, record, &counts, events);
                    return;
                }
                if counts.succeeded < threshold(record.spec.success_threshold_pct, counts.counted) {
                    return;
                }
                record.progress.waves[current].finished_ms = Some(now_ms);
                record.progress.current_wave += 1;
                record.progress.wave_phase = WavePhase::Prefetch;
                events.push((
                    EventKind::RolloutWaveFinished,
                    format!(
                        "rollout {name} finished wave {} of {wave_count}: {} of {} nodes run {}, {} failed, {} offline",
                        current + 1,
                        counts.succeeded,
                        counts.total,
                        record.spec.image,
                        counts.failed,
                        counts.offline
                    ),
                ));
            }
        }
    }
}

/// Fixes the nodes of the current wave and sets them prefetching.
fn start_wave(
    name: &ObjectName,
    record: &mut RolloutRecord,
    inputs: &Inputs<'_>,
    targets: &BTreeSet<NodeId>,
    now_ms: u64,
    events: &mut Vec<StepEvent>,
) {
    let current = record.progress.current_wave;
    let earlier: HashSet<&str> = record.progress.nodes.keys().map(String::as_str).collect();
    let nodes = super::waves::resolve(
        name,
        &record.spec.waves[current],
        targets,
        inputs.nodes,
        &earlier,
    );
    for node in &nodes {
        record.progress.nodes.insert(
            node.clone(),
            super::NodeProgress {
                wave: current,
                phase: NodePhase::Prefetching,
                switched_ms: None,
                running_since_ms: None,
                reason: None,
            },
        );
    }
    events.push((
        EventKind::RolloutWaveStarted,
        format!(
            "rollout {name} started wave {} of {}: {} nodes prefetch {}",
            current + 1,
            record.spec.waves.len(),
            nodes.len(),
            record.spec.image
        ),
    ));
    record.progress.waves.push(WaveProgress {
        nodes,
        started_ms: now_ms,
        switch_started_ms: None,
        finished_ms: None,
    });
    record.progress.wave_phase = WavePhase::Prefetch;
}

/// Reports whether the current wave may switch: the success threshold of
/// its nodes report the new image pulled, or the prefetch timeout passed.
/// After the wave timeout, offline nodes no longer count here either.
fn prefetch_done(record: &RolloutRecord, inputs: &Inputs<'_>, app: &str, now_ms: u64) -> bool {
    let wave = &record.progress.waves[record.progress.current_wave];
    let elapsed_ms = now_ms.saturating_sub(wave.started_ms);
    if elapsed_ms >= u64::from(record.spec.prefetch_timeout_s) * 1000 {
        return true;
    }
    let mut counted = wave.nodes.len();
    if elapsed_ms >= u64::from(record.spec.wave_timeout_s) * 1000 {
        counted -= wave
            .nodes
            .iter()
            .filter(|node| !is_online(inputs, node))
            .count();
    }
    let image = record.spec.image.as_str();
    let ready = wave
        .nodes
        .iter()
        .filter(|node| {
            applied_app(inputs, node, app, |spec| {
                spec.next_image.as_deref() == Some(image) || spec.image == image
            })
            .is_some_and(|status| status.next_image_ready)
        })
        .count();
    ready >= threshold(record.spec.success_threshold_pct, counted)
}

fn is_online(inputs: &Inputs<'_>, node: &str) -> bool {
    NodeId::new(node)
        .ok()
        .and_then(|id| inputs.nodes.get(&id))
        .is_some_and(|record| record.online)
}

/// Switches prefetching nodes of waves up to `last` that are online, unless
/// a node with the same pair label value is switching.
///
/// A node that went offline while switching may finish its switch the
/// moment it reconnects, so its partner waits `wave_timeout_s` after that
/// switch began. After that the partner switches, so that one lost node
/// cannot keep a gantry on the old image for good.
///
/// NOTE: a node offline longer than that which reconnects while its
/// partner switches switches at the same time.
fn switch_eligible(record: &mut RolloutRecord, inputs: &Inputs<'_>, last: usize, now_ms: u64) {
    let pair_label = record.spec.pair_label.as_str();
    let pair_of = |node: &str| -> Option<String> {
        let id = NodeId::new(node).ok()?;
        inputs.nodes.get(&id)?.labels.get(pair_label).cloned()
    };
    let online = |node: &str| is_online(inputs, node);
    let hold_ms = u64::from(record.spec.wave_timeout_s) * 1000;
    let mut busy: HashSet<String> = record
        .progress
        .nodes
        .iter()
        .filter(|(node, progress)| {
            progress.phase == NodePhase::Switching
                && (online(node)
                    || progress
                        .switched_ms
                        .is_some_and(|at| now_ms.saturating_sub(at) < hold_ms))
        })
        .filter_map(|(node, _)| pair_of(node))
        .collect();

    let waves = &record.progress.waves;
    let nodes = &mut record.progress.nodes;
    for wave in waves.iter().take(last + 1) {
        for node in &wave.nodes {
            let Some(progress) = nodes.get_mut(node) else {
                continue;
            };
            if progress.phase != NodePhase::Prefetching || !online(node) {
                continue;
            }
            if let Some(pair) = pair_of(node)
                && !busy.insert(pair)
            {
                continue;
            }
            progress.phase = NodePhase::Switching;
            progress.switched_ms = Some(now_ms);
            progress.running_since_ms = None;
        }
    }
}

/// Moves a paused rollout's nodes back to the previous image under the
/// pair rule. A node goes back only while no node with the same pair label
/// value is going back, and it is back once it reports the app running the
/// previous image. Failed nodes go first, because they serve nothing on the
/// new image, and their partners keep serving until then. An offline node
/// goes back at once, because its desired state names the previous image
/// when it returns.
///
/// NOTE: as in `switch_eligible`, an offline node that returns while its
/// partner is going back goes back at the same time.
fn roll_back_eligible(record: &mut RolloutRecord, inputs: &Inputs<'_>, app: &str) {
    let pair_label = record.spec.pair_label.clone();
    let pair_of = |node: &str| -> Option<String> {
        let id = NodeId::new(node).ok()?;
        inputs.nodes.get(&id)?.labels.get(&pair_label).cloned()
    };
    let online = |node: &str| is_online(inputs, node);
    let previous = record.progress.from_image.clone();

    let nodes = &mut record.progress.nodes;
    for (node, progress) in nodes.iter_mut() {
        if progress.phase != NodePhase::RollingBack {
            continue;
        }
        let back = applied_app(inputs, node, app, |spec| {
            Some(&spec.image) == previous.as_ref()
        })
        .is_some_and(|status| status.state == "running");
        if back || !online(node) {
            progress.phase = NodePhase::RolledBack;
        }
    }

    let mut busy: HashSet<String> = nodes
        .iter()
        .filter(|(_, progress)| progress.phase == NodePhase::RollingBack)
        .filter_map(|(node, _)| pair_of(node))
        .collect();
    let mut pending: Vec<(&String, bool)> = nodes
        .iter()
        .filter(|(_, progress)| progress.phase == NodePhase::RollbackPending)
        .map(|(node, progress)| (node, progress.reason.is_none()))
        .collect();
    // Failed nodes (with a reason) first.
    pending.sort_by_key(|(_, healthy)| *healthy);
    let starting: Vec<String> = pending
        .into_iter()
        .filter(|(node, _)| !online(node) || pair_of(node).is_none_or(|pair| busy.insert(pair)))
        .map(|(node, _)| node.clone())
        .collect();
    for node in starting {
        if let Some(progress) = nodes.get_mut(&node) {
            progress.phase = NodePhase::RollingBack;
        }
    }
}

/// Moves switching nodes to success or failure by what their status
/// reports, and marks nodes of the current wave that fail after success.
fn evaluate_outcomes(record: &mut RolloutRecord, inputs: &Inputs<'_>, app: &str, now_ms: u64) {
    let image = record.spec.image.clone();
    let settle_ms = u64::from(record.spec.settle_s) * 1000;
    let current = record.progress.current_wave;
    let in_switch = record.progress.wave_phase == WavePhase::Switch;
    for (node, progress) in &mut record.progress.nodes {
        let watched = match progress.phase {
            NodePhase::Switching => true,
            NodePhase::Succeeded => in_switch && progress.wave == current,
            _ => false,
        };
        if !watched {
            continue;
        }
        let Some(status) = applied_app(inputs, node, app, |spec| spec.image == image) else {
            progress.running_since_ms = None;
            continue;
        };
        if let Some(reason) = failure_reason(status, &image) {
            tracing::warn!(rollout = %record.spec.name, node, reason, "node failed on the new image");
            progress.phase = NodePhase::Failed;
            progress.reason = Some(reason);
            progress.running_since_ms = None;
            continue;
        }
        if progress.phase != NodePhase::Switching {
            continue;
        }
        if status.state == "running" {
            let since = *progress.running_since_ms.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) >= settle_ms {
                progress.phase = NodePhase::Succeeded;
            }
        } else {
            progress.running_since_ms = None;
        }
    }
}

/// Returns why an app that applied the new image counts as failed: it
/// failed or stopped, or it restarted since the switch (a crash loop shows
/// as running between restarts).
fn failure_reason(status: &AppSummary, image: &str) -> Option<String> {
    let detail = status.reason.as_deref().unwrap_or("no reason reported");
    match status.state.as_str() {
        "failed" | "stopped" => Some(format!("{} on {image}: {detail}", status.state)),
        _ if status.restarts > 0 => Some(format!(
            "restarted {} times on {image}: {detail}",
            status.restarts
        )),
        _ => None,
    }
}

/// Returns the node's status of `app` if the node has applied its current
/// desired state and that state's spec of `app` passes `spec_check`.
fn applied_app<'a>(
    inputs: &'a Inputs<'_>,
    node: &str,
    app: &str,
    spec_check: impl Fn(&tollway_topics::AppSpec) -> bool,
) -> Option<&'a AppSummary> {
    let id = NodeId::new(node).ok()?;
    let desired = inputs.desired.get(&id)?;
    let spec = desired.apps.iter().find(|spec| spec.name.as_str() == app)?;
    if !spec_check(spec) {
        return None;
    }
    let status = inputs.nodes.get(&id)?.status.as_ref()?;
    if status.generation < desired.generation {
        return None;
    }
    status.apps.iter().find(|status| status.name == app)
}

/// A wave's nodes by outcome.
#[derive(Debug, Clone, Copy)]
struct WaveCounts {
    total: usize,
    succeeded: usize,
    failed: usize,
    /// Offline nodes without an outcome.
    offline: usize,
    /// The nodes the success threshold applies to: all of them until the
    /// wave timeout, then those not offline.
    counted: usize,
}

fn wave_counts(
    record: &RolloutRecord,
    inputs: &Inputs<'_>,
    wave: usize,
    now_ms: u64,
) -> WaveCounts {
    let progress = &record.progress;
    let nodes = &progress.waves[wave].nodes;
    let mut counts = WaveCounts {
        total: nodes.len(),
        succeeded: 0,
        failed: 0,
        offline: 0,
        counted: nodes.len(),
    };
    for node in nodes {
        let Some(node_progress) = progress.nodes.get(node) else {
            continue;
        };
        match node_progress.phase {
            NodePhase::Succeeded => counts.succeeded += 1,
            NodePhase::Failed => counts.failed += 1,
            NodePhase::Prefetching | NodePhase::Switching => {
                counts.offline += usize::from(!is_online(inputs, node));
            }
            NodePhase::RollbackPending | NodePhase::RollingBack | NodePhase::RolledBack => {}
        }
    }
    let elapsed_ms = now_ms.saturating_sub(progress.waves[wave].started_ms);
    if elapsed_ms >= u64::from(record.spec.wave_timeout_s) * 1000 {
        counts.counted = counts.total - counts.offline;
    }
    counts
}

/// Pauses the rollout because the current wave reached its failure
/// threshold, and puts the wave back on the previous image if asked.
fn pause_on_failures(
    name: &ObjectName,
    record: &mut RolloutRecord,
    counts: &WaveCounts,
    events: &mut Vec<StepEvent>,
) {
    let progress = &mut record.progress;
    let wave = progress.current_wave;
    let reason = format!(
        "wave {} of {}: {} of {} nodes failed on {}, the failure threshold is {}%",
        wave + 1,
        record.spec.waves.len(),
        counts.failed,
        counts.total,
        record.spec.image,
        record.spec.failure_threshold_pct
    );
    progress.state = RolloutState::Paused;
    progress.failure_pause_resume = Some(record.spec.resume);
    let mut rolled_back = 0;
    if record.spec.rollback_on_pause {
        // The nodes go back under the pair rule, failed ones first, in the
        // paused steps that follow (`roll_back_eligible`).
        for node in progress.nodes.values_mut().filter(|node| node.wave == wave) {
            if matches!(
                node.phase,
                NodePhase::Switching | NodePhase::Succeeded | NodePhase::Failed
            ) {
                // A failed node keeps its failure as the reason; the others
                // show up in the rollback counts.
                node.phase = NodePhase::RollbackPending;
                node.running_since_ms = None;
                rolled_back += 1;
            }
        }
    }
    let action = if record.spec.rollback_on_pause {
        format!(
            "; {rolled_back} nodes go back to {}",
            progress
                .from_image
                .as_deref()
                .unwrap_or("the previous image")
        )
    } else {
        String::new()
    };
    events.push((
        EventKind::RolloutPaused,
        format!("rollout {name} paused in {reason}{action}"),
    ));
    progress.reason = Some(reason);
}
