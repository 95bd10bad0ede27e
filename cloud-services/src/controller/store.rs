//! The controller's RocksDB store: node inventory, accepted deployments,
//! placement and each node's published desired state.
//!
//! Column families, each keyed by node id or deployment name:
//!
//! - `nodes`: [`NodeRecord`] as JSON.
//! - `deployments`: the deployment's CBOR, as received.
//! - `placement`: the deployment's nodes as a JSON list, so that a restart
//!   keeps replicas where they were.
//! - `desired`: the node's last published `DesiredState` CBOR, whose
//!   generation is the floor for the next one. Written with sync before it
//!   is published, so a generation is never reused after a crash.
//! - `rollouts`: the rollout object and its progress as JSON
//!   ([`RolloutRecord`]), written after every step that changes it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rocksdb::{ColumnFamilyDescriptor, DB, Options, WriteBatch, WriteOptions};
use tollway_topics::{Deployment, DesiredState, Message, NodeId, ObjectName};

use super::inventory::NodeRecord;
use super::rollout::RolloutRecord;

const NODES: &str = "nodes";
const DEPLOYMENTS: &str = "deployments";
const PLACEMENT: &str = "placement";
const DESIRED: &str = "desired";
const ROLLOUTS: &str = "rollouts";

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the controller store at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error("controller store {action} failed: {source}")]
    Rocks {
        action: &'static str,
        #[source]
        source: rocksdb::Error,
    },
    #[error(
        "controller store entry {family}/{key} is corrupt: {reason}; remove the data directory to rebuild from retained messages"
    )]
    Corrupt {
        family: &'static str,
        key: String,
        reason: String,
    },
}

/// One key and value read from a column family.
type Entry = (Box<[u8]>, Box<[u8]>);

/// Everything the controller loads at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub deployments: BTreeMap<ObjectName, Deployment>,
    pub placement: BTreeMap<ObjectName, BTreeSet<NodeId>>,
    pub desired: BTreeMap<NodeId, DesiredState>,
    pub rollouts: BTreeMap<ObjectName, RolloutRecord>,
}

/// The open store.
pub struct Store {
    db: DB,
}

