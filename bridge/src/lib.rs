//! `tollway-bridge` as a library: the configuration, rule table, lanes and
//! sessions of the bridge between a provincial and the national broker.
//! The program in `main.rs` is a thin layer over [`bridge::start`].

pub mod bridge;
pub mod bucket;
pub mod config;
pub mod endpoint;
pub mod lanes;
pub mod metrics;
pub mod metrics_http;
pub mod rules;
pub mod session;
