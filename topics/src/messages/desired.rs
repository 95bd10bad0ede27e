//! A node's desired state: the retained document on its `desired` topic.
//!
//! The document is level-triggered: it names every app the node should run,
//! and its generation orders documents, so a node converges to the newest
//! generation it has seen and a lost or repeated message costs nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::ObjectName;
use crate::limits::{
    MAX_APPS_PER_NODE, MAX_DESIRED_BYTES, MAX_IMAGE_LEN, MAX_SHORT_TEXT_LEN, MAX_SPEC_LIST_LEN,
    MAX_TEXT_LEN,
};
use crate::wire::{DecodeError, Invalid, MapReader, MapWriter, Message, check};

/// The apps one node should run.
///
/// Keys: 0 generation, 1 apps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredState {
    /// Raised by the controller whenever the content changes; never reused.
    pub generation: u64,
    pub apps: Vec<AppSpec>,
}

impl Message for DesiredState {
    const NAME: &'static str = "DesiredState";
    const MAX_BYTES: usize = MAX_DESIRED_BYTES;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.generation);
        map.messages(1, &self.apps);
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        Ok(DesiredState {
            generation: map.required(0, "generation")?,
            apps: map.messages(1, "apps", MAX_APPS_PER_NODE)?,
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        check::count(Self::NAME, "apps", self.apps.len(), MAX_APPS_PER_NODE)?;
        for (index, app) in self.apps.iter().enumerate() {
            app.validate()?;
            if self.apps[..index]
                .iter()
                .any(|other| other.name == app.name)
            {
                return Err(Invalid::new(
                    Self::NAME,
                    "apps",
                    format!("app name {:?} appears more than once", app.name.as_str()),
                ));
            }
        }
        Ok(())
    }
}

/// One containerised app.
///
/// Keys: 0 name, 1 image, 2 next_image, 3 command, 4 env, 5 ports, 6 mounts,
/// 7 restart, 8 resources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    pub name: ObjectName,
    /// Image reference, e.g. `localhost/toll-app:1.4.2`.
    pub image: String,
    /// An image to pull in the background ahead of an upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_image: Option<String>,
    /// Command and arguments; empty runs the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub resources: Resources,
}

impl Message for AppSpec {
    const NAME: &'static str = "AppSpec";
    const MAX_BYTES: usize = MAX_DESIRED_BYTES;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.name.to_string());
        map.field(1, &self.image);
        map.optional(2, &self.next_image);
        if !self.command.is_empty() {
            map.field(3, &self.command);
        }
        if !self.env.is_empty() {
            map.field(4, &self.env);
        }
        map.messages(5, &self.ports);
        map.messages(6, &self.mounts);
        map.unless_default(7, &self.restart.code());
        if self.resources != Resources::default() {
            map.message(8, &self.resources);
        }
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        let name: String = map.required(0, "name")?;
        let name = ObjectName::new(name).map_err(|err| {
            DecodeError::Invalid(Invalid::new(Self::NAME, "name", err.to_string()))
        })?;
        Ok(AppSpec {
            name,
            image: map.required(1, "image")?,
            next_image: map.optional(2, "next_image")?,
            command: map.or_default(3, "command")?,
            env: map.or_default(4, "env")?,
            ports: map.messages(5, "ports", MAX_SPEC_LIST_LEN)?,
            mounts: map.messages(6, "mounts", MAX_SPEC_LIST_LEN)?,
            restart: map
                .code(
                    7,
                    "restart",
                    RestartPolicy::EXPECTED,
                    RestartPolicy::from_code,
                )?
                .unwrap_or_default(),
            resources: map.optional_message(8, "resources")?.unwrap_or_default(),
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        let name = Self::NAME;
        validate_image(name, "image", &self.image)?;
        if let Some(next) = &self.next_image {
            validate_image(name, "next_image", next)?;
        }
        check::count(name, "command", self.command.len(), MAX_SPEC_LIST_LEN)?;
        for argument in &self.command {
            check::max_len(name, "command", argument, MAX_TEXT_LEN)?;
        }
        check::count(name, "env", self.env.len(), MAX_SPEC_LIST_LEN)?;
        for (key, value) in &self.env {
            check::text(name, "env", key, MAX_SHORT_TEXT_LEN)?;
            if key.contains('=') {
                return Err(Invalid::new(
                    name,
                    "env",
                    format!("variable name {key:?} contains '='"),
                ));
            }
            check::max_len(name, "env", value, MAX_TEXT_LEN)?;
        }
        check::count(name, "ports", self.ports.len(), MAX_SPEC_LIST_LEN)?;
        self.ports.iter().try_for_each(PortMapping::validate)?;
        check::count(name, "mounts", self.mounts.len(), MAX_SPEC_LIST_LEN)?;
        self.mounts.iter().try_for_each(Mount::validate)
    }
}

