//! Scaled-down runs of the scenarios through the real `tollway-loadtest`
//! program, against the real `tollway-broker`, Mosquitto, `tollway-bridge`
//! and `tollway-center` on loopback. They check correctness only: every node
//! back in every round, every node connected throughout the idle window,
//! every record acknowledged and stored once, every record at the
//! national store exactly once after an outage, every node reporting every
//! deployment change, and a well-formed report. Speed is never checked
//! here.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tollway_testkit::bin_path;

/// Runs the program with `args` and returns the parsed report.
fn run_scenario(args: &[&str], report: &Path) -> Value {
    let output = Command::new(bin_path("tollway-loadtest"))
        .args(args)
        .arg("--report")
        .arg(report)
        .arg("--broker-bin")
        .arg(bin_path("tollway-broker"))
        .output()
        .expect("tollway-loadtest did not start");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tollway-loadtest {args:?} exited with {}\nstdout:\n{stdout}\nstderr (last 4000 bytes):\n{}",
        output.status,
        &stderr[stderr.len().saturating_sub(4000)..]
    );
    let text = std::fs::read_to_string(report).expect("no report file written");
    serde_json::from_str(&text).expect("report is not valid JSON")
}

/// Fails unless the report compares `metric` with Mosquitto's as a ratio.
fn assert_ratio(report: &Value, metric: &str) {
    let comparisons = report["comparisons"].as_array().expect("comparisons");
    assert!(
        comparisons
            .iter()
            .any(|c| c["metric"] == metric && c["ratio"].is_f64()),
        "no {metric} ratio against Mosquitto in {comparisons:?}"
    );
}

#[test]
fn storm_brings_every_node_back() {
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("storm.json");
    let report = run_scenario(
        &[
            "storm",
            "--nodes",
            "200",
            "--rounds",
            "2",
            "--round-timeout-s",
            "120",
            "--settle-ms",
            "500",
        ],
        &report_path,
    );

    assert_eq!(report["scenario"], "storm");
    assert_eq!(report["all_back"], true);
    let runs = report["runs"].as_array().expect("runs is an array");
    assert_eq!(
        runs.len(),
        4,
        "expected tollway and mosquitto, each over tls and tcp"
    );
    for run in runs {
        let name = format!("{} over {}", run["broker"], run["transport"]);
        assert_eq!(run["error"], Value::Null, "{name} ended early");
        let rounds = run["rounds"].as_array().expect("rounds is an array");
        // The first connection, two drop rounds, two restart rounds.
        assert_eq!(rounds.len(), 5, "{name}: wrong number of rounds");
        for round in rounds {
            let number = &round["round"];
            assert_eq!(
                round["all_back"], true,
                "{name} round {number}: not all back"
            );
            assert_eq!(round["back"], 200, "{name} round {number}: nodes back");
            assert!(round["seconds"].is_f64(), "{name} round {number}: no time");
            assert!(
                round["rss_bytes_after"].as_u64().unwrap_or(0) > 0,
                "{name} round {number}: no broker RSS"
            );
            assert!(
                round["connect_attempts"].as_u64().unwrap_or(0) >= 200,
                "{name} round {number}: fewer attempts than nodes"
            );
            let causes = round["failures_by_cause"]
                .as_object()
                .expect("failures_by_cause is an object");
            // Numbers only: `refusal_codes` splits `connect_refusals` again.
            let by_cause: u64 = causes.values().filter_map(Value::as_u64).sum();
            assert_eq!(
                Some(by_cause),
                round["failed_attempts"].as_u64(),
                "{name} round {number}: causes {causes:?} do not add up to failed_attempts"
            );
        }
        assert_eq!(rounds[3]["kind"], "restart");
        assert_eq!(
            rounds[4]["retry"], "fixed",
            "{name}: last round is not the naive client"
        );
        assert!(
            run["per_connection_bytes"].is_f64(),
            "{name}: no per-connection memory"
        );
    }
    assert_ratio(&report, "median_drop_round_s");
}

