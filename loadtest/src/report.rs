//! The JSON report every scenario writes, and the facts about the machine
//! it ran on.

use std::path::Path;

use serde::Serialize;

/// The machine a scenario ran on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs this process may use.
    pub cpus: usize,
    /// `MemTotal` from `/proc/meminfo`, in bytes.
    pub memory_bytes: Option<u64>,
    /// This process's open-file limit after raising it.
    pub open_file_limit: u64,
    /// Seconds since the Unix epoch when the scenario started.
    pub started_unix_s: u64,
}

impl Machine {
    pub fn describe(open_file_limit: u64) -> Self {
        Machine {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_bytes: memory_total_bytes(),
            open_file_limit,
            started_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

fn memory_total_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Our figure against Mosquitto's for one metric, measured in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub transport: String,
    pub metric: &'static str,
    pub tollway: Option<f64>,
    pub mosquitto: Option<f64>,
    /// `tollway / mosquitto`; absent when either figure is missing or
    /// Mosquitto's is 0.
    pub ratio: Option<f64>,
}

impl Comparison {
    pub fn new(
        transport: String,
        metric: &'static str,
        tollway: Option<f64>,
        mosquitto: Option<f64>,
    ) -> Self {
        let ratio = match (tollway, mosquitto) {
            (Some(ours), Some(theirs)) if theirs != 0.0 => Some(ours / theirs),
            _ => None,
        };
        Comparison {
            transport,
            metric,
            tollway,
            mosquitto,
            ratio,
        }
    }
}

/// A report that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot encode the report: {0}")]
    Encode(#[from] serde_json::Error),

    #[error("cannot write the report to {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Writes `report` to `path` as pretty-printed JSON.
pub fn write_json<T: Serialize>(path: &Path, report: &T) -> Result<(), ReportError> {
    let mut text = serde_json::to_string_pretty(report)?;
    text.push('\n');
    std::fs::write(path, text).map_err(|source| ReportError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Returns the median of `values`, or `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    })
}

/// Formats an optional number for the summary tables.
pub fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: Option<u64>) -> String {
    cell(bytes.map(|b| b as f64 / (1024.0 * 1024.0)), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn ratio_needs_both_figures() {
        let both = Comparison::new("tls".into(), "m", Some(3.0), Some(2.0));
        assert_eq!(both.ratio, Some(1.5));
        let missing = Comparison::new("tls".into(), "m", Some(3.0), None);
        assert_eq!(missing.ratio, None);
        let zero = Comparison::new("tls".into(), "m", Some(3.0), Some(0.0));
        assert_eq!(zero.ratio, None);
    }
}
