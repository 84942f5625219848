//! Servers that misbehave: garbage, 500s, 429 with Retry-After, redirects out of the origin,
//! successes that lie, refused connections. The engine retries what is transient, fails with
//! a clear code, and never hangs or spins.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use common::*;
use ferry_core::job::JobState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Handler = Arc<dyn Fn(usize, &Method, &[u8]) -> Response + Send + Sync>;

/// An HTTP server whose every answer `handler` decides, given the request's index (0-based),
/// method and body. Returns its address and a request counter.
async fn scripted(handler: Handler) -> (SocketAddr, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let app = Router::new().fallback(move |method: Method, body: Body| {
        let handler = handler.clone();
        let c = c.clone();
        async move {
            let bytes = axum::body::to_bytes(body, 64 << 20)
                .await
                .unwrap_or_default();
            let i = c.fetch_add(1, Ordering::SeqCst);
            handler(i, &method, &bytes)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, count)
}

fn answer(status: u16, headers: &[(&str, &str)]) -> Response {
    let mut b = Response::builder().status(StatusCode::from_u16(status).unwrap());
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Body::empty()).unwrap()
}

/// A draft server's answer to OPTIONS, or to the creation of an empty upload at `/uploads/u1`.
fn ietf_preflight_or_creation(method: &Method) -> Response {
    if method == Method::OPTIONS {
        return answer(204, &[("upload-limit", "max-size=1000000")]);
    }
    answer(
        201,
        &[
            ("location", "/uploads/u1"),
            ("upload-offset", "0"),
            ("upload-complete", "?0"),
        ],
    )
}

fn one_job(addr: SocketAddr, seed: u8) -> (Rig, uuid::Uuid, tempfile::TempDir) {
    let files = tempfile::tempdir().unwrap();
    let rig = rig(test_config(None, 64 << 10), &format!("http://{addr}"));
    let data = bytes(1000, seed);
    let path = write_file(files.path(), "f", &data);
    let id = rig.add_job(EXT, &path, hash(&data), destination(addr), BTreeMap::new());
    (rig, id, files)
}

#[tokio::test]
async fn garbage_answers_end_in_bad_response() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"\x00\xffBANANA 999 what\r\n\x01\x02\r\n\r\n")
                .await;
        }
    });
    let (rig, id, _f) = one_job(addr, 1);
    let report = run(&rig).await;
    let job = rig.job(id);
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.error.as_ref().map(|e| e.as_str()), Some("bad_response"));
    assert_eq!(job.status, None);
    assert_eq!(
        report.retried, 5,
        "max_attempts 6: five retries, then the failure"
    );
    assert!(hits.load(Ordering::SeqCst) >= 6);
}

#[tokio::test]
async fn server_errors_are_retried_then_fail_as_server_error() {
    let (addr, count) = scripted(Arc::new(|_, _, _| answer(500, &[]))).await;
    let (rig, id, _f) = one_job(addr, 2);
    let report = run(&rig).await;
    let job = rig.job(id);
    assert_eq!((job.state, job.status), (JobState::Failed, Some(500)));
    assert_eq!(job.error.as_ref().map(|e| e.as_str()), Some("server_error"));
    assert_eq!(report.retried, 5);
    assert_eq!(
        count.load(Ordering::SeqCst),
        6,
        "one request per attempt, no spinning"
    );
}

/// A server whose disk is full answers 507 Insufficient Storage: not the job's fault, retried
/// like any server error, and the upload goes through once there is room.
#[tokio::test]
async fn a_full_server_disk_is_retried_then_the_upload_succeeds() {
    let posts = Arc::new(AtomicUsize::new(0));
    let p = posts.clone();
    let (addr, _) = scripted(Arc::new(move |_, method, body| match method.as_str() {
        "OPTIONS" => answer(501, &[]),
        "POST" if p.fetch_add(1, Ordering::SeqCst) < 2 => answer(507, &[]),
        "POST" if body.len() == 1000 => answer(201, &[("ferry-size-bytes", "1000")]),
        _ => answer(400, &[]),
    }))
    .await;
    let (rig, id, _f) = one_job(addr, 4);
    let report = run(&rig).await;
    let job = rig.job(id);
    assert_eq!(
        (job.state, job.status),
        (JobState::Succeeded, Some(201)),
        "{job:?}"
    );
    assert_eq!(report.retried, 2);
    assert_eq!(posts.load(Ordering::SeqCst), 3);
}