fn validate_image(message: &'static str, field: &'static str, image: &str) -> Result<(), Invalid> {
    check::text(message, field, image, MAX_IMAGE_LEN)?;
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Invalid::new(
            message,
            field,
            format!("image reference {image:?} contains whitespace or a control character"),
        ));
    }
    Ok(())
}

/// A published port. Keys: 0 host_port, 1 container_port, 2 protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

impl Message for PortMapping {
    const NAME: &'static str = "PortMapping";
    const MAX_BYTES: usize = 64;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.host_port);
        map.field(1, &self.container_port);
        map.unless_default(2, &self.protocol.code());
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        Ok(PortMapping {
            host_port: map.required(0, "host_port")?,
            container_port: map.required(1, "container_port")?,
            protocol: map
                .code(2, "protocol", Protocol::EXPECTED, Protocol::from_code)?
                .unwrap_or_default(),
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        if self.host_port == 0 || self.container_port == 0 {
            return Err(Invalid::new(
                Self::NAME,
                "host_port",
                "port 0 is not a valid port",
            ));
        }
        Ok(())
    }
}

/// A bind mount from the node into the container.
/// Keys: 0 source, 1 target, 2 read_only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Absolute path on the node.
    pub source: String,
    /// Absolute path in the container.
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

impl Message for Mount {
    const NAME: &'static str = "Mount";
    const MAX_BYTES: usize = 1024;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.source);
        map.field(1, &self.target);
        map.unless_default(2, &self.read_only);
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        Ok(Mount {
            source: map.required(0, "source")?,
            target: map.required(1, "target")?,
            read_only: map.or_default(2, "read_only")?,
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        for (field, path) in [("source", &self.source), ("target", &self.target)] {
            check::text(Self::NAME, field, path, MAX_SHORT_TEXT_LEN)?;
            if !path.starts_with('/') {
                return Err(Invalid::new(
                    Self::NAME,
                    field,
                    format!("path {path:?} is not absolute"),
                ));
            }
        }
        Ok(())
    }
}

/// Resource limits for one app; absent limits are unlimited.
/// Keys: 0 memory_bytes, 1 cpu_millis, 2 pids.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU limit in thousandths of a core (500 is half a core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u32>,
    /// Maximum number of processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

impl Message for Resources {
    const NAME: &'static str = "Resources";
    const MAX_BYTES: usize = 64;

    fn write_fields(&self, map: &mut MapWriter) {
        map.optional(0, &self.memory_bytes);
        map.optional(1, &self.cpu_millis);
        map.optional(2, &self.pids);
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        Ok(Resources {
            memory_bytes: map.optional(0, "memory_bytes")?,
            cpu_millis: map.optional(1, "cpu_millis")?,
            pids: map.optional(2, "pids")?,
        })
    }
}

crate::messages::record::code_enum! {
    /// Transport protocol of a published port.
    Protocol, expected "0 (tcp), 1 (udp)" {
        #[default]
        Tcp = 0,
        Udp = 1,
    }
}

crate::messages::record::code_enum! {
    /// When a stopped app is started again.
    RestartPolicy, expected "0 (always), 1 (on-failure), 2 (never)" {
        #[default]
        Always = 0,
        OnFailure = 1,
        Never = 2,
    }
}

/// Protocol and restart policy read as lowercase words in YAML.
macro_rules! serde_words {
    ($ty:ident { $($variant:ident = $word:literal),+ }) => {
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(match self { $($ty::$variant => $word),+ })
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let word = String::deserialize(deserializer)?;
                match word.as_str() {
                    $($word => Ok($ty::$variant),)+
                    other => Err(serde::de::Error::unknown_variant(other, &[$($word),+])),
                }
            }
        }
    };
}

serde_words!(Protocol { Tcp = "tcp", Udp = "udp" });
serde_words!(RestartPolicy { Always = "always", OnFailure = "on-failure", Never = "never" });
