//! The fleet's small PKI: a CA, node client certificates whose CN is the
//! node id, and broker server certificates, all generated with rcgen.
//!
//! Layout of a PKI directory:
//! - `ca.crt`, `ca.key`: the CA certificate and its private key
//! - `nodes/{node}.crt`, `nodes/{node}.key`: one pair per node
//! - `servers/{host}.crt`, `servers/{host}.key`: one pair per broker host
//!
//! Every file is created with mode 0600 and an existing file is never
//! overwritten unless the caller passes `force`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use tollway_topics::NodeId;

use crate::files::{FileError, write_private};

/// A PKI operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(transparent)]
    File(#[from] FileError),

    #[error(
        "invalid CA name {name:?}: {reason}; pass --name with 1 to 64 printable characters, \
         e.g. --name \"Tollway Guangdong (44) CA\""
    )]
    InvalidCaName { name: String, reason: &'static str },

    #[error("cannot read {path}: {source}; run `tollwayctl pki init` first")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot generate {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },

    #[error("invalid host name {host:?} for a server certificate: {source}")]
    Host {
        host: String,
        #[source]
        source: rcgen::Error,
    },

    #[error("invalid validity of {days} days; use 1 to 36500")]
    Validity { days: u32 },
}

/// Common name of a CA when `pki init` is not given `--name`.
pub const DEFAULT_CA_NAME: &str = "Tollway fleet CA";

/// Longest common name X.509 allows (RFC 5280, ub-common-name).
const MAX_COMMON_NAME_CHARS: usize = 64;

/// Checks a CA name: not blank, at most 64 characters, no control
/// characters.
fn check_ca_name(name: &str) -> Result<(), PkiError> {
    let invalid = |reason| {
        Err(PkiError::InvalidCaName {
            name: name.to_string(),
            reason,
        })
    };
    if name.trim().is_empty() {
        return invalid("it is empty");
    }
    if name.chars().count() > MAX_COMMON_NAME_CHARS {
        return invalid("it is longer than 64 characters");
    }
    if name.chars().any(char::is_control) {
        return invalid("it contains a control character");
    }
    Ok(())
}

/// Paths of one certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Creates the CA `ca_name` in `dir`: a self-signed certificate valid for
/// `days`.
pub fn init_ca(dir: &Path, ca_name: &str, days: u32, force: bool) -> Result<Issued, PkiError> {
    let validity = validity(days)?;
    check_ca_name(ca_name)?;
    let key = generate_key("the CA key")?;

    let mut params = CertificateParams::default();
    params.distinguished_name = name(ca_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params.not_before, params.not_after) = validity;
    let cert = params
        .self_signed(&key)
        .map_err(|source| PkiError::Generate {
            what: "the CA certificate".to_string(),
            source,
        })?;

    let issued = Issued {
        cert: dir.join("ca.crt"),
        key: dir.join("ca.key"),
    };
    write_pair(&issued, &cert.pem(), &key.serialize_pem(), force)?;
    Ok(issued)
}

/// Issues a client certificate for `node`, signed by the CA in `dir`. The
/// CN is the node id, which the provincial broker uses as the username.
pub fn issue_node(dir: &Path, node: &NodeId, days: u32, force: bool) -> Result<Issued, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(node.as_str());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    (params.not_before, params.not_after) = validity(days)?;

    let issued = Issued {
        cert: dir.join("nodes").join(format!("{node}.crt")),
        key: dir.join("nodes").join(format!("{node}.key")),
    };
    sign_and_write(
        dir,
        params,
        &issued,
        &format!("the certificate of node {node}"),
        force,
    )?;
    Ok(issued)
}

/// Issues a server certificate for `host` (a DNS name or an IP address),
/// signed by the CA in `dir`.
pub fn issue_server(dir: &Path, host: &str, days: u32, force: bool) -> Result<Issued, PkiError> {
    let san = match host.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(host.try_into().map_err(|source| PkiError::Host {
            host: host.to_string(),
            source,
        })?),
    };
    // The host becomes a file name, so it must not contain a path.
    if host.contains(['/', '\\']) || host.starts_with('.') {
        return Err(PkiError::Host {
            host: host.to_string(),
            source: rcgen::Error::InvalidNameType,
        });
    }

    let mut params = CertificateParams::default();
    params.distinguished_name = name(host);
    params.subject_alt_names = vec![san];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    (params.not_before, params.not_after) = validity(days)?;

    let issued = Issued {
        cert: dir.join("servers").join(format!("{host}.crt")),
        key: dir.join("servers").join(format!("{host}.key")),
    };
    sign_and_write(
        dir,
        params,
        &issued,
        &format!("the server certificate of {host}"),
        force,
    )?;
    Ok(issued)
}

fn sign_and_write(
    dir: &Path,
    params: CertificateParams,
    issued: &Issued,
    what: &str,
    force: bool,
) -> Result<(), PkiError> {
    let ca_cert_path = dir.join("ca.crt");
    let ca_key_path = dir.join("ca.key");
    let ca_cert = read(&ca_cert_path)?;
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?).map_err(|source| PkiError::Generate {
        what: format!("a signer from {}", ca_key_path.display()),
        source,
    })?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca_cert, ca_key).map_err(|source| PkiError::Generate {
            what: format!("a signer from {}", ca_cert_path.display()),
            source,
        })?;

    let key = generate_key(what)?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| PkiError::Generate {
            what: what.to_string(),
            source,
        })?;
    write_pair(issued, &cert.pem(), &key.serialize_pem(), force)
}

