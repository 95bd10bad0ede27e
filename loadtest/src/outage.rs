//! The `outage` scenario: toll records flow from simulated nodes through a
//! province to the national centre while the link between them is slow,
//! cut and dropped, and every record must arrive at the national store
//! exactly once.
//!
//! The chain is the real one ([`crate::chain`]): provincial broker, ingest
//! and forwarder, bridge, and national broker and ingest, with the
//! [`FaultProxy`] on the bridge's national connection. The proxy caps the
//! link's bandwidth (3 Mbit/s by default) and delays each direction for
//! the whole run; at `--cut-at-s` it cuts the link for `--cut-s`, and after
//! the cut it drops the bridge's connection `--drops` times. Nodes produce
//! records at `--rate` for `--duration-s`, then the scenario waits (at most
//! `--drain-timeout-s`) until the national store has caught up.
//!
//! What it reports, from the stores' own query APIs at the end:
//! - records lost: for each node, the records it produced beyond its
//!   contiguous watermark in the national store (`stored_through`);
//! - duplicates stored: national record rows beyond one per record,
//!   counted from the per-hour totals of each gantry, whose fee sums must
//!   also equal the fees the nodes produced;
//! - drain time: from the end of the cut until the national store held
//!   every record the province had stored when the link returned.
//!
//! The exit code is 0 only when nothing was lost, nothing was stored twice,
//! the fee sums match and every node's records were acknowledged.

use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tokio::time::{Instant, sleep};
use tollway_runtime::BackoffConfig;
use tollway_topics::{NodeId, Province};

use crate::chain::{Chain, ChainError, ChainPrograms, ChainSettings, stat};
use crate::options::{CommonOptions, OptionsError};
use crate::pki::{FleetPki, PkiError};
use crate::preflight;
use crate::proxy::CutMode;
use crate::report::{Machine, ReportError, cell, write_json};
use crate::service::{ServiceError, get_json};
use crate::setup::PROVINCE;
use crate::uplink::{NodeTally, UplinkFleet, UplinkSpec};

/// How often the scenario samples the stores' counters.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);
/// Time the nodes have to get their last records acknowledged by the
/// province once they stop producing.
const PROVINCE_ACK_TIMEOUT: Duration = Duration::from_secs(120);
/// Records the nodes' in-memory outboxes hold at most, per node.
const MAX_OUTBOX: usize = 200_000;

/// Options of the `outage` scenario.
#[derive(Debug, Clone, Args)]
pub struct OutageOptions {
    #[command(flatten)]
    pub common: CommonOptions,

    /// Simulated nodes, one gantry each.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=2000))]
    pub nodes: u64,

    /// Records per second of the whole fleet.
    #[arg(long, value_name = "RECORDS", default_value_t = 500.0)]
    pub rate: f64,

    /// Seconds during which nodes produce records.
    #[arg(long, value_name = "SECONDS", default_value_t = 180,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration_s: u64,

    /// Seconds after the start when the national link is cut.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub cut_at_s: u64,

    /// Seconds the national link stays cut; 0 for no cut.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub cut_s: u64,

    /// `refuse` closes the bridge's connection and refuses new ones during
    /// the cut; `stall` keeps it open and moves no byte.
    #[arg(long, value_enum, default_value_t = CutModeArg::Refuse)]
    pub cut_mode: CutModeArg,

    /// Bandwidth of the national link in bits per second, each direction;
    /// 0 for no cap.
    #[arg(long, value_name = "BITS", default_value_t = 3_000_000)]
    pub link_bps: u64,

    /// One-way delay of the national link, milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30)]
    pub delay_ms: u64,

    /// Times the bridge's national connection is dropped after the cut,
    /// spread evenly over the rest of the run.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=100))]
    pub drops: u64,

    /// The bridge's own cap toward the national broker, bytes per second;
    /// 0 for none.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub bridge_up_bytes: u64,

    /// Records per batch at most (the edge daemon's default).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=2000))]
    pub batch_records: u64,

    /// Maximum wait for the national store to catch up after the nodes
    /// stop producing, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub drain_timeout_s: u64,

    /// Log filter of the programs the scenario starts.
    #[arg(long, value_name = "FILTER", default_value = "warn")]
    pub services_log: String,
}

/// The cut's kind, as a command-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CutModeArg {
    Refuse,
    Stall,
}

