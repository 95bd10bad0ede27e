//! Helpers for tests that run the real `tollway-edge` program against a
//! real `tollway-broker`: a node's files and process, a small test centre
//! that stores records by (node, seq) and acknowledges them, and an intake
//! publisher that survives the daemon being killed.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::QoS as RawQoS;
use rumqttc::mqttbytes::v4::{Codec, Connect, Packet as RawPacket, Publish as RawPublish};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tollway_testkit::{BrokerFiles, PROVINCE, SERVICE_PASSWORD, bin_path, service_options};
use tollway_topics::{
    Command as NodeCommand, CommandResult, HourlySummary, Message, NodeStatus, Presence, RecordAck,
    RecordBatch, TollRecord,
};

/// Path of the edge daemon: `TOLLWAY_EDGE_BIN` when set (a private copy,
/// safe from concurrent builds), otherwise the workspace build.
pub fn edge_bin() -> PathBuf {
    std::env::var_os("TOLLWAY_EDGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_path("tollway-edge"))
}

fn free_port() -> u16 {
    tollway_testkit::port::reserve()
}

/// Settings a test changes in a node's configuration.
#[derive(Clone)]
pub struct NodeOptions {
    /// Put an endpoint nobody listens on before the broker, so the link
    /// must fail over.
    pub dead_endpoint_first: bool,
    pub max_undelivered_bytes: Option<u64>,
    pub retention_s: Option<u64>,
    pub resend_timeout_s: u64,
    pub heartbeat_s: u64,
    pub keep_alive_s: u64,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            dead_endpoint_first: false,
            max_undelivered_bytes: None,
            retention_s: None,
            resend_timeout_s: 3,
            heartbeat_s: 300,
            keep_alive_s: 5,
        }
    }
}

/// Removes a node's containers when dropped, passed or failed: the daemon
/// leaves its apps running when it stops, as it should on a node.
pub struct Containers(pub String);

impl Drop for Containers {
    fn drop(&mut self) {
        tollway_testkit::podman::remove_labelled("io.tollway.node", &self.0);
    }
}

/// One edge daemon: its directory, configuration and process.
pub struct Node {
    pub id: String,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub intake: SocketAddr,
    child: Option<Child>,
}

impl Node {
    /// Writes the node's certificate, key and configuration.
    pub fn new(files: &BrokerFiles, id: &str, options: NodeOptions) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let pem = files.ca.node_cert(id);
        let d = dir.path();
        std::fs::write(d.join("ca.crt"), &files.ca.cert_pem).unwrap();
        std::fs::write(d.join("node.crt"), &pem.cert).unwrap();
        std::fs::write(d.join("node.key"), &pem.key).unwrap();
        let intake = SocketAddr::from(([127, 0, 0, 1], free_port()));

        let mut endpoints = String::new();
        if options.dead_endpoint_first {
            endpoints.push_str(&format!(
                "[[link.endpoints]]\nname = \"dead\"\nhost = \"127.0.0.1\"\nport = {}\n\n",
                free_port()
            ));
        }
        endpoints.push_str(&format!(
            "[[link.endpoints]]\nname = \"province\"\nhost = \"127.0.0.1\"\nport = {}\n",
            files.ports.node
        ));
        let mut outbox = String::from("[outbox]\nblock_cache_bytes = 1048576\n");
        if let Some(cap) = options.max_undelivered_bytes {
            outbox.push_str(&format!("max_undelivered_bytes = {cap}\n"));
        }
        if let Some(retention) = options.retention_s {
            outbox.push_str(&format!("retention_s = {retention}\n"));
        }

