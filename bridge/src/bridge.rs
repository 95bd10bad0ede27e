//! Assembles a bridge from its configuration: the lanes of each direction,
//! the three sessions that feed and drain them, and the metrics endpoint.
//!
//! - `local`: the provincial broker's service listener. It reads the up
//!   rules of the control lane and publishes everything that comes down.
//! - `local-bulk`: a second session to the same listener that reads the up
//!   rules of the bulk lane. A broker delivers one session's messages in
//!   order. With a single session, a control message would wait behind every
//!   bulk message queued before it, so the two lanes get a session each.
//! - `remote`: the national broker. It reads every down rule and publishes
//!   what goes up, through the token bucket, control lane first.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::QoS;
use tokio::time::Instant;
use tollway_runtime::{Backoff, Shutdown};
use tollway_topics::CenterKind;
use tollway_topics::topic::center_filter;

use crate::bucket::TokenBucket;
use crate::config::{Config, read_password};
use crate::endpoint::Endpoint;
use crate::lanes::{LaneSender, lanes};
use crate::metrics::Metrics;
use crate::metrics_http;
use crate::rules::{Direction, Lane, RuleSet};
use crate::session::{Session, SessionLinks, SessionPlan, offline_will};

/// A bridge that could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("province {province}: {message}")]
    Password { province: u8, message: String },

    #[error("province {province}: cannot read remote.ca_file {path}: {source}")]
    CaFile {
        province: u8,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "province {province}: cannot listen on metrics.bind {addr}: {source}; choose a free port"
    )]
    MetricsBind {
        province: u8,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Warns when a password file can be read by its group or by others; the
/// docs ask for mode 0600.
fn warn_if_readable_by_others(province: u8, path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;

    if let Ok(metadata) = std::fs::metadata(path) {
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                province,
                path = %path.display(),
                mode = format!("{mode:04o}"),
                "password file is readable by other users; run `chmod 600` on it"
            );
        }
    }
}

