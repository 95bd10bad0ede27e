//! The node's durable record outbox, kept in RocksDB.
//!
//! Every accepted toll record gets the node's next sequence number (from 1,
//! never reused, also across restarts) and is stored with it in one synced
//! write, so an append that returns `Ok` survives a crash or power loss
//! (the latter as far as the disk honours fsync; tests cover process kills).
//! Records stay until the centre acknowledges them (the delivery watermark
//! moves only on the centre's ack), then for a retention window so the centre
//! can request a replay. Undelivered data has a disk cap: an append beyond it
//! fails with [`OutboxError::Backpressure`] and stored records are never
//! dropped to make room.
//!
//! The outbox also keeps an hourly tally per gantry (count, fee sum, first
//! and last seq), written with the records it counts (see `summary`), from
//! which the daemon publishes its hourly summaries.
//!
//! Writes go through one writer thread with group commit (see `writer`).
//! Reads run on the caller's thread against RocksDB directly and block it
//! briefly, so async callers with large reads should use `spawn_blocking`.

mod config;
mod dedupe;
mod error;
mod store;
mod summary;
mod writer;

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use rocksdb::{Cache, ColumnFamilyDescriptor, DB, WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot, watch};
use tollway_topics::{Compression, HourlySummary, Message, NodeId, RecordBatch, TollRecord};

pub use config::{BATCH_OVERHEAD_BYTES, BatchLimits, MAX_APPEND_RECORDS, OutboxConfig};
pub use error::OutboxError;
pub use writer::{Appended, PruneReport, SeqRange};

/// Column family of the app manager's desired state (see `apps::store`).
pub const DESIRED_CF: &str = "desired";

use store::{COUNTERS_KEY, Counters, NODE_KEY, RECORDS_CF};
use summary::{RecordTally, SUMMARIES_CF};
use writer::{AppendRequest, Request, Writer, WriterLimits};

/// Handle to an open outbox. Dropping it lets the writer thread finish the
/// queued requests, stops it and closes the database.
pub struct Outbox {
    node: NodeId,
    db: Arc<DB>,
    max_undelivered_bytes: u64,
    /// Requests to the writer thread. `None` only while dropping; the writer
    /// stops when this sender is dropped and the queue is drained.
    requests: Option<mpsc::Sender<Request>>,
    /// Counters as of the last successful write, published by the writer.
    counters: Arc<Mutex<Counters>>,
    /// The last appended seq, updated by the writer after each write.
    appended: watch::Receiver<u64>,
    writer: Option<JoinHandle<()>>,
}

/// A snapshot of the outbox's position and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxStats {
    pub node: NodeId,
    /// Seq the next accepted record gets.
    pub next_seq: u64,
    /// Highest seq the centre acknowledged; 0 before the first ack.
    pub delivered_through: u64,
    /// Lowest seq still stored (delivered records below it were pruned).
    pub first_retained: u64,
    /// Records accepted but not acknowledged by the centre.
    pub depth: u64,
    /// Bytes of undelivered records, counted against the disk cap.
    pub undelivered_bytes: u64,
    /// Bytes of every stored record, delivered or not.
    pub retained_bytes: u64,
    /// The disk cap on undelivered records, in bytes.
    pub max_undelivered_bytes: u64,
    /// How long the oldest undelivered record has waited; `None` when every
    /// record is delivered.
    pub oldest_undelivered_age: Option<Duration>,
}

impl OutboxStats {
    /// True when less than one maximum-size record fits under the disk cap.
    pub fn at_cap(&self) -> bool {
        let record_room = store::stored_size(tollway_topics::limits::MAX_SMALL_MESSAGE_BYTES);
        self.undelivered_bytes + record_room > self.max_undelivered_bytes
    }
}

