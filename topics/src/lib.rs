//! Tollway's wire contract: MQTT topic names, the CBOR messages carried on
//! them and the limits both sides enforce.
//!
//! Every other crate builds and parses topics and payloads only through this
//! crate, so a change to the contract is a change here and nowhere else.
//! Messages are CBOR maps with small integer keys: decoders ignore keys they
//! do not know (so fields can be added) and fill documented defaults for
//! optional keys that are missing.

pub mod ids;
pub mod limits;
pub mod messages;
pub mod ops;
pub mod samples;
pub mod selector;
pub mod topic;
pub mod wire;

pub use ids::{AppName, IdError, NodeId, ObjectName, Province};
pub use messages::*;

pub use ops::{Deployment, PlacementMode, Rollout, RolloutControl, SpreadBy, Tombstone, Wave};
pub use selector::{Requirement, Selector, SelectorError};
pub use topic::{CenterKind, LOCAL_RECORDS_TOPIC, NodeKind, OpsKind, Topic, TopicError};
pub use wire::{DecodeError, EncodeError, Invalid, Message};
