//! The record chain from a province to the national centre, started on
//! loopback for the `outage` scenario:
//!
//! ```text
//! nodes ─mTLS─▶ provincial broker ◀─ province centre (ingest + forwarder)
//!                      ▲
//!               tollway-bridge ─TLS─▶ FaultProxy ─▶ national broker ◀─ national centre
//! ```
//!
//! Every program is the real one from this workspace, with a
//! configuration written by this module into the run directory: the
//! provincial broker (province profile), the national broker (national
//! profile, bridge listener with a password), the bridge between them with
//! its national address pointing at the fault proxy, a province centre
//! running the ingest and the forwarder, and a national centre running the
//! national ingest. Every program keeps its own defaults except where this
//! module says otherwise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tollway_testkit::{Ports, port};

use crate::pki::ServerFiles;
use crate::proxy::FaultProxy;
use crate::servers::{
    BrokerKind, BrokerUnderTest, PLAIN_PASSWORD, PLAIN_USER, Programs, ServerError, Transport,
    cheap_password_hash,
};
use crate::service::{Service, ServiceError, get_json, write};

/// The username of the bridge on the national broker.
const BRIDGE_USER: &str = "bridge-44";
/// The bridge's national password; loopback only.
const BRIDGE_PASSWORD: &str = "loadtest-bridge-password";

/// Paths of the chain's programs.
#[derive(Debug, Clone)]
pub struct ChainPrograms {
    pub brokers: Programs,
    pub bridge: PathBuf,
    pub center: PathBuf,
}

impl ChainPrograms {
    /// Returns the programs the chain runs, for [`crate::preflight::check`].
    /// All three come from the directory of `--broker-bin`.
    pub fn needed(&self) -> Vec<crate::preflight::Program> {
        let fix = "build the workspace (`cargo build --release --workspace`), or pass a --broker-bin whose directory also holds tollway-bridge and tollway-center";
        [
            ("--broker-bin", &self.brokers.tollway_broker),
            ("tollway-bridge beside --broker-bin", &self.bridge),
            ("tollway-center beside --broker-bin", &self.center),
        ]
        .into_iter()
        .map(|(option, path)| crate::preflight::Program {
            option,
            path: path.clone(),
            fix: fix.to_string(),
        })
        .collect()
    }

    /// Returns the bridge and centre programs next to `tollway-broker`.
    pub fn beside_broker(brokers: Programs) -> Self {
        let dir = brokers
            .tollway_broker
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        ChainPrograms {
            bridge: dir.join("tollway-bridge"),
            center: dir.join("tollway-center"),
            brokers,
        }
    }
}

/// Settings of the chain that a scenario chooses.
#[derive(Debug, Clone)]
pub struct ChainSettings {
    /// The bridge's cap toward the national broker, bytes per second; 0
    /// for none.
    pub bridge_up_bytes_per_second: u64,
    /// Bridge reconnect back-off, milliseconds.
    pub bridge_backoff_ms: (u64, u64),
    /// Log filter of the programs.
    pub log: String,
}

