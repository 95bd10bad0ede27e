//! Placement: which nodes run which deployment, computed from the node
//! inventory, the deployments and the previous placement.
//!
//! The computation is a pure function, so it is tested and benchmarked
//! without a broker. Its rules:
//!
//! - A node matches a deployment when the selector matches its labels and,
//!   with `colocate_with: OTHER`, when OTHER is placed on it.
//! - `per-node`: every matching node, online or not, runs one instance, so
//!   a node that joins later gets one and an offline node keeps its own.
//! - `replicas: N`: N matching nodes in N different `spread_by` domains:
//!   the node itself, or its `station` or `section` label. A node without
//!   that label is not a candidate, and neither is a node offline for longer
//!   than the grace period.
//! - Stability: a replica stays where it was while its node is still a
//!   candidate and its domain is not taken by an earlier kept replica; new
//!   replicas go to the least loaded candidate in an unused domain, ties
//!   broken by a hash of deployment and node, so an unrelated change never
//!   moves an instance.
//! - Deployments are placed in `colocate_with` order. A deployment whose
//!   app name another deployment already uses, or whose `colocate_with`
//!   names a missing or rejected deployment or forms a cycle, is rejected.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tollway_topics::{Deployment, NodeId, ObjectName, PlacementMode, SpreadBy};

use super::inventory::NodeRecord;

/// The result of one placement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// The nodes of each placed deployment, sorted by node id.
    pub assignments: BTreeMap<ObjectName, BTreeSet<NodeId>>,
    /// Deployments that could not be placed as asked, with the reason.
    pub problems: BTreeMap<ObjectName, Problem>,
}

/// The reason a deployment is not placed as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The deployment is not placed at all.
    Rejected(String),
    /// Fewer replicas than asked are placed.
    Shortfall(String),
}

/// Time inputs of one placement.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now_ms: u64,
    /// How long an offline node keeps its replica instances, in milliseconds.
    pub grace_ms: u64,
}

/// Computes the placement of every deployment.
pub fn place(
    nodes: &BTreeMap<NodeId, NodeRecord>,
    deployments: &BTreeMap<ObjectName, Deployment>,
    previous: &BTreeMap<ObjectName, BTreeSet<NodeId>>,
    clock: Clock,
) -> Placement {
    let mut placement = Placement::default();
    let order = placement_order(deployments, &mut placement.problems);
    let mut load: HashMap<&NodeId, u32> = HashMap::with_capacity(nodes.len());

    for name in order {
        let deployment = &deployments[name];
        let colocated = match &deployment.colocate_with {
            None => None,
            Some(other) => match placement.assignments.get(other) {
                Some(nodes) => Some(nodes),
                None => {
                    placement.problems.insert(
                        name.clone(),
                        Problem::Rejected(format!(
                            "colocate_with names deployment {other}, which is rejected"
                        )),
                    );
                    continue;
                }
            },
        };
        let matching = nodes.iter().filter(|(id, record)| {
            deployment.selector.matches(&record.labels)
                && colocated.is_none_or(|set| set.contains(*id))
        });

        let chosen = match deployment.placement {
            PlacementMode::PerNode => matching.map(|(id, _)| id.clone()).collect(),
            PlacementMode::Replicas {
                replicas,
                spread_by,
            } => {
                let candidates = matching.filter(|(_, record)| {
                    record.within_grace(clock.now_ms, clock.grace_ms)
                        && domain(spread_by, record, "").is_some()
                });
                let kept = previous.get(name);
                let (chosen, domains) =
                    choose_replicas(name, candidates, kept, replicas, spread_by, &load);
                if chosen.len() < replicas as usize {
                    placement.problems.insert(
                        name.clone(),
                        Problem::Shortfall(format!(
                            "placed {} of {replicas} replicas: only {domains} {} domain(s) have a matching node that is online or offline for less than the grace period",
                            chosen.len(),
                            spread_name(spread_by),
                        )),
                    );
                }
                chosen
            }
        };

        for node in &chosen {
            if let Some((id, _)) = nodes.get_key_value(node) {
                *load.entry(id).or_default() += 1;
            }
        }
        placement.assignments.insert(name.clone(), chosen);
    }
    placement
}

