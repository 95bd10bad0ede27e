//! The CBOR encoding shared by every message: maps with small integer keys.
//!
//! A message type implements [`Message`]: it writes its fields through a
//! [`MapWriter`] and reads them back through a [`MapReader`]. The rules that
//! make the format evolvable live here, once:
//!
//! - Keys are unsigned integers below [`MAX_KEY`]. A decoder skips any other
//!   key, and any key it does not know, so a newer sender can add fields.
//! - An optional field that is absent, or equal to its documented default, is
//!   not written. A decoder fills the default back in.
//! - A missing required field, a value of the wrong type, a duplicate key and
//!   a value outside a limit are typed errors that name the message and field.
//! - Encoding is deterministic (definite lengths, fields in key order), so a
//!   decoded message re-encodes to the same bytes.

use std::collections::BTreeMap;

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

/// Keys at or above this value are skipped as unknown. Bounding the key range
/// keeps duplicate detection a fixed-size table, whatever the input holds.
pub const MAX_KEY: u64 = 32;

/// A message of the wire contract.
pub trait Message: Sized {
    /// The message type's name, used in every error about it.
    const NAME: &'static str;

    /// The largest encoded size allowed, in bytes.
    const MAX_BYTES: usize;

    /// Writes the message's fields, in ascending key order.
    fn write_fields(&self, map: &mut MapWriter);

    /// Reads the message's fields. Range and length checks belong in
    /// [`Message::validate`], which runs after this on every decode.
    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError>;

    /// Checks limits and invariants, including those of nested messages.
    fn validate(&self) -> Result<(), Invalid> {
        Ok(())
    }

    /// Encodes the message after validating it.
    fn to_cbor(&self) -> Result<Vec<u8>, EncodeError> {
        self.validate().map_err(EncodeError::Invalid)?;

        let bytes = MapWriter::write_message(self);
        if bytes.len() > Self::MAX_BYTES {
            return Err(EncodeError::TooLarge {
                message: Self::NAME,
                size: bytes.len(),
                limit: Self::MAX_BYTES,
            });
        }
        Ok(bytes)
    }

    /// Decodes and validates a message; the whole input must be one map.
    fn from_cbor(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > Self::MAX_BYTES {
            return Err(DecodeError::TooLarge {
                message: Self::NAME,
                size: bytes.len(),
                limit: Self::MAX_BYTES,
            });
        }

        let (map, end) = MapReader::parse(Self::NAME, bytes, 0)?;
        if end != bytes.len() {
            return Err(DecodeError::TrailingBytes {
                message: Self::NAME,
                count: bytes.len() - end,
            });
        }

        let message = Self::read_fields(&map)?;
        message.validate().map_err(DecodeError::Invalid)?;
        Ok(message)
    }
}

/// A value that breaks a limit or an invariant of its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}.{field}: {problem}")]
pub struct Invalid {
    pub message: &'static str,
    pub field: &'static str,
    pub problem: String,
}

impl Invalid {
    pub fn new(message: &'static str, field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            message,
            field,
            problem: problem.into(),
        }
    }
}

/// A message that could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot encode {0}")]
    Invalid(#[source] Invalid),

    #[error(
        "cannot encode {message}: {size} bytes is over the limit of {limit} bytes; send fewer items per message"
    )]
    TooLarge {
        message: &'static str,
        size: usize,
        limit: usize,
    },
}

