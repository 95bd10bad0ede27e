//! Messages the centre sends to the node, handed from the link's polling
//! task to the tasks that act on them without waiting.

use rumqttc::Publish;
use tokio::sync::{mpsc, watch};
use tollway_topics::{Message, NodeId, NodeKind, RecordAck, Topic};

use crate::apps::DesiredInbox;

/// Destinations of the messages the link receives.
pub struct Inbound {
    /// The newest payload on the node's `desired` topic, for the app manager.
    pub desired: DesiredInbox,
    /// Raw payloads from the `cmd` topic, for the command task. When it is
    /// full, a command is dropped with a warning; commands are not state,
    /// and the centre sends them again while their cause remains.
    pub commands: mpsc::Sender<Vec<u8>>,
    /// The highest `stored_through` the centre has acknowledged, for the
    /// uplink. Only ever raised.
    pub acks: watch::Sender<u64>,
}

impl Inbound {
    /// Routes one received publish by its topic. It never waits, because
    /// every hand-off is a watch update or a `try_send`.
    pub(crate) fn dispatch(&self, node: &NodeId, publish: Publish) {
        let kind = match Topic::parse(&publish.topic) {
            Ok(Topic::Node { node: to, kind, .. }) if &to == node => kind,
            _ => {
                tracing::warn!(node = %node, topic = %publish.topic, "ignoring a message on a topic the node does not handle");
                return;
            }
        };

        match kind {
            NodeKind::Desired => {
                tracing::info!(node = %node, bytes = publish.payload.len(), "desired state received");
                self.desired.send_replace(Some(publish.payload.to_vec()));
            }
            NodeKind::Command => {
                if self.commands.try_send(publish.payload.to_vec()).is_err() {
                    tracing::warn!(node = %node, "command queue full; dropping the command (the centre sends it again)");
                }
            }
            NodeKind::RecordsAck => match RecordAck::from_cbor(&publish.payload) {
                Ok(ack) => {
                    self.acks.send_if_modified(|highest| {
                        let raised = ack.stored_through > *highest;
                        *highest = (*highest).max(ack.stored_through);
                        raised
                    });
                }
                Err(err) => {
                    tracing::warn!(node = %node, error = %err, "ignoring an invalid record acknowledgement");
                }
            },
            other => {
                tracing::warn!(node = %node, topic = %publish.topic, kind = other.suffix(), "ignoring a message on a node-to-centre topic");
            }
        }
    }
}
