//! Pairing: a wrong code is refused on both sides during the handshake, before any package
//! byte moves, and spends the receiver's one attempt; a recorded session cannot be replayed.

mod common;

use common::*;
use ferry_migrate::{Code, MigrateError, Receiver};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn another_code(than: &str) -> String {
    loop {
        let c = Code::generate().unwrap().display();
        if Code::parse(&c).unwrap() != Code::parse(than).unwrap() {
            return c;
        }
    }
}

#[tokio::test]
async fn wrong_code_is_refused_on_both_sides_and_spends_the_code() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let s = sample(src.path());
    let staging = dst.path().join("staging");
    let mut receiver = Receiver::bind(loopback()).await.unwrap();

    let wrong = another_code(&receiver.code());
    let sender = spawn_send(
        receiver.addr(),
        wrong,
        s.root.clone(),
        s.manifest.clone(),
        None,
    );
    let got = receiver.receive(&staging, |_| {}).await;
    assert!(matches!(got, Err(MigrateError::WrongCode)), "{got:?}");
    let sent = sender.await.unwrap();
    assert!(matches!(sent, Err(MigrateError::WrongCode)), "{sent:?}");
    assert!(!sent.unwrap_err().is_resumable());
    // Nothing moved: not even the manifest reached the staging folder.
    assert!(!staging.exists());

    // The right code now finds the code spent, and so does the receiver.
    let sender = spawn_send(
        receiver.addr(),
        receiver.code(),
        s.root.clone(),
        s.manifest.clone(),
        None,
    );
    let again = receiver.receive(&staging, |_| {}).await;
    assert!(matches!(again, Err(MigrateError::CodeUsed)), "{again:?}");
    let sent = sender.await.unwrap();
    assert!(matches!(sent, Err(MigrateError::CodeUsed)), "{sent:?}");
    assert!(!staging.exists());
}

#[tokio::test]
async fn a_malformed_code_is_refused_before_connecting() {
    let src = tempfile::tempdir().unwrap();
    let s = sample(src.path());
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let to = listener.local_addr().unwrap().to_string();
    let got = ferry_migrate::send(&s.root, &s.manifest, &to, "7-K4M2", |_| {}).await;
    assert!(matches!(got, Err(MigrateError::WrongCode)), "{got:?}");
}

#[tokio::test]
async fn a_stray_connection_does_not_spend_the_code() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let s = sample(src.path());
    let mut receiver = Receiver::bind(loopback()).await.unwrap();
    let addr = receiver.addr();
    let code = receiver.code();
    let root = s.root.clone();
    let manifest = s.manifest.clone();
    let sender = tokio::spawn(async move {
        // A port scanner and a talker of nonsense first, then the real sender.
        drop(TcpStream::connect(addr).await.unwrap());
        let mut junk = TcpStream::connect(addr).await.unwrap();
        junk.write_all(b"\x00\x10GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = junk.read_to_end(&mut sink).await;
        ferry_migrate::send(&root, &manifest, &addr.to_string(), &code, |_| {}).await
    });
    let session = receiver.receive(dst.path(), |_| {}).await.unwrap();
    session.confirm_installed().await.unwrap();
    assert!(sender.await.unwrap().unwrap().installed);
}

/// Forwards one connection to `upstream`, recording what the client sent.
async fn recording_relay(
    upstream: std::net::SocketAddr,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let record = Arc::new(Mutex::new(Vec::new()));
    let rec = record.clone();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(upstream).await.unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let up = async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = cr.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    let _ = sw.shutdown().await;
                    break;
                }
                rec.lock().unwrap().extend_from_slice(&buf[..n]);
                if sw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        };
        let down = async move {
            let _ = tokio::io::copy(&mut sr, &mut cw).await;
            let _ = cw.shutdown().await;
        };
        tokio::join!(up, down);
    });
    (addr, record)
}

#[tokio::test]
async fn a_recorded_session_cannot_be_replayed() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let s = sample(src.path());
    let code = Code::generate().unwrap().display();

    let mut first = Receiver::bind_with_code(loopback(), &code).await.unwrap();
    let (relay, record) = recording_relay(first.addr()).await;
    let (package, outcome) = full_move(
        &mut first,
        relay,
        &dst.path().join("first"),
        &s.root,
        &s.manifest,
    )
    .await;
    assert!(outcome.installed);
    assert_eq!(package.manifest, s.manifest);
    let recorded = record.lock().unwrap().clone();
    assert!(recorded.len() as u64 > outcome.wire_bytes);

    // Even a receiver with the very same code (which a real one never has) refuses the replay:
    // its fresh SPAKE2 and Noise keys do not match the recording.
    let staging = dst.path().join("second");
    let mut second = Receiver::bind_with_code(loopback(), &code).await.unwrap();
    let addr = second.addr();
    let replay = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(&recorded).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
    });
    let got = second.receive(&staging, |_| {}).await;
    assert!(matches!(got, Err(MigrateError::WrongCode)), "{got:?}");
    replay.await.unwrap();
    assert!(blobs(&staging).is_empty());
    assert!(!staging.join("manifest.json").exists());
}
