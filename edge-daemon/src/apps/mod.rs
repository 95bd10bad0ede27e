//! The node's apps: the desired state the centre sends, the Podman
//! containers that run it, and what the node reports back about them.
//!
//! The MQTT link hands every payload received on the node's `desired` topic
//! to a [`DesiredInbox`]; only the newest payload matters, because the
//! desired state is level-triggered (each document names every app). The
//! app manager ([`run`]) validates and stores the document, reconciles
//! Podman to it, and publishes an [`AppsReport`] snapshot that the status
//! publisher reads whenever it builds a status message.
//!
//! Files by concept: `store` (desired state in RocksDB), `podman` and `raw`
//! (Podman's API), `labels` (ownership labels and spec hash), `reconciler`
//! (one pass), `prefetch` (background pulls), `restart` (crash back-off),
//! `manager` (the loop).

mod config;
mod error;
mod labels;
mod manager;
mod podman;
mod prefetch;
mod raw;
mod reconciler;
mod report;
mod restart;
mod store;

pub use config::{AppsConfig, NetworkMode};
pub use error::{DesiredError, PodmanError};
pub use labels::{APP, MANAGED_BY, MANAGED_BY_VALUE, NODE, SPEC_HASH, container_name, spec_hash};
pub use manager::run;
pub use podman::{ManagedContainer, PodmanClient, RunState, is_decode_error, parse_raw_list};
pub use report::{AppsReport, DesiredInbox, DesiredOutlet, ReportReader, ReportWriter};
