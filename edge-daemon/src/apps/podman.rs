//! The daemon's view of Podman: list this node's containers, create, start,
//! stop and remove them, and check and pull images. Calls go through the
//! `podman-api` crate, except where it fails against Podman 4 (see `raw`).
//! Every call has a timeout, pulls excepted (a pull runs in the background
//! and may take minutes on a slow link).

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use podman_api::Podman;
use podman_api::models::{ContainerMount, LinuxResources, Namespace, PortMapping};
use podman_api::opts::{
    ContainerCreateOpts, ContainerDeleteOpts, ContainerListFilter, ContainerListOpts, PullOpts,
    PullPolicy,
};
use serde_json::json;
use tollway_topics::{AppSpec, NodeId, Protocol};

use super::config::NetworkMode;
use super::error::PodmanError;
use super::labels;
use super::raw::RawClient;

/// One of this node's containers as Podman lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedContainer {
    pub id: String,
    pub name: String,
    pub app: String,
    pub spec_hash: String,
    pub state: RunState,
}

/// The run state of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Created but never started.
    Created,
    Running,
    /// Exited with this code (137 after SIGKILL, for instance).
    Exited(i32),
    /// Any other Podman state (paused, stopping, removing), as Podman names it.
    Other(String),
}

/// A connection to Podman's REST API.
#[derive(Clone)]
pub struct PodmanClient {
    api: Podman,
    raw: RawClient,
    timeout: Duration,
}

impl PodmanClient {
    pub fn new(socket: &Path, timeout: Duration) -> Self {
        PodmanClient {
            api: Podman::unix(socket),
            raw: RawClient::new(socket),
            timeout,
        }
    }

    /// Lists every container, running or not, labelled as `node`'s.
    pub async fn list_owned(&self, node: &NodeId) -> Result<Vec<ManagedContainer>, PodmanError> {
        let subject = format!("node {node}'s containers");
        let opts = ContainerListOpts::builder()
            .all(true)
            .filter([
                ContainerListFilter::LabelKeyVal(
                    labels::MANAGED_BY.to_string(),
                    labels::MANAGED_BY_VALUE.to_string(),
                ),
                ContainerListFilter::LabelKeyVal(labels::NODE.to_string(), node.to_string()),
            ])
            .build();
        let listed = self
            .bounded("list", &subject, self.api.containers().list(&opts))
            .await?;

        let containers = match listed {
            Ok(listed) => listed
                .into_iter()
                .filter_map(|container| {
                    managed(
                        node,
                        container.id.unwrap_or_default(),
                        container.names.unwrap_or_default().into_iter().next(),
                        container.labels.unwrap_or_default(),
                        container.state.as_deref(),
                        container.exit_code,
                    )
                })
                .collect(),
            Err(err) if is_decode_error(&err) => {
                tracing::debug!(error = %err, "podman-api cannot decode the container list; reading raw JSON");
                self.list_owned_raw(node, &subject).await?
            }
            Err(source) => {
                return Err(PodmanError::Api {
                    operation: "list",
                    subject,
                    source,
                });
            }
        };
        Ok(containers)
    }

    /// Reports whether `image` is in local storage.
    pub async fn image_exists(&self, image: &str) -> Result<bool, PodmanError> {
        self.bounded("image check", image, self.api.images().get(image).exists())
            .await?
            .map_err(|source| PodmanError::Api {
                operation: "image check",
                subject: image.to_string(),
                source,
            })
    }

    /// Pulls `image` unless it is in local storage (pull policy `missing`).
    /// Not bounded by the call timeout: the caller runs it in the background.
    pub async fn pull_missing(&self, image: &str) -> Result<(), PodmanError> {
        let opts = PullOpts::builder()
            .reference(image)
            .policy(PullPolicy::Missing)
            .quiet(true)
            .build();
        let images = self.api.images();
        let mut reports = images.pull(&opts);
        while let Some(report) = reports.next().await {
            let report = report.map_err(|source| PodmanError::Api {
                operation: "pull",
                subject: image.to_string(),
                source,
            })?;
            if let Some(error) = report.error.filter(|error| !error.is_empty()) {
                return Err(PodmanError::Raw {
                    operation: "pull",
                    subject: image.to_string(),
                    detail: error,
                });
            }
        }
        Ok(())
    }

