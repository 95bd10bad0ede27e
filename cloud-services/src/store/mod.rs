//! The centre's durable record store in RocksDB, shared by the provincial
//! ingest, the forwarder, the national ingest and the query API.
//!
//! Column families:
//! - `records`: (province, node, seq) -> forwarding seq, storage time, CBOR.
//!   A record is stored once; a second copy of (node, seq) is a duplicate.
//! - `by_gantry`: (gantry, pass time, record key) -> nothing, the index for
//!   queries by gantry and time range.
//! - `forward`: (province, forwarding seq) -> record key. In a provincial
//!   store every newly stored record gets the next forwarding seq; in the
//!   national store the entries record which forwarding seqs arrived.
//! - `marks`: per node, the highest contiguous seq stored; per province
//!   (national store), the highest contiguous forwarding seq received.
//! - `summaries_pending` / `summaries_done`: hourly summaries that
//!   reconciliation has not yet / has proved complete.
//! - the default family: `next_forward_seq` and `forward_acked_through`.
//!
//! Every write is one `WriteBatch` with `sync = true`, so a record, its
//! index entries and the watermarks it moves are durable together before
//! any acknowledgement is sent. One writer lock serialises the
//! read-modify-write of watermarks and counters.
//!
//! Records are deleted after a retention window once the next hop has them
//! (`retention.rs`).

mod error;
mod keys;
mod query;
mod reconcile;
mod retention;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions,
};
use tollway_topics::{ForwardedRecord, Message, NodeId, Province, TollRecord};

pub use error::StoreError;
pub use query::{HourTotals, StoredRecord};
pub use reconcile::PendingSummary;
pub use retention::PruneScope;

use error::read_error;
use keys::*;

const RECORDS_CF: &str = "records";
const BY_GANTRY_CF: &str = "by_gantry";
const FORWARD_CF: &str = "forward";
const MARKS_CF: &str = "marks";
const SUMMARIES_PENDING_CF: &str = "summaries_pending";
const SUMMARIES_DONE_CF: &str = "summaries_done";
const COLUMN_FAMILIES: [&str; 6] = [
    RECORDS_CF,
    BY_GANTRY_CF,
    FORWARD_CF,
    MARKS_CF,
    SUMMARIES_PENDING_CF,
    SUMMARIES_DONE_CF,
];

const NEXT_FORWARD_SEQ_KEY: &[u8] = b"next_forward_seq";
const FORWARD_ACKED_KEY: &[u8] = b"forward_acked_through";

/// Result of storing one node batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Records stored for the first time.
    pub stored: u64,
    /// Records that were already stored and were dropped.
    pub duplicates: u64,
    /// The node's highest contiguous seq stored after this batch.
    pub stored_through: u64,
}

/// Result of storing one forwarded batch (national store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardOutcome {
    pub stored: u64,
    pub duplicates: u64,
    /// The province's highest contiguous forwarding seq received.
    pub forward_through: u64,
}

/// The record store. Cheap to share behind an `Arc`; every method blocks on
/// RocksDB, so async callers run it on a blocking thread.
pub struct RecordStore {
    db: DB,
    /// Held by every write that reads a watermark or counter and writes it
    /// back, so two batches of one node cannot both extend the same mark.
    writer: Mutex<()>,
}

