//! Outbox settings (limits, retention, group commit) and the RocksDB options
//! derived from them for a small node.
//!
//! Every limit here states what happens when it is reached. Defaults are sized
//! for a gantry that passes up to about 2,000 vehicles an hour. A record
//! takes about 170 bytes in the outbox: 16 bytes of key and timestamp plus
//! its CBOR (the sample car and truck records encode to 138 and 156 bytes).

use std::path::PathBuf;
use std::time::Duration;

use rocksdb::{BlockBasedOptions, Cache, DBCompressionType, Options};
use serde::Deserialize;

use tollway_topics::limits::{MAX_BATCH_BYTES, MAX_RECORDS_PER_BATCH, MAX_SMALL_MESSAGE_BYTES};

/// The outbox section of the daemon's configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// RocksDB directory. It contains one node's outbox only. The daemon
    /// fills an empty path with `outbox/` under its data directory.
    #[serde(default)]
    pub path: PathBuf,

    /// Cap on undelivered records, in bytes of stored keys and values. When
    /// an append would pass it, the append fails with back-pressure and the
    /// intake stops acknowledging. Nothing already stored is dropped.
    /// Default 512 MiB: about 3 million records, some 60 days of a busy gantry.
    ///
    /// NOTE: the cap counts logical bytes, not files. RocksDB adds the WAL,
    /// LZ4-compressed SST files and delete tombstones until compaction, so
    /// disk use can differ from this figure; it has not been measured here.
    #[serde(default = "default_max_undelivered_bytes")]
    pub max_undelivered_bytes: u64,

    /// Delivered records older than this are pruned, in seconds. They are
    /// kept this long so the centre can request a replay. Default 7 days.
    #[serde(default = "default_retention_s")]
    pub retention_s: u64,

    /// Cap on delivered records kept for replay, in bytes; the oldest are
    /// pruned first when it is passed. Default 256 MiB.
    #[serde(default = "default_retention_bytes")]
    pub retention_bytes: u64,

    /// Records committed by one synced write at most. Appends queued beyond
    /// it wait for the next write. Default 4096.
    #[serde(default = "default_max_group_records")]
    pub max_group_records: usize,

    /// Appends waiting for the writer at most. When the queue is full,
    /// `append` waits for room, which slows the intake. Default 1024.
    #[serde(default = "default_max_queued_appends")]
    pub max_queued_appends: usize,

    /// Records pruned by one prune call at most, so one call blocks the
    /// writer for a bounded time; call again while it reports more to do.
    /// Default 50,000.
    #[serde(default = "default_max_prune_records")]
    pub max_prune_records: usize,

    /// RocksDB block cache, in bytes. Records are read about once (when they
    /// are sent), so the cache mainly keeps index and filter blocks.
    /// Default 8 MiB.
    #[serde(default = "default_block_cache_bytes")]
    pub block_cache_bytes: usize,

    /// Size of one RocksDB memtable, in bytes; two per column family at most.
    /// Default 4 MiB, so memtables use at most 16 MiB for the two families.
    #[serde(default = "default_write_buffer_bytes")]
    pub write_buffer_bytes: usize,
}

/// Largest number of records one append may carry. An append is committed
/// whole or not at all, so it must fit one group.
pub const MAX_APPEND_RECORDS: usize = MAX_RECORDS_PER_BATCH;

fn default_max_undelivered_bytes() -> u64 {
    512 * 1024 * 1024
}

fn default_retention_s() -> u64 {
    7 * 24 * 3600
}

fn default_retention_bytes() -> u64 {
    256 * 1024 * 1024
}

fn default_max_group_records() -> usize {
    4096
}

fn default_max_queued_appends() -> usize {
    1024
}

fn default_max_prune_records() -> usize {
    50_000
}

fn default_block_cache_bytes() -> usize {
    8 * 1024 * 1024
}

fn default_write_buffer_bytes() -> usize {
    4 * 1024 * 1024
}

