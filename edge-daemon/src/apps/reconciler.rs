//! One reconcile pass: compare the desired apps with this node's containers
//! in Podman and create, start, stop and remove containers until they match.
//!
//! An app whose spec changed gets its new container created before the old
//! one stops, so an upgrade interrupts the app only for the old container's
//! stop and the new one's start. The old container keeps running while the
//! new image is pulled. A failure of one app is reported in its status and
//! does not stop the pass; only a failure to list containers does.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;
use tollway_topics::{AppSpec, AppState, AppStatus, DesiredState, NodeId, RestartPolicy};

use super::config::AppsConfig;
use super::error::PodmanError;
use super::labels::spec_hash;
use super::podman::{ManagedContainer, PodmanClient, RunState};
use super::prefetch::{PullStatus, Puller};
use super::restart::{RestartDecision, Restarts};

/// The result of a pass.
#[derive(Debug)]
pub struct PassOutcome {
    pub apps: Vec<AppStatus>,
    /// The earliest time a pending restart is due, if any.
    pub wake_at: Option<Instant>,
}

/// Converges this node's containers to a desired state.
pub struct Reconciler {
    node: NodeId,
    config: AppsConfig,
    client: PodmanClient,
    puller: Puller,
    restarts: Restarts,
    /// Each app's interruption at its last switch from a running container
    /// to the container of a new spec, reported as `last_switch_ms`.
    // NOTE: kept in memory only, so a daemon restart forgets it.
    last_switch: HashMap<String, u32>,
}

impl Reconciler {
    pub fn new(node: NodeId, config: AppsConfig, client: PodmanClient, puller: Puller) -> Self {
        Reconciler {
            restarts: Restarts::new(config.restart_backoff),
            last_switch: HashMap::new(),
            node,
            config,
            client,
            puller,
        }
    }

    pub fn into_puller(self) -> Puller {
        self.puller
    }

    /// Runs one pass against `desired`.
    pub async fn reconcile(&mut self, desired: &DesiredState) -> Result<PassOutcome, PodmanError> {
        let containers = self.client.list_owned(&self.node).await?;
        let mut by_app: HashMap<String, Vec<ManagedContainer>> = HashMap::new();
        for container in containers {
            by_app
                .entry(container.app.clone())
                .or_default()
                .push(container);
        }

        let mut outcome = PassOutcome {
            apps: Vec::with_capacity(desired.apps.len()),
            wake_at: None,
        };
        for spec in &desired.apps {
            let existing = by_app.remove(spec.name.as_str()).unwrap_or_default();
            let mut status = self
                .converge_app(spec, existing, &mut outcome.wake_at)
                .await;
            status.next_image_ready = self.next_image_ready(spec).await;
            status.last_switch_ms = self.last_switch.get(spec.name.as_str()).copied();
            outcome.apps.push(status);
        }

        // Whatever is left belongs to apps no longer desired.
        for (app, containers) in by_app {
            tracing::info!(node = %self.node, app, "app no longer desired; removing its containers");
            for container in containers {
                self.retire(&container).await;
            }
        }

        let desired_apps: HashSet<&str> =
            desired.apps.iter().map(|app| app.name.as_str()).collect();
        self.restarts.retain(|app| desired_apps.contains(app));
        self.last_switch
            .retain(|app, _| desired_apps.contains(app.as_str()));
        let images: HashSet<&str> = desired
            .apps
            .iter()
            .flat_map(|app| std::iter::once(app.image.as_str()).chain(app.next_image.as_deref()))
            .collect();
        self.puller.retain(|image| images.contains(image));
        Ok(outcome)
    }

    /// Brings one app's containers in line with its spec and returns its status.
    async fn converge_app(
        &mut self,
        spec: &AppSpec,
        existing: Vec<ManagedContainer>,
        wake_at: &mut Option<Instant>,
    ) -> AppStatus {
        let hash = spec_hash(spec, self.config.network);
        let (mut current, stale): (Vec<_>, Vec<_>) = existing
            .into_iter()
            .partition(|container| container.spec_hash == hash);

        // Two containers of one spec can only come from an interrupted pass;
        // keep a running one.
        current.sort_by_key(|container| container.state != RunState::Running);
        for extra in current.iter().skip(1) {
            self.retire(extra).await;
        }

        match current.into_iter().next() {
            None => self.replace(spec, &hash, &stale).await,
            Some(container) => {
                for old in &stale {
                    self.retire(old).await;
                }
                self.keep_running(spec, &hash, &container, wake_at).await
            }
        }
    }

    /// Creates the container of a new or changed spec, stops the old ones,
    /// starts the new one and removes the old ones, in that order.
    async fn replace(
        &mut self,
        spec: &AppSpec,
        hash: &str,
        stale: &[ManagedContainer],
    ) -> AppStatus {
        let app = spec.name.as_str();
        match self.ensure_image(&spec.image).await {
            Ok(None) => {}
            Ok(Some(status)) => return status_with(app, status.0, status.1),
            Err(err) => return failed(app, format!("cannot check image {}: {err}", spec.image)),
        }

        let id = match self
            .client
            .create(
                &self.node,
                spec,
                hash,
                self.config.network,
                self.config.stop_timeout_s,
            )
            .await
        {
            Ok(id) => id,
            Err(err) => {
                tracing::warn!(node = %self.node, app, error = %err, "cannot create the app's container");
                return failed(app, err.to_string());
            }
        };

        // The interruption runs from the first stop request to the return of
        // the start call, which Podman sends once the container is running.
        let mut interruption_start: Option<Instant> = None;
        for old in stale.iter().filter(|old| old.state == RunState::Running) {
            interruption_start.get_or_insert_with(Instant::now);
            if let Err(err) = self.client.stop(&old.id, self.config.stop_timeout_s).await {
                tracing::warn!(node = %self.node, app, container = old.name, error = %err, "cannot stop the old container; starting the new one anyway");
            }
        }
        let started = self.client.start(&id).await;
        let interruption = interruption_start.map(|at| at.elapsed());
        for old in stale {
            self.remove(old).await;
        }

        match started {
            Ok(()) => {
                if let Some(interruption) = interruption {
                    let switch_ms = millis_u32(interruption);
                    self.last_switch.insert(app.to_string(), switch_ms);
                    tracing::info!(node = %self.node, app, image = spec.image, spec_hash = hash, switch_ms, "app switched to a new container");
                }
                tracing::info!(node = %self.node, app, image = spec.image, spec_hash = hash, replaced = stale.len(), "app started");
                status_with(app, AppState::Running, None)
            }
            Err(err) => {
                tracing::warn!(node = %self.node, app, error = %err, "cannot start the app's container");
                failed(app, err.to_string())
            }
        }
    }

