//! A minimal Prometheus scrape endpoint: `GET /metrics` on a TCP port
//! returns the text that a program renders (exposition format 0.0.4).
//!
//! Each connection gets one response and is closed, which is all a
//! Prometheus scraper needs. Any other request gets 404.
//!
//! NOTE: the broker has the same responder in its own `metrics.rs`. This
//! one takes a render function, so both programs could share it from
//! `tollway-runtime`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollway_runtime::CancellationToken;

/// Renders the current metrics as Prometheus text.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Binds the endpoint with SO_REUSEADDR, so that a restarted program binds
/// at once; binding at start-up reports a port in use before serving.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(64)
}

/// Serves scrapes until `stop` is cancelled.
pub async fn serve(listener: TcpListener, render: Render, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(respond(stream, render.clone()));
            }
            Err(err) => {
                tracing::warn!(error = %err, "metrics endpoint: accept failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn respond(mut stream: TcpStream, render: Render) {
    let mut request = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut request)).await;
    let Ok(Ok(len)) = read else {
        return;
    };
    let request = String::from_utf8_lossy(&request[..len]);
    let response = if request.starts_with("GET /metrics ") {
        let body = render();
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
