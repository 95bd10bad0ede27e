//! The provincial controller (scheduler): keeps the node inventory, places
//! deployments on nodes and publishes each node's desired state.
//!
//! Files: `config.rs` (the `[controller]` section), `inventory.rs` (node
//! records), `store.rs` (RocksDB), `placement.rs` (the placement rules),
//! `state.rs` (the state and publish queues), `intake.rs` (incoming
//! messages), `reconcile.rs` (placement to desired states and events),
//! `view.rs` (API snapshot and province status), `api.rs` (HTTP),
//! `throughput.rs` (records per hour from the nodes' summaries),
//! `rollout/` (staged upgrades of a deployment's image).

pub mod api;
pub mod config;
pub mod forget;
pub mod intake;
pub mod inventory;
pub mod placement;
pub mod reconcile;
pub mod rollout;
pub mod state;
pub mod store;
pub mod throughput;
pub mod view;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, QoS};
use tokio::sync::{mpsc, watch};
use tollway_runtime::{CancellationToken, Shutdown};
use tollway_topics::topic::{node_filter, ops_filter};
use tollway_topics::{CenterKind, Message, NodeKind, OpsKind, Province, Topic};

pub use config::ControllerConfig;
use state::Controller;
use store::Store;

use crate::mqtt_link::{self, LinkEvent};

/// Capacity of the channel from the broker link to the controller task.
const LINK_CHANNEL: usize = 4096;
/// How long the controller waits after a change before it reconciles, so
/// that a burst of messages (a reconnect storm) costs one reconcile.
const RECONCILE_DEBOUNCE: Duration = Duration::from_millis(200);
/// How often the controller reconciles without a change, to move replicas
/// off nodes whose grace period ran out.
const RECONCILE_PERIOD: Duration = Duration::from_secs(5);
/// Delay after a connect before the controller subscribes to the retained
/// operators' objects and presence topics a second time; see `run_loop`.
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(2);
/// How often the controller reconciles while a rollout is in progress, so
/// that waves move on soon after nodes report.
const ROLLOUT_STEP_PERIOD: Duration = Duration::from_secs(1);
/// Minimum time between API snapshots.
const SNAPSHOT_PERIOD: Duration = Duration::from_millis(500);

/// A controller that could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid [controller] configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Link(#[from] mqtt_link::LinkError),
    #[error("cannot listen for the controller API on {addr}: {source}")]
    Api {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Starts the controller's tasks (broker link, controller loop, API) under
/// `shutdown`.
pub async fn start(config: ControllerConfig, shutdown: &mut Shutdown) -> Result<(), StartError> {
    // `Config::validate` runs these checks before any service starts; they
    // run again here for a controller started on its own.
    let mut problems = tollway_runtime::config::Problems::default();
    config.check(&mut problems);
    if !problems.is_empty() {
        return Err(StartError::Config(problems.to_string()));
    }
    let province =
        Province::new(config.province).map_err(|err| StartError::Config(err.to_string()))?;
    let store = Store::open(&config.data_dir)?;
    let loaded = store.load()?;
    tracing::info!(
        province = %province,
        nodes = loaded.nodes.len(),
        deployments = loaded.deployments.len(),
        rollouts = loaded.rollouts.len(),
        "controller store loaded"
    );
    let controller = Controller::new(
        province,
        store,
        loaded,
        config.grace_period_s.saturating_mul(1000),
        (config.forget_after_s > 0).then(|| config.forget_after_s.saturating_mul(1000)),
        config.max_nodes,
        config.max_deployments,
    );

    let listener = tokio::net::TcpListener::bind(config.api_bind)
        .await
        .map_err(|source| StartError::Api {
            addr: config.api_bind,
            source,
        })?;
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(controller.snapshot()));
    let token = shutdown.token();
    let api_token = token.clone();
    shutdown.spawn("controller-api", async move {
        tracing::info!(addr = %config.api_bind, "controller API listening");
        let server = axum::serve(listener, api::router(snapshot_rx))
            .with_graceful_shutdown(async move { api_token.cancelled().await });
        if let Err(err) = server.await {
            tracing::error!(%err, "controller API failed");
        }
    });

    let (client, eventloop) = mqtt_link::connect(&config.broker)?;
    let filters = vec![
        node_filter(province, NodeKind::Presence),
        node_filter(province, NodeKind::Status),
        node_filter(province, NodeKind::Summary),
        ops_filter(OpsKind::Deployment),
        ops_filter(OpsKind::Rollout),
    ];
    let (events_tx, events_rx) = mpsc::channel(LINK_CHANNEL);
    shutdown.spawn(
        "controller-link",
        mqtt_link::run_link(
            "controller",
            client.clone(),
            eventloop,
            filters,
            config.broker.backoff,
            events_tx,
            token.clone(),
        ),
    );
    let status_period = Duration::from_secs(config.status_interval_s);
    shutdown.spawn(
        "controller",
        run_loop(
            controller,
            client,
            events_rx,
            snapshot_tx,
            status_period,
            token,
        ),
    );
    Ok(())
}