impl From<CutModeArg> for CutMode {
    fn from(mode: CutModeArg) -> Self {
        match mode {
            CutModeArg::Refuse => CutMode::Refuse,
            CutModeArg::Stall => CutMode::Stall,
        }
    }
}

/// Errors that stop the scenario before it has a report.
#[derive(Debug, thiserror::Error)]
pub enum OutageError {
    #[error(transparent)]
    Options(#[from] OptionsError),

    #[error("cannot create a run directory: {0}")]
    TempDir(#[source] std::io::Error),

    #[error(transparent)]
    Pki(#[from] PkiError),

    #[error(transparent)]
    Chain(#[from] ChainError),

    #[error("reading the stores: {0}")]
    Query(#[from] ServiceError),

    #[error(transparent)]
    Report(#[from] ReportError),
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct OutageReport {
    pub scenario: &'static str,
    pub machine: Machine,
    pub nodes: u64,
    pub rate: f64,
    pub duration_s: u64,
    pub cut_at_s: u64,
    pub cut_s: u64,
    pub cut_mode: CutModeArg,
    pub link_bps: u64,
    pub delay_ms: u64,
    pub drops: u64,
    /// Records the nodes produced (and so must reach the nation).
    pub records_produced: u64,
    /// Records the simulated apps offered while the nodes' outboxes were
    /// full; not produced, so not counted anywhere else.
    pub records_refused: u64,
    /// Records the province acknowledged to the nodes.
    pub records_acknowledged: u64,
    pub province_records_stored: u64,
    pub national_records_stored: u64,
    /// Produced records beyond each node's contiguous watermark in the
    /// national store, summed over nodes. Must be 0. When a record is
    /// missing, every later record of that node counts too, so a non-zero
    /// figure is an upper bound.
    pub records_lost: u64,
    /// Record rows in the national store beyond one per record. Must be 0.
    pub duplicates_stored: u64,
    /// Forwarded records the national ingest received again and dropped:
    /// the resends that made the run safe.
    pub duplicates_dropped: u64,
    pub forward_batches_sent: u64,
    pub forward_resends: u64,
    /// Whether the national per-hour fee and pay-fee sums equal the
    /// produced records' sums.
    pub fee_sums_match: bool,
    /// Records the province held and the nation did not when the link came
    /// back.
    pub backlog_at_restore: Option<u64>,
    /// Seconds from the end of the cut until the nation held them.
    pub drain_after_restore_s: Option<f64>,
    /// Seconds from the end of production until the nation held every
    /// record.
    pub drain_after_production_s: Option<f64>,
    /// Bytes the proxy carried toward the nation and back.
    pub link_bytes_up: u64,
    pub link_bytes_down: u64,
    /// Stores' counters every second, for plotting the backlog.
    pub timeline: Vec<Sample>,
    pub nodes_detail: Vec<NodeTally>,
    /// True when every invariant held.
    pub invariants_held: bool,
}

/// The counters at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub produced: u64,
    pub acknowledged: u64,
    pub province_stored: u64,
    pub national_stored: u64,
}

pub async fn run(
    options: &OutageOptions,
    open_file_limit: u64,
) -> Result<OutageReport, OutageError> {
    validate(options)?;
    let machine = Machine::describe(open_file_limit);
    let programs = ChainPrograms::beside_broker(options.common.programs());
    preflight::check(&options.common.report, &programs.needed())?;
    let province = Province::new(PROVINCE).map_err(|err| OptionsError(err.to_string()))?;
    let nodes: Vec<NodeId> = (0..options.nodes)
        .map(|index| NodeId::new(format!("outage-{index:04}")))
        .collect::<Result<_, _>>()
        .map_err(|err| OptionsError(err.to_string()))?;

    let dir = tempfile::Builder::new()
        .prefix("tollway-loadtest-outage-")
        .tempdir()
        .map_err(OutageError::TempDir)?;
    let pki = FleetPki::create(dir.path())?;
    let tls = pki.client_configs(&nodes)?;
    let settings = ChainSettings {
        bridge_up_bytes_per_second: options.bridge_up_bytes,
        bridge_backoff_ms: (1000, 60_000),
        log: options.services_log.clone(),
    };
    let chain = Chain::start(dir.path(), &pki.server, &programs, &settings).await?;
    chain
        .proxy
        .set_delay(Duration::from_millis(options.delay_ms));
    chain
        .proxy
        .set_bandwidth((options.link_bps > 0).then_some(options.link_bps / 8));
    tracing::info!(
        nodes = nodes.len(),
        rate = options.rate,
        link_bps = options.link_bps,
        "outage run starting"
    );

    let fleet = UplinkFleet::start(UplinkSpec {
        province,
        broker: chain.node_addr,
        nodes: nodes.clone(),
        tls,
        rate: options.rate,
        batch_records: options.batch_records as usize,
        linger: Duration::from_millis(500),
        window: 4,
        resend_timeout: Duration::from_secs(30),
        max_outbox: MAX_OUTBOX,
        keep_alive: options.common.keep_alive(),
        backoff: BackoffConfig {
            base_ms: options.common.backoff_base_ms,
            cap_ms: options.common.backoff_cap_ms,
        },
    });
    let run = drive(options, &chain, &fleet).await;
    let tallies = fleet.stop().await;
    let run = run?;

    let counts = national_counts(&chain, &tallies).await?;
    let report = build_report(options, machine, &chain, run, counts, tallies).await?;
    chain.stop();
    write_json(&options.common.report, &report)?;
    if !report.invariants_held {
        let kept = dir.keep();
        tracing::warn!(dir = %kept.display(), "invariants failed; the run directory (logs, stores) is kept");
    }
    Ok(report)
}

fn validate(options: &OutageOptions) -> Result<(), OptionsError> {
    options.common.validate()?;
    if !(options.rate.is_finite() && options.rate > 0.0) {
        return Err(OptionsError(format!(
            "--rate {} must be a positive number of records per second",
            options.rate
        )));
    }
    if options.cut_at_s + options.cut_s > options.duration_s {
        return Err(OptionsError(format!(
            "--cut-at-s {} plus --cut-s {} ends after --duration-s {}; lengthen the run or shorten the cut",
            options.cut_at_s, options.cut_s, options.duration_s
        )));
    }
    Ok(())
}

/// Figures measured while records flowed.
struct RunFigures {
    timeline: Vec<Sample>,
    backlog_at_restore: Option<u64>,
    drain_after_restore: Option<Duration>,
    drain_after_production: Option<Duration>,
    all_acknowledged: bool,
}

/// Runs the fault schedule while sampling the stores, then waits for the
/// drain.
async fn drive(
    options: &OutageOptions,
    chain: &Chain,
    fleet: &UplinkFleet,
) -> Result<RunFigures, OutageError> {
    let start = Instant::now();
    let cut_at = start + Duration::from_secs(options.cut_at_s);
    let restore_at = cut_at + Duration::from_secs(options.cut_s);
    let production_end = start + Duration::from_secs(options.duration_s);
    let mut drops = drop_times(restore_at, production_end, options.drops);
    let mut cut_done = options.cut_s == 0;
    let mut restore_target: Option<(u64, Instant)> = None;
    let mut figures = RunFigures {
        timeline: Vec::new(),
        backlog_at_restore: None,
        drain_after_restore: None,
        drain_after_production: None,
        all_acknowledged: false,
    };
    let mut last_sample = start - Duration::from_secs(1);

    // Production, faults and sampling.
    while Instant::now() < production_end {
        let now = Instant::now();
        if !cut_done && now >= cut_at {
            tracing::info!(seconds = options.cut_s, mode = ?options.cut_mode, "cutting the national link");
            chain
                .proxy
                .cut_for(Duration::from_secs(options.cut_s), options.cut_mode.into());
            cut_done = true;
        }
        if drops.first().is_some_and(|at| now >= *at) {
            drops.remove(0);
            tracing::info!("dropping the bridge's national connection");
            chain.proxy.drop_connections();
        }
        let sample = sample(chain, fleet, start).await?;
        if options.cut_s > 0 && restore_target.is_none() && now >= restore_at {
            let backlog = sample
                .province_stored
                .saturating_sub(sample.national_stored);
            tracing::info!(backlog, "the national link is back");
            figures.backlog_at_restore = Some(backlog);
            restore_target = Some((sample.province_stored, now));
        }
        check_restore_drain(&mut restore_target, &mut figures, &sample);
        if now.duration_since(last_sample) >= Duration::from_secs(1) {
            figures.timeline.push(sample);
            last_sample = now;
        }
        sleep(SAMPLE_INTERVAL).await;
    }

    // The nodes stop; the province acknowledges the rest; the nation
    // catches up.
    fleet.stop_producing();
    let stopped = Instant::now();
    figures.all_acknowledged = fleet.wait_all_acknowledged(PROVINCE_ACK_TIMEOUT).await;
    let produced = fleet.produced();
    let deadline = stopped + Duration::from_secs(options.drain_timeout_s);
    loop {
        let sample = sample(chain, fleet, start).await?;
        check_restore_drain(&mut restore_target, &mut figures, &sample);
        let caught_up = sample.national_stored >= produced;
        figures.timeline.push(sample);
        if caught_up {
            figures.drain_after_production = Some(stopped.elapsed());
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                produced,
                "the national store did not catch up within --drain-timeout-s"
            );
            break;
        }
        sleep(Duration::from_secs(1)).await;
    }
    Ok(figures)
}

/// Records the drain time once the national store contains what the
/// province had stored when the link returned.
fn check_restore_drain(
    target: &mut Option<(u64, Instant)>,
    figures: &mut RunFigures,
    sample: &Sample,
) {
    if figures.drain_after_restore.is_some() {
        return;
    }
    if let Some((province_stored, restored)) = *target
        && sample.national_stored >= province_stored
    {
        figures.drain_after_restore = Some(restored.elapsed());
    }
}

/// `count` moments spread evenly between `from` and `to`, both excluded.
fn drop_times(from: Instant, to: Instant, count: u64) -> Vec<Instant> {
    let span = to.saturating_duration_since(from);
    (1..=count)
        .map(|k| from + span.mul_f64(k as f64 / (count + 1) as f64))
        .collect()
}

async fn sample(chain: &Chain, fleet: &UplinkFleet, start: Instant) -> Result<Sample, OutageError> {
    let (province, national) = (chain.province_api, chain.national_api);
    let (province_stored, national_stored) = tokio::task::spawn_blocking(move || {
        Ok::<_, ServiceError>((
            stat(province, "records_stored")?,
            stat(national, "national_records_stored")?,
        ))
    })
    .await
    .expect("the sampling task does not panic")?;
    Ok(Sample {
        t_s: start.elapsed().as_secs_f64(),
        produced: fleet.produced(),
        acknowledged: fleet.acknowledged(),
        province_stored,
        national_stored,
    })
}

/// Counts of the national store, read node by node and gantry by gantry.
struct NationalCounts {
    /// Records produced and missing nationally.
    lost: u64,
    /// Rows counted in the per-hour totals.
    rows: u64,
    fee_sum: u64,
    pay_fee_sum: u64,
}

async fn national_counts(
    chain: &Chain,
    tallies: &[NodeTally],
) -> Result<NationalCounts, OutageError> {
    let api = chain.national_api;
    let tallies = tallies.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut counts = NationalCounts {
            lost: 0,
            rows: 0,
            fee_sum: 0,
            pay_fee_sum: 0,
        };
        // Pass times are "now" when produced; a day either side covers the run.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let (from_ms, to_ms) = (now_ms.saturating_sub(86_400_000), now_ms + 86_400_000);
        for tally in &tallies {
            let node = get_json(api, &format!("/v1/nodes/{PROVINCE}/{}", tally.node))?;
            let stored_through = node["stored_through"].as_u64().unwrap_or(0);
            counts.lost += tally.last_seq.saturating_sub(stored_through);

            let hours = get_json(
                api,
                &format!(
                    "/v1/hours?gantry={}&from_ms={from_ms}&to_ms={to_ms}",
                    tally.gantry
                ),
            )?;
            for hour in hours["hours"].as_array().into_iter().flatten() {
                counts.rows += hour["count"].as_u64().unwrap_or(0);
                counts.fee_sum += hour["fee_sum"].as_u64().unwrap_or(0);
                counts.pay_fee_sum += hour["pay_fee_sum"].as_u64().unwrap_or(0);
            }
        }
        Ok::<_, ServiceError>(counts)
    })
    .await
    .expect("the counting task does not panic")
    .map_err(OutageError::from)
}

async fn build_report(
    options: &OutageOptions,
    machine: Machine,
    chain: &Chain,
    run: RunFigures,
    national: NationalCounts,
    tallies: Vec<NodeTally>,
) -> Result<OutageReport, OutageError> {
    let (province, nation) = (chain.province_api, chain.national_api);
    let (province_stats, national_stats) = tokio::task::spawn_blocking(move || {
        Ok::<_, ServiceError>((
            get_json(province, "/v1/stats")?,
            get_json(nation, "/v1/stats")?,
        ))
    })
    .await
    .expect("the stats task does not panic")?;
    let counter = |stats: &serde_json::Value, name: &str| stats[name].as_u64().unwrap_or(0);

    let produced: u64 = tallies.iter().map(|t| t.last_seq).sum();
    let acknowledged: u64 = tallies.iter().map(|t| t.acknowledged_through).sum();
    let fee_sum: u64 = tallies.iter().map(|t| t.fee_sum).sum();
    let pay_fee_sum: u64 = tallies.iter().map(|t| t.pay_fee_sum).sum();
    let unique_stored = produced - national.lost;
    let duplicates_stored = national.rows.saturating_sub(unique_stored);
    let fee_sums_match = national.fee_sum == fee_sum && national.pay_fee_sum == pay_fee_sum;
    let proxy = chain.proxy.counters();

    let invariants_held = national.lost == 0
        && duplicates_stored == 0
        && national.rows == produced
        && fee_sums_match
        && run.all_acknowledged
        && acknowledged == produced;
    Ok(OutageReport {
        scenario: "outage",
        machine,
        nodes: options.nodes,
        rate: options.rate,
        duration_s: options.duration_s,
        cut_at_s: options.cut_at_s,
        cut_s: options.cut_s,
        cut_mode: options.cut_mode,
        link_bps: options.link_bps,
        delay_ms: options.delay_ms,
        drops: options.drops,
        records_produced: produced,
        records_refused: tallies.iter().map(|t| t.refused).sum(),
        records_acknowledged: acknowledged,
        province_records_stored: counter(&province_stats, "records_stored"),
        national_records_stored: counter(&national_stats, "national_records_stored"),
        records_lost: national.lost,
        duplicates_stored,
        duplicates_dropped: counter(&national_stats, "national_records_duplicate"),
        forward_batches_sent: counter(&province_stats, "forward_batches_sent"),
        forward_resends: counter(&province_stats, "forward_resends"),
        fee_sums_match,
        backlog_at_restore: run.backlog_at_restore,
        drain_after_restore_s: run.drain_after_restore.map(|d| d.as_secs_f64()),
        drain_after_production_s: run.drain_after_production.map(|d| d.as_secs_f64()),
        link_bytes_up: proxy.bytes_up,
        link_bytes_down: proxy.bytes_down,
        timeline: run.timeline,
        nodes_detail: tallies,
        invariants_held,
    })
}

/// Prints the summary table.
pub fn print_summary(report: &OutageReport) {
    let secs = |value: Option<f64>| cell(value, 1);
    println!(
        "outage: {} nodes, {} records/s for {} s, link {} bit/s with {} ms delay, cut {} s at {} s ({:?}), {} drops",
        report.nodes,
        report.rate,
        report.duration_s,
        report.link_bps,
        report.delay_ms,
        report.cut_s,
        report.cut_at_s,
        report.cut_mode,
        report.drops
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!("| records produced | {} |", report.records_produced);
    println!(
        "| records stored nationally | {} |",
        report.national_records_stored
    );
    println!("| records lost (must be 0) | {} |", report.records_lost);
    println!(
        "| duplicates stored (must be 0) | {} |",
        report.duplicates_stored
    );
    println!("| fee sums match | {} |", report.fee_sums_match);
    println!(
        "| duplicates received and dropped | {} |",
        report.duplicates_dropped
    );
    println!("| forwarder resends | {} |", report.forward_resends);
    println!(
        "| backlog when the link returned | {} |",
        report
            .backlog_at_restore
            .map_or_else(|| "-".to_string(), |b| b.to_string())
    );
    println!(
        "| drain after the cut (s) | {} |",
        secs(report.drain_after_restore_s)
    );
    println!(
        "| drain after production ended (s) | {} |",
        secs(report.drain_after_production_s)
    );
    println!(
        "| invariants | {} |",
        if report.invariants_held {
            "held"
        } else {
            "FAILED"
        }
    );
}
