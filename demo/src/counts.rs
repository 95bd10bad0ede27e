//! The toll app's own counts, read from the `counts-VERSION.json` file that
//! each app container writes into its node's mounted counts directory.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Counts of one app version on one node, as the app wrote them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppCounts {
    pub version: String,
    pub started_ms: u64,
    /// Records generated.
    pub produced: u64,
    /// Records the node's intake acknowledged (PUBACK).
    pub acked: u64,
    /// Records generated and not acknowledged.
    pub pending: u64,
    pub reconnects: u64,
    pub first_ack_ms: Option<u64>,
    pub last_ack_ms: Option<u64>,
    /// True once the app stopped and wrote its final counts.
    pub stopped: bool,
}

/// Reads `dir/counts-{version}.json`; `None` while the app has not written it.
pub fn read(dir: &Path, version: &str) -> Option<AppCounts> {
    let path = dir.join(format!("counts-{version}.json"));
    let text = std::fs::read_to_string(&path).ok()?;
    match serde_json::from_str(&text) {
        Ok(counts) => Some(counts),
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "invalid counts file");
            None
        }
    }
}
