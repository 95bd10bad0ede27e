//! The app manager's loop: take desired-state documents from the MQTT link,
//! store the newest valid one, reconcile on every change and on an
//! interval, and publish what the node runs for the status message.

use std::sync::Arc;
use std::time::Duration;

use rocksdb::DB;
use tokio::time::{Instant, sleep_until};
use tollway_runtime::{Backoff, BackoffConfig, CancellationToken};
use tollway_topics::{DesiredState, NodeId};

use super::config::AppsConfig;
use super::error::DesiredError;
use super::podman::PodmanClient;
use super::prefetch::Puller;
use super::reconciler::Reconciler;
use super::report::{AppsReport, DesiredOutlet, ReportWriter};
use super::store::{DesiredStore, Offer, generation_of};

/// Delay after a failed pass (Podman unreachable), rising to the reconcile
/// interval.
///
/// NOTE: a crashed app is noticed by the next pass, up to one reconcile
/// interval later, because the manager does not follow Podman's event
/// stream.
const RETRY_BASE: Duration = Duration::from_millis(500);

/// Runs the app manager until `cancel` fires. Fails only when the stored
/// desired state cannot be read; Podman being unreachable is retried.
pub async fn run(
    config: AppsConfig,
    node: NodeId,
    database: Arc<DB>,
    mut outlet: DesiredOutlet,
    writer: ReportWriter,
    cancel: CancellationToken,
) -> Result<(), DesiredError> {
    let (mut store, stored) = DesiredStore::open(node.clone(), database)?;
    let mut desired: Option<DesiredState> = stored;
    tracing::info!(
        node = %node,
        stored_generation = store.stored_generation(),
        podman_socket = %config.podman_socket.display(),
        "app manager started"
    );

    let client = PodmanClient::new(&config.podman_socket, config.podman_timeout());
    let puller = Puller::new(client.clone(), config.pull_backoff);
    let pull_finished = puller.finished();
    let interval = config.reconcile_interval();
    let mut reconciler = Reconciler::new(node.clone(), config, client, puller);
    let mut retry = Backoff::new(BackoffConfig::new(RETRY_BASE, interval.max(RETRY_BASE)));
    let mut report = AppsReport::default();
    let mut link_open = true;

    loop {
        // A pass can wait on Podman for up to its call timeout, so shutdown
        // cancels it. A container created but not yet started is started by
        // the next pass after a restart.
        let next_pass = match &desired {
            Some(state) => tokio::select! {
                _ = cancel.cancelled() => break,
                next = pass(&node, &mut reconciler, state, &mut report, &mut retry, interval) => next,
            },
            None => Instant::now() + interval,
        };
        publish(&writer, &report);

        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = outlet.changed(), if link_open => {
                if changed.is_err() {
                    tracing::info!(node = %node, "desired-state channel closed; running the stored state");
                    link_open = false;
                    continue;
                }
                let payload = outlet.borrow_and_update().clone();
                if let Some(payload) = payload {
                    receive(&node, &mut store, &payload, &mut desired, &mut report);
                }
            }
            _ = pull_finished.notified() => {}
            _ = sleep_until(next_pass) => {}
        }
    }

    reconciler.into_puller().shutdown().await;
    tracing::info!(node = %node, "app manager stopped");
    Ok(())
}

/// Runs one reconcile pass and returns when the next one is due.
async fn pass(
    node: &NodeId,
    reconciler: &mut Reconciler,
    state: &DesiredState,
    report: &mut AppsReport,
    retry: &mut Backoff,
    interval: Duration,
) -> Instant {
    let started = Instant::now();
    match reconciler.reconcile(state).await {
        Ok(outcome) => {
            retry.reset();
            if report.generation != state.generation {
                tracing::info!(node = %node, generation = state.generation, apps = state.apps.len(), "desired state applied");
            }
            report.generation = state.generation;
            report.apps = outcome.apps;
            let due = started + interval;
            outcome.wake_at.map_or(due, |at| at.min(due))
        }
        Err(err) => {
            let delay = retry.next_delay();
            tracing::warn!(node = %node, generation = state.generation, error = %err, retry_in_ms = delay.as_millis() as u64, "reconcile pass failed");
            Instant::now() + delay
        }
    }
}

/// Validates, stores and adopts a received document, or records why not.
fn receive(
    node: &NodeId,
    store: &mut DesiredStore,
    payload: &[u8],
    desired: &mut Option<DesiredState>,
    report: &mut AppsReport,
) {
    match store.offer(payload) {
        Ok(Offer::Accepted(state)) => {
            tracing::info!(node = %node, generation = state.generation, apps = state.apps.len(), "desired state stored");
            if report
                .rejected
                .as_ref()
                .is_some_and(|(rejected, _)| *rejected < state.generation)
            {
                report.rejected = None;
            }
            *desired = Some(state);
        }
        Ok(Offer::Stale { received, stored }) => {
            tracing::debug!(node = %node, received, stored, "desired state not newer than the stored one; ignored");
        }
        Err(err) => {
            let generation = generation_of(payload);
            tracing::warn!(node = %node, generation, error = %err, "desired state rejected; running apps are left as they are");
            report.rejected = Some((generation, truncate(err.to_string())));
        }
    }
}

fn publish(writer: &ReportWriter, report: &AppsReport) {
    writer.send_if_modified(|current| {
        if current == report {
            false
        } else {
            *current = report.clone();
            true
        }
    });
}

/// Cuts a reason to the status message's text limit.
pub(crate) fn truncate(mut reason: String) -> String {
    let limit = tollway_topics::limits::MAX_TEXT_LEN;
    if reason.len() > limit {
        let mut end = limit;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}