#[test]
fn idle_fleet_stays_connected_and_is_measured() {
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("idle.json");
    let report = run_scenario(
        &[
            "idle",
            "--nodes",
            "50",
            "--duration-s",
            "5",
            "--keep-alive-s",
            "1",
            "--heartbeat-s",
            "2",
        ],
        &report_path,
    );

    assert_eq!(report["scenario"], "idle");
    assert_eq!(report["all_stayed_connected"], true);
    let runs = report["runs"].as_array().expect("runs is an array");
    assert_eq!(runs.len(), 2, "expected tollway and mosquitto over tls");
    for run in runs {
        let name = format!("{} over {}", run["broker"], run["transport"]);
        assert_eq!(run["error"], Value::Null, "{name} failed");
        // With a 1 s keep-alive and a 2 s heartbeat, traffic flows both
        // ways during a 5 s window.
        assert!(
            run["bytes_up"].as_u64().unwrap_or(0) > 0,
            "{name}: nothing sent up"
        );
        assert!(
            run["bytes_down"].as_u64().unwrap_or(0) > 0,
            "{name}: nothing sent down"
        );
        let per_day = run["bytes_per_node_per_day"].as_f64().unwrap_or(0.0);
        assert!(per_day > 0.0, "{name}: no daily figure");
        assert!(
            run["estimated_ip_bytes_per_node_per_day"]
                .as_f64()
                .unwrap_or(0.0)
                > per_day,
            "{name}: the header estimate adds nothing"
        );
        assert!(
            run["connect_bytes_per_node"].as_f64().unwrap_or(0.0) > 0.0,
            "{name}: no connect bytes"
        );
    }
}

/// Returns `--center-bin` and the path of the workspace's `tollway-center`.
fn center_bin() -> [String; 2] {
    [
        "--center-bin".to_string(),
        bin_path("tollway-center").display().to_string(),
    ]
}

#[test]
fn records_are_acknowledged_and_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("records.json");
    let center = center_bin();
    let report = run_scenario(
        &[
            "records",
            "--nodes",
            "50",
            "--rate",
            "500",
            "--duration-s",
            "10",
            "--warmup-s",
            "2",
            "--drain-timeout-s",
            "60",
            &center[0],
            &center[1],
        ],
        &report_path,
    );

    assert_eq!(report["scenario"], "records");
    assert_eq!(report["invariants_held"], true);
    let runs = report["runs"].as_array().expect("runs is an array");
    assert_eq!(runs.len(), 2, "expected tollway and mosquitto");
    for run in runs {
        let name = run["broker"].to_string();
        assert_eq!(run["error"], Value::Null, "{name} ended early");
        let created = run["records_created"].as_u64().unwrap_or(0);
        assert!(created > 0, "{name}: no records created");
        assert_eq!(
            run["records_acknowledged"].as_u64(),
            Some(created),
            "{name}: not every record acknowledged"
        );
        assert_eq!(
            run["records_stored"].as_u64(),
            Some(created),
            "{name}: the store does not hold exactly the records created"
        );
        assert_eq!(run["nodes_mismatched"], 0, "{name}: node watermarks differ");
        assert_eq!(run["all_acknowledged"], true, "{name}");
        assert_eq!(run["store_matches"], true, "{name}");
        assert!(run["latency_p50_ms"].is_f64(), "{name}: no p50 latency");
        assert!(run["latency_p99_ms"].is_f64(), "{name}: no p99 latency");
        assert!(
            run["broker_peak_rss_bytes"].as_u64().unwrap_or(0) > 0,
            "{name}: no broker RSS"
        );
        let ingest = run["ingest"].as_array().expect("ingest is an array");
        assert_eq!(ingest.len(), 1, "{name}: one ingest process by default");
        assert_eq!(ingest[0]["batches_invalid"], 0, "{name}: invalid batches");
        assert_eq!(ingest[0]["store_errors"], 0, "{name}: store errors");
    }
    assert_ratio(&report, "records_per_s");
}

