//! The configuration file of `tollway-center`: one optional section per
//! service, plus the broker connection and the record store that the
//! services of one process share.
//!
//! A service runs when its section is present, so a province can run ingest,
//! forwarder and query API in one process or spread them over several.
//! Checks that span keys are gathered in [`Config::validate`], which reports
//! every problem at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tollway_runtime::BackoffConfig;
use tollway_runtime::config::Problems;
use tollway_topics::Province;

/// The whole configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The MQTT broker every service of this process connects to.
    pub broker: Option<BrokerConfig>,
    /// The RocksDB record store shared by ingest, forwarder and query API.
    pub store: Option<StoreConfig>,
    /// Provincial record ingest and hourly reconciliation.
    pub ingest: Option<IngestConfig>,
    /// Province-to-nation forwarding of stored records.
    pub forwarder: Option<ForwarderConfig>,
    /// National ingest of forwarded records from every province.
    pub national_ingest: Option<NationalIngestConfig>,
    /// The loopback HTTP query API over the record store.
    pub query: Option<QueryConfig>,
    /// The provincial controller (scheduler). It keeps its own broker
    /// connection and inventory store, set in its section.
    pub controller: Option<tollway_center::controller::ControllerConfig>,
    /// The national fleet aggregator, with its own broker connection.
    pub aggregator: Option<tollway_center::aggregator::AggregatorConfig>,
}

/// Connection to the broker's service listener (username and password).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Host of the service listener.
    #[serde(default = "default_host")]
    pub host: String,
    /// Port of the service listener.
    pub port: u16,
    pub username: String,
    /// File whose first line is the password. The password never appears in
    /// the configuration file or the logs.
    pub password_file: PathBuf,
    /// Prefix of every MQTT client id this process uses; each connection
    /// appends its role, e.g. `{prefix}-ingest-sub`. Processes that share a
    /// subscription need different prefixes.
    pub client_id: String,
    /// MQTT keep-alive, in seconds.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u16,
    /// Delays between reconnection attempts.
    #[serde(default = "default_backoff")]
    pub backoff: BackoffConfig,
    /// Consecutive connection errors after which a client and its event loop
    /// are rebuilt rather than polled again.
    #[serde(default = "default_rebuild_after_errors")]
    pub rebuild_after_errors: u32,
}

/// The RocksDB record store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory of the RocksDB database; created when missing.
    pub path: PathBuf,
    /// Days a record stays after it was stored. It is deleted after that
    /// only once the next hop has it (the national centre acknowledged it,
    /// or, in the national store, its province's forwarding watermark covers
    /// it); until then it stays, however old. Retention runs in a process
    /// with a `[forwarder]` or `[national_ingest]` section.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Seconds between retention passes.
    #[serde(default = "default_prune_interval_s")]
    pub prune_interval_s: u64,
    /// Records one retention batch deletes at most; a pass runs batches
    /// until nothing more is due.
    #[serde(default = "default_max_prune_records")]
    pub max_prune_records: usize,
}

/// Provincial ingest of node record batches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    pub province: Province,
    /// Shared-subscription group; ingest processes of one province that use
    /// the same group split the nodes between them.
    #[serde(default = "default_group")]
    pub group: String,
    /// Batches received but not yet stored. When the queue is full, the
    /// connection stops reading, so the broker keeps further batches.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Seconds between reconciliation passes.
    #[serde(default = "default_reconcile_interval_s")]
    pub reconcile_interval_s: u64,
    /// Maximum replay commands one reconciliation pass publishes; the rest
    /// wait for the next pass.
    #[serde(default = "default_max_replays_per_pass")]
    pub max_replays_per_pass: usize,
    /// Maximum records one replay command requests; a longer missing range
    /// is split into several commands.
    #[serde(default = "default_max_replay_span")]
    pub max_replay_span: u64,
}

/// Province-to-nation forwarding.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwarderConfig {
    pub province: Province,
    /// Records per ForwardBatch.
    #[serde(default = "default_forward_batch")]
    pub batch_records: usize,
    /// Maximum forwarding sequences sent but not acknowledged. The forwarder
    /// sends nothing new when the window is full.
    #[serde(default = "default_window")]
    pub window_records: u64,
    /// Seconds without an acknowledgement after which the whole window is
    /// sent again the first time.
    #[serde(default = "default_resend_after_s")]
    pub resend_after_s: u64,
    /// Largest wait between resends while no acknowledgement comes. Waits
    /// grow from `resend_after_s` with jitter up to this, so a long national
    /// outage costs few duplicate copies.
    #[serde(default = "default_resend_cap_s")]
    pub resend_cap_s: u64,
}

/// National ingest of forwarded records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NationalIngestConfig {
    /// Shared-subscription group of the national ingest processes.
    #[serde(default = "default_national_group")]
    pub group: String,
    /// Batches received but not yet stored (see `ingest.queue`).
    #[serde(default = "default_queue")]
    pub queue: usize,
}