/// Writes both files, or neither when either already exists without `force`.
fn write_pair(issued: &Issued, cert_pem: &str, key_pem: &str, force: bool) -> Result<(), PkiError> {
    if !force {
        for path in [&issued.cert, &issued.key] {
            if path.exists() {
                return Err(FileError::Exists { path: path.clone() }.into());
            }
        }
    }
    write_private(&issued.key, key_pem.as_bytes(), force)?;
    write_private(&issued.cert, cert_pem.as_bytes(), force)?;
    Ok(())
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::ReadCa {
        path: path.to_path_buf(),
        source,
    })
}

fn generate_key(what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate().map_err(|source| PkiError::Generate {
        what: what.to_string(),
        source,
    })
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(DnType::OrganizationName, "Tollway");
    name
}

/// Validity from one hour ago (tolerating clock skew between hosts) to
/// `days` from now.
fn validity(days: u32) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    if !(1..=36_500).contains(&days) {
        return Err(PkiError::Validity { days });
    }
    let now = OffsetDateTime::now_utc();
    Ok((
        now - Duration::hours(1),
        now + Duration::days(i64::from(days)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_and_issue_write_private_files() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca(dir.path(), DEFAULT_CA_NAME, 3650, false).unwrap();
        let node = issue_node(dir.path(), &NodeId::new("g44-0001").unwrap(), 825, false).unwrap();
        let server = issue_server(dir.path(), "127.0.0.1", 825, false).unwrap();

        for path in [
            &ca.cert,
            &ca.key,
            &node.cert,
            &node.key,
            &server.cert,
            &server.key,
        ] {
            assert_eq!(mode(path), 0o600, "{} is not 0600", path.display());
        }
        let pem = std::fs::read_to_string(&node.cert).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    }

    #[test]
    fn existing_files_are_kept_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let first = init_ca(dir.path(), DEFAULT_CA_NAME, 3650, false).unwrap();
        let before = std::fs::read(&first.key).unwrap();

        let err = init_ca(dir.path(), DEFAULT_CA_NAME, 3650, false).unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
        assert_eq!(
            std::fs::read(&first.key).unwrap(),
            before,
            "the CA key was replaced"
        );

        init_ca(dir.path(), DEFAULT_CA_NAME, 3650, true).unwrap();
        assert_ne!(
            std::fs::read(&first.key).unwrap(),
            before,
            "--force did not replace the key"
        );
    }

    #[test]
    fn ca_carries_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca(dir.path(), "Tollway Guangdong (44) CA", 3650, false).unwrap();

        // The CN is a UTF8String in the DER, so its bytes appear as they are.
        let pem = std::fs::read(&ca.cert).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        let name = b"Tollway Guangdong (44) CA";
        assert!(
            der.windows(name.len()).any(|window| window == name),
            "the CA certificate does not carry its name"
        );
        for bad in [" ", "bad\nname", &"x".repeat(65)] {
            assert!(
                matches!(
                    init_ca(dir.path(), bad, 3650, true),
                    Err(PkiError::InvalidCaName { .. })
                ),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn issued_certificates_are_kept_without_force() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), DEFAULT_CA_NAME, 3650, false).unwrap();
        let node_id = NodeId::new("g44-0001").unwrap();
        let node = issue_node(dir.path(), &node_id, 825, false).unwrap();
        let server = issue_server(dir.path(), "127.0.0.1", 825, false).unwrap();
        let before = (
            std::fs::read(&node.key).unwrap(),
            std::fs::read(&server.key).unwrap(),
        );

        assert!(issue_node(dir.path(), &node_id, 825, false).is_err());
        assert!(issue_server(dir.path(), "127.0.0.1", 825, false).is_err());
        assert_eq!(std::fs::read(&node.key).unwrap(), before.0);
        assert_eq!(std::fs::read(&server.key).unwrap(), before.1);

        issue_node(dir.path(), &node_id, 825, true).unwrap();
        issue_server(dir.path(), "127.0.0.1", 825, true).unwrap();
        assert_ne!(std::fs::read(&node.key).unwrap(), before.0);
        assert_ne!(std::fs::read(&server.key).unwrap(), before.1);
    }

    #[test]
    fn issuing_without_ca_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = issue_node(dir.path(), &NodeId::new("n1").unwrap(), 30, false).unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
        assert!(err.to_string().contains("pki init"), "{err}");
    }

    #[test]
    fn host_with_path_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), DEFAULT_CA_NAME, 30, false).unwrap();
        assert!(matches!(
            issue_server(dir.path(), "../evil", 30, false),
            Err(PkiError::Host { .. })
        ));
    }

    #[test]
    fn zero_days_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            init_ca(dir.path(), DEFAULT_CA_NAME, 0, false),
            Err(PkiError::Validity { days: 0 })
        ));
    }
}
