//! The main job end to end, short: runs `tollway-demo --short` against real
//! brokers, bridges, centres, edge daemons and Podman, then checks its JSON
//! report stage by stage. Needs `TOLLWAY_PODMAN_SOCKET` and the toll app
//! images 1.0.0 and 1.1.0, which `scripts/test` provides.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn number(value: &Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key} in {value}"))
}

/// Lists the containers Podman still has for `node`.
fn containers_of(node: &str) -> String {
    let socket = std::env::var("TOLLWAY_PODMAN_SOCKET").expect("TOLLWAY_PODMAN_SOCKET is set");
    let output = Command::new("podman")
        .args(["--url", &format!("unix://{socket}"), "ps", "-aq"])
        .args(["--filter", &format!("label=io.tollway.node={node}")])
        .output()
        .expect("podman runs");
    assert!(output.status.success(), "podman ps failed: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn short_demo_loses_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("report.json");
    let run_dir = dir.path().join("run");

    let output = Command::new(env!("CARGO_BIN_EXE_tollway-demo"))
        .arg("--short")
        .arg("--report")
        .arg(&report_path)
        .arg("--run-dir")
        .arg(&run_dir)
        .env("LANG", "C.UTF-8")
        .env_remove("LC_ALL")
        .env_remove("LC_MESSAGES")
        .output()
        .expect("tollway-demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tollway-demo exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(stdout.contains("records missing: 0"), "{stdout}");

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert_eq!(report["complete"], Value::Bool(true), "{report:#}");
    assert_eq!(number(&report["totals"], "missing"), 0, "{report:#}");

    let nodes = report["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 6, "{report:#}");
    for node in nodes {
        let id = node["node"].as_str().unwrap();
        let produced = number(node, "produced");
        let acked = number(node, "acked_by_intake");
        let unacked = number(node, "unacked_at_app_stop");
        let accepted = number(node, "accepted_by_intake");
        let province = number(node, "stored_in_province");
        let national = number(node, "stored_nationally");
        assert!(produced > 0, "{id} produced nothing");
        assert_eq!(produced, acked + unacked, "{id}: produced vs acknowledged");
        assert!(
            accepted >= acked,
            "{id}: accepted {accepted} < acked {acked}"
        );
        assert_eq!(province, accepted, "{id}: province store vs intake");
        assert_eq!(national, province, "{id}: national store vs province");
        assert_eq!(
            number(node, "national_pay_fee_sum"),
            number(node, "province_pay_fee_sum"),
            "{id}: pay-fee sums"
        );
        assert!(
            node["rollout_interruption_ms"].is_u64(),
            "{id}: no acknowledgement gap measured at the rollout"
        );
        assert!(
            node["node_switch_ms"].is_u64(),
            "{id}: the node reported no switch time for the rollout"
        );
        assert_eq!(containers_of(id), "", "{id}: containers left behind");
    }

    let events = &report["events"];
    let cut = number(events, "cut_province");
    let cut_province = report["provinces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| number(p, "province") == cut)
        .expect("the cut province is in the report");
    assert!(
        number(cut_province, "max_forward_backlog") > 0,
        "no record queued in the forwarder while the link was cut: {report:#}"
    );
    assert!(
        events["killed_node"]
            .as_str()
            .is_some_and(|n| !n.is_empty()),
        "no daemon was killed: {report:#}"
    );
    assert!(Path::new(&run_dir).join("logs").is_dir());
}
