//! Loopback ports for the demo's listeners, chosen at start so two demos (or
//! a demo and the tests) can run on one machine.

use std::collections::HashSet;
use std::net::TcpListener;

/// Hands out distinct free loopback ports.
#[derive(Default)]
pub struct PortPool {
    given: HashSet<u16>,
}

impl PortPool {
    /// Returns a port that was free a moment ago and that this pool has not
    /// handed out before. The port is released before it is used, so another
    /// program could take it in between; the demo then fails to bind and
    /// says which listener failed.
    pub fn next(&mut self) -> std::io::Result<u16> {
        loop {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            if self.given.insert(port) {
                return Ok(port);
            }
        }
    }
}
