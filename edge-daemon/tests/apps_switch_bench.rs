//! Benchmark: how long the toll app is interrupted when the daemon switches
//! it to a prefetched image. Ignored by default; run it with
//!
//! ```sh
//! cargo nextest run --release --workspace -E 'test(switch_interruption)' \
//!     --run-ignored only --no-capture
//! ```
//!
//! The app sends records to a real intake on loopback at 100 per second and
//! writes the wall-clock time of its first and last acknowledged record to
//! a counts file in a mounted directory. The interruption of one switch is
//! the new container's first acknowledgement minus the old one's last, so
//! it covers the old app's drain and exit, the new container's start and
//! its connection to the intake.

mod apps_support;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apps_support::*;
use tollway_edge::intake::{Intake, IntakeConfig};
use tollway_testkit::podman;
use tollway_topics::Mount;

const SWITCHES: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --run-ignored only"]
async fn switch_interruption() {
    let versions = [
        podman::toll_app_image("1.0.0"),
        podman::toll_app_image("1.1.0"),
    ];
    let mut node = TestNode::start("bench", test_config());
    let counts_dir = tempfile::tempdir().unwrap();

    let intake = Intake::bind(
        IntakeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..IntakeConfig::default()
        },
        node.outbox(),
    )
    .await
    .expect("intake binds");
    let intake_addr = intake.local_addr().unwrap();
    let stop_intake = tollway_runtime::CancellationToken::new();
    let intake_task = tokio::spawn(intake.run(stop_intake.clone()));

    let spec_for = |index: usize| {
        let mut spec = toll_app(&versions[index % 2]);
        spec.next_image = Some(versions[(index + 1) % 2].clone());
        spec.env.insert("TOLL_APP_RATE".into(), "100".into());
        spec.env
            .insert("TOLL_APP_INTAKE".into(), intake_addr.to_string());
        spec.env
            .insert("TOLL_APP_COUNTS_DIR".into(), "/data".into());
        spec.mounts.push(Mount {
            source: counts_dir.path().display().to_string(),
            target: "/data".into(),
            read_only: false,
        });
        spec
    };
    let version_of = |index: usize| versions[index % 2].rsplit(':').next().unwrap().to_string();

    node.send(&desired(1, vec![spec_for(0)]));
    node.wait_for(
        "first version running with its next image ready",
        |report| {
            report.generation == 1
                && app_status(report, "toll-app").is_some_and(|s| s.next_image_ready)
        },
    )
    .await;
    wait_counts(counts_dir.path(), &version_of(0), 0, |c| {
        c["acked"].as_u64() > Some(50)
    })
    .await;

    let mut gaps_ms = Vec::new();
    for switch in 1..=SWITCHES {
        let sent_ms = now_ms();
        node.send(&desired(switch as u64 + 1, vec![spec_for(switch)]));
        let new = wait_counts(counts_dir.path(), &version_of(switch), sent_ms, |c| {
            c["first_ack_ms"].is_u64()
        })
        .await;
        let old = wait_counts(counts_dir.path(), &version_of(switch - 1), 0, |c| {
            c["stopped"] == true
        })
        .await;
        let gap = new["first_ack_ms"].as_u64().unwrap() as i64
            - old["last_ack_ms"].as_u64().unwrap() as i64;
        println!(
            "switch {switch:2}: {} -> {}: interruption {gap} ms (old acked {}, pending at exit {})",
            version_of(switch - 1),
            version_of(switch),
            old["acked"],
            old["pending"]
        );
        gaps_ms.push(gap);
        // Let the new version run a little before the next switch.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    gaps_ms.sort_unstable();
    let median = (gaps_ms[SWITCHES / 2 - 1] + gaps_ms[SWITCHES / 2]) / 2;
    println!(
        "switches {SWITCHES}: median {median} ms, min {} ms, max {} ms",
        gaps_ms[0],
        gaps_ms[SWITCHES - 1]
    );
    assert_eq!(gaps_ms.len(), SWITCHES);

    stop_intake.cancel();
    let _ = intake_task.await;
}

/// Waits until `counts-{version}.json` belongs to a run started at or after
/// `started_after_ms` and satisfies `done`, and returns it.
async fn wait_counts(
    dir: &Path,
    version: &str,
    started_after_ms: u64,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let path = dir.join(format!("counts-{version}.json"));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(text) = std::fs::read(&path)
            && let Ok(counts) = serde_json::from_slice::<serde_json::Value>(&text)
            && counts["started_ms"]
                .as_u64()
                .is_some_and(|at| at + 1000 >= started_after_ms)
            && done(&counts)
        {
            return counts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never reached the expected state; last content: {:?}",
            path.display(),
            std::fs::read_to_string(&path)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
