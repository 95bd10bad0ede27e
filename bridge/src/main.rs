//! `tollway-bridge`: forwards chosen topics between a provincial broker and
//! the national broker, with acknowledgements end to end, back-off,
//! a bandwidth cap and two priority lanes.
//!
//! The program loads and validates its TOML file, starts the sessions and
//! runs until SIGINT or SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tollway_bridge::config::Config;
use tollway_runtime::{CommonArgs, Shutdown, init_logging, load_config};

/// Forwards chosen topics between a provincial and the national broker.
#[derive(Debug, Parser)]
#[command(name = "tollway-bridge", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// Validate the configuration file, print the rules in use and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = init_logging(cli.common.log_format, cli.common.log.as_deref()) {
        eprintln!("tollway-bridge: {err}");
        return ExitCode::from(2);
    }

    let path = cli.common.config.as_deref();
    let config: Config =
        match load_config(path).and_then(|config: Config| config.validate(path).map(|()| config)) {
            Ok(config) => config,
            Err(err) => {
                eprintln!("tollway-bridge: {err}");
                return ExitCode::from(2);
            }
        };
    if cli.check {
        for rule in config.rule_set().rules() {
            println!(
                "{:<4} {:<7} qos {} retain {:<5} {}",
                rule.direction.label(),
                rule.lane.label(),
                rule.qos,
                rule.retain,
                rule.filter
            );
        }
        return ExitCode::SUCCESS;
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tollway-bridge: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let mut shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    if let Err(err) = tollway_bridge::bridge::start(&config, &mut shutdown).await {
        tracing::error!(error = %err, "bridge failed to start");
        return ExitCode::FAILURE;
    }

    let ended_early = shutdown
        .run_until_stopped(Duration::from_secs(config.shutdown_deadline_s))
        .await;
    if ended_early.is_empty() {
        tracing::info!("bridge stopped");
        ExitCode::SUCCESS
    } else {
        tracing::error!(tasks = ?ended_early, "bridge stopped because a task ended");
        ExitCode::FAILURE
    }
}
