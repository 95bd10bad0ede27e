//! Test support for the centre services: a `tollway-center` process with a
//! generated configuration, a JSON client for its query API, and simulated
//! nodes that publish record batches over mutual TLS like an edge daemon.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, ExitStatus};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;
use tollway_testkit::{
    BrokerFiles, SERVICE_PASSWORD, SERVICE_USER, bin_path, connect, node_options, service_options,
};
use tollway_topics::{
    CenterEvent, Command, CommandAction, CommandResult, HourlySummary, MediaType, Message, NodeId,
    PlateColour, RecordBatch, TollRecord, TradeResult, VehicleClass, VehicleType,
};

pub const GANTRY: &str = "G001544001000201010";
/// Pass time of record seq 1; each later seq passes one second later.
pub const BASE_TIME_MS: u64 = 1_796_358_000_000;
pub const HOUR: u32 = 2026120412;

/// Returns a free loopback port.
pub fn free_port() -> u16 {
    tollway_testkit::port::reserve()
}

/// Builds the toll record a simulated node sends as `seq`: fee 1000 + seq fen,
/// pay fee 900 + seq fen, passing one second after the previous one.
pub fn record(node: &str, seq: u64) -> TollRecord {
    TollRecord {
        transaction_id: format!("{node}-{seq}"),
        gantry_id: GANTRY.to_string(),
        pass_time_ms: BASE_TIME_MS + seq * 1000,
        media_type: MediaType::Obu,
        media_id: 0x4401_0000_0000_0000 + seq,
        plate: "粤B12345".to_string(),
        plate_colour: PlateColour::Blue,
        vehicle_type: VehicleType::Passenger1,
        vehicle_class: VehicleClass::Ordinary,
        axle_count: 2,
        fee: 1000 + seq as u32,
        pay_fee: 900 + seq as u32,
        discount_fee: 100,
        toll_intervals: vec![],
        trade_result: TradeResult::Success,
        antenna_id: 1,
        hour_batch: HOUR,
    }
}

/// Sum of the pay fees of seqs `from..=to`, as [`record`] makes them.
pub fn pay_fee_sum(from: u64, to: u64) -> u64 {
    (from..=to).map(|seq| 900 + seq).sum()
}

/// Which services a centre process runs.
#[derive(Clone)]
pub struct CenterSpec {
    pub client_id: String,
    pub ingest: bool,
    pub forwarder: bool,
    pub national: bool,
    pub reconcile_interval_s: u64,
    pub resend_after_s: u64,
}

impl CenterSpec {
    pub fn ingest(client_id: &str) -> Self {
        CenterSpec {
            client_id: client_id.to_string(),
            ingest: true,
            forwarder: false,
            national: false,
            reconcile_interval_s: 3600,
            resend_after_s: 30,
        }
    }

    /// Subscriptions the process makes: three filters for the ingest, one
    /// each for the forwarder and the national ingest.
    pub fn subscriptions(&self) -> u64 {
        3 * self.ingest as u64 + self.forwarder as u64 + self.national as u64
    }

    pub fn national(client_id: &str) -> Self {
        CenterSpec {
            ingest: false,
            national: true,
            ..CenterSpec::ingest(client_id)
        }
    }
}

/// A `tollway-center` process, killed on drop.
pub struct Center {
    child: Child,
    pub query_port: u16,
    pub config: PathBuf,
}

impl Center {
    /// Writes the configuration for `spec` into `dir` (the store goes in
    /// `dir/store`) and starts the process; returns once its subscriptions
    /// are granted.
    pub fn start(files: &BrokerFiles, dir: &Path, spec: &CenterSpec) -> Center {
        Center::start_on(files.ports.service, dir, spec)
    }

    /// As [`Center::start`], for a broker whose service listener (password
    /// login as `SERVICE_USER`) is on `broker_port`.
    pub fn start_on(broker_port: u16, dir: &Path, spec: &CenterSpec) -> Center {
        let query_port = free_port();
        std::fs::create_dir_all(dir).unwrap();
        let password_file = dir.join("password");
        std::fs::write(&password_file, format!("{SERVICE_PASSWORD}\n")).unwrap();
        let mut text = format!(
            "[broker]\nport = {port}\nusername = \"{SERVICE_USER}\"\npassword_file = \"{password}\"\nclient_id = \"{client}\"\nbackoff = {{ base_ms = 100, cap_ms = 1000 }}\n\n[store]\npath = \"{store}\"\n\n[query]\nbind = \"127.0.0.1:{query_port}\"\n",
            port = broker_port,
            password = password_file.display(),
            client = spec.client_id,
            store = dir.join("store").display(),
        );
        if spec.ingest {
            text += &format!(
                "\n[ingest]\nprovince = 44\nreconcile_interval_s = {}\n",
                spec.reconcile_interval_s
            );
        }
        if spec.forwarder {
            text += &format!(
                "\n[forwarder]\nprovince = 44\nbatch_records = 8\nwindow_records = 64\nresend_after_s = {}\nresend_cap_s = {}\n",
                spec.resend_after_s,
                spec.resend_after_s * 2
            );
        }
        if spec.national {
            text += "\n[national_ingest]\n";
        }
        let config = dir.join("center.toml");
        std::fs::write(&config, text).unwrap();
        Center::start_with(&config, query_port, spec.subscriptions())
    }

