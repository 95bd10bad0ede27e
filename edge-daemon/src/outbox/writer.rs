//! The outbox's single writer thread: group commit of appends with their
//! hourly tallies, the delivery watermark and retention pruning.
//!
//! Every change to the database goes through this thread, so sequence
//! numbers and counters have one owner and need no lock while a write is
//! prepared. Appends waiting in the queue when the thread is free are
//! committed together by one synced write (group commit). While one fsync
//! runs, the next group gathers, so throughput grows with the number of
//! concurrent appenders instead of being one record per fsync.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rocksdb::{DB, WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot, watch};
use tollway_topics::NodeId;

use super::dedupe::{self, GroupIndex};
use super::error::OutboxError;
use super::store::{self, COUNTERS_KEY, Counters, record_key, record_value, stored_size, unix_ms};
use super::summary::{self, RecordTally, TallyUpdate};

/// A request to the writer. The sender of each reply is dropped only after
/// the reply is sent, so a closed reply channel means the writer stopped.
pub(crate) enum Request {
    Append(AppendRequest),
    Acknowledge {
        stored_through: u64,
        reply: oneshot::Sender<Result<u64, OutboxError>>,
    },
    Prune {
        now: SystemTime,
        reply: oneshot::Sender<Result<PruneReport, OutboxError>>,
    },
    /// Records that the tally of `gantry_id` in `hour_batch` was published
    /// with `count` records.
    MarkPublished {
        hour_batch: u32,
        gantry_id: String,
        count: u64,
        reply: oneshot::Sender<Result<(), OutboxError>>,
    },
}

/// Records encoded by the caller, waiting for sequence numbers.
pub(crate) struct AppendRequest {
    pub accepted_at_ms: u64,
    pub encoded: Vec<Vec<u8>>,
    /// The tally fields of each record, in the order of `encoded`.
    pub tallies: Vec<RecordTally>,
    /// The transaction id of each record, in the order of `encoded`.
    pub transaction_ids: Vec<String>,
    pub reply: oneshot::Sender<Result<Appended, OutboxError>>,
}

/// The outcome of one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Seqs given to the records that were new; `None` when every record of
    /// the append was already stored.
    pub seqs: Option<SeqRange>,
    /// Records already stored under an earlier seq (same transaction id),
    /// typically resent by an app that missed its PUBACK. They took no seq.
    pub duplicates: u64,
}

/// An inclusive range of sequence numbers given to one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqRange {
    pub first: u64,
    pub last: u64,
}

impl SeqRange {
    /// Number of sequence numbers in the range.
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    /// Returns false: a range contains at least one seq.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Result of one prune call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneReport {
    /// Records removed by this call.
    pub removed: u64,
    /// Bytes of keys and values removed.
    pub freed_bytes: u64,
    /// Lowest seq still stored after the call.
    pub first_retained: u64,
    /// True when the call stopped at its record limit with more to prune.
    pub more: bool,
}

/// Limits the writer enforces, copied from the configuration.
pub(crate) struct WriterLimits {
    pub max_undelivered_bytes: u64,
    pub retention_ms: u64,
    pub retention_bytes: u64,
    pub max_group_records: usize,
    pub max_prune_records: usize,
}

/// State owned by the writer thread.
pub(crate) struct Writer {
    pub node: NodeId,
    pub db: Arc<DB>,
    pub limits: WriterLimits,
    /// The writer's own copy of the counters; the truth while it runs.
    pub counters: Counters,
    /// Counters published for readers after every successful write.
    pub shared: Arc<Mutex<Counters>>,
    /// The last appended seq, sent after every successful write so the
    /// uplink learns of new records without polling.
    pub appended: watch::Sender<u64>,
}

