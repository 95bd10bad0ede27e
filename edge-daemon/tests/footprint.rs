//! Footprint benchmark of the real `tollway-edge` against the real
//! `tollway-broker`: resident memory and CPU when idle and at 200 records/s,
//! and the bytes an idle node exchanges with its broker per status message
//! and per keep-alive. It prints the figures; docs/benchmarks.md records
//! them. Not part of the normal test run, because it takes about three
//! minutes and its numbers depend on the machine:
//!
//! ```sh
//! cargo nextest run --release --workspace -E 'binary(footprint)' --run-ignored only --no-capture
//! ```

mod common;
mod node;

use std::time::{Duration, Instant};

use tollway_testkit::BrokerFiles;

use common::record;
use node::{Centre, IntakePublisher, Node, NodeOptions, Outcome};

/// Resident memory of `pid` in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// CPU use of `pid` over `window`, in percent of one core (100 ticks/s).
async fn cpu_percent(pid: u32, window: Duration) -> f64 {
    let start = cpu_ticks(pid);
    tokio::time::sleep(window).await;
    let ticks = cpu_ticks(pid) - start;
    ticks as f64 / window.as_secs_f64()
}

/// TCP payload bytes (sent + received, TLS included) on the node's
/// connection to the broker's port, from `ss`.
fn link_bytes(port: u16) -> u64 {
    let output = std::process::Command::new("ss")
        .args([
            "-tinH",
            "state",
            "established",
            &format!("( dport = :{port} )"),
        ])
        .output()
        .expect("ss runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| -> u64 {
        text.split_whitespace()
            .filter_map(|word| word.strip_prefix(name))
            .filter_map(|value| value.parse::<u64>().ok())
            .sum()
    };
    field("bytes_sent:") + field("bytes_received:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --run-ignored only"]
async fn edge_footprint() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let centre = Centre::start(&files, "centre-footprint");

    // Bytes per status message: heartbeat every 10 s, no keep-alive in
    // the window (600 s).
    let options = NodeOptions {
        heartbeat_s: 10,
        keep_alive_s: 600,
        ..NodeOptions::default()
    };
    let mut node = Node::new(&files, "G0015-0900", options);
    node.start();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let statuses_before = centre.state.lock().unwrap().statuses.len();
    let bytes_before = link_bytes(files.ports.node);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let status_bytes = link_bytes(files.ports.node) - bytes_before;
    let statuses = centre.state.lock().unwrap().statuses.len() - statuses_before;
    node.stop();
    println!(
        "idle status: {status_bytes} TCP payload bytes for {statuses} status messages in 60 s"
    );

    // Bytes per keep-alive: keep-alive 10 s, no heartbeat in the window.
    let options = NodeOptions {
        heartbeat_s: 3600,
        keep_alive_s: 10,
        ..NodeOptions::default()
    };
    let mut node = Node::new(&files, "G0015-0901", options);
    node.start();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let bytes_before = link_bytes(files.ports.node);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let ping_bytes = link_bytes(files.ports.node) - bytes_before;
    println!("idle keep-alive: {ping_bytes} TCP payload bytes in 60 s at keep-alive 10 s");

    // Idle memory and CPU, with default intervals otherwise.
    let pid = node.pid();
    let idle_cpu = cpu_percent(pid, Duration::from_secs(30)).await;
    let idle_rss = rss_kib(pid);
    println!("idle: RSS {idle_rss} KiB, CPU {idle_cpu:.2}% of one core");

    // 200 records/s from four apps at 50 records/s each, for 30 s.
    let started = Instant::now();
    let mut apps = Vec::new();
    for app in 0..4u64 {
        let intake = node.intake;
        apps.push(tokio::spawn(async move {
            let mut publisher = IntakePublisher::new(intake, &format!("load-{app}"));
            let mut ticker = tokio::time::interval(Duration::from_millis(20));
            let mut acked = 0u64;
            for i in 0..1500u64 {
                ticker.tick().await;
                let n = app * 1_000_000 + i;
                if publisher.publish(&record(n), Duration::from_secs(5)).await == Outcome::Acked {
                    acked += 1;
                }
            }
            acked
        }));
    }
    let mut peak_rss = 0;
    let load_cpu_start = cpu_ticks(pid);
    while apps.iter().any(|app| !app.is_finished()) {
        peak_rss = peak_rss.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = started.elapsed();
    let load_cpu = (cpu_ticks(pid) - load_cpu_start) as f64 / elapsed.as_secs_f64();
    let mut acked = 0;
    for app in apps {
        acked += app.await.unwrap();
    }
    let rate = acked as f64 / elapsed.as_secs_f64();
    println!(
        "load: {acked} records in {:.1} s ({rate:.0}/s), peak RSS {peak_rss} KiB, CPU {load_cpu:.1}% of one core",
        elapsed.as_secs_f64()
    );
    centre
        .wait_until(
            Duration::from_secs(30),
            "every loaded record at the centre",
            |state| state.stored_through("G0015-0901") >= acked,
        )
        .await;
}
