//! Counters of what the services did, shared by every service of a process
//! and served by the query API as JSON.
//!
//! Each failure is counted by the same function that logs it, so the count
//! and the log never drift apart.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Monotonic counters since the process started.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of [`Stats`] at one moment.
        #[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Stats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters! {
    /// Subscriptions the broker granted (SUBACKs without a failure code),
    /// counted again after each reconnect.
    subscriptions_granted,
    /// Node record batches received.
    batches_received,
    /// Node batches rejected as invalid (undecodable, wrong node or topic).
    batches_invalid,
    /// Records stored for the first time.
    records_stored,
    /// Records dropped because (node, seq) was already stored.
    records_duplicate,
    /// RecordAck messages published to nodes.
    acks_published,
    /// Hourly summaries received.
    summaries_received,
    /// Hourly summaries rejected as invalid.
    summaries_invalid,
    /// Replay commands published by reconciliation.
    replays_requested,
    /// Command results received from nodes.
    command_results,
    /// Command results that reported a failure.
    command_failures,
    /// Hours reported incomplete by reconciliation (once per pass).
    hours_incomplete,
    /// Hours proved complete by reconciliation.
    hours_complete,
    /// Reconciliation passes finished.
    reconcile_passes,
    /// ForwardBatch messages published, including resends.
    forward_batches_sent,
    /// Forwarding resends of the whole window (timeout or reconnect).
    forward_resends,
    /// Acknowledgements from the national centre received.
    forward_acks_received,
    /// Forwarded batches received by the national ingest.
    national_batches_received,
    /// Forwarded batches rejected as invalid by the national ingest.
    national_batches_invalid,
    /// Forwarded records stored for the first time by the national ingest.
    national_records_stored,
    /// Forwarded records dropped as duplicates by the national ingest.
    national_records_duplicate,
    /// Store operations that failed; the message was not acknowledged.
    store_errors,
    /// Records deleted by retention.
    records_pruned,
    /// Completed hourly summaries deleted by retention.
    summaries_pruned,
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
