//! A fault-injecting TCP proxy for tests and load scenarios on loopback.
//!
//! [`FaultProxy`] listens on a loopback port and forwards each accepted
//! connection to one upstream address. While it runs, a test can:
//! - delay every chunk by a fixed one-way latency ([`FaultProxy::set_delay`]),
//! - cap the bandwidth of each direction, shared by all connections, as a
//!   slow provincial link would ([`FaultProxy::set_bandwidth`]),
//! - drop every open connection at once ([`FaultProxy::drop_connections`]),
//! - cut the link for a set time ([`FaultProxy::cut_for`]). A stalling cut
//!   keeps connections open and moves no byte until it ends, like a short
//!   outage that TCP survives. A refusing cut closes open connections and
//!   closes new ones at once until it ends.
//!
//! It also counts the bytes and writes in each direction, which is how the
//! `idle` scenario measures traffic at the socket.
//!
//! Bounds: each direction of a connection queues at most
//! [`QUEUED_CHUNKS_PER_DIRECTION`] chunks of at most [`CHUNK_BYTES`] between
//! reading and writing; when the queue is full, the proxy stops reading and
//! TCP flow control pushes back on the sender. Nothing is ever discarded
//! except by an explicit drop or refusing cut.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Largest chunk read and forwarded at once, in bytes.
pub const CHUNK_BYTES: usize = 16 * 1024;
/// Chunks queued per direction and connection before reading stops.
pub const QUEUED_CHUNKS_PER_DIRECTION: usize = 64;
/// Time allowed to connect to the upstream address.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The effect of a cut on connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutMode {
    /// Connections stay open; bytes wait until the cut ends. New
    /// connections are accepted but not forwarded until then.
    Stall,
    /// Open connections are closed; new ones are closed at once until the
    /// cut ends.
    Refuse,
}

/// Traffic through the proxy since it started. "Up" is from the accepted
/// client toward the upstream address, "down" is the way back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyCounters {
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Write calls toward upstream; each is at least one TCP segment.
    pub writes_up: u64,
    /// Write calls toward clients.
    pub writes_down: u64,
    pub accepted: u64,
    /// Connections closed at once by a refusing cut.
    pub refused: u64,
    /// Connections that could not reach the upstream address.
    pub upstream_failures: u64,
}

