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
mod retained;
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

    check_open_file_limit(&config);

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

/// Time given to the retainer at shutdown. It stores retained messages
/// from a queue after routing them, and sled writes to disk about every
/// 500 ms. The runtime's own shutdown (up to 1 s, below) used to give it
/// that time by accident.
const RETAINER_DRAIN: Duration = Duration::from_secs(1);

/// File descriptors kept free for the broker's own files: listening
/// sockets, the retained store, the metrics endpoint, logs.
const RESERVED_FILES: u64 = 256;

/// Raises the soft open-file limit to the hard one and warns when it is
/// still below what the listeners' `max_connections` allow. Beyond the
/// limit, accepting a connection fails and the client's TCP connect times
/// out.
fn check_open_file_limit(config: &Config) {
    let connections = config.max_connections() as u64;
    match tollway_runtime::raise_open_file_limit() {
        Ok(limit) if limit < connections + RESERVED_FILES => tracing::warn!(
            open_file_limit = limit,
            max_connections = connections,
            "the open-file limit is below the listeners' max_connections plus {RESERVED_FILES}; \
             about {} connections fit. Raise LimitNOFILE in the service unit (or `ulimit -n`) \
             or lower max_connections",
            limit.saturating_sub(RESERVED_FILES)
        ),
        Ok(limit) => tracing::info!(
            open_file_limit = limit,
            max_connections = connections,
            "open-file limit"
        ),
        Err(err) => tracing::warn!(error = %err, "cannot read or raise the open-file limit"),
    }
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

    // The retainer cannot be stopped or flushed through rmqtt's API, so
    // the broker waits for it: a retained message acknowledged just
    // before SIGTERM must survive the restart.
    tracing::info!(
        wait_ms = RETAINER_DRAIN.as_millis() as u64,
        "waiting for retained messages to reach disk"
    );
    tokio::time::sleep(RETAINER_DRAIN).await;

    if failed.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::error!("broker stopped because a task ended");
        ExitCode::FAILURE
    } else {
        tracing::info!("broker stopped");
        ExitCode::SUCCESS
    }
}
