//! The provincial ingest with Mosquitto as its broker. Mosquitto sends a
//! subscriber more unacknowledged messages than our broker does, which once
//! deadlocked the ingest's subscriber: its acks filled rumqttc's request
//! channel while its poll task waited for room in the ingest's queue.

mod common;

use std::time::Duration;

use common::{Center, CenterSpec, record};
use rumqttc::{Event, Packet, QoS};
use tollway_testkit::connect;
use tollway_testkit::mosquitto::MosquittoFiles;
use tollway_topics::{Compression, Message, NodeId, RecordBatch};

const NODES: u64 = 50;
const BATCHES_PER_NODE: u64 = 40;
const RECORDS_PER_BATCH: u64 = 5;

/// Every batch of a burst that runs far ahead of the ingest is stored, with
/// Mosquitto holding many messages in flight to the ingest's subscriber.
#[tokio::test(flavor = "multi_thread")]
async fn ingest_keeps_reading_mosquitto_burst() {
    let mosquitto = MosquittoFiles::national();
    // The load tests' settings: a wide in-flight window, and a queue with
    // room for the whole burst so that Mosquitto drops nothing.
    mosquitto.append_config("max_inflight_messages 16\nmax_queued_messages 100000\n");
    let _mosquitto = mosquitto.start();
    let dir = tempfile::tempdir().unwrap();
    let center = Center::start_on(
        mosquitto.plain_port,
        dir.path(),
        &CenterSpec::ingest("center"),
    );

    let mut options = mosquitto.plain_options("burst-publisher");
    options.set_inflight(500);
    let (client, mut eventloop, connack) = connect(options).await;
    connack.expect("the publisher connects to Mosquitto");
    let total = NODES * BATCHES_PER_NODE;
    let acked = tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(err) => panic!("the publisher lost Mosquitto after {acked} PUBACKs: {err}"),
            }
        }
    });

    for batch in 0..BATCHES_PER_NODE {
        for node in 0..NODES {
            let id = format!("burst-{node:03}");
            let first_seq = batch * RECORDS_PER_BATCH + 1;
            let last_seq = first_seq + RECORDS_PER_BATCH - 1;
            let payload = RecordBatch {
                node: NodeId::new(id.clone()).unwrap(),
                first_seq,
                records: (first_seq..=last_seq).map(|seq| record(&id, seq)).collect(),
                compression: Compression::None,
            }
            .to_cbor()
            .unwrap();
            client
                .publish(
                    tollway_testkit::node_topic(&id, "records"),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .unwrap();
        }
    }
    tokio::time::timeout(Duration::from_secs(60), acked)
        .await
        .expect("Mosquitto acknowledged the burst within 60 s")
        .unwrap();

    let records = total * RECORDS_PER_BATCH;
    tokio::task::spawn_blocking(move || {
        center.wait_stat("records_stored", records, Duration::from_secs(60));
        assert_eq!(center.stat("batches_received"), total);
        assert_eq!(center.stat("records_duplicate"), 0);
        for node in 0..NODES {
            let id = format!("burst-{node:03}");
            assert_eq!(
                center.stored_through(&id),
                BATCHES_PER_NODE * RECORDS_PER_BATCH,
                "node {id}"
            );
        }
    })
    .await
    .unwrap();
}
