//! `tollwayctl records query`: reads stored records or their hourly totals
//! from a centre's query API (`tollway-center` with a `[query]` section) and
//! prints them as a table or as the API's JSON.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::get::Output;

/// Time one request may take before the command gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Subcommand)]
pub enum RecordsAction {
    /// Print the records of one gantry in a time range, or their totals per hour.
    Query(QueryArgs),
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Address of the centre's query API (its `query.bind`).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:8380",
        env = "TOLLWAY_QUERY_API"
    )]
    api: SocketAddr,

    /// Gantry id, e.g. G001544001000110010.
    #[arg(long)]
    gantry: String,

    /// Start of the pass-time range, in Unix milliseconds.
    #[arg(long, value_name = "MS")]
    from: u64,

    /// End of the pass-time range (excluded), in Unix milliseconds.
    #[arg(long, value_name = "MS")]
    to: u64,

    /// Maximum records to print; the API's `query.max_records` when not set.
    #[arg(long)]
    limit: Option<usize>,

    /// Print count, fee sum and pay-fee sum per hour batch instead of records.
    #[arg(long)]
    hourly: bool,
}

/// Runs a `records` command and returns what to print in the global
/// `-o` format.
pub fn run(action: RecordsAction, output: Output) -> Result<String, String> {
    let RecordsAction::Query(args) = action;
    let path = if args.hourly {
        "/v1/hours"
    } else {
        "/v1/records"
    };
    let mut url = format!(
        "http://{}{path}?gantry={}&from_ms={}&to_ms={}",
        args.api,
        encode(&args.gantry),
        args.from,
        args.to
    );
    if let (Some(limit), false) = (args.limit, args.hourly) {
        url += &format!("&limit={limit}");
    }

    let body = get_json(&url, args.api)?;
    match (output, args.hourly) {
        (Output::Json, _) => serde_json::to_string_pretty(&body).map_err(|err| err.to_string()),
        (Output::Table, false) => Ok(records_table(&body)),
        (Output::Table, true) => Ok(hours_table(&body)),
    }
}

fn get_json(url: &str, api: SocketAddr) -> Result<Value, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|err| {
        format!("cannot reach the query API at {api}: {err}; check --api and that tollway-center runs with a [query] section")
    })?;
    let status = response.status();
    let body: Value = response.body_mut().read_json().map_err(|err| {
        format!("the query API at {api} returned status {status} without JSON: {err}")
    })?;
    if !status.is_success() {
        let reason = body["error"].as_str().unwrap_or("no reason given");
        return Err(format!(
            "the query API rejected the request ({status}): {reason}"
        ));
    }
    Ok(body)
}

/// Formats records as aligned columns, one line each, with a total line
/// that notes when the API returned only part of the range.
fn records_table(body: &Value) -> String {
    let mut out = format!(
        "{:<15} {:<20} {:>10} {:<12} {:>8} {:>8} {:<10}\n",
        "PASS_TIME_MS", "NODE", "SEQ", "PLATE", "FEE", "PAY_FEE", "HOUR"
    );
    let records = body["records"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for record in records {
        out += &format!(
            "{:<15} {:<20} {:>10} {:<12} {:>8} {:>8} {:<10}\n",
            record["pass_time_ms"],
            text(&record["node"]),
            record["seq"],
            text(&record["plate"]),
            record["fee"],
            record["pay_fee"],
            record["hour_batch"]
        );
    }
    out += &format!("{} records", records.len());
    if body["truncated"] == Value::Bool(true) {
        out += " (more matched; raise --limit or narrow the range)";
    }
    out
}

/// Formats hourly totals as aligned columns.
fn hours_table(body: &Value) -> String {
    let mut out = format!(
        "{:<10} {:>10} {:>14} {:>14}\n",
        "HOUR", "COUNT", "FEE_SUM", "PAY_FEE_SUM"
    );
    let hours = body["hours"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for hour in hours {
        out += &format!(
            "{:<10} {:>10} {:>14} {:>14}\n",
            hour["hour_batch"], hour["count"], hour["fee_sum"], hour["pay_fee_sum"]
        );
    }
    out += &format!("{} hours", hours.len());
    if body["truncated"] == Value::Bool(true) {
        out += " (the scan stopped at its bound; narrow the range)";
    }
    out
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

/// Percent-encodes a query parameter value.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out += &format!("%{byte:02X}");
        }
    }
    out
}
