//! The `fanout` scenario: a per-node deployment reaches N simulated nodes
//! through the provincial controller (`tollway-center` with a
//! `[controller]` section) and the broker, then its image changes
//! `--changes` times. For each change the scenario measures the time from
//! publishing the deployment to 99% and to 100% of the nodes reporting a
//! status for the desired state that runs the new image. The same runs
//! against Tollway's broker and Mosquitto, one after the other.
//!
//! The deployment is published as `tollwayctl apply` publishes it: CBOR,
//! retained, QoS 1, on `tollway/v1/ops/deployments/{name}`, by a client of
//! the password listener. Invariants that set the exit code: every node
//! reports every change within `--change-timeout-s`, and afterwards the
//! controller's API shows every node's last status at the generation of
//! its desired state.
//!
//! Bounds: a run lasts at most the fleet's start (`--up-timeout-s`) plus
//! (changes + 2) change timeouts (the last for the controller's view),
//! plus process start and stop times.

use std::time::{Duration, Instant};

use clap::Args;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tollway_topics::{Deployment, Message, ObjectName, PlacementMode, Selector, Topic};

use crate::center::{CenterOptions, CenterProcess, Service};
use crate::desired::DesiredFleet;
use crate::fleet::FleetSpec;
use crate::options::CommonOptions;
use crate::pki::FleetPki;
use crate::preflight::{self, Program};
use crate::process::{CpuSampler, RssSampler};
use crate::report::{Comparison, Machine, cell, median, mib, write_json};
use crate::servers::{
    BrokerKind, BrokerUnderTest, PLAIN_PASSWORD, PLAIN_USER, Programs, Transport,
};
use crate::setup::{FleetPlan, FleetSetup, ScenarioError};

/// Name of the deployment the scenario changes.
const DEPLOYMENT: &str = "toll-app";
/// Image repository of the deployment; each change sets a new tag.
const IMAGE: &str = "localhost/tollway/toll-app";
/// Time the fleet has to stop after a run.
const FLEET_STOP_DEADLINE: Duration = Duration::from_secs(30);
/// Time the operator client has to connect.
const OPERATOR_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of the `fanout` scenario.
#[derive(Debug, Clone, Args)]
pub struct FanoutOptions {
    #[command(flatten)]
    pub common: CommonOptions,

    #[command(flatten)]
    pub center: CenterOptions,

    /// Number of simulated nodes. Each uses one socket in this process and
    /// one in the broker, so keep it below the open-file limit less a few
    /// hundred.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub nodes: u64,

    /// Image changes measured after the first deployment.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub changes: u32,

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

    /// Time the whole fleet has to come up before the first deployment.
    #[arg(long, value_name = "SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub up_timeout_s: u64,

    /// Time every node has to report a change before it counts as not
    /// reached.
    #[arg(long, value_name = "SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub change_timeout_s: u64,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct FanoutReport {
    pub scenario: &'static str,
    pub machine: Machine,
    pub nodes: u64,
    pub changes: u32,
    pub transport: Transport,
    pub change_timeout_s: u64,
    pub runs: Vec<FanoutRun>,
    pub comparisons: Vec<Comparison>,
    /// True when every node reported every change in every run and the
    /// controller agreed at the end.
    pub invariants_held: bool,
}

/// One broker's run.
#[derive(Debug, Default, Serialize)]
pub struct FanoutRun {
    pub broker: Option<BrokerKind>,
    /// Seconds until every node was up.
    pub up_seconds: Option<f64>,
    /// The first deployment (placement on every node).
    pub initial: Option<ChangeFigures>,
    /// The image changes, in order.
    pub changes: Vec<ChangeFigures>,
    /// Median over the changes of the time to 99% of the nodes.
    pub median_p99_s: Option<f64>,
    /// Median over the changes of the time to 100% of the nodes.
    pub median_p100_s: Option<f64>,
    /// Peak CPU over one-second samples, in percent of one core.
    pub broker_peak_cpu_percent: f64,
    pub broker_peak_rss_bytes: Option<u64>,
    pub controller_peak_cpu_percent: f64,
    pub controller_peak_rss_bytes: Option<u64>,
    pub desired_received: u64,
    pub statuses_sent: u64,
    pub statuses_skipped: u64,
    pub session_failures: u64,
    /// Nodes whose last status, as the controller's API shows it, has the
    /// generation of their desired state, after the last change.
    pub controller_nodes_current: Option<u64>,
    /// True when that count is every node, within the change timeout.
    pub controller_agrees: bool,
    /// True when every node reported every change in time.
    pub all_reported: bool,
    /// The error that ended the run early, if any.
    pub error: Option<String>,
}

