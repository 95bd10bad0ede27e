//! The `records` scenario: N simulated nodes send toll records through the
//! provincial broker to `tollway-center` ingest processes, which store them
//! in RocksDB and acknowledge them, for `--duration-s` seconds at a set
//! fleet rate or as fast as acknowledgements allow (`--rate max`). The same
//! runs against Tollway's broker and Mosquitto, one after the other.
//!
//! Each run reports records created and acknowledged, and records per
//! second acknowledged over the measuring window (the duration less the
//! warm-up). Latency percentiles run from a record entering its node's
//! outbox to the acknowledgement covering it. The broker's and the
//! ingest's peak CPU and RSS are sampled once a second. Invariants that set the exit code: every record acknowledged within
//! the drain timeout, and the stores hold exactly the records created (the
//! ingest's `records_stored` equals the records created, and each node's
//! `stored_through` equals its last seq).
//!
//! Bounds: a run lasts at most the time for the fleet to come up
//! (`--up-timeout-s`), the duration, and the drain timeout, plus process
//! start and stop times.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tollway_topics::NodeId;

use crate::center::{CenterOptions, CenterProcess, Service};
use crate::fleet::FleetSpec;
use crate::options::CommonOptions;
use crate::pki::FleetPki;
use crate::preflight::{self, Program};
use crate::process::{CpuSampler, RssSampler};
use crate::record_fleet::{Pace, Phase, RecordFleet, UplinkSettings, UplinkStats};
use crate::report::{Comparison, Machine, cell, mib, write_json};
use crate::servers::{BrokerKind, BrokerUnderTest, Programs, Transport};
use crate::service::ServiceError;
use crate::setup::{FleetPlan, FleetSetup, PROVINCE, ScenarioError};

/// Time the fleet has to stop after a run.
const FLEET_STOP_DEADLINE: Duration = Duration::from_secs(30);

/// The fleet's record rate: a number of records per second, or `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    PerSecond(f64),
    Max,
}

fn parse_rate(text: &str) -> Result<Rate, String> {
    if text == "max" {
        return Ok(Rate::Max);
    }
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(Rate::PerSecond(rate)),
        _ => Err(format!(
            "{text:?} is neither a positive number of records per second nor `max`"
        )),
    }
}

/// Options of the `records` scenario.
#[derive(Debug, Clone, Args)]
pub struct RecordsOptions {
    #[command(flatten)]
    pub common: CommonOptions,

    #[command(flatten)]
    pub center: CenterOptions,

    /// Number of simulated nodes.
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub nodes: u64,

    /// Records per second created by the whole fleet, spread evenly over
    /// the nodes, or `max`: each node creates a full batch whenever its
    /// window has room, which finds the ceiling.
    #[arg(long, value_name = "RECORDS_PER_S|max", default_value = "3500", value_parser = parse_rate)]
    pub rate: Rate,

    /// Seconds during which records are created.
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration_s: u64,

    /// Seconds at the start of the duration that the records-per-second
    /// figure leaves out. At most half the duration is left out.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub warmup_s: u64,

    /// Transport between the nodes and the broker.
    #[arg(long, value_enum, default_value = "tls")]
    pub transport: Transport,

    /// Brokers to test, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "tollway,mosquitto"
    )]
    pub brokers: Vec<BrokerKind>,

    /// Records per batch at most (the edge daemon's `uplink.max_records`).
    #[arg(long, value_name = "N", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..=2000))]
    pub batch_records: u64,

    /// Batches sent and not yet acknowledged per node, at most (the edge
    /// daemon's `uplink.window`).
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub window: u64,

    /// Time a partial batch waits for more records, in milliseconds (the
    /// edge daemon's `uplink.linger_ms`).
    #[arg(long, value_name = "MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub linger_ms: u64,

    /// Time the oldest batch waits for its acknowledgement before the node
    /// sends every unacknowledged batch again, in seconds (the edge
    /// daemon's `uplink.resend_timeout_s`).
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub resend_timeout_s: u64,

    /// Send batches without zstd compression (the daemon compresses by
    /// default).
    #[arg(long)]
    pub no_compress: bool,

    /// `tollway-center` ingest processes, all in one shared-subscription
    /// group, each with its own store.
    #[arg(long, value_name = "K", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=16))]
    pub ingest_processes: u64,

    /// Time the whole fleet has to come up before records start.
    #[arg(long, value_name = "SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub up_timeout_s: u64,

    /// Time after the duration for every record to be acknowledged.
    #[arg(long, value_name = "SECONDS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub drain_timeout_s: u64,

    /// Seed of the record generators; the same seed gives the same records.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct RecordsReport {
    pub scenario: &'static str,
    pub machine: Machine,
    pub nodes: u64,
    /// Fleet rate in records per second; absent in `max` mode.
    pub rate: Option<f64>,
    /// `rate` or `max`.
    pub mode: &'static str,
    pub duration_s: u64,
    pub warmup_s: u64,
    pub transport: Transport,
    pub batch_records: u64,
    pub window: u64,
    pub linger_ms: u64,
    pub compress: bool,
    pub ingest_processes: u64,
    pub runs: Vec<RecordsRun>,
    pub comparisons: Vec<Comparison>,
    /// True when every run acknowledged every record and stored exactly
    /// the records created.
    pub invariants_held: bool,
}

