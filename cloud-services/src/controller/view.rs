//! Read-only views of the controller's state: the JSON snapshot served by
//! the HTTP API, and the province summary published on `center/status`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tollway_topics::{PlacementMode, ProvinceStatus};

use super::inventory::StatusSummary;
use super::placement::Problem;
use super::rollout::view::RolloutView;
use super::state::Controller;

/// Everything the API serves, rebuilt when the state changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub province: u8,
    pub nodes: Vec<NodeView>,
    pub deployments: Vec<DeploymentView>,
    pub apps: Vec<AppView>,
    pub rollouts: Vec<RolloutView>,
}

/// One node, as `get nodes` and `describe node` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub node: String,
    pub online: bool,
    pub offline_since_ms: Option<u64>,
    pub last_seen_ms: u64,
    pub version: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Generation of the desired state last published to the node.
    pub desired_generation: Option<u64>,
    /// Apps in that desired state.
    pub desired_apps: Vec<String>,
    /// The node's last status.
    pub status: Option<StatusSummary>,
}

/// One deployment and where it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentView {
    pub name: String,
    /// `placed`, `shortfall` or `rejected`.
    pub state: String,
    /// `per-node` or `replicas`; absent for an object rejected at intake.
    pub mode: Option<String>,
    pub replicas: Option<u32>,
    pub spread_by: Option<String>,
    pub selector: Vec<String>,
    pub colocate_with: Option<String>,
    pub app: Option<String>,
    pub image: Option<String>,
    /// Nodes that run an instance.
    pub nodes: Vec<String>,
    /// Why the deployment is not placed as asked.
    pub problem: Option<String>,
}

/// One app across the nodes that should run it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppView {
    pub app: String,
    pub deployment: String,
    pub image: String,
    /// Nodes whose desired state names the app.
    pub desired: u32,
    pub running: u32,
    pub failed: u32,
    /// Nodes that have not reported the app running or failed yet.
    pub other: u32,
}

impl Controller {
    /// Builds the API snapshot.
    pub fn snapshot(&self) -> Snapshot {
        let nodes = self
            .nodes
            .iter()
            .map(|(id, record)| {
                let desired = self.desired.get(id);
                NodeView {
                    node: id.to_string(),
                    online: record.online,
                    offline_since_ms: record.offline_since_ms,
                    last_seen_ms: record.last_seen_ms,
                    version: record.version.clone(),
                    labels: record.labels.clone(),
                    desired_generation: desired.map(|desired| desired.generation),
                    desired_apps: desired
                        .map(|desired| {
                            desired
                                .apps
                                .iter()
                                .map(|app| app.name.to_string())
                                .collect()
                        })
                        .unwrap_or_default(),
                    status: record.status.clone(),
                }
            })
            .collect();
        Snapshot {
            province: self.province.code(),
            nodes,
            deployments: self.deployment_views(),
            apps: self.app_views(),
            rollouts: self.rollout_views(),
        }
    }

    fn deployment_views(&self) -> Vec<DeploymentView> {
        let names: BTreeSet<_> = self
            .deployments
            .keys()
            .chain(self.rejected.keys())
            .collect();
        names
            .into_iter()
            .map(|name| {
                let deployment = self.deployments.get(name);
                let problem = self.rejected.get(name).cloned().or_else(|| {
                    self.placement
                        .problems
                        .get(name)
                        .map(|problem| match problem {
                            Problem::Rejected(reason) | Problem::Shortfall(reason) => {
                                reason.clone()
                            }
                        })
                });
                let state = match (
                    self.rejected.contains_key(name),
                    self.placement.problems.get(name),
                ) {
                    (true, _) | (_, Some(Problem::Rejected(_))) => "rejected",
                    (_, Some(Problem::Shortfall(_))) => "shortfall",
                    _ => "placed",
                };
                let (mode, replicas, spread_by) = match deployment.map(|d| &d.placement) {
                    Some(PlacementMode::PerNode) => (Some("per-node".to_string()), None, None),
                    Some(PlacementMode::Replicas {
                        replicas,
                        spread_by,
                    }) => (
                        Some("replicas".to_string()),
                        Some(*replicas),
                        Some(spread_by.label().unwrap_or("node").to_string()),
                    ),
                    None => (None, None, None),
                };
                DeploymentView {
                    name: name.to_string(),
                    state: state.to_string(),
                    mode,
                    replicas,
                    spread_by,
                    selector: deployment
                        .map(|d| d.selector.to_strings())
                        .unwrap_or_default(),
                    colocate_with: deployment
                        .and_then(|d| d.colocate_with.as_ref().map(ToString::to_string)),
                    app: deployment.map(|d| d.app.name.to_string()),
                    image: deployment.map(|d| d.app.image.clone()),
                    nodes: self
                        .placement
                        .assignments
                        .get(name)
                        .map(|nodes| nodes.iter().map(ToString::to_string).collect())
                        .unwrap_or_default(),
                    problem,
                }
            })
            .collect()
    }