/// Runs the controller task: applies incoming messages, reconciles and publishes.
async fn run_loop(
    mut controller: Controller,
    client: AsyncClient,
    mut events: mpsc::Receiver<LinkEvent>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    status_period: Duration,
    token: CancellationToken,
) {
    let mut tick = tokio::time::interval(RECONCILE_DEBOUNCE);
    let mut last_reconcile = tokio::time::Instant::now();
    let mut last_snapshot = tokio::time::Instant::now();
    let mut status_tick = tokio::time::interval(status_period);
    let status_topic = Topic::center(controller.province, CenterKind::Status).to_string();
    let retained_filters = [
        ops_filter(OpsKind::Deployment),
        ops_filter(OpsKind::Rollout),
        node_filter(controller.province, NodeKind::Presence),
    ];
    let mut resubscribe_at: Option<tokio::time::Instant> = None;
    tracing::info!("controller started");

    loop {
        tokio::select! {
            () = token.cancelled() => break,
            event = events.recv() => match event {
                Some(LinkEvent::Message { topic, payload }) => {
                    controller.handle_message(&topic, &payload, now_ms());
                }
                Some(LinkEvent::Connected { session_present }) => {
                    if !session_present {
                        controller.republish_all();
                    }
                    resubscribe_at = Some(tokio::time::Instant::now() + RESUBSCRIBE_DELAY);
                }
                None => break,
            },
            _ = tick.tick() => {
                // rmqtt's retainer stores a retained message from a queue,
                // after the broker has routed it. A message published while
                // this subscription is set up can therefore miss both the
                // live route and the retained lookup: tests lost a deployment
                // and a node's presence (and with it the node's labels) that
                // way. Subscribing again re-sends every retained message once
                // the queue has drained. Repeats change nothing, because they
                // equal what the controller already holds.
                if resubscribe_at.is_some_and(|at| at <= tokio::time::Instant::now()) {
                    resubscribe_at = None;
                    for filter in &retained_filters {
                        if let Err(err) = client.try_subscribe(filter, QoS::AtLeastOnce) {
                            tracing::warn!(filter, %err, "cannot repeat a retained subscription");
                        }
                    }
                }
                let since = last_reconcile.elapsed();
                let rollout_due = since >= ROLLOUT_STEP_PERIOD && controller.rollouts_active();
                if controller.dirty || rollout_due || since >= RECONCILE_PERIOD {
                    controller.reconcile(now_ms());
                    last_reconcile = tokio::time::Instant::now();
                }
                controller.flush(&client);
                if controller.view_stale && last_snapshot.elapsed() >= SNAPSHOT_PERIOD {
                    snapshot.send_replace(Arc::new(controller.snapshot()));
                    controller.view_stale = false;
                    last_snapshot = tokio::time::Instant::now();
                }
            }
            _ = status_tick.tick() => {
                let status = controller.province_status(now_ms());
                match status.to_cbor() {
                    Ok(payload) => {
                        if let Err(err) = client.try_publish(&status_topic, QoS::AtLeastOnce, false, payload) {
                            tracing::warn!(%err, "cannot queue the province status; sending the next one on time");
                        }
                    }
                    Err(err) => tracing::error!(%err, "cannot encode the province status"),
                }
            }
        }
    }
    tracing::info!(
        pending = controller.pending_publishes(),
        "controller stopped"
    );
}

use view::Snapshot;

/// Returns the current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