/// After a kill, the last process's final append can complete the upload on the server after
/// the new process's HEAD said it was not: the next append is refused as "completed-upload"
/// (400). The uploader asks again and, the upload being complete with our bytes, succeeds.
#[tokio::test]
async fn an_append_refused_because_the_upload_completed_meanwhile_succeeds() {
    let completed = Arc::new(AtomicUsize::new(0));
    let c = completed.clone();
    let (addr, count) = scripted(Arc::new(move |_, method, _| match method.as_str() {
        "OPTIONS" | "POST" => ietf_preflight_or_creation(method),
        "PATCH" => {
            c.store(1, Ordering::SeqCst);
            answer(400, &[("content-type", "application/problem+json")])
        }
        "HEAD" if c.load(Ordering::SeqCst) == 1 => answer(
            204,
            &[
                ("upload-offset", "1000"),
                ("upload-complete", "?1"),
                ("ferry-size-bytes", "1000"),
            ],
        ),
        _ => answer(500, &[]),
    }))
    .await;
    let (rig, id, _f) = one_job(addr, 11);
    let report = run(&rig).await;
    let job = rig.job(id);
    assert_eq!(
        (job.state, job.status),
        (JobState::Succeeded, Some(204)),
        "{job:?}"
    );
    assert_eq!(report.retried, 0);
    // OPTIONS, POST, PATCH (refused), HEAD.
    assert_eq!(count.load(Ordering::SeqCst), 4);
}

/// A 400 that is not explained by a completed upload fails the job as the 400 it is.
#[tokio::test]
async fn an_append_refused_with_400_on_an_incomplete_upload_fails() {
    let (addr, _) = scripted(Arc::new(move |_, method, _| match method.as_str() {
        "OPTIONS" | "POST" => ietf_preflight_or_creation(method),
        "HEAD" => answer(204, &[("upload-offset", "0"), ("upload-complete", "?0")]),
        _ => answer(400, &[]),
    }))
    .await;
    let (rig, id, _f) = one_job(addr, 12);
    let report = run(&rig).await;
    let job = rig.job(id);
    assert_eq!(
        (job.state, job.status),
        (JobState::Failed, Some(400)),
        "{job:?}"
    );
    assert_eq!(job.error.as_ref().map(|e| e.as_str()), Some("client_error"));
    assert_eq!(report.retried, 0);
}

#[tokio::test]
async fn retry_after_is_honoured_then_the_upload_succeeds() {
    let times: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let t = times.clone();
    let (addr, _) = scripted(Arc::new(move |i, method, body| {
        t.lock().unwrap().push(Instant::now());
        match (i, method.as_str()) {
            (0, _) => answer(429, &[("retry-after", "1")]),
            (_, "OPTIONS") => answer(501, &[]),
            (_, "POST") if body.len() == 1000 => answer(201, &[("ferry-size-bytes", "1000")]),
            _ => answer(400, &[]),
        }
    }))
    .await;
    let (rig, id, _f) = one_job(addr, 3);
    let report = run(&rig).await;
    let job = rig.job(id);
    assert_eq!(
        (job.state, job.status),
        (JobState::Succeeded, Some(201)),
        "{job:?}"
    );
    assert_eq!(report.retried, 1);
    let times = times.lock().unwrap();
    let gap = times[1] - times[0];
    assert!(
        gap >= Duration::from_millis(1000),
        "retried after {gap:?}, before Retry-After"
    );
}

