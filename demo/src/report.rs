//! The completeness report: what every stage counted, per node, province
//! and nation. Every count is read from the apps' counts files, the
//! provincial and national query APIs and the services' counters. The
//! checks prove that every acknowledged record reached the national store
//! exactly once.

use serde::Serialize;

use crate::locale::text;

/// Counts of one node, from the app to the national store.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeReport {
    pub node: String,
    pub province: u8,
    pub gantry: String,
    /// Records the node's toll apps generated, all versions.
    pub produced: u64,
    /// Records the node's intake acknowledged to the apps (PUBACK).
    pub acked_by_intake: u64,
    /// Records generated but unacknowledged when an app stopped. The app
    /// never handed them over, so no later stage has to store them.
    pub unacked_at_app_stop: u64,
    /// The node's highest contiguous outbox seq that the province stored:
    /// every record the intake accepted, once all are home.
    pub accepted_by_intake: u64,
    /// Records of the node's gantry in the provincial store.
    pub stored_in_province: u64,
    /// Records of the node's gantry in the national store.
    pub stored_nationally: u64,
    /// Pay-fee sums (fen) of the gantry's records in each store.
    pub province_pay_fee_sum: u64,
    pub national_pay_fee_sum: u64,
    /// Acknowledged or accepted records missing from the national store.
    pub missing: u64,
    /// Time between the old version's last acknowledged record and the new
    /// version's first, in milliseconds; absent when the switch was not seen.
    pub rollout_interruption_ms: Option<u64>,
    /// The switch time that the node reported in its status for the
    /// rollout (old container's stop request to new container running), in
    /// milliseconds.
    pub node_switch_ms: Option<u64>,
}

/// Counters of one province's centre.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProvinceReport {
    pub province: u8,
    /// Records the ingest stored for the first time (`records_stored`).
    pub records_stored: u64,
    /// Records the ingest dropped as already stored (`records_duplicate`).
    pub duplicates_dropped: u64,
    /// The province's highest contiguous forwarding seq in the national store.
    pub national_forward_through: u64,
    /// Largest forwarding backlog seen while the link was cut (records stored
    /// in the province and not yet national); 0 for a province not cut.
    pub max_forward_backlog: u64,
}

/// Counters of the national ingest.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NationalReport {
    pub records_stored: u64,
    pub duplicates_dropped: u64,
}

/// Sums over every node.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub produced: u64,
    pub acked_by_intake: u64,
    pub unacked_at_app_stop: u64,
    pub accepted_by_intake: u64,
    pub stored_in_provinces: u64,
    pub stored_nationally: u64,
    pub duplicates_dropped: u64,
    pub missing: u64,
}

/// Facts about the disruptive steps.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Events {
    pub rollout_from: String,
    pub rollout_to: String,
    /// Method of the switch to the new version.
    pub rollout_method: String,
    pub cut_province: u8,
    pub cut_seconds: u64,
    pub killed_node: String,
    /// Seconds from restoring the link until the national store acknowledged
    /// every record that the cut province had stored by then. Absent when
    /// that took longer than the traffic after the cut.
    pub catch_up_seconds: Option<f64>,
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub run_dir: String,
    pub duration_s: u64,
    pub events: Events,
    pub nodes: Vec<NodeReport>,
    pub provinces: Vec<ProvinceReport>,
    pub national: NationalReport,
    pub totals: Totals,
    /// Stage counts that do not match; empty when the run is complete.
    pub problems: Vec<String>,
    /// True when nothing is missing and every stage count matches.
    pub complete: bool,
}

impl NodeReport {
    /// Computes `missing` and lists every stage count of this node that does
    /// not match.
    pub fn check(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let node = &self.node;
        if self.accepted_by_intake < self.acked_by_intake {
            problems.push(format!(
                "{node}: the intake acknowledged {} records but the province stored only through seq {}",
                self.acked_by_intake, self.accepted_by_intake
            ));
        }
        if self.stored_in_province != self.accepted_by_intake {
            problems.push(format!(
                "{node}: the province stored {} records but holds seqs 1 to {} contiguously",
                self.stored_in_province, self.accepted_by_intake
            ));
        }
        if self.stored_nationally != self.stored_in_province {
            problems.push(format!(
                "{node}: {} records stored in the province, {} nationally",
                self.stored_in_province, self.stored_nationally
            ));
        }
        if self.national_pay_fee_sum != self.province_pay_fee_sum {
            problems.push(format!(
                "{node}: pay-fee sum {} fen in the province, {} fen nationally",
                self.province_pay_fee_sum, self.national_pay_fee_sum
            ));
        }
        if self.produced != self.acked_by_intake + self.unacked_at_app_stop {
            problems.push(format!(
                "{node}: the apps produced {} records but report {} acknowledged and {} unacknowledged",
                self.produced, self.acked_by_intake, self.unacked_at_app_stop
            ));
        }
        let owed = self.accepted_by_intake.max(self.acked_by_intake);
        self.missing = owed.saturating_sub(self.stored_nationally);
        problems
    }
}

