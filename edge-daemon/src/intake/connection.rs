//! One intake connection: the MQTT 3.1.1 session from CONNECT to close.
//!
//! Packets are framed by rumqttc's MQTT 3.1.1 codec
//! (`rumqttc::mqttbytes::v4::Codec`), which also rejects a packet whose
//! remaining length passes `max_packet_bytes` before reading its body.
//! Records are submitted to the outbox as they arrive and settled in
//! arrival order, because MQTT 3.1.1 requires PUBACKs in the order of the
//! PUBLISH packets. Several records of one connection can therefore share a
//! group commit.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::v4::{
    Codec, ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode,
    UnsubAck,
};
use rumqttc::mqttbytes::{Protocol, QoS};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::codec::Framed;
use tollway_runtime::{Backoff, CancellationToken};
use tollway_topics::{Message, TollRecord};

use super::IntakeCounters;
use super::config::{INTAKE_TOPIC, IntakeConfig};
use crate::outbox::{Appended, Outbox, OutboxError, PendingAppend};

/// Shared state of the listener that each connection task uses.
pub(crate) struct Context {
    pub config: Arc<IntakeConfig>,
    pub outbox: Arc<Outbox>,
    pub counters: Arc<IntakeCounters>,
}

/// Reason the intake closed a connection.
#[derive(Debug)]
enum Rejection {
    NoConnect(&'static str),
    Codec(rumqttc::mqttbytes::Error),
    UnsupportedProtocol,
    UnknownTopic(String),
    QosTwo,
    InvalidPayload(tollway_topics::DecodeError),
    ProtocolViolation(&'static str),
    KeepAliveExpired(Duration),
    Outbox(OutboxError),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NoConnect(what) => write!(f, "no CONNECT: {what}"),
            Rejection::Codec(err) => write!(f, "malformed or oversized packet: {err}"),
            Rejection::UnsupportedProtocol => write!(f, "only MQTT 3.1.1 is supported"),
            Rejection::UnknownTopic(topic) => write!(
                f,
                "publish to unknown topic {topic:?}; records go to {INTAKE_TOPIC:?}"
            ),
            Rejection::QosTwo => write!(f, "QoS 2 is not supported; publish records with QoS 1"),
            Rejection::InvalidPayload(err) => write!(f, "invalid toll record: {err}"),
            Rejection::ProtocolViolation(what) => write!(f, "protocol violation: {what}"),
            Rejection::KeepAliveExpired(limit) => write!(
                f,
                "no packet within {} s (1.5 x keep-alive)",
                limit.as_secs_f64()
            ),
            Rejection::Outbox(err) => write!(f, "outbox failed: {err}"),
        }
    }
}

/// A record received on this connection and not yet settled.
struct InFlight {
    /// Packet id to acknowledge; `None` for QoS 0.
    pkid: Option<u16>,
    /// Kept to resubmit after back-pressure.
    record: TollRecord,
    state: AppendState,
}

enum AppendState {
    /// Submitted; resolves when its group commit is done.
    Submitted(PendingAppend),
    /// Refused by the disk cap; resubmitted at this instant.
    RetryAt(Instant),
}

/// Outcome of settling the oldest in-flight record.
enum Settled {
    Appended(Result<Appended, OutboxError>),
    RetryDue,
}

/// Serves one connection until the client disconnects, a rejection closes
/// it, or `cancel` fires and its submitted records are settled.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    context: Context,
    cancel: CancellationToken,
) {
    let max = context.config.max_packet_bytes;
    let mut framed = Framed::new(
        stream,
        Codec {
            max_incoming_size: max,
            max_outgoing_size: max,
        },
    );

    let (client_id, keep_alive_s) = match handshake(&mut framed, &context.config).await {
        Ok(accepted) => accepted,
        Err(rejection) => return reject(&context, peer, "", rejection),
    };
    tracing::debug!(%peer, client_id, "intake client connected");

    let mut session = Session {
        peer,
        client_id,
        context,
        // MQTT 3.1.1: the server may close a connection that sends nothing
        // for 1.5 times its keep-alive. Keep-alive 0 turns this off.
        keep_alive: (keep_alive_s > 0)
            .then(|| Duration::from_millis(u64::from(keep_alive_s) * 1500)),
        inflight: VecDeque::new(),
        backoff: None,
    };
    match session.run(&mut framed, cancel).await {
        Ok(()) => {
            tracing::debug!(%peer, client_id = session.client_id, "intake client disconnected")
        }
        Err(rejection) => reject(&session.context, peer, &session.client_id, rejection),
    }
}

