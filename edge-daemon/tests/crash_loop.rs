//! Crash safety of the whole daemon: the real `tollway-edge` is killed with
//! SIGKILL at random moments while two apps publish QoS 1 records to its
//! intake. Afterwards every record the intake acknowledged (PUBACK) must
//! reach the test centre exactly once after de-duplication by (node, seq),
//! with its content intact, and the centre's seqs must have no gap.
//!
//! SIGKILL ends the process but not the kernel, so this shows that a
//! PUBACK is sent only after the record reached the write-ahead log; it
//! does not simulate power loss.

mod common;
mod node;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tollway_runtime::CancellationToken;
use tollway_testkit::BrokerFiles;

use common::record;
use node::{Centre, IntakePublisher, Node, NodeOptions, Outcome};

const KILLS: usize = 24;
const NODE: &str = "G0015-0100";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_keeps_acked_records() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let centre = Centre::start(&files, "centre-crash");
    let mut node = Node::new(&files, NODE, NodeOptions::default());
    node.start();

    // Two apps publish distinct records, resend each until it is
    // acknowledged, and note the ones acknowledged.
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = CancellationToken::new();
    let mut apps = Vec::new();
    for app in 0..2u64 {
        let acked = Arc::clone(&acked);
        let stop = stop.clone();
        let intake = node.intake;
        apps.push(tokio::spawn(async move {
            let mut publisher = IntakePublisher::new(intake, &format!("toll-app-{app}"));
            let mut attempts = 0u64;
            let mut n = app * 10_000_000 + 1;
            while !stop.is_cancelled() {
                attempts += 1;
                match publisher.publish(&record(n), Duration::from_secs(5)).await {
                    Outcome::Acked => {
                        acked.lock().unwrap().insert(record(n).transaction_id);
                        n += 1;
                    }
                    // The daemon is down or restarting, and may have stored
                    // the record before it went: send the same record again,
                    // as a real app must, so the outbox has to recognise it.
                    Outcome::Unknown => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            attempts
        }));
    }

    for kill in 0..KILLS {
        let uptime = rand::rng().random_range(200..1500);
        tokio::time::sleep(Duration::from_millis(uptime)).await;
        node.kill();
        let acked_now = acked.lock().unwrap().len();
        eprintln!("kill {kill}: after {uptime} ms, {acked_now} records acknowledged so far");
        node.start();
    }
    stop.cancel();
    let mut attempts = 0;
    for app in apps {
        attempts += app.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "only {} of {attempts} records were acknowledged; the test proves little",
        acked.len()
    );

    // Every acknowledged record reaches the centre.
    centre
        .wait_until(
            Duration::from_secs(60),
            "every acknowledged record at the centre",
            |state| {
                let stored: BTreeSet<String> = state.transaction_ids(NODE).into_iter().collect();
                acked.iter().all(|id| stored.contains(id))
            },
        )
        .await;

    let state = centre.state.lock().unwrap();
    assert!(
        state.conflicts.is_empty(),
        "one seq carried two records: {:?}",
        state.conflicts
    );

    // Exactly once: no transaction id under two seqs.
    let mut seqs_of: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for ((node, seq), record) in &state.records {
        if node == NODE {
            seqs_of
                .entry(record.transaction_id.clone())
                .or_default()
                .push(*seq);
        }
    }
    let repeated: Vec<_> = seqs_of.iter().filter(|(_, seqs)| seqs.len() > 1).collect();
    assert!(
        repeated.is_empty(),
        "records stored under several seqs: {repeated:?}"
    );

    // No gap: the centre's seqs run from 1 to the highest.
    let stored = state
        .records
        .keys()
        .filter(|(node, _)| node == NODE)
        .count() as u64;
    assert_eq!(
        state.stored_through(NODE),
        stored,
        "the centre's seqs have a gap"
    );
    eprintln!(
        "{} kills, {attempts} publishes, {} acknowledged, {stored} stored, {} duplicates dropped",
        KILLS,
        acked.len(),
        state.duplicates
    );
}
