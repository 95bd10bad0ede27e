//! Test support shared by every crate's integration tests: a throw-away PKI
//! made with rcgen, a real `tollway-broker` process on loopback ports chosen
//! at run time, and rumqttc clients.
//!
//! Programs are found next to the test executable (`target/<profile>/`), so
//! a test that starts `tollway-broker` needs it built first; `cargo test
//! --workspace` builds every program of the workspace before running tests.

pub mod podman;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rumqttc::{
    AsyncClient, ConnAck, ConnectionError, Event, EventLoop, MqttOptions, Packet, TlsConfiguration,
    Transport,
};
use time::OffsetDateTime;

pub mod bridge;
pub mod center;
pub mod collect;
pub mod ctl;
pub mod gate;
pub mod mosquitto;
pub mod port;
pub mod sim_fleet;

/// JSON as the centre APIs return it, for test crates without their own
/// `serde_json` dependency.
pub use serde_json;

pub const PROVINCE: u8 = 44;
pub const SERVICE_USER: &str = "ingest";
pub const SERVICE_PASSWORD: &str = "correct horse battery staple";
/// The provincial bridge's login on a national broker's bridge listener.
pub const BRIDGE_USER: &str = "bridge-44";
pub const BRIDGE_PASSWORD: &str = "bridge password for province 44";

/// A certificate and key in PEM.
#[derive(Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A CA that can issue node and server certificates.
pub struct TestCa {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A node client certificate with CN `node`, valid until `not_after`.
    pub fn node_cert_until(&self, node: &str, not_after: OffsetDateTime) -> Pem {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(node);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = not_after - time::Duration::days(30);
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    pub fn node_cert(&self, node: &str) -> Pem {
        self.node_cert_until(node, OffsetDateTime::now_utc() + time::Duration::days(1))
    }

    pub fn server_cert(&self) -> Pem {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("127.0.0.1");
        params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, cn);
    name
}

/// Returns the `--log` filter for every program a test starts:
/// `TOLLWAY_TEST_LOG` when set (for example `info,rmqtt=debug` to follow
/// one failing test), otherwise `info`.
pub fn log_filter() -> String {
    std::env::var("TOLLWAY_TEST_LOG").unwrap_or_else(|_| "info".to_string())
}

/// Ports for one broker, reserved through [`port::reserve`].
#[derive(Clone, Copy)]
pub struct Ports {
    /// The TLS listener: nodes on a provincial broker, bridges and ops
    /// tools on a national one.
    pub node: u16,
    pub service: u16,
    pub metrics: u16,
}

impl Ports {
    pub fn pick() -> Self {
        Ports {
            node: port::reserve(),
            service: port::reserve(),
            metrics: port::reserve(),
        }
    }
}

/// Files of one provincial broker: PKI, password file, data dir, config.
pub struct BrokerFiles {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub ports: Ports,
    pub config: PathBuf,
}

impl BrokerFiles {
    /// Writes a province 44 configuration.
    pub fn province() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("test CA");
        let server = ca.server_cert();
        let ports = Ports::pick();

        write(dir.path(), "ca.crt", &ca.cert_pem);
        write(dir.path(), "server.crt", &server.cert);
        write(dir.path(), "server.key", &server.key);
        let hash = hash_password(SERVICE_PASSWORD);
        write(
            dir.path(),
            "passwd",
            &format!("# centre services\n{SERVICE_USER}:{hash}\n"),
        );

        let d = dir.path().display();
        let config = format!(
            r#"profile = "province"
province = {PROVINCE}
data_dir = "{d}/data"

[node_listener]
bind = "127.0.0.1:{node}"
cert_file = "{d}/server.crt"
key_file = "{d}/server.key"
client_ca_file = "{d}/ca.crt"

[service_listener]
bind = "127.0.0.1:{service}"
password_file = "{d}/passwd"

[metrics]
bind = "127.0.0.1:{metrics}"
"#,
            node = ports.node,
            service = ports.service,
            metrics = ports.metrics,
        );
        let config_path = write(dir.path(), "broker.toml", &config);
        BrokerFiles {
            dir,
            ca,
            ports,
            config: config_path,
        }
    }

    /// Writes a national configuration: a TLS bridge listener (on
    /// `ports.node`) whose password file holds [`BRIDGE_USER`], and a
    /// service listener whose password file holds [`SERVICE_USER`].
    pub fn national() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("test national CA");
        let server = ca.server_cert();
        let ports = Ports::pick();

        write(dir.path(), "ca.crt", &ca.cert_pem);
        write(dir.path(), "server.crt", &server.cert);
        write(dir.path(), "server.key", &server.key);
        let bridge_hash = hash_password(BRIDGE_PASSWORD);
        write(
            dir.path(),
            "bridges.passwd",
            &format!("# provincial bridges\n{BRIDGE_USER}:{bridge_hash}\n"),
        );
        let service_hash = hash_password(SERVICE_PASSWORD);
        write(
            dir.path(),
            "services.passwd",
            &format!("# centre services\n{SERVICE_USER}:{service_hash}\n"),
        );

        let d = dir.path().display();
        let config = format!(
            r#"profile = "national"
data_dir = "{d}/data"

[bridge_listener]
bind = "127.0.0.1:{node}"
cert_file = "{d}/server.crt"
key_file = "{d}/server.key"
password_file = "{d}/bridges.passwd"

[service_listener]
bind = "127.0.0.1:{service}"
password_file = "{d}/services.passwd"

[metrics]
bind = "127.0.0.1:{metrics}"
"#,
            node = ports.node,
            service = ports.service,
            metrics = ports.metrics,
        );
        let config_path = write(dir.path(), "broker.toml", &config);
        BrokerFiles {
            dir,
            ca,
            ports,
            config: config_path,
        }
    }

    pub fn start(&self) -> Broker {
        Broker::start(&self.config, self.ports)
    }
}

