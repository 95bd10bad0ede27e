//! The running demo: every process under one supervisor, the fault proxy in
//! front of the national broker for each province, and the paths and ports
//! the stages need.
//!
//! Start order follows the data path: national broker and centre, then per
//! province broker, fault proxy, bridge and centre, then the edge daemons.
//! Each start waits until the process listens, so a later process never
//! starts against a missing server.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tollway_loadtest::proxy::FaultProxy;

use crate::configs::{NationalFiles, NodeFiles, ProvinceFiles};
use crate::supervisor::{Launch, ProcessError, Supervisor};

/// How long a process gets to start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A process that did not come up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("{name} did not listen on 127.0.0.1:{port} within {timeout:?}; see {log}")]
    NotListening {
        name: String,
        port: u16,
        timeout: Duration,
        log: PathBuf,
    },
    #[error("cannot start the fault proxy of province {province} on 127.0.0.1:{port}: {source}")]
    Proxy {
        province: u8,
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

/// Directory of the workspace programs.
#[derive(Debug, Clone)]
pub struct Programs {
    pub dir: PathBuf,
}

impl Programs {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Every process and proxy of the demo.
pub struct Cluster {
    pub supervisor: Supervisor,
    pub programs: Programs,
    pub national: NationalFiles,
    pub provinces: Vec<ProvinceFiles>,
    /// The fault proxy between each province's bridge and the national
    /// broker, by province code.
    pub proxies: BTreeMap<u8, FaultProxy>,
    log_filter: String,
}

impl Cluster {
    pub fn new(
        log_dir: &Path,
        programs: Programs,
        national: NationalFiles,
        provinces: Vec<ProvinceFiles>,
        log_filter: String,
    ) -> Self {
        Cluster {
            supervisor: Supervisor::new(log_dir),
            programs,
            national,
            provinces,
            proxies: BTreeMap::new(),
            log_filter,
        }
    }

    /// Starts the national centre, then each province and its nodes.
    pub fn start_all(&mut self, runtime: &tokio::runtime::Runtime) -> Result<(), StartError> {
        let national = self.national.clone();
        self.start_program(
            "national-broker",
            "tollway-broker",
            &national.broker_config,
            &[
                national.ports.tls,
                national.ports.service,
                national.ports.metrics,
            ],
        )?;
        self.start_program(
            "national-centre",
            "tollway-center",
            &national.center_config,
            &[national.query_port, national.aggregator_port],
        )?;

        for province in self.provinces.clone() {
            self.start_province(&province, runtime)?;
        }
        for province in self.provinces.clone() {
            for node in &province.nodes {
                self.start_node(node)?;
            }
        }
        Ok(())
    }

    fn start_province(
        &mut self,
        province: &ProvinceFiles,
        runtime: &tokio::runtime::Runtime,
    ) -> Result<(), StartError> {
        let code = province.province;
        self.start_program(
            &format!("broker-{code}"),
            "tollway-broker",
            &province.broker_config,
            &[
                province.ports.tls,
                province.ports.service,
                province.ports.metrics,
            ],
        )?;

        let listen = SocketAddr::from(([127, 0, 0, 1], province.proxy_port));
        let upstream = SocketAddr::from(([127, 0, 0, 1], self.national.ports.tls));
        let proxy = runtime
            .block_on(FaultProxy::start(listen, upstream))
            .map_err(|source| StartError::Proxy {
                province: code,
                port: province.proxy_port,
                source,
            })?;
        self.proxies.insert(code, proxy);

        self.start_program(
            &format!("bridge-{code}"),
            "tollway-bridge",
            &province.bridge_config,
            &[province.bridge_metrics_port],
        )?;
        self.start_program(
            &format!("centre-{code}"),
            "tollway-center",
            &province.center_config,
            &[province.query_port, province.controller_port],
        )
    }

    /// Starts (or starts again) the edge daemon of `node`.
    pub fn start_node(&mut self, node: &NodeFiles) -> Result<(), StartError> {
        let name = node_process(node);
        self.start_program(&name, "tollway-edge", &node.config, &[node.intake_port])
    }

    /// Kills the edge daemon of `node` with SIGKILL, as a power loss would.
    pub fn kill_node(&mut self, node: &NodeFiles) -> Result<(), ProcessError> {
        self.supervisor.kill(&node_process(node)).map(|_| ())
    }

    /// Returns the log file of a named process, for error messages.
    pub fn log_of(&self, name: &str) -> PathBuf {
        self.supervisor
            .log_of(name)
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    fn start_program(
        &mut self,
        name: &str,
        program: &str,
        config: &Path,
        ports: &[u16],
    ) -> Result<(), StartError> {
        let launch = Launch {
            program: self.programs.path(program),
            args: vec![
                "--config".to_string(),
                config.display().to_string(),
                "--log".to_string(),
                self.log_filter.clone(),
            ],
            envs: Vec::new(),
        };
        self.supervisor.start(name, launch)?;
        for port in ports {
            self.wait_listening(name, *port)?;
        }
        Ok(())
    }

    fn wait_listening(&mut self, name: &str, port: u16) -> Result<(), StartError> {
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.supervisor.check_alive()?;
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StartError::NotListening {
                    name: name.to_string(),
                    port,
                    timeout: READY_TIMEOUT,
                    log: self.log_of(name),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Returns the supervisor's name of `node`'s daemon.
pub fn node_process(node: &NodeFiles) -> String {
    format!("edge-{}", node.plan.id)
}
