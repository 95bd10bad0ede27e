//! Command-line options shared by every scenario: where the broker programs
//! are, how simulated nodes behave, and where the report goes.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tollway_runtime::BackoffConfig;

use crate::fleet::RetryPolicy;
use crate::servers::Programs;

/// Options of every scenario.
#[derive(Debug, Clone, Args)]
pub struct CommonOptions {
    /// File the JSON report is written to.
    #[arg(long, value_name = "FILE")]
    pub report: PathBuf,

    /// The `tollway-broker` program. Default: next to this program.
    #[arg(long, value_name = "PATH")]
    pub broker_bin: Option<PathBuf>,

    /// The `mosquitto` program.
    #[arg(long, value_name = "PATH", default_value = "mosquitto")]
    pub mosquitto_bin: PathBuf,

    /// The `mosquitto_passwd` program, which writes the password file of
    /// every Mosquitto run (the centre services log in with a password).
    #[arg(long, value_name = "PATH", default_value = "mosquitto_passwd")]
    pub mosquitto_passwd_bin: PathBuf,

    /// MQTT keep-alive of each simulated node, in seconds (1 to 65535).
    /// The default is the edge daemon's `link.keep_alive_s`.
    #[arg(long, value_name = "SECONDS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=65535))]
    pub keep_alive_s: u64,

    /// Time a node allows for TCP, TLS and CONNACK together, in seconds.
    /// The default matches the broker's handshake timeout, so a node waiting
    /// in the broker's pacing queue is not counted as failed.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub connect_timeout_s: u64,

    /// Smallest reconnect delay of the nodes' back-off, in milliseconds
    /// (the edge daemon's default is 1000).
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub backoff_base_ms: u64,

    /// Largest reconnect delay of the nodes' back-off, in milliseconds
    /// (the edge daemon's default is 120000).
    #[arg(long, value_name = "MS", default_value_t = 120_000)]
    pub backoff_cap_ms: u64,

    /// Number of tokio tasks the simulated nodes are spread over.
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub tasks: u64,
}

/// Options that are wrong together.
#[derive(Debug, thiserror::Error)]
#[error("invalid options: {0}")]
pub struct OptionsError(pub String);

impl CommonOptions {
    /// Checks what clap cannot check value by value.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if let Some(problem) = self.backoff().problem() {
            return Err(OptionsError(format!(
                "--backoff-base-ms {} with --backoff-cap-ms {}: {problem}",
                self.backoff_base_ms, self.backoff_cap_ms
            )));
        }
        Ok(())
    }

    pub fn backoff(&self) -> BackoffConfig {
        BackoffConfig {
            base_ms: self.backoff_base_ms,
            cap_ms: self.backoff_cap_ms,
        }
    }

    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy::Jittered(self.backoff())
    }

    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_s)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_s)
    }

    /// Resolves the broker programs; `tollway-broker` defaults to the
    /// directory of the running program.
    pub fn programs(&self) -> Programs {
        let tollway_broker = self.broker_bin.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join("tollway-broker")))
                .unwrap_or_else(|| PathBuf::from("tollway-broker"))
        });
        Programs {
            tollway_broker,
            mosquitto: self.mosquitto_bin.clone(),
            mosquitto_passwd: self.mosquitto_passwd_bin.clone(),
        }
    }
}