/// Reads the CONNECT within the timeout and sends the CONNACK. Returns the client
/// id and the keep-alive interval in seconds.
async fn handshake(
    framed: &mut Framed<TcpStream, Codec>,
    config: &IntakeConfig,
) -> Result<(String, u16), Rejection> {
    let limit = Duration::from_millis(config.connect_timeout_ms);
    let connect = match timeout(limit, framed.next()).await {
        Err(_) => return Err(Rejection::NoConnect("timed out")),
        Ok(None) => return Err(Rejection::NoConnect("closed before CONNECT")),
        Ok(Some(Err(err))) => return Err(Rejection::Codec(err)),
        Ok(Some(Ok(Packet::Connect(connect)))) => connect,
        Ok(Some(Ok(_))) => return Err(Rejection::NoConnect("first packet is not CONNECT")),
    };

    if connect.protocol != Protocol::V4 {
        let _ = framed
            .send(Packet::ConnAck(ConnAck::new(
                ConnectReturnCode::RefusedProtocolVersion,
                false,
            )))
            .await;
        return Err(Rejection::UnsupportedProtocol);
    }
    // The intake keeps no session state, so it never reports one: a client
    // that asked for a persistent session resends its unacknowledged
    // messages after reconnecting, as MQTT requires of it.
    framed
        .send(Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            false,
        )))
        .await
        .map_err(Rejection::Codec)?;

    // Bound what a client id adds to every log line.
    let client_id = connect.client_id.chars().take(64).collect();
    Ok((client_id, connect.keep_alive))
}

/// Logs and counts a rejection; the caller then drops the connection.
fn reject(context: &Context, peer: SocketAddr, client_id: &str, rejection: Rejection) {
    let total = context.counters.rejections.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::warn!(%peer, client_id, reason = %rejection, total_rejections = total, "closing intake connection");
}

struct Session {
    peer: SocketAddr,
    client_id: String,
    context: Context,
    /// Maximum silence allowed from the client; `None` when it set keep-alive 0.
    keep_alive: Option<Duration>,
    /// Records in arrival order; at most `max_inflight`.
    inflight: VecDeque<InFlight>,
    /// Retry delays while the outbox applies back-pressure; `None` otherwise.
    backoff: Option<Backoff>,
}

impl Session {
    async fn run(
        &mut self,
        framed: &mut Framed<TcpStream, Codec>,
        cancel: CancellationToken,
    ) -> Result<(), Rejection> {
        let config = Arc::clone(&self.context.config);
        let keep_alive = self.keep_alive;
        let mut deadline = keep_alive.map(|limit| Instant::now() + limit);
        let mut closing = false;

        loop {
            if closing && self.inflight.is_empty() {
                return Ok(());
            }
            let can_read = !closing && self.inflight.len() < config.max_inflight;
            if !can_read {
                // The client's packets wait unread, so its silence proves nothing.
                deadline = keep_alive.map(|limit| Instant::now() + limit);
            }

            tokio::select! {
                _ = cancel.cancelled(), if !closing => {
                    closing = true;
                    self.drop_held_records();
                }
                settled = settle_front(&mut self.inflight) => {
                    self.on_settled(framed, settled).await?;
                }
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && !closing => {
                    return Err(Rejection::KeepAliveExpired(keep_alive.unwrap_or_default()));
                }
                frame = framed.next(), if can_read => {
                    let packet = match frame {
                        None => {
                            // The client closed. Submitted records are still
                            // committed, but no PUBACK can be sent.
                            return Ok(());
                        }
                        Some(Err(err)) => return Err(Rejection::Codec(err)),
                        Some(Ok(packet)) => packet,
                    };
                    deadline = keep_alive.map(|limit| Instant::now() + limit);
                    if !self.on_packet(framed, packet).await? {
                        closing = true;
                        self.drop_held_records();
                    }
                }
            }
        }
    }

