//! Bandwidth-cap benchmark: a provincial and a national `tollway-broker`
//! and a `tollway-bridge` capped at 3 Mbit/s, all on loopback. Bulk
//! traffic (`center/status`, 4 KB messages) is offered at 1.2 times the
//! cap for 30 s, and a control message (`node/+/cmd/result`) is published
//! every 1.4 s. The benchmark prints the average rate the national broker
//! received, its deviation from the cap, and the control latency (median
//! over 20 messages, publish on the provincial broker to arrival at a
//! national subscriber).
//!
//! Run with `cargo bench --bench bandwidth` after `cargo build --release
//! --workspace`; the CI runs only the scaled-down correctness test in
//! `tests/bridge.rs`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Event, Packet, QoS};
use tollway_bridge::bucket::publish_packet_bytes;
use tollway_testkit::bridge::{BridgeFiles, BridgeSettings};
use tollway_testkit::*;

const CAP_BYTES_PER_SECOND: u64 = 3_000_000 / 8;
const SATURATION: Duration = Duration::from_secs(30);
const BULK_PAYLOAD: usize = 4000;
const CONTROL_SAMPLES: usize = 20;
const CONTROL_INTERVAL: Duration = Duration::from_millis(1400);
/// The first seconds are left out of the rate: the bucket starts full.
const WARM_UP: Duration = Duration::from_secs(2);

const BULK_TOPIC: &str = "tollway/v1/44/center/status";

/// One message as the national subscriber saw it.
struct Arrival {
    at: Instant,
    topic: String,
    payload: Vec<u8>,
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the async runtime");
    runtime.block_on(run());
}

