//! Hourly per-gantry tallies kept in the outbox, so the daemon can publish
//! an `HourlySummary` that matches the records it stored.
//!
//! The writer thread updates a tally in the same `WriteBatch` as the records
//! it counts, so after a crash the tallies and the records agree: a record
//! is in a tally exactly when it is stored. Layout, in column family
//! `summaries`:
//!
//! - key: `hour_batch` as 4 big-endian bytes, then the gantry id in UTF-8,
//!   so the keys of one hour sort together;
//! - value: five big-endian u64 values: count, fee sum (fen), first seq,
//!   last seq, and the count at the last publish (0 before the first).

use std::collections::BTreeMap;

use rocksdb::{DB, Direction, IteratorMode, WriteBatch};
use tollway_topics::{HourlySummary, NodeId, TollRecord};

use super::error::OutboxError;

pub(crate) const SUMMARIES_CF: &str = "summaries";

/// The fields of one record that a tally counts, taken before the record
/// is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordTally {
    pub gantry_id: String,
    pub hour_batch: u32,
    pub pay_fee: u32,
}

impl RecordTally {
    pub fn of(record: &TollRecord) -> Self {
        RecordTally {
            gantry_id: record.gantry_id.clone(),
            hour_batch: record.hour_batch,
            pay_fee: record.pay_fee,
        }
    }
}

/// One gantry's tally of one hour, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub count: u64,
    pub fee_sum: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// `count` when this tally was last published; a tally whose count
    /// differs from it is due for publishing once its hour is closed.
    pub published_count: u64,
}

impl Tally {
    fn encode(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        let fields = [
            self.count,
            self.fee_sum,
            self.first_seq,
            self.last_seq,
            self.published_count,
        ];
        for (chunk, value) in out.chunks_exact_mut(8).zip(fields) {
            chunk.copy_from_slice(&value.to_be_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 40 {
            return None;
        }
        let field = |i: usize| {
            let mut buf = [0u8; 8];
            buf.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_be_bytes(buf)
        };
        Some(Tally {
            count: field(0),
            fee_sum: field(1),
            first_seq: field(2),
            last_seq: field(3),
            published_count: field(4),
        })
    }
}

/// Builds the key of one gantry's hour.
pub(crate) fn tally_key(hour_batch: u32, gantry_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + gantry_id.len());
    key.extend_from_slice(&hour_batch.to_be_bytes());
    key.extend_from_slice(gantry_id.as_bytes());
    key
}

fn split_key(key: &[u8]) -> Option<(u32, String)> {
    let hour: [u8; 4] = key.get(..4)?.try_into().ok()?;
    let gantry = std::str::from_utf8(&key[4..]).ok()?;
    Some((u32::from_be_bytes(hour), gantry.to_string()))
}

/// Tallies changed by one group commit, keyed like the store. The writer
/// fills it from the records it commits and adds it to the group's batch.
#[derive(Default)]
pub(crate) struct TallyUpdate {
    changed: BTreeMap<Vec<u8>, Tally>,
}

impl TallyUpdate {
    /// Counts the record with sequence number `seq`, reading the stored
    /// tally the first time its key is seen in this group.
    pub fn count(
        &mut self,
        db: &DB,
        node: &NodeId,
        seq: u64,
        record: &RecordTally,
    ) -> Result<(), OutboxError> {
        let key = tally_key(record.hour_batch, &record.gantry_id);
        if !self.changed.contains_key(&key) {
            let stored = read_tally(db, node, &key, seq)?;
            self.changed.insert(
                key.clone(),
                stored.unwrap_or(Tally {
                    count: 0,
                    fee_sum: 0,
                    first_seq: seq,
                    last_seq: seq,
                    published_count: 0,
                }),
            );
        }
        let tally = self
            .changed
            .get_mut(&key)
            .expect("the tally was inserted above");
        tally.count += 1;
        tally.fee_sum += u64::from(record.pay_fee);
        tally.first_seq = tally.first_seq.min(seq);
        tally.last_seq = tally.last_seq.max(seq);
        Ok(())
    }

    /// Adds every changed tally to `batch`.
    pub fn write_into(
        &self,
        db: &DB,
        node: &NodeId,
        batch: &mut WriteBatch,
    ) -> Result<(), OutboxError> {
        let cf = summaries_cf(db, node)?;
        for (key, tally) in &self.changed {
            batch.put_cf(cf, key, tally.encode());
        }
        Ok(())
    }
}

fn read_tally(db: &DB, node: &NodeId, key: &[u8], seq: u64) -> Result<Option<Tally>, OutboxError> {
    let cf = summaries_cf(db, node)?;
    let value = db
        .get_pinned_cf(cf, key)
        .map_err(|source| OutboxError::Read {
            node: node.clone(),
            seq,
            source,
        })?;
    match value {
        None => Ok(None),
        Some(bytes) => Tally::decode(&bytes)
            .map(Some)
            .ok_or_else(|| OutboxError::Inconsistent {
                node: node.clone(),
                seq,
                problem: format!("stored hourly tally is {} bytes, expected 40", bytes.len()),
            }),
    }
}

/// A stored tally with its hour and gantry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredTally {
    pub hour_batch: u32,
    pub gantry_id: String,
    pub tally: Tally,
}

impl StoredTally {
    pub fn summary(&self) -> HourlySummary {
        HourlySummary {
            gantry_id: self.gantry_id.clone(),
            hour_batch: self.hour_batch,
            count: self.tally.count,
            fee_sum: self.tally.fee_sum,
            first_seq: Some(self.tally.first_seq),
            last_seq: Some(self.tally.last_seq),
        }
    }
}

/// Reads stored tallies in key order (by hour, then gantry) from
/// `from_hour`, calling `visit` until it returns false.
pub(crate) fn scan_tallies(
    db: &DB,
    node: &NodeId,
    from_hour: u32,
    mut visit: impl FnMut(StoredTally) -> bool,
) -> Result<(), OutboxError> {
    let cf = summaries_cf(db, node)?;
    let start = from_hour.to_be_bytes();
    for item in db.iterator_cf(cf, IteratorMode::From(&start, Direction::Forward)) {
        let (key, value) = item.map_err(|source| OutboxError::Read {
            node: node.clone(),
            seq: 0,
            source,
        })?;
        let parsed = split_key(&key).zip(Tally::decode(&value));
        let Some(((hour_batch, gantry_id), tally)) = parsed else {
            return Err(OutboxError::Inconsistent {
                node: node.clone(),
                seq: 0,
                problem: format!("hourly tally key {key:?} or its value is malformed"),
            });
        };
        let stored = StoredTally {
            hour_batch,
            gantry_id,
            tally,
        };
        if !visit(stored) {
            break;
        }
    }
    Ok(())
}

pub(crate) fn summaries_cf<'a>(
    db: &'a DB,
    node: &NodeId,
) -> Result<&'a rocksdb::ColumnFamily, OutboxError> {
    db.cf_handle(SUMMARIES_CF)
        .ok_or_else(|| OutboxError::Inconsistent {
            node: node.clone(),
            seq: 0,
            problem: format!("column family `{SUMMARIES_CF}` is missing"),
        })
}

/// Encodes a tally for the writer's mark-published and prune steps.
pub(crate) fn encode_tally(tally: &Tally) -> [u8; 40] {
    tally.encode()
}

/// Reads one tally for the writer, by hour and gantry.
pub(crate) fn get_tally(
    db: &DB,
    node: &NodeId,
    hour_batch: u32,
    gantry_id: &str,
) -> Result<Option<Tally>, OutboxError> {
    read_tally(db, node, &tally_key(hour_batch, gantry_id), 0)
}
