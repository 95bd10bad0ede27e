//! Rollouts: staged upgrades of one deployment to a new image, wave by wave.
//!
//! A rollout object names a deployment, a new image and waves. The
//! controller works through the waves in order. Each wave first prefetches
//! (the wave's nodes get the new image as `next_image`) until the success
//! threshold of them report it pulled, or the prefetch timeout passes. Then
//! it switches the wave's nodes to the new image, never two nodes with the
//! same pair label value at once. A wave finishes when its success
//! threshold of nodes run the new image for the settle time. It pauses the
//! rollout when its failure threshold of nodes fail on the new image.
//!
//! The rollout changes nothing in the deployment object: the controller
//! overrides the image of the deployment's app per node
//! ([`RolloutRecord::spec_for`]) when it builds desired states. Progress is
//! stored in the controller's RocksDB after every change, so a restarted
//! controller resumes the wave it was in.
//!
//! Files: `waves.rs` (which nodes a wave covers), `step.rs` (the state
//! machine), `intake.rs` (rollout objects from the broker), `view.rs` (the
//! API's rollout status).

mod intake;
mod step;
pub mod view;
mod waves;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tollway_topics::{AppSpec, Message, Rollout};

/// A rollout object and the controller's progress through it, stored as
/// JSON under the rollout's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub spec: Rollout,
    pub progress: Progress,
}

/// How far a rollout has come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Hash of the parts of the object that define the upgrade; a new
    /// object with another fingerprint starts over from the first wave.
    pub fingerprint: u64,
    pub state: RolloutState,
    /// The reason the rollout is paused or blocked.
    pub reason: Option<String>,
    /// The object's `resume` counter when the rollout paused itself on
    /// failures; it continues once the counter is higher.
    pub failure_pause_resume: Option<u32>,
    /// The deployment's image when the rollout started.
    pub from_image: Option<String>,
    /// Index of the wave in progress; equals the number of waves once the
    /// rollout is complete.
    pub current_wave: usize,
    pub wave_phase: WavePhase,
    /// The waves started so far, in order.
    pub waves: Vec<WaveProgress>,
    /// Every node of a started wave, by node id.
    pub nodes: BTreeMap<String, NodeProgress>,
}

/// The lifecycle of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    Running,
    /// Paused by an operator or by the failure threshold.
    Paused,
    /// Waiting for its deployment to exist and be placed.
    Blocked,
    Aborted,
    Completed,
}

/// The step a wave is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WavePhase {
    Prefetch,
    Switch,
}

/// One started wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveProgress {
    /// The wave's nodes, fixed when the wave starts.
    pub nodes: Vec<String>,
    /// Unix milliseconds.
    pub started_ms: u64,
    pub switch_started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

/// One node's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProgress {
    /// Index of the node's wave.
    pub wave: usize,
    pub phase: NodePhase,
    /// When the controller switched the node's desired image, Unix ms.
    pub switched_ms: Option<u64>,
    /// Since when the node has reported the app running the new image
    /// without a restart, Unix ms.
    pub running_since_ms: Option<u64>,
    /// The reason the node failed, kept when it is rolled back.
    pub reason: Option<String>,
}

/// A node's place in the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodePhase {
    /// Desired state names the new image as the next image.
    Prefetching,
    /// Desired state names the new image; no outcome yet.
    Switching,
    /// Ran the new image for the settle time.
    Succeeded,
    /// Failed, stopped or restarted on the new image.
    Failed,
    /// To go back to the previous image after the rollout paused on
    /// failures, once no node with the same pair label value is going back.
    /// Desired state still names the new image.
    RollbackPending,
    /// Desired state names the previous image again; the node does not yet
    /// report it running.
    RollingBack,
    /// Back on the previous image (or offline with it as its desired state).
    RolledBack,
}

impl Progress {
    /// Returns the progress of a rollout that has not started.
    pub fn new(spec: &Rollout) -> Self {
        Progress {
            fingerprint: fingerprint(spec),
            state: RolloutState::Running,
            reason: None,
            failure_pause_resume: None,
            from_image: None,
            current_wave: 0,
            wave_phase: WavePhase::Prefetch,
            waves: Vec::new(),
            nodes: BTreeMap::new(),
        }
    }
}

impl RolloutRecord {
    /// Returns the deployment's app spec as `node` should run it under this
    /// rollout.
    pub fn spec_for(&self, node: &str, deployment_spec: &AppSpec) -> AppSpec {
        let mut spec = deployment_spec.clone();
        let image = &self.spec.image;
        let progress = &self.progress;
        let phase = progress.nodes.get(node).map(|node| node.phase);
        match phase {
            Some(NodePhase::Prefetching) => {
                if progress.state != RolloutState::Aborted && spec.image != *image {
                    spec.next_image = Some(image.clone());
                }
            }
            Some(
                NodePhase::Switching
                | NodePhase::Succeeded
                | NodePhase::Failed
                | NodePhase::RollbackPending,
            ) => {
                spec.image = image.clone();
                spec.next_image = None;
            }
            Some(NodePhase::RollingBack | NodePhase::RolledBack) => {}
            None => {
                if progress.state == RolloutState::Completed {
                    spec.image = image.clone();
                    spec.next_image = None;
                }
            }
        }
        spec
    }

    /// Reports whether the controller has to step this rollout often: it
    /// is running, complete with nodes that have not switched yet, or
    /// paused with nodes still going back to the previous image.
    pub fn needs_steps(&self) -> bool {
        match self.progress.state {
            RolloutState::Running | RolloutState::Blocked => true,
            RolloutState::Paused => self.rolling_back(),
            RolloutState::Completed => self
                .progress
                .nodes
                .values()
                .any(|node| matches!(node.phase, NodePhase::Prefetching | NodePhase::Switching)),
            RolloutState::Aborted => false,
        }
    }

    /// Reports whether nodes are still on their way back to the previous
    /// image.
    pub fn rolling_back(&self) -> bool {
        self.progress.nodes.values().any(|node| {
            matches!(
                node.phase,
                NodePhase::RollbackPending | NodePhase::RollingBack
            )
        })
    }
}

/// Returns the hash of what defines the upgrade: the deployment, the image
/// and the waves. Thresholds, timeouts and controls may change without
/// starting over. 64-bit FNV-1a over the names and the waves' CBOR.
pub fn fingerprint(spec: &Rollout) -> u64 {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(spec.deployment.as_str().as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(spec.image.as_bytes());
    for wave in &spec.waves {
        bytes.push(0);
        match wave.to_cbor() {
            Ok(cbor) => bytes.extend_from_slice(&cbor),
            Err(_) => bytes.extend_from_slice(format!("{wave:?}").as_bytes()),
        }
    }
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash: u64, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Returns `pct` percent of `total` nodes, rounded up so that a threshold
/// is never met by fewer nodes.
pub fn threshold(pct: u8, total: usize) -> usize {
    (total * usize::from(pct)).div_ceil(100)
}