pub(crate) fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Hashes a password with the broker's own `--hash-password`.
pub fn hash_password(password: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(bin_path("tollway-broker"))
        .arg("--hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "--hash-password failed");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// A running broker process, killed on drop.
pub struct Broker {
    child: Child,
}

impl Broker {
    /// Starts the broker and waits until all its ports accept connections.
    pub fn start(config: &Path, ports: Ports) -> Self {
        let child = Command::new(bin_path("tollway-broker"))
            .arg("--config")
            .arg(config)
            .arg("--log")
            .arg(crate::log_filter())
            .spawn()
            .unwrap();
        let mut broker = Broker { child };
        broker.wait_ready(ports, Duration::from_secs(10));
        broker
    }

    fn wait_ready(&mut self, ports: Ports, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for port in [ports.node, ports.service, ports.metrics] {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!("broker exited with {status} before port {port} was ready");
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "broker did not listen on port {port} within {timeout:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Kills the process with SIGKILL, as a crash or power loss would, and
    /// waits for it to exit.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits up to 10 s for the process to exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        terminate(&mut self.child, "tollway-broker", Duration::from_secs(10))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM to `child` and returns its exit status, failing the test
/// when `program` has not exited within `timeout`.
pub fn terminate(child: &mut Child, program: &str, timeout: Duration) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success(), "kill -TERM {pid} ({program}) failed");

    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{program} did not stop within {timeout:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Options for a node connecting over mutual TLS with `pem`, or without a
/// client certificate when `pem` is `None`.
pub fn node_options(
    files: &BrokerFiles,
    client_id: &str,
    pem: Option<&Pem>,
    ca_pem: &str,
) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", files.ports.node);
    options.set_keep_alive(Duration::from_secs(30));
    let client_auth = pem.map(|pem| (pem.cert.clone().into_bytes(), pem.key.clone().into_bytes()));
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
        ca: ca_pem.as_bytes().to_vec(),
        alpn: None,
        client_auth,
    }));
    options
}

/// Options for a bridge or ops tool on a national broker's TLS bridge
/// listener, logging in as [`BRIDGE_USER`] with `password`.
pub fn bridge_options(files: &BrokerFiles, client_id: &str, password: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", files.ports.node);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_credentials(BRIDGE_USER, password);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
        ca: files.ca.cert_pem.as_bytes().to_vec(),
        alpn: None,
        client_auth: None,
    }));
    options
}

pub fn service_options(
    files: &BrokerFiles,
    client_id: &str,
    password: Option<&str>,
) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", files.ports.service);
    options.set_keep_alive(Duration::from_secs(30));
    if let Some(password) = password {
        options.set_credentials(SERVICE_USER, password);
    }
    options
}

/// Connects and returns the CONNACK, or the error that ended the attempt.
pub async fn connect(
    options: MqttOptions,
) -> (AsyncClient, EventLoop, Result<ConnAck, ConnectionError>) {
    // The test binary links both of rustls' crypto back-ends (through
    // rcgen and rmqtt), so rustls cannot pick one by itself.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let result = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack),
                Ok(_) => continue,
                Err(err) => return Err(err),
            }
        }
    })
    .await
    .expect("no CONNACK and no error within 10 s");
    (client, eventloop, result)
}

/// Polls until a PUBACK arrives, or `timeout` passes.
pub async fn next_puback(eventloop: &mut EventLoop, timeout: Duration) -> Result<(), String> {
    next_packet(eventloop, timeout, |p| {
        matches!(p, Packet::PubAck(_)).then_some(())
    })
    .await
}

/// Polls until a packet matching `want` arrives, or `timeout` passes.
pub async fn next_packet<T>(
    eventloop: &mut EventLoop,
    timeout: Duration,
    mut want: impl FnMut(&Packet) -> Option<T>,
) -> Result<T, String> {
    let result = tokio::time::timeout(timeout, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(packet)) => {
                    if let Some(found) = want(&packet) {
                        return Ok(found);
                    }
                }
                Ok(Event::Outgoing(_)) => {}
                Err(err) => return Err(format!("connection ended: {err}")),
            }
        }
    })
    .await;
    result.unwrap_or_else(|_| Err(format!("nothing matching within {timeout:?}")))
}

pub fn node_topic(node: &str, kind: &str) -> String {
    format!("tollway/v1/{PROVINCE}/node/{node}/{kind}")
}

/// Fetches `/metrics` over plain HTTP.
pub fn scrape_metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Returns the value of the series `series` (a metric name with its labels,
/// if any) in a Prometheus text scrape. Panics naming the series when it is
/// missing or not a whole number.
pub fn metric_value(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in {metrics}"))
        .trim()
        .parse()
        .unwrap_or_else(|err| panic!("{series} is not a whole number: {err}"))
}

/// Path of a workspace program: in `$TOLLWAY_BIN_DIR` when that is set,
/// otherwise beside the running test executable.
///
/// `TOLLWAY_BIN_DIR` exists because several worktrees may share one cargo
/// target directory, where each build overwrites the programs another
/// worktree's tests are about to start.
///
/// Panics with the command to run when the program is not built.
pub fn bin_path(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("TOLLWAY_BIN_DIR") {
        let path = PathBuf::from(dir).join(name);
        assert!(
            path.exists(),
            "{} is missing from TOLLWAY_BIN_DIR",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --release --workspace` first",
        path.display()
    );
    path
}
