//! The limit on retained topics (`[retained] max_messages`): a new topic
//! beyond it is delivered but not kept, existing topics can be replaced and
//! deleted, and the count survives a restart.

use std::collections::BTreeSet;
use std::time::Duration;

use tollway_testkit::collect::Collector;
use tollway_testkit::*;

const PREFIX: &str = "tollway/v1/ops/limits";

fn topic(name: &str) -> String {
    format!("{PREFIX}/{name}")
}

/// Returns the retained topics a new subscriber receives.
async fn retained_topics(files: &BrokerFiles, client_id: &str) -> BTreeSet<String> {
    let options = service_options(files, client_id, Some(SERVICE_PASSWORD));
    let collector = Collector::start(options, &[&format!("{PREFIX}/#")]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    collector
        .received()
        .into_iter()
        .filter(|m| m.retain)
        .map(|m| m.topic)
        .collect()
}

fn names(topics: &[&str]) -> BTreeSet<String> {
    topics.iter().map(|name| topic(name)).collect()
}

#[tokio::test]
async fn retained_limit_keeps_existing_topics() {
    let files = BrokerFiles::province();
    let mut config = std::fs::read_to_string(&files.config).unwrap();
    config.push_str("\n[retained]\nmax_messages = 3\n");
    std::fs::write(&files.config, config).unwrap();
    let broker = files.start();

    let options = service_options(&files, "ops", Some(SERVICE_PASSWORD));
    let ops = Collector::start(options, &[&format!("{PREFIX}/#")]).await;
    for name in ["t1", "t2", "t3", "t4"] {
        ops.publish(&topic(name), true, name).await;
    }

    // The fourth topic is delivered to the live subscriber but not kept.
    assert!(
        ops.wait_until(Duration::from_secs(5), |r| r
            .iter()
            .any(|m| m.topic == topic("t4")))
            .await,
        "t4 was not delivered"
    );
    assert_eq!(
        retained_topics(&files, "reader-1").await,
        names(&["t1", "t2", "t3"])
    );
    let metrics = scrape_metrics(files.ports.metrics);
    assert_eq!(
        metric_value(&metrics, "tollway_broker_retained_refusals_total"),
        1
    );
    assert_eq!(metric_value(&metrics, "tollway_broker_retained_topics"), 3);

    // Replacing works at the limit; deleting frees a place.
    ops.publish(&topic("t1"), true, "t1, second version").await;
    ops.publish(&topic("t2"), true, "").await;
    ops.publish(&topic("t4"), true, "t4").await;
    assert_eq!(
        retained_topics(&files, "reader-2").await,
        names(&["t1", "t3", "t4"])
    );
    drop(ops);

    // After a restart the broker counts the three kept topics again.
    let status = broker.stop();
    assert!(
        status.success(),
        "broker exited with {status} after SIGTERM"
    );
    let _broker = files.start();
    let options = service_options(&files, "ops-2", Some(SERVICE_PASSWORD));
    let ops = Collector::start(options, &[]).await;
    ops.publish(&topic("t5"), true, "t5").await;
    assert_eq!(
        retained_topics(&files, "reader-3").await,
        names(&["t1", "t3", "t4"])
    );
    let metrics = scrape_metrics(files.ports.metrics);
    assert_eq!(
        metric_value(&metrics, "tollway_broker_retained_refusals_total"),
        1
    );
}
