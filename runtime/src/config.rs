//! Configuration loading: one TOML file per program, parsed into the
//! program's own serde types.
//!
//! Config types use `#[serde(deny_unknown_fields)]` and defaults from
//! functions, so a misspelt key is an error rather than silently ignored.
//! Errors name the file, the key path and what was expected. Checks that
//! span several keys go through [`Problems`], so one run reports every bad
//! key at once.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}; check the --config path")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A TOML syntax error, an unknown key, or a key with a value of the wrong
    /// type. The message from `toml` names the key, the line and what was expected.
    #[error(
        "invalid config file {path}: {message}\nfix the key or value named above; the sample configurations under deploy/examples show the keys and their types"
    )]
    Parse { path: PathBuf, message: String },

    #[error("invalid config file {path}:\n{problems}")]
    Invalid { path: PathBuf, problems: Problems },
}

/// Loads `path` into `T`, or `T`'s defaults when no path is given.
pub fn load_config<T: DeserializeOwned>(path: Option<&Path>) -> Result<T, ConfigError> {
    let (text, path) = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            (text, path.to_path_buf())
        }
        None => (String::new(), PathBuf::from("(defaults)")),
    };
    parse_config(&text, &path)
}

/// Parses TOML text; `path` only labels errors.
pub fn parse_config<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|err| ConfigError::Parse {
        path: path.to_path_buf(),
        message: err.to_string(),
    })
}

/// The problems found by a program's cross-key validation, reported together.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    /// Records that `key` has the bad `value`, and what is expected instead.
    pub fn push(&mut self, key: &str, value: impl fmt::Display, expected: &str) {
        self.0.push(format!("  {key} = {value}: {expected}"));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Turns the collected problems into an error for `path`, if there are any.
    pub fn into_result(self, path: Option<&Path>) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            return Ok(());
        }
        Err(ConfigError::Invalid {
            path: path
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("(defaults)")),
            problems: self,
        })
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default = "default_port")]
        port: u16,
    }

    fn default_port() -> u16 {
        1883
    }

    #[test]
    fn missing_file_takes_defaults() {
        let sample: Sample = load_config(None).unwrap();
        assert_eq!(sample.port, 1883);
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let err = parse_config::<Sample>("prot = 1", Path::new("edge.toml")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("edge.toml"), "{text}");
        assert!(text.contains("prot"), "{text}");
    }

    #[test]
    fn wrong_type_names_key() {
        let err = parse_config::<Sample>("port = \"x\"", Path::new("edge.toml")).unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn problems_are_reported_together() {
        let mut problems = Problems::default();
        problems.push("outbox.max_bytes", 0, "must be at least 1 MiB");
        problems.push("mqtt.endpoints", "[]", "list at least one broker");
        let err = problems
            .into_result(Some(Path::new("edge.toml")))
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("outbox.max_bytes"), "{text}");
        assert!(text.contains("mqtt.endpoints"), "{text}");
    }
}
