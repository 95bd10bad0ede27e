//! The node's desired state on disk: the newest valid document, kept in the
//! outbox's RocksDB under its own column family and written with a synced
//! WAL, so that a node that reboots without a network runs it again.

use std::sync::Arc;

use rocksdb::{DB, WriteOptions};
use tollway_topics::wire::MapReader;
use tollway_topics::{DesiredState, Message, NodeId};

use super::error::DesiredError;
use crate::outbox::DESIRED_CF;

/// Key of the one stored document.
const DESIRED_KEY: &[u8] = b"current";

/// The outcome of [`DesiredStore::offer`] for a received document.
#[derive(Debug)]
pub enum Offer {
    /// The document is newer than the stored one and is now stored.
    Accepted(DesiredState),
    /// The document's generation is not newer than the stored one.
    Stale { received: u64, stored: u64 },
}

/// The stored desired state of one node.
pub struct DesiredStore {
    node: NodeId,
    db: Arc<DB>,
    /// Generation of the stored document; 0 when none is stored.
    stored_generation: u64,
}

impl DesiredStore {
    /// Opens the store on the outbox's database and returns the stored
    /// document, if any.
    pub fn open(node: NodeId, db: Arc<DB>) -> Result<(Self, Option<DesiredState>), DesiredError> {
        let load_error = |detail: String| DesiredError::Load {
            node: node.clone(),
            detail,
        };
        let family = db
            .cf_handle(DESIRED_CF)
            .ok_or_else(|| load_error(format!("column family {DESIRED_CF:?} is missing")))?;
        let stored = db
            .get_cf(family, DESIRED_KEY)
            .map_err(|err| load_error(err.to_string()))?
            .map(|bytes| DesiredState::from_cbor(&bytes))
            .transpose()
            .map_err(|err| load_error(format!("stored document does not decode: {err}")))?;

        let store = DesiredStore {
            node: node.clone(),
            stored_generation: stored.as_ref().map_or(0, |state| state.generation),
            db,
        };
        Ok((store, stored))
    }

    /// Generation of the stored document; 0 when none is stored.
    pub fn stored_generation(&self) -> u64 {
        self.stored_generation
    }

    /// Validates `payload` and stores it if its generation is newer than the
    /// stored one. An invalid payload changes nothing.
    pub fn offer(&mut self, payload: &[u8]) -> Result<Offer, DesiredError> {
        let state = DesiredState::from_cbor(payload).map_err(|source| DesiredError::Invalid {
            node: self.node.clone(),
            source: Box::new(source),
        })?;
        if state.generation <= self.stored_generation {
            return Ok(Offer::Stale {
                received: state.generation,
                stored: self.stored_generation,
            });
        }

        let store_error = |source| DesiredError::Store {
            node: self.node.clone(),
            generation: state.generation,
            source,
        };
        let family = self
            .db
            .cf_handle(DESIRED_CF)
            .ok_or_else(|| DesiredError::Load {
                node: self.node.clone(),
                detail: format!("column family {DESIRED_CF:?} is missing"),
            })?;
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .put_cf_opt(family, DESIRED_KEY, payload, &options)
            .map_err(store_error)?;

        self.stored_generation = state.generation;
        Ok(Offer::Accepted(state))
    }
}

/// Reads the generation from a document that failed validation, so the
/// rejection can name it; 0 when even that field cannot be read.
pub fn generation_of(payload: &[u8]) -> u64 {
    MapReader::parse(DesiredState::NAME, payload, 0)
        .ok()
        .and_then(|(map, _)| map.optional::<u64>(0, "generation").ok().flatten())
        .unwrap_or(0)
}