impl Report {
    /// Sums the nodes, checks every stage and sets `complete`.
    pub fn finish(&mut self) {
        let mut problems = Vec::new();
        let mut totals = Totals::default();
        for node in &mut self.nodes {
            problems.extend(node.check());
            totals.produced += node.produced;
            totals.acked_by_intake += node.acked_by_intake;
            totals.unacked_at_app_stop += node.unacked_at_app_stop;
            totals.accepted_by_intake += node.accepted_by_intake;
            totals.stored_in_provinces += node.stored_in_province;
            totals.stored_nationally += node.stored_nationally;
            totals.missing += node.missing;
        }
        for province in &self.provinces {
            let stored: u64 = self
                .nodes
                .iter()
                .filter(|node| node.province == province.province)
                .map(|node| node.stored_in_province)
                .sum();
            if province.records_stored != stored {
                problems.push(format!(
                    "province {}: ingest counter records_stored is {}, its query API holds {stored}",
                    province.province, province.records_stored
                ));
            }
            if province.national_forward_through != province.records_stored {
                problems.push(format!(
                    "province {}: stored {} records, the national store acknowledged forwarding through {}",
                    province.province, province.records_stored, province.national_forward_through
                ));
            }
            totals.duplicates_dropped += province.duplicates_dropped;
        }
        if self.national.records_stored != totals.stored_nationally {
            problems.push(format!(
                "national ingest counter records_stored is {}, its query API holds {}",
                self.national.records_stored, totals.stored_nationally
            ));
        }
        if totals.produced == 0 {
            problems.push("no records were produced".to_string());
        }
        totals.duplicates_dropped += self.national.duplicates_dropped;
        if totals.missing > 0 {
            problems.push(format!("{} records are missing", totals.missing));
        }
        self.totals = totals;
        self.complete = problems.is_empty();
        self.problems = problems;
    }

    /// Renders the report for the terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out += &format!("{}\n\n", text("Completeness report", "完整性报告"));
        let header = [
            text("node", "节点"),
            text("produced", "产生"),
            text("intake ack", "接收确认"),
            text("unacked", "未确认"),
            text("accepted", "已接收"),
            text("province", "省中心"),
            text("national", "部中心"),
            text("missing", "缺失"),
            text("switch", "切换"),
            text("ack gap", "确认中断"),
        ];
        let mut rows: Vec<Vec<String>> = self
            .nodes
            .iter()
            .map(|node| {
                vec![
                    node.node.clone(),
                    node.produced.to_string(),
                    node.acked_by_intake.to_string(),
                    node.unacked_at_app_stop.to_string(),
                    node.accepted_by_intake.to_string(),
                    node.stored_in_province.to_string(),
                    node.stored_nationally.to_string(),
                    node.missing.to_string(),
                    milliseconds(node.node_switch_ms),
                    milliseconds(node.rollout_interruption_ms),
                ]
            })
            .collect();
        let t = &self.totals;
        rows.push(vec![
            text("total", "合计").to_string(),
            t.produced.to_string(),
            t.acked_by_intake.to_string(),
            t.unacked_at_app_stop.to_string(),
            t.accepted_by_intake.to_string(),
            t.stored_in_provinces.to_string(),
            t.stored_nationally.to_string(),
            t.missing.to_string(),
            String::new(),
            String::new(),
        ]);
        out += &table(&header, &rows);
        out += "\n";