    /// Starts the process again on the configuration that [`Center::start`]
    /// wrote into `dir`, with the same store and query port.
    pub fn restart(dir: &Path, subscriptions: u64) -> Center {
        let config = dir.join("center.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        let bind = text
            .lines()
            .find(|line| line.starts_with("bind = "))
            .unwrap();
        let port = bind
            .rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches('"')
            .parse()
            .unwrap();
        Center::start_with(&config, port, subscriptions)
    }

    /// Starts the process on an existing configuration.
    pub fn start_with(config: &Path, query_port: u16, subscriptions: u64) -> Center {
        let child = Process::new(bin_path("tollway-center"))
            .arg("--config")
            .arg(config)
            .arg("--log")
            .arg(tollway_testkit::log_filter())
            .spawn()
            .unwrap();
        let mut center = Center {
            child,
            query_port,
            config: config.to_path_buf(),
        };
        center.wait_ready(subscriptions);
        center
    }

    fn wait_ready(&mut self, subscriptions: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.query_port));
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("tollway-center exited with {status} before it was ready");
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
                && self.stat("subscriptions_granted") >= subscriptions
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tollway-center did not get {subscriptions} subscriptions within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GETs `path` from the query API and returns the status and JSON body.
    pub fn get(&self, path: &str) -> (u16, Value) {
        let url = format!("http://127.0.0.1:{}{path}", self.query_port);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut response = agent
            .get(&url)
            .call()
            .unwrap_or_else(|err| panic!("GET {url} failed: {err}"));
        let status = response.status().as_u16();
        let body: Value = response
            .body_mut()
            .read_json()
            .unwrap_or_else(|err| panic!("GET {url}: body is not JSON: {err}"));
        (status, body)
    }

    /// GETs `path` and expects status 200.
    pub fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Reads one counter from `/v1/stats`.
    pub fn stat(&self, name: &str) -> u64 {
        let stats = self.get_ok("/v1/stats");
        stats[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
    }

    /// Polls a counter until it reaches `expected`, failing after `timeout`.
    pub fn wait_stat(&self, name: &str, expected: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.stat(name);
            if value >= expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "counter {name} is {value}, expected {expected} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Reads the node's highest contiguous seq stored from the query API.
    pub fn stored_through(&self, node: &str) -> u64 {
        self.get_ok(&format!("/v1/nodes/44/{node}"))["stored_through"]
            .as_u64()
            .unwrap()
    }

    /// Records of the test gantry over the whole test time range.
    pub fn gantry_records(&self) -> Vec<Value> {
        let body = self.get_ok(&format!(
            "/v1/records?gantry={GANTRY}&from_ms={BASE_TIME_MS}&to_ms={}",
            BASE_TIME_MS + 10_000_000
        ));
        assert_eq!(body["truncated"], Value::Bool(false), "{body}");
        body["records"].as_array().unwrap().clone()
    }

    /// Sends SIGTERM and waits up to 15 s for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        tollway_testkit::terminate(&mut self.child, "tollway-center", Duration::from_secs(15))
    }
}

impl Drop for Center {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A simulated node on the broker's node listener.
pub struct SimNode {
    pub id: String,
    client: AsyncClient,
    acks: mpsc::UnboundedReceiver<u64>,
    commands: mpsc::UnboundedReceiver<Command>,
    poller: tokio::task::JoinHandle<()>,
}

impl SimNode {
    /// Connects with a certificate for `id` and subscribes to its ack and
    /// command topics.
    pub async fn connect(files: &BrokerFiles, id: &str) -> SimNode {
        let pem = files.ca.node_cert(id);
        let options = node_options(files, id, Some(&pem), &files.ca.cert_pem);
        let (client, mut eventloop, connack) = connect(options).await;
        connack.unwrap_or_else(|err| panic!("node {id} could not connect: {err}"));
        client
            .subscribe(topic(id, "records/ack"), QoS::AtLeastOnce)
            .await
            .unwrap();
        client
            .subscribe(topic(id, "cmd"), QoS::AtLeastOnce)
            .await
            .unwrap();

        let (acks_tx, acks) = mpsc::unbounded_channel();
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let node = id.to_string();
        let poller = tokio::spawn(async move {
            let mut subscribed = 0;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => subscribed += 1,
                    Ok(Event::Incoming(Packet::Publish(publish)))
                        if publish.topic.ends_with("/records/ack") =>
                    {
                        let ack = tollway_topics::RecordAck::from_cbor(&publish.payload).unwrap();
                        let _ = acks_tx.send(ack.stored_through);
                    }
                    Ok(Event::Incoming(Packet::Publish(publish)))
                        if publish.topic.ends_with("/cmd") =>
                    {
                        let _ = commands_tx.send(Command::from_cbor(&publish.payload).unwrap());
                    }
                    Ok(_) => {}
                    Err(err) => {
                        panic!("node {node} lost its connection: {err} (subscribed {subscribed})")
                    }
                }
            }
        });
        SimNode {
            id: id.to_string(),
            client,
            acks,
            commands,
            poller,
        }
    }

