//! The configuration files of every demo process, written into the run
//! directory as an operator would write them under `/etc/tollway`.
//!
//! Every listener binds 127.0.0.1 on a port reserved from the shared pool
//! (`tollway_testkit::port`), so nothing is reachable from other hosts and
//! two demos on one machine never collide.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tollway_testkit::port::reserve;

use crate::pki::Pki;
use crate::plan::NodePlan;

/// A configuration file or password that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`tollway-broker --hash-password` failed: {0}")]
    Hash(String),
}

/// The username every centre service, bridge and `tollwayctl` uses on a
/// service listener.
pub const SERVICE_USER: &str = "centre";

/// Ports of one broker.
#[derive(Debug, Clone, Copy)]
pub struct BrokerPorts {
    /// TLS listener: nodes on a provincial broker, bridges on the national one.
    pub tls: u16,
    pub service: u16,
    pub metrics: u16,
}

impl BrokerPorts {
    fn reserve() -> Self {
        BrokerPorts {
            tls: reserve(),
            service: reserve(),
            metrics: reserve(),
        }
    }
}

/// The national centre's files and ports.
#[derive(Debug, Clone)]
pub struct NationalFiles {
    pub broker_config: PathBuf,
    pub center_config: PathBuf,
    pub ports: BrokerPorts,
    pub query_port: u16,
    pub aggregator_port: u16,
}

/// One province's files and ports.
#[derive(Debug, Clone)]
pub struct ProvinceFiles {
    pub province: u8,
    pub broker_config: PathBuf,
    pub bridge_config: PathBuf,
    pub center_config: PathBuf,
    pub ports: BrokerPorts,
    pub bridge_metrics_port: u16,
    pub query_port: u16,
    pub controller_port: u16,
    /// Port of the fault proxy in front of the national bridge listener,
    /// which the bridge connects to.
    pub proxy_port: u16,
    pub password_file: PathBuf,
    pub nodes: Vec<NodeFiles>,
}

/// One edge node's files.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    pub plan: NodePlan,
    pub config: PathBuf,
    pub intake_port: u16,
    /// Host directory mounted into the toll app, for the app's
    /// `counts-VERSION.json` files.
    pub counts_dir: PathBuf,
}

/// Writes the national broker and centre configuration.
pub fn write_national(
    dir: &Path,
    broker: &Path,
    pki: &Pki,
    password: &str,
    bridge_passwords: &BTreeMap<u8, String>,
) -> Result<NationalFiles, ConfigError> {
    create_dir(dir)?;
    let ports = BrokerPorts::reserve();
    let query_port = reserve();
    let aggregator_port = reserve();

    let mut bridges = String::from("# provincial bridges\n");
    for (province, bridge_password) in bridge_passwords {
        let hash = hash_password(broker, bridge_password)?;
        bridges += &format!("bridge-{province}:{hash}\n");
    }
    write(&dir.join("bridges.passwd"), &bridges)?;
    let hash = hash_password(broker, password)?;
    write(
        &dir.join("services.passwd"),
        &format!("# national centre services\n{SERVICE_USER}:{hash}\n"),
    )?;
    let password_file = dir.join("centre.password");
    write(&password_file, &format!("{password}\n"))?;

    let d = dir.display();
    let broker_config = dir.join("broker.toml");
    write(
        &broker_config,
        &format!(
            r#"profile = "national"
data_dir = "{d}/broker-data"

[bridge_listener]
bind = "127.0.0.1:{tls}"
cert_file = "{cert}"
key_file = "{key}"
password_file = "{d}/bridges.passwd"

[service_listener]
bind = "127.0.0.1:{service}"
password_file = "{d}/services.passwd"

[metrics]
bind = "127.0.0.1:{metrics}"
"#,
            tls = ports.tls,
            service = ports.service,
            metrics = ports.metrics,
            cert = pki.server_cert().display(),
            key = pki.server_key().display(),
        ),
    )?;

    let center_config = dir.join("center.toml");
    write(
        &center_config,
        &format!(
            r#"[broker]
port = {service}
username = "{SERVICE_USER}"
password_file = "{password}"
client_id = "national-centre"
backoff = {{ base_ms = 200, cap_ms = 2000 }}

[store]
path = "{d}/store"

[national_ingest]

[query]
bind = "127.0.0.1:{query_port}"
max_records = 1000000

[aggregator]
api_bind = "127.0.0.1:{aggregator_port}"
stale_after_s = 30

[aggregator.broker]
port = {service}
client_id = "national-aggregator"
username = "{SERVICE_USER}"
password_file = "{password}"
backoff = {{ base_ms = 200, cap_ms = 2000 }}
"#,
            service = ports.service,
            password = password_file.display(),
        ),
    )?;

    Ok(NationalFiles {
        broker_config,
        center_config,
        ports,
        query_port,
        aggregator_port,
    })
}

