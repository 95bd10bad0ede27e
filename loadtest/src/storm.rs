//! The `storm` scenario: a fleet of N nodes connects to a broker, then
//! every node drops and reconnects with the edge daemon's back-off, round
//! after round. Then the broker restarts under the fleet, once with the
//! back-off and once with naive clients (fixed delay, no jitter). The same
//! runs against Tollway's broker and Mosquitto, over TLS and plain TCP, one
//! after the other in the same process.
//!
//! Each round reports whether every node came back, how long that took,
//! the peak connection attempts per second, the broker's peak CPU and its
//! resident memory (VmRSS) after the round settled.
//!
//! Bounds: every round ends when all nodes are back or after
//! `--round-timeout-s`, so a run lasts at most (rounds + 3) times
//! (round timeout + settle time) plus broker start-up, per broker and
//! transport.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::fleet::{Fleet, FleetCounters, FleetSpec, RetryPolicy};
use crate::options::CommonOptions;
use crate::pki::FleetPki;
use crate::preflight::{self, Program};
use crate::process::{CpuSampler, rss_bytes};
use crate::report::{Comparison, Machine, cell, median, mib, write_json};
use crate::servers::{BrokerKind, BrokerUnderTest, Programs, ServerError, Transport};
use crate::setup::{FleetPlan, FleetSetup, ScenarioError};

/// Target: RSS after the last drop round within this share of round one.
const RSS_GROWTH_TARGET: f64 = 0.15;
/// Time the fleet has to stop after the last round.
const FLEET_STOP_DEADLINE: Duration = Duration::from_secs(30);

/// Options of the `storm` scenario.
#[derive(Debug, Clone, Args)]
pub struct StormOptions {
    #[command(flatten)]
    pub common: CommonOptions,

    /// Number of simulated nodes. Each uses one socket in this process and
    /// one in the broker, so keep it below the open-file limit less a few
    /// hundred.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub nodes: u64,

    /// Drop-and-reconnect rounds after the first connection.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,

    /// Brokers to test, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "tollway,mosquitto"
    )]
    pub brokers: Vec<BrokerKind>,

    /// Transports to test, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "tls,tcp")]
    pub transports: Vec<Transport>,

    /// Skip the broker-restart rounds (back-off and naive).
    #[arg(long)]
    pub no_restart: bool,

    /// Fixed retry delay of the naive client in the last restart round,
    /// in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub naive_delay_ms: u64,

    /// Maximum time a round may take before it is reported as not all back.
    #[arg(long, value_name = "SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub round_timeout_s: u64,

    /// Time after all nodes are back before the broker's RSS is read.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub settle_ms: u64,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct StormReport {
    pub scenario: &'static str,
    pub machine: Machine,
    pub nodes: u64,
    pub rounds: u32,
    pub keep_alive_s: u64,
    pub connect_timeout_s: u64,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    pub naive_delay_ms: u64,
    pub runs: Vec<StormRun>,
    pub comparisons: Vec<Comparison>,
    /// True when every round of every run brought all nodes back.
    pub all_back: bool,
}

/// One broker with one transport.
#[derive(Debug, Serialize)]
pub struct StormRun {
    pub broker: BrokerKind,
    pub transport: Transport,
    pub nodes: usize,
    /// Broker RSS before any node connected.
    pub baseline_rss_bytes: Option<u64>,
    pub rounds: Vec<RoundReport>,
    /// (RSS after round 1 - baseline) / nodes.
    pub per_connection_bytes: Option<f64>,
    /// (RSS after the last drop round / RSS after round 1) - 1, in percent.
    pub rss_growth_percent: Option<f64>,
    /// True when that growth is within 15%.
    pub rss_target_met: Option<bool>,
    /// Median time of the drop rounds in which all nodes came back.
    pub median_drop_round_s: Option<f64>,
    /// The error that ended the run early, if any.
    pub error: Option<String>,
}

/// The trigger of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoundKind {
    /// The fleet's first connection.
    Initial,
    /// Every node closed its session at once.
    Drop,
    /// The broker was stopped (SIGTERM) and started again.
    Restart,
}

