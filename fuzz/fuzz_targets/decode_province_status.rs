//! Fuzzes the ProvinceStatus decoder: any input must decode or fail with an error,
//! and whatever decodes must re-encode to bytes that decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollway_topics::{ProvinceStatus, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = ProvinceStatus::from_cbor(data) {
        let bytes = value.to_cbor().expect("a decoded value re-encodes");
        let again = ProvinceStatus::from_cbor(&bytes).expect("a re-encoded value decodes");
        assert_eq!(again, value);
    }
});
