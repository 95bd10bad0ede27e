//! A TCP relay on a loopback port that a test can open and close, placed
//! between a client and a broker.
//!
//! While closed, the gate accepts connections and drops them at once, so a
//! client sees its connection fail the way it would on a dead link. Closing
//! it also cuts the connections it is relaying. Tests use it to decide
//! exactly when a client may reach a broker again.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// A relay from `127.0.0.1:{port}` to an upstream loopback port.
pub struct TcpGate {
    pub port: u16,
    shared: Arc<Shared>,
}

struct Shared {
    open: AtomicBool,
    stopped: AtomicBool,
    /// Connections accepted while closed and dropped.
    refused: AtomicU64,
    /// Both ends of every relayed connection, to cut them on close.
    relayed: Mutex<Vec<TcpStream>>,
}

impl TcpGate {
    /// Starts an open gate to `127.0.0.1:{upstream}`.
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            open: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            relayed: Mutex::new(Vec::new()),
        });
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream));
        let accept_shared = shared.clone();
        thread::spawn(move || accept_loop(listener, upstream, accept_shared));
        TcpGate { port, shared }
    }

    /// Lets new connections through.
    pub fn open(&self) {
        self.shared.open.store(true, Ordering::SeqCst);
    }

    /// Drops new connections and cuts the ones in progress.
    pub fn close(&self) {
        self.shared.open.store(false, Ordering::SeqCst);
        for stream in self.shared.relayed.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Returns the number of connections dropped while closed.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for TcpGate {
    fn drop(&mut self) {
        self.close();
        self.shared.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees `stopped`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if !shared.open.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect(upstream) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        {
            let mut relayed = shared.relayed.lock().unwrap();
            relayed.push(client.try_clone().unwrap());
            relayed.push(server.try_clone().unwrap());
        }
        let (client_read, server_write) =
            (client.try_clone().unwrap(), server.try_clone().unwrap());
        thread::spawn(move || copy(client_read, server_write));
        thread::spawn(move || copy(server, client));
    }
}

/// Copies until either side ends, then shuts both down.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(len) => {
                if to.write_all(&buffer[..len]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
