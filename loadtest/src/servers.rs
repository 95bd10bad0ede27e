//! Brokers under test, started by a scenario on loopback ports: Tollway's
//! own `tollway-broker` (province profile) and Mosquitto in an equivalent
//! configuration, each with TLS client certificates or plain TCP.
//!
//! Equivalence of the two brokers' set-ups:
//! - TLS: Tollway's node listener (client certificate required, CN becomes
//!   the username, ACL confines a node to its own topics) against
//!   Mosquitto's `require_certificate true`, `use_identity_as_username true`
//!   and an ACL pattern on `%u`.
//! - Plain TCP: the province profile has no plain-TCP node listener, so
//!   plain runs use Tollway's service listener (username and password, a
//!   valid login bypasses the ACL). Mosquitto's counterpart is its password
//!   listener, whose ACL lets that user use every province topic. Every simulated
//!   node logs in as the same user. The password hash uses cheap Argon2
//!   parameters, so the benchmark measures connection handling, not
//!   password hashing.
//! - Centre services (ingest, controller) log in to the same password
//!   listener as that user, on both transports.
//!
//! Both brokers keep their default connection limits; Tollway's pacing
//! (500 new connections per second after a burst of 200) is part of what
//! is measured.

use std::fmt;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use tollway_testkit::Ports;

use crate::pki::ServerFiles;

/// Username every simulated node sends on plain-TCP runs.
pub const PLAIN_USER: &str = "loadtest";
/// Password every simulated node sends on plain-TCP runs; loopback only.
pub const PLAIN_PASSWORD: &str = "loadtest-only-password";

/// Time a broker has to listen after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Time a broker has to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The broker program under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    Tollway,
    Mosquitto,
}

/// The transport between simulated nodes and the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Mutual TLS with one client certificate per node, as in production.
    Tls,
    /// Plain TCP with a username and password.
    Tcp,
}

impl fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BrokerKind::Tollway => "tollway",
            BrokerKind::Mosquitto => "mosquitto",
        })
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tls => "tls",
            Transport::Tcp => "tcp",
        })
    }
}

/// Paths of the broker programs.
#[derive(Debug, Clone)]
pub struct Programs {
    pub tollway_broker: PathBuf,
    pub mosquitto: PathBuf,
    pub mosquitto_passwd: PathBuf,
}

