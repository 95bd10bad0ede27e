//! JSON reads from the services' loopback HTTP APIs: the query API of each
//! centre, the controller and the aggregator.

use std::time::Duration;

use serde_json::Value;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A GET that failed or returned something other than JSON with status 200.
#[derive(Debug, thiserror::Error)]
#[error("GET {url} failed: {detail}")]
pub struct HttpError {
    url: String,
    detail: String,
}

/// GETs `http://127.0.0.1:{port}{path}` and parses the JSON body.
pub fn get_json(port: u16, path: &str) -> Result<Value, HttpError> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let error = |detail: String| HttpError {
        url: url.clone(),
        detail,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .build()
        .into();
    let mut response = agent
        .get(&url)
        .call()
        .map_err(|err| error(err.to_string()))?;
    response
        .body_mut()
        .read_json()
        .map_err(|err| error(format!("body is not JSON: {err}")))
}

/// Reads one counter of a centre's `/v1/stats`.
pub fn stat(port: u16, name: &str) -> Result<u64, HttpError> {
    let stats = get_json(port, "/v1/stats")?;
    stats[name].as_u64().ok_or_else(|| HttpError {
        url: format!("http://127.0.0.1:{port}/v1/stats"),
        detail: format!("no counter {name} in {stats}"),
    })
}
