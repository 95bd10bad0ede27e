//! The `idle` scenario: bytes per node per day on an idle fleet, keep-alives
//! and status heartbeats included, measured at the socket.
//!
//! The fleet connects to the broker through a [`FaultProxy`] with no faults
//! set, which counts every byte written in each direction. After every node
//! is up, the scenario reads the counters, waits `--duration-s`, reads them
//! again and scales the difference to a day. The figure is MQTT plus TLS
//! bytes as the TCP socket carries them, without IP and TCP headers. The
//! report adds an estimate of 52 header bytes (IPv4 and TCP with the
//! timestamp option) per write, which leaves out pure ACK segments.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::fleet::{Fleet, FleetSpec};
use crate::options::CommonOptions;
use crate::pki::FleetPki;
use crate::preflight::{self, Program};
use crate::proxy::{FaultProxy, ProxyCounters};
use crate::report::{Machine, cell, write_json};
use crate::servers::{BrokerKind, BrokerUnderTest, Transport};
use crate::setup::{FleetPlan, FleetSetup, ScenarioError};

/// IPv4 (20 bytes) and TCP with the timestamp option (32 bytes) headers.
const IP_TCP_HEADER_BYTES: u64 = 52;
const SECONDS_PER_DAY: f64 = 86_400.0;
const FLEET_STOP_DEADLINE: Duration = Duration::from_secs(30);

/// Options of the `idle` scenario.
#[derive(Debug, Clone, Args)]
pub struct IdleOptions {
    #[command(flatten)]
    pub common: CommonOptions,

    /// Number of simulated nodes. Each uses two sockets in this process
    /// (node and proxy side) and one toward the broker.
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=6000))]
    pub nodes: u64,

    /// Length of the measured window, in seconds. Use several keep-alive
    /// and heartbeat intervals.
    #[arg(long, value_name = "SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration_s: u64,

    /// Interval of the status heartbeat, in seconds; 0 sends none.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub heartbeat_s: u64,

    /// Brokers to test, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "tollway,mosquitto"
    )]
    pub brokers: Vec<BrokerKind>,

    /// Transports to test, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "tls")]
    pub transports: Vec<Transport>,

    /// Maximum time the fleet may take to connect before the run is reported as
    /// failed.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub connect_phase_s: u64,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct IdleReport {
    pub scenario: &'static str,
    pub machine: Machine,
    pub nodes: u64,
    pub duration_s: u64,
    pub keep_alive_s: u64,
    pub heartbeat_s: u64,
    pub runs: Vec<IdleRun>,
    /// True when, in every run, every node connected and none reconnected
    /// during the window.
    pub all_stayed_connected: bool,
}

/// One broker with one transport.
#[derive(Debug, Serialize)]
pub struct IdleRun {
    pub broker: BrokerKind,
    pub transport: Transport,
    /// Every node was up before the window started.
    pub all_connected: bool,
    /// No session ended or started during the window.
    pub stayed_connected: bool,
    /// Bytes per node for connecting: TLS handshake, CONNECT, presence and
    /// subscriptions, both directions.
    pub connect_bytes_per_node: Option<f64>,
    pub window_s: f64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub writes_up: u64,
    pub writes_down: u64,
    pub bytes_per_node_per_day_up: f64,
    pub bytes_per_node_per_day_down: f64,
    pub bytes_per_node_per_day: f64,
    /// `bytes_per_node_per_day` plus 52 header bytes per write (an estimate
    /// that leaves out pure ACK segments).
    pub estimated_ip_bytes_per_node_per_day: f64,
    pub skipped_heartbeats: u64,
    pub error: Option<String>,
}

/// Runs the scenario and writes the report.
pub async fn run(options: &IdleOptions, open_file_limit: u64) -> Result<IdleReport, ScenarioError> {
    options.common.validate()?;
    let machine = Machine::describe(open_file_limit);
    let needed = Program::brokers(&options.common.programs(), &options.brokers);
    preflight::check(&options.common.report, &needed)?;
    let plan = FleetPlan {
        prefix: "idle",
        nodes: options.nodes,
        // The node's socket, and the counting proxy's two sockets for it.
        files_per_node: 3,
        tls: options.transports.contains(&Transport::Tls),
    };
    let fleet = FleetSetup::create(&plan, open_file_limit)?;

    let mut runs = Vec::new();
    for &transport in &options.transports {
        for &broker in &options.brokers {
            let mut spec = fleet.spec(&options.common, transport);
            spec.heartbeat =
                (options.heartbeat_s > 0).then(|| Duration::from_secs(options.heartbeat_s));
            runs.push(run_one(options, broker, transport, spec, &fleet.pki).await);
        }
    }

    let report = IdleReport {
        scenario: "idle",
        machine,
        nodes: options.nodes,
        duration_s: options.duration_s,
        keep_alive_s: options.common.keep_alive_s,
        heartbeat_s: options.heartbeat_s,
        all_stayed_connected: runs
            .iter()
            .all(|run| run.error.is_none() && run.all_connected && run.stayed_connected),
        runs,
    };
    write_json(&options.common.report, &report)?;
    Ok(report)
}