    /// Keeps an existing container of the current spec running under the
    /// app's restart policy.
    async fn keep_running(
        &mut self,
        spec: &AppSpec,
        hash: &str,
        container: &ManagedContainer,
        wake_at: &mut Option<Instant>,
    ) -> AppStatus {
        let app = spec.name.as_str();
        let now = Instant::now();
        let restarts = self.restarts.count(app, hash);
        let exit_code = match &container.state {
            RunState::Running => {
                self.restarts.running(app, hash, now);
                return with_restarts(status_with(app, AppState::Running, None), restarts);
            }
            RunState::Created => {
                return match self.client.start(&container.id).await {
                    Ok(()) => status_with(app, AppState::Running, None),
                    Err(err) => failed(app, err.to_string()),
                };
            }
            RunState::Other(state) => {
                let status = status_with(
                    app,
                    AppState::Starting,
                    Some(format!("container is {state}")),
                );
                return with_restarts(status, restarts);
            }
            RunState::Exited(code) => *code,
        };

        let restart = match spec.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        };
        let reason = format!("exited with code {exit_code}");
        if !restart {
            let state = if exit_code == 0 {
                AppState::Stopped
            } else {
                AppState::Failed
            };
            return with_restarts(status_with(app, state, Some(reason)), restarts);
        }

        match self.restarts.decide(app, hash, now) {
            RestartDecision::Wait(until) => {
                *wake_at = Some(wake_at.map_or(until, |at| at.min(until)));
                let wait_s = until.saturating_duration_since(now).as_secs_f64();
                let status = status_with(
                    app,
                    AppState::Failed,
                    Some(format!("{reason}; restart in {wait_s:.1} s")),
                );
                with_restarts(status, restarts)
            }
            RestartDecision::Now => match self.client.start(&container.id).await {
                Ok(()) => {
                    self.restarts.restarted(app, hash, now);
                    let restarts = self.restarts.count(app, hash);
                    tracing::info!(node = %self.node, app, exit_code, restarts, "app restarted after it exited");
                    with_restarts(status_with(app, AppState::Running, None), restarts)
                }
                Err(err) => with_restarts(failed(app, err.to_string()), restarts),
            },
        }
    }

    /// Returns `None` when `image` is in local storage, or the app's state
    /// while it is pulled.
    async fn ensure_image(
        &mut self,
        image: &str,
    ) -> Result<Option<(AppState, Option<String>)>, PodmanError> {
        if self.client.image_exists(image).await? {
            return Ok(None);
        }
        Ok(Some(match self.puller.request(image, Instant::now()) {
            PullStatus::Pulling => (AppState::Pulling, None),
            PullStatus::Failed(reason) => (
                AppState::Failed,
                Some(format!("pull of {image} failed: {reason}")),
            ),
        }))
    }

    /// Reports whether the spec's next image is in local storage, and starts
    /// pulling it when it is not.
    async fn next_image_ready(&mut self, spec: &AppSpec) -> bool {
        let Some(next) = &spec.next_image else {
            return false;
        };
        match self.client.image_exists(next).await {
            Ok(true) => true,
            Ok(false) => {
                self.puller.request(next, Instant::now());
                false
            }
            Err(err) => {
                tracing::warn!(node = %self.node, app = spec.name.as_str(), image = next, error = %err, "cannot check the next image");
                false
            }
        }
    }

    /// Stops and removes a container that no desired spec needs.
    async fn retire(&self, container: &ManagedContainer) {
        if container.state == RunState::Running
            && let Err(err) = self
                .client
                .stop(&container.id, self.config.stop_timeout_s)
                .await
        {
            tracing::warn!(node = %self.node, container = container.name, error = %err, "cannot stop container; removing it by force");
        }
        self.remove(container).await;
    }

    async fn remove(&self, container: &ManagedContainer) {
        match self.client.remove(&container.id).await {
            Ok(()) => {
                tracing::info!(node = %self.node, app = container.app, container = container.name, "container removed")
            }
            Err(err) => {
                tracing::warn!(node = %self.node, container = container.name, error = %err, "cannot remove container; the next pass retries")
            }
        }
    }
}

fn status_with(app: &str, state: AppState, reason: Option<String>) -> AppStatus {
    AppStatus {
        name: app.to_string(),
        state,
        restarts: 0,
        reason,
        next_image_ready: false,
        last_switch_ms: None,
    }
}

/// Converts a duration to whole milliseconds, saturating at `u32::MAX`
/// (about 49 days).
fn millis_u32(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

fn failed(app: &str, reason: String) -> AppStatus {
    status_with(
        app,
        AppState::Failed,
        Some(super::manager::truncate(reason)),
    )
}

fn with_restarts(mut status: AppStatus, restarts: u32) -> AppStatus {
    status.restarts = restarts;
    status
}