/// Settings of one province that come from outside its directory.
pub struct ProvinceInput<'a> {
    pub province: u8,
    pub nodes: Vec<NodePlan>,
    pub password: &'a str,
    pub bridge_password: &'a str,
    pub podman_socket: &'a Path,
}

/// Writes a province's broker, bridge, centre and edge node configurations.
pub fn write_province(
    dir: &Path,
    broker: &Path,
    pki: &Pki,
    input: ProvinceInput<'_>,
) -> Result<ProvinceFiles, ConfigError> {
    create_dir(dir)?;
    let province = input.province;
    let ports = BrokerPorts::reserve();
    let bridge_metrics_port = reserve();
    let query_port = reserve();
    let controller_port = reserve();
    let proxy_port = reserve();

    let hash = hash_password(broker, input.password)?;
    write(
        &dir.join("services.passwd"),
        &format!("# centre services, bridge and tollwayctl\n{SERVICE_USER}:{hash}\n"),
    )?;
    let password_file = dir.join("centre.password");
    write(&password_file, &format!("{}\n", input.password))?;
    let remote_password_file = dir.join("bridge-remote.password");
    write(
        &remote_password_file,
        &format!("{}\n", input.bridge_password),
    )?;

    let d = dir.display();
    let broker_config = dir.join("broker.toml");
    write(
        &broker_config,
        &format!(
            r#"profile = "province"
province = {province}
data_dir = "{d}/broker-data"

[node_listener]
bind = "127.0.0.1:{tls}"
cert_file = "{cert}"
key_file = "{key}"
client_ca_file = "{ca}"

[service_listener]
bind = "127.0.0.1:{service}"
password_file = "{d}/services.passwd"
# Queue room for the bridge's sessions while the national link is cut.
limits = {{ max_mqueue_len = 100000 }}

[metrics]
bind = "127.0.0.1:{metrics}"
"#,
            tls = ports.tls,
            service = ports.service,
            metrics = ports.metrics,
            cert = pki.server_cert().display(),
            key = pki.server_key().display(),
            ca = pki.ca_cert().display(),
        ),
    )?;

    let bridge_config = dir.join("bridge.toml");
    write(
        &bridge_config,
        &format!(
            r#"province = {province}

[local]
address = "127.0.0.1:{service}"
username = "{SERVICE_USER}"
password_file = "{password}"

[remote]
addresses = ["127.0.0.1:{proxy_port}"]
ca_file = "{ca}"
username = "bridge-{province}"
password_file = "{remote_password}"
connect_timeout_s = 5

[backoff]
base_ms = 200
cap_ms = 2000

[metrics]
bind = "127.0.0.1:{bridge_metrics_port}"
"#,
            service = ports.service,
            password = password_file.display(),
            ca = pki.ca_cert().display(),
            remote_password = remote_password_file.display(),
        ),
    )?;

    let center_config = dir.join("center.toml");
    write(
        &center_config,
        &format!(
            r#"[broker]
port = {service}
username = "{SERVICE_USER}"
password_file = "{password}"
client_id = "centre-{province}"
backoff = {{ base_ms = 200, cap_ms = 2000 }}

[store]
path = "{d}/store"

[ingest]
province = {province}
reconcile_interval_s = 20

[forwarder]
province = {province}
resend_after_s = 5
resend_cap_s = 10

[query]
bind = "127.0.0.1:{query_port}"
max_records = 1000000

[controller]
province = {province}
data_dir = "{d}/controller"
status_interval_s = 5
api_bind = "127.0.0.1:{controller_port}"

[controller.broker]
port = {service}
client_id = "controller-{province}"
username = "{SERVICE_USER}"
password_file = "{password}"
backoff = {{ base_ms = 200, cap_ms = 2000 }}
"#,
            service = ports.service,
            password = password_file.display(),
        ),
    )?;

    let mut nodes = Vec::new();
    for plan in input.nodes {
        nodes.push(write_node(
            &dir.join("nodes").join(&plan.id),
            pki,
            plan,
            ports.tls,
            input.podman_socket,
        )?);
    }

    Ok(ProvinceFiles {
        province,
        broker_config,
        bridge_config,
        center_config,
        ports,
        bridge_metrics_port,
        query_port,
        controller_port,
        proxy_port,
        password_file,
        nodes,
    })
}