/// Failed connection attempts of one round, by cause.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FailureCauses {
    /// No CONNACK within the connect timeout.
    pub connect_timeouts: u64,
    /// A CONNACK with a refusal code.
    pub connect_refusals: u64,
    /// Those refusals by return code, e.g. `ServiceUnavailable`.
    pub refusal_codes: BTreeMap<String, u64>,
    /// A TCP or TLS error before CONNACK, including a closed connection.
    pub connect_errors: u64,
    /// The session failed after CONNACK but before SUBACK.
    pub lost_before_up: u64,
    /// A SUBACK refused one of the node's own topics; the node closes the
    /// session and retries.
    pub subscribe_rejections: u64,
}

impl FailureCauses {
    fn between(
        before: &FleetCounters,
        after: &FleetCounters,
        codes_before: &BTreeMap<String, u64>,
        codes_after: &BTreeMap<String, u64>,
    ) -> Self {
        let refusal_codes = codes_after
            .iter()
            .map(|(code, count)| (code.clone(), count - codes_before.get(code).unwrap_or(&0)))
            .filter(|(_, count)| *count > 0)
            .collect();
        FailureCauses {
            refusal_codes,
            connect_timeouts: after.connect_timeouts - before.connect_timeouts,
            connect_refusals: after.connect_refusals - before.connect_refusals,
            connect_errors: after.connect_errors - before.connect_errors,
            lost_before_up: after.lost_before_up - before.lost_before_up,
            subscribe_rejections: after.subscribe_rejections - before.subscribe_rejections,
        }
    }
}

/// One round's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RoundReport {
    pub round: u32,
    pub kind: RoundKind,
    /// `backoff` or `fixed`.
    pub retry: &'static str,
    /// True when every node was up again within the round timeout.
    pub all_back: bool,
    /// Nodes up when the round ended.
    pub back: usize,
    /// Seconds from the trigger until every node was back; absent when not
    /// all came back.
    pub seconds: Option<f64>,
    pub connect_attempts: u64,
    /// Attempts that ended before the session was up (refused, timed out,
    /// connection failed).
    pub failed_attempts: u64,
    /// The failed attempts by cause.
    pub failures_by_cause: FailureCauses,
    pub peak_connect_attempts_per_s: u32,
    /// Peak CPU of the broker over one-second samples, in percent of one
    /// core. A round shorter than two seconds may show 0.
    pub broker_peak_cpu_percent: f64,
    pub rss_bytes_after: Option<u64>,
}

/// Runs the scenario and writes the report; returns it for the caller to
/// print and check.
pub async fn run(
    options: &StormOptions,
    open_file_limit: u64,
) -> Result<StormReport, ScenarioError> {
    options.common.validate()?;
    let machine = Machine::describe(open_file_limit);
    let needed = Program::brokers(&options.common.programs(), &options.brokers);
    preflight::check(&options.common.report, &needed)?;
    let plan = FleetPlan {
        prefix: "storm",
        nodes: options.nodes,
        files_per_node: 1,
        tls: options.transports.contains(&Transport::Tls),
    };
    let fleet = FleetSetup::create(&plan, open_file_limit)?;

    let programs = options.common.programs();
    let mut runs = Vec::new();
    for &transport in &options.transports {
        for &broker in &options.brokers {
            let spec = fleet.spec(&options.common, transport);
            tracing::info!(%broker, %transport, nodes = fleet.nodes.len(), "storm run starting");
            let run = run_one(options, broker, transport, spec, &fleet.pki, &programs).await;
            runs.push(run);
        }
    }

    let report = StormReport {
        scenario: "storm",
        machine,
        nodes: options.nodes,
        rounds: options.rounds,
        keep_alive_s: options.common.keep_alive_s,
        connect_timeout_s: options.common.connect_timeout_s,
        backoff_base_ms: options.common.backoff_base_ms,
        backoff_cap_ms: options.common.backoff_cap_ms,
        naive_delay_ms: options.naive_delay_ms,
        comparisons: compare(&runs),
        all_back: runs
            .iter()
            .all(|run| run.error.is_none() && run.rounds.iter().all(|round| round.all_back)),
        runs,
    };
    write_json(&options.common.report, &report)?;
    Ok(report)
}