impl OutboxConfig {
    /// Settings with every default, for the directory `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        OutboxConfig {
            path: path.into(),
            max_undelivered_bytes: default_max_undelivered_bytes(),
            retention_s: default_retention_s(),
            retention_bytes: default_retention_bytes(),
            max_group_records: default_max_group_records(),
            max_queued_appends: default_max_queued_appends(),
            max_prune_records: default_max_prune_records(),
            block_cache_bytes: default_block_cache_bytes(),
            write_buffer_bytes: default_write_buffer_bytes(),
        }
    }

    /// Returns the retention window as a duration.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_s)
    }

    /// Lists every setting that is out of range, so one run reports them all.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let min_cap = MAX_SMALL_MESSAGE_BYTES as u64 * 2;
        if self.max_undelivered_bytes < min_cap {
            problems.push(format!(
                "max_undelivered_bytes ({}) must be at least {min_cap}, room for one record",
                self.max_undelivered_bytes
            ));
        }
        if self.max_group_records < MAX_APPEND_RECORDS {
            problems.push(format!(
                "max_group_records ({}) must be at least {MAX_APPEND_RECORDS}, the largest append",
                self.max_group_records
            ));
        }
        if self.max_queued_appends == 0 {
            problems.push("max_queued_appends must be at least 1".to_string());
        }
        if self.max_prune_records == 0 {
            problems.push("max_prune_records must be at least 1".to_string());
        }
        if self.write_buffer_bytes < 64 * 1024 {
            problems.push(format!(
                "write_buffer_bytes ({}) must be at least 65536",
                self.write_buffer_bytes
            ));
        }
        problems
    }

    /// Database-wide RocksDB options for a small node.
    pub(crate) fn db_options(&self) -> Options {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);

        // Two background threads for flushes and compactions: the node has
        // few cores and the apps come first.
        options.set_max_background_jobs(2);
        // Every column family shares the WAL; force a flush of the small
        // default family (node id, counters) once the WAL passes 16 MiB, so
        // old WAL files can be deleted.
        options.set_max_total_wal_size(16 * 1024 * 1024);
        // Sync data files in 1 MiB steps instead of in one burst at the end.
        options.set_bytes_per_sync(1024 * 1024);
        // RocksDB's own info log: at most 3 files of 1 MiB.
        options.set_keep_log_file_num(3);
        options.set_max_log_file_size(1024 * 1024);
        // Bound open file handles; SST files stay few at these sizes.
        options.set_max_open_files(256);
        options
    }

    /// Column-family options: small memtables and files, LZ4 compression
    /// (CBOR records repeat gantry ids and intervals), a shared block cache.
    pub(crate) fn cf_options(&self, cache: &Cache) -> Options {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(cache);
        table.set_cache_index_and_filter_blocks(true);

        let mut options = Options::default();
        options.set_block_based_table_factory(&table);
        options.set_write_buffer_size(self.write_buffer_bytes);
        options.set_max_write_buffer_number(2);
        options.set_target_file_size_base(8 * 1024 * 1024);
        options.set_max_bytes_for_level_base(32 * 1024 * 1024);
        options.set_compression_type(DBCompressionType::Lz4);
        options
    }
}

/// How much one pending batch or replay read may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Records per batch, 1 to [`MAX_RECORDS_PER_BATCH`].
    pub max_records: usize,
    /// Sum of the records' CBOR sizes, in bytes. The first record is always
    /// included, so this must be at least one record's maximum size.
    pub max_bytes: usize,
}

/// Room kept in [`MAX_BATCH_BYTES`] for the batch's own fields (node id,
/// first seq, array header).
pub const BATCH_OVERHEAD_BYTES: usize = 1024;

impl Default for BatchLimits {
    /// 500 records or 256 KiB: a batch that crosses a slow provincial link
    /// in about a second once compressed.
    fn default() -> Self {
        BatchLimits {
            max_records: 500,
            max_bytes: 256 * 1024,
        }
    }
}

impl BatchLimits {
    /// Reports what is wrong with the limits, if anything.
    pub fn problem(&self) -> Option<String> {
        let max_bytes_allowed = MAX_BATCH_BYTES - BATCH_OVERHEAD_BYTES;
        if self.max_records == 0 || self.max_records > MAX_RECORDS_PER_BATCH {
            Some(format!(
                "max_records ({}) must be 1 to {MAX_RECORDS_PER_BATCH}",
                self.max_records
            ))
        } else if self.max_bytes < MAX_SMALL_MESSAGE_BYTES || self.max_bytes > max_bytes_allowed {
            Some(format!(
                "max_bytes ({}) must be {MAX_SMALL_MESSAGE_BYTES} to {max_bytes_allowed}",
                self.max_bytes
            ))
        } else {
            None
        }
    }
}
