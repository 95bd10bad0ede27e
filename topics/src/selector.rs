//! Label selectors: which nodes a deployment or a rollout wave targets.
//!
//! A selector is a list of requirements that must all hold, each written the
//! way operators write them in YAML:
//!
//! - `key = value` and `key != value`
//! - `key in (a, b)` and `key notin (a, b)`
//! - `key` (the label exists) and `!key` (it does not)

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::{MAX_NAME_LEN, MAX_SELECTOR_REQUIREMENTS};

/// One requirement on a node's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals { key: String, value: String },
    NotEquals { key: String, value: String },
    In { key: String, values: Vec<String> },
    NotIn { key: String, values: Vec<String> },
    Exists { key: String },
    NotExists { key: String },
}

/// All requirements must hold; an empty selector matches every node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

/// A requirement that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid selector requirement {text:?}: {reason}; write `key = value`, `key != value`, `key in (a, b)`, `key notin (a, b)`, `key` or `!key`"
)]
pub struct SelectorError {
    pub text: String,
    pub reason: String,
}

impl Requirement {
    /// Reports whether the labels satisfy this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals { key, value } => labels.get(key) == Some(value),
            Requirement::NotEquals { key, value } => labels.get(key) != Some(value),
            Requirement::In { key, values } => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn { key, values } => {
                !labels.get(key).is_some_and(|v| values.contains(v))
            }
            Requirement::Exists { key } => labels.contains_key(key),
            Requirement::NotExists { key } => !labels.contains_key(key),
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Requirement::Equals { key, .. }
            | Requirement::NotEquals { key, .. }
            | Requirement::In { key, .. }
            | Requirement::NotIn { key, .. }
            | Requirement::Exists { key }
            | Requirement::NotExists { key } => key,
        }
    }
}

impl Selector {
    /// Reports whether the labels satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Parses a list of requirement strings.
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Self, SelectorError> {
        if texts.len() > MAX_SELECTOR_REQUIREMENTS {
            return Err(SelectorError {
                text: format!("{} requirements", texts.len()),
                reason: format!("a selector has at most {MAX_SELECTOR_REQUIREMENTS} requirements"),
            });
        }
        let requirements = texts
            .iter()
            .map(|text| text.as_ref().parse())
            .collect::<Result<_, _>>()?;
        Ok(Selector { requirements })
    }

    /// Returns the requirements in their text form.
    pub fn to_strings(&self) -> Vec<String> {
        self.requirements.iter().map(ToString::to_string).collect()
    }
}

impl FromStr for Requirement {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Self, SelectorError> {
        let error = |reason: &str| SelectorError {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = text.trim();

        // Set membership: `key in (a, b)` or `key notin (a, b)`.
        for (keyword, negated) in [(" notin ", true), (" in ", false)] {
            if let Some((key, rest)) = trimmed.split_once(keyword) {
                let key = label_key(key.trim()).map_err(|reason| error(&reason))?;
                let inner = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|rest| rest.strip_suffix(')'))
                    .ok_or_else(|| error("the value list must be in parentheses"))?;
                let values = inner
                    .split(',')
                    .map(|value| label_value(value.trim()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|reason| error(&reason))?;
                return Ok(if negated {
                    Requirement::NotIn { key, values }
                } else {
                    Requirement::In { key, values }
                });
            }
        }

        // Equality: `key != value`, `key = value` or `key == value`.
        if let Some((key, value)) = trimmed.split_once("!=") {
            let key = label_key(key.trim()).map_err(|reason| error(&reason))?;
            let value = label_value(value.trim()).map_err(|reason| error(&reason))?;
            return Ok(Requirement::NotEquals { key, value });
        }
        if let Some((key, value)) = trimmed.split_once('=') {
            let value = value.strip_prefix('=').unwrap_or(value);
            let key = label_key(key.trim()).map_err(|reason| error(&reason))?;
            let value = label_value(value.trim()).map_err(|reason| error(&reason))?;
            return Ok(Requirement::Equals { key, value });
        }

        // Existence: `key` or `!key`.
        if let Some(key) = trimmed.strip_prefix('!') {
            let key = label_key(key.trim()).map_err(|reason| error(&reason))?;
            return Ok(Requirement::NotExists { key });
        }
        let key = label_key(trimmed).map_err(|reason| error(&reason))?;
        Ok(Requirement::Exists { key })
    }
}

/// Validates a label key: 1 to 63 characters of `a-z`, `0-9`, `.`, `_`, `-`.
pub(crate) fn label_key(key: &str) -> Result<String, String> {
    if key.is_empty() || key.len() > MAX_NAME_LEN {
        return Err(format!(
            "label key {key:?} must have 1 to {MAX_NAME_LEN} characters"
        ));
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "label key {key:?} may contain only lowercase letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(key.to_string())
}

/// Validates a label value: 1 to 63 ASCII letters, digits, `.`, `_`, `-`.
pub(crate) fn label_value(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > MAX_NAME_LEN {
        return Err(format!(
            "label value {value:?} must have 1 to {MAX_NAME_LEN} characters"
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "label value {value:?} may contain only ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(value.to_string())
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Equals { key, value } => write!(f, "{key} = {value}"),
            Requirement::NotEquals { key, value } => write!(f, "{key} != {value}"),
            Requirement::In { key, values } => write!(f, "{key} in ({})", values.join(", ")),
            Requirement::NotIn { key, values } => write!(f, "{key} notin ({})", values.join(", ")),
            Requirement::Exists { key } => write!(f, "{key}"),
            Requirement::NotExists { key } => write!(f, "!{key}"),
        }
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_strings().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        Selector::parse(&texts).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selector_parses_every_form() {
        let selector = Selector::parse(&[
            "role in (gantry, station)",
            "arch = arm64",
            "section != G15-04",
            "tier notin (test)",
            "gantry",
            "!retired",
        ])
        .unwrap();
        assert_eq!(selector.requirements.len(), 6);
        let node = labels(&[
            ("role", "gantry"),
            ("arch", "arm64"),
            ("section", "G15-03"),
            ("gantry", "G1"),
        ]);
        assert!(selector.matches(&node));
        let retired = labels(&[
            ("role", "gantry"),
            ("arch", "arm64"),
            ("gantry", "G1"),
            ("retired", "yes"),
        ]);
        assert!(!selector.matches(&retired));
    }

    #[test]
    fn selector_text_round_trips() {
        let texts = ["role in (gantry, station)", "arch = arm64", "!retired"];
        let selector = Selector::parse(&texts).unwrap();
        assert_eq!(selector.to_strings(), texts);
    }

    #[test]
    fn selector_rejects_malformed_requirements() {
        for bad in [
            "role in gantry",
            "= x",
            "Role = x",
            "a = b c",
            "",
            "x in (a,,b)",
        ] {
            assert!(bad.parse::<Requirement>().is_err(), "{bad:?} was accepted");
        }
    }
}
