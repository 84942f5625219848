//! The faults on the server→client direction (downloads), observed from a real TCP server and
//! client on loopback: a flipped bit lands exactly where asked, a trickle delivers everything
//! at about its rate.

use ferry_faultproxy::{Fault, FaultProxy, Plan};
use std::net::SocketAddr;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A server that sends `n` bytes of 7 to every connection, then closes.
async fn source(n: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = s.write_all(&vec![7u8; n]).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

async fn fetch(addr: SocketAddr) -> Vec<u8> {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    got
}

#[tokio::test]
async fn flip_down_damages_exactly_one_bit_of_what_the_server_sends() {
    let proxy = FaultProxy::start(source(300_000).await).await.unwrap();
    proxy.set(Plan::once(Fault::FlipDownAfter { bytes: 123_456 }));
    let got = fetch(proxy.addr()).await;
    assert_eq!(got.len(), 300_000);
    let damaged: Vec<usize> = (0..got.len()).filter(|i| got[*i] != 7).collect();
    assert_eq!(damaged, [123_456]);
    assert_eq!(got[123_456], 6);
    // Once: the next connection is faithful.
    assert!(fetch(proxy.addr()).await.iter().all(|b| *b == 7));
    assert_eq!(proxy.stats().bytes_to_client, 600_000);
}

#[tokio::test]
async fn trickle_down_delivers_everything_at_about_its_rate() {
    let proxy = FaultProxy::start(source(60_000).await).await.unwrap();
    proxy.set(Plan::always(Fault::TrickleDown {
        bytes_per_s: 100_000,
    }));
    let t = Instant::now();
    let got = fetch(proxy.addr()).await;
    assert_eq!(got.len(), 60_000);
    // 10,000 bytes every 100 ms: at least 0.5 s for 60,000.
    assert!(t.elapsed().as_millis() >= 500, "{:?}", t.elapsed());
}
