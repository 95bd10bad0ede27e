//! The local intake: a minimal MQTT 3.1.1 server on loopback that node apps
//! publish toll records to.
//!
//! Apps publish one CBOR `TollRecord` per message on [`INTAKE_TOPIC`]. The
//! intake only receives: it has no subscriptions and never publishes.
//!
//! - QoS 1: the PUBACK is sent only after the record is durable in the
//!   outbox (its group commit returned), so a PUBACK is custody.
//! - QoS 0: the record takes the same path (validated, committed, held under
//!   back-pressure), but the app gets no confirmation, so a record still in
//!   flight when the connection or the daemon dies is lost without notice.
//!   Toll apps should publish with QoS 1.
//! - QoS 2 is not supported and closes the connection.
//!
//! Rejections: MQTT 3.1.1 has no reason code on PUBACK, and a PUBACK for a
//! rejected record would claim custody that the node does not have. So an
//! invalid payload, an unknown topic, a QoS 2 publish, an oversized or
//! malformed packet, and any protocol violation close that connection with
//! a warning in the log. The app's client keeps the unacknowledged message
//! and gets a connection error. SUBSCRIBE gets a failure SUBACK (return
//! code 0x80), which MQTT 3.1.1 provides for it, and the connection stays
//! open. Other connections are not affected by any of these.
//!
//! Back-pressure: when the outbox is at its disk cap, the intake keeps the
//! record, sends no PUBACK and retries the append with back-off until the
//! outbox has room; nothing is dropped.

mod config;
mod connection;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tollway_runtime::CancellationToken;

use crate::outbox::Outbox;

pub use config::{INTAKE_TOPIC, IntakeConfig, MAX_PACKET_BYTES_LIMIT};

/// Failure to start the intake.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("invalid intake settings: {0}")]
    InvalidConfig(String),

    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Counters of the intake's work since it started.
#[derive(Debug, Default)]
pub struct IntakeCounters {
    /// Connections accepted and served.
    pub connections: AtomicU64,
    /// Connections closed at once because `max_connections` was reached.
    pub connections_over_limit: AtomicU64,
    /// Records the outbox accepted (durable), resends included.
    pub records: AtomicU64,
    /// Resent records the outbox already held (same transaction id): they
    /// were acknowledged again and took no new seq.
    pub duplicates: AtomicU64,
    /// Connections closed because of a rejection (see the module comment).
    pub rejections: AtomicU64,
    /// Appends rejected by the outbox's disk cap and retried later.
    pub backpressure_retries: AtomicU64,
}

impl IntakeCounters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A bound intake listener, ready to run.
pub struct Intake {
    listener: TcpListener,
    config: Arc<IntakeConfig>,
    outbox: Arc<Outbox>,
    counters: Arc<IntakeCounters>,
}

impl Intake {
    /// Validates the settings and binds the listener.
    pub async fn bind(config: IntakeConfig, outbox: Arc<Outbox>) -> Result<Self, IntakeError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(IntakeError::InvalidConfig(problems.join("; ")));
        }
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| IntakeError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Ok(Intake {
            listener,
            config: Arc::new(config),
            outbox,
            counters: Arc::new(IntakeCounters::default()),
        })
    }

    /// Returns the address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Counters shared with the running intake.
    pub fn counters(&self) -> Arc<IntakeCounters> {
        Arc::clone(&self.counters)
    }

    /// Serves connections until `shutdown` is cancelled, then lets every
    /// connection finish the appends it already submitted (sending their
    /// PUBACKs) and returns when all connections are closed.
    pub async fn run(self, shutdown: CancellationToken) {
        let addr = self.local_addr().ok();
        tracing::info!(addr = ?addr, topic = INTAKE_TOPIC, "intake listening");

        // One permit per open connection; a permit is returned when its
        // connection task ends.
        let permits = Arc::new(Semaphore::new(self.config.max_connections));
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(err) => {
                            // Usually out of file descriptors; pause so the
                            // loop does not spin while it lasts.
                            tracing::warn!(error = %err, "intake accept failed; retrying in 100 ms");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                        let over = self.counters.connections_over_limit.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::warn!(
                            %peer,
                            max_connections = self.config.max_connections,
                            total_over_limit = over,
                            "intake connection limit reached; closing the new connection"
                        );
                        drop(stream);
                        continue;
                    };
                    self.counters.connections.fetch_add(1, Ordering::Relaxed);

                    let context = connection::Context {
                        config: Arc::clone(&self.config),
                        outbox: Arc::clone(&self.outbox),
                        counters: Arc::clone(&self.counters),
                    };
                    let cancel = shutdown.child_token();
                    connections.spawn(async move {
                        connection::serve(stream, peer, context, cancel).await;
                        drop(permit);
                    });
                }
            }
        }

        tracing::info!(
            open = connections.len(),
            "intake stopping; settling open connections"
        );
        while connections.join_next().await.is_some() {}
        tracing::info!("intake stopped");
    }
}