impl Outbox {
    /// Opens (or creates) the outbox of `node` and starts its writer thread.
    /// Fails if the directory belongs to another node or its counters are
    /// inconsistent with the stored records.
    pub fn open(node: NodeId, config: &OutboxConfig) -> Result<Self, OutboxError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(OutboxError::InvalidConfig(problems.join("; ")));
        }

        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let families = [
            ColumnFamilyDescriptor::new(
                rocksdb::DEFAULT_COLUMN_FAMILY_NAME,
                config.cf_options(&cache),
            ),
            ColumnFamilyDescriptor::new(RECORDS_CF, config.cf_options(&cache)),
            ColumnFamilyDescriptor::new(SUMMARIES_CF, config.cf_options(&cache)),
            ColumnFamilyDescriptor::new(dedupe::TXIDS_CF, config.cf_options(&cache)),
            // The app manager keeps the node's desired state here, so both
            // share one WAL and one set of files on the node.
            ColumnFamilyDescriptor::new(DESIRED_CF, config.cf_options(&cache)),
        ];
        let db = DB::open_cf_descriptors(&config.db_options(), &config.path, families).map_err(
            |source| OutboxError::Open {
                node: node.clone(),
                path: config.path.clone(),
                source,
            },
        )?;
        let counters = load_or_init(&db, &node, &config.path)?;
        tracing::info!(
            node = %node,
            path = %config.path.display(),
            next_seq = counters.next_seq,
            delivered_through = counters.delivered_through,
            depth = counters.depth(),
            "outbox opened"
        );

        let db = Arc::new(db);
        let shared = Arc::new(Mutex::new(counters));
        let (requests_tx, requests_rx) = mpsc::channel(config.max_queued_appends);
        let (appended_tx, appended_rx) = watch::channel(counters.last_appended());
        let writer = Writer {
            node: node.clone(),
            db: Arc::clone(&db),
            limits: WriterLimits {
                max_undelivered_bytes: config.max_undelivered_bytes,
                retention_ms: config.retention_s.saturating_mul(1000),
                retention_bytes: config.retention_bytes,
                max_group_records: config.max_group_records,
                max_prune_records: config.max_prune_records,
            },
            counters,
            shared: Arc::clone(&shared),
            appended: appended_tx,
        };
        let handle = std::thread::Builder::new()
            .name("outbox-writer".to_string())
            .spawn(move || writer.run(requests_rx))
            .map_err(|source| OutboxError::WriterThread {
                node: node.clone(),
                source,
            })?;

        Ok(Outbox {
            node,
            db,
            max_undelivered_bytes: config.max_undelivered_bytes,
            requests: Some(requests_tx),
            counters: shared,
            appended: appended_rx,
            writer: Some(handle),
        })
    }

    /// Returns the database, for the app manager's [`DESIRED_CF`]. The
    /// database stays open while any returned handle lives.
    pub fn database(&self) -> Arc<DB> {
        Arc::clone(&self.db)
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// Appends records and waits until they are durable. Returns the
    /// sequence numbers the new records got, consecutive and in the order
    /// given, and how many were already stored (same transaction id) and
    /// took none.
    pub async fn append(&self, records: &[TollRecord]) -> Result<Appended, OutboxError> {
        self.submit(records).await?.await
    }

    /// Validates and queues records for the next group commit, and returns
    /// the pending result. Appends submitted one after another get
    /// increasing sequence numbers, so a caller can pipeline several and
    /// await them in order. Waits while the writer's queue is full.
    pub async fn submit(&self, records: &[TollRecord]) -> Result<PendingAppend, OutboxError> {
        if records.is_empty() {
            return Err(OutboxError::EmptyAppend {
                node: self.node.clone(),
            });
        }
        if records.len() > MAX_APPEND_RECORDS {
            return Err(OutboxError::AppendTooLarge {
                node: self.node.clone(),
                count: records.len(),
                limit: MAX_APPEND_RECORDS,
            });
        }

        let mut encoded = Vec::with_capacity(records.len());
        for (index, record) in records.iter().enumerate() {
            let cbor = record
                .to_cbor()
                .map_err(|source| OutboxError::InvalidRecord {
                    node: self.node.clone(),
                    index,
                    source: Box::new(source),
                })?;
            encoded.push(cbor);
        }
        let request_bytes: u64 = encoded
            .iter()
            .map(|cbor| store::stored_size(cbor.len()))
            .sum();
        if request_bytes > self.max_undelivered_bytes {
            return Err(OutboxError::AppendOverCap {
                node: self.node.clone(),
                request_bytes,
                cap_bytes: self.max_undelivered_bytes,
            });
        }

        let (reply_tx, reply_rx) = oneshot::channel();
        let request = Request::Append(AppendRequest {
            accepted_at_ms: store::unix_ms(SystemTime::now()),
            encoded,
            tallies: records.iter().map(RecordTally::of).collect(),
            transaction_ids: records.iter().map(|r| r.transaction_id.clone()).collect(),
            reply: reply_tx,
        });
        self.send(request).await?;
        Ok(PendingAppend {
            node: self.node.clone(),
            reply: reply_rx,
        })
    }

    /// Records the centre's acknowledgement: every seq up to and including
    /// `stored_through` is stored at the centre. Returns the watermark after
    /// the call; an ack at or below the watermark changes nothing.
    pub async fn acknowledge(&self, stored_through: u64) -> Result<u64, OutboxError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.send(Request::Acknowledge {
            stored_through,
            reply: reply_tx,
        })
        .await?;
        reply_rx.await.map_err(|_| self.closed())?
    }

    /// Prunes delivered records past the retention window (age measured
    /// against `now`) or beyond the retention byte cap. Undelivered records
    /// are never pruned.
    pub async fn prune(&self, now: SystemTime) -> Result<PruneReport, OutboxError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.send(Request::Prune {
            now,
            reply: reply_tx,
        })
        .await?;
        reply_rx.await.map_err(|_| self.closed())?
    }

    /// Returns the next batch to send, starting just above the watermark, or
    /// `None` when everything is delivered.
    pub fn pending(&self, limits: BatchLimits) -> Result<Option<RecordBatch>, OutboxError> {
        let from = self.counters().delivered_through + 1;
        self.pending_from(from, limits)
    }

    /// Returns the batch of undelivered or retained records starting at
    /// `from`, or `None` when `from` is past the last appended record. A
    /// sender with batches in flight requests from the end of the last one.
    pub fn pending_from(
        &self,
        from: u64,
        limits: BatchLimits,
    ) -> Result<Option<RecordBatch>, OutboxError> {
        let counters = self.counters();
        if from > counters.last_appended() {
            return Ok(None);
        }
        self.read_range(from, counters.last_appended(), limits)
            .map(Some)
    }

    /// Reads records `from..=to` for a replay, up to `limits`: the batch
    /// returned may end before `to`, and the caller continues after its
    /// last seq. Fails if any of the range was pruned or not yet appended.
    pub fn read_range(
        &self,
        from: u64,
        to: u64,
        limits: BatchLimits,
    ) -> Result<RecordBatch, OutboxError> {
        if let Some(problem) = limits.problem() {
            return Err(OutboxError::InvalidLimits {
                node: self.node.clone(),
                problem,
            });
        }
        let counters = self.counters();
        if from == 0 || from > to || from < counters.first_retained || to > counters.last_appended()
        {
            return Err(self.not_retained(from, to, &counters));
        }

        let mut stored = Vec::new();
        let mut bytes = 0usize;
        let last = to.min(from + limits.max_records as u64 - 1);
        store::scan_from(&self.db, &self.node, from, |record| {
            if record.seq > last
                || (!stored.is_empty() && bytes + record.cbor.len() > limits.max_bytes)
            {
                return false;
            }
            bytes += record.cbor.len();
            stored.push(record);
            true
        })
        .map_err(|err| match err {
            // A prune that ran after the check above removed the range.
            OutboxError::Inconsistent { .. } if self.counters().first_retained > from => {
                self.not_retained(from, to, &self.counters())
            }
            other => other,
        })?;
        if stored.is_empty() {
            return Err(self.not_retained(from, to, &self.counters()));
        }

        let records = stored
            .iter()
            .map(|record| record.decode(&self.node))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RecordBatch {
            node: self.node.clone(),
            first_seq: from,
            records,
            compression: Compression::None,
        })
    }

    /// Returns a receiver of the last appended seq, which changes after
    /// every group commit that appended records.
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.appended.clone()
    }

    /// Returns the hourly summaries of every gantry in `hour_batch`.
    pub fn summaries_of_hour(&self, hour_batch: u32) -> Result<Vec<HourlySummary>, OutboxError> {
        let mut summaries = Vec::new();
        summary::scan_tallies(&self.db, &self.node, hour_batch, |stored| {
            if stored.hour_batch != hour_batch {
                return false;
            }
            summaries.push(stored.summary());
            true
        })?;
        Ok(summaries)
    }

    /// Returns up to `limit` summaries of hours before `before_hour` that
    /// changed since they were last published (or were never published),
    /// oldest hour first.
    pub fn unpublished_summaries(
        &self,
        before_hour: u32,
        limit: usize,
    ) -> Result<Vec<HourlySummary>, OutboxError> {
        let mut summaries = Vec::new();
        summary::scan_tallies(&self.db, &self.node, 0, |stored| {
            if stored.hour_batch >= before_hour || summaries.len() >= limit {
                return false;
            }
            if stored.tally.published_count != stored.tally.count {
                summaries.push(stored.summary());
            }
            true
        })?;
        Ok(summaries)
    }

    /// Stores that `summary` was published, so it is not due again until
    /// more records of its gantry and hour arrive.
    pub async fn mark_summary_published(&self, summary: &HourlySummary) -> Result<(), OutboxError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.send(Request::MarkPublished {
            hour_batch: summary.hour_batch,
            gantry_id: summary.gantry_id.clone(),
            count: summary.count,
            reply: reply_tx,
        })
        .await?;
        reply_rx.await.map_err(|_| self.closed())?
    }

    /// Returns the outbox's position and size; `now` dates the oldest
    /// undelivered record.
    pub fn stats(&self, now: SystemTime) -> Result<OutboxStats, OutboxError> {
        let counters = self.counters();
        let oldest_undelivered_age = if counters.depth() == 0 {
            None
        } else {
            let seq = counters.delivered_through + 1;
            store::accepted_at(&self.db, &self.node, seq)?.map(|accepted_ms| {
                Duration::from_millis(store::unix_ms(now).saturating_sub(accepted_ms))
            })
        };
        Ok(OutboxStats {
            node: self.node.clone(),
            next_seq: counters.next_seq,
            delivered_through: counters.delivered_through,
            first_retained: counters.first_retained,
            depth: counters.depth(),
            undelivered_bytes: counters.undelivered_bytes,
            retained_bytes: counters.retained_bytes,
            max_undelivered_bytes: self.max_undelivered_bytes,
            oldest_undelivered_age,
        })
    }

    fn counters(&self) -> Counters {
        *self
            .counters
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    async fn send(&self, request: Request) -> Result<(), OutboxError> {
        let Some(requests) = &self.requests else {
            return Err(self.closed());
        };
        requests.send(request).await.map_err(|_| self.closed())
    }

    fn closed(&self) -> OutboxError {
        OutboxError::Closed {
            node: self.node.clone(),
        }
    }

    fn not_retained(&self, from: u64, to: u64, counters: &Counters) -> OutboxError {
        OutboxError::NotRetained {
            node: self.node.clone(),
            from,
            to,
            first_retained: counters.first_retained,
            last_appended: counters.last_appended(),
        }
    }
}

