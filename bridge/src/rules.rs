//! The rule table: which topics cross the bridge, in which direction, at
//! which QoS and in which lane.
//!
//! Topics keep their names across the bridge. A rule set in which some
//! topic could match both an up and a down rule is rejected at start-up,
//! because such a message would be forwarded back and forth forever.

use serde::Deserialize;
use tollway_runtime::config::Problems;
use tollway_topics::topic::{
    PREFIX, all_ops_filter, center_filter, filter_matches, filters_overlap, node_filter,
};
use tollway_topics::{CenterKind, NodeKind, Province};

/// The way a rule forwards: up to the national broker or down to the province.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Provincial broker to national broker.
    Up,
    /// National broker to provincial broker.
    Down,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// The queue a forwarded message waits in. Control messages are always
/// sent before bulk messages of the same direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    /// Ops objects, commands, acknowledgements, presence: small and urgent.
    Control,
    /// Status, summaries and forwarded records: large and patient.
    Bulk,
}

impl Lane {
    pub fn label(self) -> &'static str {
        match self {
            Lane::Control => "control",
            Lane::Bulk => "bulk",
        }
    }
}

/// One forwarding rule, as written in `[[rules]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// `up` or `down`.
    pub direction: Direction,
    /// MQTT topic filter, subscribed on the source broker.
    pub filter: String,
    /// QoS of the subscription and of the forwarded publish: 0 or 1.
    /// Default: 1.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// `control` or `bulk`. Default: `bulk`.
    #[serde(default = "default_lane")]
    pub lane: Lane,
    /// Publish every forwarded message retained. MQTT 3.1.1 brokers clear
    /// the retain flag on messages they deliver to an existing subscription,
    /// so topics whose last message must be kept on the destination (ops
    /// objects, presence) set this. Default: false, which keeps the flag as
    /// received (set only on retained messages sent at subscribe time).
    #[serde(default)]
    pub retain: bool,
}

fn default_qos() -> u8 {
    1
}

fn default_lane() -> Lane {
    Lane::Bulk
}

impl Rule {
    fn new(direction: Direction, filter: String, lane: Lane, retain: bool) -> Self {
        Rule {
            direction,
            filter,
            qos: 1,
            lane,
            retain,
        }
    }
}

/// The rules of one bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>) -> Self {
        RuleSet { rules }
    }

    /// Returns the default rules of a province, from the topic contract.
    ///
    /// Up: node status, summaries, presence and command results, and the
    /// province's own status, events and forwarded records. Down: ops
    /// objects, node commands and the national centre's acknowledgements of
    /// forwarded records. Node record batches and their acknowledgements
    /// stay in the province, and so do desired states, which the provincial
    /// controller writes.
    pub fn defaults(province: Province) -> Self {
        use Direction::{Down, Up};
        use Lane::{Bulk, Control};

        let node = |kind| node_filter(province, kind);
        let center = |kind| center_filter(province, kind);
        RuleSet::new(vec![
            Rule::new(Up, node(NodeKind::Presence), Control, true),
            Rule::new(Up, node(NodeKind::CommandResult), Control, false),
            Rule::new(Up, node(NodeKind::Status), Bulk, false),
            Rule::new(Up, node(NodeKind::Summary), Bulk, false),
            Rule::new(Up, center(CenterKind::Status), Bulk, false),
            Rule::new(Up, center(CenterKind::Events), Bulk, false),
            Rule::new(Up, center(CenterKind::Records), Bulk, false),
            Rule::new(Down, all_ops_filter(), Control, true),
            Rule::new(Down, node(NodeKind::Command), Control, false),
            Rule::new(Down, center(CenterKind::RecordsAck), Control, false),
        ])
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Returns the rules that read from the source of `direction`.
    pub fn in_direction(&self, direction: Direction) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(move |r| r.direction == direction)
    }

    /// Returns the first rule of `direction` whose filter matches `topic`.
    pub fn route(&self, direction: Direction, topic: &str) -> Option<&Rule> {
        self.in_direction(direction)
            .find(|rule| filter_matches(&rule.filter, topic))
    }

    /// Records every problem of the rule set: invalid filters and QoS, no
    /// rule at all, and each pair of up and down rules that overlap.
    pub fn check(&self, problems: &mut Problems) {
        if self.rules.is_empty() {
            problems.push(
                "rules",
                "[]",
                "list at least one rule, or remove the key to use the defaults",
            );
        }
        for (index, rule) in self.rules.iter().enumerate() {
            let key = format!("rules[{index}]");
            if let Err(problem) = check_filter(&rule.filter) {
                problems.push(&format!("{key}.filter"), &rule.filter, &problem);
            }
            if rule.qos > 1 {
                problems.push(
                    &format!("{key}.qos"),
                    rule.qos,
                    "must be 0 or 1; the bridge does not forward at QoS 2",
                );
            }
        }

        for (up_index, up) in self.rules.iter().enumerate() {
            if up.direction != Direction::Up {
                continue;
            }
            for (down_index, down) in self.rules.iter().enumerate() {
                if down.direction == Direction::Down && filters_overlap(&up.filter, &down.filter) {
                    problems.push(
                        &format!("rules[{up_index}].filter"),
                        &up.filter,
                        &format!(
                            "overlaps the down rule rules[{down_index}] ({}); a topic matching \
                             both would loop between the brokers, so narrow one of them",
                            down.filter
                        ),
                    );
                }
            }
        }
    }
}