impl RecordStore {
    /// Opens the store at `path`, creating it and its column families when missing.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let families = COLUMN_FAMILIES
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
        let db = DB::open_cf_descriptors(&options, path, families).map_err(|source| {
            StoreError::Open {
                path: path.display().to_string(),
                source,
            }
        })?;
        tracing::info!(path = %path.display(), "record store opened");
        Ok(RecordStore {
            db,
            writer: Mutex::new(()),
        })
    }

    /// Stores a node's batch, dropping records already stored, and moves the
    /// node's contiguous watermark. Each new record gets the next forwarding seq.
    pub fn store_node_batch(
        &self,
        province: Province,
        node: &NodeId,
        first_seq: u64,
        records: &[TollRecord],
    ) -> Result<BatchOutcome, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let write_error = |source| StoreError::Write {
            province,
            node: node.clone(),
            first_seq,
            source,
        };

        let mark_key = node_mark_key(province, node);
        let through = self.read_u64(MARKS_CF, &mark_key)?;
        let mut next_forward = self.read_u64(keys_default(), NEXT_FORWARD_SEQ_KEY)?.max(1);
        let now = now_ms();

        let mut batch = WriteBatch::default();
        let mut outcome = BatchOutcome {
            stored: 0,
            duplicates: 0,
            stored_through: through,
        };
        let mut added = BTreeSet::new();
        for (seq, record) in (first_seq..).zip(records) {
            let key = record_key(province, node, seq);
            if seq <= through || self.exists(RECORDS_CF, &key)? {
                outcome.duplicates += 1;
                continue;
            }
            let cbor = encode_record(record, province, node, seq)?;
            batch.put_cf(
                self.cf(RECORDS_CF),
                &key,
                record_value(next_forward, now, &cbor),
            );
            batch.put_cf(
                self.cf(BY_GANTRY_CF),
                gantry_key(&record.gantry_id, record.pass_time_ms, &key),
                [],
            );
            batch.put_cf(
                self.cf(FORWARD_CF),
                forward_key(province, next_forward),
                &key,
            );
            next_forward += 1;
            outcome.stored += 1;
            added.insert(seq);
        }

        outcome.stored_through =
            self.advance_mark(&node_prefix(province, node), RECORDS_CF, through, &added)?;
        batch.put_cf(
            self.cf(MARKS_CF),
            &mark_key,
            outcome.stored_through.to_be_bytes(),
        );
        batch.put(NEXT_FORWARD_SEQ_KEY, next_forward.to_be_bytes());
        self.db.write_opt(batch, &synced()).map_err(write_error)?;
        Ok(outcome)
    }

    /// Stores a province's forwarded batch (national store), de-duplicated
    /// by (province, node, seq), and moves the province's forwarding watermark
    /// and the watermark of each node in the batch.
    pub fn store_forward_batch(
        &self,
        province: Province,
        first_forward_seq: u64,
        records: &[ForwardedRecord],
    ) -> Result<ForwardOutcome, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let mark_key = forward_mark_key(province);
        let through = self.read_u64(MARKS_CF, &mark_key)?;
        let now = now_ms();

        let mut batch = WriteBatch::default();
        let mut outcome = ForwardOutcome {
            stored: 0,
            duplicates: 0,
            forward_through: through,
        };
        let mut added = BTreeSet::new();
        let mut node_marks: BTreeMap<&NodeId, u64> = BTreeMap::new();
        let mut added_by_node: BTreeMap<&NodeId, BTreeSet<u64>> = BTreeMap::new();
        let mut new_keys = BTreeSet::new();
        for (forward_seq, forwarded) in (first_forward_seq..).zip(records) {
            let key = record_key(province, &forwarded.node, forwarded.seq);
            let node_through = match node_marks.get(&forwarded.node) {
                Some(through) => *through,
                None => {
                    let through =
                        self.read_u64(MARKS_CF, &node_mark_key(province, &forwarded.node))?;
                    node_marks.insert(&forwarded.node, through);
                    through
                }
            };
            // At or below the node's watermark is a duplicate even when
            // retention has pruned the stored copy.
            if forwarded.seq <= node_through
                || new_keys.contains(&key)
                || self.exists(RECORDS_CF, &key)?
            {
                outcome.duplicates += 1;
            } else {
                let cbor =
                    encode_record(&forwarded.record, province, &forwarded.node, forwarded.seq)?;
                batch.put_cf(
                    self.cf(RECORDS_CF),
                    &key,
                    record_value(forward_seq, now, &cbor),
                );
                let index = gantry_key(
                    &forwarded.record.gantry_id,
                    forwarded.record.pass_time_ms,
                    &key,
                );
                batch.put_cf(self.cf(BY_GANTRY_CF), index, []);
                outcome.stored += 1;
                new_keys.insert(key.clone());
                added_by_node
                    .entry(&forwarded.node)
                    .or_default()
                    .insert(forwarded.seq);
            }
            if forward_seq > through {
                batch.put_cf(
                    self.cf(FORWARD_CF),
                    forward_key(province, forward_seq),
                    &key,
                );
                added.insert(forward_seq);
            }
        }

        // Each node's contiguous watermark, as a provincial store keeps it,
        // so a query on the national store shows how far a node's records got.
        for (node, seqs) in &added_by_node {
            let node_mark = node_mark_key(province, node);
            let node_through = node_marks.get(node).copied().unwrap_or(0);
            let node_through =
                self.advance_mark(&node_prefix(province, node), RECORDS_CF, node_through, seqs)?;
            batch.put_cf(self.cf(MARKS_CF), &node_mark, node_through.to_be_bytes());
        }

        let prefix = vec![province.code()];
        outcome.forward_through = self.advance_mark(&prefix, FORWARD_CF, through, &added)?;
        batch.put_cf(
            self.cf(MARKS_CF),
            &mark_key,
            outcome.forward_through.to_be_bytes(),
        );
        self.db
            .write_opt(batch, &synced())
            .map_err(|source| StoreError::WriteForwarded {
                province,
                first_seq: first_forward_seq,
                source,
            })?;
        Ok(outcome)
    }

    /// Returns up to `max` stored records of `province` from forwarding seq
    /// `from` on, in forwarding order and without gaps.
    pub fn forward_range(
        &self,
        province: Province,
        from: u64,
        max: usize,
    ) -> Result<Vec<ForwardedRecord>, StoreError> {
        let prefix = vec![province.code()];
        let start = forward_key(province, from);
        let mut out = Vec::new();
        let entries = self.db.iterator_cf(
            self.cf(FORWARD_CF),
            IteratorMode::From(&start, Direction::Forward),
        );
        for (expected, entry) in (from..).zip(entries) {
            if out.len() >= max {
                break;
            }
            let (key, record_key) = entry.map_err(read_error("forward index"))?;
            if seq_after_prefix(&prefix, &key) != Some(expected) {
                break;
            }
            let Some((_, node, seq)) = parse_record_key(&record_key) else {
                return Err(corrupt(
                    format!("forward index entry {expected}"),
                    "malformed record key",
                ));
            };
            let record = self.get_record(&record_key)?.ok_or_else(|| {
                corrupt(format!("forward index entry {expected}"), "record missing")
            })?;
            out.push(ForwardedRecord {
                node,
                seq,
                record: record.record,
            });
        }
        Ok(out)
    }

    /// Returns the last forwarding seq assigned, or 0 when nothing was stored yet.
    pub fn last_forward_seq(&self) -> Result<u64, StoreError> {
        Ok(self.read_u64(keys_default(), NEXT_FORWARD_SEQ_KEY)?.max(1) - 1)
    }

    /// Returns the highest forwarding seq the national centre acknowledged.
    pub fn forward_acked_through(&self) -> Result<u64, StoreError> {
        self.read_u64(keys_default(), FORWARD_ACKED_KEY)
    }

    /// Persists the national acknowledgement; a lower value than the stored
    /// one is ignored, so a late acknowledgement never moves it back.
    pub fn set_forward_acked_through(&self, acked: u64) -> Result<u64, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let current = self.read_u64(keys_default(), FORWARD_ACKED_KEY)?;
        if acked <= current {
            return Ok(current);
        }
        self.db
            .put_opt(FORWARD_ACKED_KEY, acked.to_be_bytes(), &synced())
            .map_err(read_error("write of forward_acked_through"))?;
        Ok(acked)
    }

    /// Returns a node's highest contiguous seq stored, or 0 when none.
    pub fn node_stored_through(
        &self,
        province: Province,
        node: &NodeId,
    ) -> Result<u64, StoreError> {
        self.read_u64(MARKS_CF, &node_mark_key(province, node))
    }

    /// Returns a province's highest contiguous forwarding seq received (national store).
    pub fn province_forward_through(&self, province: Province) -> Result<u64, StoreError> {
        self.read_u64(MARKS_CF, &forward_mark_key(province))
    }

    /// Moves a watermark from `through` over the sequences in `added` and
    /// over those already stored under `prefix` in `family`.
    fn advance_mark(
        &self,
        prefix: &[u8],
        family: &str,
        mut through: u64,
        added: &BTreeSet<u64>,
    ) -> Result<u64, StoreError> {
        loop {
            let next = through + 1;
            if added.contains(&next) {
                through = next;
                continue;
            }
            let mut key = prefix.to_vec();
            key.extend_from_slice(&next.to_be_bytes());
            if !self.exists(family, &key)? {
                return Ok(through);
            }
            through = next;
        }
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is created when the store opens")
    }

    fn exists(&self, family: &str, key: &[u8]) -> Result<bool, StoreError> {
        let value = self
            .db
            .get_pinned_cf(self.cf(family), key)
            .map_err(read_error(family))?;
        Ok(value.is_some())
    }

    /// Reads a u64 value; 0 when the key is missing.
    fn read_u64(&self, family: &str, key: &[u8]) -> Result<u64, StoreError> {
        let value = if family.is_empty() {
            self.db.get_pinned(key)
        } else {
            self.db.get_pinned_cf(self.cf(family), key)
        }
        .map_err(read_error(String::from_utf8_lossy(key)))?;
        match value {
            None => Ok(0),
            Some(bytes) => decode_u64(&bytes)
                .ok_or_else(|| corrupt(String::from_utf8_lossy(key), "value is not 8 bytes")),
        }
    }
}

/// Returns the name `read_u64` takes for the default column family.
fn keys_default() -> &'static str {
    ""
}

fn encode_record(
    record: &TollRecord,
    province: Province,
    node: &NodeId,
    seq: u64,
) -> Result<Vec<u8>, StoreError> {
    record.to_cbor().map_err(|err| StoreError::Corrupt {
        what: format!("record {seq} of node {node} (province {province})"),
        problem: format!("cannot encode a validated record: {err}"),
    })
}

fn corrupt(what: impl Into<String>, problem: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        what: what.into(),
        problem: problem.into(),
    }
}

fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

/// Current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