async fn run() {
    let province = BrokerFiles::province();
    let _province_broker = province.start();
    let national = BrokerFiles::national();
    let _national_broker = national.start();

    let mut settings = BridgeSettings::new(
        province.ports.service,
        vec![format!("127.0.0.1:{}", national.ports.node)],
        &national.ca.cert_pem,
    );
    settings.up_bytes_per_second = CAP_BYTES_PER_SECOND;
    settings.burst_bytes = 16 * 1024;
    let bridge_files = BridgeFiles::write(&settings);

    let control_topic = node_topic("G1", "cmd/result");
    let arrivals = subscribe_national(&national, &[BULK_TOPIC, &control_topic]).await;
    let (local, mut local_loop, ack) = connect(service_options(
        &province,
        "bench-publisher",
        Some(SERVICE_PASSWORD),
    ))
    .await;
    ack.expect("publisher login failed");
    tokio::spawn(async move { while local_loop.poll().await.is_ok() {} });

    let _bridge = bridge_files.start();
    wait_for_bridge(&local, &arrivals).await;
    arrivals.lock().unwrap().clear();

    // Offer bulk at 1.2 times the cap, and control every 1.4 s.
    let started = Instant::now();
    let bulk_cost = publish_packet_bytes(BULK_TOPIC, BULK_PAYLOAD, 1);
    let bulk_interval =
        Duration::from_secs_f64(bulk_cost as f64 / (CAP_BYTES_PER_SECOND as f64 * 1.2));
    let mut bulk_sent = 0u64;
    let mut control_sent: Vec<(usize, Instant)> = Vec::new();
    let filler = "b".repeat(BULK_PAYLOAD - 16);
    while started.elapsed() < SATURATION {
        let due_bulk = (started.elapsed().as_secs_f64() / bulk_interval.as_secs_f64()) as u64;
        while bulk_sent < due_bulk {
            let payload = format!("bulk {bulk_sent:010} {filler}");
            local
                .publish(BULK_TOPIC, QoS::AtLeastOnce, false, payload.into_bytes())
                .await
                .unwrap();
            bulk_sent += 1;
        }
        let due_control =
            (started.elapsed().as_secs_f64() / CONTROL_INTERVAL.as_secs_f64()) as usize;
        if control_sent.len() < due_control.min(CONTROL_SAMPLES) {
            let id = control_sent.len();
            control_sent.push((id, Instant::now()));
            local
                .publish(
                    &control_topic,
                    QoS::AtLeastOnce,
                    false,
                    format!("control {id}").into_bytes(),
                )
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let saturation_end = Instant::now();

    // Let the backlog drain so that losses would show.
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let bulk_arrived = count_prefix(&arrivals, b"bulk ");
        if bulk_arrived as u64 >= bulk_sent || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    report(&arrivals, started, saturation_end, bulk_sent, &control_sent);
}

fn report(
    arrivals: &Mutex<Vec<Arrival>>,
    started: Instant,
    saturation_end: Instant,
    bulk_sent: u64,
    control_sent: &[(usize, Instant)],
) {
    let arrivals = arrivals.lock().unwrap();
    let window_start = started + WARM_UP;
    let window_bytes: u64 = arrivals
        .iter()
        .filter(|a| a.at >= window_start && a.at <= saturation_end)
        .map(|a| publish_packet_bytes(&a.topic, a.payload.len(), 1))
        .sum();
    let window = (saturation_end - window_start).as_secs_f64();
    let rate = window_bytes as f64 / window;
    let deviation = (rate / CAP_BYTES_PER_SECOND as f64 - 1.0) * 100.0;

    let mut latencies: Vec<f64> = control_sent
        .iter()
        .filter_map(|(id, sent_at)| {
            let payload = format!("control {id}");
            arrivals
                .iter()
                .find(|a| a.payload == payload.as_bytes())
                .map(|a| (a.at - *sent_at).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let median = latencies
        .get(latencies.len() / 2)
        .copied()
        .unwrap_or(f64::NAN);
    let max = latencies.last().copied().unwrap_or(f64::NAN);
    let bulk_arrived = arrivals
        .iter()
        .filter(|a| a.payload.starts_with(b"bulk "))
        .count();

    println!("bridge bandwidth cap benchmark");
    println!(
        "  cap                     {CAP_BYTES_PER_SECOND} B/s ({:.3} Mbit/s)",
        CAP_BYTES_PER_SECOND as f64 * 8.0 / 1e6
    );
    println!(
        "  measured rate           {rate:.0} B/s ({:.3} Mbit/s), {deviation:+.1}% of the cap, over {window:.1} s",
        rate * 8.0 / 1e6
    );
    println!("  bulk messages           {bulk_sent} sent, {bulk_arrived} arrived");
    println!(
        "  control latency         median {median:.1} ms, max {max:.1} ms, {} of {} arrived",
        latencies.len(),
        control_sent.len()
    );
}

fn count_prefix(arrivals: &Mutex<Vec<Arrival>>, prefix: &[u8]) -> usize {
    arrivals
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.payload.starts_with(prefix))
        .count()
}

/// Subscribes on the national service listener and records every
/// arrival with its time.
async fn subscribe_national(national: &BrokerFiles, filters: &[&str]) -> Arc<Mutex<Vec<Arrival>>> {
    let (client, mut eventloop, ack) = connect(service_options(
        national,
        "bench-national",
        Some(SERVICE_PASSWORD),
    ))
    .await;
    ack.expect("national subscriber login failed");
    for filter in filters {
        client.subscribe(*filter, QoS::AtLeastOnce).await.unwrap();
    }
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let sink = arrivals.clone();
    tokio::spawn(async move {
        let _client = client;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    sink.lock().unwrap().push(Arrival {
                        at: Instant::now(),
                        topic: publish.topic.clone(),
                        payload: publish.payload.to_vec(),
                    });
                }
                Ok(_) => {}
                Err(err) => {
                    eprintln!("national subscriber stopped: {err}");
                    return;
                }
            }
        }
    });
    arrivals
}

/// Publishes probes on the bulk topic until one arrives.
async fn wait_for_bridge(local: &rumqttc::AsyncClient, arrivals: &Mutex<Vec<Arrival>>) {
    for attempt in 0..100 {
        local
            .publish(
                BULK_TOPIC,
                QoS::AtLeastOnce,
                false,
                format!("probe {attempt}"),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        if count_prefix(arrivals, b"probe") > 0 {
            return;
        }
    }
    panic!("the bridge did not forward a probe within 20 s");
}
