//! Topic access for nodes on a provincial broker. A node may use only the
//! topics of the wire contract under `tollway/v1/{province}/node/{node}/`,
//! where `{node}` is its client id, which the authenticator has already
//! tied to the certificate's CN. It publishes the kinds a node sends
//! (status, presence, records, summary, cmd/result) and subscribes to the
//! kinds it receives (desired, cmd, records/ack), each by its exact topic.
//! Only its presence may be retained. The same rule applies to the will
//! message of its CONNECT, which rmqtt publishes without these hooks; the
//! authenticator checks it. So a node cannot fill the broker's retained
//! store, which every node's desired state depends on, nor pose as the
//! centre on its own desired state.
//!
//! This replaces the `rmqtt-acl` plugin. That plugin expands its `%u`
//! placeholder rules in a task spawned on `ClientConnected`, which races
//! the client's first packets. On a busy broker a node's first SUBSCRIBE
//! was rejected, so it never got its acknowledgements or desired state, and
//! its first PUBLISH disconnected it. The check here compares the topic
//! with a prefix built from the session's own client id. It keeps no state
//! per client, so it cannot race.
//!
//! Password logins are superusers; rmqtt skips ACL hooks for them.

use async_trait::async_trait;
use rmqtt::codec::v5::SubscribeAckReason;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::types::{PublishAclResult, SubscribeAclResult};
use tollway_topics::Province;
use tollway_topics::topic::{NodeKind, PREFIX};

/// Hook for `ClientSubscribeCheckAcl` and `MessagePublishCheckAcl`; the
/// authenticator also uses it to judge a node's will message.
#[derive(Debug, Clone)]
pub struct NodeAcl {
    province: Province,
}

impl NodeAcl {
    pub fn new(province: Province) -> Self {
        NodeAcl { province }
    }

    /// Returns the kind of node `client_id`'s own topic `topic`, or `None`
    /// for any other topic or filter. Wildcards never match a kind.
    fn own_kind(&self, client_id: &str, topic: &str) -> Option<NodeKind> {
        let own = format!("{PREFIX}/{}/node/{client_id}/", self.province);
        NodeKind::from_suffix(topic.strip_prefix(own.as_str())?)
    }

    /// Reports whether node `client_id` may subscribe to `filter`: the exact
    /// topic of a kind the node receives.
    fn allows_subscribe(&self, client_id: &str, filter: &str) -> bool {
        self.own_kind(client_id, filter)
            .is_some_and(|kind| !kind.sent_by_node())
    }

    /// Reports whether node `client_id` may set a will on `topic`: only its
    /// own presence, which the will announces offline.
    pub fn allows_will(&self, client_id: &str, topic: &str) -> bool {
        self.own_kind(client_id, topic) == Some(NodeKind::Presence)
    }

    /// Reports whether node `client_id` may publish to `topic`: a kind the
    /// node sends, retained only where the contract retains it.
    pub fn allows_publish(&self, client_id: &str, topic: &str, retain: bool) -> bool {
        self.own_kind(client_id, topic)
            .is_some_and(|kind| kind.sent_by_node() && (!retain || kind.retained()))
    }
}

#[async_trait]
impl Handler for NodeAcl {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                let client_id = &session.id.client_id;
                let filter = &subscribe.topic_filter;
                let result = if self.allows_subscribe(client_id, filter) {
                    SubscribeAclResult::new_success(subscribe.opts.qos(), None)
                } else {
                    tracing::warn!(%client_id, filter = %filter, "subscription outside the node's topics rejected");
                    SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized)
                };
                (false, Some(HookResult::SubscribeAclResult(result)))
            }

            Parameter::MessagePublishCheckAcl(session, publish) => {
                let client_id = &session.id.client_id;
                let result = if self.allows_publish(client_id, &publish.topic, publish.retain) {
                    PublishAclResult::allow()
                } else {
                    // A node publishing outside its topics is broken or
                    // compromised; the broker disconnects it.
                    tracing::warn!(%client_id, topic = %publish.topic, retain = publish.retain, "publish outside the node's topics rejected; disconnecting the node");
                    PublishAclResult::rejected(true, None)
                };
                (false, Some(HookResult::PublishAclResult(result)))
            }

            _ => (true, acc),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl() -> NodeAcl {
        NodeAcl::new(Province::new(44).unwrap())
    }

    #[test]
    fn node_subscribes_to_what_it_receives() {
        let acl = acl();
        for topic in [
            "tollway/v1/44/node/n1/desired",
            "tollway/v1/44/node/n1/cmd",
            "tollway/v1/44/node/n1/records/ack",
        ] {
            assert!(acl.allows_subscribe("n1", topic), "{topic}");
        }
    }

    #[test]
    fn node_publishes_what_it_sends() {
        let acl = acl();
        for topic in [
            "tollway/v1/44/node/n1/status",
            "tollway/v1/44/node/n1/presence",
            "tollway/v1/44/node/n1/records",
            "tollway/v1/44/node/n1/summary",
            "tollway/v1/44/node/n1/cmd/result",
        ] {
            assert!(acl.allows_publish("n1", topic, false), "{topic}");
        }
        assert!(acl.allows_publish("n1", "tollway/v1/44/node/n1/presence", true));
    }

    #[test]
    fn subscriptions_elsewhere_are_refused() {
        let acl = acl();
        for filter in [
            "tollway/v1/44/node/n1/status",
            "tollway/v1/44/node/n1/#",
            "tollway/v1/44/node/n1/+/ack",
            "tollway/v1/44/node/n1",
            "tollway/v1/44/node/n1/junk",
            "tollway/v1/44/node/n2/desired",
            "tollway/v1/44/node/+/desired",
            "tollway/v1/44/node/#",
            "tollway/v1/45/node/n1/desired",
            "tollway/v1/44/center/records",
            "tollway/v1/ops/deployments/a",
            "$share/g/tollway/v1/44/node/n1/desired",
            "#",
            "",
        ] {
            assert!(!acl.allows_subscribe("n1", filter), "{filter}");
        }
    }

    #[test]
    fn publishes_elsewhere_are_refused() {
        let acl = acl();
        for topic in [
            "tollway/v1/44/node/n1/desired",
            "tollway/v1/44/node/n1/cmd",
            "tollway/v1/44/node/n1/records/ack",
            "tollway/v1/44/node/n1/junk/1",
            "tollway/v1/44/node/n1",
            "tollway/v1/44/node/n10/status",
            "tollway/v1/44/node/n2/status",
            "tollway/v1/45/node/n1/status",
            "tollway/v1/44/center/status",
            "tollway/v1/ops/deployments/a",
            "",
        ] {
            assert!(!acl.allows_publish("n1", topic, false), "{topic}");
        }
    }

    #[test]
    fn will_only_on_own_presence() {
        let acl = acl();
        assert!(acl.allows_will("n1", "tollway/v1/44/node/n1/presence"));
        for topic in [
            "tollway/v1/44/node/n1/status",
            "tollway/v1/44/node/n1/desired",
            "tollway/v1/44/node/n2/presence",
            "tollway/v1/ops/deployments/a",
        ] {
            assert!(!acl.allows_will("n1", topic), "{topic}");
        }
    }

    #[test]
    fn only_presence_may_be_retained() {
        let acl = acl();
        for kind in ["status", "records", "summary", "cmd/result"] {
            let topic = format!("tollway/v1/44/node/n1/{kind}");
            assert!(!acl.allows_publish("n1", &topic, true), "{topic}");
        }
    }
}
