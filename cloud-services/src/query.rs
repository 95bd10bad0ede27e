//! The query API: a small HTTP/1.1 endpoint on a loopback address that
//! returns JSON read from the record store.
//!
//! - `GET /v1/records?gantry=G&from_ms=A&to_ms=B[&limit=N]`: records of
//!   gantry G with a pass time in `A..B` (Unix ms, B excluded), in pass-time
//!   order, at most `limit` (default and maximum `query.max_records`).
//! - `GET /v1/hours?gantry=G&from_ms=A&to_ms=B`: count, fee sum and pay-fee
//!   sum per hour batch of the same records.
//! - `GET /v1/nodes/{province}/{node}`: the node's highest contiguous seq stored.
//! - `GET /v1/provinces/{province}`: in a national store, the province's
//!   highest contiguous forwarding seq received.
//! - `GET /v1/stats`: the process's counters.
//!
//! Bad parameters get status 400 and `{"error": "..."}` naming the value.
//! The API returns full records, plates included, for operators; it has no
//! authentication, which is why it only listens on loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tollway_runtime::Shutdown;
use tollway_topics::{NodeId, Province};

use crate::config::QueryConfig;
use crate::stats::Stats;
use crate::store::{HourTotals, RecordStore, StoredRecord};

/// Records one `/v1/hours` request reads at most.
const MAX_HOURS_SCAN: usize = 1_000_000;

#[derive(Clone)]
struct Api {
    store: Arc<RecordStore>,
    stats: Arc<Stats>,
    max_records: usize,
}

/// Binds the listener and starts serving. Fails when the address is taken.
pub fn start(
    config: &QueryConfig,
    store: Arc<RecordStore>,
    stats: Arc<Stats>,
    shutdown: &mut Shutdown,
) -> Result<SocketAddr, std::io::Error> {
    let listener = std::net::TcpListener::bind(config.bind)?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;

    let api = Api {
        store,
        stats,
        max_records: config.max_records,
    };
    let app = Router::new()
        .route("/v1/records", get(records))
        .route("/v1/hours", get(hours))
        .route("/v1/nodes/{province}/{node}", get(node))
        .route("/v1/provinces/{province}", get(province_handler))
        .route("/v1/stats", get(stats_handler))
        .with_state(api);

    let token = shutdown.token();
    shutdown.spawn("query-api", async move {
        let server = axum::serve(listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await });
        if let Err(err) = server.await {
            tracing::error!(error = %err, "query API stopped");
        }
        tracing::info!("query API stopped");
    });
    tracing::info!(%addr, "query API listening");
    Ok(addr)
}

/// An error response: status and a message naming the bad value.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

#[derive(Debug, Deserialize)]
struct RangeParams {
    gantry: Option<String>,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    limit: Option<usize>,
}

impl RangeParams {
    /// Checks the gantry and time range, naming the first bad value.
    fn checked(&self) -> Result<(String, u64, u64), ApiError> {
        let gantry = match &self.gantry {
            Some(gantry) if !gantry.is_empty() => gantry.clone(),
            _ => {
                return Err(bad_request(
                    "missing query parameter gantry, e.g. gantry=G001544001000110010",
                ));
            }
        };
        let from = self
            .from_ms
            .ok_or_else(|| bad_request("missing query parameter from_ms (Unix milliseconds)"))?;
        let to = self.to_ms.ok_or_else(|| {
            bad_request("missing query parameter to_ms (Unix milliseconds, excluded)")
        })?;
        if from >= to {
            return Err(bad_request(format!(
                "from_ms {from} must be less than to_ms {to}"
            )));
        }
        Ok((gantry, from, to))
    }
}

#[derive(Serialize)]
struct RecordsResponse {
    gantry: String,
    count: usize,
    /// True when more records matched than were returned.
    truncated: bool,
    records: Vec<RecordJson>,
}

/// One record as JSON, codes as their numbers from the wire contract.
#[derive(Serialize)]
struct RecordJson {
    province: u8,
    node: String,
    seq: u64,
    forward_seq: u64,
    stored_at_ms: u64,
    transaction_id: String,
    gantry_id: String,
    pass_time_ms: u64,
    media_type: u8,
    media_id: u64,
    plate: String,
    plate_colour: u8,
    vehicle_type: u8,
    vehicle_class: u8,
    axle_count: u8,
    fee: u32,
    pay_fee: u32,
    discount_fee: u32,
    toll_intervals: Vec<String>,
    trade_result: u8,
    antenna_id: u8,
    hour_batch: u32,
}