/// One broker's run.
#[derive(Debug, Default, Serialize)]
pub struct RecordsRun {
    pub broker: Option<BrokerKind>,
    /// Seconds until every node was up.
    pub up_seconds: Option<f64>,
    /// Records created (entered an outbox), which is what nodes send.
    pub records_created: u64,
    /// Records acknowledged by the ingest.
    pub records_acknowledged: u64,
    pub batches_sent: u64,
    pub batches_resent: u64,
    /// Sessions lost or connection attempts failed during the run.
    pub session_failures: u64,
    /// Seconds over which `records_per_s` is measured.
    pub measuring_window_s: f64,
    /// Records acknowledged within the measuring window per second.
    pub records_per_s: f64,
    /// Seconds after the duration until every record was acknowledged.
    pub drain_seconds: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    /// Peak CPU over one-second samples, in percent of one core.
    pub broker_peak_cpu_percent: f64,
    pub broker_peak_rss_bytes: Option<u64>,
    pub ingest: Vec<IngestFigures>,
    /// Sum of `records_stored` over the ingest processes.
    pub records_stored: u64,
    /// Sum of `records_duplicate` (resent records dropped) over them.
    pub duplicates_dropped: u64,
    /// Nodes whose highest `stored_through` over the ingest processes is
    /// not their last created seq.
    pub nodes_mismatched: u64,
    /// Every record acknowledged within the drain timeout.
    pub all_acknowledged: bool,
    /// At least one record was created, `records_stored` equals
    /// `records_created` and no node mismatched.
    pub store_matches: bool,
    /// The error that ended the run early, if any.
    pub error: Option<String>,
}

/// One ingest process's figures.
#[derive(Debug, Serialize)]
pub struct IngestFigures {
    pub name: String,
    pub peak_cpu_percent: f64,
    pub peak_rss_bytes: Option<u64>,
    pub batches_received: u64,
    pub batches_invalid: u64,
    pub records_stored: u64,
    pub records_duplicate: u64,
    pub store_errors: u64,
}

/// Runs the scenario and writes the report; returns it for the caller to
/// print and check.
pub async fn run(
    options: &RecordsOptions,
    open_file_limit: u64,
) -> Result<RecordsReport, ScenarioError> {
    options.common.validate()?;
    let machine = Machine::describe(open_file_limit);
    let mut needed = Program::brokers(&options.common.programs(), &options.brokers);
    needed.push(Program::center(options.center.program()));
    preflight::check(&options.common.report, &needed)?;
    let plan = FleetPlan {
        prefix: "records",
        nodes: options.nodes,
        files_per_node: 1,
        tls: options.transport == Transport::Tls,
    };
    let fleet = FleetSetup::create(&plan, open_file_limit)?;

    let programs = options.common.programs();
    let mut runs = Vec::new();
    for &broker in &options.brokers {
        let spec = fleet.spec(&options.common, options.transport);
        tracing::info!(%broker, transport = %options.transport, nodes = fleet.nodes.len(), "records run starting");
        let mut run = RecordsRun {
            broker: Some(broker),
            ..RecordsRun::default()
        };
        if let Err(err) = run_one(options, broker, spec, &fleet.pki, &programs, &mut run).await {
            tracing::error!(%broker, error = %err, "records run ended early");
            run.error = Some(err);
        }
        runs.push(run);
    }

    let report = RecordsReport {
        scenario: "records",
        machine,
        nodes: options.nodes,
        rate: match options.rate {
            Rate::PerSecond(rate) => Some(rate),
            Rate::Max => None,
        },
        mode: match options.rate {
            Rate::PerSecond(_) => "rate",
            Rate::Max => "max",
        },
        duration_s: options.duration_s,
        warmup_s: warmup(options).as_secs(),
        transport: options.transport,
        batch_records: options.batch_records,
        window: options.window,
        linger_ms: options.linger_ms,
        compress: !options.no_compress,
        ingest_processes: options.ingest_processes,
        comparisons: compare(options.transport, &runs),
        invariants_held: runs
            .iter()
            .all(|run| run.error.is_none() && run.all_acknowledged && run.store_matches),
        runs,
    };
    write_json(&options.common.report, &report)?;
    Ok(report)
}

