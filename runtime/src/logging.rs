//! `tracing` set-up, once per process.

use tracing_subscriber::EnvFilter;

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global subscriber. `filter` wins over `RUST_LOG`; without
/// either, `info` is used. An invalid filter is reported, never ignored.
pub fn init_logging(format: LogFormat, filter: Option<&str>) -> Result<(), String> {
    let filter = match filter {
        Some(filter) => EnvFilter::try_new(filter)
            .map_err(|err| format!("invalid log filter {filter:?}: {err}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };

    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|err| format!("cannot install the log subscriber: {err}"))
}
