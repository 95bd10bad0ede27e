//! Operators' objects: deployments and rollouts, published retained on
//! `tollway/v1/ops/{deployments|rollouts}/{name}`. A [`Tombstone`] (or an
//! empty payload) in place of the object deletes it.
//!
//! Operators write them as YAML (`tollwayctl apply -f`); the wire carries
//! CBOR like every other message. Both forms decode into the same types and
//! pass the same validation.

use serde::{Deserialize, Serialize};

use crate::ids::ObjectName;
use crate::limits::{MAX_IMAGE_LEN, MAX_NAME_LEN, MAX_OBJECT_BYTES, MAX_WAVES};
use crate::messages::AppSpec;
use crate::selector::Selector;
use crate::wire::{DecodeError, Invalid, MapReader, MapWriter, Message, check};

/// An app and where it runs.
///
/// Keys: 0 name, 1 selector, 2 mode (0 per-node, 1 replicas), 3 replicas,
/// 4 spread_by, 5 colocate_with, 6 app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DeploymentManifest", into = "DeploymentManifest")]
pub struct Deployment {
    pub name: ObjectName,
    /// The nodes that may run the app; an empty selector matches every node of the province.
    pub selector: Selector,
    pub placement: PlacementMode,
    /// Place instances only on nodes that run this other deployment's app.
    pub colocate_with: Option<ObjectName>,
    pub app: AppSpec,
}

/// A deployment as written in YAML: placement is spelt as flat keys
/// (`mode`, `replicas`, `spread_by`), which serde cannot combine with
/// `deny_unknown_fields` through `flatten`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentManifest {
    name: ObjectName,
    #[serde(default)]
    selector: Selector,
    /// `per-node` (the default) or `replicas`.
    #[serde(default)]
    mode: ModeName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spread_by: Option<SpreadBy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    colocate_with: Option<ObjectName>,
    app: AppSpec,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ModeName {
    #[default]
    PerNode,
    Replicas,
}

impl TryFrom<DeploymentManifest> for Deployment {
    type Error = String;

    fn try_from(manifest: DeploymentManifest) -> Result<Self, String> {
        let placement = match (manifest.mode, manifest.replicas) {
            (ModeName::PerNode, None) if manifest.spread_by.is_none() => PlacementMode::PerNode,
            (ModeName::PerNode, _) => {
                return Err(format!(
                    "deployment {}: replicas and spread_by need `mode: replicas`; a per-node deployment runs one instance on every matching node",
                    manifest.name
                ));
            }
            (ModeName::Replicas, Some(replicas)) => PlacementMode::Replicas {
                replicas,
                spread_by: manifest.spread_by.unwrap_or_default(),
            },
            (ModeName::Replicas, None) => {
                return Err(format!(
                    "deployment {}: `mode: replicas` needs `replicas: N`",
                    manifest.name
                ));
            }
        };
        let deployment = Deployment {
            name: manifest.name,
            selector: manifest.selector,
            placement,
            colocate_with: manifest.colocate_with,
            app: manifest.app,
        };
        deployment.validate().map_err(|err| err.to_string())?;
        Ok(deployment)
    }
}

impl From<Deployment> for DeploymentManifest {
    fn from(deployment: Deployment) -> Self {
        let (mode, replicas, spread_by) = match deployment.placement {
            PlacementMode::PerNode => (ModeName::PerNode, None, None),
            PlacementMode::Replicas {
                replicas,
                spread_by,
            } => (ModeName::Replicas, Some(replicas), Some(spread_by)),
        };
        DeploymentManifest {
            name: deployment.name,
            selector: deployment.selector,
            mode,
            replicas,
            spread_by,
            colocate_with: deployment.colocate_with,
            app: deployment.app,
        }
    }
}

/// How many instances run and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementMode {
    /// Every matching node runs one instance, including nodes that join later.
    PerNode,
    /// `replicas` instances, no two in the same `spread_by` domain.
    Replicas { replicas: u32, spread_by: SpreadBy },
}

/// The failure domain that replicas of one app must not share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpreadBy {
    #[default]
    Node,
    /// Nodes with the same `station` label.
    Station,
    /// Nodes with the same `section` label.
    Section,
}

