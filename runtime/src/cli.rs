//! Command-line options that every Tollway program accepts.

use std::path::PathBuf;

use clap::Args;

use crate::logging::LogFormat;

/// Flags shared by all programs; each program flattens them into its own
/// `clap` parser.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Configuration file (TOML). Without it, every key takes its default,
    /// and a program with required keys (node, profile, province) stops
    /// with an error naming the first one missing.
    #[arg(long, short = 'c', value_name = "FILE", env = "TOLLWAY_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "TOLLWAY_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Log filter in `tracing` env-filter syntax, e.g. `info` or
    /// `info,rumqttc=debug`. `RUST_LOG` is used when this is not set.
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}