async fn run_one(
    options: &IdleOptions,
    kind: BrokerKind,
    transport: Transport,
    mut spec: FleetSpec,
    pki: &FleetPki,
) -> IdleRun {
    let nodes = spec.nodes.len() as f64;
    let mut run = IdleRun {
        broker: kind,
        transport,
        all_connected: false,
        stayed_connected: false,
        connect_bytes_per_node: None,
        window_s: 0.0,
        bytes_up: 0,
        bytes_down: 0,
        writes_up: 0,
        writes_down: 0,
        bytes_per_node_per_day_up: 0.0,
        bytes_per_node_per_day_down: 0.0,
        bytes_per_node_per_day: 0.0,
        estimated_ip_bytes_per_node_per_day: 0.0,
        skipped_heartbeats: 0,
        error: None,
    };

    let programs = options.common.programs();
    let mut broker = match tokio::task::block_in_place(|| {
        BrokerUnderTest::start(kind, transport, &pki.server, &programs)
    }) {
        Ok(broker) => broker,
        Err(err) => {
            run.error = Some(err.to_string());
            return run;
        }
    };
    let proxy =
        match FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], 0)), broker.node_addr).await {
            Ok(proxy) => proxy,
            Err(err) => {
                run.error = Some(format!("cannot start the counting proxy: {err}"));
                return run;
            }
        };
    spec.broker = proxy.local_addr();

    // Connect, then measure a window in which nothing should reconnect.
    let fleet = Fleet::start(spec);
    let connect_phase = Duration::from_secs(options.connect_phase_s);
    run.all_connected = fleet.wait_all_back(0, connect_phase).await.is_some();
    if run.all_connected {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start_counters = proxy.counters();
        let start_fleet = fleet.stats().counters();
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(options.duration_s)).await;
        let end_counters = proxy.counters();
        let end_fleet = fleet.stats().counters();
        run.window_s = started.elapsed().as_secs_f64();

        run.connect_bytes_per_node =
            Some((start_counters.bytes_up + start_counters.bytes_down) as f64 / nodes);
        run.stayed_connected = end_fleet.ups == start_fleet.ups
            && end_fleet.up == fleet.size()
            && end_fleet.lost == start_fleet.lost;
        run.skipped_heartbeats = end_fleet.skipped_heartbeats - start_fleet.skipped_heartbeats;
        fill_window(&mut run, start_counters, end_counters, nodes);
    } else {
        run.error = Some(format!(
            "only {} of {} nodes connected within {} s",
            fleet.stats().counters().up,
            fleet.size(),
            options.connect_phase_s
        ));
    }

    if let Err(err) = fleet.stop(FLEET_STOP_DEADLINE).await {
        tracing::warn!(error = %err, "fleet did not stop in time");
    }
    proxy.shutdown();
    if let Err(err) = tokio::task::block_in_place(|| broker.stop()) {
        tracing::warn!(broker = %kind, error = %err, "broker did not stop cleanly");
    }
    run
}

/// Scales the window's counters to bytes per node per day.
fn fill_window(run: &mut IdleRun, start: ProxyCounters, end: ProxyCounters, nodes: f64) {
    run.bytes_up = end.bytes_up - start.bytes_up;
    run.bytes_down = end.bytes_down - start.bytes_down;
    run.writes_up = end.writes_up - start.writes_up;
    run.writes_down = end.writes_down - start.writes_down;

    let per_node_day = |value: u64| value as f64 / nodes * SECONDS_PER_DAY / run.window_s;
    run.bytes_per_node_per_day_up = per_node_day(run.bytes_up);
    run.bytes_per_node_per_day_down = per_node_day(run.bytes_down);
    run.bytes_per_node_per_day = per_node_day(run.bytes_up + run.bytes_down);
    let headers = (run.writes_up + run.writes_down) * IP_TCP_HEADER_BYTES;
    run.estimated_ip_bytes_per_node_per_day = per_node_day(run.bytes_up + run.bytes_down + headers);
}

/// Prints the runs as a plain-text table.
pub fn print_summary(report: &IdleReport) {
    println!(
        "idle: {} nodes, {} s window, keep-alive {} s, heartbeat {} s",
        report.nodes, report.duration_s, report.keep_alive_s, report.heartbeat_s
    );
    println!(
        "{:<10} {:<5} {:>10} {:>14} {:>14} {:>14} {:>16} {:>10}",
        "broker",
        "link",
        "connected",
        "connect B",
        "up B/day",
        "down B/day",
        "total B/day",
        "IP B/day"
    );
    for run in &report.runs {
        println!(
            "{:<10} {:<5} {:>10} {:>14} {:>14.0} {:>14.0} {:>16.0} {:>10.0}",
            run.broker.to_string(),
            run.transport.to_string(),
            if run.all_connected && run.stayed_connected {
                "yes"
            } else {
                "NO"
            },
            cell(run.connect_bytes_per_node, 0),
            run.bytes_per_node_per_day_up,
            run.bytes_per_node_per_day_down,
            run.bytes_per_node_per_day,
            run.estimated_ip_bytes_per_node_per_day,
        );
        if let Some(error) = &run.error {
            println!(
                "{:<10} {:<5} error: {error}",
                run.broker.to_string(),
                run.transport.to_string()
            );
        }
    }
    println!(
        "every node connected and stayed connected: {}",
        if report.all_stayed_connected {
            "yes"
        } else {
            "NO"
        }
    );
}
