//! The window of record batches sent and not yet acknowledged by the
//! centre (go-back-N): it decides where the next batch starts and when
//! everything unacknowledged must be sent again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One batch in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    first: u64,
    last: u64,
    sent_at: Instant,
}

/// Batches in flight, oldest first, bounded by a limit.
#[derive(Debug)]
pub(crate) struct Window {
    limit: usize,
    in_flight: VecDeque<InFlight>,
}

impl Window {
    pub fn new(limit: usize) -> Self {
        Window {
            limit,
            in_flight: VecDeque::with_capacity(limit),
        }
    }

    /// Returns the seq the next batch starts at: after the last batch in
    /// flight, or after the watermark when nothing is in flight.
    pub fn next_from(&self, watermark: u64) -> u64 {
        let after_sent = self.in_flight.back().map_or(0, |batch| batch.last + 1);
        after_sent.max(watermark + 1)
    }

    pub fn has_room(&self) -> bool {
        self.in_flight.len() < self.limit
    }

    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Notes a batch `first..=last` as sent at `now`.
    pub fn sent(&mut self, first: u64, last: u64, now: Instant) {
        self.in_flight.push_back(InFlight {
            first,
            last,
            sent_at: now,
        });
    }

    /// Drops every batch the watermark covers whole. A batch covered only
    /// in part stays until the rest is acknowledged.
    pub fn acknowledge(&mut self, watermark: u64) {
        while self
            .in_flight
            .front()
            .is_some_and(|batch| batch.last <= watermark)
        {
            self.in_flight.pop_front();
        }
    }

    /// Returns the first seq of the oldest batch if it has waited longer
    /// than `timeout` at `now`.
    pub fn overdue(&self, now: Instant, timeout: Duration) -> Option<u64> {
        self.in_flight
            .front()
            .filter(|batch| now.duration_since(batch.sent_at) >= timeout)
            .map(|batch| batch.first)
    }

    /// Forgets every batch in flight, so sending starts again after the
    /// watermark.
    pub fn restart(&mut self) {
        self.in_flight.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_from_follows_sent_batches() {
        let now = Instant::now();
        let mut window = Window::new(2);
        assert_eq!(window.next_from(10), 11);
        window.sent(11, 20, now);
        assert_eq!(window.next_from(10), 21);
        window.sent(21, 30, now);
        assert!(!window.has_room());
    }

    #[test]
    fn ack_drops_whole_batches_only() {
        let now = Instant::now();
        let mut window = Window::new(4);
        window.sent(1, 10, now);
        window.sent(11, 20, now);
        window.acknowledge(15);
        assert_eq!(window.len(), 1);
        assert_eq!(window.next_from(15), 21);
        window.acknowledge(20);
        assert_eq!(window.len(), 0);
        assert_eq!(window.next_from(20), 21);
    }

    #[test]
    fn restart_goes_back_to_watermark() {
        let now = Instant::now();
        let mut window = Window::new(4);
        window.sent(1, 10, now);
        window.sent(11, 20, now);
        window.restart();
        assert_eq!(window.next_from(5), 6);
        assert!(window.has_room());
    }

    #[test]
    fn overdue_only_after_timeout() {
        let start = Instant::now();
        let mut window = Window::new(4);
        window.sent(1, 10, start);
        let timeout = Duration::from_secs(30);
        assert_eq!(
            window.overdue(start + Duration::from_secs(29), timeout),
            None
        );
        assert_eq!(window.overdue(start + timeout, timeout), Some(1));
    }
}
