//! The node's apps: the desired state the centre sends, and what the node
//! reports back about the apps it runs.
//!
//! The MQTT link hands every payload received on the node's `desired` topic
//! to a [`DesiredInbox`]; only the newest payload matters, because the
//! desired state is level-triggered (each document names every app). The
//! app manager publishes an [`AppsReport`] snapshot that the status
//! publisher reads whenever it builds a status message.

mod report;

pub use report::{AppsReport, DesiredInbox, DesiredOutlet, ReportReader, ReportWriter};