fn warmup(options: &RecordsOptions) -> Duration {
    Duration::from_secs(options.warmup_s.min(options.duration_s / 2))
}

/// The processes of one run, stopped in reverse order of start.
struct Province44 {
    broker: BrokerUnderTest,
    ingest: Vec<CenterProcess>,
}

impl Province44 {
    fn stop(&mut self) {
        for center in &mut self.ingest {
            center.stop();
        }
        if let Err(err) = self.broker.stop() {
            tracing::warn!(broker = %self.broker.kind, error = %err, "broker did not stop cleanly");
        }
    }
}

/// Runs one broker: start broker and ingest, connect the fleet, create
/// records for the duration, drain, check the stores. Fills `run` as it
/// goes, so a run that fails half-way still reports what it measured.
async fn run_one(
    options: &RecordsOptions,
    kind: BrokerKind,
    mut spec: FleetSpec,
    pki: &FleetPki,
    programs: &Programs,
    run: &mut RecordsRun,
) -> Result<(), String> {
    let broker = tokio::task::block_in_place(|| {
        BrokerUnderTest::start(kind, options.transport, &pki.server, programs)
    })
    .map_err(|err| err.to_string())?;
    spec.broker = broker.node_addr;
    let mut province = Province44 {
        broker,
        ingest: Vec::new(),
    };
    let result = drive(options, &mut province, spec, run).await;
    tokio::task::block_in_place(|| province.stop());
    result
}