    fn app_views(&self) -> Vec<AppView> {
        let mut views = Vec::new();
        for (name, deployment) in &self.deployments {
            let Some(nodes) = self.placement.assignments.get(name) else {
                continue;
            };
            let app = deployment.app.name.as_str();
            let mut view = AppView {
                app: app.to_string(),
                deployment: name.to_string(),
                image: deployment.app.image.clone(),
                desired: 0,
                running: 0,
                failed: 0,
                other: 0,
            };
            for node in nodes {
                view.desired += 1;
                let state = self
                    .nodes
                    .get(node)
                    .and_then(|record| record.status.as_ref())
                    .and_then(|status| status.apps.iter().find(|a| a.name == app))
                    .map(|a| a.state.as_str());
                match state {
                    Some("running") => view.running += 1,
                    Some("failed") => view.failed += 1,
                    _ => view.other += 1,
                }
            }
            views.push(view);
        }
        views
    }

    /// Builds the province summary.
    pub fn province_status(&self, now_ms: u64) -> ProvinceStatus {
        let mut status = ProvinceStatus {
            province: self.province,
            time_ms: now_ms,
            nodes_total: saturating_u32(self.nodes.len()),
            nodes_online: 0,
            nodes_converged: 0,
            nodes_behind: 0,
            nodes_rejecting: 0,
            outbox_backlog: 0,
            oldest_undelivered_s: None,
            nodes_backpressure: 0,
            apps_failed: 0,
            deployments: 0,
            deployments_rejected: 0,
            records_per_hour: self.hourly.newest_hour_total(),
        };
        for (id, record) in &self.nodes {
            status.nodes_online += u32::from(record.online);
            let desired = self.desired.get(id).map(|desired| desired.generation);
            let Some(node_status) = &record.status else {
                continue;
            };
            match desired {
                Some(generation) if node_status.generation >= generation => {
                    status.nodes_converged += 1;
                }
                Some(_) => status.nodes_behind += 1,
                None => {}
            }
            if desired.is_some() && node_status.rejected_generation == desired {
                status.nodes_rejecting += 1;
            }
            status.outbox_backlog += node_status.outbox_depth;
            status.oldest_undelivered_s = status
                .oldest_undelivered_s
                .max(node_status.oldest_undelivered_s);
            status.nodes_backpressure += u32::from(node_status.backpressure);
            status.apps_failed +=
                saturating_u32(node_status.apps.iter().filter(|a| a.failed).count());
        }
        let rejected = self
            .problem_names()
            .into_iter()
            .filter(|name| {
                self.rejected.contains_key(*name)
                    || matches!(
                        self.placement.problems.get(*name),
                        Some(Problem::Rejected(_))
                    )
            })
            .count();
        status.deployments_rejected = saturating_u32(rejected);
        status.deployments = saturating_u32(
            self.deployments
                .keys()
                .filter(|name| {
                    !matches!(
                        self.placement.problems.get(*name),
                        Some(Problem::Rejected(_))
                    )
                })
                .count(),
        );
        status
    }
}

fn saturating_u32(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}
