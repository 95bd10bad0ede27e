//! Reads for the query API: records of one gantry in a time range, and
//! their totals per hour.

use std::collections::BTreeMap;

use rocksdb::{Direction, IteratorMode};
use serde::Serialize;
use tollway_topics::{Message, NodeId, Province, TollRecord};

use super::error::read_error;
use super::keys::*;
use super::{BY_GANTRY_CF, RECORDS_CF, RecordStore, StoreError, corrupt};

/// One stored record with the ids it was stored under.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub province: Province,
    pub node: NodeId,
    pub seq: u64,
    pub forward_seq: u64,
    pub stored_at_ms: u64,
    pub record: TollRecord,
}

/// Totals of one hour batch of one gantry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HourTotals {
    pub hour_batch: u32,
    pub count: u64,
    /// Sum of `fee` before discount, in fen.
    pub fee_sum: u64,
    /// Sum of `pay_fee`, in fen; the figure hourly summaries carry.
    pub pay_fee_sum: u64,
}

impl RecordStore {
    /// Returns up to `limit` records of `gantry` with a pass time in
    /// `from_ms..to_ms`, in pass-time order, and whether more matched.
    pub fn records_by_gantry(
        &self,
        gantry: &str,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> Result<(Vec<StoredRecord>, bool), StoreError> {
        let mut records = Vec::new();
        let mut truncated = false;
        self.scan_gantry(gantry, from_ms, to_ms, |record| {
            if records.len() >= limit {
                truncated = true;
                return false;
            }
            records.push(record);
            true
        })?;
        Ok((records, truncated))
    }

    /// Returns the totals per hour batch of `gantry`'s records with a pass
    /// time in `from_ms..to_ms`, reading at most `max_scan` records, and
    /// whether the scan stopped at that bound.
    pub fn hour_totals(
        &self,
        gantry: &str,
        from_ms: u64,
        to_ms: u64,
        max_scan: usize,
    ) -> Result<(Vec<HourTotals>, bool), StoreError> {
        let mut hours: BTreeMap<u32, HourTotals> = BTreeMap::new();
        let mut scanned = 0usize;
        let mut truncated = false;
        self.scan_gantry(gantry, from_ms, to_ms, |stored| {
            if scanned >= max_scan {
                truncated = true;
                return false;
            }
            scanned += 1;
            let record = &stored.record;
            let totals = hours
                .entry(record.hour_batch)
                .or_insert_with(|| HourTotals {
                    hour_batch: record.hour_batch,
                    ..HourTotals::default()
                });
            totals.count += 1;
            totals.fee_sum += u64::from(record.fee);
            totals.pay_fee_sum += u64::from(record.pay_fee);
            true
        })?;
        Ok((hours.into_values().collect(), truncated))
    }

    /// Reads one record by its key.
    pub(super) fn get_record(&self, key: &[u8]) -> Result<Option<StoredRecord>, StoreError> {
        let Some(value) = self
            .db
            .get_pinned_cf(self.cf(RECORDS_CF), key)
            .map_err(read_error("records"))?
        else {
            return Ok(None);
        };
        let Some((province, node, seq)) = parse_record_key(key) else {
            return Err(corrupt("a record key", "malformed"));
        };
        let what = || format!("record {seq} of node {node} (province {province})");
        if value.len() < VALUE_HEADER_BYTES {
            return Err(corrupt(
                what(),
                format!("value is only {} bytes", value.len()),
            ));
        }
        let record = TollRecord::from_cbor(&value[VALUE_HEADER_BYTES..])
            .map_err(|err| corrupt(what(), err.to_string()))?;
        Ok(Some(StoredRecord {
            forward_seq: decode_u64(&value[..8]).unwrap_or(0),
            stored_at_ms: decode_u64(&value[8..16]).unwrap_or(0),
            province,
            node,
            seq,
            record,
        }))
    }

    /// Calls `visit` on each record of `gantry` in `from_ms..to_ms` until it
    /// returns false.
    fn scan_gantry(
        &self,
        gantry: &str,
        from_ms: u64,
        to_ms: u64,
        mut visit: impl FnMut(StoredRecord) -> bool,
    ) -> Result<(), StoreError> {
        let prefix = gantry_prefix(gantry);
        let start = gantry_key_from(gantry, from_ms);
        let entries = self.db.iterator_cf(
            self.cf(BY_GANTRY_CF),
            IteratorMode::From(&start, Direction::Forward),
        );
        for entry in entries {
            let (key, _) = entry.map_err(read_error("gantry index"))?;
            let Some((time, record_key)) = parse_gantry_key(&prefix, &key) else {
                break;
            };
            if time >= to_ms {
                break;
            }
            let record = self.get_record(record_key)?.ok_or_else(|| {
                corrupt(
                    format!("gantry index of {gantry} at {time}"),
                    "record missing",
                )
            })?;
            if !visit(record) {
                break;
            }
        }
        Ok(())
    }
}