/// The HTTP query API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    /// Loopback address to listen on, e.g. `127.0.0.1:8380`.
    pub bind: SocketAddr,
    /// Maximum records one request returns.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
}

fn default_retention_days() -> u32 {
    90
}
fn default_prune_interval_s() -> u64 {
    3600
}
fn default_max_prune_records() -> usize {
    10_000
}
fn default_host() -> String {
    "127.0.0.1".to_string()
}
fn default_keep_alive_s() -> u16 {
    30
}
fn default_backoff() -> BackoffConfig {
    BackoffConfig::new(Duration::from_millis(200), Duration::from_secs(30))
}
fn default_rebuild_after_errors() -> u32 {
    5
}
fn default_group() -> String {
    "ingest".to_string()
}
fn default_national_group() -> String {
    "national-ingest".to_string()
}
fn default_queue() -> usize {
    64
}
fn default_reconcile_interval_s() -> u64 {
    3600
}
fn default_max_replays_per_pass() -> usize {
    1000
}
fn default_max_replay_span() -> u64 {
    tollway_topics::limits::MAX_RECORDS_PER_BATCH as u64
}
fn default_forward_batch() -> usize {
    500
}
fn default_window() -> u64 {
    5000
}
fn default_resend_after_s() -> u64 {
    30
}
fn default_resend_cap_s() -> u64 {
    120
}
fn default_max_records() -> usize {
    10_000
}

impl Config {
    /// Checks the keys that depend on each other and reports every problem.
    pub fn validate(&self, path: Option<&Path>) -> Result<(), tollway_runtime::ConfigError> {
        let mut problems = Problems::default();
        let needs_broker =
            self.ingest.is_some() || self.forwarder.is_some() || self.national_ingest.is_some();
        let needs_store = needs_broker || self.query.is_some();

        if needs_broker && self.broker.is_none() {
            problems.push(
                "broker",
                "(missing)",
                "ingest, forwarder and national_ingest need a [broker] section",
            );
        }
        if needs_store && self.store.is_none() {
            problems.push(
                "store",
                "(missing)",
                "every service needs a [store] section with a path",
            );
        }
        if self.national_ingest.is_some() && (self.ingest.is_some() || self.forwarder.is_some()) {
            problems.push(
                "national_ingest",
                "(present)",
                "run national_ingest in its own process: it needs a store of its own, apart from a province's ingest and forwarder",
            );
        }
        if let (Some(ingest), Some(forwarder)) = (&self.ingest, &self.forwarder)
            && ingest.province != forwarder.province
        {
            problems.push(
                "forwarder.province",
                forwarder.province,
                "must equal ingest.province, because the forwarder reads the ingest's store",
            );
        }

        if let Some(broker) = &self.broker {
            broker.backoff.check(&mut problems, "broker.backoff");
            if broker.client_id.is_empty() {
                problems.push("broker.client_id", "\"\"", "must not be empty");
            }
            if broker.rebuild_after_errors == 0 {
                problems.push("broker.rebuild_after_errors", 0, "must be at least 1");
            }
        }
        if let Some(store) = &self.store {
            check_at_least(
                &mut problems,
                "store.retention_days",
                u64::from(store.retention_days),
                1,
            );
            check_at_least(
                &mut problems,
                "store.prune_interval_s",
                store.prune_interval_s,
                1,
            );
            check_at_least(
                &mut problems,
                "store.max_prune_records",
                store.max_prune_records as u64,
                1,
            );
        }
        if let Some(ingest) = &self.ingest {
            check_group(&mut problems, "ingest.group", &ingest.group);
            check_at_least(&mut problems, "ingest.queue", ingest.queue as u64, 1);
            check_at_least(
                &mut problems,
                "ingest.reconcile_interval_s",
                ingest.reconcile_interval_s,
                1,
            );
            check_at_least(
                &mut problems,
                "ingest.max_replay_span",
                ingest.max_replay_span,
                1,
            );
        }
        if let Some(forwarder) = &self.forwarder {
            let max = tollway_topics::limits::MAX_RECORDS_PER_BATCH;
            if forwarder.batch_records == 0 || forwarder.batch_records > max {
                problems.push(
                    "forwarder.batch_records",
                    forwarder.batch_records,
                    &format!("must be 1 to {max}"),
                );
            }
            if forwarder.window_records < forwarder.batch_records as u64 {
                problems.push(
                    "forwarder.window_records",
                    forwarder.window_records,
                    "must be at least forwarder.batch_records",
                );
            }
            check_at_least(
                &mut problems,
                "forwarder.resend_after_s",
                forwarder.resend_after_s,
                1,
            );
            if forwarder.resend_cap_s < forwarder.resend_after_s {
                problems.push(
                    "forwarder.resend_cap_s",
                    forwarder.resend_cap_s,
                    "must be at least forwarder.resend_after_s",
                );
            }
        }
        if let Some(national) = &self.national_ingest {
            check_group(&mut problems, "national_ingest.group", &national.group);
            check_at_least(
                &mut problems,
                "national_ingest.queue",
                national.queue as u64,
                1,
            );
        }
        if let Some(query) = &self.query {
            if !query.bind.ip().is_loopback() {
                problems.push(
                    "query.bind",
                    query.bind,
                    "must be a loopback address; the query API has no authentication",
                );
            }
            check_at_least(
                &mut problems,
                "query.max_records",
                query.max_records as u64,
                1,
            );
        }
        if let Some(controller) = &self.controller {
            controller.check(&mut problems);
        }
        if let Some(aggregator) = &self.aggregator {
            aggregator.check(&mut problems);
        }
        problems.into_result(path)
    }