impl From<StoredRecord> for RecordJson {
    fn from(stored: StoredRecord) -> Self {
        let record = stored.record;
        RecordJson {
            province: stored.province.code(),
            node: stored.node.to_string(),
            seq: stored.seq,
            forward_seq: stored.forward_seq,
            stored_at_ms: stored.stored_at_ms,
            transaction_id: record.transaction_id,
            gantry_id: record.gantry_id,
            pass_time_ms: record.pass_time_ms,
            media_type: record.media_type.code(),
            media_id: record.media_id,
            plate: record.plate,
            plate_colour: record.plate_colour.code(),
            vehicle_type: record.vehicle_type.code(),
            vehicle_class: record.vehicle_class.code(),
            axle_count: record.axle_count,
            fee: record.fee,
            pay_fee: record.pay_fee,
            discount_fee: record.discount_fee,
            toll_intervals: record.toll_intervals,
            trade_result: record.trade_result.code(),
            antenna_id: record.antenna_id,
            hour_batch: record.hour_batch,
        }
    }
}

async fn records(
    State(api): State<Api>,
    Query(params): Query<RangeParams>,
) -> Result<Json<RecordsResponse>, ApiError> {
    let (gantry, from, to) = params.checked()?;
    let limit = params.limit.unwrap_or(api.max_records);
    if limit == 0 || limit > api.max_records {
        return Err(bad_request(format!(
            "limit {limit} must be 1 to {}",
            api.max_records
        )));
    }
    let store = api.store.clone();
    let scan_gantry = gantry.clone();
    let (found, truncated) =
        blocking(move || store.records_by_gantry(&scan_gantry, from, to, limit)).await?;
    let records: Vec<RecordJson> = found.into_iter().map(RecordJson::from).collect();
    Ok(Json(RecordsResponse {
        gantry,
        count: records.len(),
        truncated,
        records,
    }))
}

#[derive(Serialize)]
struct HoursResponse {
    gantry: String,
    /// True when the scan stopped at its bound before the end of the range.
    truncated: bool,
    hours: Vec<HourTotals>,
}

async fn hours(
    State(api): State<Api>,
    Query(params): Query<RangeParams>,
) -> Result<Json<HoursResponse>, ApiError> {
    let (gantry, from, to) = params.checked()?;
    let store = api.store.clone();
    let scan_gantry = gantry.clone();
    let (hours, truncated) =
        blocking(move || store.hour_totals(&scan_gantry, from, to, MAX_HOURS_SCAN)).await?;
    Ok(Json(HoursResponse {
        gantry,
        truncated,
        hours,
    }))
}

#[derive(Serialize)]
struct NodeResponse {
    province: u8,
    node: String,
    stored_through: u64,
}

async fn node(
    State(api): State<Api>,
    Path((province, node)): Path<(String, String)>,
) -> Result<Json<NodeResponse>, ApiError> {
    let province: Province = province
        .parse()
        .map_err(|err| bad_request(format!("province {province:?}: {err}")))?;
    let node =
        NodeId::new(node.clone()).map_err(|err| bad_request(format!("node {node:?}: {err}")))?;
    let store = api.store.clone();
    let lookup = node.clone();
    let stored_through = blocking(move || store.node_stored_through(province, &lookup)).await?;
    Ok(Json(NodeResponse {
        province: province.code(),
        node: node.to_string(),
        stored_through,
    }))
}

#[derive(Serialize)]
struct ProvinceResponse {
    province: u8,
    forward_through: u64,
}

async fn province_handler(
    State(api): State<Api>,
    Path(province): Path<String>,
) -> Result<Json<ProvinceResponse>, ApiError> {
    let province: Province = province
        .parse()
        .map_err(|err| bad_request(format!("province {province:?}: {err}")))?;
    let store = api.store.clone();
    let forward_through = blocking(move || store.province_forward_through(province)).await?;
    Ok(Json(ProvinceResponse {
        province: province.code(),
        forward_through,
    }))
}

async fn stats_handler(State(api): State<Api>) -> Json<crate::stats::StatsSnapshot> {
    Json(api.stats.snapshot())
}

/// Runs a store read on a blocking thread, turning failures into status 500.
async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => {
            tracing::error!(error = %err, "query failed on the record store");
            Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))
        }
        Err(err) => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("query task failed: {err}"),
        )),
    }
}
