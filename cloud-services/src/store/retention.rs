//! Retention: deleting old records once the next hop has them.
//!
//! A record is deleted when it was stored more than the retention window
//! ago and the next hop has it. In a provincial store, the national centre has
//! acknowledged its forwarding seq; in the national store, its province's
//! forwarding watermark covers it. Records are visited in forwarding order,
//! which is storage order, so a pass stops at the first record that must
//! stay. The record, its gantry index entry and its forwarding entry go in
//! one synced batch.
//!
//! A record that arrives again after it was pruned is still a duplicate:
//! both stores compare its seq with the node's contiguous watermark, which
//! pruning leaves in place.
//!
//! Summaries that reconciliation proved complete (`summaries_done`) go once
//! their hour is older than the retention window. Summaries still pending
//! stay however old: they name hours with records missing.

use std::collections::HashSet;

use rocksdb::{Direction, IteratorMode, WriteBatch};
use tollway_topics::{HourlySummary, Message, Province, hour_batch_at};

use super::error::read_error;
use super::keys::{forward_key, forward_mark_key, gantry_key, parse_record_key};
use super::{
    BY_GANTRY_CF, FORWARD_ACKED_KEY, FORWARD_CF, MARKS_CF, RECORDS_CF, RecordStore,
    SUMMARIES_DONE_CF, StoreError, corrupt, keys_default, synced,
};

/// The records a store may prune.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneScope {
    /// A provincial store: its own records, up to the national centre's
    /// acknowledgement.
    Province(Province),
    /// The national store: every province's records, each up to that
    /// province's forwarding watermark.
    National,
}

/// The outcome of one prune pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Records deleted.
    pub removed: u64,
    /// True when the pass stopped at its limit with more to prune.
    pub more: bool,
}

impl RecordStore {
    /// Deletes at most `max` records stored before `cutoff_ms` that the next
    /// hop already has (see the module comment).
    pub fn prune(
        &self,
        scope: PruneScope,
        cutoff_ms: u64,
        max: usize,
    ) -> Result<PruneReport, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let mut batch = WriteBatch::default();
        let mut report = PruneReport::default();
        // Records deleted in this batch, which reads still see until it is
        // written: national duplicates point to them again.
        let mut removed_keys = HashSet::new();

        let start = match scope {
            PruneScope::Province(province) => vec![province.code()],
            PruneScope::National => Vec::new(),
        };
        let mut seek = start;
        'provinces: loop {
            // The first forwarding entry at or after `seek` names the next
            // province with entries.
            let next = self
                .db
                .iterator_cf(
                    self.cf(FORWARD_CF),
                    IteratorMode::From(&seek, Direction::Forward),
                )
                .next();
            let Some(next) = next else {
                break;
            };
            let (key, _) = next.map_err(read_error("forward index"))?;
            let Some(province) = key.first().and_then(|&code| Province::new(code).ok()) else {
                return Err(corrupt("a forward index key", "no valid province code"));
            };
            if matches!(scope, PruneScope::Province(own) if own != province) {
                break;
            }
            let covered = self.covered_through(scope, province)?;

            let entries = self.db.iterator_cf(
                self.cf(FORWARD_CF),
                IteratorMode::From(&forward_key(province, 0), Direction::Forward),
            );
            for entry in entries {
                let (key, record_key) = entry.map_err(read_error("forward index"))?;
                if key.first() != Some(&province.code()) {
                    break;
                }
                let forward_seq = super::keys::seq_after_prefix(&[province.code()], &key)
                    .ok_or_else(|| corrupt("a forward index key", "malformed"))?;
                if forward_seq > covered {
                    break;
                }
                if removed_keys.contains(record_key.as_ref()) {
                    // Deleted above through an earlier forwarding entry.
                } else if let Some(stored) = self.get_record(&record_key)? {
                    if stored.stored_at_ms >= cutoff_ms {
                        break;
                    }
                    if report.removed as usize >= max {
                        report.more = true;
                        break 'provinces;
                    }
                    batch.delete_cf(self.cf(RECORDS_CF), &record_key);
                    batch.delete_cf(
                        self.cf(BY_GANTRY_CF),
                        gantry_key(
                            &stored.record.gantry_id,
                            stored.record.pass_time_ms,
                            &record_key,
                        ),
                    );
                    report.removed += 1;
                    removed_keys.insert(record_key.to_vec());
                } else if parse_record_key(&record_key).is_none() {
                    return Err(corrupt(
                        format!("forward index entry {forward_seq} of province {province}"),
                        "malformed record key",
                    ));
                }
                // A national entry of a duplicate points to a record another
                // entry already removed; the entry goes either way.
                batch.delete_cf(self.cf(FORWARD_CF), &key);
            }