impl SpreadBy {
    /// Returns the node label that names the domain, or `None` for the node itself.
    pub fn label(self) -> Option<&'static str> {
        match self {
            SpreadBy::Node => None,
            SpreadBy::Station => Some("station"),
            SpreadBy::Section => Some("section"),
        }
    }

    fn code(self) -> u8 {
        match self {
            SpreadBy::Node => 0,
            SpreadBy::Station => 1,
            SpreadBy::Section => 2,
        }
    }

    fn from_code(code: u64) -> Option<Self> {
        match code {
            0 => Some(SpreadBy::Node),
            1 => Some(SpreadBy::Station),
            2 => Some(SpreadBy::Section),
            _ => None,
        }
    }
}

/// Maximum replicas of one deployment; more than the largest province's nodes
/// would be a typo.
pub const MAX_REPLICAS: u32 = 100_000;

impl Message for Deployment {
    const NAME: &'static str = "Deployment";
    const MAX_BYTES: usize = MAX_OBJECT_BYTES;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.name.to_string());
        if !self.selector.requirements.is_empty() {
            map.field(1, &self.selector.to_strings());
        }
        match &self.placement {
            PlacementMode::PerNode => map.field(2, &0u8),
            PlacementMode::Replicas {
                replicas,
                spread_by,
            } => {
                map.field(2, &1u8);
                map.field(3, replicas);
                map.unless_default(4, &spread_by.code());
            }
        }
        map.optional(5, &self.colocate_with.as_ref().map(ToString::to_string));
        map.message(6, &self.app);
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        let invalid = |field, err: &dyn std::fmt::Display| {
            DecodeError::Invalid(Invalid::new(Self::NAME, field, err.to_string()))
        };
        let name: String = map.required(0, "name")?;
        let name = ObjectName::new(name).map_err(|err| invalid("name", &err))?;
        let selector: Vec<String> = map.or_default(1, "selector")?;
        let selector = Selector::parse(&selector).map_err(|err| invalid("selector", &err))?;

        let mode: u64 = map.required(2, "mode")?;
        let placement = match mode {
            0 => PlacementMode::PerNode,
            1 => PlacementMode::Replicas {
                replicas: map.required(3, "replicas")?,
                spread_by: map
                    .code(
                        4,
                        "spread_by",
                        "0 (node), 1 (station), 2 (section)",
                        SpreadBy::from_code,
                    )?
                    .unwrap_or_default(),
            },
            code => {
                return Err(DecodeError::UnknownCode {
                    message: Self::NAME,
                    field: "mode",
                    code,
                    expected: "0 (per-node), 1 (replicas)",
                });
            }
        };

        let colocate_with: Option<String> = map.optional(5, "colocate_with")?;
        let colocate_with = colocate_with
            .map(ObjectName::new)
            .transpose()
            .map_err(|err| invalid("colocate_with", &err))?;

        Ok(Deployment {
            name,
            selector,
            placement,
            colocate_with,
            app: map.message(6, "app")?,
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        if let PlacementMode::Replicas { replicas, .. } = self.placement
            && (replicas == 0 || replicas > MAX_REPLICAS)
        {
            return Err(Invalid::new(
                Self::NAME,
                "replicas",
                format!("{replicas} is outside 1..={MAX_REPLICAS}"),
            ));
        }
        if self.colocate_with.as_ref() == Some(&self.name) {
            return Err(Invalid::new(
                Self::NAME,
                "colocate_with",
                "a deployment cannot be colocated with itself",
            ));
        }
        self.app.validate()
    }
}

