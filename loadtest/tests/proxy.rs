//! The fault proxy against real TCP servers on loopback: forwarding and
//! counting, delay, bandwidth cap, dropped connections and both kinds of
//! cut. Timing checks are lower bounds only (a fault must slow traffic at
//! least this much), so a slow machine cannot make them fail.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollway_loadtest::proxy::{CutMode, FaultProxy};

/// Starts an echo server and returns its address.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

async fn proxy_to_echo() -> FaultProxy {
    let upstream = echo_server().await;
    FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], 0)), upstream)
        .await
        .unwrap()
}

/// Writes `data` and reads the same number of bytes back.
async fn round_trip(stream: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    let (mut read, mut write) = stream.split();
    let send = async {
        write.write_all(data).await.unwrap();
    };
    let receive = async {
        let mut back = vec![0u8; data.len()];
        read.read_exact(&mut back).await.unwrap();
        back
    };
    let ((), back) = tokio::join!(send, receive);
    back
}

/// Returns true when the peer closed the connection (EOF or reset) within
/// `timeout`.
async fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(timeout, stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn forwards_bytes_and_counts_them() {
    let proxy = proxy_to_echo().await;
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();

    let back = round_trip(&mut stream, &data).await;

    assert!(back == data, "echoed bytes differ from the bytes sent");
    let counters = proxy.counters();
    assert_eq!(
        counters.bytes_up,
        data.len() as u64,
        "bytes toward upstream"
    );
    assert_eq!(
        counters.bytes_down,
        data.len() as u64,
        "bytes toward the client"
    );
    assert!(counters.writes_up >= 1, "no write toward upstream counted");
    assert!(
        counters.writes_down >= 1,
        "no write toward the client counted"
    );
    assert_eq!(counters.accepted, 1);
}

#[tokio::test]
async fn delay_holds_each_direction() {
    let proxy = proxy_to_echo().await;
    proxy.set_delay(Duration::from_millis(200));
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();

    let started = Instant::now();
    let back = round_trip(&mut stream, b"ping").await;

    assert_eq!(back, b"ping");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400),
        "a round trip through a 200 ms delay each way took only {elapsed:?}"
    );
}

#[tokio::test]
async fn bandwidth_cap_slows_a_bulk_transfer() {
    let proxy = proxy_to_echo().await;
    // 100,000 bytes per second each way; 300,000 bytes need at least about
    // 2.9 s after the 0.1 s burst allowance.
    proxy.set_bandwidth(Some(100_000));
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let data = vec![7u8; 300_000];

    let started = Instant::now();
    let back = round_trip(&mut stream, &data).await;

    assert!(back == data, "capped transfer lost or changed bytes");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(2_800),
        "300,000 bytes at 100,000 B/s arrived after only {elapsed:?}"
    );
}

#[tokio::test]
async fn removing_the_cap_restores_speed() {
    let proxy = proxy_to_echo().await;
    proxy.set_bandwidth(Some(1_000));
    proxy.set_bandwidth(None);
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();

    let back = tokio::time::timeout(
        Duration::from_secs(10),
        round_trip(&mut stream, &[1u8; 50_000]),
    )
    .await
    .expect("50,000 bytes did not pass within 10 s after the cap was removed");
    assert_eq!(back.len(), 50_000);
}

#[tokio::test]
async fn drop_connections_closes_open_ones_only() {
    let proxy = proxy_to_echo().await;
    let mut first = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_eq!(round_trip(&mut first, b"a").await, b"a");

    proxy.drop_connections();

    assert!(
        closed_within(&mut first, Duration::from_secs(5)).await,
        "an open connection survived drop_connections"
    );
    let mut second = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_eq!(round_trip(&mut second, b"b").await, b"b");
}

#[tokio::test]
async fn refusing_cut_closes_and_rejects_until_it_ends() {
    let proxy = proxy_to_echo().await;
    let mut open = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_eq!(round_trip(&mut open, b"a").await, b"a");

    proxy.cut_for(Duration::from_secs(2), CutMode::Refuse);

    assert!(
        closed_within(&mut open, Duration::from_secs(5)).await,
        "an open connection survived a refusing cut"
    );
    let mut during = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert!(
        closed_within(&mut during, Duration::from_secs(1)).await,
        "a connection made during a refusing cut was not closed"
    );
    assert!(proxy.counters().refused >= 1);

    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let mut after = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_eq!(round_trip(&mut after, b"c").await, b"c");
}

#[tokio::test]
async fn stalling_cut_delivers_everything_after_it_ends() {
    let proxy = proxy_to_echo().await;
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"before").await, b"before");

    let started = Instant::now();
    proxy.cut_for(Duration::from_millis(1_500), CutMode::Stall);
    stream.write_all(b"during").await.unwrap();
    let mut back = [0u8; 6];
    stream.read_exact(&mut back).await.unwrap();

    assert_eq!(
        &back, b"during",
        "bytes sent during a stall were lost or changed"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1_400),
        "bytes passed a 1.5 s stall after only {elapsed:?}"
    );
}

#[tokio::test]
async fn unreachable_upstream_is_counted() {
    // A port that was free a moment ago has no listener.
    let upstream = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], 0)), upstream)
        .await
        .unwrap();
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();

    assert!(
        closed_within(&mut stream, Duration::from_secs(5)).await,
        "the proxy kept a connection whose upstream is unreachable"
    );
    assert_eq!(proxy.counters().upstream_failures, 1);
}
