//! `tollway-toll-app`: a gantry simulator that produces toll transactions at
//! a set rate and hands them to the edge daemon's local intake.
//!
//! It runs as PID 1 in a scratch container, where the kernel applies no
//! default action to SIGTERM and SIGINT, so it installs its own handlers.
//! On the first signal it stops producing, waits briefly for outstanding
//! PUBACKs, writes its final counts and exits. Records still unacknowledged at exit
//! are counted as `pending` in the counts file and the log.

mod counts;
mod publisher;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, MissedTickBehavior, interval, sleep_until};
use tollway_runtime::{Backoff, BackoffConfig, LogFormat, init_logging};
use tollway_topics::Message;

use counts::{Counts, CountsFile};
use publisher::{Progress, Publisher, PublisherConfig};
use tollway_toll_app::generator::{Generator, province_prefix};

/// Toll app: produces gantry transactions and hands them to the node's
/// intake over MQTT 3.1.1 (QoS 1).
#[derive(Debug, Parser)]
#[command(name = "tollway-toll-app", version)]
struct Cli {
    /// Address of the edge daemon's record intake.
    #[arg(long, env = "TOLL_APP_INTAKE", default_value = "127.0.0.1:1884")]
    intake: SocketAddr,

    /// MQTT topic of the intake.
    // NOTE: must match the edge daemon's intake topic, which lives in the
    // edge-daemon crate until it moves to the topics crate.
    #[arg(
        long,
        env = "TOLL_APP_TOPIC",
        default_value = "tollway/local/v1/records"
    )]
    topic: String,

    /// Transactions per second (0.01 to 10000).
    #[arg(long, env = "TOLL_APP_RATE", default_value_t = 20.0)]
    rate: f64,

    /// The charging gantry's id.
    #[arg(long, env = "TOLL_APP_GANTRY", default_value = "G001544001000201010")]
    gantry: String,

    /// Two-digit province code that decides the local plate prefix (44 is 粤).
    #[arg(long, env = "TOLL_APP_PROVINCE", default_value_t = 44)]
    province: u8,

    /// MQTT client id; default `toll-app-{gantry}`.
    #[arg(long, env = "TOLL_APP_CLIENT_ID")]
    client_id: Option<String>,

    /// Directory for the counts file `counts-{version}.json`; none when unset.
    #[arg(long, env = "TOLL_APP_COUNTS_DIR")]
    counts_dir: Option<PathBuf>,

    /// Records produced and not yet acknowledged at most. When reached, the
    /// app stops producing until acknowledgements arrive (the gantry's own
    /// buffer is full). Default 10000.
    #[arg(long, env = "TOLL_APP_MAX_PENDING", default_value_t = 10_000)]
    max_pending: usize,

    /// Time to wait for outstanding PUBACKs after SIGTERM, in milliseconds.
    #[arg(long, env = "TOLL_APP_DRAIN_MS", default_value_t = 300)]
    drain_ms: u64,

    /// Version reported in the log and the counts file; the image sets it.
    #[arg(long, env = "TOLL_APP_VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    app_version: String,

    /// Log format.
    #[arg(long, value_enum, env = "TOLLWAY_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Log filter in `tracing` env-filter syntax.
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
}

/// Records the intake may have in flight at once; rumqttc's default.
const MAX_INFLIGHT: u16 = 100;

/// Interval between counts-file writes and between count log lines.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
const LOG_EVERY: u32 = 10;

/// Delay between reconnect attempts: 100 ms rising to 5 s, because the
/// intake is on loopback and comes back within a daemon restart.
const RECONNECT_BACKOFF: BackoffConfig =
    BackoffConfig::new(Duration::from_millis(100), Duration::from_secs(5));

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = init_logging(cli.log_format, cli.log.as_deref()) {
        eprintln!("tollway-toll-app: {err}");
        return ExitCode::from(2);
    }
    if let Some(problem) = problem(&cli) {
        eprintln!("tollway-toll-app: {problem}");
        return ExitCode::from(2);
    }

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tollway-toll-app: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "toll app stopped on an error");
            ExitCode::FAILURE
        }
    }
}

fn problem(cli: &Cli) -> Option<String> {
    if !(0.01..=10_000.0).contains(&cli.rate) {
        return Some(format!(
            "--rate {} is out of range; give 0.01 to 10000 transactions per second",
            cli.rate
        ));
    }
    if province_prefix(cli.province).is_none() {
        return Some(format!(
            "--province {} is not a province code; use a two-digit code such as 11 or 44",
            cli.province
        ));
    }
    if cli.max_pending == 0 {
        return Some("--max-pending must be at least 1".to_string());
    }
    None
}

