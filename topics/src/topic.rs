//! MQTT topic names and filters.
//!
//! One topic form serves provincial and national brokers alike, so a bridge
//! forwards a message without rewriting its topic:
//!
//! - `tollway/v1/{province}/node/{node}/{kind}`: one node's topics.
//! - `tollway/v1/{province}/center/{kind}`: a provincial centre's topics.
//! - `tollway/v1/ops/{deployments|rollouts}/{name}`: operators' objects.
//!
//! [`Topic`] builds and parses names; the `*_filter` functions build the
//! subscription filters that services and bridges use.

use std::fmt;
use std::str::FromStr;

use crate::ids::{IdError, NodeId, ObjectName, Province};

/// The first two levels of every Tollway topic.
pub const PREFIX: &str = "tollway/v1";

/// The topic node apps publish toll records to on the edge daemon's
/// loopback intake, one CBOR `TollRecord` per message. It never leaves the
/// node, so it sits outside [`PREFIX`] and [`Topic`] does not parse it.
pub const LOCAL_RECORDS_TOPIC: &str = "tollway/local/v1/records";

/// A node's topics, as the last levels of `tollway/v1/{province}/node/{node}/...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// Centre to node, retained: the desired state.
    Desired,
    /// Centre to node: commands that are not state (replay, collect logs).
    Command,
    /// Node to centre: the result of a command.
    CommandResult,
    /// Node to centre: node and app status.
    Status,
    /// Node to centre, retained: online or offline (the will message).
    Presence,
    /// Node to centre: a batch of toll records.
    Records,
    /// Centre to node: the highest contiguous sequence stored.
    RecordsAck,
    /// Node to centre: an hourly per-gantry count and fee sum.
    Summary,
}

impl NodeKind {
    pub const ALL: [NodeKind; 8] = [
        NodeKind::Desired,
        NodeKind::Command,
        NodeKind::CommandResult,
        NodeKind::Status,
        NodeKind::Presence,
        NodeKind::Records,
        NodeKind::RecordsAck,
        NodeKind::Summary,
    ];

    /// Returns the topic levels after the node id.
    pub fn suffix(self) -> &'static str {
        match self {
            NodeKind::Desired => "desired",
            NodeKind::Command => "cmd",
            NodeKind::CommandResult => "cmd/result",
            NodeKind::Status => "status",
            NodeKind::Presence => "presence",
            NodeKind::Records => "records",
            NodeKind::RecordsAck => "records/ack",
            NodeKind::Summary => "summary",
        }
    }

    /// Returns the kind whose suffix is `suffix` (e.g. `cmd/result`).
    pub fn from_suffix(suffix: &str) -> Option<Self> {
        NodeKind::ALL
            .into_iter()
            .find(|kind| kind.suffix() == suffix)
    }

    /// Returns true for the kinds a node publishes (node to centre), false
    /// for the kinds it receives.
    pub fn sent_by_node(self) -> bool {
        match self {
            NodeKind::CommandResult
            | NodeKind::Status
            | NodeKind::Presence
            | NodeKind::Records
            | NodeKind::Summary => true,
            NodeKind::Desired | NodeKind::Command | NodeKind::RecordsAck => false,
        }
    }

    /// Returns true for the kinds published retained: the desired state and
    /// the presence.
    pub fn retained(self) -> bool {
        matches!(self, NodeKind::Desired | NodeKind::Presence)
    }
}

/// A provincial centre's topics, as the last levels of `tollway/v1/{province}/center/...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CenterKind {
    /// Province to nation: the province's fleet summary.
    Status,
    /// Province to nation, retained: the bridge's state (its will sets offline).
    Bridge,
    /// Province to nation: records the province stored, forwarded in batches.
    Records,
    /// Nation to province: the highest contiguous forwarding sequence stored.
    RecordsAck,
    /// Province to nation: events for operators, such as a rejected object
    /// or an incomplete hour.
    Events,
}

impl CenterKind {
    pub const ALL: [CenterKind; 5] = [
        CenterKind::Status,
        CenterKind::Bridge,
        CenterKind::Records,
        CenterKind::RecordsAck,
        CenterKind::Events,
    ];

    /// Returns the topic levels after `center`.
    pub fn suffix(self) -> &'static str {
        match self {
            CenterKind::Status => "status",
            CenterKind::Bridge => "bridge",
            CenterKind::Records => "records",
            CenterKind::RecordsAck => "records/ack",
            CenterKind::Events => "events",
        }
    }

    fn from_suffix(suffix: &str) -> Option<Self> {
        CenterKind::ALL
            .into_iter()
            .find(|kind| kind.suffix() == suffix)
    }
}

/// The kinds of operator object, as the level after `ops`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpsKind {
    Deployment,
    Rollout,
}

impl OpsKind {
    pub fn level(self) -> &'static str {
        match self {
            OpsKind::Deployment => "deployments",
            OpsKind::Rollout => "rollouts",
        }
    }
}