impl Drop for Outbox {
    /// Stops the writer (it finishes the queued requests first) and waits
    /// for it, so the database lock is released when the drop returns.
    fn drop(&mut self) {
        self.requests = None;
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(node = %self.node, "outbox writer thread panicked");
        }
    }
}

/// The result of a submitted append: resolves once the group commit that
/// carries it is durable, or failed.
pub struct PendingAppend {
    node: NodeId,
    reply: oneshot::Receiver<Result<Appended, OutboxError>>,
}

impl Future for PendingAppend {
    type Output = Result<Appended, OutboxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.reply).poll(cx).map(|reply| {
            reply.unwrap_or_else(|_| {
                Err(OutboxError::Closed {
                    node: self.node.clone(),
                })
            })
        })
    }
}

/// Reads the node id and counters of an existing outbox, or writes them for
/// a new one, and checks them against the stored records.
fn load_or_init(db: &DB, node: &NodeId, path: &Path) -> Result<Counters, OutboxError> {
    let read_error = |source| OutboxError::Read {
        node: node.clone(),
        seq: 0,
        source,
    };
    let inconsistent = |seq, problem: String| OutboxError::Inconsistent {
        node: node.clone(),
        seq,
        problem,
    };

    let stored_node = db.get(NODE_KEY).map_err(read_error)?;
    let stored_counters = db.get(COUNTERS_KEY).map_err(read_error)?;
    let counters = match (stored_node, stored_counters) {
        (None, None) => {
            let counters = Counters::empty();
            let mut batch = WriteBatch::default();
            batch.put(NODE_KEY, node.as_str());
            batch.put(COUNTERS_KEY, counters.encode());
            let mut options = WriteOptions::default();
            options.set_sync(true);
            db.write_opt(batch, &options)
                .map_err(|source| OutboxError::Write {
                    node: node.clone(),
                    first_seq: 0,
                    last_seq: 0,
                    source,
                })?;
            return Ok(counters);
        }
        (Some(stored), Some(counters)) => {
            if stored != node.as_str().as_bytes() {
                return Err(OutboxError::WrongNode {
                    node: node.clone(),
                    stored: String::from_utf8_lossy(&stored).into_owned(),
                    path: path.to_path_buf(),
                });
            }
            Counters::decode(&counters).map_err(|problem| inconsistent(0, problem))?
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(inconsistent(
                0,
                "only one of the node id and the counters is stored".to_string(),
            ));
        }
    };

    // The last appended record must exist and nothing may follow it.
    if counters.last_appended() >= counters.first_retained
        && store::accepted_at(db, node, counters.last_appended())?.is_none()
    {
        return Err(inconsistent(
            counters.last_appended(),
            "last appended record is missing".to_string(),
        ));
    }
    if store::accepted_at(db, node, counters.next_seq)?.is_some() {
        return Err(inconsistent(
            counters.next_seq,
            "a record is stored beyond the counters".to_string(),
        ));
    }
    Ok(counters)
}
