//! A fleet of simulated edge nodes that report on their desired state the
//! way an edge daemon does, for controller tests with a thousand nodes and
//! more.
//!
//! Each node is its own mutual-TLS MQTT session (the broker checks that a
//! node only touches its own topics). On every desired state it receives, a
//! node publishes a status for that generation: each app running, with
//! `next_image_ready` set when the spec names a next image and
//! `last_switch_ms` set once its image has changed, unless the test marked
//! the node as failing on the app's image. Then the app is reported failed
//! with restarts, as a crash-looping container is.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, LastWill, Packet, QoS};
use tollway_topics::{AppState, AppStatus, DesiredState, Message, NodeStatus, Presence};

use crate::{BrokerFiles, node_options, node_topic};

/// Nodes connecting at once; the broker's TLS handshake queue is bounded.
const CONNECT_BATCH: usize = 50;
/// The interruption a simulated node reports for a switch, in milliseconds.
pub const SIM_SWITCH_MS: u32 = 1_200;

/// The simulated nodes' behaviour, shared with the test.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// Node ids that fail on an image, by image.
    pub failing: HashMap<String, HashSet<String>>,
}

/// One simulated node's view of its last desired state.
#[derive(Debug, Default)]
struct NodeMemory {
    /// The image each app ran in the last status.
    images: HashMap<String, String>,
    switches: HashMap<String, u32>,
}

/// A running fleet; its sessions end when it is dropped.
pub struct SimFleet {
    pub ids: Vec<String>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    labels: BTreeMap<String, BTreeMap<String, String>>,
    subscribed: Arc<AtomicUsize>,
    statuses: Arc<AtomicUsize>,
    tasks: HashMap<String, tokio::task::JoinHandle<()>>,
}

