//! Key and value encodings of the record store.
//!
//! Integers are big-endian so that keys sort numerically. A node id never
//! contains a NUL byte (ids are ASCII letters, digits, '-' and '_'), and the
//! wire contract rejects control characters in gantry ids, so NUL ends both
//! inside a key.

use tollway_topics::{NodeId, Province};

/// Bytes of a record value before the record's CBOR: forwarding sequence
/// and storage time.
pub const VALUE_HEADER_BYTES: usize = 16;

/// Prefix of every record key of one node: province, node id, NUL.
pub fn node_prefix(province: Province, node: &NodeId) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + node.as_str().len());
    key.push(province.code());
    key.extend_from_slice(node.as_str().as_bytes());
    key.push(0);
    key
}

/// Key of one record in the `records` column family.
pub fn record_key(province: Province, node: &NodeId, seq: u64) -> Vec<u8> {
    let mut key = node_prefix(province, node);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Parses a record key into its parts, or `None` when it is malformed.
pub fn parse_record_key(key: &[u8]) -> Option<(Province, NodeId, u64)> {
    let (&code, rest) = key.split_first()?;
    let province = Province::new(code).ok()?;
    let nul = rest.iter().position(|&b| b == 0)?;
    let node = NodeId::new(std::str::from_utf8(&rest[..nul]).ok()?).ok()?;
    let seq: [u8; 8] = rest[nul + 1..].try_into().ok()?;
    Some((province, node, u64::from_be_bytes(seq)))
}

/// Sequence number at the end of a record key that starts with `prefix`.
pub fn seq_after_prefix(prefix: &[u8], key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(prefix)?;
    let seq: [u8; 8] = rest.try_into().ok()?;
    Some(u64::from_be_bytes(seq))
}

/// Start of one gantry's index entries at or after `time_ms`.
pub fn gantry_key_from(gantry: &str, time_ms: u64) -> Vec<u8> {
    let mut key = gantry_prefix(gantry);
    key.extend_from_slice(&time_ms.to_be_bytes());
    key
}

/// Prefix of every index entry of one gantry.
pub fn gantry_prefix(gantry: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(gantry.len() + 1);
    key.extend_from_slice(gantry.as_bytes());
    key.push(0);
    key
}

/// Key of one entry in the `by_gantry` index: gantry, NUL, pass time, then
/// the record key.
pub fn gantry_key(gantry: &str, pass_time_ms: u64, record_key: &[u8]) -> Vec<u8> {
    let mut key = gantry_key_from(gantry, pass_time_ms);
    key.extend_from_slice(record_key);
    key
}

/// Pass time and record key of a `by_gantry` entry that starts with `prefix`.
pub fn parse_gantry_key<'k>(prefix: &[u8], key: &'k [u8]) -> Option<(u64, &'k [u8])> {
    let rest = key.strip_prefix(prefix)?;
    if rest.len() < 8 {
        return None;
    }
    let (time, record_key) = rest.split_at(8);
    Some((u64::from_be_bytes(time.try_into().ok()?), record_key))
}

/// Key of a node's contiguous watermark in the `marks` column family.
pub fn node_mark_key(province: Province, node: &NodeId) -> Vec<u8> {
    let mut key = vec![b'n'];
    key.extend_from_slice(&node_prefix(province, node));
    key
}

/// Key of a province's forwarding watermark in the `marks` column family
/// (national store: forwarding sequences received from the province).
pub fn forward_mark_key(province: Province) -> Vec<u8> {
    vec![b'f', province.code()]
}

/// Key in the `forward` column family: province, forwarding sequence.
pub fn forward_key(province: Province, forward_seq: u64) -> Vec<u8> {
    let mut key = vec![province.code()];
    key.extend_from_slice(&forward_seq.to_be_bytes());
    key
}

/// Key of an hourly summary: node prefix, hour, gantry.
pub fn summary_key(province: Province, node: &NodeId, hour_batch: u32, gantry: &str) -> Vec<u8> {
    let mut key = node_prefix(province, node);
    key.extend_from_slice(&hour_batch.to_be_bytes());
    key.extend_from_slice(gantry.as_bytes());
    key
}

/// Parses the province and node of a summary key.
pub fn parse_summary_key(key: &[u8]) -> Option<(Province, NodeId)> {
    let (&code, rest) = key.split_first()?;
    let province = Province::new(code).ok()?;
    let nul = rest.iter().position(|&b| b == 0)?;
    let node = NodeId::new(std::str::from_utf8(&rest[..nul]).ok()?).ok()?;
    Some((province, node))
}

/// Builds a record value: forwarding sequence, storage time, CBOR.
pub fn record_value(forward_seq: u64, stored_at_ms: u64, cbor: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(VALUE_HEADER_BYTES + cbor.len());
    value.extend_from_slice(&forward_seq.to_be_bytes());
    value.extend_from_slice(&stored_at_ms.to_be_bytes());
    value.extend_from_slice(cbor);
    value
}

/// Decodes a u64 stored as 8 big-endian bytes.
pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_key_round_trips() {
        let province = Province::new(44).unwrap();
        let node = NodeId::new("G0015-0001").unwrap();
        let key = record_key(province, &node, 77);
        assert_eq!(parse_record_key(&key), Some((province, node.clone(), 77)));
        assert_eq!(
            seq_after_prefix(&node_prefix(province, &node), &key),
            Some(77)
        );
    }

    #[test]
    fn record_keys_sort_by_seq() {
        let province = Province::new(44).unwrap();
        let node = NodeId::new("n1").unwrap();
        assert!(record_key(province, &node, 255) < record_key(province, &node, 256));
    }

    #[test]
    fn gantry_key_round_trips() {
        let record = record_key(Province::new(11).unwrap(), &NodeId::new("n").unwrap(), 3);
        let key = gantry_key("G001", 1_700_000_000_000, &record);
        let prefix = gantry_prefix("G001");
        assert_eq!(
            parse_gantry_key(&prefix, &key),
            Some((1_700_000_000_000, &record[..]))
        );
        assert_eq!(parse_gantry_key(&gantry_prefix("G00"), &key), None);
    }
}
