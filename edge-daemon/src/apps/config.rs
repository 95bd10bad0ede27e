//! The `[apps]` section of the daemon's configuration: where Podman's API
//! listens and the timings of reconciliation, stops and restarts.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tollway_runtime::BackoffConfig;

/// Settings of the app manager.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppsConfig {
    /// Unix socket of Podman's REST API (`podman system service`). Default
    /// `/run/podman/podman.sock`, the root service's socket.
    #[serde(default = "default_podman_socket")]
    pub podman_socket: PathBuf,

    /// Seconds between reconcile passes when nothing changed. Each pass
    /// repairs drift, such as a container removed by hand, and restarts
    /// crashed apps whose back-off has passed. Default 10.
    #[serde(default = "default_reconcile_interval_s")]
    pub reconcile_interval_s: u64,

    /// Seconds an app gets to exit after SIGTERM before Podman kills it.
    /// It bounds the interruption of an upgrade. Default 2.
    #[serde(default = "default_stop_timeout_s")]
    pub stop_timeout_s: u32,

    /// Delay before a crashed app is started again, rising with each crash
    /// of the same spec. Default 1 s rising to 5 min.
    #[serde(default = "default_restart_backoff")]
    pub restart_backoff: BackoffConfig,

    /// Delay before a failed image pull is tried again. Default 5 s rising
    /// to 10 min.
    #[serde(default = "default_pull_backoff")]
    pub pull_backoff: BackoffConfig,

    /// Network of every app container. `host` (default) shares the node's
    /// network, so apps reach the intake on 127.0.0.1 and ports need no
    /// mapping. An app's `ports` are then ignored. `bridge` gives each app
    /// its own network namespace and publishes its `ports`.
    #[serde(default)]
    pub network: NetworkMode,

    /// Time one call to Podman's API may take, in seconds, pulls excluded.
    /// A call that takes longer fails and the pass is retried. Default 30.
    #[serde(default = "default_podman_timeout_s")]
    pub podman_timeout_s: u64,
}

/// Network namespace of app containers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Host,
    Bridge,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Host => "host",
            NetworkMode::Bridge => "bridge",
        }
    }
}

impl Default for AppsConfig {
    fn default() -> Self {
        AppsConfig {
            podman_socket: default_podman_socket(),
            reconcile_interval_s: default_reconcile_interval_s(),
            stop_timeout_s: default_stop_timeout_s(),
            restart_backoff: default_restart_backoff(),
            pull_backoff: default_pull_backoff(),
            network: NetworkMode::default(),
            podman_timeout_s: default_podman_timeout_s(),
        }
    }
}

impl AppsConfig {
    /// Lists every invalid setting, each naming the key and the fix.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.podman_socket.is_absolute() {
            problems.push(format!(
                "podman_socket = {:?} must be an absolute path",
                self.podman_socket
            ));
        }
        if self.reconcile_interval_s == 0 {
            problems.push("reconcile_interval_s must be at least 1".to_string());
        }
        if self.stop_timeout_s > 300 {
            problems.push(format!(
                "stop_timeout_s = {} is over 300; an upgrade would wait that long",
                self.stop_timeout_s
            ));
        }
        if self.podman_timeout_s == 0 {
            problems.push("podman_timeout_s must be at least 1".to_string());
        }
        for (key, backoff) in [
            ("restart_backoff", &self.restart_backoff),
            ("pull_backoff", &self.pull_backoff),
        ] {
            if let Some(problem) = backoff.problem() {
                problems.push(format!("{key}: {problem}"));
            }
        }
        problems
    }

    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_secs(self.reconcile_interval_s)
    }

    pub fn podman_timeout(&self) -> Duration {
        Duration::from_secs(self.podman_timeout_s)
    }
}

fn default_podman_socket() -> PathBuf {
    PathBuf::from("/run/podman/podman.sock")
}

fn default_reconcile_interval_s() -> u64 {
    10
}

fn default_stop_timeout_s() -> u32 {
    2
}

fn default_restart_backoff() -> BackoffConfig {
    BackoffConfig::new(Duration::from_secs(1), Duration::from_secs(300))
}

fn default_pull_backoff() -> BackoffConfig {
    BackoffConfig::new(Duration::from_secs(5), Duration::from_secs(600))
}

fn default_podman_timeout_s() -> u64 {
    30
}
