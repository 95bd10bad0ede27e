//! `tollway-center` processes started by a scenario: record ingest with a
//! RocksDB store, or the provincial controller, each in its own temporary
//! directory and logged in to the broker's password listener. Also a small
//! HTTP GET for their loopback JSON APIs.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::servers::{PLAIN_PASSWORD, PLAIN_USER};

/// Time a centre process has to serve its API and get its subscriptions.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a centre process has to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Time one API request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest API response read, in bytes.
const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

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

/// A centre process that could not be started, queried or stopped.
#[derive(Debug, thiserror::Error)]
pub enum CenterError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot run {program}: {source}; build the workspace or pass --center-bin")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("tollway-center {name} exited with {status} before it was ready; see its log {log}")]
    ExitedEarly {
        name: String,
        status: ExitStatus,
        log: PathBuf,
    },

    #[error("tollway-center {name} was not ready within {timeout:?}; see its log {log}")]
    NotReady {
        name: String,
        timeout: Duration,
        log: PathBuf,
    },

    #[error("GET http://{addr}{path} failed: {problem}")]
    Http {
        addr: SocketAddr,
        path: String,
        problem: String,
    },
}

/// A running `tollway-center`, killed on drop.
pub struct CenterProcess {
    /// Name used in client ids and logs, e.g. `ingest-1`.
    pub name: String,
    pub service: Service,
    /// Loopback address of its query or controller API.
    pub api_addr: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
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
    ) -> Result<Self, CenterError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tollway-loadtest-{name}-"))
            .tempdir()
            .map_err(|source| CenterError::Write {
                path: std::env::temp_dir(),
                source,
            })?;
        let api_port = tollway_testkit::port::reserve();
        let config = write_config(dir.path(), service, name, service_addr, api_port)?;
        let log = dir.path().join("center.log");
        let log_file = File::create(&log).map_err(|source| CenterError::Write {
            path: log.clone(),
            source,
        })?;
        let log_err = log_file.try_clone().map_err(|source| CenterError::Write {
            path: log.clone(),
            source,
        })?;
        let program = options.program();
        let child = Command::new(&program)
            .arg("--config")
            .arg(&config)
            .arg("--log")
            .arg(&options.center_log)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|source| CenterError::Spawn { program, source })?;
        tracing::info!(name, pid = child.id(), api_port, "tollway-center started");

        let mut center = CenterProcess {
            name: name.to_string(),
            service,
            api_addr: SocketAddr::from(([127, 0, 0, 1], api_port)),
            log,
            child: Some(child),
            _dir: dir,
        };
        center.wait_ready().await?;
        Ok(center)
    }

    /// Process id, or `None` once stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// GETs `path` from the process's API and parses the JSON body.
    pub async fn get(&self, path: &str) -> Result<Value, CenterError> {
        get_json(self.api_addr, path).await
    }

    /// Reads `/v1/stats` of an ingest process.
    pub async fn stats(&self) -> Result<Value, CenterError> {
        self.get("/v1/stats").await
    }

    /// Stops the process with SIGTERM (SIGKILL after 15 s).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = child.id();
        // SAFETY: kill(2) with a pid this process spawned and has not reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                tracing::info!(name = %self.name, pid, %status, "tollway-center stopped");
                return Some(status);
            }
            if Instant::now() >= deadline {
                tracing::warn!(name = %self.name, pid, "tollway-center ignored SIGTERM; killing it");
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    async fn wait_ready(&mut self) -> Result<(), CenterError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(CenterError::ExitedEarly {
                    name: self.name.clone(),
                    status,
                    log: self.log.clone(),
                });
            }
            if self.is_ready().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CenterError::NotReady {
                    name: self.name.clone(),
                    timeout: READY_TIMEOUT,
                    log: self.log.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Checks readiness. The controller is ready when its API responds. The
    /// ingest is ready when the broker granted its three subscriptions
    /// (records, summary, command results), because the broker delivers a
    /// batch published before that to no subscriber.
    async fn is_ready(&self) -> bool {
        match self.service {
            Service::Controller => self.get("/v1/nodes").await.is_ok(),
            Service::Ingest => self
                .stats()
                .await
                .ok()
                .and_then(|stats| stats["subscriptions_granted"].as_u64())
                .is_some_and(|granted| granted >= 3),
        }
    }
}

impl Drop for CenterProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn write_config(
    dir: &Path,
    service: Service,
    name: &str,
    broker: SocketAddr,
    api_port: u16,
) -> Result<PathBuf, CenterError> {
    let password = write(dir, "service.password", &format!("{PLAIN_PASSWORD}\n"))?;
    let d = dir.display();
    let password = password.display();
    let port = broker.port();
    let text = match service {
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
bind = "127.0.0.1:{api_port}"
"#
        ),
        Service::Controller => format!(
            r#"# Written by tollway-loadtest.
[controller]
province = 44
data_dir = "{d}/controller"
api_bind = "127.0.0.1:{api_port}"

[controller.broker]
port = {port}
client_id = "loadtest-{name}"
username = "{PLAIN_USER}"
password_file = "{password}"
backoff = {{ base_ms = 100, cap_ms = 2000 }}
"#
        ),
    };
    write(dir, "center.toml", &text)
}

fn write(dir: &Path, name: &str, contents: &str) -> Result<PathBuf, CenterError> {
    let path = dir.join(name);
    std::fs::write(&path, contents).map_err(|source| CenterError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Sends `GET path` over HTTP/1.1 to a loopback API and parses the JSON
/// body of a 200 response.
pub async fn get_json(addr: SocketAddr, path: &str) -> Result<Value, CenterError> {
    let failed = |problem: String| CenterError::Http {
        addr,
        path: path.to_string(),
        problem,
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|err| failed(err.to_string()))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|err| failed(err.to_string()))?;
        let mut response = Vec::new();
        stream
            .take(MAX_RESPONSE_BYTES)
            .read_to_end(&mut response)
            .await
            .map_err(|err| failed(err.to_string()))?;
        Ok(response)
    };
    let response = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| failed(format!("no response within {HTTP_TIMEOUT:?}")))??;

    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| failed("response has no header end".to_string()))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(failed(format!("status {status}: {body}")));
    }
    serde_json::from_str(body).map_err(|err| failed(format!("invalid JSON body: {err}")))
}
