//! Loopback ports for servers that tests and the load test start.
//!
//! Binding port 0 and releasing it is racy when many test processes run at
//! once. The kernel may hand the same port to the next process that binds
//! port 0, and it uses the same range for outgoing connections. A broker
//! could then find its port taken, or a test could reach another test's
//! broker. Ports here come from 20000-31999 instead, below Linux's default
//! ephemeral range (32768-60999), so the kernel does not pick them for
//! client sockets. Each one is claimed with a lock file that this process
//! keeps locked until it exits, so two test processes never share a port.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// First port handed out. Linux's ephemeral range starts at 32768 by default.
const FIRST: u16 = 20_000;
/// One past the last port handed out.
const END: u16 = 32_000;

/// Lock files held by this process, released when it exits.
static CLAIMED: Mutex<Vec<File>> = Mutex::new(Vec::new());
/// Ports this process handed out, never handed out twice.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Returns a loopback port that is free now and that no other test process
/// has claimed.
///
/// # Panics
/// When every port of the range is taken or the lock directory cannot be
/// created. Either means the machine is not fit to run the tests.
pub fn reserve() -> u16 {
    let dir = lock_dir();
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|err| panic!("cannot create port lock directory {}: {err}", dir.display()));

    let span = u32::from(END - FIRST);
    let start = seed() % span;
    for step in 0..span {
        let port = FIRST + ((start + step) % span) as u16;
        if try_claim(&dir, port) {
            return port;
        }
    }
    panic!("no free loopback port between {FIRST} and {END}");
}

fn try_claim(dir: &std::path::Path, port: u16) -> bool {
    let mut handed_out = HANDED_OUT.lock().unwrap();
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    if handed_out.contains(&port) {
        return false;
    }

    let path = dir.join(format!("{port}.lock"));
    let Ok(file) = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    else {
        return false;
    };
    if file.try_lock().is_err() {
        return false;
    }

    // Someone outside our tests may be listening there.
    if TcpListener::bind(("127.0.0.1", port)).is_err() {
        return false;
    }

    handed_out.insert(port);
    CLAIMED.lock().unwrap().push(file);
    true
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("tollway-ports")
}

/// Spreads processes over the range so that they rarely probe the same ports.
fn seed() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().wrapping_mul(2_654_435_761)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| reserve()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(ports.iter().all(|p| (FIRST..END).contains(p)));
    }

    #[test]
    fn port_lock_is_held_after_reserve() {
        let port = reserve();
        // Another process holding the lock looks the same as a second open
        // file description locking the same file.
        let other = File::open(lock_dir().join(format!("{port}.lock"))).unwrap();
        assert!(other.try_lock().is_err(), "the claim lock is not held");
    }
}
