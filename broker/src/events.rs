//! Connection and message events: one rmqtt hook that logs connects and
//! disconnects, keeps each listener's connection count, and counts messages
//! and payload bytes for the metrics endpoint.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};

use crate::listeners::ListenerTable;

/// Counters since start, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct Counters {
    /// Successful CONNECTs, by listener name.
    pub connects: HashMap<&'static str, AtomicU64>,
    /// CONNECTs rejected by the authentication hook, by listener name.
    pub rejections: HashMap<&'static str, AtomicU64>,
    /// CONNECTs that waited for their listener's pacing, by listener name.
    pub paced: HashMap<&'static str, AtomicU64>,
    /// Milliseconds those CONNECTs waited, summed, by listener name.
    pub pacing_wait_ms: HashMap<&'static str, AtomicU64>,
    /// CONNECTs whose pacing wait reached the handshake timeout, by
    /// listener name; rmqtt refuses them with "server unavailable".
    pub pacing_refusals: HashMap<&'static str, AtomicU64>,
    /// CONNECTs that waited for an ending session of the same client id
    /// (see `takeover.rs`).
    pub takeover_waits: AtomicU64,
    /// Those of them that gave up after `takeover::TEARDOWN_WAIT`.
    pub takeover_timeouts: AtomicU64,
    /// Retained topics held (see `retained.rs`).
    pub retained_topics: AtomicU64,
    /// Retained publishes to a new topic beyond `[retained] max_messages`,
    /// delivered but not kept.
    pub retained_refusals: AtomicU64,
    /// PUBLISH packets received from clients, including those the ACL then
    /// drops, and will messages.
    pub messages_in: AtomicU64,
    /// Publishes delivered to subscribers.
    pub messages_out: AtomicU64,
    /// Messages dropped: ACL rejections, full client queues, expiry.
    pub messages_dropped: AtomicU64,
    /// Payload bytes of `messages_in` (MQTT headers and topics not included).
    pub payload_bytes_in: AtomicU64,
    /// Payload bytes of `messages_out`.
    pub payload_bytes_out: AtomicU64,
}

impl Counters {
    /// Creates counters with one entry per listener name.
    pub fn new(listener_names: &[&'static str]) -> Self {
        let by_listener = || {
            listener_names
                .iter()
                .map(|name| (*name, AtomicU64::new(0)))
                .collect()
        };
        Counters {
            connects: by_listener(),
            rejections: by_listener(),
            paced: by_listener(),
            pacing_wait_ms: by_listener(),
            pacing_refusals: by_listener(),
            ..Counters::default()
        }
    }

    pub fn count_rejection(&self, listener: &str) {
        add(&self.rejections, listener, 1);
    }

    /// Counts one CONNECT that waited `waited` for pacing, and whether that
    /// wait reached the handshake timeout.
    pub fn count_paced(&self, listener: &str, waited: Duration, refused: bool) {
        add(&self.paced, listener, 1);
        add(&self.pacing_wait_ms, listener, waited.as_millis() as u64);
        if refused {
            add(&self.pacing_refusals, listener, 1);
        }
    }

    pub fn count_takeover_wait(&self) {
        self.takeover_waits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_takeover_timeout(&self) {
        self.takeover_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    fn count_connect(&self, listener: &str) {
        add(&self.connects, listener, 1);
    }
}

fn add(counters: &HashMap<&'static str, AtomicU64>, listener: &str, value: u64) {
    if let Some(counter) = counters.get(listener) {
        counter.fetch_add(value, Ordering::Relaxed);
    }
}

/// Hook for connection and message events; registered at the lowest
/// priority so that it sees the outcome of every other handler.
pub struct EventRecorder {
    listeners: ListenerTable,
    counters: Arc<Counters>,
}

impl EventRecorder {
    pub fn new(listeners: ListenerTable, counters: Arc<Counters>) -> Self {
        EventRecorder {
            listeners,
            counters,
        }
    }

    fn listener_name(&self, port: u16) -> &'static str {
        self.listeners
            .get(&port)
            .map(|l| l.name)
            .unwrap_or("unknown")
    }
}

#[async_trait]
impl Handler for EventRecorder {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientConnected(session) => {
                let id = &session.id;
                if let Some(listener) = self.listeners.get(&id.lid) {
                    listener.connections.fetch_add(1, Ordering::Relaxed);
                }
                let listener = self.listener_name(id.lid);
                self.counters.count_connect(listener);
                tracing::info!(
                    listener,
                    client_id = %id.client_id,
                    username = id.username.as_deref().unwrap_or(""),
                    remote_addr = ?id.remote_addr,
                    "client connected"
                );
            }

            Parameter::ClientDisconnected(session, reason) => {
                let id = &session.id;
                if let Some(listener) = self.listeners.get(&id.lid) {
                    // The count never goes below zero, even if rmqtt ever
                    // reported a disconnect without a connect.
                    let _ = listener.connections.fetch_update(
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                        |n| n.checked_sub(1),
                    );
                }
                tracing::info!(
                    listener = self.listener_name(id.lid),
                    client_id = %id.client_id,
                    remote_addr = ?id.remote_addr,
                    %reason,
                    "client disconnected"
                );
            }

            Parameter::MessagePublish(_, _, publish) => {
                self.counters.messages_in.fetch_add(1, Ordering::Relaxed);
                let bytes = publish.payload.len() as u64;
                self.counters
                    .payload_bytes_in
                    .fetch_add(bytes, Ordering::Relaxed);
            }

            Parameter::MessageDelivered(_, _, publish) => {
                self.counters.messages_out.fetch_add(1, Ordering::Relaxed);
                let bytes = publish.payload.len() as u64;
                self.counters
                    .payload_bytes_out
                    .fetch_add(bytes, Ordering::Relaxed);
            }

            Parameter::MessageDropped(to, from, publish, reason) => {
                self.counters
                    .messages_dropped
                    .fetch_add(1, Ordering::Relaxed);
                // Debug level: a slow subscriber can drop thousands per second.
                tracing::debug!(
                    to = ?to.as_ref().map(|t| t.client_id.to_string()),
                    from = %from.client_id,
                    topic = %publish.topic,
                    %reason,
                    "message dropped"
                );
            }

            _ => {}
        }
        (true, acc)
    }
}
