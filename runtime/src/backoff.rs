//! Retry delays with decorrelated jitter: the one back-off used by every
//! Tollway client.
//!
//! Each delay is drawn uniformly from `[base, 3 × previous delay]` and capped
//! (the "decorrelated jitter" scheme described by Marc Brooker, AWS
//! Architecture Blog, 2015). After a centre's network maintenance, thousands
//! of nodes reconnect at once; jitter spreads their attempts over time
//! instead of letting them retry in lockstep.

use std::time::Duration;

use rand::Rng;
use serde::Deserialize;

use crate::config::Problems;

/// Back-off settings as they appear in configuration files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// Smallest delay, in milliseconds.
    pub base_ms: u64,
    /// Largest delay, in milliseconds.
    pub cap_ms: u64,
}

impl BackoffConfig {
    pub const fn new(base: Duration, cap: Duration) -> Self {
        BackoffConfig {
            base_ms: base.as_millis() as u64,
            cap_ms: cap.as_millis() as u64,
        }
    }

    /// Adds what is wrong with the settings to `problems`, naming the key
    /// under `section` (e.g. `backoff.base_ms`).
    pub fn check(&self, problems: &mut Problems, section: &str) {
        if self.base_ms == 0 {
            problems.push(&format!("{section}.base_ms"), 0, "must be at least 1");
        } else if self.cap_ms < self.base_ms {
            problems.push(
                &format!("{section}.cap_ms"),
                self.cap_ms,
                &format!("must be at least base_ms ({})", self.base_ms),
            );
        }
    }

    /// Reports what is wrong with the settings, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.base_ms == 0 {
            Some("base_ms must be at least 1".to_string())
        } else if self.cap_ms < self.base_ms {
            Some(format!(
                "cap_ms ({}) must be at least base_ms ({})",
                self.cap_ms, self.base_ms
            ))
        } else {
            None
        }
    }
}

/// The delay sequence of one retry loop. Call [`Backoff::next_delay`] after
/// each failure and [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    previous: Duration,
    attempts: u32,
}

impl Backoff {
    /// Creates a back-off. A zero base is raised to 1 ms and a cap below the
    /// base is raised to the base, so the sequence is always well defined.
    pub fn new(config: BackoffConfig) -> Self {
        let base = Duration::from_millis(config.base_ms.max(1));
        let cap = Duration::from_millis(config.cap_ms).max(base);
        Backoff {
            base,
            cap,
            previous: base,
            attempts: 0,
        }
    }

    /// Returns the next delay, in `[base, cap]`.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    /// Returns the next delay, drawn from `rng` (tests pass a seeded one).
    pub fn next_delay_with<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let upper = self.previous.saturating_mul(3).min(self.cap).max(self.base);
        let base_ms = self.base.as_millis() as u64;
        let upper_ms = upper.as_millis() as u64;
        let delay = Duration::from_millis(rng.random_range(base_ms..=upper_ms));

        self.previous = delay;
        self.attempts = self.attempts.saturating_add(1);
        delay
    }

    /// Failures since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.previous = self.base;
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    proptest! {
        #[test]
        fn delays_stay_within_base_and_cap(base in 1u64..5_000, extra in 0u64..200_000, seed: u64, steps in 1usize..200) {
            let config = BackoffConfig { base_ms: base, cap_ms: base + extra };
            let mut backoff = Backoff::new(config);
            let mut rng = StdRng::seed_from_u64(seed);
            for _ in 0..steps {
                let delay = backoff.next_delay_with(&mut rng).as_millis() as u64;
                prop_assert!(delay >= base, "delay {delay} below base {base}");
                prop_assert!(delay <= base + extra, "delay {delay} above cap {}", base + extra);
            }
            prop_assert_eq!(backoff.attempts() as usize, steps);
        }

        #[test]
        fn each_delay_at_most_triples(base in 1u64..1_000, seed: u64) {
            let mut backoff = Backoff::new(BackoffConfig { base_ms: base, cap_ms: 3_600_000 });
            let mut rng = StdRng::seed_from_u64(seed);
            let mut previous = base;
            for _ in 0..50 {
                let delay = backoff.next_delay_with(&mut rng).as_millis() as u64;
                prop_assert!(delay <= previous.saturating_mul(3).max(base));
                previous = delay;
            }
        }
    }

    #[test]
    fn delays_spread_across_clients() {
        // Many clients failing at the same moment must not retry together:
        // after a few attempts their delays cover most of the range.
        let config = BackoffConfig::new(Duration::from_secs(1), Duration::from_secs(120));
        let mut rng = StdRng::seed_from_u64(7);
        let mut fifth_delays: Vec<u64> = (0..1000)
            .map(|_| {
                let mut backoff = Backoff::new(config);
                (0..4).for_each(|_| {
                    backoff.next_delay_with(&mut rng);
                });
                backoff.next_delay_with(&mut rng).as_millis() as u64
            })
            .collect();
        fifth_delays.sort_unstable();
        let spread = fifth_delays[899] - fifth_delays[99];
        assert!(
            spread > 5_000,
            "10th-90th percentile spread is only {spread} ms"
        );
    }

    #[test]
    fn reset_returns_to_base_range() {
        let mut backoff = Backoff::new(BackoffConfig::new(
            Duration::from_millis(100),
            Duration::from_secs(60),
        ));
        for _ in 0..20 {
            backoff.next_delay();
        }
        backoff.reset();
        assert_eq!(backoff.attempts(), 0);
        assert!(backoff.next_delay() <= Duration::from_millis(300));
    }

    #[test]
    fn invalid_settings_are_named() {
        assert!(
            BackoffConfig {
                base_ms: 0,
                cap_ms: 10
            }
            .problem()
            .unwrap()
            .contains("base_ms")
        );
        assert!(
            BackoffConfig {
                base_ms: 10,
                cap_ms: 5
            }
            .problem()
            .unwrap()
            .contains("cap_ms")
        );
        assert!(
            BackoffConfig {
                base_ms: 10,
                cap_ms: 10
            }
            .problem()
            .is_none()
        );
    }
}
