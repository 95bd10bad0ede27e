//! An MQTT client whose event loop runs in a task and records every
//! message it receives, so a test can publish, wait for arrivals and look
//! at their order.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::connect;

/// A message as a subscriber received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// A connected client that records what it receives.
pub struct Collector {
    pub client: AsyncClient,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Connects with `options`, subscribes to `filters` at QoS 1, waits for
    /// the SUBACKs and starts recording. Panics if the login fails.
    pub async fn start(options: MqttOptions, filters: &[&str]) -> Self {
        let (client, mut eventloop, ack) = connect(options).await;
        ack.expect("collector login failed");
        for filter in filters {
            client.subscribe(*filter, QoS::AtLeastOnce).await.unwrap();
        }
        let mut subacks = 0;
        while subacks < filters.len() {
            let packet = crate::next_packet(&mut eventloop, Duration::from_secs(5), |p| {
                matches!(p, Packet::SubAck(_)).then_some(())
            })
            .await;
            packet.expect("no SUBACK for the collector's subscription");
            subacks += 1;
        }

        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        sink.lock().unwrap().push(Received {
                            topic: publish.topic.clone(),
                            payload: publish.payload.to_vec(),
                            retain: publish.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        Collector {
            client,
            received,
            task,
        }
    }

    /// Returns a copy of everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what was received, or `timeout`
    /// passes; returns whether it held.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[Received]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.received.lock().unwrap()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Returns whether a message with `payload` has arrived.
    pub fn has_payload(&self, payload: &[u8]) -> bool {
        self.received
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.payload == payload)
    }

    /// Publishes at QoS 1; the event loop task sends it.
    pub async fn publish(&self, topic: &str, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.into())
            .await
            .unwrap();
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}
