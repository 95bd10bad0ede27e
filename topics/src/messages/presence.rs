//! Presence: the retained online/offline flag on a node's `presence` topic.
//!
//! A node publishes `online` when it connects and registers `offline` as its
//! will message, so the broker sets it when the node vanishes. The online
//! message also carries the node's labels (role, station, section, ...),
//! which the provincial controller matches against deployment selectors.

use std::collections::BTreeMap;

use crate::limits::{MAX_LABELS, MAX_SHORT_TEXT_LEN};
use crate::selector::{label_key, label_value};
use crate::wire::{DecodeError, Invalid, MapReader, MapWriter, Message, check};

/// Keys: 0 online, 1 since_ms, 2 version, 3 labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub online: bool,
    /// When the node connected, Unix milliseconds; absent in the will message,
    /// which is written before the connection exists.
    pub since_ms: Option<u64>,
    /// Daemon version; absent in the will message.
    pub version: Option<String>,
    /// The node's labels, e.g. `role = gantry`, `station = S0017`,
    /// `section = G15-03`; empty in the will message, where the controller
    /// keeps the labels it stored from the last online message.
    pub labels: BTreeMap<String, String>,
}

impl Presence {
    /// The will message registered at connect time.
    pub fn offline() -> Self {
        Presence {
            online: false,
            since_ms: None,
            version: None,
            labels: BTreeMap::new(),
        }
    }

    /// Builds the message a node publishes once connected.
    pub fn online(since_ms: u64, version: String, labels: BTreeMap<String, String>) -> Self {
        Presence {
            online: true,
            since_ms: Some(since_ms),
            version: Some(version),
            labels,
        }
    }
}

impl Message for Presence {
    const NAME: &'static str = "Presence";
    /// Room for [`MAX_LABELS`] labels of maximum length.
    const MAX_BYTES: usize = 8 * 1024;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.online);
        map.optional(1, &self.since_ms);
        map.optional(2, &self.version);
        if !self.labels.is_empty() {
            map.field(3, &self.labels);
        }
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        Ok(Presence {
            online: map.required(0, "online")?,
            since_ms: map.optional(1, "since_ms")?,
            version: map.optional(2, "version")?,
            labels: map.or_default(3, "labels")?,
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        if let Some(version) = &self.version {
            check::max_len(Self::NAME, "version", version, MAX_SHORT_TEXT_LEN)?;
        }
        check::count(Self::NAME, "labels", self.labels.len(), MAX_LABELS)?;
        for (key, value) in &self.labels {
            label_key(key).map_err(|problem| Invalid::new(Self::NAME, "labels", problem))?;
            label_value(value).map_err(|problem| Invalid::new(Self::NAME, "labels", problem))?;
        }
        Ok(())
    }
}
