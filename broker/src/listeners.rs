//! The broker's listeners: how each configured listener becomes an rmqtt
//! listener, and the per-listener facts that the hooks look up by port.
//!
//! rmqtt identifies a listener by its port (its `ListenerId`), and every
//! hook sees that port in the client's `Id`, so [`ListenerTable`] is keyed
//! by port too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rmqtt::net::{Builder, Listener};

use crate::config::{CLIENT_MQUEUE_LEN, Config, ListenerLimits, SERVICE_MQUEUE_LEN};
use crate::pacing::Pacer;
use crate::passwords::{PasswordFile, PasswordFileError};

/// How clients of a listener are authenticated.
#[derive(Debug)]
pub enum Role {
    /// Edge nodes: the client certificate's CN is the username (rmqtt's
    /// `cert_cn_as_username`), the client id must equal it, and the ACL
    /// plugin decides CONNECT, PUBLISH and SUBSCRIBE.
    Node,
    /// Services, bridges and ops tools: username and password from a
    /// password file; a valid login is a superuser that bypasses the ACL.
    Password(Arc<PasswordFile>),
}

/// One listener as the hooks see it.
#[derive(Debug)]
pub struct ListenerInfo {
    /// The configuration section, e.g. `node_listener`, used in logs and
    /// metric labels.
    pub name: &'static str,
    pub role: Role,
    pub max_connections: usize,
    /// Connections that completed CONNECT and have not disconnected yet.
    /// Incremented by the connected hook, decremented by the disconnected
    /// hook.
    pub connections: AtomicUsize,
    /// Spaces out new connections; `None` when pacing is off.
    pub pacer: Option<Pacer>,
    /// Time a client has for its TLS and MQTT handshake, pacing included.
    pub handshake_timeout: Duration,
}

impl ListenerInfo {
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// The listeners by port.
pub type ListenerTable = Arc<HashMap<u16, ListenerInfo>>;

/// A listener that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("{listener}: {source}")]
    Passwords {
        listener: &'static str,
        #[source]
        source: PasswordFileError,
    },

    #[error("{listener}: cannot listen on {addr}: {source}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        #[source]
        source: anyhow::Error,
    },
}

/// What one listener needs: its address, limits, TLS files and role.
struct ListenerSpec<'a> {
    name: &'static str,
    bind: SocketAddr,
    limits: &'a ListenerLimits,
    /// Queue length per client when the limits do not set one.
    default_mqueue_len: usize,
    tls: Option<TlsFiles<'a>>,
    role: Role,
}

struct TlsFiles<'a> {
    cert: &'a Path,
    key: &'a Path,
    /// CA certificates for client certificates; `None` means the listener
    /// asks for no client certificate.
    client_ca: Option<&'a Path>,
}

/// Binds every listener of `config`. Binding here, before the broker runs,
/// means that a port in use is reported as a start-up error.
pub fn bind_all(config: &Config) -> Result<(Vec<Listener>, ListenerTable), ListenerError> {
    let mut specs = Vec::new();

    if let Some(node) = &config.node_listener {
        specs.push(ListenerSpec {
            name: "node_listener",
            bind: node.bind,
            limits: &node.limits,
            default_mqueue_len: CLIENT_MQUEUE_LEN,
            tls: Some(TlsFiles {
                cert: &node.cert_file,
                key: &node.key_file,
                client_ca: Some(&node.client_ca_file),
            }),
            role: Role::Node,
        });
    }
    if let Some(bridge) = &config.bridge_listener {
        specs.push(ListenerSpec {
            name: "bridge_listener",
            bind: bridge.bind,
            limits: &bridge.limits,
            default_mqueue_len: CLIENT_MQUEUE_LEN,
            tls: Some(TlsFiles {
                cert: &bridge.cert_file,
                key: &bridge.key_file,
                client_ca: None,
            }),
            role: load_passwords("bridge_listener", &bridge.password_file)?,
        });
    }
    let service = &config.service_listener;
    specs.push(ListenerSpec {
        name: "service_listener",
        bind: service.bind,
        limits: &service.limits,
        default_mqueue_len: SERVICE_MQUEUE_LEN,
        tls: None,
        role: load_passwords("service_listener", &service.password_file)?,
    });

    let mut listeners = Vec::new();
    let mut table = HashMap::new();
    for spec in specs {
        let listener = bind_one(&spec)?;
        table.insert(
            spec.bind.port(),
            ListenerInfo {
                name: spec.name,
                role: spec.role,
                max_connections: spec.limits.max_connections,
                connections: AtomicUsize::new(0),
                pacer: Pacer::new(
                    spec.limits.new_connections_per_second,
                    spec.limits.new_connections_burst,
                ),
                handshake_timeout: Duration::from_secs(spec.limits.handshake_timeout_s),
            },
        );
        listeners.push(listener);
    }
    Ok((listeners, Arc::new(table)))
}

