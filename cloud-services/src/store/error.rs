//! Errors of the record store, naming the province, node and sequence
//! involved.

use tollway_topics::{NodeId, Province};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the record store at {path}: {source}; check that the directory is writable and that no other process has it open"
    )]
    Open {
        path: String,
        #[source]
        source: rocksdb::Error,
    },

    #[error(
        "cannot write records of node {node} (province {province}) from seq {first_seq}: {source}"
    )]
    Write {
        province: Province,
        node: NodeId,
        first_seq: u64,
        #[source]
        source: rocksdb::Error,
    },

    #[error(
        "cannot write forwarded records of province {province} from forwarding seq {first_seq}: {source}"
    )]
    WriteForwarded {
        province: Province,
        first_seq: u64,
        #[source]
        source: rocksdb::Error,
    },

    #[error("cannot delete {removed} expired records from the record store: {source}")]
    Prune {
        removed: u64,
        #[source]
        source: rocksdb::Error,
    },

    #[error("cannot read the record store ({what}): {source}")]
    Read {
        what: String,
        #[source]
        source: rocksdb::Error,
    },

    #[error("record store is corrupt at {what}: {problem}")]
    Corrupt { what: String, problem: String },

    #[error("a record store task did not finish: {0}")]
    Task(String),

    #[error("the record store's writer lock is poisoned by a panic in another task")]
    Poisoned,
}

/// Builds a read error for `what`.
pub fn read_error(what: impl Into<String>) -> impl FnOnce(rocksdb::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Read { what, source }
}