/// A broker that could not be configured, started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "cannot run {program}: {source}; build or install it, or name it with --broker-bin, --mosquitto-bin or --mosquitto-passwd-bin"
    )]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{program} failed with {status}: {output}")]
    Failed {
        program: PathBuf,
        status: ExitStatus,
        output: String,
    },

    #[error("{broker} exited with {status} before listening on {addr}; see its log {log}")]
    ExitedEarly {
        broker: BrokerKind,
        status: ExitStatus,
        addr: SocketAddr,
        log: PathBuf,
    },

    #[error("{broker} did not listen on {addr} within {timeout:?}; see its log {log}")]
    NotReady {
        broker: BrokerKind,
        addr: SocketAddr,
        timeout: Duration,
        log: PathBuf,
    },

    #[error("cannot signal {broker} (pid {pid}): {source}")]
    Signal {
        broker: BrokerKind,
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

/// A broker process with its files, killed on drop.
pub struct BrokerUnderTest {
    pub kind: BrokerKind,
    pub transport: Transport,
    /// Address simulated nodes connect to.
    pub node_addr: SocketAddr,
    /// The password listener that centre services log in to as
    /// [`PLAIN_USER`]; plain-TCP runs also connect their nodes there.
    pub service_addr: SocketAddr,
    program: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Keeps the configuration and data until the broker is dropped.
    /// The run directory; kept on disk when the broker fails to start,
    /// because the error names the log in it.
    dir: Option<tempfile::TempDir>,
}

impl BrokerUnderTest {
    /// Writes the configuration of `kind` with `transport` and starts it.
    pub fn start(
        kind: BrokerKind,
        transport: Transport,
        pki: &ServerFiles,
        programs: &Programs,
    ) -> Result<Self, ServerError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tollway-loadtest-{kind}-{transport}-"))
            .tempdir()
            .map_err(|source| ServerError::Write {
                path: std::env::temp_dir(),
                source,
            })?;
        let ports = Ports::pick();
        let (program, config, node_port) = match kind {
            BrokerKind::Tollway => (
                programs.tollway_broker.clone(),
                write_tollway_config(dir.path(), transport, pki, ports)?,
                match transport {
                    Transport::Tls => ports.node,
                    Transport::Tcp => ports.service,
                },
            ),
            BrokerKind::Mosquitto => (
                programs.mosquitto.clone(),
                write_mosquitto_config(dir.path(), transport, pki, ports, programs)?,
                match transport {
                    Transport::Tls => ports.node,
                    Transport::Tcp => ports.service,
                },
            ),
        };

        let mut broker = BrokerUnderTest {
            kind,
            transport,
            node_addr: SocketAddr::from(([127, 0, 0, 1], node_port)),
            service_addr: SocketAddr::from(([127, 0, 0, 1], ports.service)),
            program,
            config,
            log: dir.path().join("broker.log"),
            child: None,
            dir: Some(dir),
        };
        if let Err(err) = broker.spawn() {
            if let Some(dir) = broker.dir.take() {
                let kept = dir.keep();
                tracing::warn!(broker = %kind, dir = %kept.display(), "broker did not start; its directory is kept");
            }
            return Err(err);
        }
        Ok(broker)
    }

    /// Process id of the running broker, or `None` while it is stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the broker with SIGTERM (SIGKILL after 10 s) and returns how it
    /// exited.
    pub fn stop(&mut self) -> Result<Option<ExitStatus>, ServerError> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let pid = child.id();
        // SAFETY: kill(2) with a pid this process spawned and has not reaped.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } != 0 {
            return Err(ServerError::Signal {
                broker: self.kind,
                pid,
                source: std::io::Error::last_os_error(),
            });
        }

        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                tracing::info!(broker = %self.kind, pid, %status, "broker stopped");
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                tracing::warn!(broker = %self.kind, pid, "broker ignored SIGTERM for 10 s; killing it");
                let _ = child.kill();
                return Ok(child.wait().ok());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the broker again with the same configuration and port.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.stop()?;
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), ServerError> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|source| ServerError::Write {
                path: self.log.clone(),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| ServerError::Write {
            path: self.log.clone(),
            source,
        })?;

        let mut command = Command::new(&self.program);
        match self.kind {
            BrokerKind::Tollway => command
                .arg("--config")
                .arg(&self.config)
                .arg("--log")
                .arg("warn"),
            BrokerKind::Mosquitto => command.arg("-c").arg(&self.config),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| ServerError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        tracing::info!(broker = %self.kind, transport = %self.transport, pid = child.id(), addr = %self.node_addr, "broker started");
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), ServerError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(ServerError::ExitedEarly {
                    broker: self.kind,
                    status,
                    addr: self.node_addr,
                    log: self.log.clone(),
                });
            }
            if TcpStream::connect_timeout(&self.node_addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ServerError::NotReady {
                    broker: self.kind,
                    addr: self.node_addr,
                    timeout: READY_TIMEOUT,
                    log: self.log.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for BrokerUnderTest {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn write_tollway_config(
    dir: &Path,
    transport: Transport,
    pki: &ServerFiles,
    ports: Ports,
) -> Result<PathBuf, ServerError> {
    let hash = cheap_password_hash(PLAIN_PASSWORD);
    let passwd = write(dir, "passwd", &format!("{PLAIN_USER}:{hash}\n"))?;
    let d = dir.display();
    let config = format!(
        r#"# Written by tollway-loadtest for a {transport} run.
profile = "province"
province = 44
data_dir = "{d}/data"

[node_listener]
bind = "127.0.0.1:{node}"
cert_file = "{cert}"
key_file = "{key}"
client_ca_file = "{ca}"

[service_listener]
bind = "127.0.0.1:{service}"
password_file = "{passwd}"

[metrics]
bind = "127.0.0.1:{metrics}"
"#,
        node = ports.node,
        service = ports.service,
        metrics = ports.metrics,
        cert = pki.cert_file.display(),
        key = pki.key_file.display(),
        ca = pki.ca_file.display(),
        passwd = passwd.display(),
    );
    write(dir, "broker.toml", &config)
}

/// Hashes `password` with the smallest Argon2id parameters (8 KiB, one
/// pass), which the broker accepts because a PHC string carries its own
/// parameters. Fit for a loopback benchmark only.
pub(crate) fn cheap_password_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(8, 1, 1, None).expect("8 KiB, 1 pass, 1 lane are valid");
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"tollway-loadtest").expect("16 bytes make a valid salt");
    argon
        .hash_password(password.as_bytes(), &salt)
        .expect("Argon2id with valid parameters cannot fail")
        .to_string()
}

fn write_mosquitto_config(
    dir: &Path,
    transport: Transport,
    pki: &ServerFiles,
    ports: Ports,
    programs: &Programs,
) -> Result<PathBuf, ServerError> {
    let passwd = dir.join("passwd");
    run_mosquitto_passwd(programs, &passwd)?;
    // The password user (centre services, and nodes on plain-TCP runs) may
    // use every province topic; a certificate user only its own node's.
    let acl = write(
        dir,
        "acl",
        &format!(
            "user {PLAIN_USER}\ntopic readwrite tollway/#\n\npattern readwrite tollway/v1/44/node/%u/#\n"
        ),
    )?;
    // Limits as in Tollway's listener defaults, where Mosquitto has them.
    // Mosquitto's queue length is one setting for every client, so it takes
    // the service listener's 50,000: the centre's sessions receive what the
    // whole fleet sends, and nodes receive little.
    // With `per_listener_settings false` the password file and the ACL
    // apply to both listeners; a certificate login skips the password check.
    let mut config = format!(
        "# Written by tollway-loadtest for a {transport} run.\n\
         per_listener_settings false\n\
         persistence false\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         connection_messages false\n\
         max_inflight_messages 16\n\
         max_queued_messages 50000\n\
         allow_anonymous false\n\
         password_file {passwd}\n\
         acl_file {acl}\n\
         listener {service} 127.0.0.1\n",
        passwd = passwd.display(),
        acl = acl.display(),
        service = ports.service,
    );
    if transport == Transport::Tls {
        config.push_str(&format!(
            "listener {node} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\nuse_identity_as_username true\n",
            pki.ca_file.display(),
            pki.cert_file.display(),
            pki.key_file.display(),
            node = ports.node,
        ));
    }
    write(dir, "mosquitto.conf", &config)
}

fn run_mosquitto_passwd(programs: &Programs, passwd: &Path) -> Result<(), ServerError> {
    let output = Command::new(&programs.mosquitto_passwd)
        .arg("-c")
        .arg("-b")
        .arg(passwd)
        .arg(PLAIN_USER)
        .arg(PLAIN_PASSWORD)
        .output()
        .map_err(|source| ServerError::Spawn {
            program: programs.mosquitto_passwd.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(ServerError::Failed {
            program: programs.mosquitto_passwd.clone(),
            status: output.status,
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(())
}

fn write(dir: &Path, name: &str, contents: &str) -> Result<PathBuf, ServerError> {
    let path = dir.join(name);
    std::fs::write(&path, contents).map_err(|source| ServerError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}
