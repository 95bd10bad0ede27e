//! A node's batch of toll records and the centre's acknowledgement.
//!
//! Records in a batch have consecutive sequence numbers starting at
//! `first_seq`, so a batch names the range it covers and a receiver stores
//! each record under (node, seq) without a per-record header.

use minicbor::{Decoder, Encoder};

use crate::ids::NodeId;
use crate::limits::{MAX_BATCH_BYTES, MAX_DECOMPRESSED_BYTES, MAX_RECORDS_PER_BATCH};
use crate::messages::TollRecord;
use crate::wire::{DecodeError, Invalid, MapReader, MapWriter, Message, check};

/// How a batch's records are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// A plain CBOR array of records (key 2).
    #[default]
    None,
    /// The same array compressed with zstd (key 3). It pays from a few dozen
    /// records on, because gantry ids, intervals and hour batches repeat.
    Zstd,
}

/// Zstd level for batches: level 3 is zstd's default and compresses a
/// 500-record batch in well under a millisecond.
pub(crate) const ZSTD_LEVEL: i32 = 3;

/// A batch of toll records from one node, published on its `records` topic.
///
/// Keys: 0 node, 1 first_seq, 2 records (plain), 3 records (zstd-compressed
/// CBOR array), 4 record count (with 3 only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBatch {
    pub node: NodeId,
    /// Sequence number of the first record; the rest follow without gaps.
    /// Sequences start at 1, so 0 in an acknowledgement means "nothing yet".
    pub first_seq: u64,
    pub records: Vec<TollRecord>,
    /// How the records are carried on the wire; decoding reports what it saw.
    pub compression: Compression,
}

impl RecordBatch {
    /// Sequence number of the last record, or `None` for an empty batch.
    pub fn last_seq(&self) -> Option<u64> {
        let len = self.records.len() as u64;
        (len > 0).then(|| self.first_seq + len - 1)
    }

    /// The records paired with their sequence numbers.
    pub fn sequenced(&self) -> impl Iterator<Item = (u64, &TollRecord)> {
        (self.first_seq..).zip(self.records.iter())
    }
}

impl Message for RecordBatch {
    const NAME: &'static str = "RecordBatch";
    const MAX_BYTES: usize = MAX_BATCH_BYTES;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.node.to_string());
        map.field(1, &self.first_seq);
        match self.compression {
            Compression::None => map.messages(2, &self.records),
            Compression::Zstd => {
                map.raw_bytes(3, &compress_messages(&self.records));
                map.field(4, &(self.records.len() as u64));
            }
        }
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        let node: String = map.required(0, "node")?;
        let node = NodeId::new(node).map_err(|err| {
            DecodeError::Invalid(Invalid::new(Self::NAME, "node", err.to_string()))
        })?;
        let first_seq = map.required(1, "first_seq")?;

        let compressed: Option<Vec<u8>> = map.optional(3, "records_zstd")?;
        let (records, compression) = match compressed {
            None => (
                map.messages(2, "records", MAX_RECORDS_PER_BATCH)?,
                Compression::None,
            ),
            Some(compressed) => {
                let count: u64 = map.required(4, "record_count")?;
                let records = decompress_messages(
                    Self::NAME,
                    "records_zstd",
                    &compressed,
                    MAX_RECORDS_PER_BATCH,
                )?;
                if records.len() as u64 != count {
                    return Err(DecodeError::Invalid(Invalid::new(
                        Self::NAME,
                        "record_count",
                        format!(
                            "says {count} records but the compressed list holds {}",
                            records.len()
                        ),
                    )));
                }
                (records, Compression::Zstd)
            }
        };

        Ok(RecordBatch {
            node,
            first_seq,
            records,
            compression,
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        if self.first_seq == 0 {
            return Err(Invalid::new(
                Self::NAME,
                "first_seq",
                "sequence numbers start at 1",
            ));
        }
        check::count(
            Self::NAME,
            "records",
            self.records.len(),
            MAX_RECORDS_PER_BATCH,
        )?;
        if self
            .first_seq
            .checked_add(self.records.len() as u64)
            .is_none()
        {
            return Err(Invalid::new(
                Self::NAME,
                "first_seq",
                format!("{} plus the record count overflows u64", self.first_seq),
            ));
        }
        self.records.iter().try_for_each(TollRecord::validate)
    }
}

/// Encodes messages as one CBOR array and compresses it with zstd.
pub(crate) fn compress_messages<M: Message>(messages: &[M]) -> Vec<u8> {
    let mut plain = Vec::new();
    Encoder::new(&mut plain)
        .array(messages.len() as u64)
        .expect("encoding into a Vec<u8> cannot fail");
    for message in messages {
        plain.extend_from_slice(&MapWriter::write_message(message));
    }
    zstd::bulk::compress(&plain, ZSTD_LEVEL)
        .expect("zstd compression of an in-memory buffer cannot fail")
}

/// Decompresses and decodes an array of `M` carried in field `field` of
/// `container`, never expanding it beyond [`MAX_DECOMPRESSED_BYTES`] and
/// rejecting more than `max` entries before decoding any.
pub(crate) fn decompress_messages<M: Message>(
    container: &'static str,
    field: &'static str,
    compressed: &[u8],
    max: usize,
) -> Result<Vec<M>, DecodeError> {
    let plain = zstd::bulk::decompress(compressed, MAX_DECOMPRESSED_BYTES).map_err(|err| {
        DecodeError::Decompression {
            message: container,
            field,
            reason: format!("{err} (the limit is {MAX_DECOMPRESSED_BYTES} bytes)"),
        }
    })?;

    let malformed = |source| DecodeError::Malformed {
        message: container,
        source,
    };
    let mut d = Decoder::new(&plain);
    let len = d.array().map_err(malformed)?.ok_or_else(|| {
        malformed(minicbor::decode::Error::message(
            "indefinite-length arrays are not supported",
        ))
    })?;
    check::count(container, field, len as usize, max).map_err(DecodeError::Invalid)?;

    let mut messages = Vec::with_capacity(len as usize);
    for _ in 0..len {
        let (map, end) = MapReader::parse(M::NAME, &plain, d.position())?;
        messages.push(M::read_fields(&map)?);
        d.set_position(end);
    }
    if d.position() != plain.len() {
        return Err(DecodeError::TrailingBytes {
            message: container,
            count: plain.len() - d.position(),
        });
    }
    Ok(messages)
}

/// The centre's acknowledgement on a node's `records/ack` topic: every record
/// up to and including `stored_through` is stored durably, with no gap.
///
/// Keys: 0 stored_through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordAck {
    /// Highest contiguous sequence number stored; 0 when nothing is stored.
    pub stored_through: u64,
}

impl Message for RecordAck {
    const NAME: &'static str = "RecordAck";
    const MAX_BYTES: usize = 64;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.stored_through);
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        Ok(RecordAck {
            stored_through: map.required(0, "stored_through")?,
        })
    }
}
