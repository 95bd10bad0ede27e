//! `tollway-center` processes started by a scenario: record ingest with a
//! RocksDB store, or the provincial controller, each in its own temporary
//! directory and logged in to the broker's password listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;

use crate::servers::{PLAIN_PASSWORD, PLAIN_USER};
use crate::service::{self, Service as Process, ServiceError};

/// Time an ingest process has to get its subscriptions once its API serves.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of scenarios that start centre services.
#[derive(Debug, Clone, Args)]
pub struct CenterOptions {
    /// The `tollway-center` program. Default: next to this program.
    #[arg(long, value_name = "PATH")]
    pub center_bin: Option<PathBuf>,

    /// Log filter of the `tollway-center` processes, in `tracing`
    /// env-filter syntax. Their logs go to a file in their temporary
    /// directory, named in errors.
    #[arg(long, value_name = "FILTER", default_value = "warn")]
    pub center_log: String,
}

impl CenterOptions {
    /// Resolves the program; it defaults to the directory of the running
    /// program.
    pub fn program(&self) -> PathBuf {
        self.center_bin.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join("tollway-center")))
                .unwrap_or_else(|| PathBuf::from("tollway-center"))
        })
    }
}

/// The service a centre process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `[ingest]` and `[query]` over a store, in shared group `ingest`.
    Ingest,
    /// `[controller]` with its API.
    Controller,
}

/// A running `tollway-center`, killed on drop.
pub struct CenterProcess {
    /// Name used in client ids and logs, e.g. `ingest-1`.
    pub name: String,
    pub service: Service,
    /// Loopback address of its query or controller API.
    pub api_addr: SocketAddr,
    process: Process,
    _dir: tempfile::TempDir,
}

impl CenterProcess {
    /// Writes the configuration of `service` for the broker's password
    /// listener at `service_addr` and starts the program. Returns once the
    /// API responds and, for the ingest, its subscriptions are granted.
    pub async fn start(
        options: &CenterOptions,
        service: Service,
        name: &str,
        service_addr: SocketAddr,
    ) -> Result<Self, ServiceError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tollway-loadtest-{name}-"))
            .tempdir()
            .map_err(|source| ServiceError::Write {
                path: std::env::temp_dir(),
                source,
            })?;
        let api_addr = SocketAddr::from(([127, 0, 0, 1], tollway_testkit::port::reserve()));
        let password = service::write(
            dir.path(),
            "service.password",
            &format!("{PLAIN_PASSWORD}\n"),
        )?;
        let config = config_text(service, name, service_addr, api_addr, &password, dir.path());

        let program = options.program();
        let log_filter = options.center_log.clone();
        let process = tokio::task::block_in_place(|| {
            Process::start(
                name,
                &program,
                dir.path(),
                &config,
                &["--log", &log_filter],
                api_addr,
            )
        })?;

        let mut center = CenterProcess {
            name: name.to_string(),
            service,
            api_addr,
            process,
            _dir: dir,
        };
        if service == Service::Ingest {
            center.wait_subscribed().await?;
        }
        Ok(center)
    }

    /// Process id, or `None` once stopped.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// GETs `path` from the process's API and parses the JSON body.
    pub async fn get(&self, path: &str) -> Result<Value, ServiceError> {
        let addr = self.api_addr;
        let owned = path.to_string();
        tokio::task::spawn_blocking(move || service::get_json(addr, &owned))
            .await
            .unwrap_or_else(|err| {
                Err(ServiceError::Http {
                    addr,
                    path: path.to_string(),
                    reason: format!("the request task failed: {err}"),
                })
            })
    }

    /// Reads `/v1/stats` of an ingest process.
    pub async fn stats(&self) -> Result<Value, ServiceError> {
        self.get("/v1/stats").await
    }

    /// Stops the process with SIGTERM (SIGKILL after 15 s).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.process.stop()
    }

    /// Waits until the broker granted the ingest's three subscriptions
    /// (records, summary, command results), because the broker delivers a
    /// batch published before that to no subscriber.
    async fn wait_subscribed(&mut self) -> Result<(), ServiceError> {
        let deadline = Instant::now() + SUBSCRIBE_TIMEOUT;
        loop {
            if let Some(status) = self.process.exit_status() {
                return Err(ServiceError::ExitedEarly {
                    name: self.name.clone(),
                    status,
                    addr: self.api_addr,
                    log: self.process.log().to_path_buf(),
                });
            }

            let granted = self
                .stats()
                .await
                .ok()
                .and_then(|stats| stats["subscriptions_granted"].as_u64());
            if granted.is_some_and(|granted| granted >= 3) {
                return Ok(());
            }

            if Instant::now() >= deadline {
                return Err(ServiceError::NotReported {
                    name: self.name.clone(),
                    waiting_for: "three subscriptions granted",
                    timeout: SUBSCRIBE_TIMEOUT,
                    log: self.process.log().to_path_buf(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Returns the configuration of `service`, logged in to the broker's
/// password listener at `broker`.
fn config_text(
    service: Service,
    name: &str,
    broker: SocketAddr,
    api_addr: SocketAddr,
    password: &std::path::Path,
    dir: &std::path::Path,
) -> String {
    let d = dir.display();
    let password = password.display();
    let port = broker.port();
    match service {
        Service::Ingest => format!(
            r#"# Written by tollway-loadtest.
[broker]
port = {port}
username = "{PLAIN_USER}"
password_file = "{password}"
client_id = "loadtest-{name}"
backoff = {{ base_ms = 100, cap_ms = 2000 }}

[store]
path = "{d}/store"

[ingest]
province = 44
group = "ingest"

[query]
bind = "{api_addr}"
"#
        ),
        Service::Controller => format!(
            r#"# Written by tollway-loadtest.
[controller]
province = 44
data_dir = "{d}/controller"
api_bind = "{api_addr}"

[controller.broker]
port = {port}
client_id = "loadtest-{name}"
username = "{PLAIN_USER}"
password_file = "{password}"
backoff = {{ base_ms = 100, cap_ms = 2000 }}
"#
        ),
    }
}
