//! Messages between a provincial centre and the national centre: forwarded
//! records, the bridge's state and events for operators.
//!
//! A province forwards what it stored with the same outbox semantics as a
//! node: its own sequence numbers, durable before acknowledgement, and
//! replay. The national store de-duplicates by (node, node sequence), so a
//! record forwarded twice is stored once. The acknowledgement is a
//! [`RecordAck`](crate::RecordAck) over the province's sequence numbers.

use crate::ids::{NodeId, Province};
use crate::limits::{MAX_BATCH_BYTES, MAX_SHORT_TEXT_LEN, MAX_TEXT_LEN};
use crate::messages::batch::{
    last_seq_of, read_record_list, validate_sequence_range, write_record_list,
};
use crate::messages::{Compression, TollRecord};
use crate::wire::{DecodeError, Invalid, MapReader, MapWriter, Message, check};

/// A batch of stored records forwarded from a province, on
/// `tollway/v1/{province}/center/records`.
///
/// Keys: 0 province, 1 first_seq, 2 records (plain), 3 records (zstd), 4 count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardBatch {
    pub province: Province,
    /// The province's forwarding sequence of the first record; the rest
    /// follow without gaps. Starts at 1.
    pub first_seq: u64,
    pub records: Vec<ForwardedRecord>,
    pub compression: Compression,
}

impl ForwardBatch {
    pub fn last_seq(&self) -> Option<u64> {
        last_seq_of(self.first_seq, self.records.len())
    }
}

impl Message for ForwardBatch {
    const NAME: &'static str = "ForwardBatch";
    const MAX_BYTES: usize = MAX_BATCH_BYTES;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.province.code());
        map.field(1, &self.first_seq);
        write_record_list(map, &self.records, self.compression);
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        let province: u8 = map.required(0, "province")?;
        let province = Province::new(province).map_err(|err| {
            DecodeError::Invalid(Invalid::new(Self::NAME, "province", err.to_string()))
        })?;
        let first_seq = map.required(1, "first_seq")?;

        let (records, compression) = read_record_list(map, Self::NAME)?;

        Ok(ForwardBatch {
            province,
            first_seq,
            records,
            compression,
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        validate_sequence_range(Self::NAME, self.first_seq, self.records.len())?;
        self.records.iter().try_for_each(ForwardedRecord::validate)
    }
}

/// One stored record with the ids it was stored under.
/// Keys: 0 node, 1 seq (the node's sequence number), 2 record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedRecord {
    pub node: NodeId,
    pub seq: u64,
    pub record: TollRecord,
}

impl Message for ForwardedRecord {
    const NAME: &'static str = "ForwardedRecord";
    const MAX_BYTES: usize = MAX_BATCH_BYTES;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.node.to_string());
        map.field(1, &self.seq);
        map.message(2, &self.record);
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        let node: String = map.required(0, "node")?;
        let node = NodeId::new(node).map_err(|err| {
            DecodeError::Invalid(Invalid::new(Self::NAME, "node", err.to_string()))
        })?;
        Ok(ForwardedRecord {
            node,
            seq: map.required(1, "seq")?,
            record: map.message(2, "record")?,
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        if self.seq == 0 {
            return Err(Invalid::new(
                Self::NAME,
                "seq",
                "sequence numbers start at 1",
            ));
        }
        self.record.validate()
    }
}

/// A bridge's retained state on `tollway/v1/{province}/center/bridge`.
/// Keys: 0 online, 1 since_ms, 2 remote (the address in use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeState {
    pub online: bool,
    pub since_ms: Option<u64>,
    pub remote: Option<String>,
}

impl Message for BridgeState {
    const NAME: &'static str = "BridgeState";
    const MAX_BYTES: usize = 512;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.online);
        map.optional(1, &self.since_ms);
        map.optional(2, &self.remote);
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        Ok(BridgeState {
            online: map.required(0, "online")?,
            since_ms: map.optional(1, "since_ms")?,
            remote: map.optional(2, "remote")?,
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        if let Some(remote) = &self.remote {
            check::max_len(Self::NAME, "remote", remote, MAX_SHORT_TEXT_LEN)?;
        }
        Ok(())
    }
}

/// An event for operators on `tollway/v1/{province}/center/events`, such as
/// a rejected deployment or an hour that is not yet complete.
/// Keys: 0 kind, 1 subject, 2 message, 3 time_ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CenterEvent {
    pub kind: EventKind,
    /// The event's subject: an object name, a node id or a gantry-hour.
    pub subject: String,
    pub message: String,
    pub time_ms: u64,
}

impl Message for CenterEvent {
    const NAME: &'static str = "CenterEvent";
    const MAX_BYTES: usize = MAX_TEXT_LEN + 512;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.kind.code());
        map.field(1, &self.subject);
        map.field(2, &self.message);
        map.field(3, &self.time_ms);
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        Ok(CenterEvent {
            kind: map
                .code(0, "kind", EventKind::EXPECTED, EventKind::from_code)?
                .ok_or(DecodeError::MissingField {
                    message: Self::NAME,
                    field: "kind",
                    key: 0,
                })?,
            subject: map.required(1, "subject")?,
            message: map.required(2, "message")?,
            time_ms: map.required(3, "time_ms")?,
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        check::text(Self::NAME, "subject", &self.subject, MAX_SHORT_TEXT_LEN)?;
        check::text(Self::NAME, "message", &self.message, MAX_TEXT_LEN)
    }
}

crate::messages::record::code_enum! {
    /// The kind of a centre event.
    EventKind, expected "1 (object rejected) to 10 (rollout completed)" {
        #[default]
        ObjectRejected = 1,
        HourIncomplete = 2,
        HourComplete = 3,
        ReplayRequested = 4,
        /// A deployment runs fewer instances than it asks for, because too
        /// few nodes or spread domains match.
        PlacementShortfall = 5,
        /// A rollout wave started prefetching.
        RolloutWaveStarted = 6,
        /// A rollout wave reached its success threshold.
        RolloutWaveFinished = 7,
        /// A rollout paused, by an operator or because a wave's failures
        /// reached the failure threshold.
        RolloutPaused = 8,
        /// An operator aborted a rollout.
        RolloutAborted = 9,
        /// Every wave of a rollout finished.
        RolloutCompleted = 10,
    }
}
