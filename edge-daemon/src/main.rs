//! `tollway-edge`: Edge daemon: runs a node's apps through Podman and keeps its toll record outbox.
//!
//! Wires the parts to the configuration file and signals: the record
//! intake and outbox, the MQTT link, the uplink of records, commands,
//! status, hourly summaries, retention and the app manager (desired state
//! and Podman).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::sync::{mpsc, watch};
use tollway_edge::apps::{self, AppsReport};
use tollway_edge::commands::run_commands;
use tollway_edge::config::{EdgeConfig, Identity};
use tollway_edge::intake::Intake;
use tollway_edge::link::{Inbound, Link, TlsFiles};
use tollway_edge::outbox::Outbox;
use tollway_edge::retention::run_retention;
use tollway_edge::status::run_status;
use tollway_edge::summary::run_summaries;
use tollway_edge::uplink::run_uplink;
use tollway_runtime::{CommonArgs, Shutdown, init_logging, load_config};

/// Edge daemon: runs a node's apps through Podman and keeps its toll record outbox.
#[derive(Debug, Parser)]
#[command(name = "tollway-edge", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

/// Time the tasks get to stop after a shutdown signal.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// Worker threads of the async runtime: the node's apps come first, and
/// the outbox writer has a thread of its own.
const WORKER_THREADS: usize = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = init_logging(cli.common.log_format, cli.common.log.as_deref()) {
        eprintln!("tollway-edge: {err}");
        return ExitCode::from(2);
    }

    let mut config: EdgeConfig = match load_config(cli.common.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("tollway-edge: {err}");
            return ExitCode::from(2);
        }
    };
    let identity = match config.validate() {
        Ok(identity) => identity,
        Err(problems) => {
            eprintln!("tollway-edge: invalid configuration:");
            for problem in problems {
                eprintln!("  {problem}");
            }
            return ExitCode::from(2);
        }
    };
    let tls = match TlsFiles::load(&config.link) {
        Ok(tls) => tls,
        Err(err) => {
            eprintln!("tollway-edge: {err}");
            return ExitCode::from(2);
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tollway-edge: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(identity, config, tls)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "tollway-edge stopped on an error");
            ExitCode::FAILURE
        }
    }
}

/// Runs every task until a signal, then stops them.
async fn serve(identity: Identity, config: EdgeConfig, tls: TlsFiles) -> anyhow::Result<()> {
    let Identity { node, province } = identity;
    tracing::info!(node = %node, province = %province, version = env!("CARGO_PKG_VERSION"), labels = ?config.labels, "tollway-edge starting");
    let outbox = Arc::new(Outbox::open(node.clone(), &config.outbox)?);
    let intake = Intake::bind(config.intake.clone(), Arc::clone(&outbox)).await?;

    // The seam with the app manager: the link fills `desired_inbox`, the
    // app manager reads `desired_outlet` and writes `report_writer`, and
    // the status task reads `report_reader`.
    let (desired_inbox, desired_outlet) = watch::channel(None);
    let (report_writer, report_reader) = watch::channel(AppsReport::default());
    let (commands_tx, commands_rx) = mpsc::channel(config.commands.queue);
    let (acks_tx, acks_rx) = watch::channel(0u64);
    let inbound = Inbound {
        desired: desired_inbox,
        commands: commands_tx,
        acks: acks_tx,
    };
    let (link, link_handle) = Link::new(
        node.clone(),
        province,
        env!("CARGO_PKG_VERSION"),
        config.labels.clone(),
        config.link.clone(),
        tls,
        inbound,
    );

    let mut shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    shutdown.spawn("intake", intake.run(shutdown.token()));
    shutdown.spawn("link", link.run(shutdown.token()));
    shutdown.spawn(
        "uplink",
        run_uplink(
            Arc::clone(&outbox),
            link_handle.clone(),
            acks_rx,
            config.uplink.clone(),
            shutdown.token(),
        ),
    );
    shutdown.spawn(
        "commands",
        run_commands(
            Arc::clone(&outbox),
            link_handle.clone(),
            commands_rx,
            config.uplink.batch_limits(),
            config.commands.clone(),
            shutdown.token(),
        ),
    );
    shutdown.spawn(
        "status",
        run_status(
            Arc::clone(&outbox),
            link_handle.clone(),
            report_reader,
            config.data_dir.clone(),
            config.status.clone(),
            shutdown.token(),
        ),
    );
    shutdown.spawn(
        "summary",
        run_summaries(
            Arc::clone(&outbox),
            link_handle,
            config.summary.clone(),
            shutdown.token(),
        ),
    );
    let interval = Duration::from_secs(config.prune_interval_s);
    shutdown.spawn(
        "retention",
        run_retention(Arc::clone(&outbox), interval, shutdown.token()),
    );

    // Until the link delivers a desired state, the app manager runs the
    // one stored in the outbox's database, so a node that reboots offline
    // starts its apps.
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
