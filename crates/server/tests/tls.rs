//! https and connection hygiene: the server speaks TLS with the configured certificate, a client
//! that does not trust it is refused, bad key material fails the start with the file named, and
//! a client that never finishes its headers is disconnected.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use ferry_server::{Config, Server, StartError, TlsError, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

fn tls_files() -> TlsFiles {
    TlsFiles {
        cert_path: fixture("cert.pem"),
        key_path: fixture("key.pem"),
    }
}

fn client_trusting(cert: &str) -> reqwest::Client {
    let pem = std::fs::read(fixture(cert)).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .build()
        .unwrap()
}

#[tokio::test]
async fn https_upload_with_a_trusted_certificate() {
    let s = server_with(|c| {
        c.open = true;
        c.tls = Some(tls_files());
    })
    .await;
    assert!(
        s.handle.base_url().starts_with("https://"),
        "{}",
        s.handle.base_url()
    );
    let client = client_trusting("ca.pem");
    let data = bytes(300_000, 7);
    let r = client
        .post(s.url("/v1/uploads"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_object_headers(&r, &data);
    let back = client
        .get(s.url(&format!("/v1/objects/{}", blake3_hex(&data))))
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), 200);
    assert_eq!(back.bytes().await.unwrap().as_ref(), &data[..]);
}

#[tokio::test]
async fn clients_that_do_not_trust_the_server_are_refused() {
    let s = server_with(|c| {
        c.open = true;
        c.tls = Some(tls_files());
    })
    .await;
    // Trusts another certificate only: the handshake must fail, nothing is uploaded.
    let wrong = client_trusting("other-ca.pem");
    let e = wrong
        .post(s.url("/v1/uploads"))
        .body(bytes(1000, 1))
        .send()
        .await
        .expect_err("an untrusted certificate was accepted");
    assert!(e.is_connect() || e.is_request(), "{e:?}");
    // Plain http to the TLS port gets no HTTP answer.
    let plain = format!("http://{}/healthz", s.handle.local_addr());
    let answer = reqwest::Client::new().get(&plain).send().await;
    assert!(
        answer.is_err() || !answer.unwrap().status().is_success(),
        "plain http was served on the TLS port"
    );
}

#[tokio::test]
async fn bad_key_material_fails_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let start = |tls: TlsFiles| {
        let mut config = Config::new(dir.path(), "127.0.0.1:0".parse().unwrap());
        config.tls = Some(tls);
        Server::start(config)
    };
    let missing = fixture("no-such-cert.pem");
    match start(TlsFiles {
        cert_path: missing.clone(),
        key_path: fixture("key.pem"),
    })
    .await
    {
        Err(StartError::Tls(TlsError::Cert { path, .. })) => assert_eq!(path, missing),
        other => panic!("expected a certificate error, got {other:?}"),
    }
    // A certificate file given as the key: no private key in it.
    match start(TlsFiles {
        cert_path: fixture("cert.pem"),
        key_path: fixture("cert.pem"),
    })
    .await
    {
        Err(StartError::Tls(TlsError::Key { path, .. })) => assert_eq!(path, fixture("cert.pem")),
        other => panic!("expected a key error, got {other:?}"),
    }
    // A key that belongs to another certificate.
    match start(TlsFiles {
        cert_path: fixture("cert.pem"),
        key_path: fixture("other-key.pem"),
    })
    .await
    {
        Err(StartError::Tls(TlsError::Config(_))) => {}
        other => panic!("expected a mismatch error, got {other:?}"),
    }
}

/// Reads until the server closes the connection; `None` if it is still open at the deadline.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(seen),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn unfinished_headers_are_cut_off() {
    let s = server_with(|c| {
        c.open = true;
        c.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(s.handle.local_addr())
        .await
        .unwrap();
    stream
        .write_all(b"POST /v1/uploads HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(
        answer.is_some(),
        "a connection with unfinished headers was kept open"
    );

    // A client that completes its headers in time is served as usual on the same server.
    let r = s.req("GET", "/healthz").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_silent_tls_client_is_cut_off() {
    let s = server_with(|c| {
        c.open = true;
        c.tls = Some(tls_files());
        c.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    // Connects and never starts the handshake.
    let mut stream = tokio::net::TcpStream::connect(s.handle.local_addr())
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut stream).await.is_some(),
        "a connection that never shook hands was kept open"
    );
}

#[test]
fn serve_prints_the_certificate_fingerprint_as_openssl_does() {
    // The second stdout line of `serve` with TLS: what a client pins. It must be the SHA-256
    // of the certificate's DER in openssl's own notation (an independent computation).
    let openssl = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(fixture("cert.pem"))
        .output();
    let expected = match openssl {
        Ok(o) if o.status.success() => String::from_utf8(o.stdout)
            .unwrap()
            .trim()
            .split_once('=')
            .expect("openssl prints `sha256 Fingerprint=…`")
            .1
            .to_owned(),
        other => {
            eprintln!(
                "skipped: openssl is needed to compute the fingerprint independently ({other:?})"
            );
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-server"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .arg("--tls-cert")
        .arg(fixture("cert.pem"))
        .arg("--tls-key")
        .arg(fixture("key.pem"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(first.starts_with("listening on https://"), "{first}");
    assert_eq!(second, format!("certificate sha256 {expected}"));
}
