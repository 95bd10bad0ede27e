//! The edge daemon's uplink end to end: the real `tollway-edge` program,
//! the real `tollway-broker` with node certificates, and a test centre on
//! the broker's service listener that stores records by (node, seq) and
//! acknowledges them.

mod common;
mod node;

use std::time::Duration;

use tollway_testkit::BrokerFiles;
use tollway_topics::{Command, CommandAction, samples};

use common::{record, records};
use node::{Centre, IntakePublisher, Node, NodeOptions, Outcome};

/// Time a test allows for something that takes well under a second here.
const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_to_centre_ack() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let centre = Centre::start(&files, "centre-intake");
    let options = NodeOptions {
        dead_endpoint_first: true,
        ..NodeOptions::default()
    };
    let mut node = Node::new(&files, "G0015-0001", options);
    node.start();

    let sent = records(1..=300);
    IntakePublisher::new(node.intake, "toll-app")
        .publish_all(&sent)
        .await;

    centre
        .wait_until(PATIENCE, "300 records at the centre", |state| {
            state.stored_through("G0015-0001") == 300
        })
        .await;
    {
        let state = centre.state.lock().unwrap();
        let expected: Vec<String> = sent.iter().map(|r| r.transaction_id.clone()).collect();
        assert_eq!(
            state.transaction_ids("G0015-0001"),
            expected,
            "records arrive in seq order with their content"
        );
        assert!(
            state.conflicts.is_empty(),
            "conflicting records: {:?}",
            state.conflicts
        );
    }

    // The acknowledgement moved the watermark: the status reports an empty outbox.
    centre
        .wait_until(PATIENCE, "a status with an empty outbox", |state| {
            state.statuses.iter().any(|(node, status)| {
                node == "G0015-0001"
                    && status.outbox_depth == 0
                    && status.oldest_undelivered_s.is_none()
            })
        })
        .await;
    assert!(
        node.log().contains("moving to the next broker endpoint"),
        "the link failed over from the dead endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_counts_every_record() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let centre = Centre::start(&files, "centre-summary");
    let mut node = Node::new(&files, "G0015-0002", NodeOptions::default());
    node.start();

    let mut sent = records(1..=40);
    let mut truck = samples::truck_record();
    truck.transaction_id = "TRUCK-1".to_string();
    sent.push(truck.clone());
    IntakePublisher::new(node.intake, "toll-app")
        .publish_all(&sent)
        .await;

    let gantry = samples::toll_record().gantry_id;
    let hour = samples::toll_record().hour_batch;
    centre
        .wait_until(PATIENCE, "the hourly summary of 41 records", |state| {
            state.summaries.iter().any(|(_, s)| s.count == 41)
        })
        .await;
    {
        let state = centre.state.lock().unwrap();
        let (_, summary) = state.summaries.iter().find(|(_, s)| s.count == 41).unwrap();
        assert_eq!(summary.gantry_id, gantry);
        assert_eq!(summary.hour_batch, hour);
        let fee_sum = 40 * u64::from(record(1).pay_fee) + u64::from(truck.pay_fee);
        assert_eq!(summary.fee_sum, fee_sum);
        assert_eq!(summary.first_seq, Some(1));
        assert_eq!(summary.last_seq, Some(41));
    }

    // A summary is marked published: a restart does not send it again,
    // but ResendSummary does.
    node.stop();
    let before = centre.state.lock().unwrap().summaries.len();
    node.start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        centre.state.lock().unwrap().summaries.len(),
        before,
        "a published summary was sent again after a restart"
    );
    let command = Command {
        id: 7,
        action: CommandAction::ResendSummary { hour_batch: hour },
    };
    centre.send_command("G0015-0002", &command).await;
    centre
        .wait_until(PATIENCE, "the resent summary and its result", |state| {
            state.summaries.len() > before && state.results.iter().any(|(_, r)| r.id == 7 && r.ok)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_after_broker_restart() {
    let files = BrokerFiles::province();
    let broker = files.start();
    let centre = Centre::start(&files, "centre-restart");
    let mut node = Node::new(&files, "G0015-0003", NodeOptions::default());
    node.start();
    let mut app = IntakePublisher::new(node.intake, "toll-app");

    app.publish_all(&records(1..=50)).await;
    centre
        .wait_until(PATIENCE, "the first 50 records", |state| {
            state.stored_through("G0015-0003") == 50
        })
        .await;

    // The broker goes away; the intake keeps accepting records.
    let status = broker.stop();
    assert!(status.success(), "broker stopped cleanly: {status}");
    app.publish_all(&records(51..=120)).await;
    let broker = files.start();

    centre
        .wait_until(
            PATIENCE,
            "all 120 records after the broker restart",
            |state| state.stored_through("G0015-0003") == 120,
        )
        .await;
    {
        let state = centre.state.lock().unwrap();
        let expected: Vec<String> = records(1..=120)
            .iter()
            .map(|r| r.transaction_id.clone())
            .collect();
        assert_eq!(state.transaction_ids("G0015-0003"), expected);
        assert!(
            state.conflicts.is_empty(),
            "conflicting records: {:?}",
            state.conflicts
        );
    }
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermark_waits_for_centre_ack() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let centre = Centre::start(&files, "centre-watermark");
    centre.set_acks(false);
    // Depth alone is not a change worth a message; the heartbeat carries it.
    let options = NodeOptions {
        heartbeat_s: 1,
        ..NodeOptions::default()
    };
    let mut node = Node::new(&files, "G0015-0004", options);
    node.start();

    IntakePublisher::new(node.intake, "toll-app")
        .publish_all(&records(1..=30))
        .await;
    centre
        .wait_until(PATIENCE, "30 records stored without acks", |state| {
            state.stored_through("G0015-0004") == 30
        })
        .await;
    // Without a RecordAck the records stay undelivered, although the
    // broker acknowledged every publish; after the resend timeout they
    // are sent again.
    centre
        .wait_until(PATIENCE, "a resend of unacknowledged records", |state| {
            state.duplicates >= 30
        })
        .await;
    let depth = |state: &node::CentreState| {
        state
            .statuses
            .iter()
            .rev()
            .find(|(node, _)| node == "G0015-0004")
            .map(|(_, status)| status.outbox_depth)
    };
    centre
        .wait_until(PATIENCE, "a status with 30 undelivered records", |state| {
            depth(state) == Some(30)
        })
        .await;

    centre.set_acks(true);
    centre
        .wait_until(
            PATIENCE,
            "a status with an empty outbox after acks",
            |state| depth(state) == Some(0),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sends_retained_range() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let centre = Centre::start(&files, "centre-replay");
    let mut node = Node::new(&files, "G0015-0005", NodeOptions::default());
    node.start();

    IntakePublisher::new(node.intake, "toll-app")
        .publish_all(&records(1..=20))
        .await;
    centre
        .wait_until(PATIENCE, "20 records", |state| {
            state.stored_through("G0015-0005") == 20
        })
        .await;
    let duplicates_before = centre.state.lock().unwrap().duplicates;

    let replay = Command {
        id: 1,
        action: CommandAction::Replay {
            from_seq: 5,
            to_seq: 9,
        },
    };
    centre.send_command("G0015-0005", &replay).await;
    centre
        .wait_until(PATIENCE, "the replay's result", |state| {
            state.results.iter().any(|(_, r)| r.id == 1)
        })
        .await;
    centre
        .wait_until(PATIENCE, "5 replayed records", |state| {
            state.duplicates >= duplicates_before + 5
        })
        .await;
    {
        let state = centre.state.lock().unwrap();
        let result = &state.results.iter().find(|(_, r)| r.id == 1).unwrap().1;
        assert!(result.ok, "replay failed: {:?}", result.message);
        assert_eq!(
            state.duplicates,
            duplicates_before + 5,
            "exactly seq 5..=9 replayed"
        );
    }

    let beyond = Command {
        id: 2,
        action: CommandAction::Replay {
            from_seq: 15,
            to_seq: 25,
        },
    };
    centre.send_command("G0015-0005", &beyond).await;
    let logs = Command {
        id: 3,
        action: CommandAction::CollectLogs {
            app: "toll".to_string(),
            tail_lines: 10,
        },
    };
    centre.send_command("G0015-0005", &logs).await;
    centre
        .wait_until(PATIENCE, "two more results", |state| {
            state.results.iter().any(|(_, r)| r.id == 2)
                && state.results.iter().any(|(_, r)| r.id == 3)
        })
        .await;
    let state = centre.state.lock().unwrap();
    let beyond = &state.results.iter().find(|(_, r)| r.id == 2).unwrap().1;
    assert!(!beyond.ok, "a replay past the last record must fail");
    let message = beyond.message.clone().unwrap_or_default();
    assert!(
        message.contains("not retained") && message.contains("1..=20"),
        "{message}"
    );
    let logs = &state.results.iter().find(|(_, r)| r.id == 3).unwrap().1;
    assert!(!logs.ok);
    assert!(
        logs.message
            .clone()
            .unwrap_or_default()
            .contains("not supported")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_pruned_range_fails() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let centre = Centre::start(&files, "centre-pruned");
    let options = NodeOptions {
        retention_s: Some(1),
        ..NodeOptions::default()
    };
    let mut node = Node::new(&files, "G0015-0006", options);
    node.start();

    IntakePublisher::new(node.intake, "toll-app")
        .publish_all(&records(1..=10))
        .await;
    centre
        .wait_until(PATIENCE, "10 records", |state| {
            state.stored_through("G0015-0006") == 10
        })
        .await;
    // Retention is 1 s and the prune runs every second.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let replay = Command {
        id: 9,
        action: CommandAction::Replay {
            from_seq: 1,
            to_seq: 3,
        },
    };
    centre.send_command("G0015-0006", &replay).await;
    centre
        .wait_until(PATIENCE, "the replay's result", |state| {
            state.results.iter().any(|(_, r)| r.id == 9)
        })
        .await;
    let state = centre.state.lock().unwrap();
    let result = &state.results.iter().find(|(_, r)| r.id == 9).unwrap().1;
    assert!(!result.ok, "replay of a pruned range must fail");
    let message = result.message.clone().unwrap_or_default();
    assert!(message.contains("seq 1..=3 is not retained"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_online_and_offline() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let centre = Centre::start(&files, "centre-presence");
    let mut node = Node::new(&files, "G0015-0007", NodeOptions::default());

    let presences = |state: &node::CentreState| -> Vec<bool> {
        state.presences.iter().map(|(_, p, _)| p.online).collect()
    };
    node.start();
    centre
        .wait_until(PATIENCE, "presence online", |state| {
            presences(state) == [true]
        })
        .await;

    // SIGKILL: the broker publishes the will.
    node.kill();
    centre
        .wait_until(PATIENCE, "presence offline from the will", |state| {
            presences(state) == [true, false]
        })
        .await;

    // SIGTERM: the daemon sets offline itself before it disconnects.
    node.start();
    centre
        .wait_until(PATIENCE, "presence online again", |state| {
            presences(state) == [true, false, true]
        })
        .await;
    let status = node.stop();
    assert!(
        status.success(),
        "graceful stop: {status}; log:\n{}",
        node.log()
    );
    centre
        .wait_until(
            PATIENCE,
            "presence offline after a graceful stop",
            |state| presences(state) == [true, false, true, false],
        )
        .await;
    let state = centre.state.lock().unwrap();
    let online = &state.presences[0].1;
    assert_eq!(online.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert!(online.since_ms.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_at_cap_in_status() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let centre = Centre::start(&files, "centre-cap");
    centre.set_acks(false);
    // The smallest cap: 32 KiB of undelivered records, about 190 records.
    let options = NodeOptions {
        max_undelivered_bytes: Some(32 * 1024),
        resend_timeout_s: 2,
        heartbeat_s: 1,
        ..NodeOptions::default()
    };
    let mut node = Node::new(&files, "G0015-0008", options);
    node.start();

    let mut app = IntakePublisher::new(node.intake, "toll-app");
    let mut acked = 0u64;
    let mut blocked = None;
    for n in 1..=1000 {
        match app.publish(&record(n), Duration::from_secs(2)).await {
            Outcome::Acked => acked += 1,
            Outcome::Unknown => {
                blocked = Some(n);
                break;
            }
        }
    }
    let blocked = blocked.expect("the intake stopped acknowledging at the cap");
    assert!(acked > 100, "only {acked} records fit under the cap");

    let latest = |state: &node::CentreState| {
        state
            .statuses
            .iter()
            .rev()
            .find(|(node, _)| node == "G0015-0008")
            .map(|(_, status)| status.clone())
    };
    centre
        .wait_until(PATIENCE, "a status reporting back-pressure", |state| {
            latest(state).is_some_and(|s| s.backpressure && s.outbox_depth == acked)
        })
        .await;

    // The centre acknowledges: the held record gets its PUBACK and the
    // back-pressure clears.
    centre.set_acks(true);
    let pkid = app.wait_puback(PATIENCE).await;
    assert!(
        pkid.is_some(),
        "record {blocked} was never acknowledged after the cap cleared"
    );
    centre
        .wait_until(PATIENCE, "a status without back-pressure", |state| {
            latest(state).is_some_and(|s| !s.backpressure)
        })
        .await;
    centre
        .wait_until(PATIENCE, "every record at the centre", |state| {
            state.stored_through("G0015-0008") == acked + 1
        })
        .await;
}
