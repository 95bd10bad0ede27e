//! Hard limits of the wire contract, in one place.
//!
//! Encoders refuse to produce a message over a limit and decoders reject one,
//! so a limit reached on either side is a typed error, never a truncation.
//! Each broker's and client's maximum packet size is set from
//! [`MAX_PACKET_BYTES`], which leaves room for the topic and MQTT headers.

/// Maximum MQTT packet size, in bytes, for every Tollway client and broker.
pub const MAX_PACKET_BYTES: usize = 1024 * 1024;

/// Maximum length of a node id, in bytes. A node id is also a certificate CN,
/// and X.509 caps a CN at 64 characters.
pub const MAX_NODE_ID_LEN: usize = 64;

/// Maximum length of an app, deployment or rollout name, in bytes.
pub const MAX_NAME_LEN: usize = 63;

/// Maximum length of a container image reference, in bytes.
pub const MAX_IMAGE_LEN: usize = 255;

/// Maximum length of a short text field (gantry id, transaction id, label
/// value, reason), in bytes.
pub const MAX_SHORT_TEXT_LEN: usize = 128;

/// Maximum length of a free-text field (error reasons, command output), in bytes.
pub const MAX_TEXT_LEN: usize = 4096;

/// Maximum length of a plate number, in bytes of UTF-8. A new-energy plate
/// with its separator dot, such as 粤B·D12345, takes 12 bytes.
pub const MAX_PLATE_LEN: usize = 32;

/// Maximum number of apps in one node's desired state.
pub const MAX_APPS_PER_NODE: usize = 32;

/// Maximum number of entries in a list field of an app spec (command
/// arguments, environment variables, ports, mounts).
pub const MAX_SPEC_LIST_LEN: usize = 64;

/// Maximum number of toll interval ids on one record.
pub const MAX_TOLL_INTERVALS: usize = 16;

/// Maximum number of records in one batch, from a node or from a province.
pub const MAX_RECORDS_PER_BATCH: usize = 2000;

/// Maximum size of an encoded desired-state document, in bytes.
pub const MAX_DESIRED_BYTES: usize = 64 * 1024;

/// Maximum size of an encoded node status, in bytes.
pub const MAX_STATUS_BYTES: usize = 16 * 1024;

/// Maximum size of an encoded record batch, in bytes (compressed or not).
pub const MAX_BATCH_BYTES: usize = 512 * 1024;

/// Maximum size of a batch's records after zstd decompression, in bytes. It
/// bounds the memory a hostile or corrupt compressed batch can claim.
pub const MAX_DECOMPRESSED_BYTES: usize = 2 * 1024 * 1024;

/// Maximum size of any other encoded message, in bytes.
pub const MAX_SMALL_MESSAGE_BYTES: usize = 16 * 1024;

/// Maximum size of an encoded deployment or rollout object, in bytes.
pub const MAX_OBJECT_BYTES: usize = 64 * 1024;

/// Maximum number of requirements in one label selector.
pub const MAX_SELECTOR_REQUIREMENTS: usize = 16;

/// Maximum number of waves in one rollout.
pub const MAX_WAVES: usize = 64;

/// Maximum number of labels a node reports.
pub const MAX_LABELS: usize = 32;

/// Maximum size of a command's output (collected logs), in bytes. Encoding
/// rejects a longer output, so a sender must cut it to its last bytes first.
pub const MAX_COMMAND_OUTPUT: usize = 64 * 1024;
