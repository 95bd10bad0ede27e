//! The two channels between the MQTT link and the app manager.

use tokio::sync::watch;
use tollway_topics::AppStatus;

/// The apps as the node runs them, for the status message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppsReport {
    /// Generation of the desired state applied; 0 before the first.
    pub generation: u64,
    pub apps: Vec<AppStatus>,
    /// The newest desired state that was rejected, and why.
    pub rejected: Option<(u64, String)>,
}

/// Link side: the newest raw payload seen on the node's `desired` topic.
pub type DesiredInbox = watch::Sender<Option<Vec<u8>>>;
/// App manager side of [`DesiredInbox`].
pub type DesiredOutlet = watch::Receiver<Option<Vec<u8>>>;
/// App manager side: publishes a new report on every change.
pub type ReportWriter = watch::Sender<AppsReport>;
/// Status publisher side of [`ReportWriter`].
pub type ReportReader = watch::Receiver<AppsReport>;
