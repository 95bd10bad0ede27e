//! Province-to-nation forwarding with the national ingest down for a while.
//!
//! Both centres use one `tollway-broker` here: the forwarder publishes on
//! the province's `center/records` topic and the national ingest subscribes
//! to every province's, as it would on the national broker behind a bridge.

mod common;

use std::time::{Duration, Instant};

use common::{Center, CenterSpec, SimNode};
use tollway_testkit::BrokerFiles;

const WAIT: Duration = Duration::from_secs(15);

/// Polls until the national store acknowledges province 44 through `expected`.
fn wait_forward_through(national: &Center, expected: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let through = national.get_ok("/v1/provinces/44")["forward_through"]
            .as_u64()
            .unwrap();
        if through == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "national forward_through is {through}, expected {expected}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_survives_national_outage() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let province_spec = CenterSpec {
        forwarder: true,
        resend_after_s: 1,
        ..CenterSpec::ingest("province")
    };
    let province = Center::start(&files, &files.dir.path().join("province"), &province_spec);
    let mut node = SimNode::connect(&files, "n1").await;

    // The national side is down: the province stores and keeps forwarding.
    node.send(1, 20).await;
    assert_eq!(node.next_ack(WAIT).await, 20);
    province.wait_stat("forward_batches_sent", 1, WAIT);
    assert_eq!(province.stat("forward_acks_received"), 0);

    // The national ingest starts and receives everything on a resend.
    let national_dir = files.dir.path().join("national");
    let national = Center::start(&files, &national_dir, &CenterSpec::national("national"));
    wait_forward_through(&national, 20);
    let records = national.gantry_records();
    assert_eq!(records.len(), 20);
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    assert!(
        records
            .iter()
            .all(|r| r["node"] == "n1" && r["province"] == 44)
    );
    assert_eq!(national.stat("national_records_stored"), 20);

    // Down again while 10 more arrive, then back with the same store.
    let status = national.stop();
    assert!(status.success(), "national ingest exited with {status}");
    node.send(21, 30).await;
    assert_eq!(node.next_ack(WAIT).await, 30);
    let national = Center::restart(&national_dir, 1);
    wait_forward_through(&national, 30);

    assert_eq!(national.gantry_records().len(), 30);
    assert_eq!(national.stat("national_records_stored"), 10);
    assert_eq!(province.stat("records_stored"), 30);
    province.wait_stat("forward_acks_received", 1, WAIT);
    assert!(
        province.stat("forward_resends") >= 1,
        "the window was never resent"
    );
}
