//! Presence: the retained online/offline flag on a node's `presence` topic.
//!
//! A node publishes `online` when it connects and registers `offline` as its
//! will message, so the broker sets it when the node vanishes.

use crate::limits::MAX_SHORT_TEXT_LEN;
use crate::wire::{DecodeError, Invalid, MapReader, MapWriter, Message, check};

/// Keys: 0 online, 1 since_ms, 2 version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub online: bool,
    /// When the node connected, Unix milliseconds; absent in the will message,
    /// which is written before the connection exists.
    pub since_ms: Option<u64>,
    /// Daemon version; absent in the will message.
    pub version: Option<String>,
}

impl Presence {
    /// The will message registered at connect time.
    pub fn offline() -> Self {
        Presence {
            online: false,
            since_ms: None,
            version: None,
        }
    }
}

impl Message for Presence {
    const NAME: &'static str = "Presence";
    const MAX_BYTES: usize = 256;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.online);
        map.optional(1, &self.since_ms);
        map.optional(2, &self.version);
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        Ok(Presence {
            online: map.required(0, "online")?,
            since_ms: map.optional(1, "since_ms")?,
            version: map.optional(2, "version")?,
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        if let Some(version) = &self.version {
            check::max_len(Self::NAME, "version", version, MAX_SHORT_TEXT_LEN)?;
        }
        Ok(())
    }
}
