//! The edge daemon's library: the durable path of toll records on a node,
//! from local apps (the intake) into the RocksDB outbox and over the MQTT
//! link to the centre (the uplink), with the node's status, hourly
//! summaries and the centre's commands. `main.rs` only wires these parts
//! to configuration and signals.

pub mod apps;
pub mod commands;
pub mod config;
pub mod intake;
pub mod link;
pub mod outbox;
pub mod retention;
pub mod status;
pub mod summary;
pub mod uplink;
