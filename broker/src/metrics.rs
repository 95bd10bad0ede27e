//! The Prometheus text endpoint: `GET /metrics` on a loopback port returns
//! the broker's counters in the text exposition format (version 0.0.4).
//!
//! The server is a minimal HTTP/1.0-style responder: it reads one request,
//! answers and closes the connection, which is all a Prometheus scraper
//! needs.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollway_runtime::CancellationToken;

use crate::events::Counters;
use crate::listeners::ListenerTable;

/// Binds the metrics endpoint; binding at start-up reports a port in use
/// before the broker starts serving.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(64)
}

/// Serves scrapes until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    listeners: ListenerTable,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let body = render(&listeners, &counters);
                tokio::spawn(respond(stream, body));
            }
            Err(err) => {
                tracing::warn!(error = %err, "metrics endpoint: accept failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn respond(mut stream: TcpStream, body: String) {
    let mut request = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut request)).await;
    let Ok(Ok(len)) = read else {
        return;
    };
    let request = String::from_utf8_lossy(&request[..len]);
    let response = if request.starts_with("GET /metrics ") {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Renders every metric in the text exposition format.
pub fn render(listeners: &ListenerTable, counters: &Counters) -> String {
    let mut out = String::new();

    header(
        &mut out,
        "tollway_broker_connections",
        "gauge",
        "Connected MQTT clients, by listener.",
    );
    for info in listeners.values() {
        let _ = writeln!(
            out,
            "tollway_broker_connections{{listener=\"{}\"}} {}",
            info.name,
            info.connection_count()
        );
    }

    let by_listener = [
        (
            "tollway_broker_connects_total",
            "Accepted CONNECTs, by listener.",
            &counters.connects,
        ),
        (
            "tollway_broker_rejections_total",
            "CONNECTs rejected by authentication or the connection limit, by listener.",
            &counters.rejections,
        ),
        (
            "tollway_broker_paced_connects_total",
            "CONNECTs that waited for the listener's connection pacing.",
            &counters.paced,
        ),
        (
            "tollway_broker_pacing_wait_milliseconds_total",
            "Milliseconds CONNECTs waited for pacing, summed.",
            &counters.pacing_wait_ms,
        ),
        (
            "tollway_broker_pacing_refusals_total",
            "CONNECTs whose pacing wait reached the handshake timeout; refused with server unavailable.",
            &counters.pacing_refusals,
        ),
    ];
    for (name, help, values) in by_listener {
        header(&mut out, name, "counter", help);
        for (listener, value) in values {
            let _ = writeln!(
                out,
                "{name}{{listener=\"{listener}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
    }

    let totals = [
        (
            "tollway_broker_takeover_waits_total",
            "CONNECTs that waited for the ending session of the same client id.",
            &counters.takeover_waits,
        ),
        (
            "tollway_broker_takeover_timeouts_total",
            "Takeover waits that gave up; rmqtt may refuse those CONNECTs.",
            &counters.takeover_timeouts,
        ),
        (
            "tollway_broker_retained_refusals_total",
            "Retained publishes to a new topic beyond [retained] max_messages, delivered but not kept.",
            &counters.retained_refusals,
        ),
        (
            "tollway_broker_messages_in_total",
            "PUBLISH packets received, including ones the ACL drops.",
            &counters.messages_in,
        ),
        (
            "tollway_broker_messages_out_total",
            "Messages delivered to subscribers.",
            &counters.messages_out,
        ),
        (
            "tollway_broker_messages_dropped_total",
            "Messages dropped: ACL rejections, full queues, expiry.",
            &counters.messages_dropped,
        ),
        (
            "tollway_broker_payload_bytes_in_total",
            "Payload bytes received (headers and topics excluded).",
            &counters.payload_bytes_in,
        ),
        (
            "tollway_broker_payload_bytes_out_total",
            "Payload bytes delivered (headers and topics excluded).",
            &counters.payload_bytes_out,
        ),
    ];
    for (name, help, value) in totals {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
    }

    let name = "tollway_broker_retained_topics";
    header(
        &mut out,
        name,
        "gauge",
        "Retained topics held, counted while [retained] max_messages is set.",
    );
    let _ = writeln!(
        out,
        "{name} {}",
        counters.retained_topics.load(Ordering::Relaxed)
    );
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}
