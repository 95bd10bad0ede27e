//! Helpers shared by the edge daemon's integration tests: numbered toll
//! records, outboxes in temporary directories, and a raw MQTT 3.1.1 client
//! that shows exactly which packets the intake sends.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Codec, Connect, ConnectReturnCode, Packet, Publish};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tollway_edge::outbox::{Outbox, OutboxConfig};
use tollway_topics::{NodeId, TollRecord, samples};

/// Builds a valid record whose transaction id carries `n`, so tests can
/// tell records apart after a round trip.
pub fn record(n: u64) -> TollRecord {
    let mut record = samples::toll_record();
    record.transaction_id = format!("T{n:010}");
    record
}

pub fn records(range: std::ops::RangeInclusive<u64>) -> Vec<TollRecord> {
    range.map(record).collect()
}

pub fn node() -> NodeId {
    samples::node()
}

/// Settings with defaults, except a small cache to keep tests light.
pub fn config(dir: &Path) -> OutboxConfig {
    let mut config = OutboxConfig::new(dir.join("outbox"));
    config.block_cache_bytes = 1024 * 1024;
    config
}

pub fn open(dir: &Path) -> Outbox {
    Outbox::open(node(), &config(dir)).expect("outbox opens")
}

/// How long a test waits for something that should happen promptly before
/// it reports a failure.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A hand-driven MQTT 3.1.1 client over rumqttc's codec.
pub struct RawClient {
    framed: Framed<TcpStream, Codec>,
}

impl RawClient {
    /// Connects with a 30 s keep-alive and completes the CONNECT/CONNACK
    /// handshake.
    pub async fn connect(addr: SocketAddr, client_id: &str) -> RawClient {
        RawClient::connect_with_keep_alive(addr, client_id, 30).await
    }

    /// Connects with `keep_alive_s` and completes the handshake.
    pub async fn connect_with_keep_alive(
        addr: SocketAddr,
        client_id: &str,
        keep_alive_s: u16,
    ) -> RawClient {
        let mut client = RawClient::open(addr).await;
        let mut connect = Connect::new(client_id);
        connect.keep_alive = keep_alive_s;
        client.send(Packet::Connect(connect)).await;
        match client.recv().await {
            Some(Ok(Packet::ConnAck(ack))) => assert_eq!(ack.code, ConnectReturnCode::Success),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        client
    }

    /// Opens the TCP connection only.
    pub async fn open(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("intake accepts TCP");
        let codec = Codec {
            max_incoming_size: 1024 * 1024,
            max_outgoing_size: 4 * 1024 * 1024,
        };
        RawClient {
            framed: Framed::new(stream, codec),
        }
    }

    pub async fn send(&mut self, packet: Packet) {
        self.framed.send(packet).await.expect("packet sent");
    }

    pub async fn publish(&mut self, pkid: u16, qos: QoS, topic: &str, payload: Vec<u8>) {
        let mut publish = Publish::new(topic, qos, payload);
        publish.pkid = pkid;
        self.send(Packet::Publish(publish)).await;
    }

    /// Receives the next packet, or `None` when the server closed the
    /// connection. Fails the test if nothing happens within [`PATIENCE`].
    pub async fn recv(&mut self) -> Option<Result<Packet, rumqttc::mqttbytes::Error>> {
        tokio::time::timeout(PATIENCE, self.framed.next())
            .await
            .expect("the intake neither answered nor closed the connection in time")
    }

    /// Receives the next packet if one arrives within `wait`.
    pub async fn recv_within(
        &mut self,
        wait: Duration,
    ) -> Option<Option<Result<Packet, rumqttc::mqttbytes::Error>>> {
        tokio::time::timeout(wait, self.framed.next()).await.ok()
    }

    /// Asserts that the server closes the connection without sending a packet.
    pub async fn expect_closed(&mut self, why: &str) {
        match self.recv().await {
            None | Some(Err(_)) => {}
            Some(Ok(packet)) => {
                panic!("expected the intake to close the connection ({why}), got {packet:?}")
            }
        }
    }
}