        for province in &self.provinces {
            out += &format!(
                "{} {}{}{} {}{}{} {}{}{} {}\n",
                text("province", "省份"),
                province.province,
                text(": ", "："),
                text("stored", "存储"),
                province.records_stored,
                text(", ", "，"),
                text("duplicates dropped", "丢弃重复"),
                province.duplicates_dropped,
                text(", ", "，"),
                text("forwarded nationally through seq", "部中心确认转发至序号"),
                province.national_forward_through,
            );
            if province.max_forward_backlog > 0 {
                out += &format!(
                    "  {}{}\n",
                    text(
                        "most records queued in its forwarder during the outage: ",
                        "断网期间转发队列中最多的记录数："
                    ),
                    province.max_forward_backlog
                );
            }
        }
        out += &format!(
            "{}{}{} {}{}{} {}\n",
            text("national", "部中心"),
            text(": ", "："),
            text("stored", "存储"),
            self.national.records_stored,
            text(", ", "，"),
            text("duplicates dropped", "丢弃重复"),
            self.national.duplicates_dropped,
        );
        let events = &self.events;
        out += &format!(
            "{}{}{} -> {} ({})\n",
            text("rollout", "版本升级"),
            text(": ", "："),
            events.rollout_from,
            events.rollout_to,
            events.rollout_method
        );
        out += &format!(
            "{} {} {} {} s{}{}{}\n",
            text("outage: province", "断网：省份"),
            events.cut_province,
            text("cut from the national centre for", "与部中心断开"),
            events.cut_seconds,
            text("; ", "；"),
            text(
                "edge daemon killed with SIGKILL and restarted: ",
                "被 SIGKILL 杀死并重启的边缘守护进程：",
            ),
            events.killed_node,
        );
        if let Some(seconds) = events.catch_up_seconds {
            out += &format!(
                "{} {seconds:.1} s\n",
                text(
                    "records queued during the outage reached the national store in",
                    "断网期间排队的记录到达部中心用时"
                )
            );
        }
        out += "\n";
        if self.complete {
            out += text(
                "COMPLETE: every acknowledged record is stored nationally exactly once; records missing: 0\n",
                "完整：每条已确认记录都在部中心存储且仅一次；缺失记录：0\n",
            );
        } else {
            out += text("INCOMPLETE:\n", "不完整：\n");
            for problem in &self.problems {
                out += &format!("  - {problem}\n");
            }
        }
        out
    }
}

fn milliseconds(value: Option<u64>) -> String {
    value
        .map(|ms| format!("{ms} ms"))
        .unwrap_or_else(|| "-".to_string())
}

/// Renders rows under a header with columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| display_width(cell)).collect();
    for row in rows {
        for (column, cell) in row.iter().enumerate() {
            widths[column] = widths[column].max(display_width(cell));
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| {
                let pad = width - display_width(cell);
                format!("{cell}{}", " ".repeat(pad))
            })
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

/// Terminal width of `text`: CJK characters take two columns.
fn display_width(text: &str) -> usize {
    text.chars()
        .map(|c| if c as u32 >= 0x2E80 { 2 } else { 1 })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(accepted: u64, province: u64, national: u64) -> NodeReport {
        NodeReport {
            node: "g44-1-ab12".to_string(),
            province: 44,
            produced: 100,
            acked_by_intake: 98,
            unacked_at_app_stop: 2,
            accepted_by_intake: accepted,
            stored_in_province: province,
            stored_nationally: national,
            ..NodeReport::default()
        }
    }

    fn report(nodes: Vec<NodeReport>) -> Report {
        let stored: u64 = nodes.iter().map(|n| n.stored_in_province).sum();
        let national: u64 = nodes.iter().map(|n| n.stored_nationally).sum();
        Report {
            nodes,
            provinces: vec![ProvinceReport {
                province: 44,
                records_stored: stored,
                national_forward_through: stored,
                ..ProvinceReport::default()
            }],
            national: NationalReport {
                records_stored: national,
                duplicates_dropped: 0,
            },
            ..Report::default()
        }
    }

    #[test]
    fn matching_counts_are_complete() {
        let mut report = report(vec![node(98, 98, 98)]);
        report.finish();
        assert!(report.complete, "{:?}", report.problems);
        assert_eq!(report.totals.missing, 0);
    }

    #[test]
    fn records_short_nationally_are_missing() {
        let mut report = report(vec![node(98, 98, 90)]);
        report.finish();
        assert!(!report.complete);
        assert_eq!(report.totals.missing, 8);
    }

    #[test]
    fn acknowledged_but_not_accepted_is_missing() {
        let mut report = report(vec![node(95, 95, 95)]);
        report.finish();
        assert!(!report.complete);
        assert_eq!(report.totals.missing, 3);
    }

    #[test]
    fn accepted_beyond_acknowledged_is_complete() {
        // A record stored by the intake whose PUBACK the app never saw.
        let mut report = report(vec![node(99, 99, 99)]);
        report.finish();
        assert!(report.complete, "{:?}", report.problems);
    }

    #[test]
    fn table_pads_chinese_columns() {
        let rendered = table(&["节点", "x"], &[vec!["ab".to_string(), "1".to_string()]]);
        assert_eq!(rendered, "节点  x\nab    1\n");
    }
}
