//! The limit on retained topics (`[retained] max_messages`), kept in O(1)
//! per publish.
//!
//! rmqtt's retainer can enforce such a limit itself, but it counts the
//! retained topics by walking its whole topic tree on every retained
//! publish. With the desired states and presences of 10,000 nodes that walk
//! took half of the broker's CPU while a deployment change reached the
//! fleet, and doubled the time it took (docs/benchmarks.md, "Deployment
//! fan-out").
//! The retainer therefore runs without a limit, and [`RetainedLimit`]
//! keeps the set of retained topics itself: a retained publish to a new
//! topic beyond the limit is delivered with its retain flag cleared, so it
//! is not kept. Replacing or deleting an existing topic always works.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::types::{TopicFilter, TopicName};

use crate::events::Counters;

/// The retained topics and the limit on their number.
pub struct RetainedLimit {
    max_topics: usize,
    /// Largest payload the retainer keeps; a larger one is not counted.
    max_payload_bytes: usize,
    topics: Mutex<HashSet<TopicName>>,
    /// Metrics: the number of topics and of refusals.
    counters: Arc<Counters>,
}

/// The decision on one retained publish.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// The limit is reached and the topic is new: deliver, do not retain.
    Refuse,
}

impl RetainedLimit {
    pub fn new(max_topics: usize, max_payload_bytes: usize, counters: Arc<Counters>) -> Self {
        RetainedLimit {
            max_topics,
            max_payload_bytes,
            topics: Mutex::new(HashSet::new()),
            counters,
        }
    }

    /// Loads the topics the retainer kept from before a restart. Call once
    /// the retainer plugin has started.
    pub async fn load(&self, scx: &ServerContext) -> anyhow::Result<usize> {
        let stored = scx
            .extends
            .retain()
            .await
            .get(&TopicFilter::from("#"))
            .await?;
        let mut topics = self.lock();
        topics.extend(
            stored
                .into_iter()
                .map(|(topic, _)| TopicName::from(topic.to_string())),
        );
        self.count(&topics);
        Ok(topics.len())
    }

    /// Decides on a retained publish of `payload_len` bytes to `topic` and
    /// updates the set.
    fn judge(&self, topic: &TopicName, payload_len: usize) -> Verdict {
        let mut topics = self.lock();
        if payload_len == 0 {
            topics.remove(topic);
            self.count(&topics);
            return Verdict::Keep;
        }
        if payload_len > self.max_payload_bytes || topics.contains(topic) {
            return Verdict::Keep;
        }
        if topics.len() >= self.max_topics {
            self.counters
                .retained_refusals
                .fetch_add(1, Ordering::Relaxed);
            return Verdict::Refuse;
        }
        // An owned copy: the topic of a decoded packet can share the
        // connection's read buffer, which a clone would keep alive.
        topics.insert(TopicName::from(topic.to_string()));
        self.count(&topics);
        Verdict::Keep
    }

    fn count(&self, topics: &HashSet<TopicName>) {
        self.counters
            .retained_topics
            .store(topics.len() as u64, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<TopicName>> {
        match self.topics.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Hook for `MessagePublish` that applies a [`RetainedLimit`].
pub struct RetainedLimitHook {
    limit: Arc<RetainedLimit>,
}

impl RetainedLimitHook {
    pub fn new(limit: Arc<RetainedLimit>) -> Self {
        RetainedLimitHook { limit }
    }
}

#[async_trait]
impl Handler for RetainedLimitHook {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let Parameter::MessagePublish(_, from, publish) = param else {
            return (true, acc);
        };
        if !publish.retain {
            return (true, acc);
        }
        if self.limit.judge(&publish.topic, publish.payload.len()) == Verdict::Keep {
            return (true, acc);
        }

        tracing::warn!(
            topic = %publish.topic,
            client_id = %from.client_id,
            max_messages = self.limit.max_topics,
            "retained store is full; message delivered but not retained. Raise [retained] max_messages or delete unused retained topics"
        );
        let mut delivered = (*publish).clone();
        delivered.retain = false;
        (true, Some(HookResult::Publish(delivered)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> TopicName {
        TopicName::from(name.to_string())
    }

    fn limit(max_topics: usize, max_payload_bytes: usize) -> RetainedLimit {
        RetainedLimit::new(max_topics, max_payload_bytes, Arc::new(Counters::new(&[])))
    }

    impl RetainedLimit {
        fn len(&self) -> u64 {
            self.counters.retained_topics.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn new_topics_beyond_the_limit_are_refused() {
        let limit = limit(2, 1024);
        assert_eq!(limit.judge(&topic("a"), 1), Verdict::Keep);
        assert_eq!(limit.judge(&topic("b"), 1), Verdict::Keep);
        assert_eq!(limit.judge(&topic("c"), 1), Verdict::Refuse);
        assert_eq!(limit.len(), 2);
        assert_eq!(limit.counters.retained_refusals.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn replacing_and_deleting_work_at_the_limit() {
        let limit = limit(2, 1024);
        limit.judge(&topic("a"), 1);
        limit.judge(&topic("b"), 1);

        assert_eq!(limit.judge(&topic("a"), 5), Verdict::Keep);
        assert_eq!(limit.judge(&topic("b"), 0), Verdict::Keep);
        assert_eq!(limit.len(), 1);
        assert_eq!(limit.judge(&topic("c"), 1), Verdict::Keep);
    }

    #[test]
    fn oversized_payloads_are_not_counted() {
        let limit = limit(1, 10);
        assert_eq!(limit.judge(&topic("big"), 11), Verdict::Keep);
        assert_eq!(limit.len(), 0);
        assert_eq!(limit.judge(&topic("a"), 10), Verdict::Keep);
    }
}