    /// Creates (but does not start) the container of `spec` and returns its id.
    pub async fn create(
        &self,
        node: &NodeId,
        spec: &AppSpec,
        hash: &str,
        network: NetworkMode,
        stop_timeout_s: u32,
    ) -> Result<String, PodmanError> {
        let name = labels::container_name(node, spec.name.as_str(), hash);
        let opts = create_opts(node, spec, hash, network, stop_timeout_s, &name);
        let created = self
            .bounded("create", &name, self.api.containers().create(&opts))
            .await?
            .map_err(|source| PodmanError::Api {
                operation: "create",
                subject: name.clone(),
                source,
            })?;
        Ok(created.id)
    }

    pub async fn start(&self, id: &str) -> Result<(), PodmanError> {
        self.bounded("start", id, self.api.containers().get(id).start(None))
            .await?
            .map_err(|source| PodmanError::Api {
                operation: "start",
                subject: id.to_string(),
                source,
            })
    }

    /// Stops a container through the libpod endpoint, so that `timeout_s`
    /// is honoured (see `raw`).
    pub async fn stop(&self, id: &str, timeout_s: u32) -> Result<(), PodmanError> {
        // Podman waits up to the stop timeout before it kills; allow for it.
        let limit = self.timeout + Duration::from_secs(u64::from(timeout_s));
        match tokio::time::timeout(limit, self.raw.stop(id, timeout_s)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(failure)) => Err(PodmanError::Raw {
                operation: "stop",
                subject: id.to_string(),
                detail: failure.0,
            }),
            Err(_) => Err(PodmanError::TimedOut {
                operation: "stop",
                subject: id.to_string(),
                seconds: limit.as_secs(),
            }),
        }
    }

    /// Removes a container, killing it first if it still runs.
    pub async fn remove(&self, id: &str) -> Result<(), PodmanError> {
        let opts = ContainerDeleteOpts::builder().force(true).build();
        self.bounded("remove", id, self.api.containers().get(id).delete(&opts))
            .await?
            .map_err(|source| PodmanError::Api {
                operation: "remove",
                subject: id.to_string(),
                source,
            })
    }

    /// Reads the container list as raw JSON, for when `podman-api`'s model
    /// does not match Podman's response.
    async fn list_owned_raw(
        &self,
        node: &NodeId,
        subject: &str,
    ) -> Result<Vec<ManagedContainer>, PodmanError> {
        let filters = json!({
            "label": [
                format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
                format!("{}={}", labels::NODE, node),
            ]
        });
        let path = format!(
            "/containers/json?all=true&filters={}",
            percent_encode(&filters.to_string())
        );
        let listed = match tokio::time::timeout(self.timeout, self.raw.get_json(&path)).await {
            Ok(Ok(listed)) => listed,
            Ok(Err(failure)) => {
                return Err(PodmanError::Raw {
                    operation: "list",
                    subject: subject.to_string(),
                    detail: failure.0,
                });
            }
            Err(_) => {
                return Err(PodmanError::TimedOut {
                    operation: "list",
                    subject: subject.to_string(),
                    seconds: self.timeout.as_secs(),
                });
            }
        };
        Ok(parse_raw_list(node, &listed))
    }

    /// Runs one API call with the call timeout.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        subject: &str,
        call: impl Future<Output = T>,
    ) -> Result<T, PodmanError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| PodmanError::TimedOut {
                operation,
                subject: subject.to_string(),
                seconds: self.timeout.as_secs(),
            })
    }
}

/// Parses Podman's container list JSON, keeping only `node`'s containers.
pub fn parse_raw_list(node: &NodeId, listed: &serde_json::Value) -> Vec<ManagedContainer> {
    let Some(entries) = listed.as_array() else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let labels: HashMap<String, String> = entry
                .get("Labels")
                .and_then(|labels| serde_json::from_value(labels.clone()).ok())
                .unwrap_or_default();
            managed(
                node,
                entry.get("Id")?.as_str()?.to_string(),
                entry
                    .get("Names")
                    .and_then(|names| names.get(0))
                    .and_then(|name| name.as_str())
                    .map(str::to_string),
                labels,
                entry.get("State").and_then(|state| state.as_str()),
                entry
                    .get("ExitCode")
                    .and_then(|code| code.as_i64())
                    .and_then(|code| i32::try_from(code).ok()),
            )
        })
        .collect()
}

