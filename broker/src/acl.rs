//! Topic access for nodes on a provincial broker: a node may publish and
//! subscribe only under `tollway/v1/{province}/node/{node}/`, where
//! `{node}` is its client id, which the authenticator has already tied to
//! the certificate's CN.
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
use tollway_topics::topic::PREFIX;

/// Hook for `ClientSubscribeCheckAcl` and `MessagePublishCheckAcl`.
pub struct NodeAcl {
    province: Province,
}

impl NodeAcl {
    pub fn new(province: Province) -> Self {
        NodeAcl { province }
    }

    /// Reports whether node `client_id` may use `topic`, a topic name or filter.
    /// The node's own topic and everything below it are allowed; wildcards
    /// are allowed only below it, so `+` cannot stand for the node id.
    fn allows(&self, client_id: &str, topic: &str) -> bool {
        let own = format!("{PREFIX}/{}/node/{client_id}", self.province);
        match topic.strip_prefix(own.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

#[async_trait]
impl Handler for NodeAcl {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                let client_id = &session.id.client_id;
                let filter = &subscribe.topic_filter;
                let result = if self.allows(client_id, filter) {
                    SubscribeAclResult::new_success(subscribe.opts.qos(), None)
                } else {
                    tracing::warn!(%client_id, filter = %filter, "subscription outside the node's topics rejected");
                    SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized)
                };
                (false, Some(HookResult::SubscribeAclResult(result)))
            }

            Parameter::MessagePublishCheckAcl(session, publish) => {
                let client_id = &session.id.client_id;
                let result = if self.allows(client_id, &publish.topic) {
                    PublishAclResult::allow()
                } else {
                    // A node publishing outside its subtree is broken or
                    // compromised; the broker disconnects it.
                    tracing::warn!(%client_id, topic = %publish.topic, "publish outside the node's topics rejected; disconnecting the node");
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
    fn own_subtree_is_allowed() {
        let acl = acl();
        for topic in [
            "tollway/v1/44/node/n1",
            "tollway/v1/44/node/n1/records",
            "tollway/v1/44/node/n1/records/ack",
            "tollway/v1/44/node/n1/#",
            "tollway/v1/44/node/n1/+/ack",
        ] {
            assert!(acl.allows("n1", topic), "{topic}");
        }
    }

    #[test]
    fn everything_else_is_refused() {
        let acl = acl();
        for topic in [
            "tollway/v1/44/node/n2/records",
            "tollway/v1/44/node/n10/records",
            "tollway/v1/44/node/n1x/records",
            "tollway/v1/44/node/+/desired",
            "tollway/v1/44/node/#",
            "tollway/v1/45/node/n1/records",
            "tollway/v1/44/center/records",
            "tollway/v1/ops/deployments/a",
            "$share/g/tollway/v1/44/node/n1/records",
            "#",
            "",
        ] {
            assert!(!acl.allows("n1", topic), "{topic}");
        }
    }
}
