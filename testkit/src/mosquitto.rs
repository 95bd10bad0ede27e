//! A real Mosquitto broker on loopback ports, as the second MQTT
//! implementation that Tollway's components must work with.
//!
//! [`MosquittoFiles::national`] writes a configuration that stands in for
//! the national broker: a TLS listener with a server certificate from a
//! throw-away CA, a plain listener for test clients, and a password file
//! made by `mosquitto_passwd` holding [`BRIDGE_USER`] and [`SERVICE_USER`].
//! Both programs come from the distribution's `mosquitto` package.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{MqttOptions, TlsConfiguration, Transport};

use crate::{BRIDGE_PASSWORD, BRIDGE_USER, SERVICE_PASSWORD, SERVICE_USER, TestCa, write};

/// Files of one Mosquitto broker.
pub struct MosquittoFiles {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    /// TLS listener, username and password.
    pub tls_port: u16,
    /// Plain-TCP listener, username and password.
    pub plain_port: u16,
    pub config: PathBuf,
}

impl MosquittoFiles {
    /// Writes the configuration of a national broker.
    pub fn national() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("test mosquitto CA");
        let server = ca.server_cert();
        let tls_port = pick_port();
        let plain_port = pick_port();

        write(dir.path(), "ca.crt", &ca.cert_pem);
        write(dir.path(), "server.crt", &server.cert);
        write(dir.path(), "server.key", &server.key);
        let passwd = dir.path().join("passwd");
        add_user(&passwd, BRIDGE_USER, BRIDGE_PASSWORD, true);
        add_user(&passwd, SERVICE_USER, SERVICE_PASSWORD, false);

        let d = dir.path().display();
        // Running as root, Mosquitto switches to the `mosquitto` user unless
        // told otherwise, and could then not read the files in `dir`.
        let config = format!(
            "user root\n\
             per_listener_settings false\n\
             allow_anonymous false\n\
             password_file {d}/passwd\n\
             persistence false\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n\
             listener {tls_port} 127.0.0.1\n\
             cafile {d}/ca.crt\n\
             certfile {d}/server.crt\n\
             keyfile {d}/server.key\n\
             listener {plain_port} 127.0.0.1\n"
        );
        let config = write(dir.path(), "mosquitto.conf", &config);
        MosquittoFiles {
            dir,
            ca,
            tls_port,
            plain_port,
            config,
        }
    }

    /// Appends global settings (one per line, e.g. `max_inflight_messages 16`)
    /// to the configuration, before [`MosquittoFiles::start`].
    pub fn append_config(&self, lines: &str) {
        let mut config = std::fs::read_to_string(&self.config).unwrap();
        config.push_str(lines);
        std::fs::write(&self.config, config).unwrap();
    }

    /// Starts `mosquitto -c CONFIG` and waits until both ports listen.
    pub fn start(&self) -> Mosquitto {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .spawn()
            .expect("cannot run mosquitto; install the distribution's mosquitto package");
        let mut mosquitto = Mosquitto { child };
        mosquitto.wait_ready(&[self.tls_port, self.plain_port], Duration::from_secs(10));
        mosquitto
    }

    /// Options for a test client on the plain listener.
    pub fn plain_options(&self, client_id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", self.plain_port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_credentials(SERVICE_USER, SERVICE_PASSWORD);
        options
    }

    /// Options for a client on the TLS listener, logging in as
    /// [`BRIDGE_USER`] with `password`.
    pub fn tls_options(&self, client_id: &str, password: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", self.tls_port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_credentials(BRIDGE_USER, password);
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca: self.ca.cert_pem.as_bytes().to_vec(),
            alpn: None,
            client_auth: None,
        }));
        options
    }
}

/// Adds a user with `mosquitto_passwd -b`, creating the file when `create`.
fn add_user(passwd: &std::path::Path, user: &str, password: &str, create: bool) {
    let mut command = Command::new("mosquitto_passwd");
    if create {
        command.arg("-c");
    }
    let status = command
        .arg("-b")
        .arg(passwd)
        .arg(user)
        .arg(password)
        .status()
        .expect("cannot run mosquitto_passwd; install the distribution's mosquitto package");
    assert!(status.success(), "mosquitto_passwd failed for {user}");
}

fn pick_port() -> u16 {
    crate::port::reserve()
}

/// A running Mosquitto process, killed on drop.
pub struct Mosquitto {
    child: Child,
}

impl Mosquitto {
    fn wait_ready(&mut self, ports: &[u16], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for &port in ports {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!("mosquitto exited with {status} before port {port} was ready");
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "mosquitto did not listen on port {port} within {timeout:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