/// Builds a [`ManagedContainer`] from listed fields, or `None` when the
/// labels do not mark the container as `node`'s.
fn managed(
    node: &NodeId,
    id: String,
    name: Option<String>,
    labels: HashMap<String, String>,
    state: Option<&str>,
    exit_code: Option<i32>,
) -> Option<ManagedContainer> {
    if id.is_empty() || !labels::owned_by(&labels, node) {
        return None;
    }
    let state = match state.unwrap_or("") {
        "created" | "configured" => RunState::Created,
        "running" => RunState::Running,
        "exited" | "stopped" => RunState::Exited(exit_code.unwrap_or(0)),
        other => RunState::Other(other.to_string()),
    };
    Some(ManagedContainer {
        name: name.unwrap_or_else(|| id.clone()),
        id,
        app: labels.get(labels::APP).cloned().unwrap_or_default(),
        spec_hash: labels.get(labels::SPEC_HASH).cloned().unwrap_or_default(),
        state,
    })
}

/// Builds the create request of an app's container.
fn create_opts(
    node: &NodeId,
    spec: &AppSpec,
    hash: &str,
    network: NetworkMode,
    stop_timeout_s: u32,
    name: &str,
) -> ContainerCreateOpts {
    let mut builder = ContainerCreateOpts::builder()
        .name(name)
        .image(&spec.image)
        .labels(labels::container_labels(node, spec.name.as_str(), hash))
        .env(spec.env.clone())
        .stop_timeout(u64::from(stop_timeout_s));

    // The spec's command replaces the image's entrypoint and arguments.
    if let Some((program, arguments)) = spec.command.split_first() {
        builder = builder
            .entrypoint([program.clone()])
            .command(arguments.to_vec());
    }

    match network {
        NetworkMode::Host => {
            builder = builder.net_namespace(Namespace {
                nsmode: Some("host".to_string()),
                value: None,
            });
        }
        NetworkMode::Bridge => {
            let ports: Vec<PortMapping> = spec
                .ports
                .iter()
                .filter_map(|port| {
                    serde_json::from_value(json!({
                        "host_port": port.host_port,
                        "container_port": port.container_port,
                        "protocol": match port.protocol { Protocol::Tcp => "tcp", Protocol::Udp => "udp" },
                    }))
                    .ok()
                })
                .collect();
            builder = builder.portmappings(ports);
        }
    }

    let mounts: Vec<ContainerMount> = spec
        .mounts
        .iter()
        .filter_map(|mount| {
            let mut options = vec!["rbind".to_string()];
            if mount.read_only {
                options.push("ro".to_string());
            }
            serde_json::from_value(json!({
                "destination": mount.target,
                "source": mount.source,
                "type": "bind",
                "options": options,
            }))
            .ok()
        })
        .collect();
    if !mounts.is_empty() {
        builder = builder.mounts(mounts);
    }

    if let Some(resources) = resource_limits(spec) {
        builder = builder.resource_limits(resources);
    }
    builder.build()
}

/// Maps the spec's limits to OCI resources; `None` when it sets none.
fn resource_limits(spec: &AppSpec) -> Option<LinuxResources> {
    let limits = &spec.resources;
    if limits.memory_bytes.is_none() && limits.cpu_millis.is_none() && limits.pids.is_none() {
        return None;
    }
    let mut resources = serde_json::Map::new();
    if let Some(bytes) = limits.memory_bytes {
        resources.insert("memory".to_string(), json!({ "limit": bytes }));
    }
    if let Some(millis) = limits.cpu_millis {
        // A quota of `millis` thousandths of each 100 ms period.
        resources.insert(
            "cpu".to_string(),
            json!({ "quota": i64::from(millis) * 100, "period": 100_000 }),
        );
    }
    if let Some(pids) = limits.pids {
        resources.insert("pids".to_string(), json!({ "limit": pids }));
    }
    serde_json::from_value(serde_json::Value::Object(resources)).ok()
}

/// Reports whether `err` is `podman-api` failing to decode a response.
pub fn is_decode_error(err: &podman_api::Error) -> bool {
    matches!(
        err,
        podman_api::Error::SerdeJsonError(_)
            | podman_api::Error::Error(podman_api::conn::Error::SerdeJsonError(_))
    )
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass).
fn percent_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}