/// Starts every task of the bridge on `shutdown`. The tasks run until its
/// token is cancelled.
pub async fn start(config: &Config, shutdown: &mut Shutdown) -> Result<(), BridgeError> {
    // rumqttc and rustls may both be built with more than one crypto
    // back-end in this workspace, so rustls cannot pick one by itself.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let province = config.province.code();
    let password = |path: &std::path::Path| {
        warn_if_readable_by_others(province, path);
        read_password(path).map_err(|message| BridgeError::Password { province, message })
    };
    let local_password = password(&config.local.password_file)?;
    let remote_password = password(&config.remote.password_file)?;
    let ca = std::fs::read(&config.remote.ca_file).map_err(|source| BridgeError::CaFile {
        province,
        path: config.remote.ca_file.clone(),
        source,
    })?;

    let rules = Arc::new(config.rule_set());
    let metrics = Arc::new(Metrics::default());
    let lane_capacity = config.queues.lane_capacity;
    let up_bucket = TokenBucket::new(
        config.bandwidth.up_bytes_per_second,
        config.bandwidth.burst_bytes,
        Instant::now(),
    );
    let (up_tx, up_outbound) = lanes(lane_capacity, up_bucket);
    let (down_tx, down_outbound) = lanes(lane_capacity, TokenBucket::new(0, 1, Instant::now()));

    let client_id = config.client_id();
    let local = Endpoint {
        addresses: vec![config.local.address.clone()],
        client_id: client_id.clone(),
        username: config.local.username.clone(),
        password: local_password,
        tls_ca: None,
        keep_alive: Duration::from_secs(config.local.keep_alive_s),
        connect_timeout: Duration::from_secs(config.local.connect_timeout_s),
        max_packet_bytes: config.queues.max_packet_bytes,
        will: None,
    };
    let state_topic = center_filter(config.province, CenterKind::Bridge);
    let remote = Endpoint {
        addresses: config.remote.addresses.clone(),
        client_id: client_id.clone(),
        username: config.remote.username.clone(),
        password: remote_password,
        tls_ca: Some(ca),
        keep_alive: Duration::from_secs(config.remote.keep_alive_s),
        connect_timeout: Duration::from_secs(config.remote.connect_timeout_s),
        max_packet_bytes: config.queues.max_packet_bytes,
        will: Some(offline_will(&state_topic)),
    };

    let links = |outbound, to_peer: &LaneSender| SessionLinks {
        rules: rules.clone(),
        outbound,
        to_peer: to_peer.clone(),
        metrics: metrics.clone(),
        backoff: Backoff::new(config.backoff),
        max_pending: lane_capacity,
        max_inflight: usize::from(config.queues.max_inflight),
        stop: shutdown.token(),
    };

    let bulk_up = subscriptions(&rules, Direction::Up, Some(Lane::Bulk));
    let sessions = [
        Some(Session::new(
            SessionPlan {
                name: "local",
                metrics: |metrics| &metrics.local,
                endpoint: local.clone(),
                subscriptions: subscriptions(&rules, Direction::Up, Some(Lane::Control)),
                // Not on the provincial side: every node's retained presence
                // would cross the capped link again.
                resubscribe_on_connect: false,
                reads: Direction::Up,
                writes: Direction::Down,
                state_topic: None,
            },
            links(Some(down_outbound), &up_tx),
        )),
        (!bulk_up.is_empty()).then(|| {
            Session::new(
                SessionPlan {
                    name: "local-bulk",
                    metrics: |metrics| &metrics.local_bulk,
                    endpoint: Endpoint {
                        client_id: format!("{client_id}-bulk"),
                        ..local.clone()
                    },
                    subscriptions: bulk_up,
                    resubscribe_on_connect: false,
                    reads: Direction::Up,
                    writes: Direction::Down,
                    state_topic: None,
                },
                links(None, &up_tx),
            )
        }),
        Some(Session::new(
            SessionPlan {
                name: "remote",
                metrics: |metrics| &metrics.remote,
                endpoint: remote,
                subscriptions: subscriptions(&rules, Direction::Down, None),
                // Ops objects are retained nationally; a fresh SUBSCRIBE
                // brings back any the broker dropped while the link was down.
                resubscribe_on_connect: true,
                reads: Direction::Down,
                writes: Direction::Up,
                state_topic: Some(state_topic),
            },
            links(Some(up_outbound), &down_tx),
        )),
    ];

    if config.metrics.enabled {
        let addr = config.metrics.bind;
        let listener =
            metrics_http::bind(addr)
                .await
                .map_err(|source| BridgeError::MetricsBind {
                    province,
                    addr,
                    source,
                })?;
        let render_metrics = metrics.clone();
        let render: metrics_http::Render =
            Arc::new(move || render_metrics.render(&up_tx, &down_tx));
        shutdown.spawn(
            "metrics",
            metrics_http::serve(listener, render, shutdown.token()),
        );
        tracing::info!(%addr, "metrics endpoint listening");
    }

    for (name, session) in ["local", "local-bulk", "remote"].into_iter().zip(sessions) {
        if let Some(session) = session {
            shutdown.spawn(name, session.run());
        }
    }
    tracing::info!(
        province,
        client_id,
        rules = rules.rules().len(),
        up_bytes_per_second = config.bandwidth.up_bytes_per_second,
        "bridge started"
    );
    Ok(())
}

/// Returns the filters of `direction` (and of `lane`, if given) with their QoS.
fn subscriptions(rules: &RuleSet, direction: Direction, lane: Option<Lane>) -> Vec<(String, QoS)> {
    rules
        .in_direction(direction)
        .filter(|rule| lane.is_none_or(|lane| rule.lane == lane))
        .map(|rule| {
            let qos = if rule.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            (rule.filter.clone(), qos)
        })
        .collect()
}
