//! Shared subscriptions (`$share/{group}/{filter}`): which member of a group
//! receives each message.
//!
//! rmqtt 0.24's built-in strategy reports shared subscriptions as
//! unsupported, so a `$share/...` filter matches nothing until a strategy is
//! installed. Tollway's strategy hashes the topic name over the group's
//! members sorted by client id. Every message of one node's records topic
//! therefore reaches the same ingest process while the group is unchanged,
//! which keeps each node's sequence numbers in one store. Members with a
//! persistent session stay in the group while disconnected, and their share
//! is queued for them like any other offline message.

use std::hash::{DefaultHasher, Hash, Hasher};

use async_trait::async_trait;
use rmqtt::context::ServerContext;
use rmqtt::subscribe::SharedSubscription;
use rmqtt::types::{
    ClientId, Id, IsOnline, NodeId, SharedGroup, SubscriptionIdentifier, SubscriptionOptions,
    TopicName,
};

/// The topic-hash strategy for shared subscriptions.
pub struct TopicHashSharing;

/// One member of a shared group, as rmqtt's router lists it.
type Member = (
    NodeId,
    ClientId,
    SubscriptionOptions,
    Option<Vec<SubscriptionIdentifier>>,
    Option<IsOnline>,
);

#[async_trait]
impl SharedSubscription for TopicHashSharing {
    fn is_supported(&self) -> bool {
        true
    }

    async fn choice(
        &self,
        _scx: &ServerContext,
        _group: &SharedGroup,
        _publisher_id: &Id,
        topic: &TopicName,
        members: &[Member],
    ) -> Option<(usize, IsOnline)> {
        let index = choose_member(topic, members.iter().map(|member| member.1.as_ref()))?;
        let online = members[index].4.unwrap_or(false);
        Some((index, online))
    }
}

/// Picks the index of the member that receives `topic`: the topic's hash
/// over the client ids in sorted order, so the choice does not depend on the
/// order in which the router lists the members.
fn choose_member<'a>(topic: &str, client_ids: impl Iterator<Item = &'a str>) -> Option<usize> {
    let mut sorted: Vec<(usize, &str)> = client_ids.enumerate().collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(|a, b| a.1.cmp(b.1));

    let mut hasher = DefaultHasher::new();
    topic.hash(&mut hasher);
    let slot = (hasher.finish() % sorted.len() as u64) as usize;
    Some(sorted[slot].0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_ignores_member_order() {
        let forward = ["ingest-a", "ingest-b", "ingest-c"];
        let backward = ["ingest-c", "ingest-b", "ingest-a"];
        for node in 0..100 {
            let topic = format!("tollway/v1/44/node/n{node}/records");
            let a = choose_member(&topic, forward.into_iter()).unwrap();
            let b = choose_member(&topic, backward.into_iter()).unwrap();
            assert_eq!(forward[a], backward[b], "{topic}");
        }
    }

    #[test]
    fn choice_spreads_topics_over_members() {
        let members = ["ingest-a", "ingest-b"];
        let mut counts = [0usize; 2];
        for node in 0..1000 {
            let topic = format!("tollway/v1/44/node/n{node}/records");
            counts[choose_member(&topic, members.into_iter()).unwrap()] += 1;
        }
        assert!(counts[0] > 300, "{counts:?}");
        assert!(counts[1] > 300, "{counts:?}");
    }

    #[test]
    fn empty_group_has_no_choice() {
        assert_eq!(choose_member("t", std::iter::empty()), None);
    }
}
