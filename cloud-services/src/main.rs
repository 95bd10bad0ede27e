//! `tollway-center`: the centre services. Each service runs when its section
//! is in the configuration file, so one process can run several of them
//! (a province's ingest, forwarder and query API) or just one.
//!
//! The record services (this binary's modules) are listed in [`SERVICES`]:
//! a new one adds its config section in `config.rs` and one entry there.
//! The controller and the aggregator live in the library and start after
//! them, in `start_library_services`.

mod config;
mod forwarder;
mod ingest;
mod mqtt;
mod national;
mod query;
mod reconcile;
mod retention;
mod stats;
mod store;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tollway_runtime::{CommonArgs, Shutdown, init_logging, load_config};

use crate::config::Config;
use crate::mqtt::MqttSettings;
use crate::stats::Stats;
use crate::store::{PruneScope, RecordStore};

/// Time the services get to stop after SIGINT or SIGTERM.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// Centre services: record ingest and store, reconciliation, national
/// forwarding and ingest, and the query API.
#[derive(Debug, Parser)]
#[command(name = "tollway-center", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

/// Resources shared by every service of this process.
struct Context {
    mqtt: Option<MqttSettings>,
    store: Option<Arc<RecordStore>>,
    stats: Arc<Stats>,
}

/// Starts one service if its section is present; returns whether it did.
type Starter = fn(&Config, &Context, &mut Shutdown) -> anyhow::Result<bool>;

/// Every service, in start order.
const SERVICES: &[(&str, Starter)] = &[
    ("ingest", start_ingest),
    ("forwarder", start_forwarder),
    ("national_ingest", start_national_ingest),
    ("query", start_query),
    ("retention", start_retention),
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = init_logging(cli.common.log_format, cli.common.log.as_deref()) {
        eprintln!("tollway-center: {err}");
        return ExitCode::from(2);
    }
    let path = cli.common.config.as_deref();
    let config: Config = match load_config(path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("tollway-center: {err}");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = config.validate(path) {
        eprintln!("tollway-center: {err}");
        return ExitCode::from(2);
    }
    if !config.has_services() {
        eprintln!(
            "tollway-center: the configuration enables no service; add an [ingest], [forwarder], [national_ingest], [query], [controller] or [aggregator] section"
        );
        return ExitCode::from(2);
    }

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tollway-center: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let context = match open_context(&config) {
        Ok(context) => context,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("tollway-center: {err:#}");
            return ExitCode::FAILURE;
        }
    };

    let mut shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    for (name, start) in SERVICES {
        match start(&config, &context, &mut shutdown) {
            Ok(true) => tracing::info!(service = name, "service started"),
            Ok(false) => {}
            Err(err) => {
                tracing::error!(service = name, "cannot start: {err:#}");
                eprintln!("tollway-center: cannot start {name}: {err:#}");
                shutdown.token().cancel();
                shutdown.wait_for_tasks(SHUTDOWN_DEADLINE).await;
                return ExitCode::FAILURE;
            }
        }
    }

    if let Err(err) = start_library_services(&config, &mut shutdown).await {
        tracing::error!("cannot start: {err}");
        eprintln!("tollway-center: {err}");
        shutdown.token().cancel();
        shutdown.wait_for_tasks(SHUTDOWN_DEADLINE).await;
        return ExitCode::FAILURE;
    }

    let ended_early = shutdown.run_until_stopped(SHUTDOWN_DEADLINE).await;
    tracing::info!("tollway-center stopped");
    if ended_early.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Starts the controller and the aggregator, which live in the library and
/// keep their own broker connections.
// NOTE: the record services use `mqtt.rs` and the controller and
// aggregator use `mqtt_link.rs`, two MQTT connection helpers for one job.
async fn start_library_services(config: &Config, shutdown: &mut Shutdown) -> anyhow::Result<()> {
    if let Some(section) = &config.controller {
        tollway_center::controller::start(section.clone(), shutdown).await?;
        tracing::info!(service = "controller", "service started");
    }
    if let Some(section) = &config.aggregator {
        tollway_center::aggregator::start(section.clone(), shutdown).await?;
        tracing::info!(service = "aggregator", "service started");
    }
    Ok(())
}

/// Opens the store and reads the broker password, once for all services.
fn open_context(config: &Config) -> anyhow::Result<Context> {
    let mqtt = match &config.broker {
        Some(broker) => {
            let password = broker.read_password().map_err(|err| {
                anyhow::anyhow!(
                    "cannot read broker.password_file {}: {err}",
                    broker.password_file.display()
                )
            })?;
            Some(MqttSettings::from_config(broker, password))
        }
        None => None,
    };
    let store = match &config.store {
        Some(store) => Some(Arc::new(RecordStore::open(&store.path)?)),
        None => None,
    };
    Ok(Context {
        mqtt,
        store,
        stats: Arc::new(Stats::default()),
    })
}

/// Returns the broker settings and store, which `validate` guarantees for MQTT services.
fn mqtt_and_store(context: &Context) -> anyhow::Result<(&MqttSettings, Arc<RecordStore>)> {
    let mqtt = context
        .mqtt
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("missing [broker] section"))?;
    let store = context
        .store
        .clone()
        .ok_or_else(|| anyhow::anyhow!("missing [store] section"))?;
    Ok((mqtt, store))
}

