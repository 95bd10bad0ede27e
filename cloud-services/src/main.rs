//! `tollway-center`: Centre services: controller, record ingest and store, national forwarding and aggregation.
//!
//! NOTE: this program parses its command line and configuration and then
//! exits; its service is not built yet.

use clap::Parser;
use serde::Deserialize;
use tollway_runtime::{CommonArgs, init_logging, load_config};

/// Centre services: controller, record ingest and store, national forwarding and aggregation.
#[derive(Debug, Parser)]
#[command(name = "tollway-center", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

/// Configuration file (TOML). No keys yet; an unknown key is an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(err) = init_logging(cli.common.log_format, cli.common.log.as_deref()) {
        eprintln!("tollway-center: {err}");
        return std::process::ExitCode::from(2);
    }

    let config: Config = match load_config(cli.common.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("tollway-center: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    tracing::info!(
        ?config,
        "configuration is valid; this program has no service yet"
    );
    std::process::ExitCode::SUCCESS
}