            match (scope, province.code().checked_add(1)) {
                (PruneScope::National, Some(next)) => seek = vec![next],
                _ => break,
            }
        }

        if !batch.is_empty() {
            self.db
                .write_opt(batch, &synced())
                .map_err(|source| StoreError::Prune {
                    removed: report.removed,
                    source,
                })?;
        }
        Ok(report)
    }

    /// Deletes at most `max` proved-complete hourly summaries of hours that
    /// began before `cutoff_ms`.
    pub fn prune_summaries(&self, cutoff_ms: u64, max: usize) -> Result<PruneReport, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let cutoff_hour = hour_batch_at(cutoff_ms);
        let mut batch = WriteBatch::default();
        let mut report = PruneReport::default();

        for entry in self
            .db
            .iterator_cf(self.cf(SUMMARIES_DONE_CF), IteratorMode::Start)
        {
            let (key, value) = entry.map_err(read_error("summaries_done"))?;
            let summary = HourlySummary::from_cbor(&value)
                .map_err(|err| corrupt("a completed summary", err.to_string()))?;
            if summary.hour_batch >= cutoff_hour {
                continue;
            }
            if report.removed as usize >= max {
                report.more = true;
                break;
            }
            batch.delete_cf(self.cf(SUMMARIES_DONE_CF), &key);
            report.removed += 1;
        }

        if !batch.is_empty() {
            self.db
                .write_opt(batch, &synced())
                .map_err(|source| StoreError::Prune {
                    removed: report.removed,
                    source,
                })?;
        }
        Ok(report)
    }

    /// Returns the highest forwarding seq of `province` that the next hop has.
    fn covered_through(&self, scope: PruneScope, province: Province) -> Result<u64, StoreError> {
        match scope {
            PruneScope::Province(_) => self.read_u64(keys_default(), FORWARD_ACKED_KEY),
            PruneScope::National => self.read_u64(MARKS_CF, &forward_mark_key(province)),
        }
    }
}

#[cfg(test)]
mod tests {
    use tollway_topics::{ForwardedRecord, NodeId, TollRecord, samples};

    use super::*;

    fn province(code: u8) -> Province {
        Province::new(code).unwrap()
    }

    fn records(node: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<TollRecord> {
        seqs.map(|seq| {
            let mut record = samples::toll_record();
            record.transaction_id = format!("{node}-{seq}");
            record.pass_time_ms += seq * 1000;
            record
        })
        .collect()
    }

    fn gantry_count(store: &RecordStore) -> usize {
        let gantry = samples::toll_record().gantry_id;
        store
            .records_by_gantry(&gantry, 0, u64::MAX, 10_000)
            .unwrap()
            .0
            .len()
    }

    /// Returns a cutoff after every record's storage time.
    fn all_expired() -> u64 {
        super::super::now_ms() + 1
    }

    #[test]
    fn province_prunes_only_what_the_nation_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(dir.path()).unwrap();
        let (p44, node) = (province(44), NodeId::new("n1").unwrap());
        store
            .store_node_batch(p44, &node, 1, &records("n1", 1..=10))
            .unwrap();
        let scope = PruneScope::Province(p44);

        // Nothing acknowledged, nothing goes, however old.
        let report = store.prune(scope, all_expired(), 100).unwrap();
        assert_eq!(report, PruneReport::default());

        store.set_forward_acked_through(6).unwrap();
        // Nothing is old enough yet.
        assert_eq!(store.prune(scope, 0, 100).unwrap().removed, 0);

        // A small limit prunes in batches.
        let first = store.prune(scope, all_expired(), 4).unwrap();
        assert_eq!(
            first,
            PruneReport {
                removed: 4,
                more: true
            }
        );
        let second = store.prune(scope, all_expired(), 4).unwrap();
        assert_eq!(
            second,
            PruneReport {
                removed: 2,
                more: false
            }
        );

        assert_eq!(
            gantry_count(&store),
            4,
            "gantry index entries of pruned records"
        );
        let unforwarded = store.forward_range(p44, 7, 100).unwrap();
        assert_eq!(unforwarded.len(), 4);
        assert_eq!(unforwarded[0].seq, 7);

        // A pruned record sent again is still a duplicate.
        let again = store
            .store_node_batch(p44, &node, 1, &records("n1", 1..=3))
            .unwrap();
        assert_eq!((again.stored, again.duplicates), (0, 3));
        assert_eq!(store.node_stored_through(p44, &node).unwrap(), 10);
    }