/// Runs every round against one broker; a broker that fails to start or
/// restart ends the run with its error in the report.
async fn run_one(
    options: &StormOptions,
    kind: BrokerKind,
    transport: Transport,
    mut spec: FleetSpec,
    pki: &FleetPki,
    programs: &Programs,
) -> StormRun {
    let mut run = StormRun {
        broker: kind,
        transport,
        nodes: spec.nodes.len(),
        baseline_rss_bytes: None,
        rounds: Vec::new(),
        per_connection_bytes: None,
        rss_growth_percent: None,
        rss_target_met: None,
        median_drop_round_s: None,
        error: None,
    };

    let mut broker = match tokio::task::block_in_place(|| {
        BrokerUnderTest::start(kind, transport, &pki.server, programs)
    }) {
        Ok(broker) => broker,
        Err(err) => {
            tracing::error!(broker = %kind, %transport, error = %err, "broker did not start");
            run.error = Some(err.to_string());
            return run;
        }
    };
    spec.broker = broker.node_addr;

    let sampling = CancellationToken::new();
    let cpu = CpuSampler::start(broker.pid().unwrap_or(0), sampling.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.baseline_rss_bytes = broker.pid().and_then(rss_bytes);

    let fleet = Fleet::start(spec);
    let mut rounds = Rounds {
        options,
        fleet: &fleet,
        cpu: &cpu,
    };
    let result = rounds.run_all(&mut broker, &mut run.rounds).await;
    if let Err(err) = result {
        tracing::error!(broker = %kind, %transport, error = %err, "storm run ended early");
        run.error = Some(err.to_string());
    }

    if let Err(err) = fleet.stop(FLEET_STOP_DEADLINE).await {
        tracing::warn!(error = %err, "fleet did not stop in time");
    }
    if let Err(err) = tokio::task::block_in_place(|| broker.stop()) {
        tracing::warn!(broker = %kind, error = %err, "broker did not stop cleanly");
    }
    sampling.cancel();

    summarise(&mut run);
    run
}

/// The round loop of one run.
struct Rounds<'a> {
    options: &'a StormOptions,
    fleet: &'a Fleet,
    cpu: &'a CpuSampler,
}

