//! The national fleet aggregator: subscribes to every province's
//! `center/status`, `center/bridge` and `center/events` on the national
//! broker and serves the fleet view over loopback HTTP
//! (`GET /v1/fleet`), which `tollwayctl fleet` reads.
//!
//! HTTP was chosen over MQTT request/response because the view is a read
//! of local state: operators and scripts can read it with any HTTP client,
//! and the national broker carries no query traffic.

pub mod config;
pub mod fleet;

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::mpsc;
use tollway_runtime::Shutdown;
use tollway_topics::CenterKind;
use tollway_topics::topic::all_centers_filter;

pub use config::AggregatorConfig;
use fleet::{Fleet, FleetView};

use crate::controller::now_ms;
use crate::mqtt_link::{self, LinkEvent};

/// An aggregator that could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Link(#[from] mqtt_link::LinkError),
    #[error("cannot listen for the aggregator API on {addr}: {source}")]
    Api {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

type Shared = Arc<Mutex<Fleet>>;

/// Starts the aggregator's tasks under `shutdown`.
pub async fn start(config: AggregatorConfig, shutdown: &mut Shutdown) -> Result<(), StartError> {
    let fleet: Shared = Arc::new(Mutex::new(Fleet::default()));
    let listener = tokio::net::TcpListener::bind(config.api_bind)
        .await
        .map_err(|source| StartError::Api {
            addr: config.api_bind,
            source,
        })?;
    let stale_after_ms = config.stale_after_s.saturating_mul(1000);
    let router = Router::new()
        .route("/v1/fleet", get(fleet_view))
        .with_state((fleet.clone(), stale_after_ms));
    let token = shutdown.token();
    let api_token = token.clone();
    let addr = config.api_bind;
    shutdown.spawn("aggregator-api", async move {
        tracing::info!(%addr, "aggregator API listening");
        let server = axum::serve(listener, router)
            .with_graceful_shutdown(async move { api_token.cancelled().await });
        if let Err(err) = server.await {
            tracing::error!(%err, "aggregator API failed");
        }
    });

    let (client, eventloop) = mqtt_link::connect(&config.broker)?;
    let filters = [CenterKind::Status, CenterKind::Bridge, CenterKind::Events]
        .map(all_centers_filter)
        .to_vec();
    let (events_tx, mut events_rx) = mpsc::channel(1024);
    shutdown.spawn(
        "aggregator-link",
        mqtt_link::run_link(
            "aggregator",
            client,
            eventloop,
            filters,
            config.broker.backoff,
            events_tx,
            token.clone(),
        ),
    );
    shutdown.spawn("aggregator", async move {
        tracing::info!("aggregator started");
        loop {
            let event = tokio::select! {
                () = token.cancelled() => break,
                event = events_rx.recv() => event,
            };
            match event {
                Some(LinkEvent::Message { topic, payload }) => {
                    fleet
                        .lock()
                        .expect("fleet lock")
                        .handle_message(&topic, &payload, now_ms());
                }
                Some(LinkEvent::Connected { .. }) => {}
                None => break,
            }
        }
        tracing::info!("aggregator stopped");
    });
    Ok(())
}

async fn fleet_view(State((fleet, stale_after_ms)): State<(Shared, u64)>) -> Json<FleetView> {
    let view = fleet
        .lock()
        .expect("fleet lock")
        .view(now_ms(), stale_after_ms);
    Json(view)
}