/// Writes one edge daemon's configuration, with short timings so the demo
/// shows reconnects and drift repair within seconds.
fn write_node(
    dir: &Path,
    pki: &Pki,
    plan: NodePlan,
    broker_port: u16,
    podman_socket: &Path,
) -> Result<NodeFiles, ConfigError> {
    create_dir(dir)?;
    let counts_dir = dir.join("counts");
    create_dir(&counts_dir)?;
    let intake_port = reserve();
    let d = dir.display();
    let config = dir.join("edge.toml");
    write(
        &config,
        &format!(
            r#"node = "{node}"
province = {province}
data_dir = "{d}/data"
labels = {{ gantry = "{gantry}", station = "{station}", section = "{section}", role = "gantry" }}

[link]
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"
keep_alive_s = 30
reconnect = {{ base_ms = 200, cap_ms = 2000 }}

[[link.endpoints]]
name = "province"
host = "127.0.0.1"
port = {broker_port}

[intake]
listen = "127.0.0.1:{intake_port}"

[uplink]
linger_ms = 200
resend_timeout_s = 5

[status]
heartbeat_s = 10
debounce_ms = 500

[summary]
interval_s = 10

[apps]
podman_socket = "{socket}"
reconcile_interval_s = 2
stop_timeout_s = 2
restart_backoff = {{ base_ms = 500, cap_ms = 5000 }}
pull_backoff = {{ base_ms = 1000, cap_ms = 5000 }}
"#,
            node = plan.id,
            province = plan.province,
            gantry = plan.gantry,
            station = plan.station,
            section = plan.section,
            ca = pki.ca_cert().display(),
            cert = pki.node_cert(&plan.id).display(),
            key = pki.node_key(&plan.id).display(),
            socket = podman_socket.display(),
        ),
    )?;
    Ok(NodeFiles {
        plan,
        config,
        intake_port,
        counts_dir,
    })
}

/// Hashes a password with the broker's own `--hash-password`.
fn hash_password(broker: &Path, password: &str) -> Result<String, ConfigError> {
    let mut child = Command::new(broker)
        .arg("--hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| ConfigError::Hash(err.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{password}").map_err(|err| ConfigError::Hash(err.to_string()))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|err| ConfigError::Hash(err.to_string()))?;
    if !output.status.success() {
        return Err(ConfigError::Hash(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn create_dir(dir: &Path) -> Result<(), ConfigError> {
    std::fs::create_dir_all(dir).map_err(|source| ConfigError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `contents` to `path` with mode 0600, since several files hold
/// passwords.
fn write(path: &Path, contents: &str) -> Result<(), ConfigError> {
    use std::os::unix::fs::OpenOptionsExt;
    let error = |source| ConfigError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(error)?;
    file.write_all(contents.as_bytes()).map_err(error)
}
