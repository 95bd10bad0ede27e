//! Errors of the app manager, each naming the node and the app or
//! container involved.

use tollway_topics::{DecodeError, NodeId};

/// A failed call to Podman's REST API.
#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    #[error("podman {operation} of {subject} failed: {source}")]
    Api {
        operation: &'static str,
        subject: String,
        #[source]
        source: podman_api::Error,
    },

    #[error("podman {operation} of {subject} failed over the raw API: {detail}")]
    Raw {
        operation: &'static str,
        subject: String,
        detail: String,
    },

    #[error("podman {operation} of {subject} timed out after {seconds} s")]
    TimedOut {
        operation: &'static str,
        subject: String,
        seconds: u64,
    },
}

/// A desired-state document that cannot be stored or applied.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    #[error("node {node}: desired state is invalid: {source}")]
    Invalid {
        node: NodeId,
        #[source]
        source: Box<DecodeError>,
    },

    #[error("node {node}: cannot store desired state generation {generation}: {source}")]
    Store {
        node: NodeId,
        generation: u64,
        #[source]
        source: rocksdb::Error,
    },

    #[error("node {node}: cannot read the stored desired state: {detail}")]
    Load { node: NodeId, detail: String },
}