async fn drive(
    options: &RecordsOptions,
    province: &mut Province44,
    spec: FleetSpec,
    run: &mut RecordsRun,
) -> Result<(), String> {
    for number in 1..=options.ingest_processes {
        let name = format!("ingest-{number}");
        let center = CenterProcess::start(
            &options.center,
            Service::Ingest,
            &name,
            province.broker.service_addr,
        )
        .await
        .map_err(|err: ServiceError| err.to_string())?;
        province.ingest.push(center);
    }

    let sampling = CancellationToken::new();
    let _stop_sampling = sampling.clone().drop_guard();
    let broker_pid = province.broker.pid().unwrap_or(0);
    let broker_cpu = CpuSampler::start(broker_pid, sampling.clone());
    let broker_rss = RssSampler::start(broker_pid, sampling.clone());
    let ingest_samplers: Vec<(CpuSampler, RssSampler)> = province
        .ingest
        .iter()
        .map(|center| {
            let pid = center.pid().unwrap_or(0);
            (
                CpuSampler::start(pid, sampling.clone()),
                RssSampler::start(pid, sampling.clone()),
            )
        })
        .collect();

    let nodes = spec.nodes.clone();
    let settings = UplinkSettings {
        batch_records: options.batch_records as usize,
        window: options.window as usize,
        linger: Duration::from_millis(options.linger_ms),
        resend_timeout: Duration::from_secs(options.resend_timeout_s),
        compress: !options.no_compress,
    };
    let pace = match options.rate {
        Rate::PerSecond(rate) => Pace::Rate(rate / nodes.len() as f64),
        Rate::Max => Pace::Ceiling,
    };
    let tracked_seconds =
        (options.up_timeout_s + options.duration_s + options.drain_timeout_s + 60) as usize;
    let fleet = RecordFleet::start(spec, settings, pace, options.seed, tracked_seconds);

    let connecting = Instant::now();
    if !fleet
        .wait_all_up(Duration::from_secs(options.up_timeout_s))
        .await
    {
        let up = fleet.stats().sessions.up();
        fleet.stop(FLEET_STOP_DEADLINE).await;
        return Err(format!(
            "only {up} of {} nodes came up within {} s",
            nodes.len(),
            options.up_timeout_s
        ));
    }
    run.up_seconds = Some(connecting.elapsed().as_secs_f64());
    // The connection storm is over; CPU peaks from here on are the records'.
    broker_cpu.take_peak();
    for (cpu, _) in &ingest_samplers {
        cpu.take_peak();
    }

    let started = Instant::now();
    fleet.set_phase(Phase::Create);
    tracing::info!(
        nodes = nodes.len(),
        duration_s = options.duration_s,
        "creating records"
    );
    tokio::time::sleep(Duration::from_secs(options.duration_s)).await;
    let ended = Instant::now();
    fleet.set_phase(Phase::Drain);

    let drained = fleet
        .wait_all_acknowledged(Duration::from_secs(options.drain_timeout_s))
        .await;
    run.drain_seconds = drained.then(|| ended.elapsed().as_secs_f64());
    run.all_acknowledged = drained;

    let stats = fleet.stats();
    run.records_created = UplinkStats::load(&stats.created);
    run.records_acknowledged = UplinkStats::load(&stats.acknowledged);
    run.batches_sent = UplinkStats::load(&stats.batches_sent);
    run.batches_resent = UplinkStats::load(&stats.batches_resent);
    run.session_failures = UplinkStats::load(&stats.session_failures);
    let measured_from = started + warmup(options);
    run.measuring_window_s = ended.duration_since(measured_from).as_secs_f64();
    run.records_per_s =
        stats.acknowledged_between(measured_from, ended) as f64 / run.measuring_window_s.max(1e-9);
    let latencies = fleet.latencies();
    if !latencies.is_empty() {
        let ms = |micros: u64| micros as f64 / 1000.0;
        run.latency_p50_ms = Some(ms(latencies.value_at_quantile(0.50)));
        run.latency_p99_ms = Some(ms(latencies.value_at_quantile(0.99)));
        run.latency_max_ms = Some(ms(latencies.max()));
    }
    run.broker_peak_cpu_percent = broker_cpu.take_peak();
    run.broker_peak_rss_bytes = broker_rss.peak();

    // The stores: counters first, then every node's watermark. The fleet
    // stops whatever the check finds.
    let checked = check_stores(&province.ingest, &ingest_samplers, &nodes, stats, run).await;
    if !fleet.stop(FLEET_STOP_DEADLINE).await {
        tracing::warn!("record fleet did not stop in time");
    }
    checked
}

/// Reads every ingest process's counters and every node's watermark into
/// `run`, and decides whether the stores hold exactly the records created.
async fn check_stores(
    ingest: &[CenterProcess],
    samplers: &[(CpuSampler, RssSampler)],
    nodes: &[NodeId],
    stats: &UplinkStats,
    run: &mut RecordsRun,
) -> Result<(), String> {
    for (center, (cpu, rss)) in ingest.iter().zip(samplers) {
        let counters = center.stats().await.map_err(|err| err.to_string())?;
        let counter = |name: &str| counters[name].as_u64().unwrap_or(0);
        run.ingest.push(IngestFigures {
            name: center.name.clone(),
            peak_cpu_percent: cpu.take_peak(),
            peak_rss_bytes: rss.peak(),
            batches_received: counter("batches_received"),
            batches_invalid: counter("batches_invalid"),
            records_stored: counter("records_stored"),
            records_duplicate: counter("records_duplicate"),
            store_errors: counter("store_errors"),
        });
    }
    run.records_stored = run.ingest.iter().map(|ingest| ingest.records_stored).sum();
    run.duplicates_dropped = run
        .ingest
        .iter()
        .map(|ingest| ingest.records_duplicate)
        .sum();
    run.nodes_mismatched = count_mismatched_nodes(ingest, nodes, stats).await?;
    // A run that created nothing proves nothing, e.g. `--rate 0.001` over
    // a short duration.
    if run.records_created == 0 {
        tracing::warn!(
            "no record was created, so the run proves nothing; raise --rate or --duration-s"
        );
    }
    run.store_matches = run.records_created > 0
        && run.records_stored == run.records_created
        && run.nodes_mismatched == 0;
    Ok(())
}

