//! The token bucket that caps the bytes per second sent toward the national
//! broker.
//!
//! Tokens are bytes. They refill at the configured rate up to the burst
//! size. A message may be sent once the bucket contains its cost, or the
//! whole burst when the message is larger than the burst. Its full cost is
//! then taken, which can leave the balance negative, so the average rate
//! stays at the cap whatever the message sizes.

use std::time::Duration;

use tokio::time::Instant;

/// A byte-rate limiter. A rate of 0 means unlimited.
#[derive(Debug)]
pub struct TokenBucket {
    bytes_per_second: u64,
    burst: f64,
    /// Current balance in bytes; negative after a message larger than the
    /// balance was let through.
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// Creates a full bucket.
    pub fn new(bytes_per_second: u64, burst_bytes: u64, now: Instant) -> Self {
        let burst = burst_bytes.max(1) as f64;
        TokenBucket {
            bytes_per_second,
            burst,
            tokens: burst,
            refilled_at: now,
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.bytes_per_second == 0
    }

    /// Takes `cost` bytes if the bucket allows it now, or returns how long
    /// to wait before it will.
    pub fn try_take(&mut self, cost: u64, now: Instant) -> Result<(), Duration> {
        if self.is_unlimited() {
            return Ok(());
        }
        self.refill(now);

        let needed = (cost as f64).min(self.burst);
        // The epsilon absorbs floating-point rounding of the refill, so a
        // caller that slept the returned wait always succeeds.
        if self.tokens + 1e-6 >= needed {
            self.tokens -= cost as f64;
            return Ok(());
        }
        let missing = needed - self.tokens;
        let micros = (missing * 1e6 / self.bytes_per_second as f64).ceil() as u64;
        Err(Duration::from_micros(micros.max(1)))
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        self.refilled_at = now;
        let added = elapsed.as_secs_f64() * self.bytes_per_second as f64;
        self.tokens = (self.tokens + added).min(self.burst);
    }
}

/// Returns the size in bytes of an MQTT 3.1.1 PUBLISH packet: fixed header,
/// topic, packet id (QoS 1 and 2) and payload. This is what the bucket
/// charges for one message.
pub fn publish_packet_bytes(topic: &str, payload_len: usize, qos: u8) -> u64 {
    let packet_id = if qos > 0 { 2 } else { 0 };
    let remaining = 2 + topic.len() + packet_id + payload_len;
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    (1 + length_bytes + remaining) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_bucket_allows_burst_then_waits() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1000, 500, start);
        assert_eq!(bucket.try_take(300, start), Ok(()));
        assert_eq!(bucket.try_take(200, start), Ok(()));
        let wait = bucket.try_take(100, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert_eq!(bucket.try_take(100, start + wait), Ok(()));
    }

    #[test]
    fn rate_holds_over_many_messages() {
        // 1,000 messages of 1,000 bytes at 100,000 B/s take 10 s minus the
        // initial burst, whatever the message order.
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100_000, 10_000, start);
        let mut now = start;
        for _ in 0..1000 {
            loop {
                match bucket.try_take(1000, now) {
                    Ok(()) => break,
                    Err(wait) => now += wait,
                }
            }
        }
        let elapsed = now - start;
        assert!(
            elapsed >= Duration::from_millis(9_899) && elapsed <= Duration::from_millis(9_910),
            "{elapsed:?}"
        );
    }

    #[test]
    fn message_larger_than_burst_goes_into_debt() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1000, 100, start);
        // A 1,000-byte message needs only the full burst, then leaves a
        // debt of 900 bytes that the next message waits out.
        assert_eq!(bucket.try_take(1000, start), Ok(()));
        let wait = bucket.try_take(10, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(910));
    }

    #[test]
    fn idle_time_refills_only_to_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1000, 100, start);
        let later = start + Duration::from_secs(60);
        assert_eq!(bucket.try_take(100, later), Ok(()));
        assert!(bucket.try_take(100, later).is_err());
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(0, 1, start);
        for _ in 0..100 {
            assert_eq!(bucket.try_take(1_000_000, start), Ok(()));
        }
    }

    #[test]
    fn packet_size_counts_headers() {
        // 2-byte fixed header, 2 + 5 topic, 2 packet id, 3 payload.
        assert_eq!(publish_packet_bytes("a/b/c", 3, 1), 14);
        assert_eq!(publish_packet_bytes("a/b/c", 3, 0), 12);
        // 200 bytes of remaining length need a 2-byte length field.
        assert_eq!(publish_packet_bytes("t", 195, 0), 1 + 2 + 198);
    }
}
