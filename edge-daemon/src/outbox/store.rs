//! The outbox's on-disk layout: column families, key and value encodings,
//! and the counters persisted with every write.
//!
//! - Column family `records`: key = seq as 8 big-endian bytes (so keys sort
//!   by seq), value = acceptance time in Unix milliseconds as 8 big-endian
//!   bytes, then the record's CBOR encoding.
//! - The default column family: `node` = the node id the outbox belongs to,
//!   `counters` = [`Counters`] as five big-endian u64 values.
//!
//! Every write that changes records also writes `counters` in the same
//! `WriteBatch`, so after a crash the counters and the records agree.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rocksdb::{DB, Direction, IteratorMode};
use tollway_topics::{Message, NodeId, TollRecord};

use super::error::{OutboxError, corrupt};

pub(crate) const RECORDS_CF: &str = "records";
pub(crate) const NODE_KEY: &[u8] = b"node";
pub(crate) const COUNTERS_KEY: &[u8] = b"counters";

/// Bytes of a record's value before its CBOR encoding (the acceptance time).
const VALUE_HEADER_BYTES: usize = 8;

/// Bytes of one record's key.
pub(crate) const KEY_BYTES: u64 = 8;

/// The outbox's position and size, persisted atomically with the records.
///
/// Invariant: `1 <= first_retained <= delivered_through + 1 <= next_seq`,
/// because only delivered records are pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Seq the next accepted record gets. Sequences start at 1.
    pub next_seq: u64,
    /// Highest seq the centre acknowledged (the delivery watermark); 0 when
    /// nothing is delivered.
    pub delivered_through: u64,
    /// Lowest seq still stored; equals `next_seq` when nothing is stored.
    pub first_retained: u64,
    /// Bytes of keys and values of every stored record.
    pub retained_bytes: u64,
    /// Bytes of keys and values of the records above the watermark.
    pub undelivered_bytes: u64,
}

impl Counters {
    /// Counters of a new, empty outbox.
    pub fn empty() -> Self {
        Counters {
            next_seq: 1,
            delivered_through: 0,
            first_retained: 1,
            retained_bytes: 0,
            undelivered_bytes: 0,
        }
    }

    pub fn encode(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        let fields = [
            self.next_seq,
            self.delivered_through,
            self.first_retained,
            self.retained_bytes,
            self.undelivered_bytes,
        ];
        for (chunk, value) in out.chunks_exact_mut(8).zip(fields) {
            chunk.copy_from_slice(&value.to_be_bytes());
        }
        out
    }

    /// Decodes persisted counters, or explains why they are invalid.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != 40 {
            return Err(format!("counters are {} bytes, expected 40", bytes.len()));
        }
        let field = |i: usize| {
            let mut buf = [0u8; 8];
            buf.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_be_bytes(buf)
        };
        let counters = Counters {
            next_seq: field(0),
            delivered_through: field(1),
            first_retained: field(2),
            retained_bytes: field(3),
            undelivered_bytes: field(4),
        };
        let ordered = 1 <= counters.first_retained
            && counters.first_retained <= counters.delivered_through + 1
            && counters.delivered_through < counters.next_seq
            && counters.undelivered_bytes <= counters.retained_bytes;
        if !ordered {
            return Err(format!("counters break their invariant: {counters:?}"));
        }
        Ok(counters)
    }

    /// Last appended seq, or 0 when nothing was ever appended.
    pub fn last_appended(&self) -> u64 {
        self.next_seq - 1
    }

    /// Records accepted but not yet acknowledged by the centre.
    pub fn depth(&self) -> u64 {
        self.last_appended() - self.delivered_through
    }
}

