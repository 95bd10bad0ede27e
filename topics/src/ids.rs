//! Validated identifiers: node ids, province codes and object names.
//!
//! A value of these types has passed validation, so code that receives one
//! never checks it again. Parsing rejects anything else with an [`IdError`] that
//! names the value and the rule it broke.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::{MAX_NAME_LEN, MAX_NODE_ID_LEN};

/// A rejected identifier, with the value and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("invalid node id {value:?}: {reason}; use 1 to 64 ASCII letters, digits, '-' or '_'")]
    NodeId { value: String, reason: &'static str },

    #[error(
        "invalid province code {value:?}: {reason}; use the two-digit national administrative code, e.g. 11 for Beijing or 44 for Guangdong"
    )]
    Province { value: String, reason: &'static str },

    #[error(
        "invalid name {value:?}: {reason}; use 1 to 63 lowercase ASCII letters, digits or '-', starting with a letter"
    )]
    Name { value: String, reason: &'static str },
}

/// A node id: the node's MQTT client id, its certificate's common name and the
/// `{node}` segment of its topics.
///
/// Only ASCII letters, digits, `-` and `_` are allowed, 1 to 64 characters,
/// because the id is substituted into broker ACL patterns and topic names,
/// where `/`, `+`, `#` or `%` would change their meaning.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(String);

impl NodeId {
    /// Validates `value` as a node id.
    pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        let reason = if value.is_empty() {
            Some("it is empty")
        } else if value.len() > MAX_NODE_ID_LEN {
            Some("it is longer than 64 characters")
        } else if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            Some("it contains a character other than an ASCII letter, digit, '-' or '_'")
        } else {
            None
        };

        match reason {
            Some(reason) => Err(IdError::NodeId { value, reason }),
            None => Ok(Self(value)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A province: the two-digit code of a provincial-level division in the
/// national administrative division codes (GB/T 2260), e.g. 11 Beijing,
/// 44 Guangdong, 65 Xinjiang.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Province(u8);

/// The provincial-level codes of GB/T 2260: 31 mainland provinces,
/// autonomous regions and municipalities, then Taiwan, Hong Kong and Macau.
const PROVINCE_CODES: [(u8, &str); 34] = [
    (11, "Beijing"),
    (12, "Tianjin"),
    (13, "Hebei"),
    (14, "Shanxi"),
    (15, "Inner Mongolia"),
    (21, "Liaoning"),
    (22, "Jilin"),
    (23, "Heilongjiang"),
    (31, "Shanghai"),
    (32, "Jiangsu"),
    (33, "Zhejiang"),
    (34, "Anhui"),
    (35, "Fujian"),
    (36, "Jiangxi"),
    (37, "Shandong"),
    (41, "Henan"),
    (42, "Hubei"),
    (43, "Hunan"),
    (44, "Guangdong"),
    (45, "Guangxi"),
    (46, "Hainan"),
    (50, "Chongqing"),
    (51, "Sichuan"),
    (52, "Guizhou"),
    (53, "Yunnan"),
    (54, "Tibet"),
    (61, "Shaanxi"),
    (62, "Gansu"),
    (63, "Qinghai"),
    (64, "Ningxia"),
    (65, "Xinjiang"),
    (71, "Taiwan"),
    (81, "Hong Kong"),
    (82, "Macau"),
];

impl Province {
    /// Validates a numeric province code.
    pub fn new(code: u8) -> Result<Self, IdError> {
        if PROVINCE_CODES.iter().any(|(known, _)| *known == code) {
            Ok(Self(code))
        } else {
            Err(IdError::Province {
                value: code.to_string(),
                reason: "it is not a provincial-level code of GB/T 2260",
            })
        }
    }

    pub fn code(self) -> u8 {
        self.0
    }

    /// Returns the English name of the province, for logs and reports.
    pub fn name(self) -> &'static str {
        PROVINCE_CODES
            .iter()
            .find(|(code, _)| *code == self.0)
            .map(|(_, name)| *name)
            .unwrap_or("unknown")
    }

    /// Returns all valid provinces, in code order.
    pub fn all() -> impl Iterator<Item = Province> {
        PROVINCE_CODES.iter().map(|(code, _)| Province(*code))
    }
}

impl FromStr for Province {
    type Err = IdError;

    /// Parses the two-digit form used in topics, e.g. `"44"`.
    fn from_str(value: &str) -> Result<Self, IdError> {
        if value.len() != 2 || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdError::Province {
                value: value.to_string(),
                reason: "it is not two decimal digits",
            });
        }
        let code: u8 = value.parse().map_err(|_| IdError::Province {
            value: value.to_string(),
            reason: "it is not a number",
        })?;
        Province::new(code)
    }
}

