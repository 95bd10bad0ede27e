//! `tollway-broker`: MQTT broker for a provincial or the national centre,
//! built on rmqtt with its retainer plugin and our own hooks.
//!
//! The program loads and validates its TOML file, starts the listeners,
//! plugins and hooks, and runs until SIGINT or SIGTERM.

mod acl;
mod auth;
mod config;
mod events;
mod listeners;
mod metrics;
mod pacing;
mod passwords;
mod plugins;
mod server;
mod sharing;
mod takeover;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tollway_runtime::{CommonArgs, Shutdown, init_logging, load_config};

use crate::config::Config;

/// jemalloc returns memory freed by dropped sessions to the system where
/// glibc's allocator kept it: see "Reconnect storm" in docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// MQTT broker for a provincial or the national centre, built on rmqtt.
#[derive(Debug, Parser)]
#[command(name = "tollway-broker", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// Read a password from standard input, print its salted Argon2id hash
    /// for a password file line (`username:HASH`) and exit.
    #[arg(long)]
    hash_password: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.hash_password {
        return print_password_hash();
    }
    if let Err(err) = init_logging(cli.common.log_format, cli.common.log.as_deref()) {
        eprintln!("tollway-broker: {err}");
        return ExitCode::from(2);
    }

    let path = cli.common.config.as_deref();
    let config: Config =
        match load_config(path).and_then(|config: Config| config.validate(path).map(|()| config)) {
            Ok(config) => config,
            Err(err) => {
                eprintln!("tollway-broker: {err}");
                return ExitCode::from(2);
            }
        };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tollway-broker: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(config));
    // rmqtt leaves per-connection tasks running; do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

fn print_password_hash() -> ExitCode {
    let mut password = String::new();
    if let Err(err) = std::io::stdin().read_line(&mut password) {
        eprintln!("tollway-broker: cannot read the password from standard input: {err}");
        return ExitCode::FAILURE;
    }
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("tollway-broker: the password is empty; write it to standard input");
        return ExitCode::from(2);
    }
    match passwords::hash_password(password.as_bytes()) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("tollway-broker: cannot hash the password: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> ExitCode {
    let mut shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let failed = server::TaskFailed::default();

    if let Err(err) = server::start(&config, &mut shutdown, &failed).await {
        tracing::error!(error = %err, "broker failed to start");
        return ExitCode::FAILURE;
    }
    tracing::info!(
        profile = ?config.profile,
        province = ?config.province.map(|p| p.code()),
        data_dir = %config.data_dir.display(),
        "broker started"
    );

    // `Shutdown::run_until_stopped` is not used: when shutdown is
    // requested, a task that stops promptly can win its race against the
    // cancellation and be reported as having ended on its own.
    // `spawn_service` detects real early ends instead.
    shutdown.token().cancelled().await;
    shutdown
        .wait_for_tasks(Duration::from_secs(config.shutdown_deadline_s))
        .await;
    if failed.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::error!("broker stopped because a task ended");
        ExitCode::FAILURE
    } else {
        tracing::info!("broker stopped");
        ExitCode::SUCCESS
    }
}