fn start_ingest(
    config: &Config,
    context: &Context,
    shutdown: &mut Shutdown,
) -> anyhow::Result<bool> {
    let Some(section) = &config.ingest else {
        return Ok(false);
    };
    let (mqtt, store) = mqtt_and_store(context)?;
    ingest::start(section, mqtt, store, context.stats.clone(), shutdown);
    Ok(true)
}

fn start_forwarder(
    config: &Config,
    context: &Context,
    shutdown: &mut Shutdown,
) -> anyhow::Result<bool> {
    let Some(section) = &config.forwarder else {
        return Ok(false);
    };
    let (mqtt, store) = mqtt_and_store(context)?;
    forwarder::start(section, mqtt, store, context.stats.clone(), shutdown);
    Ok(true)
}

fn start_national_ingest(
    config: &Config,
    context: &Context,
    shutdown: &mut Shutdown,
) -> anyhow::Result<bool> {
    let Some(section) = &config.national_ingest else {
        return Ok(false);
    };
    let (mqtt, store) = mqtt_and_store(context)?;
    national::start(section, mqtt, store, context.stats.clone(), shutdown);
    Ok(true)
}

/// Starts retention where the store's records have a next hop to wait for:
/// the forwarder's province, or the national ingest's store.
fn start_retention(
    config: &Config,
    context: &Context,
    shutdown: &mut Shutdown,
) -> anyhow::Result<bool> {
    let (Some(section), Some(store)) = (&config.store, &context.store) else {
        return Ok(false);
    };
    let scope = match (&config.forwarder, &config.national_ingest) {
        (Some(forwarder), _) => PruneScope::Province(forwarder.province),
        (None, Some(_)) => PruneScope::National,
        (None, None) => return Ok(false),
    };
    retention::start(
        section,
        scope,
        Arc::clone(store),
        context.stats.clone(),
        shutdown,
    );
    Ok(true)
}

fn start_query(
    config: &Config,
    context: &Context,
    shutdown: &mut Shutdown,
) -> anyhow::Result<bool> {
    let Some(section) = &config.query else {
        return Ok(false);
    };
    let store = context
        .store
        .clone()
        .ok_or_else(|| anyhow::anyhow!("missing [store] section"))?;
    query::start(section, store, context.stats.clone(), shutdown)
        .map_err(|err| anyhow::anyhow!("cannot listen on query.bind {}: {err}", section.bind))?;
    Ok(true)
}