/// A payload that could not be decoded, naming the message type and field.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{message}: payload of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        message: &'static str,
        size: usize,
        limit: usize,
    },

    #[error("{message}: payload is not a well-formed CBOR map")]
    Malformed {
        message: &'static str,
        #[source]
        source: minicbor::decode::Error,
    },

    #[error("{message}: {count} trailing bytes after the map")]
    TrailingBytes { message: &'static str, count: usize },

    #[error("{message}: key {key} appears more than once")]
    DuplicateKey { message: &'static str, key: u64 },

    #[error("{message}: required field `{field}` (key {key}) is missing")]
    MissingField {
        message: &'static str,
        field: &'static str,
        key: u64,
    },

    #[error("{message}: field `{field}` (key {key}) is not {expected}")]
    WrongType {
        message: &'static str,
        field: &'static str,
        key: u64,
        expected: &'static str,
        #[source]
        source: minicbor::decode::Error,
    },

    #[error("{message}: field `{field}` has the unknown code {code}; expected one of {expected}")]
    UnknownCode {
        message: &'static str,
        field: &'static str,
        code: u64,
        expected: &'static str,
    },

    #[error("{message}: field `{field}` could not be decompressed: {reason}")]
    Decompression {
        message: &'static str,
        field: &'static str,
        reason: String,
    },

    #[error("invalid {0}")]
    Invalid(#[source] Invalid),
}

/// A value that can be one field of a message.
pub trait Field<'b>: Sized {
    /// The expected type that a wrong-type error names, e.g. "an unsigned integer".
    const EXPECTED: &'static str;

    fn decode_value(d: &mut Decoder<'b>) -> Result<Self, minicbor::decode::Error>;

    fn encode_value(&self, e: &mut Encoder<&mut Vec<u8>>);
}

/// Writes one message as a definite-length map.
#[derive(Default)]
pub struct MapWriter {
    body: Vec<u8>,
    count: u64,
    last_key: Option<u64>,
}

impl MapWriter {
    /// Encodes `message` into a new buffer.
    pub fn write_message<M: Message>(message: &M) -> Vec<u8> {
        let mut writer = MapWriter::default();
        message.write_fields(&mut writer);
        writer.finish()
    }

    fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 9);
        encoder(&mut out).map(self.count).expect(VEC_WRITE);
        out.extend_from_slice(&self.body);
        out
    }

    fn key(&mut self, key: u64) -> Encoder<&mut Vec<u8>> {
        debug_assert!(key < MAX_KEY, "key {key} is outside the key range");
        debug_assert!(
            self.last_key.is_none_or(|last| last < key),
            "key {key} written out of order"
        );
        self.last_key = Some(key);
        self.count += 1;

        let mut e = encoder(&mut self.body);
        e.u64(key).expect(VEC_WRITE);
        e
    }

    /// Writes a required field.
    pub fn field<'b, T: Field<'b>>(&mut self, key: u64, value: &T) {
        value.encode_value(&mut self.key(key));
    }

    /// Writes an optional field when it is present.
    pub fn optional<'b, T: Field<'b>>(&mut self, key: u64, value: &Option<T>) {
        if let Some(value) = value {
            self.field(key, value);
        }
    }

    /// Writes a field unless it equals its default, which decoders fill in.
    pub fn unless_default<'b, T: Field<'b> + Default + PartialEq>(&mut self, key: u64, value: &T) {
        if *value != T::default() {
            self.field(key, value);
        }
    }

    /// Writes a nested message.
    pub fn message<M: Message>(&mut self, key: u64, value: &M) {
        let nested = MapWriter::write_message(value);
        let e = self.key(key);
        e.into_writer().extend_from_slice(&nested);
    }

    /// Writes a list of nested messages; an empty list is not written.
    pub fn messages<M: Message>(&mut self, key: u64, values: &[M]) {
        if values.is_empty() {
            return;
        }
        let mut e = self.key(key);
        e.array(values.len() as u64).expect(VEC_WRITE);
        let out = e.into_writer();
        for value in values {
            let mut nested = MapWriter::default();
            value.write_fields(&mut nested);
            out.extend_from_slice(&nested.finish());
        }
    }

    /// Writes raw CBOR that the caller encoded, e.g. a compressed record list.
    pub(crate) fn raw_bytes(&mut self, key: u64, bytes: &[u8]) {
        self.key(key).bytes(bytes).expect(VEC_WRITE);
    }
}

/// The fields of one map, located but not yet decoded.
pub struct MapReader<'b> {
    message: &'static str,
    input: &'b [u8],
    positions: [Option<usize>; MAX_KEY as usize],
}

