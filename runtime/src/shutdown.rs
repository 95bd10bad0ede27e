//! Graceful shutdown on SIGINT or SIGTERM, forced on a second signal.
//!
//! A program creates one [`Shutdown`], hands a [`Shutdown::token`] clone to
//! every task, and awaits [`Shutdown::wait_for_tasks`] with a deadline, which
//! names every task that did not stop in time.

use std::time::Duration;

use tokio::task::JoinSet;
pub use tokio_util::sync::CancellationToken;

/// Cancellation shared by a program's tasks.
pub struct Shutdown {
    token: CancellationToken,
    tasks: JoinSet<&'static str>,
    names: Vec<&'static str>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown {
            token: CancellationToken::new(),
            tasks: JoinSet::new(),
            names: Vec::new(),
        }
    }

    /// Returns a token that tasks poll or await to learn that shutdown began.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Spawns a named task that is accounted for at shutdown.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.names.push(name);
        self.tasks.spawn(async move {
            task.await;
            name
        });
    }

    /// Cancels the token on the first SIGINT or SIGTERM, and exits the
    /// process with status 130 on the second.
    pub fn listen_for_signals(&self) {
        let token = self.token.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested; stopping tasks (send the signal again to force)");
            token.cancel();
            wait_for_signal().await;
            tracing::warn!("second signal; exiting without waiting for tasks");
            std::process::exit(130);
        });
    }

    /// Waits until the token is cancelled or any task ends by itself (which
    /// is a failure for a long-running service), then cancels the rest and
    /// waits up to `deadline` for them. Returns the names of the tasks that
    /// ended early, so the caller can report them.
    pub async fn run_until_stopped(mut self, deadline: Duration) -> Vec<&'static str> {
        let mut ended_early = Vec::new();
        // A task that ends after cancellation stopped as asked; only one that
        // ends before it stopped on its own. `biased` checks the token first.
        tokio::select! {
            biased;
            _ = self.token.cancelled() => {}
            Some(finished) = self.tasks.join_next() => {
                let name = finished.unwrap_or("a task that panicked");
                self.names.retain(|n| *n != name);
                if !self.token.is_cancelled() {
                    tracing::error!(task = name, "task stopped on its own; shutting down");
                    ended_early.push(name);
                    self.token.cancel();
                }
            }
        }
        self.wait_for_tasks(deadline).await;
        ended_early
    }

    /// Waits up to `deadline` for all tasks to finish after cancellation,
    /// logging each that stopped and each that did not.
    pub async fn wait_for_tasks(&mut self, deadline: Duration) {
        let result = tokio::time::timeout(deadline, async {
            while let Some(finished) = self.tasks.join_next().await {
                match finished {
                    Ok(name) => {
                        self.names.retain(|n| *n != name);
                        tracing::debug!(task = name, "task stopped");
                    }
                    Err(err) => tracing::error!(error = %err, "task panicked during shutdown"),
                }
            }
        })
        .await;
        if result.is_err() {
            tracing::warn!(
                tasks = ?self.names,
                deadline_s = deadline.as_secs_f64(),
                "tasks did not stop before the deadline; aborting them"
            );
            self.tasks.abort_all();
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};

    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM; only SIGINT stops the program");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn cancelled_tasks_all_stop() {
        let mut shutdown = Shutdown::new();
        let stopped = Arc::new(AtomicUsize::new(0));
        for name in ["intake", "forwarder", "reconciler"] {
            let token = shutdown.token();
            let stopped = stopped.clone();
            shutdown.spawn(name, async move {
                token.cancelled().await;
                stopped.fetch_add(1, Ordering::SeqCst);
            });
        }

        shutdown.token().cancel();
        let ended_early = shutdown.run_until_stopped(Duration::from_secs(5)).await;
        assert!(ended_early.is_empty(), "{ended_early:?}");
        assert_eq!(stopped.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn task_ending_on_its_own_stops_the_rest() {
        let mut shutdown = Shutdown::new();
        let token = shutdown.token();
        shutdown.spawn("waits", async move { token.cancelled().await });
        shutdown.spawn("crashes", async {});

        let ended_early = shutdown.run_until_stopped(Duration::from_secs(5)).await;
        assert_eq!(ended_early, vec!["crashes"]);
    }

    #[tokio::test(start_paused = true)]
    async fn stuck_task_is_aborted_at_deadline() {
        let mut shutdown = Shutdown::new();
        shutdown.spawn("stuck", std::future::pending());
        shutdown.token().cancel();

        let started = tokio::time::Instant::now();
        shutdown.run_until_stopped(Duration::from_secs(3)).await;
        assert!(started.elapsed() >= Duration::from_secs(3));
        assert!(started.elapsed() < Duration::from_secs(4));
    }
}
