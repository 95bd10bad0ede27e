//! Support for tests of the centre services: a `tollway-center` process
//! with a `[controller]` or `[aggregator]` section, simulated nodes that
//! publish presence and status over mutual TLS, and a plain HTTP GET for
//! the services' loopback APIs.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, LastWill, QoS};
use tollway_topics::{Message, NodeStatus, Presence};

use crate::{BrokerFiles, SERVICE_PASSWORD, SERVICE_USER, bin_path, node_options, node_topic};

/// Returns a free loopback port (bound and released).
pub fn pick_port() -> u16 {
    crate::port::reserve()
}

/// Writes the service password file that centre configurations point to.
pub fn write_password_file(dir: &Path) -> PathBuf {
    let path = dir.join("service.password");
    std::fs::write(&path, format!("{SERVICE_PASSWORD}\n")).unwrap();
    path
}

/// Returns a `[controller]` section for province 44 on `files`' broker.
pub fn controller_config(
    files: &BrokerFiles,
    data_dir: &Path,
    api_port: u16,
    grace_period_s: u64,
) -> String {
    let password = write_password_file(files.dir.path());
    format!(
        r#"[controller]
province = 44
data_dir = "{data}"
grace_period_s = {grace_period_s}
status_interval_s = 1
api_bind = "127.0.0.1:{api_port}"

[controller.broker]
port = {port}
client_id = "controller-44"
username = "{SERVICE_USER}"
password_file = "{password}"
backoff = {{ base_ms = 50, cap_ms = 500 }}
"#,
        data = data_dir.display(),
        port = files.ports.service,
        password = password.display(),
    )
}

/// A running `tollway-center`, killed on drop.
pub struct Center {
    child: Child,
    pub api_port: u16,
}

impl Center {
    /// Writes `config` to `dir/center.toml`, starts the program and waits
    /// until its API accepts connections.
    pub fn start(dir: &Path, config: &str, api_port: u16) -> Self {
        let path = dir.join("center.toml");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(bin_path("tollway-center"))
            .arg("--config")
            .arg(&path)
            .arg("--log")
            .arg(crate::log_filter())
            .spawn()
            .unwrap();
        let mut center = Center { child, api_port };
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from(([127, 0, 0, 1], api_port));
        loop {
            if let Some(status) = center.child.try_wait().unwrap() {
                panic!("tollway-center exited with {status} before its API listened");
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tollway-center API did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        center
    }

    /// Sends SIGTERM and waits up to 15 s for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        crate::terminate(&mut self.child, "tollway-center", Duration::from_secs(15))
    }
}

impl Drop for Center {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `GET path` to a loopback port; returns the status code and body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// Sends `GET path` and parses the JSON body.
pub fn http_json(port: u16, path: &str) -> serde_json::Value {
    let (code, body) = http_get(port, path);
    assert_eq!(code, 200, "GET {path} returned {code}: {body}");
    serde_json::from_str(&body)
        .unwrap_or_else(|err| panic!("GET {path}: invalid JSON {err}: {body}"))
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after
/// `timeout` with `what` and the last value `describe` returned.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "timed out after {timeout:?} waiting for {what}; last seen: {last}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A simulated edge node: an mTLS MQTT client whose event loop runs in a
/// background task, with the offline presence as its will.
pub struct SimNode {
    pub id: String,
    pub client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl SimNode {
    /// Connects as `id` and publishes an online presence with `labels`.
    pub async fn connect(files: &BrokerFiles, id: &str, labels: &[(&str, &str)]) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pem = files.ca.node_cert(id);
        let mut options = node_options(files, id, Some(&pem), &files.ca.cert_pem);
        options.set_last_will(LastWill::new(
            node_topic(id, "presence"),
            Presence::offline().to_cbor().unwrap(),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let task = tokio::spawn(async move {
            loop {
                if eventloop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        let node = SimNode {
            id: id.to_string(),
            client,
            task,
        };
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        node.publish_presence(&Presence::online(1_796_358_000_000, "0.1.0".into(), labels))
            .await;
        node
    }

    pub async fn publish_presence(&self, presence: &Presence) {
        self.client
            .publish(
                node_topic(&self.id, "presence"),
                QoS::AtLeastOnce,
                true,
                presence.to_cbor().unwrap(),
            )
            .await
            .unwrap();
    }

    /// Publishes a status reporting `generation` applied.
    pub async fn publish_status(&self, generation: u64) {
        let status = NodeStatus {
            generation,
            version: "0.1.0".to_string(),
            ..NodeStatus::default()
        };
        self.client
            .publish(
                node_topic(&self.id, "status"),
                QoS::AtLeastOnce,
                false,
                status.to_cbor().unwrap(),
            )
            .await
            .unwrap();
    }

    /// Publishes the offline presence (as the broker would from the will)
    /// and drops the connection.
    pub async fn go_offline(self) {
        self.publish_presence(&Presence::offline()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.task.abort();
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}