pub(crate) fn record_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_from_key(node: &NodeId, key: &[u8]) -> Result<u64, OutboxError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| OutboxError::Inconsistent {
        node: node.clone(),
        seq: 0,
        problem: format!("a record key is {} bytes, expected 8", key.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Builds a record's stored value from its acceptance time and CBOR bytes.
pub(crate) fn record_value(accepted_at_ms: u64, cbor: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(VALUE_HEADER_BYTES + cbor.len());
    value.extend_from_slice(&accepted_at_ms.to_be_bytes());
    value.extend_from_slice(cbor);
    value
}

/// Bytes a record occupies in the counters: its key plus its value.
pub(crate) fn stored_size(cbor_len: usize) -> u64 {
    KEY_BYTES + (VALUE_HEADER_BYTES + cbor_len) as u64
}

/// One record as read back from the store.
#[derive(Debug, Clone)]
pub(crate) struct StoredRecord {
    pub seq: u64,
    pub accepted_at_ms: u64,
    /// Length of the stored value, for the byte counters.
    pub value_len: usize,
    /// The record's CBOR encoding.
    pub cbor: Vec<u8>,
}

impl StoredRecord {
    pub fn stored_size(&self) -> u64 {
        KEY_BYTES + self.value_len as u64
    }

    pub fn decode(&self, node: &NodeId) -> Result<TollRecord, OutboxError> {
        TollRecord::from_cbor(&self.cbor).map_err(|err| corrupt(node, self.seq, err))
    }
}

/// Reads stored records in seq order from `from`, calling `visit` on each
/// until it returns false. Fails if a seq is missing between `from` and the
/// last record visited, because the outbox never has gaps.
pub(crate) fn scan_from(
    db: &DB,
    node: &NodeId,
    from: u64,
    mut visit: impl FnMut(StoredRecord) -> bool,
) -> Result<(), OutboxError> {
    let cf = records_cf(db, node)?;
    let read_error = |seq, source| OutboxError::Read {
        node: node.clone(),
        seq,
        source,
    };

    let key = record_key(from);
    let records = db.iterator_cf(cf, IteratorMode::From(&key, Direction::Forward));
    for (expected, item) in (from..).zip(records) {
        let (key, value) = item.map_err(|err| read_error(expected, err))?;
        let seq = seq_from_key(node, &key)?;
        if seq != expected {
            return Err(OutboxError::Inconsistent {
                node: node.clone(),
                seq: expected,
                problem: format!("record missing; the next stored seq is {seq}"),
            });
        }
        if value.len() < VALUE_HEADER_BYTES {
            return Err(OutboxError::Inconsistent {
                node: node.clone(),
                seq,
                problem: format!("stored value is only {} bytes", value.len()),
            });
        }

        let mut time = [0u8; 8];
        time.copy_from_slice(&value[..VALUE_HEADER_BYTES]);
        let record = StoredRecord {
            seq,
            accepted_at_ms: u64::from_be_bytes(time),
            value_len: value.len(),
            cbor: value[VALUE_HEADER_BYTES..].to_vec(),
        };
        if !visit(record) {
            break;
        }
    }
    Ok(())
}

/// Reads one record's acceptance time, or `None` if it is not stored.
pub(crate) fn accepted_at(db: &DB, node: &NodeId, seq: u64) -> Result<Option<u64>, OutboxError> {
    let cf = records_cf(db, node)?;
    let value = db
        .get_pinned_cf(cf, record_key(seq))
        .map_err(|source| OutboxError::Read {
            node: node.clone(),
            seq,
            source,
        })?;
    Ok(value.and_then(|value| {
        let time: [u8; 8] = value.get(..VALUE_HEADER_BYTES)?.try_into().ok()?;
        Some(u64::from_be_bytes(time))
    }))
}

pub(crate) fn records_cf<'a>(
    db: &'a DB,
    node: &NodeId,
) -> Result<&'a rocksdb::ColumnFamily, OutboxError> {
    db.cf_handle(RECORDS_CF)
        .ok_or_else(|| OutboxError::Inconsistent {
            node: node.clone(),
            seq: 0,
            problem: format!("column family `{RECORDS_CF}` is missing"),
        })
}

/// Milliseconds since the Unix epoch; a clock before 1970 counts as 0.
pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}