impl<'b> MapReader<'b> {
    /// Locates the fields of the map that starts at `start`, and returns the
    /// reader and the position just after the map.
    pub fn parse(
        message: &'static str,
        input: &'b [u8],
        start: usize,
    ) -> Result<(Self, usize), DecodeError> {
        let malformed = |source| DecodeError::Malformed { message, source };
        let mut d = Decoder::new(input);
        d.set_position(start);

        let mut reader = MapReader {
            message,
            input,
            positions: [None; MAX_KEY as usize],
        };
        let mut remaining = d.map().map_err(malformed)?;
        loop {
            // A definite map ends after its count; an indefinite one at a break byte.
            match remaining {
                Some(0) => break,
                Some(ref mut n) => *n -= 1,
                None => {
                    if d.datatype().map_err(malformed)? == Type::Break {
                        d.set_position(d.position() + 1);
                        break;
                    }
                }
            }

            let key = match d.datatype().map_err(malformed)? {
                Type::U8 | Type::U16 | Type::U32 | Type::U64 => Some(d.u64().map_err(malformed)?),
                _ => {
                    d.skip().map_err(malformed)?;
                    None
                }
            };
            let value_start = d.position();
            d.skip().map_err(malformed)?;

            // Keys outside the table are unknown by definition and skipped.
            if let Some(key) = key.filter(|key| *key < MAX_KEY) {
                let slot = &mut reader.positions[key as usize];
                if slot.is_some() {
                    return Err(DecodeError::DuplicateKey { message, key });
                }
                *slot = Some(value_start);
            }
        }
        Ok((reader, d.position()))
    }

