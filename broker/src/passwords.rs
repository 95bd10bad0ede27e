//! Password files: one `username:hash` line per user, where the hash is an
//! Argon2 PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`), so each
//! password has its own salt and cost parameters.
//!
//! Blank lines and lines starting with `#` are ignored. The file is read
//! once at start-up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::{Argon2, PasswordHasher};

/// A password file that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("cannot read password file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "invalid password file {path}: {}; write each line as `username:HASH`, \
         with HASH from `tollway-broker --hash-password`",
        .problems.join("; ")
    )]
    Invalid {
        path: PathBuf,
        /// One entry per bad line, each starting with `line N:`.
        problems: Vec<String>,
    },

    #[error("password file {path} lists no users; add `username:hash` lines")]
    Empty { path: PathBuf },
}

/// The users of one listener and their password hashes.
#[derive(Debug, Clone)]
pub struct PasswordFile {
    users: HashMap<String, String>,
}

impl PasswordFile {
    /// Reads and checks `path`: every line must hold a username and a
    /// parseable PHC hash, and no username may appear twice.
    pub fn load(path: &Path) -> Result<Self, PasswordFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswordFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut users = HashMap::new();
        let mut problems = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let raw = raw.trim();
            if raw.is_empty() || raw.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = raw.split_once(':') else {
                problems.push(format!("line {line}: expected `username:hash`"));
                continue;
            };
            if user.is_empty() {
                problems.push(format!("line {line}: the username is empty"));
            } else if let Err(err) = PasswordHash::new(hash) {
                problems.push(format!(
                    "line {line}: the hash of user {user:?} is not a PHC string: {err}"
                ));
            } else if users.insert(user.to_string(), hash.to_string()).is_some() {
                problems.push(format!("line {line}: user {user:?} is listed twice"));
            }
        }

        if !problems.is_empty() {
            return Err(PasswordFileError::Invalid {
                path: path.to_path_buf(),
                problems,
            });
        }
        if users.is_empty() {
            return Err(PasswordFileError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(PasswordFile { users })
    }

    /// Checks `password` for `user`. An unknown user and a wrong password
    /// both return false. Argon2 is slow by design (tens of milliseconds),
    /// so call this from a blocking thread.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        match PasswordHash::new(hash) {
            Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
            Err(_) => false,
        }
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }
}

/// Hashes `password` with Argon2id, default parameters and a random salt,
/// into a PHC string for a password file line.
pub fn hash_password(password: &[u8]) -> Result<String, argon2::password_hash::Error> {
    let salt =
        argon2::password_hash::SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Ok(Argon2::default()
        .hash_password(password, &salt)?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn right_password_verifies_and_wrong_does_not() {
        let hash = hash_password(b"s3cret").unwrap();
        let file = write(&format!("# services\ningest:{hash}\n"));
        let passwords = PasswordFile::load(file.path()).unwrap();
        assert!(passwords.verify("ingest", b"s3cret"));
        assert!(
            !passwords.verify("ingest", b"s3cret "),
            "a wrong password verified"
        );
        assert!(
            !passwords.verify("controller", b"s3cret"),
            "an unknown user verified"
        );
    }

    #[test]
    fn same_password_gets_different_salts() {
        assert_ne!(hash_password(b"x").unwrap(), hash_password(b"x").unwrap());
    }

    #[test]
    fn bad_line_names_line_and_user() {
        let file = write("ingest:plaintext\n");
        let text = PasswordFile::load(file.path()).unwrap_err().to_string();
        assert!(text.contains("line 1"), "{text}");
        assert!(text.contains("\"ingest\""), "{text}");
    }

    #[test]
    fn every_bad_line_is_reported() {
        let hash = hash_password(b"s3cret").unwrap();
        let file = write(&format!("nocolon\ningest:{hash}\n:{hash}\ningest:{hash}\n"));
        let text = PasswordFile::load(file.path()).unwrap_err().to_string();
        for expected in [
            "line 1: expected `username:hash`",
            "line 3: the username is empty",
            "line 4: user \"ingest\" is listed twice",
            "tollway-broker --hash-password",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from: {text}");
        }
    }

    #[test]
    fn empty_file_is_rejected() {
        let file = write("# nobody\n");
        assert!(matches!(
            PasswordFile::load(file.path()),
            Err(PasswordFileError::Empty { .. })
        ));
    }
}