impl SimFleet {
    /// Connects `labels.len()` nodes, named by the map's keys, and waits
    /// until every one has subscribed to its desired topic.
    pub async fn start(
        files: &BrokerFiles,
        labels: BTreeMap<String, BTreeMap<String, String>>,
    ) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let subscribed = Arc::new(AtomicUsize::new(0));
        let statuses = Arc::new(AtomicUsize::new(0));
        let mut fleet = SimFleet {
            ids: labels.keys().cloned().collect(),
            behaviour: behaviour.clone(),
            labels: labels.clone(),
            subscribed: subscribed.clone(),
            statuses: statuses.clone(),
            tasks: HashMap::with_capacity(labels.len()),
        };
        let entries: Vec<(String, BTreeMap<String, String>)> = labels.into_iter().collect();
        for batch in entries.chunks(CONNECT_BATCH) {
            let target = subscribed.load(Ordering::SeqCst) + batch.len();
            for (id, node_labels) in batch {
                let task = spawn_node(
                    files,
                    id.clone(),
                    node_labels.clone(),
                    behaviour.clone(),
                    subscribed.clone(),
                    statuses.clone(),
                );
                fleet.tasks.insert(id.clone(), task);
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            while subscribed.load(Ordering::SeqCst) < target {
                assert!(
                    Instant::now() < deadline,
                    "simulated nodes did not subscribe within 60 s: {} of {target}",
                    subscribed.load(Ordering::SeqCst)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        fleet
    }

    /// Makes `nodes` fail on `image` from their next desired state on.
    pub fn fail_on(&self, image: &str, nodes: impl IntoIterator<Item = String>) {
        let mut behaviour = self.behaviour.lock().unwrap();
        behaviour
            .failing
            .entry(image.to_string())
            .or_default()
            .extend(nodes);
    }

    /// Drops node `id`'s connection without a DISCONNECT, as a cut link
    /// would, so the broker publishes its offline will.
    pub fn disconnect(&mut self, id: &str) {
        if let Some(task) = self.tasks.remove(id) {
            task.abort();
        }
    }

    /// Connects node `id` again after [`SimFleet::disconnect`] and waits
    /// until it has subscribed. The node starts with no memory of earlier
    /// images, as a daemon whose process restarted.
    pub async fn reconnect(&mut self, files: &BrokerFiles, id: &str) {
        let target = self.subscribed.load(Ordering::SeqCst) + 1;
        let task = spawn_node(
            files,
            id.to_string(),
            self.labels[id].clone(),
            self.behaviour.clone(),
            self.subscribed.clone(),
            self.statuses.clone(),
        );
        self.tasks.insert(id.to_string(), task);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.subscribed.load(Ordering::SeqCst) < target {
            assert!(
                Instant::now() < deadline,
                "node {id} did not subscribe again within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Returns how many statuses the fleet has published.
    pub fn statuses_sent(&self) -> usize {
        self.statuses.load(Ordering::SeqCst)
    }
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

fn spawn_node(
    files: &BrokerFiles,
    id: String,
    labels: BTreeMap<String, String>,
    behaviour: Arc<Mutex<Behaviour>>,
    subscribed: Arc<AtomicUsize>,
    statuses: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    let pem = files.ca.node_cert(&id);
    let mut options = node_options(files, &id, Some(&pem), &files.ca.cert_pem);
    options.set_last_will(LastWill::new(
        node_topic(&id, "presence"),
        Presence::offline().to_cbor().unwrap(),
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let desired_topic = node_topic(&id, "desired");
    let status_topic = node_topic(&id, "status");
    let presence = Presence::online(1_796_358_000_000, "0.1.0".into(), labels)
        .to_cbor()
        .unwrap();
    tokio::spawn(async move {
        let mut memory = NodeMemory::default();
        let mut counted = false;
        loop {
            let event = match eventloop.poll().await {
                Ok(event) => event,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            match event {
                Event::Incoming(Packet::ConnAck(_)) => {
                    let _ = client.try_publish(
                        node_topic(&id, "presence"),
                        QoS::AtLeastOnce,
                        true,
                        presence.clone(),
                    );
                    let _ = client.try_subscribe(&desired_topic, QoS::AtLeastOnce);
                }
                Event::Incoming(Packet::SubAck(_)) if !counted => {
                    counted = true;
                    subscribed.fetch_add(1, Ordering::SeqCst);
                }
                Event::Incoming(Packet::Publish(publish)) if publish.topic == desired_topic => {
                    let Ok(desired) = DesiredState::from_cbor(&publish.payload) else {
                        continue;
                    };
                    let status = answer(&id, &desired, &behaviour, &mut memory);
                    if client
                        .try_publish(
                            &status_topic,
                            QoS::AtLeastOnce,
                            false,
                            status.to_cbor().unwrap(),
                        )
                        .is_ok()
                    {
                        statuses.fetch_add(1, Ordering::SeqCst);
                    }
                }
                _ => {}
            }
        }
    })
}

/// Builds the status a daemon would report after applying `desired`.
fn answer(
    id: &str,
    desired: &DesiredState,
    behaviour: &Mutex<Behaviour>,
    memory: &mut NodeMemory,
) -> NodeStatus {
    let behaviour = behaviour.lock().unwrap();
    let apps = desired
        .apps
        .iter()
        .map(|spec| {
            let name = spec.name.to_string();
            let previous = memory.images.insert(name.clone(), spec.image.clone());
            if previous.is_some_and(|previous| previous != spec.image) {
                memory.switches.insert(name.clone(), SIM_SWITCH_MS);
            }
            let fails = behaviour
                .failing
                .get(&spec.image)
                .is_some_and(|nodes| nodes.contains(id));
            let (state, restarts, reason) = if fails {
                (
                    AppState::Failed,
                    3,
                    Some("exited with code 1; restart in 4.0 s".to_string()),
                )
            } else {
                (AppState::Running, 0, None)
            };
            AppStatus {
                name: name.clone(),
                state,
                restarts,
                reason,
                next_image_ready: spec.next_image.is_some(),
                last_switch_ms: memory.switches.get(&name).copied(),
            }
        })
        .collect();
    NodeStatus {
        generation: desired.generation,
        apps,
        version: "0.1.0".to_string(),
        ..NodeStatus::default()
    }
}
