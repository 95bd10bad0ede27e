//! The demo's child processes: each started with its own log file, stopped
//! with SIGTERM (or killed with SIGKILL when a step asks for a crash), and
//! all of them stopped when the supervisor is dropped, so an interrupted
//! demo leaves no broker or daemon behind.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// How long a process gets to exit after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(15);

/// A child process that failed to start, stop or stay up.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {name} ({program}): {source}")]
    Spawn {
        name: String,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create log file {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited with {status}; see its log {log}")]
    Exited {
        name: String,
        status: std::process::ExitStatus,
        log: PathBuf,
    },
    #[error("no process named {name} is running")]
    Unknown { name: String },
}

/// How to start one program again after it stopped.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
}

struct Running {
    launch: Launch,
    child: Child,
    log: PathBuf,
}

/// Owns every process the demo started, by name, in start order.
pub struct Supervisor {
    log_dir: PathBuf,
    running: Vec<(String, Running)>,
}

impl Supervisor {
    pub fn new(log_dir: impl Into<PathBuf>) -> Self {
        Supervisor {
            log_dir: log_dir.into(),
            running: Vec::new(),
        }
    }

    /// Starts `launch` under `name`; output goes to `{log_dir}/{name}.log`,
    /// appended, so a restarted process keeps its earlier lines.
    pub fn start(&mut self, name: &str, launch: Launch) -> Result<(), ProcessError> {
        let log = self.log_dir.join(format!("{name}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|source| ProcessError::Log {
                path: log.clone(),
                source,
            })?;
        let err = out.try_clone().map_err(|source| ProcessError::Log {
            path: log.clone(),
            source,
        })?;

        let child = Command::new(&launch.program)
            .args(&launch.args)
            .envs(launch.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                name: name.to_string(),
                program: launch.program.clone(),
                source,
            })?;
        tracing::info!(process = name, pid = child.id(), "started");

        self.running
            .push((name.to_string(), Running { launch, child, log }));
        Ok(())
    }

    /// Fails when any supervised process has exited on its own.
    pub fn check_alive(&mut self) -> Result<(), ProcessError> {
        for (name, running) in &mut self.running {
            if let Ok(Some(status)) = running.child.try_wait() {
                return Err(ProcessError::Exited {
                    name: name.clone(),
                    status,
                    log: running.log.clone(),
                });
            }
        }
        Ok(())
    }

    /// Kills `name` with SIGKILL, as a crash or power loss would.
    pub fn kill(&mut self, name: &str) -> Result<Launch, ProcessError> {
        let mut running = self.take(name)?;
        let _ = running.child.kill();
        let _ = running.child.wait();
        tracing::info!(process = name, "killed with SIGKILL");
        Ok(running.launch)
    }

    /// Stops every process in reverse start order, so daemons stop before
    /// the brokers they are connected to.
    pub fn stop_all(&mut self) {
        while let Some((name, mut running)) = self.running.pop() {
            stop_child(&name, &mut running.child);
        }
    }

    pub fn log_of(&self, name: &str) -> Option<&Path> {
        self.running
            .iter()
            .find(|(running_name, _)| running_name == name)
            .map(|(_, running)| running.log.as_path())
    }

    fn take(&mut self, name: &str) -> Result<Running, ProcessError> {
        let index = self
            .running
            .iter()
            .position(|(running_name, _)| running_name == name)
            .ok_or_else(|| ProcessError::Unknown {
                name: name.to_string(),
            })?;
        Ok(self.running.remove(index).1)
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn stop_child(name: &str, child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, Signal::TERM);
    }

    let deadline = Instant::now() + STOP_DEADLINE;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            tracing::info!(process = name, %status, "stopped");
            return;
        }
        sleep(Duration::from_millis(50));
    }
    tracing::warn!(
        process = name,
        "did not stop within {STOP_DEADLINE:?} of SIGTERM; killing it"
    );
    let _ = child.kill();
    let _ = child.wait();
}
