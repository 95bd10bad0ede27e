//! The edge daemon's library: the durable path of toll records on a node,
//! from local apps (the intake) into the RocksDB outbox, and the retention
//! of delivered records. `main.rs` only wires these parts to configuration
//! and signals.

pub mod apps;
pub mod intake;
pub mod outbox;
pub mod retention;
