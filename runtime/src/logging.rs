//! `tracing` set-up, once per process.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The format of log lines on standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global subscriber. `filter` wins over `RUST_LOG`; without
/// either, `info` is used. An invalid filter from either source is an error.
pub fn init_logging(format: LogFormat, filter: Option<&str>) -> Result<(), String> {
    let filter = match (filter, std::env::var("RUST_LOG")) {
        (Some(filter), _) => EnvFilter::try_new(filter)
            .map_err(|err| format!("invalid log filter {filter:?} in --log: {err}"))?,
        (None, Ok(from_env)) if !from_env.is_empty() => EnvFilter::try_new(&from_env)
            .map_err(|err| format!("invalid log filter {from_env:?} in RUST_LOG: {err}"))?,
        (None, _) => EnvFilter::new("info"),
    };

    // Colour codes only when standard error is a terminal, so files and
    // pipes get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|err| format!("cannot install the log subscriber: {err}"))
}
