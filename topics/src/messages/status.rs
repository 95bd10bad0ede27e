//! Node and app status, published on a node's `status` topic when it changes
//! and as a sparse heartbeat.
//!
//! Status is kept small because thousands of nodes share a 3 Mbit/s link:
//! fields at their default are not sent, and a node running five healthy
//! apps fits in under 96 bytes.

use crate::limits::{
    MAX_APPS_PER_NODE, MAX_NAME_LEN, MAX_SHORT_TEXT_LEN, MAX_STATUS_BYTES, MAX_TEXT_LEN,
};
use crate::wire::{DecodeError, Invalid, MapReader, MapWriter, Message, check};

/// A node's compact status.
///
/// Keys: 0 generation, 1 apps, 2 outbox_depth, 3 oldest_undelivered_s,
/// 4 free_disk_mb, 5 version, 6 rejected_generation, 7 rejected_reason,
/// 8 backpressure.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeStatus {
    /// Generation of the desired state the node has applied.
    pub generation: u64,
    pub apps: Vec<AppStatus>,
    /// Records accepted but not yet acknowledged by the centre.
    pub outbox_depth: u64,
    /// Age of the oldest unacknowledged record, in seconds; absent when the
    /// outbox is empty.
    pub oldest_undelivered_s: Option<u32>,
    /// Free space on the data directory's file system, in MiB.
    pub free_disk_mb: u32,
    /// Daemon version, e.g. `0.1.0`.
    pub version: String,
    /// Generation of the last desired state rejected as invalid, if any.
    pub rejected_generation: Option<u64>,
    /// The reason that desired state was rejected.
    pub rejected_reason: Option<String>,
    /// True while the outbox is at its disk cap and the intake refuses records.
    pub backpressure: bool,
}

impl Message for NodeStatus {
    const NAME: &'static str = "NodeStatus";
    const MAX_BYTES: usize = MAX_STATUS_BYTES;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.generation);
        map.messages(1, &self.apps);
        map.field(2, &self.outbox_depth);
        map.optional(3, &self.oldest_undelivered_s);
        map.field(4, &self.free_disk_mb);
        map.field(5, &self.version);
        map.optional(6, &self.rejected_generation);
        map.optional(7, &self.rejected_reason);
        map.unless_default(8, &self.backpressure);
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        Ok(NodeStatus {
            generation: map.required(0, "generation")?,
            apps: map.messages(1, "apps", MAX_APPS_PER_NODE)?,
            outbox_depth: map.or_default(2, "outbox_depth")?,
            oldest_undelivered_s: map.optional(3, "oldest_undelivered_s")?,
            free_disk_mb: map.or_default(4, "free_disk_mb")?,
            version: map.or_default(5, "version")?,
            rejected_generation: map.optional(6, "rejected_generation")?,
            rejected_reason: map.optional(7, "rejected_reason")?,
            backpressure: map.or_default(8, "backpressure")?,
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        check::count(Self::NAME, "apps", self.apps.len(), MAX_APPS_PER_NODE)?;
        check::max_len(Self::NAME, "version", &self.version, MAX_SHORT_TEXT_LEN)?;
        if let Some(reason) = &self.rejected_reason {
            check::max_len(Self::NAME, "rejected_reason", reason, MAX_TEXT_LEN)?;
        }
        self.apps.iter().try_for_each(AppStatus::validate)
    }
}

/// One app's state on a node.
///
/// Keys: 0 name, 1 state, 2 restarts, 3 reason, 4 next_image_ready,
/// 5 last_switch_ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppStatus {
    pub name: String,
    pub state: AppState,
    /// Restarts since the app's spec last changed.
    pub restarts: u32,
    /// The reason the app failed or is not running; absent when healthy.
    pub reason: Option<String>,
    /// True once the spec's next image has been pulled.
    pub next_image_ready: bool,
    /// How long the app was out of service at its last image change, in
    /// milliseconds: from the old container's stop request to the new
    /// container running. Absent until the node has switched the app once.
    pub last_switch_ms: Option<u32>,
}

impl Message for AppStatus {
    const NAME: &'static str = "AppStatus";
    const MAX_BYTES: usize = MAX_STATUS_BYTES;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.name);
        map.field(1, &self.state.code());
        map.unless_default(2, &self.restarts);
        map.optional(3, &self.reason);
        map.unless_default(4, &self.next_image_ready);
        map.optional(5, &self.last_switch_ms);
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        Ok(AppStatus {
            name: map.required(0, "name")?,
            state: map
                .code(1, "state", AppState::EXPECTED, AppState::from_code)?
                .ok_or(DecodeError::MissingField {
                    message: Self::NAME,
                    field: "state",
                    key: 1,
                })?,
            restarts: map.or_default(2, "restarts")?,
            reason: map.optional(3, "reason")?,
            next_image_ready: map.or_default(4, "next_image_ready")?,
            last_switch_ms: map.optional(5, "last_switch_ms")?,
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        check::text(Self::NAME, "name", &self.name, MAX_NAME_LEN)?;
        if let Some(reason) = &self.reason {
            check::max_len(Self::NAME, "reason", reason, MAX_TEXT_LEN)?;
        }
        Ok(())
    }
}

crate::messages::record::code_enum! {
    /// The lifecycle state of one app.
    AppState, expected "0 (pending) to 5 (stopped)" {
        /// Known but not yet created.
        #[default]
        Pending = 0,
        /// Its image is being pulled.
        Pulling = 1,
        /// Created and starting.
        Starting = 2,
        Running = 3,
        /// Cannot run; the status reason gives the cause.
        Failed = 4,
        /// Exited and not restarted under its restart policy.
        Stopped = 5,
    }
}
