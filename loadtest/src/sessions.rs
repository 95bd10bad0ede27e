//! Parts of every simulated fleet: node futures spread over a fixed number
//! of tokio tasks, and a count of the sessions that are up.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::task::JoinHandle;

/// Sessions of a fleet that are up now, and how many came up in all.
#[derive(Debug, Default)]
pub struct UpCounter {
    up: AtomicUsize,
    ups: AtomicU64,
}

impl UpCounter {
    /// Nodes whose session is up now.
    pub fn up(&self) -> usize {
        self.up.load(Ordering::Relaxed)
    }

    /// Sessions that came up since the fleet started.
    pub fn ups(&self) -> u64 {
        self.ups.load(Ordering::Relaxed)
    }

    /// Counts one session as up until the guard is dropped.
    pub fn guard(&self) -> UpGuard<'_> {
        self.up.fetch_add(1, Ordering::Relaxed);
        self.ups.fetch_add(1, Ordering::Relaxed);
        UpGuard(self)
    }

    /// Waits until `size` sessions are up, or `timeout`; returns whether
    /// they are.
    pub async fn wait_all_up(&self, size: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.up() < size {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }
}

/// One session counted as up while it lives.
pub struct UpGuard<'a>(&'a UpCounter);

impl Drop for UpGuard<'_> {
    fn drop(&mut self) {
        self.0.up.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Returns how many tasks [`spawn_spread`] starts for `size` nodes: `tasks`,
/// but at least one and at most one per node.
pub fn task_count(size: usize, tasks: usize) -> usize {
    tasks.clamp(1, size.max(1))
}

/// Runs `node(index)` for every index below `size`, spread over at most
/// `tasks` tokio tasks (node `i` on task `i % tasks`), and returns the tasks.
pub fn spawn_spread<F, Fut>(size: usize, tasks: usize, node: F) -> Vec<JoinHandle<()>>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let task_count = task_count(size, tasks);
    (0..task_count)
        .map(|task| {
            let node = node.clone();
            tokio::spawn(async move {
                let mut nodes: FuturesUnordered<_> =
                    (task..size).step_by(task_count).map(&node).collect();
                while nodes.next().await.is_some() {}
            })
        })
        .collect()
}
