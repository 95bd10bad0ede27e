//! `tollway-loadtest`: simulated edge-node fleets against brokers it starts
//! on loopback, with a JSON report and a summary table.
//!
//! `tollway-loadtest SCENARIO [options] --report FILE.json`. The exit code
//! is 0 when the scenario's correctness invariants held (every node back in
//! every round, or connected throughout), 1 when they did not, and 2 for
//! invalid options or a failure to run at all.

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollway_loadtest::fanout::{self, FanoutOptions};
use tollway_loadtest::idle::{self, IdleOptions};
use tollway_loadtest::outage::{self, OutageOptions};
use tollway_loadtest::records::{self, RecordsOptions};
use tollway_loadtest::storm::{self, StormOptions};
use tollway_runtime::{LogFormat, init_logging, raise_open_file_limit};

/// Load tests on loopback: simulated edge-node fleets against Tollway's
/// broker and Mosquitto (reconnect storms, idle traffic, toll records,
/// deployment fan-out) and records through a national outage.
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
        Scenario::Storm(options) => finish(
            "storm",
            &options.common.report,
            storm::run(&options, open_file_limit).await,
            storm::print_summary,
            |report| report.all_back,
        ),
        Scenario::Idle(options) => finish(
            "idle",
            &options.common.report,
            idle::run(&options, open_file_limit).await,
            idle::print_summary,
            |report| report.all_stayed_connected,
        ),
        Scenario::Outage(options) => finish(
            "outage",
            &options.common.report,
            outage::run(&options, open_file_limit).await,
            outage::print_summary,
            |report| report.invariants_held,
        ),
        Scenario::Records(options) => finish(
            "records",
            &options.common.report,
            records::run(&options, open_file_limit).await,
            records::print_summary,
            |report| report.invariants_held,
        ),
        Scenario::Fanout(options) => finish(
            "fanout",
            &options.common.report,
            fanout::run(&options, open_file_limit).await,
            fanout::print_summary,
            |report| report.invariants_held,
        ),
    }
}

/// Prints the summary of a finished scenario and returns its exit code: 0
/// when its invariants held, 1 when not, 2 when it could not run.
fn finish<R, E: std::fmt::Display>(
    scenario: &str,
    report_path: &Path,
    result: Result<R, E>,
    print_summary: fn(&R),
    invariants_held: fn(&R) -> bool,
) -> ExitCode {
    match result {
        Ok(report) => {
            print_summary(&report);
            tracing::info!(scenario, report = %report_path.display(), "report written");
            exit_code(invariants_held(&report))
        }
        Err(err) => {
            eprintln!("tollway-loadtest {scenario}: {err}");
            ExitCode::from(2)
        }
    }
}

fn exit_code(invariants_held: bool) -> ExitCode {
    if invariants_held {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
