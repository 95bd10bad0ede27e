//! Benchmark: full placement of 10,000 nodes and 20 deployments (the scale
//! target is under one second), then a recompute with one node gone
//! offline past the grace period, which exercises the stable path.
//!
//! Run with `cargo bench --workspace --bench placement`. It prints the
//! median and maximum of several runs; figures go to docs/benchmarks.md.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tollway_center::controller::inventory::NodeRecord;
use tollway_center::controller::placement::{Clock, place};
use tollway_topics::{Deployment, NodeId, ObjectName, PlacementMode, Selector, SpreadBy, samples};

const NODES: usize = 10_000;
const RUNS: usize = 7;

fn main() {
    let nodes = fleet();
    let deployments = deployments();
    let clock = Clock {
        now_ms: 1_000_000,
        grace_ms: 600_000,
    };

    let mut full = Vec::new();
    let mut placement = place(&nodes, &deployments, &BTreeMap::new(), clock);
    for _ in 0..RUNS {
        let started = Instant::now();
        placement = place(&nodes, &deployments, &BTreeMap::new(), clock);
        full.push(started.elapsed());
    }

    // One node with replicas goes offline past the grace period.
    let mut changed = nodes.clone();
    let victim = placement.assignments[&name("audit-0")]
        .iter()
        .next()
        .expect("audit-0 has replicas")
        .clone();
    let record = changed.get_mut(&victim).expect("victim is a node");
    record.online = false;
    record.offline_since_ms = Some(0);
    let mut incremental = Vec::new();
    let mut moved = 0;
    for _ in 0..RUNS {
        let started = Instant::now();
        let next = place(&changed, &deployments, &placement.assignments, clock);
        incremental.push(started.elapsed());
        moved = next
            .assignments
            .iter()
            .map(|(name, nodes)| nodes.difference(&placement.assignments[name]).count())
            .sum();
    }

    let instances: usize = placement.assignments.values().map(BTreeSet::len).sum();
    println!(
        "placement of {NODES} nodes, {} deployments, {instances} instances",
        deployments.len()
    );
    report("full placement", &mut full);
    report("recompute after one node left", &mut incremental);
    println!("instances moved by the recompute: {moved}");
}

fn report(label: &str, times: &mut [Duration]) {
    times.sort();
    let median = times[times.len() / 2];
    let max = times[times.len() - 1];
    println!(
        "{label}: median {median:.1?}, max {max:.1?} over {} runs",
        times.len()
    );
}

fn name(text: &str) -> ObjectName {
    ObjectName::new(text).expect("valid name")
}

/// 10,000 nodes: 100 sections of 10 stations of 10 gantry nodes; a tenth
/// are station servers, half are arm64.
fn fleet() -> BTreeMap<NodeId, NodeRecord> {
    (0..NODES)
        .map(|i| {
            let id = NodeId::new(format!("G{:05}", i)).expect("valid node id");
            let labels = BTreeMap::from([
                (
                    "arch".to_string(),
                    if i % 2 == 0 { "arm64" } else { "amd64" }.to_string(),
                ),
                (
                    "role".to_string(),
                    if i % 10 == 0 { "station" } else { "gantry" }.to_string(),
                ),
                ("section".to_string(), format!("S{:03}", i / 100)),
                ("station".to_string(), format!("T{:04}", i / 10)),
            ]);
            let record = NodeRecord {
                labels,
                online: true,
                ..NodeRecord::default()
            };
            (id, record)
        })
        .collect()
}

/// 20 deployments: 8 per-node (selectors of every form), 12 replicated
/// with each spread, 4 of them colocated.
fn deployments() -> BTreeMap<ObjectName, Deployment> {
    let mut list = Vec::new();
    let selectors: [&[&str]; 4] = [
        &["role in (gantry, station)"],
        &["arch = arm64"],
        &["role = gantry", "section notin (S000, S001)"],
        &[],
    ];
    for i in 0..8 {
        let mut app = samples::app_spec();
        app.name = name(&format!("agent-{i}"));
        list.push(Deployment {
            name: name(&format!("agent-{i}")),
            selector: Selector::parse(selectors[i % 4]).expect("valid selector"),
            placement: PlacementMode::PerNode,
            colocate_with: None,
            app,
        });
    }
    let spreads = [SpreadBy::Node, SpreadBy::Station, SpreadBy::Section];
    for i in 0..12 {
        let mut app = samples::app_spec();
        app.name = name(&format!("audit-{i}"));
        list.push(Deployment {
            name: name(&format!("audit-{i}")),
            selector: Selector::parse(&["role = station"]).expect("valid selector"),
            placement: PlacementMode::Replicas {
                replicas: 50,
                spread_by: spreads[i % 3],
            },
            colocate_with: (i >= 8).then(|| name("agent-0")),
            app,
        });
    }
    list.into_iter().map(|d| (d.name.clone(), d)).collect()
}
