//! The nodes a wave covers, decided when the wave starts.
//!
//! The targets are the nodes the deployment is placed on at that moment.
//! A selector wave takes the targets whose labels match. A percent wave is
//! cumulative: `percent: 25` means the first quarter of the targets in a
//! stable order, so waves of 10, 50 and 100 cover a tenth, then up to half,
//! then the rest. Both kinds leave out nodes of earlier waves.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use tollway_topics::{NodeId, ObjectName, Wave};

use super::super::inventory::NodeRecord;
use super::super::placement::rank;

/// Returns the nodes of `wave` among `targets`, in the stable order.
pub fn resolve(
    rollout: &ObjectName,
    wave: &Wave,
    targets: &BTreeSet<NodeId>,
    nodes: &BTreeMap<NodeId, NodeRecord>,
    earlier: &HashSet<&str>,
) -> Vec<String> {
    let ordered = stable_order(rollout, targets);
    let chosen: Vec<&NodeId> = match wave {
        Wave::Selector { selector } => ordered
            .into_iter()
            .filter(|node| {
                nodes
                    .get(*node)
                    .is_some_and(|record| selector.matches(&record.labels))
            })
            .collect(),
        Wave::Percent { percent } => {
            let count = super::threshold(*percent, ordered.len());
            ordered.into_iter().take(count).collect()
        }
    };
    chosen
        .into_iter()
        .filter(|node| !earlier.contains(node.as_str()))
        .map(ToString::to_string)
        .collect()
}

/// Orders the targets by a hash of the rollout name and node id, so that a
/// percent wave samples every section instead of the first ones by name,
/// and the order is the same after a controller restart.
fn stable_order<'a>(rollout: &ObjectName, targets: &'a BTreeSet<NodeId>) -> Vec<&'a NodeId> {
    let mut ordered: Vec<&NodeId> = targets.iter().collect();
    ordered.sort_by_key(|node| (rank(rollout, node), (*node).clone()));
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollway_topics::Selector;

    fn targets(count: usize) -> (BTreeSet<NodeId>, BTreeMap<NodeId, NodeRecord>) {
        let mut ids = BTreeSet::new();
        let mut records = BTreeMap::new();
        for index in 0..count {
            let id = NodeId::new(format!("G0015-4401-{index:04}")).unwrap();
            let mut record = NodeRecord::default();
            let section = if index % 2 == 0 { "A" } else { "B" };
            record
                .labels
                .insert("section".to_string(), section.to_string());
            ids.insert(id.clone());
            records.insert(id, record);
        }
        (ids, records)
    }

    #[test]
    fn percent_waves_are_cumulative() {
        let (ids, records) = targets(40);
        let name = ObjectName::new("up").unwrap();
        let first = resolve(
            &name,
            &Wave::Percent { percent: 25 },
            &ids,
            &records,
            &HashSet::new(),
        );
        assert_eq!(first.len(), 10);
        let earlier: HashSet<&str> = first.iter().map(String::as_str).collect();
        let second = resolve(
            &name,
            &Wave::Percent { percent: 100 },
            &ids,
            &records,
            &earlier,
        );
        assert_eq!(second.len(), 30);
        assert!(second.iter().all(|node| !earlier.contains(node.as_str())));
    }

    #[test]
    fn selector_wave_skips_earlier_nodes() {
        let (ids, records) = targets(10);
        let name = ObjectName::new("up").unwrap();
        let wave = Wave::Selector {
            selector: Selector::parse(&["section = A"]).unwrap(),
        };
        let all_a = resolve(&name, &wave, &ids, &records, &HashSet::new());
        assert_eq!(all_a.len(), 5);
        let earlier: HashSet<&str> = HashSet::from([all_a[0].as_str()]);
        let rest = resolve(&name, &wave, &ids, &records, &earlier);
        assert_eq!(rest.len(), 4);
    }

    #[test]
    fn order_is_stable_per_rollout() {
        let (ids, records) = targets(50);
        let wave = Wave::Percent { percent: 20 };
        let name = ObjectName::new("up").unwrap();
        let once = resolve(&name, &wave, &ids, &records, &HashSet::new());
        let again = resolve(&name, &wave, &ids, &records, &HashSet::new());
        assert_eq!(once, again);
        let other = ObjectName::new("other").unwrap();
        let different = resolve(&other, &wave, &ids, &records, &HashSet::new());
        assert_ne!(once, different, "another rollout samples other nodes");
    }
}
