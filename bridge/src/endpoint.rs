//! The bridge's view of one broker: addresses, credentials, TLS, and the
//! rumqttc options built from them for one connection attempt.

use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, TlsConfiguration, Transport};

/// Everything needed to open one session's connection to one broker.
#[derive(Clone)]
pub struct Endpoint {
    /// `host:port` addresses, tried in order.
    pub addresses: Vec<String>,
    pub client_id: String,
    pub username: String,
    pub password: String,
    /// PEM CA certificates; `None` for plain TCP (the local service
    /// listener on loopback).
    pub tls_ca: Option<Vec<u8>>,
    pub keep_alive: Duration,
    pub connect_timeout: Duration,
    pub max_packet_bytes: usize,
    /// Registered at CONNECT; the broker publishes it if the bridge
    /// vanishes without a DISCONNECT.
    pub will: Option<LastWill>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is left out on purpose: endpoints appear in logs.
        f.debug_struct("Endpoint")
            .field("addresses", &self.addresses)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("tls", &self.tls_ca.is_some())
            .finish_non_exhaustive()
    }
}

/// Requests the bridge may have queued in rumqttc at once: the publish
/// window plus acknowledgements and subscriptions. The sessions never
/// queue more than `max_inflight` publishes and one acknowledgement per
/// message the source broker has in flight, so this only has to exceed
/// both brokers' in-flight windows.
pub const REQUEST_CAPACITY: usize = 4096;

/// rumqttc's own in-flight limit. Packet ids cycle up to it, so keeping it
/// far above the bridge's own window means an id is never reused while
/// its message still waits for a PUBACK.
pub const RUMQTTC_INFLIGHT: u16 = 1000;

impl Endpoint {
    /// Builds the options for a connection to `address`.
    pub fn options(&self, address: &str) -> Result<MqttOptions, String> {
        let (host, port) = address
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("invalid address {address:?}; expected host:port"))?;

        let mut options = MqttOptions::new(&self.client_id, host, port);
        options
            .set_keep_alive(self.keep_alive)
            // A persistent session: the broker keeps the subscriptions and
            // queues messages for the bridge while it reconnects.
            .set_clean_session(false)
            // The source is acknowledged only after the destination's PUBACK.
            .set_manual_acks(true)
            .set_credentials(&self.username, &self.password)
            .set_inflight(RUMQTTC_INFLIGHT)
            .set_request_channel_capacity(REQUEST_CAPACITY)
            .set_max_packet_size(self.max_packet_bytes, self.max_packet_bytes);
        if let Some(will) = &self.will {
            options.set_last_will(will.clone());
        }
        if let Some(ca) = &self.tls_ca {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                ca: ca.clone(),
                alpn: None,
                client_auth: None,
            }));
        }
        Ok(options)
    }
}
