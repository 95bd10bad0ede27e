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

/// The encoding of a batch's record list.
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
    /// The record list's encoding on the wire; decoding reports the one it found.
    pub compression: Compression,
}

impl RecordBatch {
    /// Sequence number of the last record, or `None` for an empty batch.
    pub fn last_seq(&self) -> Option<u64> {
        last_seq_of(self.first_seq, self.records.len())
    }

    /// Returns the records paired with their sequence numbers.
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
        write_record_list(map, &self.records, self.compression);
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        let node: String = map.required(0, "node")?;
        let node = NodeId::new(node).map_err(|err| {
            DecodeError::Invalid(Invalid::new(Self::NAME, "node", err.to_string()))
        })?;
        let first_seq = map.required(1, "first_seq")?;
        let (records, compression) = read_record_list(map, Self::NAME)?;

        Ok(RecordBatch {
            node,
            first_seq,
            records,
            compression,
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        validate_sequence_range(Self::NAME, self.first_seq, self.records.len())?;
        self.records.iter().try_for_each(TollRecord::validate)
    }
}

/// Returns the sequence number of the last of `len` records numbered from
/// `first_seq`, or `None` when there are none.
pub(crate) fn last_seq_of(first_seq: u64, len: usize) -> Option<u64> {
    (len > 0).then(|| first_seq + len as u64 - 1)
}

/// Checks a batch's sequence range: it starts at 1 or later, holds at most
/// [`MAX_RECORDS_PER_BATCH`] records and does not overflow `u64`.
pub(crate) fn validate_sequence_range(
    container: &'static str,
    first_seq: u64,
    len: usize,
) -> Result<(), Invalid> {
    if first_seq == 0 {
        return Err(Invalid::new(
            container,
            "first_seq",
            "sequence numbers start at 1",
        ));
    }
    check::count(container, "records", len, MAX_RECORDS_PER_BATCH)?;
    if first_seq.checked_add(len as u64).is_none() {
        return Err(Invalid::new(
            container,
            "first_seq",
            format!("{first_seq} plus the record count overflows u64"),
        ));
    }
    Ok(())
}

/// Writes a batch's record list: a plain array at key 2, or a zstd-compressed
/// array at key 3 with its count at key 4.
pub(crate) fn write_record_list<M: Message>(
    map: &mut MapWriter,
    records: &[M],
    compression: Compression,
) {
    match compression {
        Compression::None => map.messages(2, records),
        Compression::Zstd => {
            map.raw_bytes(3, &compress_messages(records));
            map.field(4, &(records.len() as u64));
        }
    }
}

/// Reads a batch's record list from key 2, or from keys 3 and 4 when it is
/// compressed, and returns the form it found.
pub(crate) fn read_record_list<M: Message>(
    map: &MapReader<'_>,
    container: &'static str,
) -> Result<(Vec<M>, Compression), DecodeError> {
    let compressed: Option<Vec<u8>> = map.optional(3, "records_zstd")?;
    let Some(compressed) = compressed else {
        let records = map.messages(2, "records", MAX_RECORDS_PER_BATCH)?;
        return Ok((records, Compression::None));
    };

    let count: u64 = map.required(4, "record_count")?;
    let records: Vec<M> = decompress_messages(
        container,
        "records_zstd",
        &compressed,
        MAX_RECORDS_PER_BATCH,
    )?;
    if records.len() as u64 != count {
        return Err(DecodeError::Invalid(Invalid::new(
            container,
            "record_count",
            format!(
                "is {count} but the compressed list contains {} records",
                records.len()
            ),
        )));
    }
    Ok((records, Compression::Zstd))
}

/// Encodes messages as one CBOR array and compresses it with zstd.
fn compress_messages<M: Message>(messages: &[M]) -> Vec<u8> {
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
fn decompress_messages<M: Message>(
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
