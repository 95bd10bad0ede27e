//! Takeover of a client id whose clean session is still being torn down.
//!
//! When a node's connection drops, rmqtt tears its session down in steps.
//! It marks the session disconnected, publishes the will (the node's
//! retained presence, stored by the retainer) and runs the disconnect
//! hooks. Only then does it remove the session from its table.
//!
//! A node that reconnects within that window finds the old session still
//! in the table, and rmqtt requests that session to hand over. A clean session
//! that is ending never replies, so rmqtt rejects the new CONNECT with
//! "server unavailable". In a reconnect storm of 10,000 TLS nodes on two
//! cores, 12 to 66 nodes per round were rejected this way and had to wait
//! out their back-off.
//!
//! [`TakeoverHook`] runs in the CONNECT hook after pacing and waits, for at
//! most [`TEARDOWN_WAIT`], until such a session is gone. A live session
//! (connected) or a persistent one (which rmqtt hands over from its
//! offline loop) is left to rmqtt's own takeover at once.
//!
//! NOTE: a session the broker itself is closing (after an ACL rejection,
//! say) still counts as connected until rmqtt marks it disconnected, so
//! it is not waited for. A reconnect in that moment can still be
//! rejected with "server unavailable", and the client retries after its
//! back-off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::types::Id;

use crate::events::Counters;

/// Maximum wait for an ending session to leave rmqtt's session table. The
/// wait counts against the listener's handshake timeout.
pub const TEARDOWN_WAIT: Duration = Duration::from_secs(5);

/// Interval between checks of the session table while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Hook for `ClientConnect` that waits out a predecessor's teardown.
pub struct TakeoverHook {
    scx: ServerContext,
    counters: Arc<Counters>,
}

impl TakeoverHook {
    pub fn new(scx: ServerContext, counters: Arc<Counters>) -> Self {
        TakeoverHook { scx, counters }
    }

    /// Returns true while a clean session of this client id is disconnected
    /// but still in the session table.
    async fn predecessor_ending(&self, id: &Id) -> bool {
        let entry = self.scx.extends.shared().await.entry(id.clone());
        let Some(session) = entry.session() else {
            return false;
        };
        if session.connected().await.unwrap_or(true) {
            return false;
        }
        session
            .connect_info()
            .await
            .map(|info| info.clean_start())
            .unwrap_or(false)
    }
}

#[async_trait]
impl Handler for TakeoverHook {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let Parameter::ClientConnect(connect) = param else {
            return (true, acc);
        };
        let id = connect.id();
        if !self.predecessor_ending(id).await {
            return (true, acc);
        }

        // The session table was just read, so each round sleeps first.
        let start = Instant::now();
        self.counters.count_takeover_wait();
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            if !self.predecessor_ending(id).await {
                break;
            }
            if start.elapsed() >= TEARDOWN_WAIT {
                self.counters.count_takeover_timeout();
                tracing::warn!(
                    client_id = %id.client_id,
                    waited_ms = start.elapsed().as_millis() as u64,
                    "previous session of this client id is still ending; rmqtt may reject the connection"
                );
                return (true, acc);
            }
        }
        tracing::debug!(
            client_id = %id.client_id,
            waited_ms = start.elapsed().as_millis() as u64,
            "waited for the previous session to end"
        );
        (true, acc)
    }
}
