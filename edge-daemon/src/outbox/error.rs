//! Errors of the outbox, each naming the node and the sequence numbers
//! involved, so a log line alone shows which records are affected.

use std::path::PathBuf;

use tollway_topics::{DecodeError, EncodeError, NodeId};

/// Failure of an outbox operation.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("cannot open the outbox of node {node} at {path}: {source}")]
    Open {
        node: NodeId,
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },

    #[error(
        "the outbox at {path} belongs to node {stored}, not {node}; \
         point the daemon at this node's own data directory"
    )]
    WrongNode {
        node: NodeId,
        stored: String,
        path: PathBuf,
    },

    #[error("invalid outbox settings: {0}")]
    InvalidConfig(String),

    #[error("node {node}: record {index} of the append is invalid")]
    InvalidRecord {
        node: NodeId,
        index: usize,
        #[source]
        source: Box<EncodeError>,
    },

    #[error("node {node}: an append needs at least one record")]
    EmptyAppend { node: NodeId },

    #[error(
        "node {node}: an append of {count} records is over the limit of {limit}; \
         split it into smaller appends"
    )]
    AppendTooLarge {
        node: NodeId,
        count: usize,
        limit: usize,
    },

    #[error(
        "node {node}: an append of {request_bytes} bytes can never fit under the outbox cap \
         of {cap_bytes} bytes; split it into smaller appends"
    )]
    AppendOverCap {
        node: NodeId,
        request_bytes: u64,
        cap_bytes: u64,
    },

    #[error(
        "node {node}: outbox is full ({undelivered_bytes} undelivered bytes, \
         cap {cap_bytes}, {request_bytes} more requested; next seq would be {next_seq}); \
         retry after the centre acknowledges records"
    )]
    Backpressure {
        node: NodeId,
        next_seq: u64,
        undelivered_bytes: u64,
        request_bytes: u64,
        cap_bytes: u64,
    },

    #[error("node {node}: writing seq {first_seq}..={last_seq} failed")]
    Write {
        node: NodeId,
        first_seq: u64,
        last_seq: u64,
        #[source]
        source: rocksdb::Error,
    },

    #[error("node {node}: reading from seq {seq} failed")]
    Read {
        node: NodeId,
        seq: u64,
        #[source]
        source: rocksdb::Error,
    },

    #[error("node {node}: stored record seq {seq} cannot be decoded")]
    CorruptRecord {
        node: NodeId,
        seq: u64,
        #[source]
        source: Box<DecodeError>,
    },

    #[error("node {node}: outbox is inconsistent at seq {seq}: {problem}")]
    Inconsistent {
        node: NodeId,
        seq: u64,
        problem: String,
    },

    #[error(
        "node {node}: acknowledgement of seq {stored_through} is beyond the last \
         appended seq {last_appended}; the centre's ack belongs to another outbox"
    )]
    AckBeyondAppended {
        node: NodeId,
        stored_through: u64,
        last_appended: u64,
    },

    #[error(
        "node {node}: seq {from}..={to} is not retained (retained: {first_retained}..={last_appended})"
    )]
    NotRetained {
        node: NodeId,
        from: u64,
        to: u64,
        first_retained: u64,
        last_appended: u64,
    },

    #[error("node {node}: invalid batch limits: {problem}")]
    InvalidLimits { node: NodeId, problem: String },

    #[error("node {node}: cannot start the outbox writer thread")]
    WriterThread {
        node: NodeId,
        #[source]
        source: std::io::Error,
    },

    #[error("node {node}: the outbox writer has stopped; no further writes are possible")]
    Closed { node: NodeId },
}

impl OutboxError {
    /// True when the error is the disk cap's back-pressure, which clears once
    /// the centre acknowledges records, so the caller should retry later.
    pub fn is_backpressure(&self) -> bool {
        matches!(self, OutboxError::Backpressure { .. })
    }
}

/// Wraps a decode failure of a stored record.
pub(crate) fn corrupt(node: &NodeId, seq: u64, source: DecodeError) -> OutboxError {
    OutboxError::CorruptRecord {
        node: node.clone(),
        seq,
        source: Box::new(source),
    }
}