    #[test]
    fn national_prunes_each_province_up_to_its_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(dir.path()).unwrap();
        let forwarded = |node: &str, seqs: std::ops::RangeInclusive<u64>| -> Vec<ForwardedRecord> {
            let first = *seqs.start();
            records(node, seqs)
                .into_iter()
                .zip(first..)
                .map(|(record, seq)| ForwardedRecord {
                    node: NodeId::new(node).unwrap(),
                    seq,
                    record,
                })
                .collect()
        };

        // Province 44 sends 1..=5, then 4..=5 again as forwarding seqs 6
        // and 7 (duplicates); province 32 sends 1..=3 with a gap before 5.
        store
            .store_forward_batch(province(44), 1, &forwarded("a", 1..=5))
            .unwrap();
        store
            .store_forward_batch(province(44), 6, &forwarded("a", 4..=5))
            .unwrap();
        store
            .store_forward_batch(province(32), 1, &forwarded("b", 1..=3))
            .unwrap();
        store
            .store_forward_batch(province(32), 5, &forwarded("b", 5..=5))
            .unwrap();
        assert_eq!(gantry_count(&store), 9);
        let (a, b) = (NodeId::new("a").unwrap(), NodeId::new("b").unwrap());
        assert_eq!(store.node_stored_through(province(44), &a).unwrap(), 5);
        assert_eq!(store.node_stored_through(province(32), &b).unwrap(), 3);

        let report = store
            .prune(PruneScope::National, all_expired(), 100)
            .unwrap();
        // All five of 44 (seven entries), and 32's three below its gap.
        assert_eq!(
            report,
            PruneReport {
                removed: 8,
                more: false
            }
        );
        assert_eq!(gantry_count(&store), 1);
        assert_eq!(store.province_forward_through(province(44)).unwrap(), 7);

        // A pruned record forwarded again is still a duplicate.
        let outcome = store
            .store_forward_batch(province(44), 8, &forwarded("a", 1..=2))
            .unwrap();
        assert_eq!(outcome.stored, 0);
        assert_eq!(outcome.duplicates, 2);
        assert_eq!(gantry_count(&store), 1);
        assert_eq!(store.province_forward_through(province(32)).unwrap(), 3);

        // Once 4 arrives, 32's watermark covers 5 and it goes too.
        store
            .store_forward_batch(province(32), 4, &forwarded("b", 4..=4))
            .unwrap();
        assert_eq!(store.node_stored_through(province(32), &b).unwrap(), 5);
        let report = store
            .prune(PruneScope::National, all_expired(), 100)
            .unwrap();
        assert_eq!(report.removed, 2);
        assert_eq!(gantry_count(&store), 0);
    }

    #[test]
    fn completed_summaries_go_after_their_hour_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(dir.path()).unwrap();
        let (p44, node) = (province(44), NodeId::new("n1").unwrap());
        let now = super::super::now_ms();
        let summary = |hour_batch: u32, gantry: &str| {
            let mut summary = samples::hourly_summary();
            summary.hour_batch = hour_batch;
            summary.gantry_id = gantry.to_string();
            summary
        };

        // An old and a current summary completed, an old one still pending.
        for summary in [
            summary(2026010100, "G1"),
            summary(hour_batch_at(now), "G1"),
            summary(2026010100, "G2"),
        ] {
            assert!(store.put_summary(p44, &node, &summary).unwrap());
        }
        for pending in store.pending_summaries(10).unwrap() {
            if pending.summary.gantry_id == "G1" {
                store.mark_summary_complete(&pending).unwrap();
            }
        }

        let report = store.prune_summaries(now - 3_600_000, 100).unwrap();
        assert_eq!(
            report,
            PruneReport {
                removed: 1,
                more: false
            }
        );
        assert_eq!(store.pending_summaries(10).unwrap().len(), 1);
        // The pruned summary, sent again, is new work; the current one is
        // still known as done.
        assert!(
            store
                .put_summary(p44, &node, &summary(2026010100, "G1"))
                .unwrap()
        );
        assert!(
            !store
                .put_summary(p44, &node, &summary(hour_batch_at(now), "G1"))
                .unwrap()
        );
    }
}
