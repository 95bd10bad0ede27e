//! The transaction id index: the seq of each stored record, looked up by
//! the record's `transaction_id`.
//!
//! An app that loses a PUBACK (its connection drops after the outbox
//! committed the record but before the acknowledgement arrived) publishes
//! the record again. Without this index the resend would take a second seq
//! and reach the centre as a second toll transaction. With it, the writer
//! recognises the resend and answers with the seq the record already has.
//!
//! Index entries are written in the same batch as their records, so a
//! record is never stored without its entry, and they are removed when
//! retention prunes their records. A resend that arrives after its record
//! was pruned (the retention window is days) is stored again.

use std::collections::{HashMap, HashSet};

use rocksdb::{ColumnFamily, DB, WriteBatch};
use tollway_topics::NodeId;

use super::error::OutboxError;

/// Column family of the index: key the transaction id's UTF-8 bytes, value
/// the seq as 8 big-endian bytes.
pub(crate) const TXIDS_CF: &str = "txids";

/// Looks up and adds index entries for one group commit. Entries added by
/// earlier appends of the same group are visible to later ones.
pub(crate) struct GroupIndex<'a> {
    db: &'a DB,
    node: &'a NodeId,
    cf: &'a ColumnFamily,
    added: HashMap<String, u64>,
}

impl<'a> GroupIndex<'a> {
    pub fn new(db: &'a DB, node: &'a NodeId) -> Result<Self, OutboxError> {
        Ok(GroupIndex {
            db,
            node,
            cf: txids_cf(db, node)?,
            added: HashMap::new(),
        })
    }

    /// Marks each of one append's records that is already stored, or that
    /// appears earlier in the same append.
    pub fn duplicates(&self, transaction_ids: &[String]) -> Result<Vec<bool>, OutboxError> {
        let mut seen = HashSet::with_capacity(transaction_ids.len());
        let mut duplicate = Vec::with_capacity(transaction_ids.len());
        for id in transaction_ids {
            let stored = self.lookup(id)?.is_some();
            duplicate.push(stored || !seen.insert(id.as_str()));
        }
        Ok(duplicate)
    }

    /// Returns the seq already holding `transaction_id`, if any.
    fn lookup(&self, transaction_id: &str) -> Result<Option<u64>, OutboxError> {
        if let Some(seq) = self.added.get(transaction_id) {
            return Ok(Some(*seq));
        }

        let value = self
            .db
            .get_pinned_cf(self.cf, transaction_id.as_bytes())
            .map_err(|source| self.inconsistent(format!("index read failed: {source}")))?;
        match value {
            None => Ok(None),
            Some(bytes) => {
                let seq: [u8; 8] = bytes.as_ref().try_into().map_err(|_| {
                    self.inconsistent(format!(
                        "index entry of {transaction_id} is {} bytes, not 8",
                        bytes.len()
                    ))
                })?;
                Ok(Some(u64::from_be_bytes(seq)))
            }
        }
    }

    /// Adds the entry of a record stored as `seq` to `batch`.
    pub fn insert(&mut self, batch: &mut WriteBatch, transaction_id: &str, seq: u64) {
        batch.put_cf(self.cf, transaction_id.as_bytes(), seq.to_be_bytes());
        self.added.insert(transaction_id.to_string(), seq);
    }

    fn inconsistent(&self, problem: String) -> OutboxError {
        OutboxError::Inconsistent {
            node: self.node.clone(),
            seq: 0,
            problem,
        }
    }
}

/// Adds the removal of `transaction_id`'s entry to `batch`.
pub(crate) fn forget(
    db: &DB,
    node: &NodeId,
    batch: &mut WriteBatch,
    transaction_id: &str,
) -> Result<(), OutboxError> {
    batch.delete_cf(txids_cf(db, node)?, transaction_id.as_bytes());
    Ok(())
}

fn txids_cf<'a>(db: &'a DB, node: &NodeId) -> Result<&'a ColumnFamily, OutboxError> {
    db.cf_handle(TXIDS_CF)
        .ok_or_else(|| OutboxError::Inconsistent {
            node: node.clone(),
            seq: 0,
            problem: format!("column family `{TXIDS_CF}` is missing"),
        })
}