/// Picks the replicas of one deployment. Returns them and the number of
/// spread domains that had a candidate.
fn choose_replicas<'a>(
    name: &ObjectName,
    candidates: impl Iterator<Item = (&'a NodeId, &'a NodeRecord)>,
    kept: Option<&BTreeSet<NodeId>>,
    replicas: u32,
    spread_by: SpreadBy,
    load: &HashMap<&NodeId, u32>,
) -> (BTreeSet<NodeId>, usize) {
    let wanted = replicas as usize;
    let mut chosen = BTreeSet::new();
    let mut used_domains: BTreeSet<&str> = BTreeSet::new();

    // The best new candidate of each domain, by (load, hash, id).
    let mut best: BTreeMap<&str, (u32, u64, &NodeId)> = BTreeMap::new();
    let mut kept_candidates: Vec<(&str, &NodeId)> = Vec::new();
    for (id, record) in candidates {
        let domain = domain(spread_by, record, id.as_str()).unwrap_or_default();
        if kept.is_some_and(|kept| kept.contains(id)) {
            kept_candidates.push((domain, id));
        }
        let key = (load.get(id).copied().unwrap_or(0), rank(name, id), id);
        best.entry(domain)
            .and_modify(|current| {
                if key < *current {
                    *current = key;
                }
            })
            .or_insert(key);
    }
    let domain_count = best.len();

    // Keep earlier replicas first, one per domain, in node id order.
    for (domain, id) in kept_candidates {
        if chosen.len() == wanted {
            break;
        }
        if used_domains.insert(domain) {
            chosen.insert(id.clone());
        }
    }

    // Fill up from unused domains, least loaded first.
    let mut fresh: Vec<(u32, u64, &NodeId, &str)> = best
        .into_iter()
        .filter(|(domain, _)| !used_domains.contains(domain))
        .map(|(domain, (load, rank, id))| (load, rank, id, domain))
        .collect();
    fresh.sort_unstable();
    for (_, _, id, _) in fresh.into_iter().take(wanted - chosen.len()) {
        chosen.insert(id.clone());
    }
    (chosen, domain_count)
}

/// Returns the node's spread domain: its id, or the label that `spread_by`
/// names (`None` when the node lacks it).
fn domain<'a>(spread_by: SpreadBy, record: &'a NodeRecord, id: &'a str) -> Option<&'a str> {
    match spread_by.label() {
        None => Some(id),
        Some(label) => record.labels.get(label).map(String::as_str),
    }
}

fn spread_name(spread_by: SpreadBy) -> &'static str {
    spread_by.label().unwrap_or("node")
}

/// Returns a stable pseudo-random rank of a node for one deployment
/// (64-bit FNV-1a). Deployments with equal loads then do not all pick the
/// same first nodes, and the choice does not change between program versions.
pub(super) fn rank(name: &ObjectName, node: &NodeId) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name
        .as_str()
        .bytes()
        .chain([0])
        .chain(node.as_str().bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Orders deployments so that each comes after the one it is colocated
/// with, and records the deployments that cannot be placed at all.
fn placement_order<'a>(
    deployments: &'a BTreeMap<ObjectName, Deployment>,
    problems: &mut BTreeMap<ObjectName, Problem>,
) -> Vec<&'a ObjectName> {
    // App names must be unique on a node, so across deployments.
    let mut app_owner: BTreeMap<&str, &ObjectName> = BTreeMap::new();
    for (name, deployment) in deployments {
        let app = deployment.app.name.as_str();
        match app_owner.get(app) {
            Some(owner) => {
                problems.insert(
                    name.clone(),
                    Problem::Rejected(format!(
                        "app name {app} is already used by deployment {owner}; give the app another name"
                    )),
                );
            }
            None => {
                app_owner.insert(app, name);
            }
        }
    }

    let mut order = Vec::with_capacity(deployments.len());
    let mut state: BTreeMap<&ObjectName, Visit> = BTreeMap::new();
    for name in deployments.keys() {
        visit(name, deployments, problems, &mut state, &mut order);
    }
    order
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Visit {
    InProgress,
    Done,
}

