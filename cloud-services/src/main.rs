//! `tollway-center`: Centre services: controller, record ingest and store, national forwarding and aggregation.
//!
//! Each service runs when its section is present in the configuration, so a
//! province can run them in one process or spread them over several.
//!
//! NOTE: only `[controller]` and `[aggregator]` exist so far.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use tollway_center::aggregator::{self, AggregatorConfig};
use tollway_center::controller::{self, ControllerConfig};
use tollway_runtime::{CommonArgs, Shutdown, init_logging, load_config};

/// Centre services: controller, record ingest and store, national forwarding and aggregation.
#[derive(Debug, Parser)]
#[command(name = "tollway-center", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

/// Configuration file (TOML): one section per service to run; an unknown
/// key is an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The provincial controller (scheduler).
    controller: Option<ControllerConfig>,
    /// The national fleet aggregator.
    aggregator: Option<AggregatorConfig>,
}

/// Time the tasks get to stop after a shutdown signal.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = init_logging(cli.common.log_format, cli.common.log.as_deref()) {
        eprintln!("tollway-center: {err}");
        return ExitCode::from(2);
    }

    let config: Config = match load_config(cli.common.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("tollway-center: {err}");
            return ExitCode::from(2);
        }
    };
    if config.controller.is_none() && config.aggregator.is_none() {
        eprintln!(
            "tollway-center: the configuration names no service; add a [controller] or [aggregator] section"
        );
        return ExitCode::from(2);
    }

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tollway-center: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
    let mut shutdown = Shutdown::new();
    shutdown.listen_for_signals();

    if let Some(section) = config.controller
        && let Err(err) = controller::start(section, &mut shutdown).await
    {
        eprintln!("tollway-center: {err}");
        shutdown.token().cancel();
        shutdown.wait_for_tasks(SHUTDOWN_DEADLINE).await;
        return ExitCode::FAILURE;
    }
    if let Some(section) = config.aggregator
        && let Err(err) = aggregator::start(section, &mut shutdown).await
    {
        eprintln!("tollway-center: {err}");
        shutdown.token().cancel();
        shutdown.wait_for_tasks(SHUTDOWN_DEADLINE).await;
        return ExitCode::FAILURE;
    }

    let failed = shutdown.run_until_stopped(SHUTDOWN_DEADLINE).await;
    if failed.is_empty() {
        tracing::info!("tollway-center stopped");
        ExitCode::SUCCESS
    } else {
        tracing::error!(tasks = ?failed, "tasks ended on their own");
        ExitCode::FAILURE
    }
}
