//! `tollway-loadtest`: simulated edge-node fleets against brokers it starts
//! on loopback, with a JSON report and a summary table.
//!
//! `tollway-loadtest SCENARIO [options] --report FILE.json`. The exit code
//! is 0 when the scenario's correctness invariants held (every node back in
//! every round, or connected throughout), 1 when they did not, and 2 for
//! invalid options or a failure to run at all.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollway_loadtest::fanout::{self, FanoutOptions};
use tollway_loadtest::idle::{self, IdleOptions};
use tollway_loadtest::outage::{self, OutageOptions};
use tollway_loadtest::process::raise_open_file_limit;
use tollway_loadtest::records::{self, RecordsOptions};
use tollway_loadtest::storm::{self, StormOptions};
use tollway_runtime::{LogFormat, init_logging};

/// Load tests on loopback: reconnect storms and idle traffic of simulated
/// edge-node fleets against Tollway's broker and Mosquitto.
#[derive(Debug, Parser)]
#[command(name = "tollway-loadtest", version)]
struct Cli {
    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "TOLLWAY_LOG_FORMAT", global = true)]
    log_format: LogFormat,

    /// Log filter in `tracing` env-filter syntax, e.g. `info`. `RUST_LOG`
    /// is used when this is not set.
    #[arg(long, value_name = "FILTER", global = true)]
    log: Option<String>,

    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// N nodes connect, drop and reconnect in rounds, then the broker
    /// restarts under them (back-off and naive clients).
    Storm(StormOptions),
    /// Bytes per node per day of an idle, connected fleet.
    Idle(IdleOptions),
    /// Records flow from a province to the nation while the national link
    /// is slow, cut and dropped; none may be lost or stored twice.
    Outage(OutageOptions),
    /// Toll records from N nodes through the broker to the ingest and back
    /// as acknowledgements.
    Records(RecordsOptions),
    /// A deployment change through the controller to N nodes: time until
    /// 99% and 100% report the new generation.
    Fanout(FanoutOptions),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = init_logging(cli.log_format, cli.log.as_deref()) {
        eprintln!("tollway-loadtest: {err}");
        return ExitCode::from(2);
    }

    // Brokers started below inherit the raised limit.
    let open_file_limit = match raise_open_file_limit() {
        Ok(limit) => limit,
        Err(err) => {
            eprintln!("tollway-loadtest: cannot read or raise the open-file limit: {err}");
            return ExitCode::from(2);
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tollway-loadtest: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };

    runtime.block_on(async {
        tokio::select! {
            code = run_scenario(cli.scenario, open_file_limit) => code,
            signal = interrupted() => {
                // Dropping the scenario's future drops its brokers and
                // services, which kills their processes.
                eprintln!("tollway-loadtest: stopped by {signal}; no report written");
                ExitCode::from(2)
            }
        }
    })
}

/// Waits for SIGINT or SIGTERM and returns its name.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};

    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

async fn run_scenario(scenario: Scenario, open_file_limit: u64) -> ExitCode {
    match scenario {
        Scenario::Storm(options) => match storm::run(&options, open_file_limit).await {
            Ok(report) => {
                storm::print_summary(&report);
                tracing::info!(report = %options.common.report.display(), "storm report written");
                exit_code(report.all_back)
            }
            Err(err) => {
                eprintln!("tollway-loadtest storm: {err}");
                ExitCode::from(2)
            }
        },
        Scenario::Idle(options) => match idle::run(&options, open_file_limit).await {
            Ok(report) => {
                idle::print_summary(&report);
                tracing::info!(report = %options.common.report.display(), "idle report written");
                exit_code(report.all_stayed_connected)
            }
            Err(err) => {
                eprintln!("tollway-loadtest idle: {err}");
                ExitCode::from(2)
            }
        },
        Scenario::Outage(options) => match outage::run(&options, open_file_limit).await {
            Ok(report) => {
                outage::print_summary(&report);
                tracing::info!(report = %options.common.report.display(), "outage report written");
                exit_code(report.invariants_held)
            }
            Err(err) => {
                eprintln!("tollway-loadtest outage: {err}");
                ExitCode::from(2)
            }
        },
        Scenario::Records(options) => match records::run(&options, open_file_limit).await {
            Ok(report) => {
                records::print_summary(&report);
                tracing::info!(report = %options.common.report.display(), "records report written");
                exit_code(report.invariants_held)
            }
            Err(err) => {
                eprintln!("tollway-loadtest records: {err}");
                ExitCode::from(2)
            }
        },
        Scenario::Fanout(options) => match fanout::run(&options, open_file_limit).await {
            Ok(report) => {
                fanout::print_summary(&report);
                tracing::info!(report = %options.common.report.display(), "fanout report written");
                exit_code(report.invariants_held)
            }
            Err(err) => {
                eprintln!("tollway-loadtest fanout: {err}");
                ExitCode::from(2)
            }
        },
    }
}

fn exit_code(invariants_held: bool) -> ExitCode {
    if invariants_held {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
