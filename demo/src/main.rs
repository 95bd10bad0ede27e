//! `tollway-demo`: the main job on one machine. It starts a national broker
//! and centre, two provinces (broker, bridge behind a fault proxy, centre
//! with ingest, forwarder, reconcile, query and controller) and three edge
//! daemons per province that run the toll app in Podman. It then deploys,
//! rolls out, cuts a link, crashes a daemon, waits until every record is
//! home and prints the completeness report.
//!
//! `scripts/demo` builds the programs and images and runs this binary.

mod cluster;
mod configs;
mod counts;
mod ctl;
mod http;
mod locale;
mod pki;
mod plan;
mod podman;
mod readings;
mod report;
mod scenario;
mod supervisor;
mod waiting;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use tollway_runtime::{LogFormat, init_logging};

use cluster::{Cluster, Programs};
use configs::ProvinceInput;
use ctl::Ctl;
use locale::text;
use report::Report;
use scenario::{FIRST_VERSION, NEXT_VERSION, Timing};

/// Runs a national centre, two provinces and six edge nodes with real
/// Podman containers on this machine, disrupts them, and reports whether
/// every toll record reached the national store.
#[derive(Debug, Parser)]
#[command(name = "tollway-demo", version)]
struct Cli {
    /// Traffic time, e.g. `90s`, `5m` or `1h`, not counting start-up and the
    /// final wait for records. At least 30 s.
    #[arg(long, default_value = "4m", value_parser = parse_duration)]
    duration: Duration,

    /// A one-minute run, for CI; overrides `--duration`.
    #[arg(long)]
    short: bool,

    /// Also write the completeness report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,

    /// Directory for configurations, data and logs; default
    /// `$TMPDIR/tollway-demo-{pid}`. It is kept after the run.
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,

    /// `--log` filter of every program the demo starts (their logs go to
    /// `{run_dir}/logs/`).
    #[arg(long, default_value = "info", value_name = "FILTER")]
    service_log: String,

    /// Log filter of the demo itself, in `tracing` env-filter syntax.
    #[arg(long, default_value = "warn", value_name = "FILTER")]
    log: String,
}

/// Programs the demo starts, all from one build.
const PROGRAMS: [&str; 5] = [
    "tollway-broker",
    "tollway-bridge",
    "tollway-center",
    "tollway-edge",
    "tollwayctl",
];

/// Shortest `--duration`: each disruption needs some seconds to show.
const MIN_DURATION: Duration = Duration::from_secs(30);
/// The `--short` duration.
const SHORT_DURATION: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = init_logging(LogFormat::Text, Some(&cli.log)) {
        eprintln!("tollway-demo: {err}");
        return ExitCode::from(2);
    }
    let duration = if cli.short {
        SHORT_DURATION
    } else {
        cli.duration
    };
    if duration < MIN_DURATION {
        eprintln!(
            "tollway-demo: --duration {duration:?} is too short; give at least {}s",
            MIN_DURATION.as_secs()
        );
        return ExitCode::from(2);
    }

    match run(&cli, duration) {
        Ok(report) if report.complete => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(err) => {
            eprintln!("tollway-demo: {err}");
            ExitCode::from(1)
        }
    }
}

/// Checks the prerequisites, runs the demo and always cleans up.
fn run(cli: &Cli, duration: Duration) -> Result<Report, String> {
    let programs = find_programs()?;
    let socket = podman_socket()?;
    check_images(&socket)?;

    let run_dir = cli.run_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("tollway-demo-{}", std::process::id()))
    });
    // Configurations and container mounts need absolute paths.
    let run_dir = std::path::absolute(&run_dir)
        .map_err(|err| format!("invalid --run-dir {}: {err}", run_dir.display()))?;
    let log_dir = run_dir.join("logs");
    std::fs::create_dir_all(&log_dir)
        .map_err(|err| format!("cannot create {}: {err}", log_dir.display()))?;
    println!(
        "{} {}",
        text(
            "Run directory (configurations, data, logs):",
            "运行目录（配置、数据、日志）："
        ),
        run_dir.display()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the async runtime: {err}"))?;
    runtime.spawn(watch_signals());

    let tag = plan::run_tag();
    let mut cluster = prepare(&programs, &run_dir, &socket, &tag, &cli.service_log)?;
    let ctl = Ctl {
        program: programs.path("tollwayctl"),
        aggregator_port: cluster.national.aggregator_port,
    };

    println!(
        "\n== {}",
        text(
            "Starting the national centre, 2 provinces and 6 edge nodes",
            "启动部中心、2 个省份和 6 个边缘节点"
        )
    );
    let outcome = cluster
        .start_all(&runtime)
        .map_err(scenario::StageError::from)
        .and_then(|()| {
            scenario::run(
                &mut cluster,
                &ctl,
                &run_dir,
                Timing::from_duration(duration),
            )
        });

    println!(
        "\n== {}",
        text(
            "Stopping every process and removing the demo's containers",
            "停止所有进程并删除演示容器"
        )
    );
    cluster.supervisor.stop_all();
    let mut removed = 0;
    for node in plan::all_nodes(&tag) {
        removed += podman::remove_node_containers(&socket, &node.id);
    }
    println!(
        "  {}{removed}",
        text("containers removed: ", "已删除容器：")
    );
    cluster.proxies.clear();
    drop(runtime);

    let mut report = outcome.map_err(|err| {
        format!(
            "{err}\n{} {}",
            text("logs are in", "日志位于"),
            log_dir.display()
        )
    })?;
    report.run_dir = run_dir.display().to_string();
    report.duration_s = duration.as_secs();
    println!("\n{}", report.render());
    if let Some(path) = &cli.report {
        write_report(path, &report)?;
        println!(
            "{} {}",
            text("Report written to", "报告已写入"),
            path.display()
        );
    }
    Ok(report)
}

