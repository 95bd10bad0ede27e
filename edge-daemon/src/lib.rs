//! The edge daemon's library: the durable path of toll records on a node,
//! into the RocksDB outbox that the uplink sends from. `main.rs` only wires
//! these parts to configuration and signals.

pub mod outbox;