impl Rounds<'_> {
    async fn run_all(
        &mut self,
        broker: &mut BrokerUnderTest,
        rounds: &mut Vec<RoundReport>,
    ) -> Result<(), ServerError> {
        let backoff = self.options.common.retry();
        let naive = RetryPolicy::Fixed(Duration::from_millis(self.options.naive_delay_ms));

        // The fleet is already connecting: round 0 measures from now.
        rounds.push(self.round(0, RoundKind::Initial, backoff, broker).await?);
        for number in 1..=self.options.rounds {
            rounds.push(self.round(number, RoundKind::Drop, backoff, broker).await?);
        }
        if !self.options.no_restart {
            let next = self.options.rounds + 1;
            rounds.push(
                self.round(next, RoundKind::Restart, backoff, broker)
                    .await?,
            );
            self.fleet.set_retry(naive);
            rounds.push(
                self.round(next + 1, RoundKind::Restart, naive, broker)
                    .await?,
            );
            self.fleet.set_retry(backoff);
        }
        Ok(())
    }

    async fn round(
        &mut self,
        number: u32,
        kind: RoundKind,
        retry: RetryPolicy,
        broker: &mut BrokerUnderTest,
    ) -> Result<RoundReport, ServerError> {
        let before = self.fleet.stats().counters();
        let codes_before = match kind {
            RoundKind::Initial => BTreeMap::new(),
            _ => self.fleet.stats().refusal_codes(),
        };
        let ups_before = match kind {
            // The initial round counts every session since the start.
            RoundKind::Initial => 0,
            _ => before.ups,
        };
        self.cpu.take_peak();
        let started = Instant::now();

        match kind {
            RoundKind::Initial => {}
            RoundKind::Drop => self.fleet.drop_all(),
            RoundKind::Restart => {
                tokio::task::block_in_place(|| broker.restart())?;
                self.cpu.follow(broker.pid().unwrap_or(0));
            }
        }

        let timeout = Duration::from_secs(self.options.round_timeout_s);
        let waited = self.fleet.wait_all_back(ups_before, timeout).await;
        let ended = Instant::now();
        let broker_peak_cpu_percent = self.cpu.take_peak();
        tokio::time::sleep(Duration::from_millis(self.options.settle_ms)).await;

        let after = self.fleet.stats().counters();
        // The initial round counts everything since the fleet started.
        let before = match kind {
            RoundKind::Initial => FleetCounters::default(),
            _ => before,
        };
        let report = RoundReport {
            round: number,
            kind,
            retry: retry.name(),
            all_back: waited.is_some(),
            back: after.up,
            seconds: waited.map(|d| d.as_secs_f64()),
            connect_attempts: after.attempts - before.attempts,
            failed_attempts: after.failures - before.failures,
            failures_by_cause: FailureCauses::between(
                &before,
                &after,
                &codes_before,
                &self.fleet.stats().refusal_codes(),
            ),
            peak_connect_attempts_per_s: self
                .fleet
                .stats()
                .peak_attempts_per_second(started, ended),
            broker_peak_cpu_percent,
            rss_bytes_after: broker.pid().and_then(rss_bytes),
        };
        tracing::info!(
            broker = %broker.kind,
            transport = %broker.transport,
            round = number,
            kind = ?kind,
            all_back = report.all_back,
            back = report.back,
            seconds = ?report.seconds,
            rss_mib = %mib(report.rss_bytes_after),
            "round finished"
        );
        Ok(report)
    }
}

/// Fills the run's derived figures from its rounds.
fn summarise(run: &mut StormRun) {
    let drops: Vec<&RoundReport> = run
        .rounds
        .iter()
        .filter(|round| round.kind == RoundKind::Drop)
        .collect();
    let first = drops.first().and_then(|round| round.rss_bytes_after);
    let last = drops.last().and_then(|round| round.rss_bytes_after);

    if let (Some(first), Some(baseline)) = (first, run.baseline_rss_bytes)
        && run.nodes > 0
    {
        run.per_connection_bytes = Some((first as f64 - baseline as f64) / run.nodes as f64);
    }
    if let (Some(first), Some(last)) = (first, last)
        && first > 0
    {
        let growth = last as f64 / first as f64 - 1.0;
        run.rss_growth_percent = Some(growth * 100.0);
        run.rss_target_met = Some(growth <= RSS_GROWTH_TARGET);
    }
    let times: Vec<f64> = drops.iter().filter_map(|round| round.seconds).collect();
    run.median_drop_round_s = median(&times);
}

/// Reads one figure of a run for the comparison table.
type RunFigure = fn(&StormRun) -> Option<f64>;

