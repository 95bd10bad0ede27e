//! The node's MQTT link to its provincial broker, over mutual TLS.
//!
//! One task ([`Link::run`]) owns the rumqttc event loop and only polls it:
//! it never awaits a publish or subscribe. Other tasks publish through a
//! [`LinkHandle`], which refuses at once when the link is down or the
//! client's queue is full, so the caller keeps the message and retries.
//! Nothing relies on rumqttc's own queue: it drops every unsent publish when
//! a reconnect starts a new session, and the link discards the whole client
//! after repeated errors. Records are safe in the outbox either way, and
//! the uplink resends them.
//!
//! The session is persistent (clean session off, client id = node id), so
//! the broker keeps the node's subscriptions and queued messages across
//! short outages; when the CONNACK reports that no session was kept, the link
//! subscribes again. The node's retained presence is set online after each
//! CONNACK and offline by the will (or by the link itself on shutdown).

mod config;
mod inbound;
mod session;
mod tls;

use std::sync::{Arc, Mutex};

use rumqttc::{AsyncClient, ClientError, QoS};
use tokio::sync::watch;
use tollway_topics::{NodeId, NodeKind, Province, Topic};

pub use config::{Endpoint, LinkConfig};
pub use inbound::Inbound;
pub use session::Link;
pub use tls::TlsFiles;

/// The link's connection, as other tasks see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkState {
    /// True between a CONNACK and the next connection error.
    pub connected: bool,
    /// Count of CONNACKs since the daemon started. A change means a new
    /// connection, on which anything sent before may have been lost.
    pub connection: u64,
    /// Name of the endpoint in use (or being tried).
    pub endpoint: String,
}

/// Failure to hand a message to the link.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("node {node}: not connected; {kind} not sent")]
    NotConnected { node: NodeId, kind: &'static str },

    #[error("node {node}: the MQTT client's queue is full; {kind} not sent, retry later")]
    Busy { node: NodeId, kind: &'static str },
}

/// Publishes on the node's own topics through the current MQTT client.
#[derive(Clone)]
pub struct LinkHandle {
    node: NodeId,
    province: Province,
    /// The client of the current event loop; the link task replaces it when
    /// it rebuilds the client. Locked only to clone or replace it.
    client: Arc<Mutex<AsyncClient>>,
    state: watch::Receiver<LinkState>,
}

impl LinkHandle {
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// Returns a receiver of the link's state.
    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    pub fn is_connected(&self) -> bool {
        self.state.borrow().connected
    }

    /// Queues `payload` for the node's `kind` topic with QoS 1, not retained.
    /// Returns at once; `Ok` means queued in the client, not delivered.
    pub fn publish(&self, kind: NodeKind, payload: Vec<u8>) -> Result<(), PublishError> {
        let label = kind.suffix();
        if !self.is_connected() {
            return Err(PublishError::NotConnected {
                node: self.node.clone(),
                kind: label,
            });
        }
        let topic = Topic::node(self.province, self.node.clone(), kind).to_string();
        let client = self
            .client
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .map_err(|err| match err {
                ClientError::TryRequest(_) | ClientError::Request(_) => PublishError::Busy {
                    node: self.node.clone(),
                    kind: label,
                },
            })
    }
}