    /// Handles one packet from the client. Returns false after DISCONNECT.
    async fn on_packet(
        &mut self,
        framed: &mut Framed<TcpStream, Codec>,
        packet: Packet,
    ) -> Result<bool, Rejection> {
        match packet {
            Packet::Publish(publish) => {
                self.on_publish(publish).await?;
            }
            Packet::PingReq => {
                send(framed, Packet::PingResp).await?;
            }
            Packet::Subscribe(subscribe) => {
                tracing::info!(
                    peer = %self.peer,
                    client_id = self.client_id,
                    filters = subscribe.filters.len(),
                    "intake rejected a SUBSCRIBE; the intake only receives records"
                );
                let codes = vec![SubscribeReasonCode::Failure; subscribe.filters.len()];
                send(framed, Packet::SubAck(SubAck::new(subscribe.pkid, codes))).await?;
            }
            Packet::Unsubscribe(unsubscribe) => {
                send(framed, Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid))).await?;
            }
            Packet::Disconnect => return Ok(false),
            Packet::Connect(_) => return Err(Rejection::ProtocolViolation("second CONNECT")),
            Packet::PubRel(_) | Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => {
                return Err(Rejection::ProtocolViolation(
                    "acknowledgement for a message the intake never sent",
                ));
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                return Err(Rejection::ProtocolViolation(
                    "server-to-client packet sent by the client",
                ));
            }
        }
        Ok(true)
    }

    /// Validates a PUBLISH and submits its record to the outbox.
    async fn on_publish(&mut self, publish: Publish) -> Result<(), Rejection> {
        let pkid = match publish.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(publish.pkid),
            QoS::ExactlyOnce => return Err(Rejection::QosTwo),
        };
        if publish.topic != INTAKE_TOPIC {
            return Err(Rejection::UnknownTopic(
                publish.topic.chars().take(128).collect(),
            ));
        }
        // A record resent after a lost PUBACK is recognised by the outbox
        // (same transaction id), takes no new seq and is acknowledged again.
        let record = TollRecord::from_cbor(&publish.payload).map_err(Rejection::InvalidPayload)?;

        let pending = self
            .context
            .outbox
            .submit(std::slice::from_ref(&record))
            .await
            .map_err(Rejection::Outbox)?;
        self.inflight.push_back(InFlight {
            pkid,
            record,
            state: AppendState::Submitted(pending),
        });
        Ok(())
    }

    /// Acts on the oldest record's outcome: acknowledge it, schedule a retry
    /// after back-pressure, resubmit it, or close on an outbox failure.
    async fn on_settled(
        &mut self,
        framed: &mut Framed<TcpStream, Codec>,
        settled: Settled,
    ) -> Result<(), Rejection> {
        match settled {
            Settled::Appended(Ok(appended)) => {
                let Some(done) = self.inflight.pop_front() else {
                    return Ok(());
                };
                let counters = &self.context.counters;
                counters.records.fetch_add(1, Ordering::Relaxed);
                counters
                    .duplicates
                    .fetch_add(appended.duplicates, Ordering::Relaxed);
                if self.backoff.take().is_some() {
                    tracing::info!(peer = %self.peer, client_id = self.client_id, seq = ?appended.seqs.map(|s| s.first), "outbox has room again; acknowledging records");
                }
                if let Some(pkid) = done.pkid {
                    send(framed, Packet::PubAck(PubAck::new(pkid))).await?;
                }
            }
            Settled::Appended(Err(err)) if err.is_backpressure() => {
                self.context
                    .counters
                    .backpressure_retries
                    .fetch_add(1, Ordering::Relaxed);
                let backoff = self.backoff.get_or_insert_with(|| {
                    tracing::warn!(peer = %self.peer, client_id = self.client_id, error = %err, "outbox full; holding records without PUBACK");
                    Backoff::new(self.context.config.backpressure_retry)
                });
                let retry_at = Instant::now() + backoff.next_delay();
                if let Some(front) = self.inflight.front_mut() {
                    front.state = AppendState::RetryAt(retry_at);
                }
            }
            Settled::Appended(Err(err)) => return Err(Rejection::Outbox(err)),
            Settled::RetryDue => {
                let Some(front) = self.inflight.front_mut() else {
                    return Ok(());
                };
                let pending = self
                    .context
                    .outbox
                    .submit(std::slice::from_ref(&front.record))
                    .await
                    .map_err(Rejection::Outbox)?;
                front.state = AppendState::Submitted(pending);
            }
        }
        Ok(())
    }

    /// On close, drops the records held by back-pressure (never acknowledged,
    /// so the app still has them) and everything after the first of them,
    /// because PUBACKs must stay in order. Submitted records before it are
    /// still settled and acknowledged.
    fn drop_held_records(&mut self) {
        let first_held = self
            .inflight
            .iter()
            .position(|item| matches!(item.state, AppendState::RetryAt(_)));
        if let Some(index) = first_held {
            let dropped = self.inflight.len() - index;
            self.inflight.truncate(index);
            tracing::info!(peer = %self.peer, client_id = self.client_id, dropped, "closing with records held by back-pressure; they were never acknowledged");
        }
    }
}

/// Waits for the oldest in-flight record to settle; pending forever when
/// nothing is in flight, so `select!` waits on the other branches.
async fn settle_front(inflight: &mut VecDeque<InFlight>) -> Settled {
    let Some(front) = inflight.front_mut() else {
        return std::future::pending().await;
    };
    match &mut front.state {
        AppendState::Submitted(pending) => Settled::Appended(pending.await),
        AppendState::RetryAt(at) => {
            sleep_until(*at).await;
            Settled::RetryDue
        }
    }
}

async fn send(framed: &mut Framed<TcpStream, Codec>, packet: Packet) -> Result<(), Rejection> {
    framed.send(packet).await.map_err(Rejection::Codec)
}
