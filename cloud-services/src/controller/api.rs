//! The controller's read-only HTTP API on a loopback address, for
//! `tollwayctl get` and `describe`:
//!
//! - `GET /v1/nodes`: every node ([`NodeView`]).
//! - `GET /v1/nodes/{node}`: one node, or 404.
//! - `GET /v1/deployments`: every deployment, including rejected ones.
//! - `GET /v1/apps`: per app, how many nodes should run it and in what state.
//! - `GET /v1/rollouts`: every rollout with its progress
//!   ([`RolloutView`](super::rollout::view::RolloutView)).
//! - `GET /v1/rollouts/{name}`: one rollout, or 404.
//!
//! Writes go through MQTT (`tollwayctl apply` publishes the object), so the
//! API has no write path and needs no authentication beyond binding to
//! loopback.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;

use super::view::Snapshot;

/// Builds the API's routes over the latest snapshot.
pub fn router(snapshot: watch::Receiver<Arc<Snapshot>>) -> Router {
    Router::new()
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{node}", get(node))
        .route("/v1/deployments", get(deployments))
        .route("/v1/apps", get(apps))
        .route("/v1/rollouts", get(rollouts))
        .route("/v1/rollouts/{name}", get(rollout))
        .with_state(snapshot)
}

type Latest = State<watch::Receiver<Arc<Snapshot>>>;

async fn nodes(State(snapshot): Latest) -> Response {
    let snapshot = snapshot.borrow().clone();
    Json(&snapshot.nodes).into_response()
}

async fn node(State(snapshot): Latest, Path(id): Path<String>) -> Response {
    let snapshot = snapshot.borrow().clone();
    match snapshot.nodes.iter().find(|node| node.node == id) {
        Some(node) => Json(node).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("node {id} is not in the inventory") })),
        )
            .into_response(),
    }
}

async fn deployments(State(snapshot): Latest) -> Response {
    let snapshot = snapshot.borrow().clone();
    Json(&snapshot.deployments).into_response()
}

async fn apps(State(snapshot): Latest) -> Response {
    let snapshot = snapshot.borrow().clone();
    Json(&snapshot.apps).into_response()
}

async fn rollouts(State(snapshot): Latest) -> Response {
    let snapshot = snapshot.borrow().clone();
    Json(&snapshot.rollouts).into_response()
}

async fn rollout(State(snapshot): Latest, Path(name): Path<String>) -> Response {
    let snapshot = snapshot.borrow().clone();
    match snapshot.rollouts.iter().find(|rollout| rollout.name == name) {
        Some(rollout) => Json(rollout).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("rollout {name} not found; apply it with tollwayctl apply -f FILE") })),
        )
            .into_response(),
    }
}
