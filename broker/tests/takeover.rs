//! Reconnecting with the client id of a session that has just ended: the
//! broker may still be tearing the old session down when the new CONNECT
//! arrives, and the new client must be accepted all the same.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, EventLoop, LastWill, Packet, QoS};
use tokio::task::JoinSet;
use tollway_testkit::*;

const CLIENTS: usize = 1000;
const ROUNDS: usize = 4;

/// A connected node with a subscription and a retained will, as the edge
/// daemon has, so that tearing its session down has work to do.
struct Open {
    index: usize,
    _client: AsyncClient,
    _eventloop: EventLoop,
}

fn node_name(index: usize) -> String {
    format!("gantry-{index:04}")
}

/// Connects node `index` with its certificate and a clean session and
/// subscribes it, or returns why the attempt failed.
async fn open(files: &BrokerFiles, pem: &Pem, index: usize) -> Result<Open, String> {
    let client_id = node_name(index);
    let mut options = node_options(files, &client_id, Some(pem), &files.ca.cert_pem);
    options.set_last_will(LastWill::new(
        node_topic(&client_id, "presence"),
        b"offline".to_vec(),
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut eventloop, ack) = connect(options).await;
    match ack {
        Ok(ack) if ack.code == ConnectReturnCode::Success => {}
        Ok(ack) => return Err(format!("{client_id}: CONNACK {:?}", ack.code)),
        Err(err) => return Err(format!("{client_id}: {err}")),
    }

    client
        .subscribe(node_topic(&client_id, "cmd"), QoS::AtLeastOnce)
        .await
        .map_err(|err| format!("{client_id}: subscribe: {err}"))?;
    next_packet(&mut eventloop, Duration::from_secs(10), |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await
    .map_err(|err| format!("{client_id}: SUBACK: {err}"))?;

    Ok(Open {
        index,
        _client: client,
        _eventloop: eventloop,
    })
}

/// Every client drops its connection without DISCONNECT and reconnects at
/// once, in parallel, four times. rmqtt rejects a takeover of a clean
/// session that is still being torn down with "server unavailable". Before
/// the broker waited for that teardown, 2 to 8 of the 1,000 reconnects of
/// the first or second round were rejected this way, in three of three runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnect_during_teardown_accepted() {
    let files = Arc::new(BrokerFiles::province());
    let _broker = files.start();
    let pems: Arc<Vec<Pem>> = Arc::new(
        (0..CLIENTS)
            .map(|index| files.ca.node_cert(&node_name(index)))
            .collect(),
    );

    let mut opened = Vec::with_capacity(CLIENTS);
    for index in 0..CLIENTS {
        let session = open(&files, &pems[index], index).await;
        opened.push(session.expect("first connection failed"));
    }

    for round in 1..=ROUNDS {
        let mut reconnects = JoinSet::new();
        for session in opened.drain(..) {
            let (files, pems) = (files.clone(), pems.clone());
            reconnects.spawn(async move {
                let index = session.index;
                drop(session);
                // Spread the reconnects over the teardown: some come
                // before the broker noticed the old connection closed,
                // some while it tears the session down, some after.
                tokio::time::sleep(Duration::from_millis((index % 20) as u64)).await;
                open(&files, &pems[index], index).await
            });
        }

        let mut refused = Vec::new();
        while let Some(result) = reconnects.join_next().await {
            match result.expect("reconnect task panicked") {
                Ok(session) => opened.push(session),
                Err(err) => refused.push(err),
            }
        }
        assert!(
            refused.is_empty(),
            "round {round}: {} of {CLIENTS} immediate reconnects failed: {refused:?}",
            refused.len()
        );
    }

    // The metrics count the broker's waits (6 to 69 per run on two cores).
    // None of those waits may have given up.
    let metrics = scrape_metrics(files.ports.metrics);
    let waits = metric_value(&metrics, "tollway_broker_takeover_waits_total");
    assert_eq!(
        metric_value(&metrics, "tollway_broker_takeover_timeouts_total"),
        0,
        "a takeover wait gave up ({waits} waits in all)"
    );
}