    pub fn message_name(&self) -> &'static str {
        self.message
    }

    fn decoder_at(&self, key: u64) -> Option<Decoder<'b>> {
        let position = (*self.positions.get(key as usize)?)?;
        let mut d = Decoder::new(self.input);
        d.set_position(position);
        Some(d)
    }

    fn missing(&self, key: u64, field: &'static str) -> DecodeError {
        DecodeError::MissingField {
            message: self.message,
            field,
            key,
        }
    }

    /// Reads a required field.
    pub fn required<T: Field<'b>>(&self, key: u64, field: &'static str) -> Result<T, DecodeError> {
        self.optional(key, field)?
            .ok_or_else(|| self.missing(key, field))
    }

    /// Reads an optional field; `None` when the key is absent.
    pub fn optional<T: Field<'b>>(
        &self,
        key: u64,
        field: &'static str,
    ) -> Result<Option<T>, DecodeError> {
        let Some(mut d) = self.decoder_at(key) else {
            return Ok(None);
        };
        T::decode_value(&mut d)
            .map(Some)
            .map_err(|source| DecodeError::WrongType {
                message: self.message,
                field,
                key,
                expected: T::EXPECTED,
                source,
            })
    }

    /// Reads a field whose absence means its type's default.
    pub fn or_default<T: Field<'b> + Default>(
        &self,
        key: u64,
        field: &'static str,
    ) -> Result<T, DecodeError> {
        Ok(self.optional(key, field)?.unwrap_or_default())
    }

    /// Reads a required nested message.
    pub fn message<M: Message>(&self, key: u64, field: &'static str) -> Result<M, DecodeError> {
        self.optional_message(key, field)?
            .ok_or_else(|| self.missing(key, field))
    }

    /// Reads an optional nested message.
    pub fn optional_message<M: Message>(
        &self,
        key: u64,
        field: &'static str,
    ) -> Result<Option<M>, DecodeError> {
        let Some(d) = self.decoder_at(key) else {
            return Ok(None);
        };
        self.expect_type(&d, key, field, "a map", |t| {
            matches!(t, Type::Map | Type::MapIndef)
        })?;
        let (nested, _) = MapReader::parse(M::NAME, self.input, d.position())?;
        M::read_fields(&nested).map(Some)
    }

    /// Reads a list of nested messages (absent means empty), rejecting more
    /// than `max` before decoding any of them.
    pub fn messages<M: Message>(
        &self,
        key: u64,
        field: &'static str,
        max: usize,
    ) -> Result<Vec<M>, DecodeError> {
        let Some(mut d) = self.decoder_at(key) else {
            return Ok(Vec::new());
        };
        let wrong_type = |source| DecodeError::WrongType {
            message: self.message,
            field,
            key,
            expected: "an array of maps",
            source,
        };
        let len = d.array().map_err(wrong_type)?.ok_or_else(|| {
            wrong_type(minicbor::decode::Error::message(
                "indefinite-length arrays are not supported",
            ))
        })?;
        if len > max as u64 {
            return Err(DecodeError::Invalid(Invalid::new(
                self.message,
                field,
                format!("{len} entries is over the limit of {max}"),
            )));
        }

        let mut values = Vec::with_capacity(len as usize);
        for _ in 0..len {
            self.expect_type(&d, key, field, "an array of maps", |t| {
                matches!(t, Type::Map | Type::MapIndef)
            })?;
            let (nested, end) = MapReader::parse(M::NAME, self.input, d.position())?;
            values.push(M::read_fields(&nested)?);
            d.set_position(end);
        }
        Ok(values)
    }

    /// Reads a code field and maps it through `from_code`, naming the valid
    /// codes when it is unknown.
    pub fn code<T>(
        &self,
        key: u64,
        field: &'static str,
        expected: &'static str,
        from_code: impl Fn(u64) -> Option<T>,
    ) -> Result<Option<T>, DecodeError> {
        match self.optional::<u64>(key, field)? {
            None => Ok(None),
            Some(code) => from_code(code).map(Some).ok_or(DecodeError::UnknownCode {
                message: self.message,
                field,
                code,
                expected,
            }),
        }
    }

    fn expect_type(
        &self,
        d: &Decoder<'b>,
        key: u64,
        field: &'static str,
        expected: &'static str,
        accept: impl Fn(Type) -> bool,
    ) -> Result<(), DecodeError> {
        let datatype = d.datatype().map_err(|source| DecodeError::Malformed {
            message: self.message,
            source,
        })?;
        if accept(datatype) {
            Ok(())
        } else {
            Err(DecodeError::WrongType {
                message: self.message,
                field,
                key,
                expected,
                source: minicbor::decode::Error::type_mismatch(datatype),
            })
        }
    }
}

const VEC_WRITE: &str = "encoding into a Vec<u8> cannot fail";

fn encoder(out: &mut Vec<u8>) -> Encoder<&mut Vec<u8>> {
    Encoder::new(out)
}

macro_rules! uint_field {
    ($ty:ty, $method:ident) => {
        impl<'b> Field<'b> for $ty {
            const EXPECTED: &'static str =
                concat!("an unsigned integer that fits ", stringify!($ty));

            fn decode_value(d: &mut Decoder<'b>) -> Result<Self, minicbor::decode::Error> {
                d.$method()
            }

            fn encode_value(&self, e: &mut Encoder<&mut Vec<u8>>) {
                e.$method(*self).expect(VEC_WRITE);
            }
        }
    };
}

uint_field!(u8, u8);
uint_field!(u16, u16);
uint_field!(u32, u32);
uint_field!(u64, u64);

impl<'b> Field<'b> for i64 {
    const EXPECTED: &'static str = "an integer that fits i64";

    fn decode_value(d: &mut Decoder<'b>) -> Result<Self, minicbor::decode::Error> {
        d.i64()
    }

    fn encode_value(&self, e: &mut Encoder<&mut Vec<u8>>) {
        e.i64(*self).expect(VEC_WRITE);
    }
}

impl<'b> Field<'b> for bool {
    const EXPECTED: &'static str = "a boolean";

    fn decode_value(d: &mut Decoder<'b>) -> Result<Self, minicbor::decode::Error> {
        d.bool()
    }

    fn encode_value(&self, e: &mut Encoder<&mut Vec<u8>>) {
        e.bool(*self).expect(VEC_WRITE);
    }
}