fn load_passwords(listener: &'static str, path: &Path) -> Result<Role, ListenerError> {
    let passwords =
        PasswordFile::load(path).map_err(|source| ListenerError::Passwords { listener, source })?;
    tracing::info!(listener, users = passwords.len(), path = %path.display(), "password file loaded");
    Ok(Role::Password(Arc::new(passwords)))
}

fn bind_one(spec: &ListenerSpec<'_>) -> Result<Listener, ListenerError> {
    let limits = spec.limits;
    let bind_error = |source: anyhow::Error| ListenerError::Bind {
        listener: spec.name,
        addr: spec.bind,
        source,
    };

    // `max_inflight` is validated to be at least 1 by `Config::validate`.
    let max_inflight = NonZeroU16::new(limits.max_inflight).unwrap_or(NonZeroU16::MIN);
    let mut builder = Builder::new()
        .name(spec.name)
        .laddr(spec.bind)
        // Without SO_REUSEADDR a broker restarted within a minute of closing
        // connections fails to bind while old sockets sit in TIME_WAIT.
        .reuseaddr(Some(true))
        .nodelay(true)
        // rmqtt uses max_connections only as the length of the handshake
        // queue; the connection count itself is enforced by our
        // authentication hook (see `auth.rs`).
        .max_connections(limits.max_connections)
        .max_handshaking_limit(limits.max_handshaking_limit)
        .handshake_timeout(Duration::from_secs(limits.handshake_timeout_s))
        .max_packet_size(limits.max_packet_bytes)
        .max_inflight(max_inflight)
        .max_mqueue_len(limits.mqueue_len(spec.default_mqueue_len))
        .allow_zero_keepalive(limits.allow_zero_keepalive)
        .min_keepalive(limits.min_keep_alive_s)
        .max_keepalive(limits.max_keep_alive_s)
        .session_expiry_interval(Duration::from_secs(limits.session_expiry_s))
        .message_expiry_interval(Duration::from_secs(limits.message_expiry_s))
        // Every client must authenticate: a certificate CN or a password.
        .allow_anonymous(false);

    // NOTE: rmqtt-net does the TLS handshake itself and reports a failed
    // one (no client certificate, another CA, expired) only in its log as
    // "TLS accept error". No hook receives it, so the metrics cannot count it.
    if let Some(tls) = &spec.tls {
        builder = builder
            .tls_cert(Some(tls.cert.display().to_string()))
            .tls_key(Some(tls.key.display().to_string()));
        if let Some(client_ca) = tls.client_ca {
            builder = builder
                .tls_cross_certificate(true)
                .tls_client_ca_certs(Some(client_ca.display().to_string()))
                .cert_cn_as_username(true)
                // Hands the certificate to the authentication hook, which
                // checks that the username really is the CN.
                .collect_cert_info(true);
        }
    }

    let listener = builder.bind().map_err(bind_error)?;
    match spec.tls {
        Some(_) => listener.tls().map_err(bind_error),
        None => listener.tcp().map_err(bind_error),
    }
}