/// A parsed Tollway topic name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Node {
        province: Province,
        node: NodeId,
        kind: NodeKind,
    },
    Center {
        province: Province,
        kind: CenterKind,
    },
    Ops {
        kind: OpsKind,
        name: ObjectName,
    },
}

/// A topic name that is not part of the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic {topic:?} does not start with {PREFIX:?}")]
    Prefix { topic: String },

    #[error("topic {topic:?} has an invalid id: {source}")]
    Id {
        topic: String,
        #[source]
        source: IdError,
    },

    #[error(
        "topic {topic:?} is not part of the topic contract: expected tollway/v1/{{province}}/node/{{node}}/{{kind}}, tollway/v1/{{province}}/center/{{kind}} or tollway/v1/ops/{{deployments|rollouts}}/{{name}}"
    )]
    Unknown { topic: String },
}

impl Topic {
    pub fn node(province: Province, node: NodeId, kind: NodeKind) -> Self {
        Topic::Node {
            province,
            node,
            kind,
        }
    }

    pub fn center(province: Province, kind: CenterKind) -> Self {
        Topic::Center { province, kind }
    }

    pub fn deployment(name: ObjectName) -> Self {
        Topic::Ops {
            kind: OpsKind::Deployment,
            name,
        }
    }

    pub fn rollout(name: ObjectName) -> Self {
        Topic::Ops {
            kind: OpsKind::Rollout,
            name,
        }
    }

    /// Parses a topic name, validating every id in it.
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let rest = topic
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| TopicError::Prefix {
                topic: topic.to_string(),
            })?;
        let id_error = |source| TopicError::Id {
            topic: topic.to_string(),
            source,
        };
        let unknown = || TopicError::Unknown {
            topic: topic.to_string(),
        };

        // Operators' objects: ops/{deployments|rollouts}/{name}.
        if let Some(ops) = rest.strip_prefix("ops/") {
            let (level, name) = ops.split_once('/').ok_or_else(unknown)?;
            let kind = match level {
                "deployments" => OpsKind::Deployment,
                "rollouts" => OpsKind::Rollout,
                _ => return Err(unknown()),
            };
            let name = ObjectName::new(name).map_err(id_error)?;
            return Ok(Topic::Ops { kind, name });
        }

        // Everything else starts with the province.
        let (province, rest) = rest.split_once('/').ok_or_else(unknown)?;
        let province: Province = province.parse().map_err(id_error)?;

        if let Some(rest) = rest.strip_prefix("node/") {
            let (node, suffix) = rest.split_once('/').ok_or_else(unknown)?;
            let node = NodeId::new(node).map_err(id_error)?;
            let kind = NodeKind::from_suffix(suffix).ok_or_else(unknown)?;
            return Ok(Topic::Node {
                province,
                node,
                kind,
            });
        }

        if let Some(suffix) = rest.strip_prefix("center/") {
            let kind = CenterKind::from_suffix(suffix).ok_or_else(unknown)?;
            return Ok(Topic::Center { province, kind });
        }

        Err(unknown())
    }

    /// Returns the province of the topic, or `None` for operators' objects.
    pub fn province(&self) -> Option<Province> {
        match self {
            Topic::Node { province, .. } | Topic::Center { province, .. } => Some(*province),
            Topic::Ops { .. } => None,
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Node {
                province,
                node,
                kind,
            } => write!(f, "{PREFIX}/{province}/node/{node}/{}", kind.suffix()),
            Topic::Center { province, kind } => {
                write!(f, "{PREFIX}/{province}/center/{}", kind.suffix())
            }
            Topic::Ops { kind, name } => write!(f, "{PREFIX}/ops/{}/{name}", kind.level()),
        }
    }
}

impl FromStr for Topic {
    type Err = TopicError;

    fn from_str(topic: &str) -> Result<Self, TopicError> {
        Topic::parse(topic)
    }
}

/// Builds the filter for one kind of topic of every node in a province, e.g.
/// `tollway/v1/44/node/+/records`.
pub fn node_filter(province: Province, kind: NodeKind) -> String {
    format!("{PREFIX}/{province}/node/+/{}", kind.suffix())
}

/// Builds the filter for every topic of every node in a province.
pub fn province_nodes_filter(province: Province) -> String {
    format!("{PREFIX}/{province}/node/#")
}

/// Builds the filter for everything under one node's prefix, the subtree a node's
/// certificate is confined to.
pub fn node_subtree_filter(province: Province, node: &NodeId) -> String {
    format!("{PREFIX}/{province}/node/{node}/#")
}

/// Builds the filter for one kind of centre topic of one province.
pub fn center_filter(province: Province, kind: CenterKind) -> String {
    format!("{PREFIX}/{province}/center/{}", kind.suffix())
}

/// Builds the filter for one kind of centre topic of every province, as the national
/// centre subscribes, e.g. `tollway/v1/+/center/records`.
pub fn all_centers_filter(kind: CenterKind) -> String {
    format!("{PREFIX}/+/center/{}", kind.suffix())
}