#[tokio::test]
async fn redirect_outside_the_origin_is_refused_at_once() {
    let (addr, count) = scripted(Arc::new(|_, _, _| {
        answer(307, &[("location", "http://127.0.0.1:9/elsewhere")])
    }))
    .await;
    let (rig, id, _f) = one_job(addr, 4);
    let report = run(&rig).await;
    let job = rig.job(id);
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(
        job.error.as_ref().map(|e| e.as_str()),
        Some("destination_refused")
    );
    assert_eq!(report.retried, 0);
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn redirect_loops_within_the_origin_are_cut() {
    let (addr, count) = scripted(Arc::new(|_, _, _| answer(308, &[("location", "/again")]))).await;
    let (rig, id, _f) = one_job(addr, 5);
    run(&rig).await;
    let job = rig.job(id);
    assert_eq!(
        job.error.as_ref().map(|e| e.as_str()),
        Some("destination_refused")
    );
    assert!(
        count.load(Ordering::SeqCst) <= 4,
        "followed {} redirects",
        count.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn a_success_that_lies_is_a_bad_response() {
    for (seed, lie) in [
        (6u8, ("ferry-size-bytes", "999")),
        (7, ("ferry-blake3", "00")),
        (
            8,
            (
                "repr-digest",
                "sha-256=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:",
            ),
        ),
    ] {
        let (addr, _) = scripted(Arc::new(move |_, method, _| match method.as_str() {
            "OPTIONS" => answer(501, &[]),
            _ => answer(201, &[lie]),
        }))
        .await;
        let (rig, id, _f) = one_job(addr, seed);
        run(&rig).await;
        let job = rig.job(id);
        assert_eq!(job.state, JobState::Failed, "{lie:?}");
        assert_eq!(
            job.error.as_ref().map(|e| e.as_str()),
            Some("bad_response"),
            "{lie:?}"
        );
    }
}

#[tokio::test]
async fn refused_connections_end_in_network_lost() {
    // Bind and drop: a port nobody listens on.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (rig, id, _f) = one_job(addr, 9);
    let report = run(&rig).await;
    let job = rig.job(id);
    assert_eq!(job.error.as_ref().map(|e| e.as_str()), Some("network_lost"));
    assert_eq!(report.retried, 5);
}

#[tokio::test]
async fn other_client_errors_fail_at_once_with_headers_kept() {
    let (addr, count) = scripted(Arc::new(|_, method, _| match method.as_str() {
        "OPTIONS" => answer(501, &[]),
        _ => answer(403, &[("X-Reason", "quota")]),
    }))
    .await;
    let (rig, id, _f) = one_job(addr, 10);
    let report = run(&rig).await;
    let job = rig.job(id);
    assert_eq!((job.state, job.status), (JobState::Failed, Some(403)));
    assert_eq!(job.error.as_ref().map(|e| e.as_str()), Some("client_error"));
    assert_eq!(header(&job, "x-reason"), Some("quota"));
    assert_eq!(report.retried, 0);
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn https_is_spoken() {
    // An `https` destination on a plain-HTTP server: a client that speaks TLS fails the
    // handshake (network_lost); one that silently sent plaintext would succeed.
    let srv = server().await;
    let files = tempfile::tempdir().unwrap();
    let base = format!("https://{}", srv.addr());
    let rig = rig(test_config(None, 64 << 10), &base);
    let data = bytes(100, 11);
    let path = write_file(files.path(), "f", &data);
    let dest = ferry_core::Destination::new(ferry_core::Method::Post, format!("{base}/v1/uploads"));
    let id = rig.add_job(EXT, &path, hash(&data), dest, BTreeMap::new());
    run(&rig).await;
    let job = rig.job(id);
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    assert_eq!(
        job.error.as_ref().map(|e| e.as_str()),
        Some("network_lost"),
        "{job:?}"
    );
    assert_eq!(srv.object(&hex(&data)).await, None);
}

fn tls_fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../server/tests/fixtures/tls")
        .join(name)
}

#[tokio::test]
async fn https_to_a_server_with_its_own_certificate() {
    // A self-hosted ferry-server with a self-signed certificate: trusted through the engine's
    // extra roots, the upload completes and its receipt is verified; trusting another
    // certificate instead, the handshake fails and nothing reaches the server.
    let srv = server_with(|c| {
        c.tls = Some(ferry_server::TlsFiles {
            cert_path: tls_fixture("cert.pem"),
            key_path: tls_fixture("key.pem"),
        })
    })
    .await;
    let base = srv.handle.base_url();
    assert!(base.starts_with("https://"), "{base}");
    let cert = |name: &str| {
        reqwest::Certificate::from_pem(&std::fs::read(tls_fixture(name)).unwrap()).unwrap()
    };
    let files = tempfile::tempdir().unwrap();
    let data = bytes(200_000, 12);
    let path = write_file(files.path(), "f", &data);
    let check = reqwest::Client::builder()
        .tls_certs_only([cert("ca.pem")])
        .build()
        .unwrap();
    let stored = |check: reqwest::Client| {
        let url = format!("{base}/v1/objects/{}", hex(&data));
        async move { check.get(url).send().await.unwrap().status() }
    };

    let mut wrong = test_config(None, 64 << 10);
    wrong.transfer.extra_root_certs = vec![cert("other-ca.pem")];
    let rig_wrong = rig(wrong, &base);
    let dest = ferry_core::Destination::new(ferry_core::Method::Post, format!("{base}/v1/uploads"));
    let id = rig_wrong.add_job(EXT, &path, hash(&data), dest.clone(), BTreeMap::new());
    run(&rig_wrong).await;
    assert_eq!(rig_wrong.job(id).state, JobState::Failed);
    assert_eq!(stored(check.clone()).await, 404);

    let mut trusted = test_config(None, 64 << 10);
    trusted.transfer.extra_root_certs = vec![cert("ca.pem")];
    let rig_ok = rig(trusted, &base);
    let id = rig_ok.add_job(EXT, &path, hash(&data), dest, BTreeMap::new());
    run(&rig_ok).await;
    let job = rig_ok.job(id);
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(stored(check).await, 200);
}
