//! Authentication of every CONNECT: the rmqtt hook that decides, per
//! listener, who may log in.
//!
//! - Node listener: the TLS layer has already verified the client
//!   certificate. The username is the certificate's CN (rmqtt replaces
//!   whatever username the client sent), and it must be a valid node id and
//!   equal the client id, so that one node cannot take over another node's
//!   session by reusing its client id. A will message must be on the
//!   node's own presence, because rmqtt publishes wills without the
//!   publish check. Topic access is then `acl.rs`.
//! - Password listeners: the username and password must match the
//!   listener's password file. A valid login is a superuser, which rmqtt
//!   exempts from the publish and subscribe checks.
//!
//! A listener at its `max_connections` rejects further clients.

use std::sync::Arc;

use async_trait::async_trait;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::types::{AuthResult, ConnectInfo, LastWill};
use tollway_topics::NodeId;

use crate::acl::NodeAcl;
use crate::events::Counters;
use crate::listeners::{ListenerTable, Role};

/// Hook for `ClientAuthenticate`.
pub struct Authenticator {
    listeners: ListenerTable,
    counters: Arc<Counters>,
    /// The node topic rules, on a provincial broker.
    node_acl: Option<NodeAcl>,
}

/// The reason a CONNECT was rejected. It is logged but never sent to the
/// client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejection {
    UnknownListener,
    ListenerFull,
    MissingCertificateCn,
    CnNotNodeId,
    ClientIdNotCn,
    WillOutsideNodeTopics,
    MissingCredentials,
    WrongCredentials,
}

impl Rejection {
    fn reason(self) -> &'static str {
        match self {
            Rejection::UnknownListener => "connection on a listener the broker did not configure",
            Rejection::ListenerFull => "listener is at max_connections",
            Rejection::MissingCertificateCn => "client certificate has no common name",
            Rejection::CnNotNodeId => "certificate common name is not a valid node id",
            Rejection::ClientIdNotCn => "client id differs from the certificate common name",
            Rejection::WillOutsideNodeTopics => {
                "will message is not the node's presence (the only will a node may set)"
            }
            Rejection::MissingCredentials => "username or password missing",
            Rejection::WrongCredentials => "unknown username or wrong password",
        }
    }
}

impl Authenticator {
    pub fn new(
        listeners: ListenerTable,
        counters: Arc<Counters>,
        node_acl: Option<NodeAcl>,
    ) -> Self {
        Authenticator {
            listeners,
            counters,
            node_acl,
        }
    }

    /// Decides one CONNECT: `Ok(superuser)` accepts it.
    async fn decide(&self, connect: &ConnectInfo) -> Result<bool, Rejection> {
        let id = connect.id();
        let Some(listener) = self.listeners.get(&id.lid) else {
            return Err(Rejection::UnknownListener);
        };
        // NOTE: a full listener sends CONNACK "not authorised", not
        // "server unavailable": an authentication hook can only return an
        // authentication result, and rmqtt 0.24 runs no CONNACK hook for a
        // refused connection, so the code cannot be rewritten later. The
        // count is read before the connection is added, so a burst of
        // simultaneous handshakes can overshoot the limit by up to
        // max_handshaking_limit.
        if listener.connection_count() >= listener.max_connections {
            return Err(Rejection::ListenerFull);
        }

        match &listener.role {
            Role::Node => {
                let cn = certificate_cn(connect).ok_or(Rejection::MissingCertificateCn)?;
                NodeId::new(cn.as_str()).map_err(|_| Rejection::CnNotNodeId)?;
                if &*id.client_id != cn.as_str() {
                    return Err(Rejection::ClientIdNotCn);
                }
                if let Some(will) = connect.last_will() {
                    let topic = match will {
                        LastWill::V3(will) => &will.topic,
                        LastWill::V5(will) => &will.topic,
                    };
                    let allowed = self
                        .node_acl
                        .as_ref()
                        .is_some_and(|acl| acl.allows_will(&cn, topic));
                    if !allowed {
                        return Err(Rejection::WillOutsideNodeTopics);
                    }
                }
                Ok(false)
            }
            Role::Password(passwords) => {
                let (Some(user), Some(password)) = (connect.username(), connect.password()) else {
                    return Err(Rejection::MissingCredentials);
                };
                let passwords = passwords.clone();
                let user = user.to_string();
                let password = password.to_vec();
                // Argon2 takes tens of milliseconds of CPU; keep it off the
                // async workers.
                let verified =
                    tokio::task::spawn_blocking(move || passwords.verify(&user, &password))
                        .await
                        .unwrap_or(false);
                if verified {
                    Ok(true)
                } else {
                    Err(Rejection::WrongCredentials)
                }
            }
        }
    }
}

/// Returns the CN of the verified client certificate, as rmqtt extracted it.
/// rmqtt keeps the client's own username when a certificate has no CN, so
/// the username alone cannot be trusted to be the CN.
fn certificate_cn(connect: &ConnectInfo) -> Option<String> {
    let cert = match connect {
        ConnectInfo::V3(_, c) => c.cert.as_ref(),
        ConnectInfo::V5(_, c) => c.cert.as_ref(),
    }?;
    let cn = cert.common_name.clone()?;
    (connect.username().map(|u| u.as_ref()) == Some(cn.as_str())).then_some(cn)
}

#[async_trait]
impl Handler for Authenticator {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(connect) => match self.decide(connect).await {
                Ok(superuser) => (
                    false,
                    Some(HookResult::AuthResult(AuthResult::Allow(superuser, None))),
                ),
                Err(rejection) => {
                    let id = connect.id();
                    let listener = self
                        .listeners
                        .get(&id.lid)
                        .map(|l| l.name)
                        .unwrap_or("unknown");
                    tracing::warn!(
                        listener,
                        client_id = %id.client_id,
                        username = id.username.as_deref().unwrap_or(""),
                        remote_addr = ?id.remote_addr,
                        reason = rejection.reason(),
                        "connection rejected"
                    );
                    self.counters.count_rejection(listener);
                    (
                        false,
                        Some(HookResult::AuthResult(AuthResult::NotAuthorized)),
                    )
                }
            },

            _ => (true, acc),
        }
    }
}