/// The figures of one deployment publish.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeFigures {
    pub change: u32,
    pub image: String,
    /// Nodes that reported it within the timeout.
    pub reported: usize,
    pub all_reported: bool,
    /// Seconds from the publish to half, 99% and all of the nodes.
    pub p50_s: Option<f64>,
    pub p99_s: Option<f64>,
    pub p100_s: Option<f64>,
}

/// Runs the scenario and writes the report; returns it for the caller to
/// print and check.
pub async fn run(
    options: &FanoutOptions,
    open_file_limit: u64,
) -> Result<FanoutReport, ScenarioError> {
    options.common.validate()?;
    let machine = Machine::describe(open_file_limit);
    let mut needed = Program::brokers(&options.common.programs(), &options.brokers);
    needed.push(Program::center(options.center.program()));
    preflight::check(&options.common.report, &needed)?;
    let plan = FleetPlan {
        prefix: "fanout",
        nodes: options.nodes,
        files_per_node: 1,
        tls: options.transport == Transport::Tls,
    };
    let fleet = FleetSetup::create(&plan, open_file_limit)?;

    let programs = options.common.programs();
    let mut runs = Vec::new();
    for &broker in &options.brokers {
        let spec = fleet.spec(&options.common, options.transport);
        tracing::info!(%broker, transport = %options.transport, nodes = fleet.nodes.len(), "fanout run starting");
        let mut run = FanoutRun {
            broker: Some(broker),
            ..FanoutRun::default()
        };
        if let Err(err) = run_one(options, broker, spec, &fleet.pki, &programs, &mut run).await {
            tracing::error!(%broker, error = %err, "fanout run ended early");
            run.error = Some(err);
        }
        runs.push(run);
    }

    let report = FanoutReport {
        scenario: "fanout",
        machine,
        nodes: options.nodes,
        changes: options.changes,
        transport: options.transport,
        change_timeout_s: options.change_timeout_s,
        comparisons: compare(options.transport, &runs),
        invariants_held: runs
            .iter()
            .all(|run| run.error.is_none() && run.all_reported && run.controller_agrees),
        runs,
    };
    write_json(&options.common.report, &report)?;
    Ok(report)
}

/// Starts the broker and the controller, runs the changes, stops both.
async fn run_one(
    options: &FanoutOptions,
    kind: BrokerKind,
    mut spec: FleetSpec,
    pki: &FleetPki,
    programs: &Programs,
    run: &mut FanoutRun,
) -> Result<(), String> {
    let mut broker = tokio::task::block_in_place(|| {
        BrokerUnderTest::start(kind, options.transport, &pki.server, programs)
    })
    .map_err(|err| err.to_string())?;
    spec.broker = broker.node_addr;

    let result = match CenterProcess::start(
        &options.center,
        Service::Controller,
        "controller",
        broker.service_addr,
    )
    .await
    {
        Ok(mut controller) => {
            let result = drive(options, &broker, &controller, spec, run).await;
            tokio::task::block_in_place(|| controller.stop());
            result
        }
        Err(err) => Err(err.to_string()),
    };
    if let Err(err) = tokio::task::block_in_place(|| broker.stop()) {
        tracing::warn!(broker = %kind, error = %err, "broker did not stop cleanly");
    }
    result
}

async fn drive(
    options: &FanoutOptions,
    broker: &BrokerUnderTest,
    controller: &CenterProcess,
    spec: FleetSpec,
    run: &mut FanoutRun,
) -> Result<(), String> {
    let sampling = CancellationToken::new();
    let _stop_sampling = sampling.clone().drop_guard();
    let broker_pid = broker.pid().unwrap_or(0);
    let controller_pid = controller.pid().unwrap_or(0);
    let broker_cpu = CpuSampler::start(broker_pid, sampling.clone());
    let broker_rss = RssSampler::start(broker_pid, sampling.clone());
    let controller_cpu = CpuSampler::start(controller_pid, sampling.clone());
    let controller_rss = RssSampler::start(controller_pid, sampling.clone());

    let operator = Operator::connect(broker.service_addr, sampling.clone()).await?;
    let fleet = DesiredFleet::start(spec);
    let result = changes(options, &operator, &fleet, controller, run).await;

    let stats = fleet.stats();
    let load =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
    run.desired_received = load(&stats.desired_received);
    run.statuses_sent = load(&stats.statuses_sent);
    run.statuses_skipped = load(&stats.statuses_skipped);
    run.session_failures = load(&stats.session_failures);
    run.broker_peak_cpu_percent = broker_cpu.take_peak();
    run.broker_peak_rss_bytes = broker_rss.peak();
    run.controller_peak_cpu_percent = controller_cpu.take_peak();
    run.controller_peak_rss_bytes = controller_rss.peak();
    if !fleet.stop(FLEET_STOP_DEADLINE).await {
        tracing::warn!("desired-state fleet did not stop in time");
    }
    result
}