/// Checks an MQTT topic filter: non-empty levels of the Tollway prefix,
/// `+` alone in a level, `#` alone and last.
fn check_filter(filter: &str) -> Result<(), String> {
    if !filter.starts_with(&format!("{PREFIX}/")) {
        return Err(format!(
            "must start with {PREFIX}/; the bridge forwards only Tollway topics"
        ));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (index, level) in levels.iter().enumerate() {
        let last = index + 1 == levels.len();
        if level.contains('#') && (*level != "#" || !last) {
            return Err("'#' must be a whole level and the last one".to_string());
        }
        if level.contains('+') && *level != "+" {
            return Err("'+' must be a whole level".to_string());
        }
        if level.is_empty() {
            return Err("empty level (two '/' in a row or a trailing '/')".to_string());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gd() -> Province {
        Province::new(44).unwrap()
    }

    fn problems_of(rules: &RuleSet) -> String {
        let mut problems = Problems::default();
        rules.check(&mut problems);
        problems.to_string()
    }

    #[test]
    fn defaults_pass_checks() {
        let text = problems_of(&RuleSet::defaults(gd()));
        assert!(text.is_empty(), "{text}");
    }

    #[test]
    fn defaults_route_contract_topics() {
        let rules = RuleSet::defaults(gd());
        let up = |topic: &str| rules.route(Direction::Up, topic).map(|r| r.lane);
        let down = |topic: &str| rules.route(Direction::Down, topic).map(|r| r.lane);

        assert_eq!(up("tollway/v1/44/node/G1/status"), Some(Lane::Bulk));
        assert_eq!(up("tollway/v1/44/node/G1/presence"), Some(Lane::Control));
        assert_eq!(up("tollway/v1/44/center/records"), Some(Lane::Bulk));
        assert_eq!(up("tollway/v1/44/center/status"), Some(Lane::Bulk));
        assert_eq!(
            down("tollway/v1/ops/deployments/toll-app"),
            Some(Lane::Control)
        );
        assert_eq!(down("tollway/v1/44/node/G1/cmd"), Some(Lane::Control));
        assert_eq!(
            down("tollway/v1/44/center/records/ack"),
            Some(Lane::Control)
        );
    }

    #[test]
    fn defaults_keep_records_in_province() {
        let rules = RuleSet::defaults(gd());
        for topic in [
            "tollway/v1/44/node/G1/records",
            "tollway/v1/44/node/G1/records/ack",
            "tollway/v1/44/node/G1/desired",
        ] {
            assert!(rules.route(Direction::Up, topic).is_none(), "up {topic}");
            assert!(
                rules.route(Direction::Down, topic).is_none(),
                "down {topic}"
            );
        }
    }

    #[test]
    fn defaults_ignore_other_provinces() {
        let rules = RuleSet::defaults(gd());
        assert!(
            rules
                .route(Direction::Down, "tollway/v1/11/node/G1/cmd")
                .is_none()
        );
        assert!(
            rules
                .route(Direction::Up, "tollway/v1/11/node/G1/status")
                .is_none()
        );
    }

    #[test]
    fn overlap_names_both_rules() {
        let rules = RuleSet::new(vec![
            Rule::new(Direction::Up, "tollway/v1/44/#".into(), Lane::Bulk, false),
            Rule::new(
                Direction::Down,
                "tollway/v1/+/node/+/cmd".into(),
                Lane::Control,
                false,
            ),
        ]);
        let text = problems_of(&rules);
        assert!(text.contains("rules[0].filter = tollway/v1/44/#"), "{text}");
        assert!(text.contains("rules[1]"), "{text}");
    }

    #[test]
    fn disjoint_rules_pass() {
        let rules = RuleSet::new(vec![
            Rule::new(
                Direction::Up,
                "tollway/v1/44/center/records".into(),
                Lane::Bulk,
                false,
            ),
            Rule::new(
                Direction::Down,
                "tollway/v1/44/center/records/ack".into(),
                Lane::Control,
                false,
            ),
        ]);
        assert!(problems_of(&rules).is_empty());
    }

    #[test]
    fn invalid_filters_are_rejected() {
        for (filter, expected) in [
            ("other/topic", "must start with"),
            ("tollway/v1/44/no#de", "'#'"),
            ("tollway/v1/#/status", "'#'"),
            ("tollway/v1/4+/status", "'+'"),
            ("tollway/v1//status", "empty level"),
        ] {
            let rules = RuleSet::new(vec![Rule::new(
                Direction::Up,
                filter.into(),
                Lane::Bulk,
                false,
            )]);
            let text = problems_of(&rules);
            assert!(text.contains(expected), "{filter}: {text}");
        }
    }

    #[test]
    fn qos_two_is_rejected() {
        let mut rule = Rule::new(
            Direction::Up,
            "tollway/v1/44/center/status".into(),
            Lane::Bulk,
            false,
        );
        rule.qos = 2;
        let text = problems_of(&RuleSet::new(vec![rule]));
        assert!(text.contains("rules[0].qos = 2"), "{text}");
    }

    #[test]
    fn empty_rule_set_is_rejected() {
        assert!(problems_of(&RuleSet::new(Vec::new())).contains("at least one rule"));
    }
}