/// A staged upgrade of one deployment to a new image.
///
/// Keys: 0 name, 1 deployment, 2 image, 3 waves, 4 success_threshold_pct,
/// 5 failure_threshold_pct, 6 rollback_on_pause, 7 prefetch_timeout_s,
/// 8 wave_timeout_s, 9 pair_label, 10 control (0 run, 1 pause, 2 abort),
/// 11 resume, 12 settle_s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub name: ObjectName,
    /// The deployment whose image changes.
    pub deployment: ObjectName,
    /// The new image.
    pub image: String,
    pub waves: Vec<Wave>,
    /// Percentage of a wave's nodes that must report success (the image
    /// prefetched, then running) before the rollout moves on.
    #[serde(default = "default_success_threshold")]
    pub success_threshold_pct: u8,
    /// Percentage of a wave's nodes whose failure pauses the rollout.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold_pct: u8,
    /// Whether a pause switches the failed wave back to the previous image.
    #[serde(default)]
    pub rollback_on_pause: bool,
    /// How long a wave waits for prefetch before switching anyway, in seconds.
    #[serde(default = "default_prefetch_timeout")]
    pub prefetch_timeout_s: u32,
    /// How long a wave waits for success before offline nodes stop counting
    /// as pending, in seconds.
    #[serde(default = "default_wave_timeout")]
    pub wave_timeout_s: u32,
    /// Node label shared by an active/standby pair (e.g. both nodes of one
    /// gantry); nodes with the same value are never switched together.
    #[serde(default = "default_pair_label")]
    pub pair_label: String,
    #[serde(default)]
    pub control: RolloutControl,
    /// Raised by each `tollwayctl rollout resume`. A rollout that paused
    /// itself on failures continues only when this exceeds the value it had
    /// at the pause, because `control` stays `run` throughout.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resume: u32,
    /// How long a switched node must report the app running on the new
    /// image, without a restart, before it counts as a success, in
    /// seconds. It should exceed the daemons' reconcile interval, because a
    /// daemon notices a crashed container only at its next pass.
    #[serde(default = "default_settle")]
    pub settle_s: u32,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// One wave: nodes chosen by a selector, or a percentage of all targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Wave {
    Selector { selector: Selector },
    Percent { percent: u8 },
}

/// An operator's instruction to a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutControl {
    #[default]
    Run,
    Pause,
    Abort,
}

fn default_success_threshold() -> u8 {
    95
}
fn default_failure_threshold() -> u8 {
    10
}
fn default_prefetch_timeout() -> u32 {
    900
}
fn default_wave_timeout() -> u32 {
    3600
}
fn default_settle() -> u32 {
    15
}
fn default_pair_label() -> String {
    "gantry".to_string()
}

/// A wave as CBOR. Keys: 0 selector, 1 percent.
impl Message for Wave {
    const NAME: &'static str = "Wave";
    const MAX_BYTES: usize = MAX_OBJECT_BYTES;

    fn write_fields(&self, map: &mut MapWriter) {
        match self {
            Wave::Selector { selector } => map.field(0, &selector.to_strings()),
            Wave::Percent { percent } => map.field(1, percent),
        }
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        let selector: Option<Vec<String>> = map.optional(0, "selector")?;
        let percent: Option<u8> = map.optional(1, "percent")?;
        match (selector, percent) {
            (Some(selector), None) => Ok(Wave::Selector {
                selector: Selector::parse(&selector).map_err(|err| {
                    DecodeError::Invalid(Invalid::new(Self::NAME, "selector", err.to_string()))
                })?,
            }),
            (None, Some(percent)) => Ok(Wave::Percent { percent }),
            _ => Err(DecodeError::Invalid(Invalid::new(
                Self::NAME,
                "selector",
                "a wave has exactly one of selector and percent",
            ))),
        }
    }

    fn validate(&self) -> Result<(), Invalid> {
        match self {
            Wave::Percent { percent } if *percent == 0 || *percent > 100 => Err(Invalid::new(
                Self::NAME,
                "percent",
                format!("{percent} is outside 1..=100"),
            )),
            _ => Ok(()),
        }
    }
}