/// Produces and publishes until a signal, then drains and writes the counts.
async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;

    let client_id = cli
        .client_id
        .clone()
        .unwrap_or_else(|| format!("toll-app-{}", cli.gantry));
    let mut publisher = Publisher::new(PublisherConfig {
        intake: cli.intake,
        topic: cli.topic.clone(),
        client_id: client_id.clone(),
        max_inflight: MAX_INFLIGHT,
    });
    let mut generator = Generator::new(cli.gantry.clone(), cli.province, StdRng::from_os_rng());
    let counts_file = cli
        .counts_dir
        .as_ref()
        .map(|dir| CountsFile::new(dir.join(format!("counts-{}.json", cli.app_version))));
    let mut counts = Counts {
        version: cli.app_version.clone(),
        started_ms: now_ms(),
        ..Counts::default()
    };
    tracing::info!(
        version = %cli.app_version,
        intake = %cli.intake,
        client_id,
        gantry = %cli.gantry,
        rate = cli.rate,
        counts_file = ?counts_file.as_ref().map(|file| file.path().display().to_string()),
        "toll app started"
    );

    let mut produce = interval(Duration::from_secs_f64(1.0 / cli.rate));
    produce.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut report = interval(REPORT_INTERVAL);
    let mut reports = 0u32;
    let mut backoff = Backoff::new(RECONNECT_BACKOFF);
    let mut reconnect_at: Option<Instant> = None;
    let mut full_logged = false;

    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,

            _ = produce.tick() => {
                if publisher.pending() >= cli.max_pending {
                    if !full_logged {
                        tracing::warn!(pending = publisher.pending(), max_pending = cli.max_pending, "pending records at the limit; production paused until the intake acknowledges");
                        full_logged = true;
                    }
                    continue;
                }
                full_logged = false;
                let record = generator.next_record(now_ms());
                match record.to_cbor() {
                    Ok(payload) => {
                        publisher.push(payload);
                        counts.produced += 1;
                    }
                    Err(err) => tracing::error!(error = %err, transaction_id = %record.transaction_id, "generated record does not encode; skipped"),
                }
            }

            _ = report.tick() => {
                counts.pending = publisher.pending() as u64;
                write_counts(counts_file.as_ref(), &counts);
                reports += 1;
                if reports.is_multiple_of(LOG_EVERY) {
                    tracing::info!(produced = counts.produced, acked = counts.acked, pending = counts.pending, reconnects = counts.reconnects, "toll app counts");
                }
            }

            _ = wait_until(reconnect_at), if reconnect_at.is_some() => {
                reconnect_at = None;
                publisher.reconnect();
            }

            progress = publisher.poll(), if reconnect_at.is_none() => {
                match progress {
                    Ok(progress) => note_progress(progress, &mut counts, &mut backoff),
                    Err(err) => {
                        let delay = backoff.next_delay();
                        counts.reconnects += 1;
                        tracing::warn!(error = %err, intake = %cli.intake, retry_in_ms = delay.as_millis() as u64, pending = publisher.pending(), "intake connection lost; reconnecting");
                        reconnect_at = Some(Instant::now() + delay);
                    }
                }
            }
        }
    }

    drain(
        &mut publisher,
        &mut counts,
        cli.drain_ms,
        reconnect_at.is_none(),
    )
    .await;
    counts.pending = publisher.pending() as u64;
    counts.stopped = true;
    write_counts(counts_file.as_ref(), &counts);
    tracing::info!(
        produced = counts.produced,
        acked = counts.acked,
        pending = counts.pending,
        "toll app stopped"
    );
    Ok(())
}

/// Waits up to `drain_ms` for the records in flight to be acknowledged, then
/// disconnects.
async fn drain(publisher: &mut Publisher, counts: &mut Counts, drain_ms: u64, connected: bool) {
    let deadline = Instant::now() + Duration::from_millis(drain_ms);
    let mut backoff = Backoff::new(RECONNECT_BACKOFF);
    while connected && publisher.pending() > 0 {
        tokio::select! {
            _ = sleep_until(deadline) => break,
            progress = publisher.poll() => match progress {
                Ok(progress) => note_progress(progress, counts, &mut backoff),
                Err(_) => break,
            },
        }
    }
    publisher.disconnect();
    // One more poll sends the DISCONNECT; its result does not matter.
    let _ = tokio::time::timeout(Duration::from_millis(50), publisher.poll()).await;
}

fn note_progress(progress: Progress, counts: &mut Counts, backoff: &mut Backoff) {
    match progress {
        Progress::Connected => {
            backoff.reset();
            tracing::info!("connected to the intake");
        }
        Progress::Acked(count) => {
            let now = now_ms();
            counts.acked += count;
            counts.first_ack_ms.get_or_insert(now);
            counts.last_ack_ms = Some(now);
        }
        Progress::Idle => {}
    }
}

async fn wait_until(at: Option<Instant>) {
    if let Some(at) = at {
        sleep_until(at).await;
    }
}

fn write_counts(file: Option<&CountsFile>, counts: &Counts) {
    if let Some(file) = file
        && let Err(err) = file.write(counts)
    {
        tracing::warn!(error = %err, path = %file.path().display(), "cannot write the counts file");
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}
