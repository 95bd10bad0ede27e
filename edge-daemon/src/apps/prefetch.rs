//! Background image pulls: the images of apps about to be created and the
//! `next_image` of apps, pulled ahead of an upgrade so that switching costs
//! only a container stop and start.
//!
//! At most one pull runs per image. A failed pull is retried after the pull
//! back-off. Pulls are bounded by the desired state itself: at most two
//! images per app (image and next image), so at most 64 at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tollway_runtime::{Backoff, BackoffConfig};

use super::podman::PodmanClient;

/// The state of one image's pull, as the reconciler reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullStatus {
    /// A pull runs.
    Pulling,
    /// The last pull failed; it is retried after the back-off.
    Failed(String),
}

#[derive(Debug)]
struct PullState {
    running: bool,
    last_error: Option<String>,
    retry_at: Option<Instant>,
    backoff: Backoff,
}

/// Starts pulls and remembers their results.
pub struct Puller {
    client: PodmanClient,
    backoff: BackoffConfig,
    states: Arc<Mutex<HashMap<String, PullState>>>,
    /// Notified whenever a pull ends, so the manager reconciles again.
    finished: Arc<Notify>,
    tasks: JoinSet<()>,
}

impl Puller {
    pub fn new(client: PodmanClient, backoff: BackoffConfig) -> Self {
        Puller {
            client,
            backoff,
            states: Arc::new(Mutex::new(HashMap::new())),
            finished: Arc::new(Notify::new()),
            tasks: JoinSet::new(),
        }
    }

    /// Returns the notifier that fires when a pull ends.
    pub fn finished(&self) -> Arc<Notify> {
        Arc::clone(&self.finished)
    }

    /// Starts pulling `image` unless a pull runs or its retry time has not
    /// come, and returns the pull's state. Call it only for an image that is
    /// not in local storage.
    pub fn request(&mut self, image: &str, now: Instant) -> PullStatus {
        // Reap finished tasks so the set does not grow.
        while self.tasks.try_join_next().is_some() {}

        let mut states = self.states.lock().expect("pull state lock poisoned");
        let state = states
            .entry(image.to_string())
            .or_insert_with(|| PullState {
                running: false,
                last_error: None,
                retry_at: None,
                backoff: Backoff::new(self.backoff),
            });
        if state.running {
            return PullStatus::Pulling;
        }
        if let (Some(error), Some(retry_at)) = (&state.last_error, state.retry_at)
            && now < retry_at
        {
            return PullStatus::Failed(error.clone());
        }

        state.running = true;
        tracing::info!(image, "pulling image");
        let client = self.client.clone();
        let shared = Arc::clone(&self.states);
        let finished = Arc::clone(&self.finished);
        let image = image.to_string();
        self.tasks.spawn(async move {
            let result = client.pull_missing(&image).await;
            let mut states = shared.lock().expect("pull state lock poisoned");
            if let Some(state) = states.get_mut(&image) {
                state.running = false;
                match result {
                    Ok(()) => {
                        tracing::info!(image, "image pulled");
                        state.last_error = None;
                        state.retry_at = None;
                        state.backoff.reset();
                    }
                    Err(err) => {
                        let delay = state.backoff.next_delay();
                        tracing::warn!(image, error = %err, retry_in_s = delay.as_secs(), "image pull failed");
                        state.last_error = Some(err.to_string());
                        state.retry_at = Some(Instant::now() + delay);
                    }
                }
            }
            drop(states);
            finished.notify_one();
        });
        PullStatus::Pulling
    }

    /// Forgets images no longer named by the desired state. Their running
    /// pulls finish on their own.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let mut states = self.states.lock().expect("pull state lock poisoned");
        states.retain(|image, state| state.running || keep(image));
    }

    /// Aborts running pulls and waits for their tasks to end.
    pub async fn shutdown(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}