/// A program of the chain that did not start.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("provincial broker: {0}")]
    Province(#[source] ServerError),

    #[error(transparent)]
    Service(#[from] ServiceError),

    #[error("cannot start the fault proxy on {listen}: {source}")]
    Proxy {
        listen: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot create the directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The running chain; every process is killed when it is dropped.
pub struct Chain {
    /// The provincial broker's node listener.
    pub node_addr: SocketAddr,
    /// The fault proxy on the national link.
    pub proxy: FaultProxy,
    /// Query APIs of the two centres.
    pub province_api: SocketAddr,
    pub national_api: SocketAddr,
    province: BrokerUnderTest,
    services: Vec<Service>,
}

impl Chain {
    /// Starts every program, in the order data flows back from the nation.
    pub async fn start(
        dir: &Path,
        pki: &ServerFiles,
        programs: &ChainPrograms,
        settings: &ChainSettings,
    ) -> Result<Chain, ChainError> {
        let province =
            BrokerUnderTest::start(BrokerKind::Tollway, Transport::Tls, pki, &programs.brokers)
                .map_err(ChainError::Province)?;
        let province_service = province.service_addr;
        let secret = write(dir, "service.secret", &format!("{PLAIN_PASSWORD}\n"))?;
        let mut services = Vec::new();

        let national_dir = subdir(dir, "national")?;
        let national_ports = Ports::pick();
        services.push(start_national_broker(
            &national_dir,
            pki,
            programs,
            national_ports,
            settings,
        )?);
        let national_service = loopback(national_ports.service);

        let national_api = loopback(port::reserve());
        let national_config = centre_config(
            "national",
            national_service,
            &secret,
            &national_dir.join("store"),
            national_api,
            "[national_ingest]\n",
        );
        services.push(Service::start(
            "national-centre",
            &programs.center,
            &national_dir,
            &national_config,
            &["--log", &settings.log],
            national_api,
        )?);

        let listen = loopback(port::reserve());
        let proxy = FaultProxy::start(listen, loopback(national_ports.node))
            .await
            .map_err(|source| ChainError::Proxy { listen, source })?;

        let province_dir = subdir(dir, "province")?;
        let province_api = loopback(port::reserve());
        let province_config = centre_config(
            "province",
            province_service,
            &secret,
            &province_dir.join("store"),
            province_api,
            "[ingest]\nprovince = 44\n\n[forwarder]\nprovince = 44\n",
        );
        services.push(Service::start(
            "province-centre",
            &programs.center,
            &province_dir,
            &province_config,
            &["--log", &settings.log],
            province_api,
        )?);

        services.push(start_bridge(
            &province_dir,
            pki,
            programs,
            province_service,
            proxy.local_addr(),
            settings,
        )?);

        Ok(Chain {
            node_addr: province.node_addr,
            proxy,
            province_api,
            national_api,
            province,
            services,
        })
    }

    /// Stops every program, the bridge first.
    pub fn stop(mut self) {
        while let Some(mut service) = self.services.pop() {
            service.stop();
        }
        self.proxy.shutdown();
        let _ = self.province.stop();
    }
}

/// Reads one counter from a centre's `/v1/stats`.
pub fn stat(api: SocketAddr, name: &str) -> Result<u64, ServiceError> {
    let stats = get_json(api, "/v1/stats")?;
    stats[name].as_u64().ok_or_else(|| ServiceError::Http {
        addr: api,
        path: "/v1/stats".to_string(),
        reason: format!("no counter {name} in {stats}"),
    })
}

fn start_national_broker(
    dir: &Path,
    pki: &ServerFiles,
    programs: &ChainPrograms,
    ports: Ports,
    settings: &ChainSettings,
) -> Result<Service, ServiceError> {
    let hash = cheap_password_hash(BRIDGE_PASSWORD);
    let bridges = write(dir, "bridges.passwd", &format!("{BRIDGE_USER}:{hash}\n"))?;
    let hash = cheap_password_hash(PLAIN_PASSWORD);
    let services = write(dir, "services.passwd", &format!("{PLAIN_USER}:{hash}\n"))?;
    let config = format!(
        r#"# Written by tollway-loadtest: the national broker of an outage run.
profile = "national"
data_dir = "{data}"

[bridge_listener]
bind = "127.0.0.1:{node}"
cert_file = "{cert}"
key_file = "{key}"
password_file = "{bridges}"

[service_listener]
bind = "127.0.0.1:{service}"
password_file = "{services}"

[metrics]
bind = "127.0.0.1:{metrics}"
"#,
        data = dir.join("broker-data").display(),
        node = ports.node,
        service = ports.service,
        metrics = ports.metrics,
        cert = pki.cert_file.display(),
        key = pki.key_file.display(),
        bridges = bridges.display(),
        services = services.display(),
    );
    Service::start(
        "national-broker",
        &programs.brokers.tollway_broker,
        dir,
        &config,
        &["--log", &settings.log],
        loopback(ports.service),
    )
}

fn start_bridge(
    dir: &Path,
    pki: &ServerFiles,
    programs: &ChainPrograms,
    local: SocketAddr,
    national: SocketAddr,
    settings: &ChainSettings,
) -> Result<Service, ServiceError> {
    let local_secret = write(dir, "bridge-local.secret", &format!("{PLAIN_PASSWORD}\n"))?;
    let remote_secret = write(dir, "bridge-remote.secret", &format!("{BRIDGE_PASSWORD}\n"))?;
    let metrics = loopback(port::reserve());
    let config = format!(
        r#"# Written by tollway-loadtest: the bridge of an outage run, whose
# national address is the fault proxy.
province = 44

[local]
address = "{local}"
username = "{PLAIN_USER}"
password_file = "{local_secret}"

[remote]
addresses = ["{national}"]
ca_file = "{ca}"
username = "{BRIDGE_USER}"
password_file = "{remote_secret}"

[backoff]
base_ms = {base}
cap_ms = {cap}

[bandwidth]
up_bytes_per_second = {up}

[metrics]
bind = "{metrics}"
"#,
        local_secret = local_secret.display(),
        remote_secret = remote_secret.display(),
        ca = pki.ca_file.display(),
        base = settings.bridge_backoff_ms.0,
        cap = settings.bridge_backoff_ms.1,
        up = settings.bridge_up_bytes_per_second,
    );
    Service::start(
        "bridge",
        &programs.bridge,
        dir,
        &config,
        &["--log", &settings.log],
        metrics,
    )
}

/// Returns a `tollway-center` configuration on a service listener, with
/// `services` appended (the sections that choose what the process runs).
fn centre_config(
    client_id: &str,
    broker: SocketAddr,
    secret: &Path,
    store: &Path,
    api: SocketAddr,
    services: &str,
) -> String {
    format!(
        r#"# Written by tollway-loadtest for an outage run.
[broker]
port = {port}
username = "{PLAIN_USER}"
password_file = "{secret}"
client_id = "loadtest-{client_id}"

[store]
path = "{store}"

[query]
bind = "{api}"

{services}"#,
        port = broker.port(),
        secret = secret.display(),
        store = store.display(),
    )
}

fn subdir(dir: &Path, name: &str) -> Result<PathBuf, ChainError> {
    let path = dir.join(name);
    std::fs::create_dir_all(&path).map_err(|source| ChainError::Dir {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