impl fmt::Display for Province {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}", self.0)
    }
}

/// A name of an app, deployment or rollout: a DNS label, because app names
/// become parts of container names and deployment names become topic segments.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectName(String);

/// App names follow the same rule as deployment and rollout names.
pub type AppName = ObjectName;

impl ObjectName {
    /// Validates `value` as an object name.
    pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        let reason = if value.is_empty() {
            Some("it is empty")
        } else if value.len() > MAX_NAME_LEN {
            Some("it is longer than 63 characters")
        } else if !value.as_bytes()[0].is_ascii_lowercase() {
            Some("it does not start with a lowercase letter")
        } else if value.ends_with('-') {
            Some("it ends with '-'")
        } else if !value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            Some("it contains a character other than a lowercase letter, digit or '-'")
        } else {
            None
        };

        match reason {
            Some(reason) => Err(IdError::Name { value, reason }),
            None => Ok(Self(value)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_id_impls {
    ($ty:ident) => {
        impl FromStr for $ty {
            type Err = IdError;

            fn from_str(value: &str) -> Result<Self, IdError> {
                $ty::new(value)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = String::deserialize(deserializer)?;
                $ty::new(value).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id_impls!(NodeId);
string_id_impls!(ObjectName);

impl Serialize for Province {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(self.0)
    }
}

impl<'de> Deserialize<'de> for Province {
    /// Accepts a number (`44`) or the two-digit string form (`"44"`), because
    /// operators write both in configuration files.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }

        match Raw::deserialize(deserializer)? {
            Raw::Number(code) => u8::try_from(code)
                .map_err(|_| IdError::Province {
                    value: code.to_string(),
                    reason: "it is not a provincial-level code of GB/T 2260",
                })
                .and_then(Province::new)
                .map_err(serde::de::Error::custom),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_accepts_letters_digits_dash_underscore() {
        assert!(NodeId::new("G0015-32_a").is_ok());
        assert!(NodeId::new("x".repeat(64)).is_ok());
    }

    #[test]
    fn node_id_rejects_topic_and_acl_characters() {
        for bad in ["", "a/b", "a+b", "a#", "%u", "a b", "京A", &"x".repeat(65)] {
            let err = NodeId::new(bad).unwrap_err();
            assert!(matches!(err, IdError::NodeId { .. }), "{bad:?} gave {err}");
        }
    }

    #[test]
    fn province_parses_two_digit_codes() {
        assert_eq!("44".parse::<Province>().unwrap().code(), 44);
        assert_eq!("11".parse::<Province>().unwrap().name(), "Beijing");
        assert_eq!(Province::new(44).unwrap().to_string(), "44");
    }

    #[test]
    fn province_rejects_unknown_and_malformed_codes() {
        for bad in ["", "4", "044", "10", "99", "4a", "+4"] {
            assert!(bad.parse::<Province>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn object_name_follows_dns_label_rules() {
        assert!(ObjectName::new("toll-app2").is_ok());
        for bad in ["", "Toll", "1app", "app-", "app_x", &"a".repeat(64)] {
            assert!(ObjectName::new(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
