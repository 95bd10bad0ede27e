//! Records per hour in the province, from the nodes' hourly summaries.
//!
//! Every node publishes one summary per gantry when an hour closes (and
//! again when a late record changes it). The controller sums the latest
//! count of every (node, gantry) for the newest hour it has seen, which is
//! the figure the province status reports as `records_per_hour`. Summaries
//! of a node that is still offline arrive later and raise the figure then.
//!
//! Memory is bounded: the controller keeps [`HOURS_KEPT`] hours, each with
//! at most one entry per (node, gantry) of the inventory.

use std::collections::{BTreeMap, HashMap};

use tollway_topics::{HourlySummary, NodeId};

/// Hours of summaries kept; older ones are dropped when a newer one starts.
pub const HOURS_KEPT: usize = 2;

/// The latest summary counts per hour, node and gantry.
#[derive(Debug, Default)]
pub struct HourlyCounts {
    hours: BTreeMap<u32, HashMap<(NodeId, String), u64>>,
}

impl HourlyCounts {
    /// Records `summary` from `node`; a resent summary replaces the earlier
    /// count of its gantry and hour. Summaries older than the kept hours are
    /// ignored.
    pub fn record(&mut self, node: &NodeId, summary: &HourlySummary) {
        let oldest_kept = self.hours.keys().next().copied();
        if self.hours.len() >= HOURS_KEPT
            && oldest_kept.is_some_and(|oldest| summary.hour_batch < oldest)
        {
            return;
        }
        self.hours
            .entry(summary.hour_batch)
            .or_default()
            .insert((node.clone(), summary.gantry_id.clone()), summary.count);
        while self.hours.len() > HOURS_KEPT {
            self.hours.pop_first();
        }
    }

    /// Records in the newest hour seen, or `None` before any summary.
    pub fn newest_hour_total(&self) -> Option<u64> {
        let (_, counts) = self.hours.last_key_value()?;
        Some(counts.values().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(gantry: &str, hour_batch: u32, count: u64) -> HourlySummary {
        HourlySummary {
            gantry_id: gantry.to_string(),
            hour_batch,
            count,
            fee_sum: count * 100,
            first_seq: Some(1),
            last_seq: Some(count),
        }
    }

    #[test]
    fn newest_hour_sums_latest_counts() {
        let (a, b) = (NodeId::new("a").unwrap(), NodeId::new("b").unwrap());
        let mut counts = HourlyCounts::default();
        assert_eq!(counts.newest_hour_total(), None);

        counts.record(&a, &summary("G1", 2026120409, 10));
        counts.record(&a, &summary("G1", 2026120410, 100));
        counts.record(&a, &summary("G2", 2026120410, 20));
        counts.record(&b, &summary("G1", 2026120410, 5));
        // A resend with a late record replaces the count.
        counts.record(&a, &summary("G2", 2026120410, 21));
        assert_eq!(counts.newest_hour_total(), Some(126));

        // A late summary of the kept older hour does not change the newest.
        counts.record(&b, &summary("G1", 2026120409, 7));
        assert_eq!(counts.newest_hour_total(), Some(126));
    }

    #[test]
    fn old_hours_are_dropped() {
        let a = NodeId::new("a").unwrap();
        let mut counts = HourlyCounts::default();
        for hour in 2026120400..2026120410 {
            counts.record(&a, &summary("G1", hour, u64::from(hour % 100)));
        }
        assert_eq!(counts.hours.len(), HOURS_KEPT);
        // Too old to keep.
        counts.record(&a, &summary("G1", 2026120401, 1));
        assert_eq!(counts.hours.len(), HOURS_KEPT);
        assert_eq!(counts.newest_hour_total(), Some(9));
    }
}
