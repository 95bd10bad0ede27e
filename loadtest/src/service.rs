//! A Tollway program that a scenario starts next to the broker under test
//! (a national broker, a bridge, a centre process): its configuration file
//! and log in a run directory, a readiness check on a loopback port, a
//! stop with SIGTERM, and a kill when dropped so that no process outlives
//! the scenario.
//!
//! Also a minimal HTTP GET for the loopback JSON APIs of those programs.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Time a program has to listen after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a program has to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Time an HTTP request to a loopback API may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest HTTP response read, in bytes.
const MAX_HTTP_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// A program that could not be configured, started or asked.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "cannot run {program}: {source}; build the workspace (`cargo build --release --workspace`) or name the program with the scenario's --broker-bin or --center-bin (see --help)"
    )]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{name} exited with {status} before listening on {addr}; see its log {log}")]
    ExitedEarly {
        name: String,
        status: ExitStatus,
        addr: SocketAddr,
        log: PathBuf,
    },

    #[error("{name} did not listen on {addr} within {timeout:?}; see its log {log}")]
    NotReady {
        name: String,
        addr: SocketAddr,
        timeout: Duration,
        log: PathBuf,
    },

    #[error("{name} did not report ready within {timeout:?} ({waiting_for}); see its log {log}")]
    NotReported {
        name: String,
        waiting_for: &'static str,
        timeout: Duration,
        log: PathBuf,
    },

    #[error("GET http://{addr}{path} failed: {reason}")]
    Http {
        addr: SocketAddr,
        path: String,
        reason: String,
    },
}

/// A running program, killed on drop.
pub struct Service {
    name: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Service {
    /// Writes `config` to `dir/{name}.toml`, starts `program --config FILE
    /// [args]` with its output in `dir/{name}.log`, and waits until `ready`
    /// accepts TCP connections.
    pub fn start(
        name: &str,
        program: &Path,
        dir: &Path,
        config: &str,
        args: &[&str],
        ready: SocketAddr,
    ) -> Result<Service, ServiceError> {
        let config_path = write(dir, &format!("{name}.toml"), config)?;
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|source| ServiceError::Write {
            path: log.clone(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| ServiceError::Write {
            path: log.clone(),
            source,
        })?;

        let child = Command::new(program)
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| ServiceError::Spawn {
                program: program.to_path_buf(),
                source,
            })?;
        tracing::info!(service = name, pid = child.id(), %ready, "service started");

        let mut service = Service {
            name: name.to_string(),
            log,
            child: Some(child),
        };
        service.wait_ready(ready)?;
        Ok(service)
    }

    /// Process id, or `None` once stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Returns the exit status once the program has exited by itself.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Path of the program's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Stops the program with SIGTERM (SIGKILL after 15 s) and returns how
    /// it exited, or `None` when it was not running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) with a pid this process spawned and has not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };

        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                tracing::info!(service = %self.name, %status, "service stopped");
                return Some(status);
            }
            if Instant::now() >= deadline {
                tracing::warn!(service = %self.name, "service ignored SIGTERM for 15 s; killing it");
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_ready(&mut self, addr: SocketAddr) -> Result<(), ServiceError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(ServiceError::ExitedEarly {
                    name: self.name.clone(),
                    status,
                    addr,
                    log: self.log.clone(),
                });
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ServiceError::NotReady {
                    name: self.name.clone(),
                    addr,
                    timeout: READY_TIMEOUT,
                    log: self.log.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, contents: &str) -> Result<PathBuf, ServiceError> {
    let path = dir.join(name);
    std::fs::write(&path, contents).map_err(|source| ServiceError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Sends `GET path` to a loopback API and parses a 200 response's JSON body.
/// Blocking; call it from `spawn_blocking` inside async code.
pub fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value, ServiceError> {
    let fail = |reason: String| ServiceError::Http {
        addr,
        path: path.to_string(),
        reason,
    };

    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .map_err(|err| fail(format!("connect: {err}")))?;
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(HTTP_TIMEOUT)))
        .map_err(|err| fail(format!("socket: {err}")))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|err| fail(format!("send: {err}")))?;

    let mut response = Vec::new();
    stream
        .take(MAX_HTTP_RESPONSE_BYTES)
        .read_to_end(&mut response)
        .map_err(|err| fail(format!("read: {err}")))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail("no end of headers in the response".to_string()))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(fail(format!("status {status}: {body}")));
    }
    if head
        .lines()
        .any(|line| line.eq_ignore_ascii_case("transfer-encoding: chunked"))
    {
        return Err(fail("chunked responses are not read".to_string()));
    }
    serde_json::from_str(body).map_err(|err| fail(format!("body is not JSON: {err}")))
}
