//! `tollway-edge`: Edge daemon: runs a node's apps through Podman and keeps its toll record outbox.
//!
//! NOTE: only the record intake, the outbox and retention run so far. No
//! uplink sends records to the centre yet, so undelivered records grow
//! until the outbox's disk cap applies back-pressure.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use tollway_edge::apps::{self, AppsConfig, AppsReport};
use tollway_edge::intake::{Intake, IntakeConfig};
use tollway_edge::outbox::{Outbox, OutboxConfig};
use tollway_edge::retention::run_retention;
use tollway_runtime::{CommonArgs, Shutdown, init_logging, load_config};
use tollway_topics::NodeId;

/// Edge daemon: runs a node's apps through Podman and keeps its toll record outbox.
#[derive(Debug, Parser)]
#[command(name = "tollway-edge", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

/// Configuration file (TOML); an unknown key is an error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// This node's id, also the CN of its client certificate.
    node: String,
    outbox: OutboxConfig,
    #[serde(default)]
    intake: IntakeConfig,
    /// App manager: Podman socket, reconcile interval, stop timeout, back-offs.
    #[serde(default)]
    apps: AppsConfig,
    /// Seconds between retention prunes of delivered records. Default 300.
    #[serde(default = "default_prune_interval_s")]
    prune_interval_s: u64,
}

fn default_prune_interval_s() -> u64 {
    300
}

/// Time the tasks get to stop after a shutdown signal.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = init_logging(cli.common.log_format, cli.common.log.as_deref()) {
        eprintln!("tollway-edge: {err}");
        return ExitCode::from(2);
    }

    let config: Config = match load_config(cli.common.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("tollway-edge: {err}");
            return ExitCode::from(2);
        }
    };
    let node = match validate(&config) {
        Ok(node) => node,
        Err(problems) => {
            eprintln!("tollway-edge: invalid configuration:");
            for problem in problems {
                eprintln!("  {problem}");
            }
            return ExitCode::from(2);
        }
    };

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tollway-edge: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(node, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "tollway-edge stopped on an error");
            ExitCode::FAILURE
        }
    }
}

/// Checks every key and returns the node id, or all problems at once.
fn validate(config: &Config) -> Result<NodeId, Vec<String>> {
    let mut problems = Vec::new();
    let node = NodeId::new(config.node.clone())
        .map_err(|err| problems.push(format!("node = {:?}: {err}", config.node)))
        .ok();
    problems.extend(
        config
            .outbox
            .problems()
            .into_iter()
            .map(|p| format!("outbox: {p}")),
    );
    problems.extend(
        config
            .intake
            .problems()
            .into_iter()
            .map(|p| format!("intake: {p}")),
    );
    problems.extend(
        config
            .apps
            .problems()
            .into_iter()
            .map(|p| format!("apps: {p}")),
    );
    if config.prune_interval_s == 0 {
        problems.push("prune_interval_s must be at least 1".to_string());
    }
    match node {
        Some(node) if problems.is_empty() => Ok(node),
        _ => Err(problems),
    }
}

/// Runs the intake and retention until a signal, then stops them.
async fn serve(node: NodeId, config: Config) -> anyhow::Result<()> {
    let outbox = Arc::new(Outbox::open(node, &config.outbox)?);
    let intake = Intake::bind(config.intake, Arc::clone(&outbox)).await?;

    let mut shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    shutdown.spawn("intake", intake.run(shutdown.token()));
    let interval = Duration::from_secs(config.prune_interval_s);
    shutdown.spawn(
        "retention",
        run_retention(Arc::clone(&outbox), interval, shutdown.token()),
    );

    // The MQTT link feeds the desired-state inbox and reads the report; until
    // it runs, the app manager runs the stored desired state.
    let (_desired_inbox, desired_outlet) = tokio::sync::watch::channel(None);
    let (report_writer, _report_reader) = tokio::sync::watch::channel(AppsReport::default());
    let apps_task = apps::run(
        config.apps,
        outbox.node().clone(),
        outbox.database(),
        desired_outlet,
        report_writer,
        shutdown.token(),
    );
    shutdown.spawn("apps", async move {
        if let Err(err) = apps_task.await {
            tracing::error!(error = %err, "app manager stopped on an error");
        }
    });

    let ended_early = shutdown.run_until_stopped(SHUTDOWN_DEADLINE).await;
    // The outbox closes when the last handle is dropped, after the tasks.
    drop(outbox);
    if ended_early.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("tasks stopped on their own: {ended_early:?}")
    }
}
