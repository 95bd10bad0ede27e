//! The daemon's configuration file (TOML): who the node is, where its data
//! lives, and one section per part. [`EdgeConfig::validate`] checks every
//! key in one pass and reports all problems together, each naming its key.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use tollway_topics::limits::{MAX_LABELS, MAX_NAME_LEN, MAX_SHORT_TEXT_LEN};
use tollway_topics::{NodeId, Province};

use crate::apps::AppsConfig;
use crate::commands::CommandsConfig;
use crate::intake::IntakeConfig;
use crate::link::LinkConfig;
use crate::outbox::OutboxConfig;
use crate::status::StatusConfig;
use crate::summary::SummaryConfig;
use crate::uplink::UplinkConfig;

/// The whole configuration file; an unknown key is an error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// This node's id, also the CN of its client certificate and its MQTT
    /// client id.
    pub node: String,
    /// The two-digit administrative code of the node's province, e.g. 44.
    pub province: u8,
    /// Labels operators select nodes by (gantry, station, section, arch and
    /// any others). The daemon carries them; placement happens centrally.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Directory of the node's state. The outbox lives in `outbox/` under
    /// it unless `outbox.path` is set, and free disk space in the
    /// status message is measured here.
    pub data_dir: PathBuf,
    /// Seconds between retention prunes of delivered records. Default 300.
    #[serde(default = "default_prune_interval_s")]
    pub prune_interval_s: u64,

    pub link: LinkConfig,
    #[serde(default = "default_outbox")]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub intake: IntakeConfig,
    #[serde(default)]
    pub uplink: UplinkConfig,
    #[serde(default)]
    pub commands: CommandsConfig,
    #[serde(default)]
    pub status: StatusConfig,
    #[serde(default)]
    pub summary: SummaryConfig,
    /// The app manager: Podman socket, reconcile interval, stop timeout,
    /// back-offs.
    #[serde(default)]
    pub apps: AppsConfig,
}

fn default_prune_interval_s() -> u64 {
    300
}

/// Returns an outbox section with every default and an empty path, which
/// [`EdgeConfig::validate`] fills from `data_dir`.
fn default_outbox() -> OutboxConfig {
    OutboxConfig::new(PathBuf::new())
}

/// The ids parsed from a valid configuration.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node: NodeId,
    pub province: Province,
}

impl EdgeConfig {
    /// Checks every key, fills the outbox path from `data_dir` when it is
    /// empty, and returns the node's ids or every problem found.
    pub fn validate(&mut self) -> Result<Identity, Vec<String>> {
        let mut problems = Vec::new();
        let node = NodeId::new(self.node.clone())
            .map_err(|err| problems.push(format!("node = {:?}: {err}", self.node)))
            .ok();
        let province = Province::new(self.province)
            .map_err(|err| problems.push(format!("province = {}: {err}", self.province)))
            .ok();
        problems.extend(self.label_problems());
        if self.data_dir.as_os_str().is_empty() {
            problems.push("data_dir must name the node's state directory".to_string());
        }
        if self.outbox.path.as_os_str().is_empty() {
            self.outbox.path = self.data_dir.join("outbox");
        }
        if self.prune_interval_s == 0 {
            problems.push("prune_interval_s must be at least 1".to_string());
        }

        let sections = [
            ("link", self.link.problems()),
            ("outbox", self.outbox.problems()),
            ("intake", self.intake.problems()),
            ("uplink", self.uplink.problems()),
            ("commands", self.commands.problems()),
            ("status", self.status.problems()),
            ("summary", self.summary.problems()),
            ("apps", self.apps.problems()),
        ];
        for (section, section_problems) in sections {
            problems.extend(
                section_problems
                    .into_iter()
                    .map(|p| format!("{section}.{p}")),
            );
        }

        match (node, province) {
            (Some(node), Some(province)) if problems.is_empty() => Ok(Identity { node, province }),
            _ => Err(problems),
        }
    }

    fn label_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.labels.len() > MAX_LABELS {
            problems.push(format!(
                "labels has {} entries; at most {MAX_LABELS} are allowed",
                self.labels.len()
            ));
        }
        for (key, value) in &self.labels {
            let key_ok = !key.is_empty()
                && key.len() <= MAX_NAME_LEN
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !key_ok {
                problems.push(format!(
                    "labels.{key:?}: a label key must be 1 to {MAX_NAME_LEN} ASCII letters, digits, '-', '_' or '.'"
                ));
            }
            if value.len() > MAX_SHORT_TEXT_LEN || value.chars().any(char::is_control) {
                problems.push(format!(
                    "labels.{key}: the value must be at most {MAX_SHORT_TEXT_LEN} bytes without control characters"
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
node = "G0015-0001"
province = 44
data_dir = "/var/lib/tollway"

[link]
ca_file = "/etc/tollway/ca.crt"
cert_file = "/etc/tollway/node.crt"
key_file = "/etc/tollway/node.key"

[[link.endpoints]]
name = "private"
host = "10.0.0.1"
port = 8883
"#;

    fn parse(text: &str) -> EdgeConfig {
        toml::from_str(text).expect("configuration parses")
    }

    #[test]
    fn minimal_file_is_valid() {
        let mut config = parse(MINIMAL);
        let identity = config.validate().expect("minimal configuration is valid");
        assert_eq!(identity.node.as_str(), "G0015-0001");
        assert_eq!(config.outbox.path, PathBuf::from("/var/lib/tollway/outbox"));
    }

    #[test]
    fn every_problem_named_at_once() {
        let text = MINIMAL.replace("province = 44", "province = 7").replace(
            "[link]",
            "[uplink]\nwindow = 0\n[status]\nheartbeat_s = 0\n[link]",
        );
        let mut config = parse(&text);
        let problems = config.validate().expect_err("three keys are invalid");
        let joined = problems.join("\n");
        assert!(joined.contains("province = 7"), "{joined}");
        assert!(joined.contains("uplink.window"), "{joined}");
        assert!(joined.contains("status.heartbeat_s"), "{joined}");
    }

    #[test]
    fn no_endpoint_is_a_problem() {
        let text = MINIMAL.replace("[[link.endpoints]]", "[unused]");
        let error = toml::from_str::<EdgeConfig>(&text);
        // `[unused]` is an unknown key, which is itself reported.
        assert!(error.is_err());
        let mut config = parse(&MINIMAL.replace(
            "[[link.endpoints]]\nname = \"private\"\nhost = \"10.0.0.1\"\nport = 8883\n",
            "endpoints = []\n",
        ));
        let problems = config.validate().expect_err("no endpoint");
        assert!(
            problems.iter().any(|p| p.starts_with("link.endpoints")),
            "{problems:?}"
        );
    }

    #[test]
    fn bad_label_key_named() {
        let text = MINIMAL.replace("data_dir", "labels = { \"gan try\" = \"x\" }\ndata_dir");
        let mut config = parse(&text);
        let problems = config.validate().expect_err("label key has a space");
        assert!(problems[0].contains("gan try"), "{problems:?}");
    }
}