    /// Reports whether any service section is present.
    pub fn has_services(&self) -> bool {
        self.ingest.is_some()
            || self.forwarder.is_some()
            || self.national_ingest.is_some()
            || self.query.is_some()
            || self.controller.is_some()
            || self.aggregator.is_some()
    }
}

fn check_group(problems: &mut Problems, key: &str, group: &str) {
    let valid = !group.is_empty()
        && group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        problems.push(
            key,
            format!("{group:?}"),
            "must be 1 or more ASCII letters, digits, '-' or '_'",
        );
    }
}

fn check_at_least(problems: &mut Problems, key: &str, value: u64, min: u64) {
    if value < min {
        problems.push(key, value, &format!("must be at least {min}"));
    }
}

impl BrokerConfig {
    /// Reads the password from `password_file` (its first line).
    pub fn read_password(&self) -> Result<String, std::io::Error> {
        let text = std::fs::read_to_string(&self.password_file)?;
        Ok(text.lines().next().unwrap_or("").to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollway_runtime::config::parse_config;

    fn parse(text: &str) -> Result<(), String> {
        let config: Config =
            parse_config(text, Path::new("center.toml")).map_err(|e| e.to_string())?;
        config
            .validate(Some(Path::new("center.toml")))
            .map_err(|e| e.to_string())
    }

    const BROKER: &str = "[broker]\nport = 1883\nusername = \"ingest\"\npassword_file = \"p\"\nclient_id = \"c\"\n[store]\npath = \"db\"\n";

    #[test]
    fn province_process_is_valid() {
        let text = format!(
            "{BROKER}[ingest]\nprovince = 44\n[forwarder]\nprovince = 44\n[query]\nbind = \"127.0.0.1:8380\"\n"
        );
        assert_eq!(parse(&text), Ok(()));
    }

    #[test]
    fn every_problem_is_reported() {
        let text = "[ingest]\nprovince = 44\nqueue = 0\n[forwarder]\nprovince = 11\n[query]\nbind = \"0.0.0.0:8380\"\n";
        let err = parse(text).unwrap_err();
        for key in [
            "broker",
            "store",
            "ingest.queue",
            "forwarder.province",
            "query.bind",
        ] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
    }

    /// Controller and aggregator problems are reported with the others,
    /// before any service starts.
    #[test]
    fn controller_problems_are_reported_with_the_others() {
        let text = format!(
            "{BROKER}[ingest]\nprovince = 44\n[forwarder]\nprovince = 32\n\
             [controller]\nprovince = 44\ndata_dir = \"c\"\ngrace_period_s = 600\nforget_after_s = 60\napi_bind = \"0.0.0.0:8470\"\n\
             [controller.broker]\nport = 1883\nclient_id = \"ctl\"\n\
             [aggregator]\napi_bind = \"0.0.0.0:8471\"\n[aggregator.broker]\nport = 1883\nclient_id = \"agg\"\n"
        );
        let err = parse(&text).unwrap_err();
        for key in [
            "forwarder.province",
            "controller.forget_after_s",
            "controller.api_bind",
            "aggregator.api_bind",
        ] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
    }

    /// The sample configurations under deploy/examples parse and pass the
    /// checks, commented defaults included.
    #[test]
    fn sample_configurations_are_valid() {
        let province = include_str!("../../deploy/examples/center-province.toml");
        let national = include_str!("../../deploy/examples/center-national.toml");
        for text in [province, national] {
            assert_eq!(parse(text), Ok(()));
            // `# key = value` lines become settings; other comments go.
            let uncommented: String = text
                .lines()
                .filter_map(|line| match line.strip_prefix("# ") {
                    Some(rest) if is_setting(rest) => Some(rest),
                    Some(_) => None,
                    None => Some(line),
                })
                .collect::<Vec<_>>()
                .join("\n");
            assert_eq!(parse(&uncommented), Ok(()), "{uncommented}");
        }
    }

    fn is_setting(line: &str) -> bool {
        line.split_once(" = ").is_some_and(|(key, _)| {
            !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
    }

    #[test]
    fn national_ingest_runs_alone() {
        let text = format!("{BROKER}[ingest]\nprovince = 44\n[national_ingest]\n");
        let err = parse(&text).unwrap_err();
        assert!(err.contains("national_ingest"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[ingest]\nprovince = 44\nqeue = 3\n").unwrap_err();
        assert!(err.contains("qeue"), "{err}");
    }
}