/// A running proxy; stops when dropped or on [`FaultProxy::shutdown`].
pub struct FaultProxy {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Starts a proxy on `listen` (port 0 picks a free port) that forwards
    /// to `upstream`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let (cut_tx, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            upstream,
            delay: Mutex::new(Duration::ZERO),
            up_bucket: TokenBucket::default(),
            down_bucket: TokenBucket::default(),
            drop_token: Mutex::new(CancellationToken::new()),
            cut_tx,
            counters: Counters::default(),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        tracing::info!(%local_addr, %upstream, "fault proxy started");
        Ok(FaultProxy {
            local_addr,
            shared,
            stop,
        })
    }

    /// Returns the address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sets the one-way latency added to every chunk in each direction.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.shared.delay) = delay;
    }

    /// Caps each direction at `bytes_per_second` (shared by all
    /// connections), or removes the cap with `None`. 3 Mbit/s is 375,000
    /// bytes per second.
    pub fn set_bandwidth(&self, bytes_per_second: Option<u64>) {
        self.shared.up_bucket.set_rate(bytes_per_second);
        self.shared.down_bucket.set_rate(bytes_per_second);
    }

    /// Closes every open connection now; new connections are forwarded as
    /// usual.
    pub fn drop_connections(&self) {
        let mut token = lock(&self.shared.drop_token);
        token.cancel();
        *token = CancellationToken::new();
        tracing::info!(addr = %self.local_addr, "fault proxy dropped every connection");
    }

    /// Cuts the link for `duration` from now, in the way `mode` selects.
    pub fn cut_for(&self, duration: Duration, mode: CutMode) {
        if mode == CutMode::Refuse {
            self.drop_connections();
        }
        let until = Instant::now() + duration;
        self.shared.cut_tx.send_replace(Some(Cut { until, mode }));
        tracing::info!(addr = %self.local_addr, ?mode, seconds = duration.as_secs_f64(), "fault proxy cut the link");
    }

    /// Returns the traffic counters.
    pub fn counters(&self) -> ProxyCounters {
        self.shared.counters.snapshot()
    }

    /// Stops accepting and closes every connection.
    pub fn shutdown(&self) {
        self.stop.cancel();
        self.drop_connections();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A cut in force until `until`.
#[derive(Debug, Clone, Copy)]
struct Cut {
    until: Instant,
    mode: CutMode,
}

/// State shared by the accept loop and every connection.
struct Shared {
    upstream: SocketAddr,
    delay: Mutex<Duration>,
    up_bucket: TokenBucket,
    down_bucket: TokenBucket,
    /// Cancelled to close every connection; replaced right after, so that
    /// later connections get a fresh token.
    drop_token: Mutex<CancellationToken>,
    /// The current cut, if any; set by `cut_for`, read by connections.
    cut_tx: watch::Sender<Option<Cut>>,
    counters: Counters,
}

impl Shared {
    fn current_cut(&self) -> Option<Cut> {
        let cut = *self.cut_tx.borrow();
        cut.filter(|cut| cut.until > Instant::now())
    }

    /// Waits until no stalling cut is in force.
    async fn wait_while_stalled(&self) {
        while let Some(cut) = self.current_cut() {
            if cut.mode != CutMode::Stall {
                return;
            }
            let mut cut_rx = self.cut_tx.subscribe();
            tokio::select! {
                _ = tokio::time::sleep_until(cut.until) => {}
                _ = cut_rx.changed() => {}
            }
        }
    }
}

#[derive(Default)]
struct Counters {
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    writes_up: AtomicU64,
    writes_down: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    upstream_failures: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ProxyCounters {
        ProxyCounters {
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            writes_up: self.writes_up.load(Ordering::Relaxed),
            writes_down: self.writes_down.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            upstream_failures: self.upstream_failures.load(Ordering::Relaxed),
        }
    }
}

/// A token bucket shared by all connections of one direction. Callers
/// reserve bytes and sleep until their reservation is covered, so the
/// order of callers is kept and the average rate never exceeds the cap.
#[derive(Default)]
struct TokenBucket {
    state: Mutex<BucketState>,
}

#[derive(Default)]
struct BucketState {
    /// Bytes per second; `None` means no cap.
    rate: Option<u64>,
    /// Bytes available now; negative while callers wait for reserved bytes.
    tokens: f64,
    refilled_at: Option<Instant>,
}

impl TokenBucket {
    fn set_rate(&self, rate: Option<u64>) {
        let mut state = lock(&self.state);
        state.rate = rate.filter(|rate| *rate > 0);
        state.tokens = 0.0;
        state.refilled_at = Some(Instant::now());
    }

    /// Waits until `bytes` may pass.
    async fn take(&self, bytes: usize) {
        let wait = {
            let mut state = lock(&self.state);
            let Some(rate) = state.rate else {
                return;
            };
            let rate = rate as f64;
            let now = Instant::now();
            let elapsed = state
                .refilled_at
                .map_or(0.0, |at| now.duration_since(at).as_secs_f64());
            // A burst of at most a tenth of a second's worth of bytes.
            state.tokens = (state.tokens + elapsed * rate).min(rate / 10.0);
            state.refilled_at = Some(now);
            state.tokens -= bytes as f64;
            if state.tokens >= 0.0 {
                return;
            }
            Duration::from_secs_f64(-state.tokens / rate)
        };
        tokio::time::sleep(wait).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(err) => {
                // Usually out of file descriptors; wait instead of spinning.
                tracing::warn!(error = %err, "fault proxy: accept failed; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);

        if let Some(cut) = shared.current_cut()
            && cut.mode == CutMode::Refuse
        {
            shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            drop(client);
            continue;
        }
        let dropped = lock(&shared.drop_token).clone();
        tokio::spawn(forward(client, shared.clone(), dropped));
    }
}

/// Forwards one connection until either side closes or it is dropped.
async fn forward(client: TcpStream, shared: Arc<Shared>, dropped: CancellationToken) {
    shared.wait_while_stalled().await;
    let connect = tokio::time::timeout(
        UPSTREAM_CONNECT_TIMEOUT,
        TcpStream::connect(shared.upstream),
    );
    let upstream = match connect.await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(err)) => {
            shared
                .counters
                .upstream_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(upstream = %shared.upstream, error = %err, "fault proxy: upstream connect failed");
            return;
        }
        Err(_) => {
            shared
                .counters
                .upstream_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(upstream = %shared.upstream, "fault proxy: upstream connect timed out");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);

    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let up = pump(client_read, upstream_write, shared.clone(), Direction::Up);
    let down = pump(upstream_read, client_write, shared.clone(), Direction::Down);
    tokio::select! {
        _ = dropped.cancelled() => {}
        _ = async { tokio::join!(up, down) } => {}
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

/// Moves bytes one way: a reader task queues timestamped chunks, and the
/// writer releases each after the delay, the bandwidth cap and any stall.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: Arc<Shared>,
    direction: Direction,
) {
    let (chunk_tx, mut chunk_rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUED_CHUNKS_PER_DIRECTION);

    let reader_shared = shared.clone();
    let reader = async move {
        let mut buffer = vec![0u8; CHUNK_BYTES];
        loop {
            match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => {
                    let due = Instant::now() + *lock(&reader_shared.delay);
                    if chunk_tx.send((due, buffer[..read].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    };

    let writer = async {
        let (bucket, bytes, writes) = match direction {
            Direction::Up => (
                &shared.up_bucket,
                &shared.counters.bytes_up,
                &shared.counters.writes_up,
            ),
            Direction::Down => (
                &shared.down_bucket,
                &shared.counters.bytes_down,
                &shared.counters.writes_down,
            ),
        };
        while let Some((due, chunk)) = chunk_rx.recv().await {
            tokio::time::sleep_until(due).await;
            bucket.take(chunk.len()).await;
            shared.wait_while_stalled().await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            writes.fetch_add(1, Ordering::Relaxed);
        }
        // The source closed: pass the end of stream on.
        let _ = to.shutdown().await;
    };

    tokio::join!(reader, writer);
}
