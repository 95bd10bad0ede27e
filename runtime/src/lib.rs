//! Runtime pieces shared by every Tollway program: command-line basics,
//! configuration loading, logging, shutdown, back-off and the open-file
//! limit.
//!
//! Each program's `main` is a few lines on top of these, so that every
//! binary reports configuration errors, logs and stops the same way.

pub mod backoff;
pub mod cli;
pub mod config;
pub mod logging;
pub mod open_files;
pub mod shutdown;

pub use backoff::{Backoff, BackoffConfig};
pub use cli::CommonArgs;
pub use config::{ConfigError, load_config};
pub use logging::{LogFormat, init_logging};
pub use open_files::raise_open_file_limit;
pub use shutdown::{CancellationToken, Shutdown};
