//! Pacing of new connections, so that a reconnect storm after a network
//! maintenance is admitted at a steady rate instead of all at once.
//!
//! [`Pacer`] is a generic cell rate algorithm (a token bucket kept as one
//! "theoretical arrival time"): up to `burst` connections pass at once, and
//! after that one every `1 / rate` seconds. A connection over the rate
//! waits in the CONNECT hook, which runs inside rmqtt's handshake executor,
//! so waiting connections hold handshake slots (`max_handshaking_limit`)
//! and the rest queue behind them. A client whose slot lies beyond the
//! listener's `handshake_timeout_s` waits until that timeout, is refused
//! with "server unavailable" by rmqtt and retries with its own back-off.
//! Waits and such refusals are counted for the metrics endpoint.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};

use crate::events::Counters;
use crate::listeners::ListenerTable;

/// Admits connections at a fixed rate after an initial burst.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    /// How far the schedule may run ahead of now before callers wait:
    /// `burst` intervals.
    tolerance: Duration,
    /// The theoretical arrival time of the next connection. The lock is
    /// held only to read and advance it, never across an await.
    next_arrival: Mutex<Instant>,
}

impl Pacer {
    /// Creates a pacer, or `None` when `per_second` is 0 (pacing off).
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        if per_second == 0 {
            return None;
        }
        let interval = Duration::from_secs(1) / per_second;
        Some(Pacer {
            interval,
            tolerance: interval * burst.saturating_sub(1),
            next_arrival: Mutex::new(Instant::now()),
        })
    }

    /// Reserves a slot for one connection at `now` and returns how long the
    /// caller must wait before proceeding (zero within the burst).
    pub fn reserve_at(&self, now: Instant) -> Duration {
        let mut next_arrival = match self.next_arrival.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let arrival = (*next_arrival).max(now);
        *next_arrival = arrival + self.interval;

        let allowed_at = arrival.checked_sub(self.tolerance).unwrap_or(now);
        allowed_at.saturating_duration_since(now)
    }
}

/// Hook for `ClientConnect` that waits for the listener's [`Pacer`] and
/// counts each wait.
pub struct PacingHook {
    listeners: ListenerTable,
    counters: Arc<Counters>,
}

impl PacingHook {
    pub fn new(listeners: ListenerTable, counters: Arc<Counters>) -> Self {
        PacingHook {
            listeners,
            counters,
        }
    }
}

#[async_trait]
impl Handler for PacingHook {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let Parameter::ClientConnect(connect) = param else {
            return (true, acc);
        };
        let id = connect.id();
        let Some(info) = self.listeners.get(&id.lid) else {
            return (true, acc);
        };
        let Some(pacer) = info.pacer.as_ref() else {
            return (true, acc);
        };

        let delay = pacer.reserve_at(Instant::now());
        if delay.is_zero() {
            return (true, acc);
        }

        // rmqtt refuses a connection whose handshake, this wait included,
        // took longer than the handshake timeout. Such a connection waits
        // only until the timeout: waiting longer would hold a handshake
        // slot for a client that is refused anyway. Its slot in the
        // schedule goes unused.
        let refused = delay >= info.handshake_timeout;
        let wait = if refused {
            info.handshake_timeout
        } else {
            delay
        };
        self.counters.count_paced(info.name, wait, refused);
        tokio::time::sleep(wait).await;
        if refused {
            tracing::info!(
                listener = info.name,
                client_id = %id.client_id,
                waited_ms = wait.as_millis() as u64,
                "connection waited past the handshake timeout for pacing; refused"
            );
        } else {
            tracing::debug!(client_id = %id.client_id, waited_ms = delay.as_millis() as u64, "connection paced");
        }
        (true, acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_passes_then_rate_applies() {
        let pacer = Pacer::new(10, 5).unwrap();
        let now = Instant::now();
        for i in 0..5 {
            assert_eq!(
                pacer.reserve_at(now),
                Duration::ZERO,
                "connection {i} of the burst waited"
            );
        }
        assert_eq!(pacer.reserve_at(now), Duration::from_millis(100));
        assert_eq!(pacer.reserve_at(now), Duration::from_millis(200));
    }

    #[test]
    fn storm_is_spread_over_expected_time() {
        // 10,000 connections at once with 500/s after a burst of 200 must
        // finish about (10,000 - 200) / 500 = 19.6 s later.
        let pacer = Pacer::new(500, 200).unwrap();
        let now = Instant::now();
        let last = (0..10_000).map(|_| pacer.reserve_at(now)).last().unwrap();
        assert!(
            (Duration::from_millis(19_590)..=Duration::from_millis(19_610)).contains(&last),
            "last connection waits {last:?}"
        );
    }

    #[test]
    fn idle_time_refills_burst() {
        let pacer = Pacer::new(10, 3).unwrap();
        let start = Instant::now();
        for _ in 0..6 {
            pacer.reserve_at(start);
        }
        let later = start + Duration::from_secs(10);
        assert_eq!(pacer.reserve_at(later), Duration::ZERO);
    }

    #[test]
    fn zero_rate_turns_pacing_off() {
        assert!(Pacer::new(0, 10).is_none());
    }
}
