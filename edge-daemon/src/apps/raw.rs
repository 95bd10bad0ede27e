//! Raw JSON calls to Podman's libpod REST API over its Unix socket, for the
//! calls that `podman-api` 0.11 gets wrong against Podman 4:
//!
//! - stopping with a timeout: `ContainerStopOpts` sends the query key
//!   `Timeout`, which the libpod endpoint ignores (it reads `timeout`), so
//!   every stop would wait Podman's default 10 s;
//! - any response the crate's models fail to deserialize; the caller falls
//!   back to [`RawClient::get_json`] for that call only.

use std::path::{Path, PathBuf};

use hyper::{Body, Client, Method, Request, StatusCode};
use hyperlocal::{UnixConnector, Uri};

/// Version prefix of every libpod path; Podman 4 serves it.
const API_PREFIX: &str = "/v4.0.0/libpod";

/// A minimal HTTP client for the libpod API.
#[derive(Clone)]
pub struct RawClient {
    socket: PathBuf,
    client: Client<UnixConnector>,
}

/// A response with a status the caller did not expect.
#[derive(Debug)]
pub struct RawFailure(pub String);

impl RawClient {
    pub fn new(socket: &Path) -> Self {
        RawClient {
            socket: socket.to_path_buf(),
            client: Client::builder().build(UnixConnector),
        }
    }

    /// Sends `method` to `path` (below the libpod prefix, with its query)
    /// and returns the status and body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
    ) -> Result<(StatusCode, Vec<u8>), RawFailure> {
        let uri: hyper::Uri = Uri::new(&self.socket, &format!("{API_PREFIX}{path}")).into();
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .map_err(|err| RawFailure(format!("cannot build request for {path}: {err}")))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|err| RawFailure(format!("request to {path} failed: {err}")))?;
        let status = response.status();
        let body = hyper::body::to_bytes(response.into_body())
            .await
            .map_err(|err| RawFailure(format!("reading the response of {path} failed: {err}")))?;
        Ok((status, body.to_vec()))
    }

    /// GETs `path` and parses the body as JSON.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, RawFailure> {
        let (status, body) = self.call(Method::GET, path).await?;
        if !status.is_success() {
            return Err(RawFailure(format!(
                "GET {path} returned {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        serde_json::from_slice(&body)
            .map_err(|err| RawFailure(format!("GET {path} returned invalid JSON: {err}")))
    }

    /// Stops a container, giving it `timeout_s` seconds after SIGTERM
    /// before Podman kills it. A container that is already stopped is fine.
    pub async fn stop(&self, id: &str, timeout_s: u32) -> Result<(), RawFailure> {
        let path = format!("/containers/{id}/stop?timeout={timeout_s}");
        let (status, body) = self.call(Method::POST, &path).await?;
        match status {
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED => Ok(()),
            other => Err(RawFailure(format!(
                "POST {path} returned {other}: {}",
                String::from_utf8_lossy(&body)
            ))),
        }
    }
}