impl Store {
    /// Opens or creates the store in `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let families = [NODES, DEPLOYMENTS, PLACEMENT, DESIRED, ROLLOUTS]
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&options, path, families).map_err(|source| {
            StoreError::Open {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Ok(Store { db })
    }

    /// Loads every family.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded::default();
        for (key, value) in self.entries(NODES)? {
            let node = node_key(NODES, &key)?;
            let record = serde_json::from_slice(&value).map_err(|err| corrupt(NODES, &key, err))?;
            loaded.nodes.insert(node, record);
        }
        for (key, value) in self.entries(DEPLOYMENTS)? {
            let name = name_key(DEPLOYMENTS, &key)?;
            let deployment =
                Deployment::from_cbor(&value).map_err(|err| corrupt(DEPLOYMENTS, &key, err))?;
            loaded.deployments.insert(name, deployment);
        }
        for (key, value) in self.entries(PLACEMENT)? {
            let name = name_key(PLACEMENT, &key)?;
            let ids: Vec<String> =
                serde_json::from_slice(&value).map_err(|err| corrupt(PLACEMENT, &key, err))?;
            let ids = ids
                .into_iter()
                .map(NodeId::new)
                .collect::<Result<_, _>>()
                .map_err(|err| corrupt(PLACEMENT, &key, err))?;
            loaded.placement.insert(name, ids);
        }
        for (key, value) in self.entries(DESIRED)? {
            let node = node_key(DESIRED, &key)?;
            let desired =
                DesiredState::from_cbor(&value).map_err(|err| corrupt(DESIRED, &key, err))?;
            loaded.desired.insert(node, desired);
        }
        for (key, value) in self.entries(ROLLOUTS)? {
            let name = name_key(ROLLOUTS, &key)?;
            let record =
                serde_json::from_slice(&value).map_err(|err| corrupt(ROLLOUTS, &key, err))?;
            loaded.rollouts.insert(name, record);
        }
        Ok(loaded)
    }

    pub fn put_node(&self, node: &NodeId, record: &NodeRecord) -> Result<(), StoreError> {
        let value = serde_json::to_vec(record).expect("a node record serialises to JSON");
        self.db
            .put_cf(self.family(NODES), node.as_str(), value)
            .map_err(rocks("node write"))
    }

    /// Removes a node's record and its desired state in one synced write.
    pub fn delete_node(&self, node: &NodeId) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.family(NODES), node.as_str());
        batch.delete_cf(self.family(DESIRED), node.as_str());
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .write_opt(batch, &options)
            .map_err(rocks("node delete"))
    }

    pub fn put_deployment(&self, deployment: &Deployment, cbor: &[u8]) -> Result<(), StoreError> {
        self.db
            .put_cf(self.family(DEPLOYMENTS), deployment.name.as_str(), cbor)
            .map_err(rocks("deployment write"))
    }

    /// Removes a deployment and its placement.
    pub fn delete_deployment(&self, name: &ObjectName) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.family(DEPLOYMENTS), name.as_str());
        batch.delete_cf(self.family(PLACEMENT), name.as_str());
        self.db.write(batch).map_err(rocks("deployment delete"))
    }

    /// Replaces the stored placement with `placement`.
    pub fn put_placement(
        &self,
        placement: &BTreeMap<ObjectName, BTreeSet<NodeId>>,
        removed: &[ObjectName],
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (name, nodes) in placement {
            let ids: Vec<&str> = nodes.iter().map(NodeId::as_str).collect();
            let value = serde_json::to_vec(&ids).expect("node ids serialise to JSON");
            batch.put_cf(self.family(PLACEMENT), name.as_str(), value);
        }
        for name in removed {
            batch.delete_cf(self.family(PLACEMENT), name.as_str());
        }
        self.db.write(batch).map_err(rocks("placement write"))
    }

    /// Stores new desired states durably (synced) before they are published.
    pub fn put_desired(&self, states: &[(&NodeId, &[u8])]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (node, cbor) in states {
            batch.put_cf(self.family(DESIRED), node.as_str(), cbor);
        }
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .write_opt(batch, &options)
            .map_err(rocks("desired state write"))
    }

    /// Stores a rollout and its progress.
    pub fn put_rollout(&self, name: &ObjectName, record: &RolloutRecord) -> Result<(), StoreError> {
        let value = serde_json::to_vec(record).expect("a rollout record serialises to JSON");
        self.db
            .put_cf(self.family(ROLLOUTS), name.as_str(), value)
            .map_err(rocks("rollout write"))
    }

    pub fn delete_rollout(&self, name: &ObjectName) -> Result<(), StoreError> {
        self.db
            .delete_cf(self.family(ROLLOUTS), name.as_str())
            .map_err(rocks("rollout delete"))
    }

    fn family(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is created at open")
    }

    fn entries(&self, family: &'static str) -> Result<Vec<Entry>, StoreError> {
        self.db
            .iterator_cf(self.family(family), rocksdb::IteratorMode::Start)
            .collect::<Result<Vec<_>, _>>()
            .map_err(rocks("read"))
    }
}

fn rocks(action: &'static str) -> impl Fn(rocksdb::Error) -> StoreError {
    move |source| StoreError::Rocks { action, source }
}

fn corrupt(family: &'static str, key: &[u8], reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        family,
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
}

fn node_key(family: &'static str, key: &[u8]) -> Result<NodeId, StoreError> {
    let text = std::str::from_utf8(key).map_err(|err| corrupt(family, key, err))?;
    NodeId::new(text).map_err(|err| corrupt(family, key, err))
}

fn name_key(family: &'static str, key: &[u8]) -> Result<ObjectName, StoreError> {
    let text = std::str::from_utf8(key).map_err(|err| corrupt(family, key, err))?;
    ObjectName::new(text).map_err(|err| corrupt(family, key, err))
}
