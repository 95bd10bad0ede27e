//! The bridge's counters and their Prometheus text, served by the scrape
//! endpoint in `metrics_http.rs`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::lanes::LaneSender;
use crate::rules::{Direction, Lane};

/// A metric's name, Prometheus type, help text and the counter it reads.
type Described<T> = (
    &'static str,
    &'static str,
    &'static str,
    fn(&T) -> &AtomicU64,
);

/// Counters of one MQTT session (`local`, `local-bulk` or `remote`).
#[derive(Debug, Default)]
pub struct SessionMetrics {
    /// 1 while connected, else 0.
    pub connected: AtomicU64,
    /// Successful CONNACKs.
    pub connects: AtomicU64,
    /// Failed connection attempts and lost connections.
    pub connection_errors: AtomicU64,
    /// Acknowledgements not sent because the message arrived on an earlier
    /// connection; the source broker delivers such a message again.
    pub stale_acks: AtomicU64,
    /// Messages received that no rule routes (for example from a
    /// subscription left over from an older rule set); acknowledged and
    /// not forwarded.
    pub unrouted: AtomicU64,
    /// Times a full lane made the session stop acknowledging the source.
    pub backpressure: AtomicU64,
}

/// Counters of one direction (`up` or `down`).
#[derive(Debug, Default)]
pub struct DirectionMetrics {
    /// Messages the destination acknowledged (QoS 1) or that were written
    /// to it (QoS 0).
    pub forwarded: AtomicU64,
    /// MQTT PUBLISH bytes of those messages.
    pub forwarded_bytes: AtomicU64,
    /// Messages sent again because the connection was lost before their
    /// PUBACK.
    pub resent: AtomicU64,
    /// Published messages waiting for a PUBACK.
    pub inflight: AtomicU64,
}

/// Every metric of one bridge.
#[derive(Debug, Default)]
pub struct Metrics {
    pub local: SessionMetrics,
    pub local_bulk: SessionMetrics,
    pub remote: SessionMetrics,
    pub up: DirectionMetrics,
    pub down: DirectionMetrics,
}

impl Metrics {
    pub fn direction(&self, direction: Direction) -> &DirectionMetrics {
        match direction {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }

    /// Renders every metric; `up` and `down` give the lane depths.
    pub fn render(&self, up: &LaneSender, down: &LaneSender) -> String {
        let mut out = String::new();
        let sessions = [
            ("local", &self.local),
            ("local-bulk", &self.local_bulk),
            ("remote", &self.remote),
        ];
        let session_metrics: [Described<SessionMetrics>; 6] = [
            (
                "tollway_bridge_connected",
                "gauge",
                "1 while the session is connected, by session.",
                |m| &m.connected,
            ),
            (
                "tollway_bridge_connects_total",
                "counter",
                "Successful connections, by session.",
                |m| &m.connects,
            ),
            (
                "tollway_bridge_connection_errors_total",
                "counter",
                "Failed connection attempts and lost connections, by session.",
                |m| &m.connection_errors,
            ),
            (
                "tollway_bridge_stale_acks_total",
                "counter",
                "Acknowledgements skipped because the message came on an earlier connection.",
                |m| &m.stale_acks,
            ),
            (
                "tollway_bridge_unrouted_total",
                "counter",
                "Messages received that no rule routes; acknowledged, not forwarded.",
                |m| &m.unrouted,
            ),
            (
                "tollway_bridge_backpressure_total",
                "counter",
                "Times a full lane made the session stop acknowledging its source.",
                |m| &m.backpressure,
            ),
        ];
        for (name, kind, help, field) in session_metrics {
            header(&mut out, name, kind, help);
            for (session, metrics) in sessions {
                let value = field(metrics).load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{session=\"{session}\"}} {value}");
            }
        }

        let directions = [("up", &self.up), ("down", &self.down)];
        let direction_metrics: [Described<DirectionMetrics>; 4] = [
            (
                "tollway_bridge_forwarded_total",
                "counter",
                "Messages delivered to the destination broker, by direction.",
                |m| &m.forwarded,
            ),
            (
                "tollway_bridge_forwarded_bytes_total",
                "counter",
                "MQTT PUBLISH bytes delivered to the destination broker, by direction.",
                |m| &m.forwarded_bytes,
            ),
            (
                "tollway_bridge_resent_total",
                "counter",
                "Messages sent again after a lost connection, by direction.",
                |m| &m.resent,
            ),
            (
                "tollway_bridge_inflight",
                "gauge",
                "Messages published and waiting for the destination's PUBACK, by direction.",
                |m| &m.inflight,
            ),
        ];
        for (name, kind, help, field) in direction_metrics {
            header(&mut out, name, kind, help);
            for (direction, metrics) in directions {
                let value = field(metrics).load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{direction=\"{direction}\"}} {value}");
            }
        }

        header(
            &mut out,
            "tollway_bridge_queued",
            "gauge",
            "Messages waiting in a lane, by direction and lane.",
        );
        for (direction, lanes) in [("up", up), ("down", down)] {
            for lane in [Lane::Control, Lane::Bulk] {
                let _ = writeln!(
                    out,
                    "tollway_bridge_queued{{direction=\"{direction}\",lane=\"{}\"}} {}",
                    lane.label(),
                    lanes.depth(lane)
                );
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}
