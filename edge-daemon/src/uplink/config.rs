//! Uplink settings: how records are batched and how many batches may wait
//! for the centre's acknowledgement.

use std::time::Duration;

use serde::Deserialize;

use crate::outbox::BatchLimits;

/// The `uplink` section of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Records per batch at most, 1 to 2000. Default 500.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// Sum of the records' CBOR sizes per batch at most, in bytes, before
    /// compression. Default 256 KiB.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Time a batch that is not yet full waits for more records, in
    /// milliseconds. Fewer, larger batches cost less on a slow link; a full
    /// batch leaves at once. Default 500.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Batches sent and not yet acknowledged by the centre, at most. When
    /// reached, the uplink sends nothing more until an acknowledgement
    /// arrives or the oldest batch times out. Keep it at or below the
    /// broker's in-flight limit per client (16 on tollway-broker). Default 4.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Time to wait for the centre's acknowledgement of the oldest batch
    /// in the window, in seconds; then every unacknowledged record is sent
    /// again. Default 30.
    #[serde(default = "default_resend_timeout_s")]
    pub resend_timeout_s: u64,
    /// Compress batches with zstd. Default true.
    #[serde(default = "default_compress")]
    pub compress: bool,
}

fn default_max_records() -> usize {
    BatchLimits::default().max_records
}

fn default_max_bytes() -> usize {
    BatchLimits::default().max_bytes
}

fn default_linger_ms() -> u64 {
    500
}

fn default_window() -> usize {
    4
}

fn default_resend_timeout_s() -> u64 {
    30
}

fn default_compress() -> bool {
    true
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            max_records: default_max_records(),
            max_bytes: default_max_bytes(),
            linger_ms: default_linger_ms(),
            window: default_window(),
            resend_timeout_s: default_resend_timeout_s(),
            compress: default_compress(),
        }
    }
}

impl UplinkConfig {
    pub fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            max_records: self.max_records,
            max_bytes: self.max_bytes,
        }
    }

    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }

    pub fn resend_timeout(&self) -> Duration {
        Duration::from_secs(self.resend_timeout_s)
    }

    /// Lists every setting that is out of range, each starting with its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        // BatchLimits names max_records or max_bytes in its message.
        if let Some(problem) = self.batch_limits().problem() {
            problems.push(problem);
        }
        if self.window == 0 || self.window > 64 {
            problems.push(format!("window ({}) must be 1 to 64", self.window));
        }
        if self.resend_timeout_s == 0 {
            problems.push("resend_timeout_s must be at least 1".to_string());
        }
        if self.linger_ms > 60_000 {
            problems.push(format!(
                "linger_ms ({}) must be at most 60000",
                self.linger_ms
            ));
        }
        problems
    }
}