impl Writer {
    /// Serves requests until every sender is dropped.
    pub fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        let mut deferred: Option<Request> = None;
        loop {
            let request = match deferred.take() {
                Some(request) => request,
                None => match requests.blocking_recv() {
                    Some(request) => request,
                    None => break,
                },
            };

            match request {
                Request::Append(first) => {
                    // Gather whatever else is queued right now into one group.
                    let mut group = vec![first];
                    let mut records = group[0].encoded.len();
                    while records < self.limits.max_group_records {
                        match requests.try_recv() {
                            Ok(Request::Append(next))
                                if records + next.encoded.len()
                                    <= self.limits.max_group_records =>
                            {
                                records += next.encoded.len();
                                group.push(next);
                            }
                            Ok(other) => {
                                deferred = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit_group(group);
                }
                Request::Acknowledge {
                    stored_through,
                    reply,
                } => {
                    let _ = reply.send(self.acknowledge(stored_through));
                }
                Request::Prune { now, reply } => {
                    let _ = reply.send(self.prune(now));
                }
                Request::MarkPublished {
                    hour_batch,
                    gantry_id,
                    count,
                    reply,
                } => {
                    let _ = reply.send(self.mark_published(hour_batch, &gantry_id, count));
                }
            }
        }
        tracing::debug!(node = %self.node, "outbox writer stopped");
    }

    /// Assigns sequence numbers to a group of appends and commits them,
    /// with the hourly tallies they change and their transaction id index
    /// entries, in one synced write. A record whose transaction id is
    /// already stored takes no seq. An append whose new records would pass
    /// the disk cap fails with back-pressure and takes no sequence numbers.
    fn commit_group(&mut self, group: Vec<AppendRequest>) {
        let mut counters = self.counters;
        let mut batch = WriteBatch::default();
        let mut tallies = TallyUpdate::default();
        let mut tally_error = None;
        let mut accepted = Vec::with_capacity(group.len());
        let (Ok(records_cf), Ok(mut index)) = (
            store::records_cf(&self.db, &self.node),
            GroupIndex::new(&self.db, &self.node),
        ) else {
            return self.fail_group(group, counters);
        };

        for request in group {
            let duplicate = match index.duplicates(&request.transaction_ids) {
                Ok(duplicate) => duplicate,
                Err(err) => {
                    let _ = request.reply.send(Err(err));
                    continue;
                }
            };
            let request_bytes: u64 = request
                .encoded
                .iter()
                .zip(&duplicate)
                .filter(|(_, duplicate)| !**duplicate)
                .map(|(cbor, _)| stored_size(cbor.len()))
                .sum();
            if counters.undelivered_bytes + request_bytes > self.limits.max_undelivered_bytes {
                let _ = request.reply.send(Err(OutboxError::Backpressure {
                    node: self.node.clone(),
                    next_seq: counters.next_seq,
                    undelivered_bytes: counters.undelivered_bytes,
                    request_bytes,
                    cap_bytes: self.limits.max_undelivered_bytes,
                }));
                continue;
            }

            let first = counters.next_seq;
            let mut duplicates = 0;
            let records = request
                .encoded
                .iter()
                .zip(&request.tallies)
                .zip(&request.transaction_ids)
                .zip(&duplicate);
            for (((cbor, tally), transaction_id), duplicate) in records {
                if *duplicate {
                    duplicates += 1;
                    tracing::debug!(node = %self.node, transaction_id = %transaction_id, "record already stored; resend takes no seq");
                    continue;
                }
                let value = record_value(request.accepted_at_ms, cbor);
                batch.put_cf(records_cf, record_key(counters.next_seq), value);
                index.insert(&mut batch, transaction_id, counters.next_seq);
                if let Err(err) = tallies.count(&self.db, &self.node, counters.next_seq, tally) {
                    tally_error.get_or_insert(err);
                }
                counters.next_seq += 1;
            }
            counters.retained_bytes += request_bytes;
            counters.undelivered_bytes += request_bytes;
            let seqs = (counters.next_seq > first).then(|| SeqRange {
                first,
                last: counters.next_seq - 1,
            });
            accepted.push((request.reply, Appended { seqs, duplicates }));
        }
        if accepted.is_empty() {
            return;
        }
        if tally_error.is_none()
            && let Err(err) = tallies.write_into(&self.db, &self.node, &mut batch)
        {
            tally_error = Some(err);
        }
        if let Some(err) = tally_error {
            // Nothing was written, so no seq was used: fail the appends and
            // let the callers retry.
            tracing::error!(node = %self.node, error = %err, "hourly tally update failed; group not committed");
            let problem = err.to_string();
            for (reply, _) in accepted {
                let _ = reply.send(Err(OutboxError::Inconsistent {
                    node: self.node.clone(),
                    seq: self.counters.next_seq,
                    problem: problem.clone(),
                }));
            }
            return;
        }

        match self.write(batch, counters) {
            Ok(()) => {
                tracing::trace!(
                    node = %self.node,
                    appends = accepted.len(),
                    last_seq = counters.last_appended(),
                    "group committed"
                );
                for (reply, appended) in accepted {
                    let _ = reply.send(Ok(appended));
                }
            }
            Err(source) => {
                let first_seq = self.counters.next_seq;
                let last_seq = counters.last_appended();
                tracing::error!(node = %self.node, first_seq, last_seq, error = %source, "group commit failed");
                for (reply, _) in accepted {
                    let _ = reply.send(Err(OutboxError::Write {
                        node: self.node.clone(),
                        first_seq,
                        last_seq,
                        source: source.clone(),
                    }));
                }
            }
        }
    }

    /// Fails every append of a group when the database is
    /// unusable, so no caller waits forever.
    fn fail_group(&self, group: Vec<AppendRequest>, counters: Counters) {
        for request in group {
            let _ = request.reply.send(Err(OutboxError::Inconsistent {
                node: self.node.clone(),
                seq: counters.next_seq,
                problem: "column family `records` is missing".to_string(),
            }));
        }
    }

    /// Moves the delivery watermark to `stored_through` and returns it. An
    /// acknowledgement at or below the watermark changes nothing, because
    /// acks can arrive late or twice.
    fn acknowledge(&mut self, stored_through: u64) -> Result<u64, OutboxError> {
        let mut counters = self.counters;
        if stored_through <= counters.delivered_through {
            return Ok(counters.delivered_through);
        }
        if stored_through > counters.last_appended() {
            return Err(OutboxError::AckBeyondAppended {
                node: self.node.clone(),
                stored_through,
                last_appended: counters.last_appended(),
            });
        }

        // Sum the bytes of the newly delivered records.
        let from = counters.delivered_through + 1;
        let mut delivered_bytes = 0;
        let mut last_seen = counters.delivered_through;
        store::scan_from(&self.db, &self.node, from, |record| {
            if record.seq > stored_through {
                return false;
            }
            delivered_bytes += record.stored_size();
            last_seen = record.seq;
            true
        })?;
        if last_seen != stored_through {
            return Err(OutboxError::Inconsistent {
                node: self.node.clone(),
                seq: last_seen + 1,
                problem: format!("undelivered record missing below the ack of {stored_through}"),
            });
        }

        counters.delivered_through = stored_through;
        counters.undelivered_bytes = counters
            .undelivered_bytes
            .checked_sub(delivered_bytes)
            .ok_or_else(|| OutboxError::Inconsistent {
                node: self.node.clone(),
                seq: stored_through,
                problem: format!(
                    "{delivered_bytes} bytes delivered but only {} counted as undelivered",
                    counters.undelivered_bytes
                ),
            })?;
        self.write(WriteBatch::default(), counters)
            .map_err(|source| OutboxError::Write {
                node: self.node.clone(),
                first_seq: from,
                last_seq: stored_through,
                source,
            })?;
        tracing::debug!(node = %self.node, stored_through, depth = counters.depth(), "watermark moved");
        Ok(stored_through)
    }

    /// Removes delivered records older than the retention window, then the
    /// oldest delivered records while their bytes pass the retention cap,
    /// at most `max_prune_records` per call.
    fn prune(&mut self, now: SystemTime) -> Result<PruneReport, OutboxError> {
        let mut counters = self.counters;
        let now_ms = unix_ms(now);
        let mut delivered_bytes = counters.retained_bytes - counters.undelivered_bytes;
        let mut cut = counters.first_retained; // first seq to keep
        let mut freed_bytes = 0;
        let mut removed = 0u64;
        let mut more = false;
        let mut pruned_ids = Vec::new();
        let mut undecodable = None;

        if counters.first_retained <= counters.delivered_through {
            let limits = &self.limits;
            let delivered_through = counters.delivered_through;
            store::scan_from(&self.db, &self.node, counters.first_retained, |record| {
                if record.seq > delivered_through {
                    return false;
                }
                let expired = now_ms.saturating_sub(record.accepted_at_ms) > limits.retention_ms;
                let over_cap = delivered_bytes > limits.retention_bytes;
                if !expired && !over_cap {
                    return false;
                }
                if removed as usize >= limits.max_prune_records {
                    more = true;
                    return false;
                }
                match record.decode(&self.node) {
                    Ok(decoded) => pruned_ids.push(decoded.transaction_id),
                    Err(err) => {
                        undecodable.get_or_insert(err);
                    }
                }
                delivered_bytes = delivered_bytes.saturating_sub(record.stored_size());
                freed_bytes += record.stored_size();
                removed += 1;
                cut = record.seq + 1;
                true
            })?;
        }

        if removed > 0 {
            let records_cf = store::records_cf(&self.db, &self.node)?;
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(
                records_cf,
                record_key(counters.first_retained),
                record_key(cut),
            );
            self.prune_tallies(&mut batch, cut)?;
            for transaction_id in &pruned_ids {
                dedupe::forget(&self.db, &self.node, &mut batch, transaction_id)?;
            }
            if let Some(err) = undecodable {
                // The record goes anyway: it was delivered and its retention
                // is over. Its index entry, if any, stays behind.
                tracing::warn!(node = %self.node, error = %err, "pruned a record that does not decode; its transaction id stays indexed");
            }
            let first = counters.first_retained;
            counters.first_retained = cut;
            counters.retained_bytes = counters.retained_bytes.saturating_sub(freed_bytes);
            self.write(batch, counters)
                .map_err(|source| OutboxError::Write {
                    node: self.node.clone(),
                    first_seq: first,
                    last_seq: cut - 1,
                    source,
                })?;
            tracing::debug!(node = %self.node, removed, first_retained = cut, "pruned delivered records");
        }

        Ok(PruneReport {
            removed,
            freed_bytes,
            first_retained: counters.first_retained,
            more,
        })
    }

    /// Adds to `batch` the deletion of every published tally whose records
    /// all lie below `cut`, the first seq kept after a prune.
    ///
    /// NOTE: a record that arrives for such an hour after the prune starts a
    /// new tally that counts only the late records, so the centre receives a
    /// second, smaller summary for an hour it already closed.
    fn prune_tallies(&self, batch: &mut WriteBatch, cut: u64) -> Result<(), OutboxError> {
        let cf = summary::summaries_cf(&self.db, &self.node)?;
        let mut expired = Vec::new();
        summary::scan_tallies(&self.db, &self.node, 0, |stored| {
            let published = stored.tally.published_count == stored.tally.count;
            if published && stored.tally.last_seq < cut {
                expired.push(summary::tally_key(stored.hour_batch, &stored.gantry_id));
            }
            true
        })?;
        for key in expired {
            batch.delete_cf(cf, key);
        }
        Ok(())
    }

    /// Stores that the tally of `gantry_id` in `hour_batch` was published
    /// when it counted `count` records. A tally that has grown since stays
    /// due for publishing.
    fn mark_published(
        &mut self,
        hour_batch: u32,
        gantry_id: &str,
        count: u64,
    ) -> Result<(), OutboxError> {
        let Some(mut tally) = summary::get_tally(&self.db, &self.node, hour_batch, gantry_id)?
        else {
            return Ok(());
        };
        tally.published_count = count;
        let cf = summary::summaries_cf(&self.db, &self.node)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(
            cf,
            summary::tally_key(hour_batch, gantry_id),
            summary::encode_tally(&tally),
        );
        let counters = self.counters;
        self.write(batch, counters)
            .map_err(|source| OutboxError::Write {
                node: self.node.clone(),
                first_seq: tally.first_seq,
                last_seq: tally.last_seq,
                source,
            })
    }

    /// Writes `batch` plus the new counters with a synced WAL write, then
    /// publishes the counters. Nothing changes in memory when it fails.
    fn write(&mut self, mut batch: WriteBatch, counters: Counters) -> Result<(), rocksdb::Error> {
        batch.put(COUNTERS_KEY, counters.encode());

        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;

        self.counters = counters;
        *self
            .shared
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = counters;
        let last_appended = counters.last_appended();
        self.appended.send_if_modified(|seq| {
            let changed = *seq != last_appended;
            *seq = last_appended;
            changed
        });
        Ok(())
    }
}
