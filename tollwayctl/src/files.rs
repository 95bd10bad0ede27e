//! Writing secrets to disk: files created with mode 0600 from the start
//! (never widened and then narrowed), parent directories with 0700.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A file that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path} already exists; pass --force to replace it")]
    Exists { path: PathBuf },

    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes `contents` to `path` with mode 0600. Without `force`, an existing
/// file is an error and is left unchanged.
pub fn write_private(path: &Path, contents: &[u8], force: bool) -> Result<(), FileError> {
    let write_error = |source| FileError::Write {
        path: path.to_path_buf(),
        source,
    };

    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(write_error)?;
    }

    if force {
        // Remove first so that the new file is created with 0600 even if
        // the old one had wider permissions.
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(write_error(err)),
        }
    }

    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|err| {
            if err.kind() == std::io::ErrorKind::AlreadyExists {
                FileError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                write_error(err)
            }
        })?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}
