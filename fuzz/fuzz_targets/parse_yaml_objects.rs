//! Fuzzes the YAML forms of deployments and rollouts and the selector
//! parser. libFuzzer reports any panic, so every input must parse or fail
//! with an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollway_topics::{Deployment, Requirement, Rollout};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = serde_norway::from_str::<Deployment>(text);
        let _ = serde_norway::from_str::<Rollout>(text);
        let _ = text.parse::<Requirement>();
    }
});
