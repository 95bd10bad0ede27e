//! Restart back-off for crashed apps: each crash of the same spec waits
//! longer before the next start (the runtime's decorrelated-jitter
//! back-off), so an app that crashes at once does not spin.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tollway_runtime::{Backoff, BackoffConfig};

/// A run this long after a restart counts as stable and resets the back-off.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// The decision about an exited container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Its back-off has passed: start it now.
    Now,
    /// Wait until then.
    Wait(Instant),
}

/// Restart state of one app's current spec.
#[derive(Debug)]
struct AppRestarts {
    spec_hash: String,
    /// Restarts since the spec last changed.
    count: u32,
    backoff: Backoff,
    /// The earliest next start, set when a crash is first seen.
    not_before: Option<Instant>,
    last_restart: Option<Instant>,
}

/// Restart state of every app.
///
/// NOTE: it lives in memory only, so a daemon restart resets the restart
/// counts and back-off of every app.
#[derive(Debug)]
pub struct Restarts {
    config: BackoffConfig,
    apps: HashMap<String, AppRestarts>,
}

impl Restarts {
    pub fn new(config: BackoffConfig) -> Self {
        Restarts {
            config,
            apps: HashMap::new(),
        }
    }

    /// Restarts of `app` since its spec last changed.
    pub fn count(&self, app: &str, spec_hash: &str) -> u32 {
        self.apps
            .get(app)
            .filter(|state| state.spec_hash == spec_hash)
            .map_or(0, |state| state.count)
    }

    /// Decides about an exited container of `app`. The first call after a
    /// crash picks the delay; later calls wait for it to pass.
    pub fn decide(&mut self, app: &str, spec_hash: &str, now: Instant) -> RestartDecision {
        let state = self.entry(app, spec_hash);
        let not_before = *state
            .not_before
            .get_or_insert_with(|| now + state.backoff.next_delay());
        if now >= not_before {
            RestartDecision::Now
        } else {
            RestartDecision::Wait(not_before)
        }
    }

    /// Records that the exited container of `app` was started again.
    pub fn restarted(&mut self, app: &str, spec_hash: &str, now: Instant) {
        let state = self.entry(app, spec_hash);
        state.count = state.count.saturating_add(1);
        state.not_before = None;
        state.last_restart = Some(now);
    }

    /// Records that `app` is running; a long enough run resets the back-off.
    pub fn running(&mut self, app: &str, spec_hash: &str, now: Instant) {
        let state = self.entry(app, spec_hash);
        if state
            .last_restart
            .is_some_and(|at| now.duration_since(at) >= STABLE_RUN)
        {
            state.backoff.reset();
            state.last_restart = None;
        }
    }

    /// Forgets apps that are no longer desired.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.apps.retain(|app, _| keep(app));
    }

    fn entry(&mut self, app: &str, spec_hash: &str) -> &mut AppRestarts {
        let config = self.config;
        let state = self
            .apps
            .entry(app.to_string())
            .or_insert_with(|| AppRestarts::new(spec_hash, config));
        if state.spec_hash != spec_hash {
            *state = AppRestarts::new(spec_hash, config);
        }
        state
    }
}

impl AppRestarts {
    fn new(spec_hash: &str, config: BackoffConfig) -> Self {
        AppRestarts {
            spec_hash: spec_hash.to_string(),
            count: 0,
            backoff: Backoff::new(config),
            not_before: None,
            last_restart: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: BackoffConfig = BackoffConfig {
        base_ms: 1000,
        cap_ms: 60_000,
    };

    #[test]
    fn crash_waits_then_restarts() {
        let mut restarts = Restarts::new(CONFIG);
        let start = Instant::now();
        let RestartDecision::Wait(until) = restarts.decide("toll-app", "h1", start) else {
            panic!("a first crash restarted without waiting");
        };
        assert!(until >= start + Duration::from_secs(1));
        assert_eq!(
            restarts.decide("toll-app", "h1", until),
            RestartDecision::Now
        );
        restarts.restarted("toll-app", "h1", until);
        assert_eq!(restarts.count("toll-app", "h1"), 1);
    }

    #[test]
    fn new_spec_resets_count() {
        let mut restarts = Restarts::new(CONFIG);
        let now = Instant::now();
        restarts.restarted("toll-app", "h1", now);
        assert_eq!(restarts.count("toll-app", "h2"), 0);
        restarts.decide("toll-app", "h2", now);
        assert_eq!(restarts.count("toll-app", "h1"), 0);
    }
}
