//! A real `tollway-bridge` process between two brokers on loopback, with
//! its configuration and password files in a temporary directory.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tollway_topics::topic::center_filter;
use tollway_topics::{CenterKind, Province};

use crate::{
    BRIDGE_PASSWORD, BRIDGE_USER, PROVINCE, SERVICE_PASSWORD, SERVICE_USER, bin_path, write,
};

/// Returns the topic of the test province's bridge state.
pub fn bridge_state_topic() -> String {
    let province = Province::new(PROVINCE).expect("PROVINCE is a valid province code");
    center_filter(province, CenterKind::Bridge)
}

/// Settings of a test bridge. The local side logs in as [`SERVICE_USER`],
/// the remote side as [`BRIDGE_USER`].
pub struct BridgeSettings {
    /// Port of the provincial broker's service listener.
    pub local_port: u16,
    /// `host:port` of the national broker, in failover order.
    pub remote_addresses: Vec<String>,
    /// PEM CA of the national broker's server certificate.
    pub remote_ca_pem: String,
    /// Back-off base and cap in milliseconds. Tests use short delays.
    pub backoff_ms: (u64, u64),
    /// Bandwidth cap toward the national broker; 0 for none.
    pub up_bytes_per_second: u64,
    pub burst_bytes: u64,
    /// Extra TOML appended at the end, e.g. `[[rules]]` tables.
    pub extra: String,
}

impl BridgeSettings {
    pub fn new(local_port: u16, remote_addresses: Vec<String>, remote_ca_pem: &str) -> Self {
        BridgeSettings {
            local_port,
            remote_addresses,
            remote_ca_pem: remote_ca_pem.to_string(),
            backoff_ms: (200, 1000),
            up_bytes_per_second: 0,
            burst_bytes: 16 * 1024,
            extra: String::new(),
        }
    }
}

/// The files of one bridge.
pub struct BridgeFiles {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub metrics_port: u16,
}

impl BridgeFiles {
    /// Writes the configuration of a province 44 bridge.
    pub fn write(settings: &BridgeSettings) -> Self {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "local.secret", &format!("{SERVICE_PASSWORD}\n"));
        write(dir.path(), "remote.secret", &format!("{BRIDGE_PASSWORD}\n"));
        write(dir.path(), "national-ca.crt", &settings.remote_ca_pem);
        let metrics_port = crate::port::reserve();

        let d = dir.path().display();
        let addresses: Vec<String> = settings
            .remote_addresses
            .iter()
            .map(|a| format!("{a:?}"))
            .collect();
        let config = format!(
            r#"province = {PROVINCE}

[local]
address = "127.0.0.1:{local_port}"
username = "{SERVICE_USER}"
password_file = "{d}/local.secret"

[remote]
addresses = [{addresses}]
ca_file = "{d}/national-ca.crt"
username = "{BRIDGE_USER}"
password_file = "{d}/remote.secret"
connect_timeout_s = 5

[backoff]
base_ms = {base}
cap_ms = {cap}

[bandwidth]
up_bytes_per_second = {rate}
burst_bytes = {burst}

[metrics]
bind = "127.0.0.1:{metrics_port}"

{extra}
"#,
            local_port = settings.local_port,
            addresses = addresses.join(", "),
            base = settings.backoff_ms.0,
            cap = settings.backoff_ms.1,
            rate = settings.up_bytes_per_second,
            burst = settings.burst_bytes,
            extra = settings.extra,
        );
        let config = write(dir.path(), "bridge.toml", &config);
        BridgeFiles {
            dir,
            config,
            metrics_port,
        }
    }

    /// Starts the bridge and waits until its metrics endpoint listens.
    pub fn start(&self) -> Bridge {
        let child = Command::new(bin_path("tollway-bridge"))
            .arg("--config")
            .arg(&self.config)
            .arg("--log")
            .arg(crate::log_filter())
            .spawn()
            .unwrap();
        let mut bridge = Bridge { child };
        bridge.wait_ready(self.metrics_port, Duration::from_secs(10));
        bridge
    }
}

/// A running bridge process, killed on drop.
pub struct Bridge {
    child: Child,
}

impl Bridge {
    fn wait_ready(&mut self, port: u16, timeout: Duration) {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("tollway-bridge exited with {status} before its metrics port was ready");
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tollway-bridge did not listen on metrics port {port} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits up to 10 s for the process to exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        crate::terminate(&mut self.child, "tollway-bridge", Duration::from_secs(10))
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
