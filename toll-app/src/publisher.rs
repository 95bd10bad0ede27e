//! Hands records to the edge daemon's intake over MQTT 3.1.1 with QoS 1 and
//! keeps every record until its PUBACK arrives.
//!
//! rumqttc's own queue is not trusted: it drops unacknowledged publishes
//! when a reconnect starts a clean session. The publisher therefore keeps
//! each record it produced in its own queue until the intake acknowledged
//! it, and after a connection error it rebuilds the client and sends every
//! unacknowledged record again, oldest first. A record whose PUBACK was lost
//! reaches the intake twice in that case.
//!
//! NOTE: the intake gives a resent record a new sequence number, so a lost
//! PUBACK duplicates that transaction downstream, and only its transaction
//! id identifies the copies.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};

/// Settings of the connection to the intake.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub intake: SocketAddr,
    pub topic: String,
    pub client_id: String,
    /// Publishes sent and not yet acknowledged at most (MQTT in-flight window).
    pub max_inflight: u16,
}

/// One record kept until the intake acknowledges it.
#[derive(Debug, Clone)]
struct HeldRecord {
    /// Order of production, so resends keep the original order.
    id: u64,
    payload: Vec<u8>,
}

/// The result of one poll of the connection.
#[derive(Debug)]
pub enum Progress {
    Connected,
    /// Records acknowledged by this poll.
    Acked(u64),
    /// Nothing the caller needs to act on.
    Idle,
}

/// The MQTT client plus the records it holds.
pub struct Publisher {
    config: PublisherConfig,
    client: AsyncClient,
    event_loop: EventLoop,
    /// Records not yet handed to the client.
    backlog: VecDeque<HeldRecord>,
    /// Records handed to the client whose packet id is not known yet; the
    /// client sends them in order, so each `Outgoing::Publish` pops the front.
    handed: VecDeque<HeldRecord>,
    /// Records sent under a packet id, waiting for their PUBACK.
    inflight: HashMap<u16, HeldRecord>,
    next_id: u64,
}

impl Publisher {
    pub fn new(config: PublisherConfig) -> Self {
        let (client, event_loop) = connect(&config);
        Publisher {
            config,
            client,
            event_loop,
            backlog: VecDeque::new(),
            handed: VecDeque::new(),
            inflight: HashMap::new(),
            next_id: 0,
        }
    }

    /// Records produced and not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.backlog.len() + self.handed.len() + self.inflight.len()
    }

    /// Queues one encoded record for sending.
    pub fn push(&mut self, payload: Vec<u8>) {
        self.next_id += 1;
        self.backlog.push_back(HeldRecord {
            id: self.next_id,
            payload,
        });
        self.hand_over();
    }

    /// Polls the connection once. An error means the connection is lost: the
    /// caller waits its back-off, then calls [`Publisher::reconnect`].
    pub async fn poll(&mut self) -> Result<Progress, rumqttc::ConnectionError> {
        let event = self.event_loop.poll().await?;
        let progress = match event {
            Event::Incoming(Packet::ConnAck(_)) => Progress::Connected,
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(held) = self.handed.pop_front() {
                    self.inflight.insert(pkid, held);
                }
                Progress::Idle
            }
            Event::Incoming(Packet::PubAck(ack)) => match self.inflight.remove(&ack.pkid) {
                Some(_) => Progress::Acked(1),
                None => {
                    tracing::warn!(pkid = ack.pkid, "PUBACK for an unknown packet id; ignored");
                    Progress::Idle
                }
            },
            _ => Progress::Idle,
        };
        self.hand_over();
        Ok(progress)
    }

    /// Drops the broken client, puts every unacknowledged record back in the
    /// backlog in production order and connects again.
    pub fn reconnect(&mut self) {
        let mut unacked: Vec<HeldRecord> = self.inflight.drain().map(|(_, held)| held).collect();
        unacked.extend(self.handed.drain(..));
        unacked.extend(self.backlog.drain(..));
        unacked.sort_by_key(|held| held.id);
        self.backlog = unacked.into();

        let (client, event_loop) = connect(&self.config);
        self.client = client;
        self.event_loop = event_loop;
        self.hand_over();
    }

    /// Sends a DISCONNECT; the caller keeps polling to flush it.
    pub fn disconnect(&self) {
        if let Err(err) = self.client.try_disconnect() {
            tracing::debug!(error = %err, "DISCONNECT not queued; the connection is closing anyway");
        }
    }

    /// Moves records from the backlog to the client while the in-flight
    /// window has room. Never waits: the task that polls the event loop must
    /// not await a publish.
    fn hand_over(&mut self) {
        let window = usize::from(self.config.max_inflight);
        while self.handed.len() + self.inflight.len() < window {
            let Some(held) = self.backlog.pop_front() else {
                break;
            };
            match self.client.try_publish(
                self.config.topic.clone(),
                QoS::AtLeastOnce,
                false,
                held.payload.clone(),
            ) {
                Ok(()) => self.handed.push_back(held),
                Err(err) => {
                    tracing::debug!(error = %err, "client queue full; record stays in the backlog");
                    self.backlog.push_front(held);
                    break;
                }
            }
        }
    }
}

fn connect(config: &PublisherConfig) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(
        config.client_id.clone(),
        config.intake.ip().to_string(),
        config.intake.port(),
    );
    options.set_keep_alive(Duration::from_secs(10));
    options.set_clean_session(true);
    options.set_inflight(config.max_inflight);
    // The client's request channel has room for one window of records.
    AsyncClient::new(options, usize::from(config.max_inflight) + 1)
}