impl<'b> Field<'b> for String {
    const EXPECTED: &'static str = "a UTF-8 text string";

    fn decode_value(d: &mut Decoder<'b>) -> Result<Self, minicbor::decode::Error> {
        d.str().map(str::to_owned)
    }

    fn encode_value(&self, e: &mut Encoder<&mut Vec<u8>>) {
        e.str(self).expect(VEC_WRITE);
    }
}

impl<'b> Field<'b> for Vec<u8> {
    const EXPECTED: &'static str = "a byte string";

    fn decode_value(d: &mut Decoder<'b>) -> Result<Self, minicbor::decode::Error> {
        d.bytes().map(<[u8]>::to_vec)
    }

    fn encode_value(&self, e: &mut Encoder<&mut Vec<u8>>) {
        e.bytes(self).expect(VEC_WRITE);
    }
}

impl<'b> Field<'b> for Vec<String> {
    const EXPECTED: &'static str = "an array of text strings";

    fn decode_value(d: &mut Decoder<'b>) -> Result<Self, minicbor::decode::Error> {
        let len = definite(d.array()?)?;
        // Every entry takes at least one byte, so a length beyond the input
        // is malformed; checking first keeps a forged length from allocating.
        if len > d.input().len() as u64 {
            return Err(minicbor::decode::Error::end_of_input());
        }
        (0..len).map(|_| d.str().map(str::to_owned)).collect()
    }

    fn encode_value(&self, e: &mut Encoder<&mut Vec<u8>>) {
        e.array(self.len() as u64).expect(VEC_WRITE);
        for item in self {
            e.str(item).expect(VEC_WRITE);
        }
    }
}

impl<'b> Field<'b> for BTreeMap<String, String> {
    const EXPECTED: &'static str = "a map of text strings to text strings";

    fn decode_value(d: &mut Decoder<'b>) -> Result<Self, minicbor::decode::Error> {
        let len = definite(d.map()?)?;
        let mut map = BTreeMap::new();
        for _ in 0..len {
            let key = d.str()?.to_owned();
            let value = d.str()?.to_owned();
            if map.insert(key, value).is_some() {
                return Err(minicbor::decode::Error::message("duplicate map key"));
            }
        }
        Ok(map)
    }

    fn encode_value(&self, e: &mut Encoder<&mut Vec<u8>>) {
        e.map(self.len() as u64).expect(VEC_WRITE);
        for (key, value) in self {
            e.str(key).expect(VEC_WRITE);
            e.str(value).expect(VEC_WRITE);
        }
    }
}

fn definite(len: Option<u64>) -> Result<u64, minicbor::decode::Error> {
    len.ok_or_else(|| minicbor::decode::Error::message("indefinite lengths are not supported"))
}

/// Checks shared by the `validate` methods of the message types.
pub(crate) mod check {
    use super::Invalid;

    /// Rejects text longer than `max` bytes.
    pub fn max_len(
        message: &'static str,
        field: &'static str,
        value: &str,
        max: usize,
    ) -> Result<(), Invalid> {
        if value.len() > max {
            return Err(Invalid::new(
                message,
                field,
                format!("{} bytes is over the limit of {max} bytes", value.len()),
            ));
        }
        Ok(())
    }

    /// Rejects empty text and text longer than `max` bytes.
    pub fn text(
        message: &'static str,
        field: &'static str,
        value: &str,
        max: usize,
    ) -> Result<(), Invalid> {
        if value.is_empty() {
            return Err(Invalid::new(message, field, "must not be empty"));
        }
        max_len(message, field, value, max)
    }

    /// Rejects lists with more than `max` entries.
    pub fn count(
        message: &'static str,
        field: &'static str,
        len: usize,
        max: usize,
    ) -> Result<(), Invalid> {
        if len > max {
            return Err(Invalid::new(
                message,
                field,
                format!("{len} entries is over the limit of {max}"),
            ));
        }
        Ok(())
    }
}