        let text = format!(
            r#"node = "{id}"
province = {PROVINCE}
data_dir = "{d}"
prune_interval_s = 1
labels = {{ gantry = "G001544001000201010", arch = "x86_64" }}

[link]
ca_file = "{d}/ca.crt"
cert_file = "{d}/node.crt"
key_file = "{d}/node.key"
keep_alive_s = {keep_alive}
reconnect = {{ base_ms = 100, cap_ms = 1000 }}
failures_before_next_endpoint = 2

{endpoints}
{outbox}
[intake]
listen = "{intake}"
backpressure_retry = {{ base_ms = 50, cap_ms = 200 }}

[uplink]
linger_ms = 50
resend_timeout_s = {resend}

[status]
heartbeat_s = {heartbeat}
debounce_ms = 100

[summary]
interval_s = 1
"#,
            d = d.display(),
            resend = options.resend_timeout_s,
            heartbeat = options.heartbeat_s,
            keep_alive = options.keep_alive_s,
        );
        let config = d.join("edge.toml");
        std::fs::write(&config, text).unwrap();
        Node {
            id: id.to_string(),
            dir,
            config,
            intake,
            child: None,
        }
    }

    /// Starts the daemon and waits until its intake accepts connections.
    /// Adds an `[apps]` section on the test Podman socket with fast
    /// reconcile and stop timings. Call before [`Node::start`].
    pub fn enable_apps(&self) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(&format!(
            "\n[apps]\npodman_socket = \"{}\"\nreconcile_interval_s = 1\nstop_timeout_s = 1\n",
            tollway_testkit::podman::socket().display()
        ));
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} is already running", self.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("edge.log"))
            .unwrap();
        let child = Command::new(edge_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("--log")
            .arg("info,tollway_edge=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tollway-edge starts");
        self.child = Some(child);

        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&self.intake, Duration::from_millis(100))
            .is_err()
        {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("tollway-edge exited with {status}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "tollway-edge intake not listening within 10 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon with SIGKILL.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("node is running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Stops the daemon with SIGTERM and returns its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("node is running");
        tollway_testkit::terminate(&mut child, "tollway-edge", Duration::from_secs(15))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("edge.log")).unwrap_or_default()
    }

    /// Process id of the running daemon.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is running").id()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the test centre has received.
#[derive(Default)]
pub struct CentreState {
    /// Records by (node, seq).
    pub records: BTreeMap<(String, u64), TollRecord>,
    /// Records received again with the same content.
    pub duplicates: u64,
    /// (node, seq) received with different content: always a bug.
    pub conflicts: Vec<(String, u64)>,
    pub statuses: Vec<(String, NodeStatus)>,
    /// Presence messages with their retain flag.
    pub presences: Vec<(String, Presence, bool)>,
    pub summaries: Vec<(String, HourlySummary)>,
    pub results: Vec<(String, CommandResult)>,
    /// When false, the centre stores records but sends no RecordAck.
    pub acks_enabled: bool,
}

impl CentreState {
    /// Highest seq of `node` below which every seq is stored.
    pub fn stored_through(&self, node: &str) -> u64 {
        let mut through = 0;
        for (key_node, seq) in self.records.keys() {
            if key_node == node {
                if *seq != through + 1 {
                    break;
                }
                through = *seq;
            }
        }
        through
    }

    /// Transaction ids of `node`'s records, in seq order.
    pub fn transaction_ids(&self, node: &str) -> Vec<String> {
        self.records
            .iter()
            .filter(|((key_node, _), _)| key_node == node)
            .map(|(_, record)| record.transaction_id.clone())
            .collect()
    }
}

/// A centre service on the broker's service listener: stores records by
/// (node, seq), acknowledges the highest contiguous seq, and keeps every
/// status, presence, summary and command result.
pub struct Centre {
    pub state: Arc<Mutex<CentreState>>,
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Centre {
    pub fn start(files: &BrokerFiles, client_id: &str) -> Centre {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut options = service_options(files, client_id, Some(SERVICE_PASSWORD));
        options.set_max_packet_size(1024 * 1024, 1024 * 1024);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let state = Arc::new(Mutex::new(CentreState {
            acks_enabled: true,
            ..CentreState::default()
        }));
        let task_state = Arc::clone(&state);
        let task_client = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for kind in ["records", "status", "presence", "summary", "cmd/result"] {
                            let filter = format!("tollway/v1/{PROVINCE}/node/+/{kind}");
                            task_client.try_subscribe(filter, QoS::AtLeastOnce).unwrap();
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        receive(&task_state, &task_client, publish);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Centre {
            state,
            client,
            task,
        }
    }

    /// Waits until `done` holds for the centre's state, polling every
    /// 50 ms; fails with `what` after `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&CentreState) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.state.lock().unwrap()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn set_acks(&self, enabled: bool) {
        self.state.lock().unwrap().acks_enabled = enabled;
    }

    /// Publishes `payload` with QoS 1 on `node`'s topic ending in `suffix`.
    pub async fn publish_to(&self, node: &str, suffix: &str, payload: Vec<u8>, retain: bool) {
        let topic = format!("tollway/v1/{PROVINCE}/node/{node}/{suffix}");
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .unwrap();
    }

    /// Sends a command to `node` on its `cmd` topic.
    pub async fn send_command(&self, node: &str, command: &NodeCommand) {
        let topic = format!("tollway/v1/{PROVINCE}/node/{node}/cmd");
        self.client
            .publish(topic, QoS::AtLeastOnce, false, command.to_cbor().unwrap())
            .await
            .unwrap();
    }
}

impl Drop for Centre {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn node_of(topic: &str) -> (String, String) {
    // tollway/v1/44/node/{node}/{kind...}
    let levels: Vec<&str> = topic.splitn(6, '/').collect();
    (levels[4].to_string(), levels[5].to_string())
}

fn receive(state: &Mutex<CentreState>, client: &AsyncClient, publish: rumqttc::Publish) {
    let (node, kind) = node_of(&publish.topic);
    let mut state = state.lock().unwrap();
    match kind.as_str() {
        "records" => {
            let batch = RecordBatch::from_cbor(&publish.payload).expect("node sends valid batches");
            for (seq, record) in batch.sequenced() {
                match state.records.get(&(node.clone(), seq)) {
                    Some(stored) if stored == record => state.duplicates += 1,
                    Some(_) => state.conflicts.push((node.clone(), seq)),
                    None => {
                        state.records.insert((node.clone(), seq), record.clone());
                    }
                }
            }
            if state.acks_enabled {
                let ack = RecordAck {
                    stored_through: state.stored_through(&node),
                };
                let topic = format!("tollway/v1/{PROVINCE}/node/{node}/records/ack");
                let _ = client.try_publish(topic, QoS::AtLeastOnce, false, ack.to_cbor().unwrap());
            }
        }
        "status" => {
            let status = NodeStatus::from_cbor(&publish.payload).expect("node sends valid status");
            state.statuses.push((node, status));
        }
        "presence" => {
            let presence = Presence::from_cbor(&publish.payload).expect("valid presence");
            state.presences.push((node, presence, publish.retain));
        }
        "summary" => {
            let summary = HourlySummary::from_cbor(&publish.payload).expect("valid summary");
            state.summaries.push((node, summary));
        }
        "cmd/result" => {
            let result = CommandResult::from_cbor(&publish.payload).expect("valid result");
            state.results.push((node, result));
        }
        _ => {}
    }
}

/// A QoS 1 publisher to a node's intake that reconnects whenever the
/// daemon goes away, and reports which records got a PUBACK.
pub struct IntakePublisher {
    framed: Option<Framed<TcpStream, Codec>>,
    addr: SocketAddr,
    client_id: String,
    pkid: u16,
}

/// Result of one publish attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Acked,
    /// The connection failed before the PUBACK; the record may or may not
    /// be stored.
    Unknown,
}

impl IntakePublisher {
    pub fn new(addr: SocketAddr, client_id: &str) -> Self {
        IntakePublisher {
            framed: None,
            addr,
            client_id: client_id.to_string(),
            pkid: 0,
        }
    }

    async fn connect(&mut self) -> bool {
        let Ok(stream) = TcpStream::connect(self.addr).await else {
            return false;
        };
        let codec = Codec {
            max_incoming_size: 1024 * 1024,
            max_outgoing_size: 1024 * 1024,
        };
        let mut framed = Framed::new(stream, codec);
        let mut connect = Connect::new(self.client_id.clone());
        connect.keep_alive = 30;
        if framed.send(RawPacket::Connect(connect)).await.is_err() {
            return false;
        }
        match tokio::time::timeout(Duration::from_secs(5), framed.next()).await {
            Ok(Some(Ok(RawPacket::ConnAck(_)))) => {
                self.framed = Some(framed);
                true
            }
            _ => false,
        }
    }

    /// Publishes one record with QoS 1 and waits up to `wait` for its
    /// PUBACK, connecting first if needed.
    pub async fn publish(&mut self, record: &TollRecord, wait: Duration) -> Outcome {
        if self.framed.is_none() && !self.connect().await {
            return Outcome::Unknown;
        }
        self.pkid = self.pkid % 60_000 + 1;
        let mut publish = RawPublish::new(
            tollway_topics::LOCAL_RECORDS_TOPIC,
            RawQoS::AtLeastOnce,
            record.to_cbor().unwrap(),
        );
        publish.pkid = self.pkid;
        let framed = self.framed.as_mut().unwrap();
        if framed.send(RawPacket::Publish(publish)).await.is_err() {
            self.framed = None;
            return Outcome::Unknown;
        }
        match tokio::time::timeout(wait, framed.next()).await {
            Ok(Some(Ok(RawPacket::PubAck(ack)))) if ack.pkid == self.pkid => Outcome::Acked,
            Ok(_) => {
                self.framed = None;
                Outcome::Unknown
            }
            // No PUBACK yet (back-pressure): the connection stays, the
            // record stays unconfirmed.
            Err(_) => Outcome::Unknown,
        }
    }

    /// Waits up to `wait` for a PUBACK on the open connection and returns
    /// its packet id.
    pub async fn wait_puback(&mut self, wait: Duration) -> Option<u16> {
        let framed = self.framed.as_mut()?;
        match tokio::time::timeout(wait, framed.next()).await {
            Ok(Some(Ok(RawPacket::PubAck(ack)))) => Some(ack.pkid),
            _ => None,
        }
    }

    /// Publishes records in order and panics if any is not acknowledged.
    pub async fn publish_all(&mut self, records: &[TollRecord]) {
        for record in records {
            assert_eq!(
                self.publish(record, Duration::from_secs(10)).await,
                Outcome::Acked,
                "intake did not acknowledge {}",
                record.transaction_id
            );
        }
    }
}