/// Compares Tollway with Mosquitto per transport, for every run pair.
fn compare(runs: &[StormRun]) -> Vec<Comparison> {
    let mut comparisons = Vec::new();
    for transport in [Transport::Tls, Transport::Tcp] {
        let find = |kind| {
            runs.iter()
                .find(|run| run.broker == kind && run.transport == transport)
        };
        let (Some(ours), Some(theirs)) = (find(BrokerKind::Tollway), find(BrokerKind::Mosquitto))
        else {
            continue;
        };
        let metrics: [(&'static str, RunFigure); 7] = [
            ("median_drop_round_s", |run| run.median_drop_round_s),
            ("restart_backoff_round_s", |run| {
                restart_seconds(run, "backoff")
            }),
            ("restart_naive_round_s", |run| restart_seconds(run, "fixed")),
            ("rss_after_last_drop_round_mib", |run| {
                last_drop(run)
                    .and_then(|round| round.rss_bytes_after)
                    .map(|b| b as f64 / 1048576.0)
            }),
            ("per_connection_bytes", |run| run.per_connection_bytes),
            // Peaks leave out the first connection, in which every node
            // tries at once by construction.
            ("peak_broker_cpu_percent", |run| {
                reconnect_rounds(run)
                    .map(|round| round.broker_peak_cpu_percent)
                    .reduce(f64::max)
            }),
            ("peak_connect_attempts_per_s", |run| {
                reconnect_rounds(run)
                    .map(|round| f64::from(round.peak_connect_attempts_per_s))
                    .reduce(f64::max)
            }),
        ];
        for (metric, figure) in metrics {
            comparisons.push(Comparison::new(
                transport.to_string(),
                metric,
                figure(ours),
                figure(theirs),
            ));
        }
    }
    comparisons
}

fn reconnect_rounds(run: &StormRun) -> impl Iterator<Item = &RoundReport> {
    run.rounds
        .iter()
        .filter(|round| round.kind != RoundKind::Initial)
}

fn restart_seconds(run: &StormRun, retry: &str) -> Option<f64> {
    run.rounds
        .iter()
        .find(|round| round.kind == RoundKind::Restart && round.retry == retry)
        .and_then(|round| round.seconds)
}

fn last_drop(run: &StormRun) -> Option<&RoundReport> {
    run.rounds
        .iter()
        .rev()
        .find(|round| round.kind == RoundKind::Drop)
}

/// Prints the rounds and the comparison as plain-text tables.
pub fn print_summary(report: &StormReport) {
    println!(
        "storm: {} nodes, {} drop rounds, back-off {}-{} ms, naive delay {} ms",
        report.nodes,
        report.rounds,
        report.backoff_base_ms,
        report.backoff_cap_ms,
        report.naive_delay_ms
    );
    println!(
        "{:<10} {:<5} {:>5} {:<8} {:<8} {:>8} {:>9} {:>9} {:>7} {:>8} {:>8} {:>9}",
        "broker",
        "link",
        "round",
        "kind",
        "retry",
        "back",
        "seconds",
        "attempts",
        "failed",
        "peak/s",
        "cpu%",
        "rss MiB"
    );
    for run in &report.runs {
        for round in &run.rounds {
            println!(
                "{:<10} {:<5} {:>5} {:<8} {:<8} {:>8} {:>9} {:>9} {:>7} {:>8} {:>8.0} {:>9}",
                run.broker.to_string(),
                run.transport.to_string(),
                round.round,
                format!("{:?}", round.kind).to_lowercase(),
                round.retry,
                format!("{}{}", round.back, if round.all_back { "" } else { "!" }),
                cell(round.seconds, 1),
                round.connect_attempts,
                round.failed_attempts,
                round.peak_connect_attempts_per_s,
                round.broker_peak_cpu_percent,
                mib(round.rss_bytes_after),
            );
        }
        println!(
            "{:<10} {:<5} per connection {} bytes, RSS growth {}% (target 15%), median drop round {} s{}",
            run.broker.to_string(),
            run.transport.to_string(),
            cell(run.per_connection_bytes, 0),
            cell(run.rss_growth_percent, 1),
            cell(run.median_drop_round_s, 2),
            run.error
                .as_ref()
                .map(|e| format!(", error: {e}"))
                .unwrap_or_default(),
        );
    }
    if !report.comparisons.is_empty() {
        println!();
        println!(
            "{:<5} {:<30} {:>12} {:>12} {:>8}",
            "link", "metric", "tollway", "mosquitto", "ratio"
        );
        for c in &report.comparisons {
            println!(
                "{:<5} {:<30} {:>12} {:>12} {:>8}",
                c.transport,
                c.metric,
                cell(c.tollway, 2),
                cell(c.mosquitto, 2),
                cell(c.ratio, 2)
            );
        }
    }
    println!(
        "all nodes back in every round: {}",
        if report.all_back { "yes" } else { "NO" }
    );
}
