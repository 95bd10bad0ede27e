//! Set-up shared by the fleet scenarios (`storm`, `idle`, `records`,
//! `fanout`) before their first run: a check of the open-file limit, the
//! node names, a throw-away PKI with one client certificate per node, and a
//! fleet spec for each broker and transport.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tollway_topics::{NodeId, Province};

use crate::fleet::{Access, FleetSpec};
use crate::options::{CommonOptions, OptionsError};
use crate::pki::{FleetPki, PkiError};
use crate::report::ReportError;
use crate::servers::{PLAIN_PASSWORD, PLAIN_USER, Transport};

/// The province every simulated node belongs to.
pub const PROVINCE: u8 = 44;

/// Open files a scenario needs besides its nodes' sockets: the brokers'
/// and services' files, TLS material and the runtime.
const FILES_BESIDE_NODES: u64 = 200;

/// Errors that stop a fleet scenario before its first run or after its last.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error(transparent)]
    Options(#[from] OptionsError),

    #[error("cannot create a temporary directory: {0}")]
    TempDir(#[source] std::io::Error),

    #[error(transparent)]
    Pki(#[from] PkiError),

    #[error(transparent)]
    Report(#[from] ReportError),

    #[error(
        "--nodes {nodes} needs about {needed} open files, over the limit of {limit}; lower --nodes"
    )]
    TooManyNodes { nodes: u64, needed: u64, limit: u64 },
}

/// How many nodes a scenario simulates and what they need.
pub struct FleetPlan<'a> {
    /// Node ids are `{prefix}-00000`, `{prefix}-00001`, and so on.
    pub prefix: &'a str,
    pub nodes: u64,
    /// Open files each node takes: its socket, plus any the scenario opens
    /// per node (the idle scenario's traffic counters).
    pub files_per_node: u64,
    /// Whether to issue node certificates (true when a run uses TLS).
    pub tls: bool,
}

/// The fleet's names and credentials, shared by every run of a scenario.
pub struct FleetSetup {
    pub province: Province,
    pub nodes: Vec<NodeId>,
    pub pki: FleetPki,
    /// One client configuration per node, in node order; empty without TLS.
    tls_configs: Vec<Arc<rustls::ClientConfig>>,
    /// Directory of the CA and of the brokers' server certificate and key.
    _dir: tempfile::TempDir,
}

impl FleetSetup {
    /// Checks the open-file limit, names the nodes and issues their
    /// certificates.
    pub fn create(plan: &FleetPlan<'_>, open_file_limit: u64) -> Result<Self, ScenarioError> {
        let needed = plan.nodes * plan.files_per_node + FILES_BESIDE_NODES;
        if needed > open_file_limit {
            return Err(ScenarioError::TooManyNodes {
                nodes: plan.nodes,
                needed,
                limit: open_file_limit,
            });
        }

        let province = Province::new(PROVINCE).map_err(|err| OptionsError(err.to_string()))?;
        let nodes: Vec<NodeId> = (0..plan.nodes)
            .map(|index| NodeId::new(format!("{}-{index:05}", plan.prefix)))
            .collect::<Result<_, _>>()
            .map_err(|err| OptionsError(err.to_string()))?;

        let dir = tempfile::Builder::new()
            .prefix("tollway-loadtest-pki-")
            .tempdir()
            .map_err(ScenarioError::TempDir)?;
        let pki = FleetPki::create(dir.path())?;
        let tls_configs = if plan.tls {
            let started = Instant::now();
            let configs = pki.client_configs(&nodes)?;
            tracing::info!(
                nodes = configs.len(),
                seconds = started.elapsed().as_secs_f64(),
                "node certificates issued"
            );
            configs
        } else {
            Vec::new()
        };

        Ok(FleetSetup {
            province,
            nodes,
            pki,
            tls_configs,
            _dir: dir,
        })
    }

    /// Returns the spec of a fleet that logs in over `transport`, with no
    /// heartbeat; the broker's address is filled in once it listens.
    pub fn spec(&self, common: &CommonOptions, transport: Transport) -> FleetSpec {
        let access = match transport {
            Transport::Tls => Access::Tls(self.tls_configs.clone()),
            Transport::Tcp => Access::Password {
                username: PLAIN_USER.to_string(),
                password: PLAIN_PASSWORD.to_string(),
            },
        };
        FleetSpec {
            province: self.province,
            nodes: self.nodes.clone(),
            broker: SocketAddr::from(([127, 0, 0, 1], 0)),
            access,
            keep_alive: common.keep_alive(),
            connect_timeout: common.connect_timeout(),
            heartbeat: None,
            retry: common.retry(),
            tasks: common.tasks as usize,
        }
    }
}