/// Builds the filter for one kind of node topic across every province, e.g.
/// `tollway/v1/+/node/+/status` for the national aggregator.
pub fn all_nodes_filter(kind: NodeKind) -> String {
    format!("{PREFIX}/+/node/+/{}", kind.suffix())
}

/// Builds the filter for every operator object of one kind.
pub fn ops_filter(kind: OpsKind) -> String {
    format!("{PREFIX}/ops/{}/+", kind.level())
}

/// Builds the filter for every operator object.
pub fn all_ops_filter() -> String {
    format!("{PREFIX}/ops/#")
}

/// Wraps a filter in an MQTT 5 shared subscription (`$share/{group}/{filter}`),
/// which Mosquitto and rmqtt also accept from MQTT 3.1.1 clients, so that the
/// members of `group` split the messages between them.
pub fn shared(group: &str, filter: &str) -> String {
    format!("$share/{group}/{filter}")
}

/// Reports whether `topic` matches the MQTT filter `filter` (`+` matches one
/// level, a trailing `#` matches the rest, including nothing).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Reports whether some topic name could match both filters. Bridges use it
/// to refuse rule sets in which a message could be forwarded both ways.
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let mut a_levels = a.split('/');
    let mut b_levels = b.split('/');
    loop {
        match (a_levels.next(), b_levels.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gd() -> Province {
        Province::new(44).unwrap()
    }

    #[test]
    fn node_topics_round_trip() {
        let node = NodeId::new("G0015-0001").unwrap();
        for kind in NodeKind::ALL {
            let topic = Topic::node(gd(), node.clone(), kind);
            let text = topic.to_string();
            assert!(text.starts_with("tollway/v1/44/node/G0015-0001/"));
            assert_eq!(Topic::parse(&text).unwrap(), topic, "{text}");
        }
    }

    #[test]
    fn center_and_ops_topics_round_trip() {
        for kind in CenterKind::ALL {
            let topic = Topic::center(gd(), kind);
            assert_eq!(Topic::parse(&topic.to_string()).unwrap(), topic);
        }
        let name = ObjectName::new("toll-app").unwrap();
        let deployment = Topic::deployment(name.clone());
        assert_eq!(
            deployment.to_string(),
            "tollway/v1/ops/deployments/toll-app"
        );
        assert_eq!(
            Topic::parse("tollway/v1/ops/rollouts/toll-app").unwrap(),
            Topic::rollout(name)
        );
    }

    #[test]
    fn parse_rejects_foreign_and_malformed_topics() {
        let cases = [
            ("other/v1/44/node/a/status", "prefix"),
            ("tollway/v2/44/node/a/status", "prefix"),
            ("tollway/v1/99/node/a/status", "id"),
            ("tollway/v1/44/node/a+b/status", "id"),
            ("tollway/v1/44/node/a/unknown", "unknown"),
            ("tollway/v1/44/node/a", "unknown"),
            ("tollway/v1/44/center/unknown", "unknown"),
            ("tollway/v1/ops/things/x", "unknown"),
            ("tollway/v1/ops/deployments/Bad_Name", "id"),
            ("tollway/v1/44/node/a/status/extra", "unknown"),
        ];
        for (topic, expected) in cases {
            let err = Topic::parse(topic).unwrap_err();
            let kind = match err {
                TopicError::Prefix { .. } => "prefix",
                TopicError::Id { .. } => "id",
                TopicError::Unknown { .. } => "unknown",
            };
            assert_eq!(kind, expected, "{topic}: {err}");
        }
    }

    #[test]
    fn filters_match_their_topics() {
        let node = NodeId::new("n1").unwrap();
        let records = Topic::node(gd(), node.clone(), NodeKind::Records).to_string();
        assert!(filter_matches(
            &node_filter(gd(), NodeKind::Records),
            &records
        ));
        assert!(!filter_matches(
            &node_filter(gd(), NodeKind::Status),
            &records
        ));
        assert!(filter_matches(&province_nodes_filter(gd()), &records));
        assert!(filter_matches(&node_subtree_filter(gd(), &node), &records));
        assert!(filter_matches(
            &all_nodes_filter(NodeKind::Records),
            &records
        ));
        let ack = Topic::center(gd(), CenterKind::RecordsAck).to_string();
        assert!(filter_matches(
            &all_centers_filter(CenterKind::RecordsAck),
            &ack
        ));
        assert!(!filter_matches(
            &all_centers_filter(CenterKind::Records),
            &ack
        ));
        assert!(filter_matches(
            &all_ops_filter(),
            "tollway/v1/ops/rollouts/x"
        ));
    }

    #[test]
    fn overlap_detects_shared_topics() {
        assert!(filters_overlap(
            "tollway/v1/44/node/+/status",
            "tollway/v1/#"
        ));
        assert!(filters_overlap(
            "tollway/v1/+/center/records",
            "tollway/v1/44/center/+"
        ));
        assert!(!filters_overlap(
            "tollway/v1/44/center/records",
            "tollway/v1/44/center/records/ack"
        ));
        assert!(!filters_overlap(
            "tollway/v1/ops/#",
            "tollway/v1/44/node/+/status"
        ));
    }
}
