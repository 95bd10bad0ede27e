//! The app's produced and acknowledged counts, written to a JSON file that a
//! demo or benchmark reads from a mounted directory.
//!
//! The file is replaced atomically (written to a temporary name, then
//! renamed), so a reader never sees half a file.

use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Counts of one run of the app.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Image version the app was started as (`TOLL_APP_VERSION`).
    pub version: String,
    /// Wall-clock start of this run, in Unix milliseconds. It distinguishes runs.
    pub started_ms: u64,
    /// Records generated.
    pub produced: u64,
    /// Records the intake acknowledged with PUBACK, so durable on the node.
    pub acked: u64,
    /// Records generated but not yet acknowledged.
    pub pending: u64,
    /// Connections the app has lost since it started.
    pub reconnects: u64,
    /// When the first record of this run was acknowledged, Unix milliseconds.
    pub first_ack_ms: Option<u64>,
    /// When the last record so far was acknowledged, Unix milliseconds.
    pub last_ack_ms: Option<u64>,
    /// True once the app has stopped and written its final counts.
    pub stopped: bool,
}

/// Writes [`Counts`] to one file.
pub struct CountsFile {
    path: PathBuf,
    temporary: PathBuf,
}

impl CountsFile {
    pub fn new(path: PathBuf) -> Self {
        let mut temporary = path.clone().into_os_string();
        temporary.push(".tmp");
        CountsFile {
            path,
            temporary: temporary.into(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's content with `counts`.
    pub fn write(&self, counts: &Counts) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(counts).map_err(io::Error::other)?;
        std::fs::write(&self.temporary, json)?;
        std::fs::rename(&self.temporary, &self.path)
    }
}