/// Waits for the fleet, publishes the first deployment and each change,
/// and checks the controller's view at the end.
async fn changes(
    options: &FanoutOptions,
    operator: &Operator,
    fleet: &DesiredFleet,
    controller: &CenterProcess,
    run: &mut FanoutRun,
) -> Result<(), String> {
    let connecting = Instant::now();
    if !fleet
        .wait_all_up(Duration::from_secs(options.up_timeout_s))
        .await
    {
        let up = fleet.stats().sessions.up();
        return Err(format!(
            "only {up} of {} nodes came up within {} s",
            fleet.size(),
            options.up_timeout_s
        ));
    }
    run.up_seconds = Some(connecting.elapsed().as_secs_f64());

    let timeout = Duration::from_secs(options.change_timeout_s);
    let initial = publish_and_wait(operator, fleet, 0, timeout).await?;
    let mut all_reported = initial.all_reported;
    run.initial = Some(initial);
    for change in 1..=options.changes {
        let figures = publish_and_wait(operator, fleet, change, timeout).await?;
        all_reported &= figures.all_reported;
        run.changes.push(figures);
    }
    run.all_reported = all_reported;
    let p99: Vec<f64> = run.changes.iter().filter_map(|c| c.p99_s).collect();
    let p100: Vec<f64> = run.changes.iter().filter_map(|c| c.p100_s).collect();
    run.median_p99_s = median(&p99);
    run.median_p100_s = median(&p100);

    // The controller's view, which it refreshes on its own schedule: a node
    // is current when its last status has the generation of its desired
    // state.
    let deadline = Instant::now() + timeout;
    loop {
        let current = controller_nodes_current(controller).await?;
        run.controller_nodes_current = Some(current);
        if current >= fleet.size() as u64 {
            run.controller_agrees = true;
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Counts the nodes in the controller's API whose last status has the
/// generation of their desired state.
async fn controller_nodes_current(controller: &CenterProcess) -> Result<u64, String> {
    let view = controller
        .get("/v1/nodes")
        .await
        .map_err(|err| err.to_string())?;
    let nodes = view
        .as_array()
        .ok_or_else(|| format!("GET /v1/nodes returned no list: {view}"))?;
    let current = nodes
        .iter()
        .filter(|node| {
            let desired = node["desired_generation"].as_u64();
            desired.is_some() && node["status"]["generation"].as_u64() == desired
        })
        .count();
    Ok(current as u64)
}

/// Publishes the deployment with image tag `1.0.{change}` and waits until
/// every node reported it or `timeout` passed.
async fn publish_and_wait(
    operator: &Operator,
    fleet: &DesiredFleet,
    change: u32,
    timeout: Duration,
) -> Result<ChangeFigures, String> {
    let image = format!("{IMAGE}:1.0.{change}");
    let payload = deployment(&image)?;
    fleet.set_target(&image);
    operator.publish_deployment(payload).await?;
    let all_reported = fleet.wait_all_reported(timeout).await;

    let times = fleet.stats().report_times();
    let at_share = |share: f64| {
        let needed = (share * fleet.size() as f64).ceil() as usize;
        (needed > 0 && times.len() >= needed).then(|| times[needed - 1])
    };
    let figures = ChangeFigures {
        change,
        image,
        reported: times.len(),
        all_reported,
        p50_s: at_share(0.50),
        p99_s: at_share(0.99),
        p100_s: at_share(1.0),
    };
    tracing::info!(change, reported = figures.reported, p99_s = ?figures.p99_s, p100_s = ?figures.p100_s, "change measured");
    Ok(figures)
}

/// Encodes the per-node deployment of the toll app for every gantry, with
/// `image`.
fn deployment(image: &str) -> Result<Vec<u8>, String> {
    let name = ObjectName::new(DEPLOYMENT).map_err(|err| err.to_string())?;
    let mut app = tollway_topics::samples::app_spec();
    app.name = name.clone();
    app.image = image.to_string();
    app.next_image = None;
    let deployment = Deployment {
        name,
        selector: Selector::parse(&["role = gantry"]).map_err(|err| err.to_string())?,
        placement: PlacementMode::PerNode,
        colocate_with: None,
        app,
    };
    deployment.to_cbor().map_err(|err| err.to_string())
}

/// An operator's MQTT client on the password listener, polled in the
/// background until `stop` is cancelled.
struct Operator {
    client: AsyncClient,
}

impl Operator {
    async fn connect(
        service: std::net::SocketAddr,
        stop: CancellationToken,
    ) -> Result<Self, String> {
        let mut options = MqttOptions::new(
            "loadtest-operator",
            service.ip().to_string(),
            service.port(),
        );
        options.set_credentials(PLAIN_USER, PLAIN_PASSWORD);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(
            tollway_topics::limits::MAX_PACKET_BYTES,
            tollway_topics::limits::MAX_PACKET_BYTES,
        );
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let connack = tokio::time::timeout(OPERATOR_CONNECT_TIMEOUT, eventloop.poll()).await;
        match connack {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {}
            Ok(Ok(other)) => {
                return Err(format!("operator client expected CONNACK, got {other:?}"));
            }
            Ok(Err(err)) => {
                return Err(format!(
                    "operator client cannot connect to {service}: {err}"
                ));
            }
            Err(_) => {
                return Err(format!(
                    "operator client did not connect to {service} within {OPERATOR_CONNECT_TIMEOUT:?}"
                ));
            }
        }
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    event = eventloop.poll() => if let Err(err) = event {
                        tracing::warn!(error = %err, "operator connection failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    },
                }
            }
        });
        Ok(Operator { client })
    }

    /// Publishes the deployment retained at QoS 1, as `tollwayctl apply`.
    async fn publish_deployment(&self, payload: Vec<u8>) -> Result<(), String> {
        let name = ObjectName::new(DEPLOYMENT).map_err(|err| err.to_string())?;
        let topic = Topic::deployment(name).to_string();
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .map_err(|err| format!("cannot publish the deployment: {err}"))
    }
}

/// Compares the runs in which every node reported every change; the other
/// side of a comparison stays empty otherwise.
fn compare(transport: Transport, runs: &[FanoutRun]) -> Vec<Comparison> {
    let find = |kind| {
        runs.iter()
            .find(|run| run.broker == Some(kind) && run.error.is_none() && run.all_reported)
    };
    let (ours, theirs) = (find(BrokerKind::Tollway), find(BrokerKind::Mosquitto));
    let metric = |name: &'static str, value: fn(&FanoutRun) -> Option<f64>| {
        Comparison::new(
            transport.to_string(),
            name,
            ours.and_then(value),
            theirs.and_then(value),
        )
    };
    vec![
        metric("median_p99_s", |run| run.median_p99_s),
        metric("median_p100_s", |run| run.median_p100_s),
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
pub fn print_summary(report: &FanoutReport) {
    println!(
        "fanout: {} nodes, {} changes, {}",
        report.nodes, report.changes, report.transport
    );
    println!(
        "{:<10} {:>8} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>5}",
        "broker",
        "up s",
        "init 100%",
        "p99 s",
        "p100 s",
        "brk cpu%",
        "brk MiB",
        "ctl cpu%",
        "ctl MiB",
        "ok"
    );
    for run in &report.runs {
        let broker = run
            .broker
            .map_or_else(|| "-".to_string(), |b| b.to_string());
        let ok = run.error.is_none() && run.all_reported && run.controller_agrees;
        println!(
            "{:<10} {:>8} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>5}",
            broker,
            cell(run.up_seconds, 1),
            cell(run.initial.as_ref().and_then(|c| c.p100_s), 2),
            cell(run.median_p99_s, 2),
            cell(run.median_p100_s, 2),
            cell(Some(run.broker_peak_cpu_percent), 0),
            mib(run.broker_peak_rss_bytes),
            cell(Some(run.controller_peak_cpu_percent), 0),
            mib(run.controller_peak_rss_bytes),
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
            cell(comparison.tollway, 2),
            cell(comparison.mosquitto, 2),
            cell(comparison.ratio, 2),
        );
    }
}
