//! Load tests for Tollway: simulated edge-node fleets that speak the edge
//! daemon's MQTT protocol, brokers started on loopback, a fault-injecting
//! TCP proxy, and the scenarios built from them.
//!
//! Every scenario sends traffic only to loopback addresses and ends by
//! itself within bounds set by its options. The `tollway-loadtest` program
//! is a thin command line over the scenarios ([`storm`], [`idle`],
//! [`outage`], [`records`], [`fanout`]); other crates' tests can use
//! [`proxy::FaultProxy`] on its own.

pub mod center;
pub mod chain;
pub mod desired;
pub mod fanout;
pub mod fleet;
pub mod idle;
pub mod options;
pub mod outage;
pub mod pki;
pub mod preflight;
pub mod process;
pub mod proxy;
pub mod record_fleet;
pub mod records;
pub mod report;
pub mod servers;
pub mod service;
pub mod sessions;
pub mod setup;
pub mod storm;
pub mod uplink;
