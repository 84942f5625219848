//! The proxy's faults, each observed from a real TCP server and client on loopback.

use ferry_faultproxy::{Fault, FaultProxy, Plan};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A server that reads each connection to its end and reports how many bytes it got, then
/// answers "ok".
async fn sink() -> (SocketAddr, mpsc::UnboundedReceiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut total = 0;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n,
                    }
                }
                let _ = s.write_all(b"ok").await;
                let _ = tx.send(total);
            });
        }
    });
    (addr, rx)
}

async fn send(addr: SocketAddr, n: usize) -> (bool, Vec<u8>) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let data = vec![7u8; n];
    let wrote = c.write_all(&data).await.is_ok() && c.shutdown().await.is_ok();
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer).await;
    (wrote, answer)
}

#[tokio::test]
async fn forwards_faithfully_and_counts() {
    let (server, mut got) = sink().await;
    let proxy = FaultProxy::start(server).await.unwrap();
    let (ok, answer) = send(proxy.addr(), 1_000_000).await;
    assert!(ok);
    assert_eq!(answer, b"ok");
    assert_eq!(got.recv().await, Some(1_000_000));
    let s = proxy.stats();
    assert_eq!(
        (s.connections, s.bytes_to_server, s.bytes_to_client),
        (1, 1_000_000, 2)
    );
}

#[tokio::test]
async fn close_and_reset_after_n_bytes() {
    let (server, mut got) = sink().await;
    let proxy = FaultProxy::start(server).await.unwrap();
    proxy.set(Plan::once(Fault::CloseAfter { bytes: 1000 }));
    let (_, answer) = send(proxy.addr(), 100_000).await;
    assert_eq!(got.recv().await, Some(1000));
    assert!(answer.is_empty(), "the answer must not reach a cut client");

    proxy.set(Plan::once(Fault::ResetAfter { bytes: 5000 }));
    let (_, answer) = send(proxy.addr(), 100_000).await;
    assert_eq!(got.recv().await, Some(5000));
    assert!(answer.is_empty());

    // `once`: the next connection is carried faithfully again.
    let (ok, answer) = send(proxy.addr(), 10).await;
    assert!(ok && answer == b"ok");
    assert_eq!(got.recv().await, Some(10));
    assert_eq!(proxy.stats().faults_applied, 2);
}

#[tokio::test]
async fn stall_holds_until_cut() {
    let (server, mut got) = sink().await;
    let proxy = FaultProxy::start(server).await.unwrap();
    proxy.set(Plan::always(Fault::StallAfter { bytes: 3000 }));
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    c.write_all(&[1u8; 3000]).await.unwrap();
    // Wait until the proxy has forwarded the 3000 bytes (it counts them as it goes).
    while proxy.stats().bytes_to_server < 3000 {
        tokio::task::yield_now().await;
    }
    c.write_all(&[1u8; 100]).await.unwrap();
    // Nothing more arrives; the server has not finished.
    assert!(got.try_recv().is_err());
    proxy.cut_all();
    assert_eq!(got.recv().await, Some(3000));
}

#[tokio::test]
async fn accept_then_close_or_reset() {
    let (server, _got) = sink().await;
    let proxy = FaultProxy::start(server).await.unwrap();
    for fault in [Fault::AcceptThenClose, Fault::AcceptThenReset] {
        proxy.set(Plan::once(fault));
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut buf = [0u8; 8];
        let r = c.read(&mut buf).await;
        assert!(matches!(r, Ok(0) | Err(_)), "{fault:?}: {r:?}");
    }
}

#[tokio::test]
async fn trickle_delivers_everything() {
    let (server, mut got) = sink().await;
    let proxy = FaultProxy::start(server).await.unwrap();
    proxy.set(Plan::always(Fault::Trickle {
        bytes_per_s: 200_000,
    }));
    let (ok, answer) = send(proxy.addr(), 50_000).await;
    assert!(ok && answer == b"ok");
    assert_eq!(got.recv().await, Some(50_000));
}

#[tokio::test]
async fn respond_answers_for_the_server_then_forwards_again() {
    let (server, mut got) = sink().await;
    let proxy = FaultProxy::start(server).await.unwrap();
    proxy.set(Plan::once(Fault::Respond {
        status: 503,
        retry_after_s: 2,
    }));
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    c.write_all(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("Retry-After: 2\r\n"), "{answer}");
    // The server never saw that request; the next connection reaches it.
    let (ok, answer) = send(proxy.addr(), 10).await;
    assert!(ok && answer == b"ok");
    assert_eq!(got.recv().await, Some(10));
}

#[tokio::test]
async fn flip_damages_exactly_one_bit_at_its_position() {
    // A server that keeps what it receives.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    let (tx, mut got) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all).await;
        let _ = tx.send(all);
    });
    let proxy = FaultProxy::start(server).await.unwrap();
    proxy.set(Plan::once(Fault::FlipAfter { bytes: 100_000 }));
    let (ok, _) = send(proxy.addr(), 300_000).await;
    assert!(ok);
    let received = got.recv().await.unwrap();
    assert_eq!(received.len(), 300_000);
    let damaged: Vec<usize> = (0..received.len()).filter(|i| received[*i] != 7).collect();
    assert_eq!(damaged, [100_000]);
    assert_eq!(received[100_000], 6);
}
