//! Province-to-nation forwarding through the real bridge, with the national
//! side down for a while: first the national ingest, then the national
//! broker itself (SIGKILL, restart without its messages). Every record the
//! province stored must reach the national store exactly once.

mod common;

use std::time::{Duration, Instant};

use common::{Center, CenterSpec, SimNode};
use tollway_testkit::BrokerFiles;
use tollway_testkit::bridge::{BridgeFiles, BridgeSettings};

const WAIT: Duration = Duration::from_secs(60);

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
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_through_bridge_survives_outages() {
    let province = BrokerFiles::province();
    let _province_broker = province.start();
    let national = BrokerFiles::national();
    let national_broker = national.start();
    let settings = BridgeSettings::new(
        province.ports.service,
        vec![format!("127.0.0.1:{}", national.ports.node)],
        &national.ca.cert_pem,
    );
    let bridge_files = BridgeFiles::write(&settings);
    let _bridge = bridge_files.start();

    let province_spec = CenterSpec {
        forwarder: true,
        resend_after_s: 1,
        ..CenterSpec::ingest("province")
    };
    let province_center = Center::start(
        &province,
        &province.dir.path().join("province"),
        &province_spec,
    );
    let mut node = SimNode::connect(&province, "n1").await;

    // The national ingest is down: the province stores and acknowledges.
    node.send(1, 20).await;
    assert_eq!(node.next_ack(WAIT).await, 20);

    // It starts on the national broker; the forwarder's resend crosses the
    // bridge.
    let national_dir = national.dir.path().join("national");
    let national_center =
        Center::start(&national, &national_dir, &CenterSpec::national("national"));
    wait_forward_through(&national_center, 20);

    // The national broker dies with everything in memory; records keep
    // arriving in the province meanwhile.
    national_broker.kill();
    node.send(21, 40).await;
    assert_eq!(node.next_ack(WAIT).await, 40);
    let _national_broker = national.start();
    wait_forward_through(&national_center, 40);

    let records = national_center.gantry_records();
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    assert_eq!(national_center.stat("national_records_stored"), 40);
    assert_eq!(national_center.stored_through("n1"), 40);
    assert_eq!(province_center.stat("records_stored"), 40);
}
