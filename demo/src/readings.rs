//! Readings of the running demo from the real services and apps: the
//! apps' counts files, the provincial and national query APIs (node
//! watermarks, per-gantry hourly totals, forwarding watermarks) and the
//! services' counters.

use std::path::Path;

use crate::cluster::Cluster;
use crate::configs::{NodeFiles, ProvinceFiles};
use crate::counts::{self, AppCounts};
use crate::http::{get_json, stat};
use crate::report::NodeReport;
use crate::scenario::{FIRST_VERSION, NEXT_VERSION, StageError};

/// Returns `province`'s highest contiguous forwarding seq in the national store.
pub fn national_forward_through(
    cluster: &Cluster,
    province: &ProvinceFiles,
) -> Result<u64, StageError> {
    let national = get_json(
        cluster.national.query_port,
        &format!("/v1/provinces/{}", province.province),
    )?;
    Ok(national["forward_through"].as_u64().unwrap_or(0))
}

/// Returns records stored in `province` and not yet acknowledged by the
/// national store.
pub fn forward_backlog(cluster: &Cluster, province: &ProvinceFiles) -> Result<u64, StageError> {
    let stored = stat(province.query_port, "records_stored")?;
    Ok(stored.saturating_sub(national_forward_through(cluster, province)?))
}

/// Reads one node's counts: its apps' counts files, its watermark and gantry
/// totals in the provincial store, and its gantry totals nationally.
pub fn node_report(
    cluster: &Cluster,
    node: &NodeFiles,
    window: (u64, u64),
) -> Result<NodeReport, StageError> {
    let province = cluster
        .provinces
        .iter()
        .find(|p| p.province == node.plan.province)
        .expect("every node belongs to a province of the plan");
    let mut report = NodeReport {
        node: node.plan.id.clone(),
        province: node.plan.province,
        gantry: node.plan.gantry.clone(),
        ..NodeReport::default()
    };

    let versions: Vec<AppCounts> = [FIRST_VERSION, NEXT_VERSION]
        .iter()
        .filter_map(|version| counts::read(&node.counts_dir, version))
        .collect();
    for counts in &versions {
        report.produced += counts.produced;
        report.acked_by_intake += counts.acked;
        report.unacked_at_app_stop += counts.pending;
    }
    report.rollout_interruption_ms = interruption_ms(&node.counts_dir);

    let watermark = get_json(
        province.query_port,
        &format!("/v1/nodes/{}/{}", node.plan.province, node.plan.id),
    )?;
    report.accepted_by_intake = watermark["stored_through"].as_u64().unwrap_or(0);
    (report.stored_in_province, report.province_pay_fee_sum) =
        gantry_totals(province.query_port, &node.plan.gantry, window)?;
    (report.stored_nationally, report.national_pay_fee_sum) =
        gantry_totals(cluster.national.query_port, &node.plan.gantry, window)?;
    Ok(report)
}

/// Returns the record count and pay-fee sum of `gantry` in one store, from
/// the query API's hourly totals.
pub fn gantry_totals(
    port: u16,
    gantry: &str,
    window: (u64, u64),
) -> Result<(u64, u64), StageError> {
    let hours = get_json(
        port,
        &format!(
            "/v1/hours?gantry={gantry}&from_ms={}&to_ms={}",
            window.0, window.1
        ),
    )?;
    let mut count = 0;
    let mut pay_fee_sum = 0;
    for hour in hours["hours"].as_array().into_iter().flatten() {
        count += hour["count"].as_u64().unwrap_or(0);
        pay_fee_sum += hour["pay_fee_sum"].as_u64().unwrap_or(0);
    }
    Ok((count, pay_fee_sum))
}

/// Returns the gap between the old version's last acknowledged record and
/// the new version's first on one node, from the apps' own counts.
pub fn interruption_ms(counts_dir: &Path) -> Option<u64> {
    let old = counts::read(counts_dir, FIRST_VERSION)?;
    let new = counts::read(counts_dir, NEXT_VERSION)?;
    Some(new.first_ack_ms?.saturating_sub(old.last_ack_ms?))
}