/// Counts the nodes whose highest `stored_through` over the ingest
/// processes differs from their last created seq.
async fn count_mismatched_nodes(
    ingest: &[CenterProcess],
    nodes: &[NodeId],
    stats: &UplinkStats,
) -> Result<u64, String> {
    let mut mismatched = 0;
    for (index, node) in nodes.iter().enumerate() {
        let mut stored_through = 0;
        for center in ingest {
            let body = center
                .get(&format!("/v1/nodes/{PROVINCE}/{node}"))
                .await
                .map_err(|err| err.to_string())?;
            stored_through = stored_through.max(body["stored_through"].as_u64().unwrap_or(0));
        }
        let (created_through, _) = stats.node_seqs(index);
        if stored_through != created_through {
            if mismatched < 10 {
                tracing::warn!(%node, stored_through, created_through, "store does not hold exactly the node's records");
            }
            mismatched += 1;
        }
    }
    Ok(mismatched)
}

/// Compares the runs whose invariants held; a run that lost records has no
/// figure worth a ratio, so its side stays empty.
fn compare(transport: Transport, runs: &[RecordsRun]) -> Vec<Comparison> {
    let find = |kind| {
        runs.iter().find(|run| {
            run.broker == Some(kind)
                && run.error.is_none()
                && run.all_acknowledged
                && run.store_matches
        })
    };
    let (ours, theirs) = (find(BrokerKind::Tollway), find(BrokerKind::Mosquitto));
    let metric = |name: &'static str, value: fn(&RecordsRun) -> Option<f64>| {
        Comparison::new(
            transport.to_string(),
            name,
            ours.and_then(value),
            theirs.and_then(value),
        )
    };
    vec![
        metric("records_per_s", |run| Some(run.records_per_s)),
        metric("latency_p50_ms", |run| run.latency_p50_ms),
        metric("latency_p99_ms", |run| run.latency_p99_ms),
        metric("broker_peak_cpu_percent", |run| {
            Some(run.broker_peak_cpu_percent)
        }),
        metric("broker_peak_rss_mib", |run| {
            run.broker_peak_rss_bytes
                .map(|bytes| bytes as f64 / (1024.0 * 1024.0))
        }),
    ]
}

/// Prints the summary table to standard output.
pub fn print_summary(report: &RecordsReport) {
    let rate = report
        .rate
        .map_or_else(|| "max".to_string(), |rate| format!("{rate}/s"));
    println!(
        "records: {} nodes, rate {rate}, {} s, {}, batch {} window {}",
        report.nodes, report.duration_s, report.transport, report.batch_records, report.window
    );
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>5}",
        "broker",
        "created",
        "acked",
        "rec/s",
        "p50 ms",
        "p99 ms",
        "brk cpu%",
        "brk MiB",
        "ing cpu%",
        "ing MiB",
        "ok"
    );
    for run in &report.runs {
        let broker = run
            .broker
            .map_or_else(|| "-".to_string(), |b| b.to_string());
        let ingest_cpu = run
            .ingest
            .iter()
            .map(|i| i.peak_cpu_percent)
            .fold(None, |max: Option<f64>, v| {
                Some(max.map_or(v, |m| m.max(v)))
            });
        let ingest_rss = run.ingest.iter().filter_map(|i| i.peak_rss_bytes).max();
        let ok = run.error.is_none() && run.all_acknowledged && run.store_matches;
        println!(
            "{:<10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>5}",
            broker,
            run.records_created,
            run.records_acknowledged,
            cell(Some(run.records_per_s), 0),
            cell(run.latency_p50_ms, 1),
            cell(run.latency_p99_ms, 1),
            cell(Some(run.broker_peak_cpu_percent), 0),
            mib(run.broker_peak_rss_bytes),
            cell(ingest_cpu, 0),
            mib(ingest_rss),
            if ok { "yes" } else { "NO" },
        );
        if let Some(error) = &run.error {
            println!("  {broker}: {error}");
        }
    }
    for comparison in &report.comparisons {
        println!(
            "  {:<24} tollway {:>10} mosquitto {:>10} ratio {:>6}",
            comparison.metric,
            cell(comparison.tollway, 1),
            cell(comparison.mosquitto, 1),
            cell(comparison.ratio, 2),
        );
    }
}