/// Depth-first visit along `colocate_with`; a deployment is appended after
/// the one it depends on. Cycles and missing targets are rejected.
fn visit<'a>(
    name: &'a ObjectName,
    deployments: &'a BTreeMap<ObjectName, Deployment>,
    problems: &mut BTreeMap<ObjectName, Problem>,
    state: &mut BTreeMap<&'a ObjectName, Visit>,
    order: &mut Vec<&'a ObjectName>,
) -> bool {
    match state.get(name) {
        Some(Visit::Done) => return !problems.contains_key(name),
        Some(Visit::InProgress) => {
            problems.insert(
                name.clone(),
                Problem::Rejected(format!(
                    "colocate_with forms a cycle through deployment {name}"
                )),
            );
            return false;
        }
        None => {}
    }
    state.insert(name, Visit::InProgress);
    let deployment = &deployments[name];
    let mut placeable = !problems.contains_key(name);
    if let Some(other) = &deployment.colocate_with {
        if !deployments.contains_key(other) {
            problems.insert(
                name.clone(),
                Problem::Rejected(format!(
                    "colocate_with names deployment {other}, which does not exist"
                )),
            );
            placeable = false;
        } else if !visit(other, deployments, problems, state, order) {
            problems.entry(name.clone()).or_insert_with(|| {
                Problem::Rejected(format!(
                    "colocate_with names deployment {other}, which is rejected"
                ))
            });
            placeable = false;
        }
    }
    state.insert(name, Visit::Done);
    if placeable {
        order.push(name);
    }
    placeable
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollway_topics::{Selector, samples};

    const CLOCK: Clock = Clock {
        now_ms: 1_000_000,
        grace_ms: 60_000,
    };

    fn name(text: &str) -> ObjectName {
        ObjectName::new(text).unwrap()
    }

    fn node(id: &str, station: &str) -> (NodeId, NodeRecord) {
        let labels = BTreeMap::from([("station".to_string(), station.to_string())]);
        let record = NodeRecord {
            labels,
            online: true,
            ..NodeRecord::default()
        };
        (NodeId::new(id).unwrap(), record)
    }

    fn deployment(
        text: &str,
        placement: PlacementMode,
        colocate: Option<&str>,
    ) -> (ObjectName, Deployment) {
        let mut app = samples::app_spec();
        app.name = name(text);
        let deployment = Deployment {
            name: name(text),
            selector: Selector::default(),
            placement,
            colocate_with: colocate.map(name),
            app,
        };
        (name(text), deployment)
    }

    fn replicas(replicas: u32, spread_by: SpreadBy) -> PlacementMode {
        PlacementMode::Replicas {
            replicas,
            spread_by,
        }
    }

    #[test]
    fn kept_replicas_do_not_move() {
        let nodes: BTreeMap<_, _> = [node("a", "T1"), node("b", "T2"), node("c", "T3")].into();
        let deployments: BTreeMap<_, _> =
            [deployment("x", replicas(2, SpreadBy::Node), None)].into();
        let previous = BTreeMap::from([(
            name("x"),
            BTreeSet::from([NodeId::new("c").unwrap(), NodeId::new("a").unwrap()]),
        )]);
        let placement = place(&nodes, &deployments, &previous, CLOCK);
        assert_eq!(placement.assignments[&name("x")], previous[&name("x")]);
        assert!(placement.problems.is_empty());
    }

    #[test]
    fn replicas_leave_expired_node() {
        let mut nodes: BTreeMap<_, _> = [node("a", "T1"), node("b", "T2")].into();
        let a = nodes.get_mut(&NodeId::new("a").unwrap()).unwrap();
        a.online = false;
        a.offline_since_ms = Some(CLOCK.now_ms - CLOCK.grace_ms);
        let deployments: BTreeMap<_, _> =
            [deployment("x", replicas(1, SpreadBy::Node), None)].into();
        let previous = BTreeMap::from([(name("x"), BTreeSet::from([NodeId::new("a").unwrap()]))]);
        let placement = place(&nodes, &deployments, &previous, CLOCK);
        assert_eq!(
            placement.assignments[&name("x")],
            BTreeSet::from([NodeId::new("b").unwrap()])
        );
    }

    #[test]
    fn spread_needs_label_and_domains() {
        let mut nodes: BTreeMap<_, _> = [node("a", "T1"), node("b", "T1")].into();
        nodes.insert(
            NodeId::new("bare").unwrap(),
            NodeRecord {
                online: true,
                ..NodeRecord::default()
            },
        );
        let deployments: BTreeMap<_, _> =
            [deployment("x", replicas(2, SpreadBy::Station), None)].into();
        let placement = place(&nodes, &deployments, &BTreeMap::new(), CLOCK);
        assert_eq!(placement.assignments[&name("x")].len(), 1);
        assert!(matches!(
            placement.problems.get(&name("x")),
            Some(Problem::Shortfall(_))
        ));
    }

    #[test]
    fn colocation_cycle_is_rejected() {
        let nodes: BTreeMap<_, _> = [node("a", "T1")].into();
        let deployments: BTreeMap<_, _> = [
            deployment("x", PlacementMode::PerNode, Some("y")),
            deployment("y", PlacementMode::PerNode, Some("x")),
            deployment("z", PlacementMode::PerNode, None),
        ]
        .into();
        let placement = place(&nodes, &deployments, &BTreeMap::new(), CLOCK);
        assert!(matches!(
            placement.problems.get(&name("x")),
            Some(Problem::Rejected(_))
        ));
        assert!(matches!(
            placement.problems.get(&name("y")),
            Some(Problem::Rejected(_))
        ));
        assert!(!placement.assignments.contains_key(&name("x")));
        assert_eq!(placement.assignments[&name("z")].len(), 1);
    }

    #[test]
    fn per_node_keeps_offline_nodes() {
        let mut nodes: BTreeMap<_, _> = [node("a", "T1")].into();
        let a = nodes.get_mut(&NodeId::new("a").unwrap()).unwrap();
        a.online = false;
        a.offline_since_ms = Some(0);
        let deployments: BTreeMap<_, _> = [deployment("x", PlacementMode::PerNode, None)].into();
        let placement = place(&nodes, &deployments, &BTreeMap::new(), CLOCK);
        assert_eq!(placement.assignments[&name("x")].len(), 1);
    }
}
