//! Reads and writes for hourly reconciliation: nodes' summaries, the stored
//! records they describe, and the gaps above each node's watermark.

use rocksdb::{Direction, IteratorMode, WriteBatch};
use tollway_topics::{HourlySummary, Message, NodeId, Province};

use super::error::read_error;
use super::keys::*;
use super::{
    MARKS_CF, RECORDS_CF, RecordStore, SUMMARIES_DONE_CF, SUMMARIES_PENDING_CF, StoreError,
    corrupt, synced,
};

/// Maximum missing ranges reported per node and summary in one pass; the
/// rest are found by the next pass once these are filled.
const MAX_RANGES: usize = 16;

/// A node's summary that reconciliation has not yet proved complete.
#[derive(Debug, Clone)]
pub struct PendingSummary {
    pub province: Province,
    pub node: NodeId,
    pub summary: HourlySummary,
}

/// The missing ranges above one node's watermark.
#[derive(Debug, Clone)]
pub struct NodeGaps {
    pub province: Province,
    pub node: NodeId,
    pub ranges: Vec<(u64, u64)>,
}

/// Stored records of one summary's gantry and hour, compared by count and fee.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HourTally {
    /// Stored records of the summary's gantry and hour within its seq range.
    pub count: u64,
    /// Their `pay_fee` sum, in fen.
    pub fee_sum: u64,
    /// Sequence ranges within the summary's range that are not stored.
    pub missing: Vec<(u64, u64)>,
}

impl RecordStore {
    /// Stores a node's hourly summary for reconciliation. Returns false when
    /// the same summary was already proved complete, so there is nothing to do.
    pub fn put_summary(
        &self,
        province: Province,
        node: &NodeId,
        summary: &HourlySummary,
    ) -> Result<bool, StoreError> {
        let key = summary_key(province, node, summary.hour_batch, &summary.gantry_id);
        let cbor = summary
            .to_cbor()
            .map_err(|err| corrupt(format!("summary of node {node}"), err.to_string()))?;
        let done = self
            .db
            .get_pinned_cf(self.cf(SUMMARIES_DONE_CF), &key)
            .map_err(read_error("summaries_done"))?;
        if done.as_deref() == Some(&cbor[..]) {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(SUMMARIES_DONE_CF), &key);
        batch.put_cf(self.cf(SUMMARIES_PENDING_CF), &key, &cbor);
        self.db
            .write_opt(batch, &synced())
            .map_err(read_error("write of a summary"))?;
        Ok(true)
    }

    /// Returns up to `max` summaries waiting for reconciliation.
    pub fn pending_summaries(&self, max: usize) -> Result<Vec<PendingSummary>, StoreError> {
        let mut out = Vec::new();
        for entry in self
            .db
            .iterator_cf(self.cf(SUMMARIES_PENDING_CF), IteratorMode::Start)
        {
            if out.len() >= max {
                break;
            }
            let (key, value) = entry.map_err(read_error("summaries_pending"))?;
            let (province, node) =
                parse_summary_key(&key).ok_or_else(|| corrupt("a summary key", "malformed"))?;
            let summary = HourlySummary::from_cbor(&value)
                .map_err(|err| corrupt(format!("summary of node {node}"), err.to_string()))?;
            out.push(PendingSummary {
                province,
                node,
                summary,
            });
        }
        Ok(out)
    }

    /// Moves a summary from pending to done.
    pub fn mark_summary_complete(&self, pending: &PendingSummary) -> Result<(), StoreError> {
        let summary = &pending.summary;
        let key = summary_key(
            pending.province,
            &pending.node,
            summary.hour_batch,
            &summary.gantry_id,
        );
        let cbor = summary
            .to_cbor()
            .map_err(|err| corrupt("a summary", err.to_string()))?;
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(SUMMARIES_PENDING_CF), &key);
        batch.put_cf(self.cf(SUMMARIES_DONE_CF), &key, cbor);
        self.db
            .write_opt(batch, &synced())
            .map_err(read_error("write of a summary"))
    }

    /// Counts the stored records of a summary's gantry and hour within its
    /// seq range and lists the seqs of that range that are not stored.
    pub fn tally(
        &self,
        province: Province,
        node: &NodeId,
        summary: &HourlySummary,
    ) -> Result<HourTally, StoreError> {
        let mut tally = HourTally::default();
        let (Some(first), Some(last)) = (summary.first_seq, summary.last_seq) else {
            return Ok(tally);
        };
        let prefix = node_prefix(province, node);
        let start = record_key(province, node, first);
        let mut expected = first;
        let entries = self.db.iterator_cf(
            self.cf(RECORDS_CF),
            IteratorMode::From(&start, Direction::Forward),
        );
        for entry in entries {
            let (key, _) = entry.map_err(read_error("records"))?;
            let Some(seq) = seq_after_prefix(&prefix, &key) else {
                break;
            };
            if seq > last {
                break;
            }
            if seq > expected && tally.missing.len() < MAX_RANGES {
                tally.missing.push((expected, seq - 1));
            }
            expected = seq + 1;
            let Some(stored) = self.get_record(&key)? else {
                continue;
            };
            if stored.record.gantry_id == summary.gantry_id
                && stored.record.hour_batch == summary.hour_batch
            {
                tally.count += 1;
                tally.fee_sum += u64::from(stored.record.pay_fee);
            }
        }
        if expected <= last && tally.missing.len() < MAX_RANGES {
            tally.missing.push((expected, last));
        }
        Ok(tally)
    }

    /// Lists, for every node, the missing ranges between its watermark and
    /// the highest seq stored above it: the gaps that hold its
    /// acknowledgement back.
    pub fn gaps_above_watermarks(&self) -> Result<Vec<NodeGaps>, StoreError> {
        let mut out = Vec::new();
        let marks = self.db.iterator_cf(
            self.cf(MARKS_CF),
            IteratorMode::From(b"n", Direction::Forward),
        );
        for entry in marks {
            let (key, value) = entry.map_err(read_error("marks"))?;
            let Some(rest) = key.strip_prefix(b"n") else {
                break;
            };
            let Some((province, node)) = parse_summary_key(rest) else {
                return Err(corrupt("a watermark key", "malformed"));
            };
            let through = decode_u64(&value)
                .ok_or_else(|| corrupt(format!("watermark of node {node}"), "not 8 bytes"))?;
            let gaps = self.gaps_of(province, &node, through)?;
            if !gaps.is_empty() {
                out.push(NodeGaps {
                    province,
                    node,
                    ranges: gaps,
                });
            }
        }
        Ok(out)
    }

    fn gaps_of(
        &self,
        province: Province,
        node: &NodeId,
        through: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let prefix = node_prefix(province, node);
        let start = record_key(province, node, through + 1);
        let mut expected = through + 1;
        let mut gaps = Vec::new();
        let entries = self.db.iterator_cf(
            self.cf(RECORDS_CF),
            IteratorMode::From(&start, Direction::Forward),
        );
        for entry in entries {
            let (key, _) = entry.map_err(read_error("records"))?;
            let Some(seq) = seq_after_prefix(&prefix, &key) else {
                break;
            };
            if seq > expected {
                gaps.push((expected, seq - 1));
                if gaps.len() >= MAX_RANGES {
                    break;
                }
            }
            expected = seq + 1;
        }
        Ok(gaps)
    }
}
