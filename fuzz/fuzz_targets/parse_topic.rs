//! Fuzzes the topic parser: any text must parse or fail with an error, and a
//! parsed topic must print back to the same text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollway_topics::Topic;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(topic) = Topic::parse(text) {
            assert_eq!(topic.to_string(), text);
        }
    }
});
