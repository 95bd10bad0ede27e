//! Shared subscriptions on a provincial broker: every message reaches one
//! member of the group, and one topic always reaches the same member.

use std::collections::HashMap;
use std::time::Duration;

use rumqttc::{Event, Packet, QoS};
use tollway_testkit::*;

const FILTER: &str = "$share/ingest/tollway/v1/44/node/+/records";

/// Connects a service client, subscribes to [`FILTER`] and returns a task
/// that collects the topics it receives for `listen`.
async fn member(
    files: &BrokerFiles,
    id: &str,
    listen: Duration,
) -> tokio::task::JoinHandle<Vec<String>> {
    let (client, mut eventloop, ack) =
        connect(service_options(files, id, Some(SERVICE_PASSWORD))).await;
    ack.expect("service client was not accepted");
    client.subscribe(FILTER, QoS::AtLeastOnce).await.unwrap();
    next_packet(&mut eventloop, Duration::from_secs(2), |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await
    .expect("no SUBACK");
    tokio::spawn(async move {
        let _client = client;
        let mut topics = Vec::new();
        let _ = tokio::time::timeout(listen, async {
            loop {
                if let Ok(Event::Incoming(Packet::Publish(publish))) = eventloop.poll().await {
                    topics.push(publish.topic.clone());
                }
            }
        })
        .await;
        topics
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_group_splits_by_topic() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let listen = Duration::from_secs(4);
    let a = member(&files, "member-a", listen).await;
    let b = member(&files, "member-b", listen).await;

    let (publisher, mut eventloop, ack) =
        connect(service_options(&files, "publisher", Some(SERVICE_PASSWORD))).await;
    ack.unwrap();
    // The client's request queue has room for 16 publishes, so the event loop is
    // polled while the test publishes.
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while acked < 60 {
                if let Ok(Event::Incoming(Packet::PubAck(_))) = eventloop.poll().await {
                    acked += 1;
                }
            }
        })
        .await;
        acked
    });
    for round in 0..3 {
        for node in 0..20 {
            let payload = format!("{round}").into_bytes();
            publisher
                .publish(
                    node_topic(&format!("n{node}"), "records"),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .unwrap();
        }
    }
    let acked = acks.await.unwrap();
    assert_eq!(
        acked, 60,
        "the broker acknowledged only {acked} of 60 publishes"
    );

    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(
        a.len() + b.len(),
        60,
        "a got {}, b got {}",
        a.len(),
        b.len()
    );
    assert!(
        !a.is_empty() && !b.is_empty(),
        "a got {}, b got {}",
        a.len(),
        b.len()
    );
    let mut owner: HashMap<&str, &str> = HashMap::new();
    for (member, topics) in [("a", &a), ("b", &b)] {
        for topic in topics.iter() {
            let previous = owner.insert(topic, member);
            assert!(
                previous.is_none() || previous == Some(member),
                "{topic} reached both members"
            );
        }
    }
    assert_eq!(owner.len(), 20);
}