    /// Publishes a batch of `records(from..=to)`.
    pub async fn send(&self, from: u64, to: u64) {
        let batch = RecordBatch {
            node: NodeId::new(self.id.clone()).unwrap(),
            first_seq: from,
            records: (from..=to).map(|seq| record(&self.id, seq)).collect(),
            compression: tollway_topics::Compression::None,
        };
        self.send_raw("records", batch.to_cbor().unwrap()).await;
    }

    /// Publishes `payload` on one of the node's own topics.
    pub async fn send_raw(&self, kind: &str, payload: Vec<u8>) {
        self.client
            .publish(topic(&self.id, kind), QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// Publishes the hourly summary of the test gantry for seqs `from..=to`.
    pub async fn send_summary(&self, from: u64, to: u64) {
        let summary = HourlySummary {
            gantry_id: GANTRY.to_string(),
            hour_batch: HOUR,
            count: to - from + 1,
            fee_sum: pay_fee_sum(from, to),
            first_seq: Some(from),
            last_seq: Some(to),
        };
        self.send_raw("summary", summary.to_cbor().unwrap()).await;
    }

    /// Publishes a successful result for command `id`.
    pub async fn send_result(&self, id: u64) {
        let result = CommandResult {
            id,
            ok: true,
            message: None,
            output: None,
        };
        self.send_raw("cmd/result", result.to_cbor().unwrap()).await;
    }

    /// Waits for the next RecordAck and returns its seq.
    pub async fn next_ack(&mut self, timeout: Duration) -> u64 {
        tokio::time::timeout(timeout, self.acks.recv())
            .await
            .unwrap_or_else(|_| panic!("node {}: no RecordAck within {timeout:?}", self.id))
            .unwrap()
    }

    /// Waits up to `timeout` for the next RecordAck; `None` when none came.
    pub async fn try_next_ack(&mut self, timeout: Duration) -> Option<u64> {
        tokio::time::timeout(timeout, self.acks.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits for the next command.
    pub async fn next_command(&mut self, timeout: Duration) -> Command {
        tokio::time::timeout(timeout, self.commands.recv())
            .await
            .unwrap_or_else(|_| panic!("node {}: no command within {timeout:?}", self.id))
            .unwrap()
    }

    /// Returns the replay range of a command, failing on any other action.
    pub fn replay_range(command: &Command) -> (u64, u64) {
        match command.action {
            CommandAction::Replay { from_seq, to_seq } => (from_seq, to_seq),
            ref other => panic!("expected a Replay command, got {other:?}"),
        }
    }

    /// Returns true when no ack arrives within `wait`.
    pub async fn no_ack_within(&mut self, wait: Duration) -> Option<u64> {
        tokio::time::timeout(wait, self.acks.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

fn topic(node: &str, kind: &str) -> String {
    tollway_testkit::node_topic(node, kind)
}

/// A service client that collects CenterEvents of province 44.
pub struct EventWatcher {
    events: mpsc::UnboundedReceiver<CenterEvent>,
    poller: tokio::task::JoinHandle<()>,
}

impl EventWatcher {
    pub async fn connect(files: &BrokerFiles) -> EventWatcher {
        let options = service_options(files, "event-watcher", Some(SERVICE_PASSWORD));
        let (client, mut eventloop, connack) = connect(options).await;
        connack.unwrap();
        client
            .subscribe("tollway/v1/44/center/events", QoS::AtLeastOnce)
            .await
            .unwrap();
        let (events_tx, events) = mpsc::unbounded_channel();
        let poller = tokio::spawn(async move {
            let _client = client;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let _ = events_tx.send(CenterEvent::from_cbor(&publish.payload).unwrap());
                    }
                    Ok(_) => {}
                    Err(err) => panic!("event watcher lost its connection: {err}"),
                }
            }
        });
        EventWatcher { events, poller }
    }

    /// Waits for an event of `kind`, skipping others.
    pub async fn wait_for(
        &mut self,
        kind: tollway_topics::EventKind,
        timeout: Duration,
    ) -> CenterEvent {
        let found = tokio::time::timeout(timeout, async {
            loop {
                let event = self.events.recv().await.unwrap();
                if event.kind == kind {
                    return event;
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no {kind:?} event within {timeout:?}"))
    }
}

impl Drop for EventWatcher {
    fn drop(&mut self) {
        self.poller.abort();
    }
}