impl Message for Rollout {
    const NAME: &'static str = "Rollout";
    const MAX_BYTES: usize = MAX_OBJECT_BYTES;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.name.to_string());
        map.field(1, &self.deployment.to_string());
        map.field(2, &self.image);
        map.messages(3, &self.waves);
        map.field(4, &self.success_threshold_pct);
        map.field(5, &self.failure_threshold_pct);
        map.unless_default(6, &self.rollback_on_pause);
        map.field(7, &self.prefetch_timeout_s);
        map.field(8, &self.wave_timeout_s);
        map.field(9, &self.pair_label);
        let control: u8 = match self.control {
            RolloutControl::Run => 0,
            RolloutControl::Pause => 1,
            RolloutControl::Abort => 2,
        };
        map.unless_default(10, &control);
        map.unless_default(11, &self.resume);
        if self.settle_s != default_settle() {
            map.field(12, &self.settle_s);
        }
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        let invalid = |field, err: &dyn std::fmt::Display| {
            DecodeError::Invalid(Invalid::new(Self::NAME, field, err.to_string()))
        };
        let name: String = map.required(0, "name")?;
        let deployment: String = map.required(1, "deployment")?;
        let control = map
            .code(
                10,
                "control",
                "0 (run), 1 (pause), 2 (abort)",
                |code| match code {
                    0 => Some(RolloutControl::Run),
                    1 => Some(RolloutControl::Pause),
                    2 => Some(RolloutControl::Abort),
                    _ => None,
                },
            )?
            .unwrap_or_default();

        Ok(Rollout {
            name: ObjectName::new(name).map_err(|err| invalid("name", &err))?,
            deployment: ObjectName::new(deployment).map_err(|err| invalid("deployment", &err))?,
            image: map.required(2, "image")?,
            waves: map.messages(3, "waves", MAX_WAVES)?,
            success_threshold_pct: map
                .optional(4, "success_threshold_pct")?
                .unwrap_or_else(default_success_threshold),
            failure_threshold_pct: map
                .optional(5, "failure_threshold_pct")?
                .unwrap_or_else(default_failure_threshold),
            rollback_on_pause: map.or_default(6, "rollback_on_pause")?,
            prefetch_timeout_s: map
                .optional(7, "prefetch_timeout_s")?
                .unwrap_or_else(default_prefetch_timeout),
            wave_timeout_s: map
                .optional(8, "wave_timeout_s")?
                .unwrap_or_else(default_wave_timeout),
            pair_label: map
                .optional(9, "pair_label")?
                .unwrap_or_else(default_pair_label),
            control,
            resume: map.or_default(11, "resume")?,
            settle_s: map.optional(12, "settle_s")?.unwrap_or_else(default_settle),
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        let name = Self::NAME;
        check::text(name, "image", &self.image, MAX_IMAGE_LEN)?;
        check::text(name, "pair_label", &self.pair_label, MAX_NAME_LEN)?;
        if self.waves.is_empty() {
            return Err(Invalid::new(
                name,
                "waves",
                "a rollout needs at least one wave",
            ));
        }
        check::count(name, "waves", self.waves.len(), MAX_WAVES)?;
        self.waves.iter().try_for_each(Wave::validate)?;
        for (field, pct) in [
            ("success_threshold_pct", self.success_threshold_pct),
            ("failure_threshold_pct", self.failure_threshold_pct),
        ] {
            if pct == 0 || pct > 100 {
                return Err(Invalid::new(
                    name,
                    field,
                    format!("{pct} is outside 1..=100"),
                ));
            }
        }
        Ok(())
    }
}

/// The marker `tollwayctl delete` publishes retained on an object's topic
/// in place of the object. A controller that was disconnected during the
/// delete receives it with the retained messages when it subscribes again,
/// so it deletes an object that an empty payload would have removed from
/// the broker without a trace.
///
/// Keys: 0 name, 31 deleted_at_ms. No object has key 31, so
/// [`Tombstone::is_tombstone`] distinguishes the two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub name: ObjectName,
    /// When the object was deleted, in Unix milliseconds.
    pub deleted_at_ms: u64,
}

impl Tombstone {
    /// The key that only a tombstone has.
    const DELETED_AT_KEY: u64 = 31;

    /// Returns whether `payload` decodes as a tombstone. A payload that is
    /// not one may still be a valid object.
    pub fn is_tombstone(payload: &[u8]) -> bool {
        Tombstone::from_cbor(payload).is_ok()
    }

    /// Returns whether a payload on an object's topic deletes the object:
    /// a tombstone, or an empty payload as older clients publish.
    pub fn deletes(payload: &[u8]) -> bool {
        payload.is_empty() || Tombstone::is_tombstone(payload)
    }
}

impl Message for Tombstone {
    const NAME: &'static str = "Tombstone";
    const MAX_BYTES: usize = 256;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.name.to_string());
        map.field(Self::DELETED_AT_KEY, &self.deleted_at_ms);
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        let name: String = map.required(0, "name")?;
        let name = ObjectName::new(name).map_err(|err| {
            DecodeError::Invalid(Invalid::new(Self::NAME, "name", err.to_string()))
        })?;
        Ok(Tombstone {
            name,
            deleted_at_ms: map.required(Self::DELETED_AT_KEY, "deleted_at_ms")?,
        })
    }
}
