//! PostgreSQL failing under a running ferry-server: requests fail with a status a client
//! retries (503 with `Retry-After`), the answered offset stays true, and once the database is
//! back the same upload finishes with identical bytes. The database sits behind Ferry's
//! fault-injecting TCP proxy, which cuts every connection and refuses new ones on demand.
//!
//! Needs the scale-out PostgreSQL (`FERRY_TEST_PG_URL`, started by `scripts/scaleout`);
//! without it the test says so and passes, except under CI, where it fails.

mod common;
use common::*;

use ferry_faultproxy::{Fault, FaultProxy, Plan};

#[tokio::test]
async fn database_lost_mid_upload_answers_503_and_keeps_the_offset() {
    let Ok(admin) = std::env::var("FERRY_TEST_PG_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the scale-out tests: start the engines with scripts/scaleout"
        );
        eprintln!("FERRY_TEST_PG_URL unset: skipping the PostgreSQL fault run");
        return;
    };
    let url = fresh_postgres_database(&admin).await;
    // postgres://USER@HOST:PORT/DB → the same through the proxy.
    let (head, db) = url.rsplit_once('/').unwrap();
    let (user, host) = head.rsplit_once('@').unwrap();
    let upstream: std::net::SocketAddr =
        tokio::net::lookup_host(host).await.unwrap().next().unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let proxied = format!("{user}@{}/{db}", proxy.addr());
    let s = server_with(|c| {
        c.open = true;
        c.database = Some(proxied);
    })
    .await;

    let data = bytes(3_000_000, 5);
    let r = s
        .req("POST", "/v1/uploads")
        .header("tus-resumable", "1.0.0")
        .header("upload-length", data.len())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let location = header(&r, "location").unwrap().to_string();
    let path = location[location.find("/v1/").unwrap()..].to_string();
    let patch = |from: usize, to: usize| {
        s.req("PATCH", &path)
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", from)
            .header("content-type", "application/offset+octet-stream")
            .body(data[from..to].to_vec())
            .send()
    };
    assert_eq!(patch(0, 1_000_000).await.unwrap().status(), 204);

    // The database goes away: every connection cut, new ones reset at once.
    proxy.set(Plan::always(Fault::AcceptThenReset));
    proxy.cut_all();
    let r = patch(1_000_000, 2_000_000).await.unwrap();
    assert_eq!(r.status(), 503, "{}", r.text().await.unwrap_or_default());
    let r = s
        .req("HEAD", &path)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after"), Some("1"));

    // Back: the offset answered before the loss is the offset, and the upload finishes.
    proxy.set(Plan::always(Fault::None));
    let r = s
        .req("HEAD", &path)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "upload-offset"), Some("1000000"));
    assert_eq!(patch(1_000_000, data.len()).await.unwrap().status(), 204);
    assert_eq!(s.get_object(&blake3_hex(&data)).await, data);
}
