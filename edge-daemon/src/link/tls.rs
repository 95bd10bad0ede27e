//! The node's TLS client configuration, read once at start-up from the PEM
//! files named in the `link` section.
//!
//! The rustls configuration is built with the `ring` provider explicitly:
//! the workspace links both of rustls' crypto back-ends, and rustls refuses
//! to pick one by itself when both are present.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::LinkConfig;

/// Failure to read or use the node's TLS files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "link.{key} = {path}: cannot read a PEM {content}: {source}; check the path and the file's contents"
    )]
    Read {
        key: &'static str,
        path: PathBuf,
        content: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },

    #[error("link.{key} = {path}: the file contains no {content}")]
    Empty {
        key: &'static str,
        path: PathBuf,
        content: &'static str,
    },

    #[error("link.ca_file = {path}: a CA certificate is invalid: {source}")]
    InvalidCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },

    #[error("link.cert_file and link.key_file do not form a usable client identity: {source}")]
    InvalidIdentity {
        #[source]
        source: rustls::Error,
    },
}

/// The TLS client configuration shared by every connection attempt.
#[derive(Clone)]
pub struct TlsFiles {
    pub client_config: Arc<ClientConfig>,
}

impl TlsFiles {
    /// Reads the CA, certificate and key files and builds the configuration.
    pub fn load(config: &LinkConfig) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in read_certificates("ca_file", &config.ca_file)? {
            roots.add(ca).map_err(|source| TlsError::InvalidCa {
                path: config.ca_file.clone(),
                source,
            })?;
        }
        let chain = read_certificates("cert_file", &config.cert_file)?;
        let key =
            PrivateKeyDer::from_pem_file(&config.key_file).map_err(|source| TlsError::Read {
                key: "key_file",
                path: config.key_file.clone(),
                content: "private key",
                source,
            })?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::InvalidIdentity { source })?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|source| TlsError::InvalidIdentity { source })?;
        Ok(TlsFiles {
            client_config: Arc::new(client_config),
        })
    }
}

fn read_certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |source| TlsError::Read {
        key,
        path: path.to_path_buf(),
        content: "certificate",
        source,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    if certificates.is_empty() {
        return Err(TlsError::Empty {
            key,
            path: path.to_path_buf(),
            content: "certificate",
        });
    }
    Ok(certificates)
}
