//! Waiting in the demo's stages: bounded polls that name what they waited
//! for, pauses, and the interrupt flag that a signal sets so that every
//! wait ends early and the demo still cleans up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::scenario::StageError;

/// Set by SIGINT or SIGTERM; every wait checks it.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Sleeps for `duration`, returning early with an error on a signal.
pub fn pause(duration: Duration) -> Result<(), StageError> {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        check_interrupt()?;
        std::thread::sleep(Duration::from_millis(100).min(end - Instant::now()));
    }
    Ok(())
}

pub fn check_interrupt() -> Result<(), StageError> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        Err(StageError::Interrupted)
    } else {
        Ok(())
    }
}

/// Polls `check` every 500 ms until it succeeds, failing after `timeout`
/// with `what` and the last state it returned.
pub fn wait(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Result<(), StageError> {
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupt()?;
        let last = match check() {
            Ok(()) => return Ok(()),
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            return Err(StageError::Timeout {
                what: what.to_string(),
                timeout,
                last,
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}