/// Makes the PKI and every configuration under `run_dir`.
fn prepare(
    programs: &Programs,
    run_dir: &Path,
    socket: &Path,
    tag: &str,
    service_log: &str,
) -> Result<Cluster, String> {
    let nodes = plan::all_nodes(tag);
    let node_ids: Vec<String> = nodes.iter().map(|node| node.id.clone()).collect();
    let pki = pki::Pki::create(
        &programs.path("tollwayctl"),
        &run_dir.join("pki"),
        &node_ids,
    )
    .map_err(|err| err.to_string())?;

    let broker = programs.path("tollway-broker");
    let national_password = secret();
    let bridge_passwords: BTreeMap<u8, String> = plan::PROVINCES
        .iter()
        .map(|province| (*province, secret()))
        .collect();
    let national = configs::write_national(
        &run_dir.join("national"),
        &broker,
        &pki,
        &national_password,
        &bridge_passwords,
    )
    .map_err(|err| err.to_string())?;

    let mut provinces = Vec::new();
    for province in plan::PROVINCES {
        let password = secret();
        let input = ProvinceInput {
            province,
            nodes: plan::nodes_of(province, tag),
            password: &password,
            bridge_password: &bridge_passwords[&province],
            podman_socket: socket,
        };
        provinces.push(
            configs::write_province(
                &run_dir.join(format!("province-{province}")),
                &broker,
                &pki,
                input,
            )
            .map_err(|err| err.to_string())?,
        );
    }
    Ok(Cluster::new(
        &run_dir.join("logs"),
        programs.clone(),
        national,
        provinces,
        service_log.to_string(),
    ))
}

/// Finds the programs in `$TOLLWAY_BIN_DIR` or beside this executable.
fn find_programs() -> Result<Programs, String> {
    let dir = match std::env::var_os("TOLLWAY_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()
            .map_err(|err| format!("cannot find this executable's directory: {err}"))?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let programs = Programs { dir };
    let missing: Vec<&str> = PROGRAMS
        .iter()
        .copied()
        .filter(|name| !programs.path(name).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} missing from {}; build them with `cargo build --release --workspace` or run scripts/demo",
            missing.join(", "),
            programs.dir.display()
        ));
    }
    Ok(programs)
}

/// Returns Podman's API socket from `TOLLWAY_PODMAN_SOCKET`.
fn podman_socket() -> Result<PathBuf, String> {
    let socket = std::env::var_os("TOLLWAY_PODMAN_SOCKET").map(PathBuf::from).ok_or(
        "TOLLWAY_PODMAN_SOCKET is not set; run scripts/demo, or `export TOLLWAY_PODMAN_SOCKET=$(scripts/podman-service start)`",
    )?;
    if !socket.exists() {
        return Err(format!(
            "Podman's API socket {} does not exist; start it with scripts/podman-service start",
            socket.display()
        ));
    }
    Ok(socket)
}

/// Checks that both toll app images exist in the Podman service's store.
fn check_images(socket: &Path) -> Result<(), String> {
    let url = format!("unix://{}", socket.display());
    for version in [FIRST_VERSION, NEXT_VERSION] {
        let image = format!("localhost/tollway/toll-app:{version}");
        let exists = Command::new("podman")
            .args(["--url", &url, "image", "exists", &image])
            .status()
            .map_err(|err| {
                format!("cannot run podman: {err}; install it (scripts/setup-system)")
            })?;
        if !exists.success() {
            return Err(format!(
                "image {image} is missing; build it with `scripts/build-toll-image {version}`"
            ));
        }
    }
    Ok(())
}

fn write_report(path: &Path, report: &Report) -> Result<(), String> {
    let json = serde_json::to_string_pretty(report)
        .map_err(|err| format!("cannot encode the report: {err}"))?;
    std::fs::write(path, json + "\n")
        .map_err(|err| format!("cannot write the report to {}: {err}", path.display()))
}

/// Returns a random 32-hex-digit password from the kernel's generator.
fn secret() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    if let Err(err) = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes))
    {
        // NOTE: a predictable password is acceptable only because every
        // listener of the demo binds 127.0.0.1.
        tracing::warn!(error = %err, "cannot read /dev/urandom; using a time-based password");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or(0);
        return format!("{nanos:032x}");
    }
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Sets the interrupt flag on SIGINT or SIGTERM, so the stages stop and the
/// demo still stops its processes and removes its containers.
async fn watch_signals() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot install signal handlers; a signal ends the demo at once");
        return;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("tollway-demo: stopping after a signal");
    waiting::INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Parses `90`, `90s`, `5m` or `1h`.
fn parse_duration(value: &str) -> Result<Duration, String> {
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(index) => value.split_at(index),
        None => (value, "s"),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a duration; write e.g. 90s, 5m or 1h"))?;
    let seconds = match unit {
        "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        _ => return Err(format!("{value:?}: unknown unit {unit:?}; use s, m or h")),
    };
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn bad_duration_names_the_value() {
        let err = parse_duration("5 minutes").unwrap_err();
        assert!(err.contains("5 minutes"), "{err}");
        let err = parse_duration("m").unwrap_err();
        assert!(err.contains("\"m\""), "{err}");
    }
}
