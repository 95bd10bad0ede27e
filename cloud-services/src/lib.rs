//! Centre services of Tollway, as a library so that the `tollway-center`
//! program, its integration tests and benchmarks share one implementation.

pub mod aggregator;
pub mod controller;
pub mod mqtt_link;