#[test]
fn fanout_reaches_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("fanout.json");
    let center = center_bin();
    let report = run_scenario(
        &[
            "fanout",
            "--nodes",
            "200",
            "--changes",
            "2",
            "--change-timeout-s",
            "60",
            &center[0],
            &center[1],
        ],
        &report_path,
    );

    assert_eq!(report["scenario"], "fanout");
    assert_eq!(report["invariants_held"], true);
    let runs = report["runs"].as_array().expect("runs is an array");
    assert_eq!(runs.len(), 2, "expected tollway and mosquitto");
    for run in runs {
        let name = run["broker"].to_string();
        assert_eq!(run["error"], Value::Null, "{name} ended early");
        assert_eq!(run["initial"]["reported"], 200, "{name}: first deployment");
        let changes = run["changes"].as_array().expect("changes is an array");
        assert_eq!(changes.len(), 2, "{name}: wrong number of changes");
        for change in changes {
            let number = &change["change"];
            assert_eq!(change["all_reported"], true, "{name} change {number}");
            assert_eq!(change["reported"], 200, "{name} change {number}");
            let p99 = change["p99_s"].as_f64().expect("p99_s");
            let p100 = change["p100_s"].as_f64().expect("p100_s");
            assert!(
                p99 <= p100,
                "{name} change {number}: p99 {p99} > p100 {p100}"
            );
        }
        assert_eq!(
            run["controller_nodes_current"], 200,
            "{name}: the controller does not see every node current"
        );
        assert_eq!(run["statuses_skipped"], 0, "{name}: statuses skipped");
    }
    assert_ratio(&report, "median_p100_s");
}

#[test]
fn records_rejects_an_invalid_rate() {
    let output = Command::new(bin_path("tollway-loadtest"))
        .args(["records", "--rate", "fast", "--report", "/dev/null"])
        .output()
        .expect("tollway-loadtest did not start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("\"fast\"") && stderr.contains("max"),
        "the error does not name the value and the fix: {stderr}"
    );
}

#[test]
fn outage_loses_nothing_and_stores_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("outage.json");
    let report = run_scenario(
        &[
            "outage",
            "--nodes",
            "5",
            "--rate",
            "100",
            "--duration-s",
            "20",
            "--cut-at-s",
            "4",
            "--cut-s",
            "6",
            "--drops",
            "2",
            "--delay-ms",
            "20",
            "--drain-timeout-s",
            "120",
        ],
        &report_path,
    );

    assert_eq!(report["scenario"], "outage");
    assert_eq!(report["invariants_held"], true);
    let produced = report["records_produced"].as_u64().unwrap();
    // 100 records/s for 20 s; the nodes may start a little late.
    assert!(produced >= 1500, "only {produced} records produced");
    assert_eq!(report["records_lost"], 0);
    assert_eq!(report["duplicates_stored"], 0);
    assert_eq!(report["national_records_stored"], produced);
    assert_eq!(report["province_records_stored"], produced);
    assert_eq!(report["fee_sums_match"], true);
    // The cut held records back, and they drained after it.
    assert!(
        report["backlog_at_restore"].as_u64().unwrap_or(0) > 0,
        "the cut left no backlog: {}",
        report["backlog_at_restore"]
    );
    assert!(report["drain_after_restore_s"].is_f64(), "no drain time");
    assert!(report["link_bytes_up"].as_u64().unwrap_or(0) > 0);
    assert_eq!(report["nodes_detail"].as_array().unwrap().len(), 5);
}

/// A report path that cannot be written and a program that does not exist
/// stop a scenario before it starts anything, with exit code 2 and the
/// option named.
#[test]
fn bad_report_path_and_program_fail_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing_dir = dir.path().join("missing").join("storm.json");
    let report = dir.path().join("storm.json");
    let cases: [(Vec<&str>, &str); 3] = [
        (
            vec!["storm", "--report", missing_dir.to_str().unwrap()],
            "does not exist",
        ),
        (
            vec![
                "storm",
                "--broker-bin",
                "/nonexistent/tollway-broker",
                "--report",
                report.to_str().unwrap(),
            ],
            "--broker-bin /nonexistent/tollway-broker: not found",
        ),
        (
            vec![
                "records",
                "--center-bin",
                "/nonexistent/tollway-center",
                "--report",
                report.to_str().unwrap(),
            ],
            "--center-bin /nonexistent/tollway-center: not found",
        ),
    ];
    for (args, expected) in cases {
        let output = Command::new(bin_path("tollway-loadtest"))
            .args(&args)
            .output()
            .expect("tollway-loadtest did not start");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(!report.exists(), "a report was written");
}
