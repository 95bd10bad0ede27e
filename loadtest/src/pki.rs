//! A throw-away PKI for one load-test run: a CA, a server certificate for
//! 127.0.0.1 and one client certificate per simulated node (CN = node id,
//! as in production), turned into rustls client configurations.
//!
//! Certificates come from the test kit's rcgen CA. Keys are ECDSA P-256.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tollway_testkit::TestCa;
use tollway_topics::NodeId;

/// A PKI file or client configuration that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid PEM for node {node}: {source}")]
    Pem {
        node: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },

    #[error("cannot build the TLS client configuration of node {node}: {source}")]
    Tls {
        node: String,
        #[source]
        source: rustls::Error,
    },
}

/// The CA and server files a broker needs, written to a directory.
pub struct ServerFiles {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// One run's CA, with the server certificate already written to disk.
pub struct FleetPki {
    ca: TestCa,
    pub server: ServerFiles,
}

impl FleetPki {
    /// Creates a CA and writes `ca.crt`, `server.crt` and `server.key` to `dir`.
    pub fn create(dir: &Path) -> Result<Self, PkiError> {
        let ca = TestCa::new("tollway-loadtest CA");
        let server = ca.server_cert();
        let server = ServerFiles {
            ca_file: write(dir, "ca.crt", &ca.cert_pem)?,
            cert_file: write(dir, "server.crt", &server.cert)?,
            key_file: write(dir, "server.key", &server.key)?,
        };
        Ok(FleetPki { ca, server })
    }

    /// Issues a client certificate for each node and returns one rustls
    /// configuration per node, in the same order.
    pub fn client_configs(&self, nodes: &[NodeId]) -> Result<Vec<Arc<ClientConfig>>, PkiError> {
        client_configs(&self.ca, nodes)
    }
}

/// Issues a client certificate from `ca` for each node and returns one
/// rustls configuration per node, in the same order. Every configuration
/// trusts `ca` for the server certificate.
pub fn client_configs(ca: &TestCa, nodes: &[NodeId]) -> Result<Vec<Arc<ClientConfig>>, PkiError> {
    let roots = root_store(ca)?;
    nodes
        .iter()
        .map(|node| client_config(ca, node, roots.clone()))
        .collect()
}

fn root_store(ca: &TestCa) -> Result<Arc<rustls::RootCertStore>, PkiError> {
    let pem_error = |source| PkiError::Pem {
        node: "(CA)".to_string(),
        source,
    };
    let ca = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).map_err(pem_error)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(|source| PkiError::Tls {
        node: "(CA)".to_string(),
        source,
    })?;
    Ok(Arc::new(roots))
}

fn client_config(
    ca: &TestCa,
    node: &NodeId,
    roots: Arc<rustls::RootCertStore>,
) -> Result<Arc<ClientConfig>, PkiError> {
    let pem = ca.node_cert(node.as_str());
    let pem_error = |source| PkiError::Pem {
        node: node.to_string(),
        source,
    };
    let tls_error = |source| PkiError::Tls {
        node: node.to_string(),
        source,
    };
    let cert = CertificateDer::from_pem_slice(pem.cert.as_bytes()).map_err(pem_error)?;
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).map_err(pem_error)?;

    // Both rustls crypto back-ends are linked (ring here, aws-lc-rs
    // through rumqttc's defaults), so the provider is named explicitly.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key)
        .map_err(tls_error)?;
    Ok(Arc::new(config))
}

fn write(dir: &Path, name: &str, contents: &str) -> Result<PathBuf, PkiError> {
    let path = dir.join(name);
    std::fs::write(&path, contents).map_err(|source| PkiError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}
