//! Authentication, malformed input and concurrent appends: every one a clear 4xx, never a 5xx.

mod common;
use common::*;

#[tokio::test]
async fn bearer_tokens() {
    let s = server_with(|_| {}).await;
    let token = s.create_token("phone").await;
    assert!(token.len() >= 40);

    assert_eq!(s.req("GET", "/healthz").send().await.unwrap().status(), 200);
    for auth in [
        None,
        Some("Bearer nope".to_string()),
        Some(format!("Basic {token}")),
        Some(format!("Bearer {token}x")),
    ] {
        let mut req = s.req("POST", "/v1/uploads");
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let r = req.body("x").send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert!(
            header(&r, "www-authenticate")
                .unwrap()
                .starts_with("Bearer")
        );
    }
    let r = s
        .req("POST", "/v1/uploads")
        .bearer_auth(&token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Again (now from the server's token cache), and a second device's token made while the
    // server runs; a forged token still fails after the cache has warmed.
    let post = |token: String| {
        s.req("POST", "/v1/uploads")
            .bearer_auth(token)
            .body("y")
            .send()
    };
    assert_eq!(post(token.clone()).await.unwrap().status(), 201);
    let tablet = s.create_token("tablet").await;
    assert_eq!(post(tablet).await.unwrap().status(), 201);
    assert_eq!(post(format!("{token}0")).await.unwrap().status(), 401);
    // Only the hash is stored: the token text is nowhere in the database (the data
    // directory's files, or PostgreSQL's tokens table when the suite runs there).
    if let Some(url) = &s.config.database {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .unwrap();
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT sha256_hex, name FROM tokens")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert!(
            rows.iter()
                .all(|(h, n)| !h.contains(&token) && !n.contains(&token))
        );
        pool.close().await;
        return;
    }
    let db = std::fs::read(s.dir.path().join("meta.db")).unwrap();
    let wal = std::fs::read(s.dir.path().join("meta.db-wal")).unwrap_or_default();
    for file in [db, wal] {
        assert!(!file.windows(token.len()).any(|w| w == token.as_bytes()));
    }
}

#[tokio::test]
async fn malformed_input_gets_4xx() {
    let s = open_server().await;
    let r = s
        .req("POST", "/v1/uploads")
        .header("upload-draft-interop-version", "8")
        .header("upload-complete", "?0")
        .send()
        .await
        .unwrap();
    let loc = header(&r, "location").unwrap().to_string();

    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, u16);
    let cases: Vec<Case> = vec![
        (
            "PATCH",
            loc.clone(),
            vec![("upload-offset", "-1"), ("upload-complete", "?0")],
            400,
        ),
        (
            "PATCH",
            loc.clone(),
            vec![
                ("upload-offset", "99999999999999999999"),
                ("upload-complete", "?0"),
            ],
            400,
        ),
        (
            "PATCH",
            loc.clone(),
            vec![("upload-offset", "0"), ("upload-complete", "yes")],
            400,
        ),
        ("PATCH", loc.clone(), vec![("upload-offset", "0")], 400),
        ("PATCH", loc.clone(), vec![("upload-complete", "?0")], 400),
        (
            "PATCH",
            loc.clone(),
            vec![
                ("upload-offset", "0"),
                ("upload-complete", "?0"),
                ("upload-length", "1.5"),
            ],
            400,
        ),
        (
            "PATCH",
            "/v1/uploads/..%2F..%2Fmeta.db".into(),
            vec![("upload-offset", "0"), ("upload-complete", "?1")],
            404,
        ),
        (
            "PATCH",
            "/v1/uploads/0123456789abcdef0123456789abcdef".into(),
            vec![("upload-offset", "0"), ("upload-complete", "?1")],
            404,
        ),
        ("HEAD", "/v1/uploads/..".into(), vec![], 404),
        ("HEAD", "/v1/uploads/a/b".into(), vec![], 404),
        ("DELETE", "/v1/uploads/%2e%2e".into(), vec![], 404),
        ("GET", "/v1/objects/..%2F..%2Fmeta.db".into(), vec![], 404),
        (
            "POST",
            "/v1/uploads".into(),
            vec![("upload-complete", "?2")],
            400,
        ),
        (
            "POST",
            "/v1/uploads".into(),
            vec![("upload-complete", "?0"), ("upload-length", "-5")],
            400,
        ),
        (
            "POST",
            "/v1/uploads".into(),
            vec![("tus-resumable", "1.0.0")],
            400,
        ),
        (
            "POST",
            "/v1/uploads".into(),
            vec![
                ("tus-resumable", "1.0.0"),
                ("upload-length", "18446744073709551616"),
            ],
            400,
        ),
        (
            "POST",
            "/v1/uploads".into(),
            vec![
                ("tus-resumable", "1.0.0"),
                ("upload-length", "1"),
                ("content-type", "text/plain"),
                ("content-length", "1"),
            ],
            415,
        ),
        (
            "PATCH",
            loc.clone(),
            vec![("tus-resumable", "1.0.0"), ("upload-offset", "0")],
            415,
        ),
    ];
    for (method, path, headers, want) in cases {
        let mut req = s
            .req(method, &path)
            .header("content-type", "application/partial-upload");
        for (k, v) in &headers {
            req = req.header(*k, *v);
        }
        let body = if headers.iter().any(|(k, _)| *k == "content-length") {
            "x"
        } else {
            ""
        };
        let r = req.body(body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "{method} {path} {headers:?}");
    }
    let r = s
        .req("HEAD", &loc)
        .header("upload-draft-interop-version", "8")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "upload-offset"),
        Some("0"),
        "no malformed request changed the upload"
    );
}

/// A body whose chunks the test releases one at a time.
fn held_body() -> (tokio::sync::mpsc::Sender<Vec<u8>>, reqwest::Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    (tx, reqwest::Body::wrap_stream(stream))
}

#[tokio::test]
async fn a_newer_append_stops_the_running_one_which_keeps_its_bytes() {
    let s = open_server().await;
    for tus in [false, true] {
        let loc = if tus {
            let r = s
                .req("POST", "/v1/uploads")
                .header("tus-resumable", "1.0.0")
                .header("upload-length", "1500010")
                .send()
                .await
                .unwrap();
            header(&r, "location").unwrap().to_string()
        } else {
            let r = s
                .req("POST", "/v1/uploads")
                .header("upload-draft-interop-version", "8")
                .header("upload-complete", "?0")
                .send()
                .await
                .unwrap();
            header(&r, "location").unwrap().to_string()
        };
        let patch = |body: reqwest::Body| {
            let req = s.req("PATCH", &loc).header("upload-offset", "0");
            let req = if tus {
                req.header("tus-resumable", "1.0.0")
                    .header("content-type", "application/offset+octet-stream")
            } else {
                req.header("upload-draft-interop-version", "8")
                    .header("content-type", "application/partial-upload")
                    .header("upload-complete", "?0")
            };
            req.body(body).send()
        };
        let (tx, body) = held_body();
        // More than one write block (1 MiB): the server writes it to the partial file while it
        // waits for the rest, so a grown file proves the first append holds the lock. No other
        // request runs meanwhile, so nothing can take the lock before it.
        tx.send(vec![1; 1_500_000]).await.unwrap();
        let first = tokio::spawn(patch(body));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while s.received(&loc) < 1 << 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "first append never started writing"
            );
            tokio::task::yield_now().await;
        }
        let r = patch(reqwest::Body::from(vec![9; 5])).await.unwrap();
        // The running append was asked to stop and kept what it had received (its client
        // still holds the request open): the newer one meets that offset.
        assert_eq!(r.status().as_u16(), 409, "tus: {tus}");
        drop(tx);
        let r = first.await.unwrap();
        assert!(!matches!(r, Ok(r) if r.status().is_success()));
        let r = if tus {
            s.req("HEAD", &loc).header("tus-resumable", "1.0.0")
        } else {
            s.req("HEAD", &loc)
                .header("upload-draft-interop-version", "8")
        }
        .send()
        .await
        .unwrap();
        let at: usize = header(&r, "upload-offset").unwrap().parse().unwrap();
        assert!(
            (1 << 20..=1_500_000).contains(&at),
            "the stopped append kept what it had received: {at}"
        );
        let mut rest = vec![1; 1_500_000 - at];
        rest.extend_from_slice(&[2; 10]);
        let r = {
            let req = s.req("PATCH", &loc).header("upload-offset", at.to_string());
            let req = if tus {
                req.header("tus-resumable", "1.0.0")
                    .header("content-type", "application/offset+octet-stream")
            } else {
                req.header("upload-draft-interop-version", "8")
                    .header("content-type", "application/partial-upload")
                    .header("upload-complete", "?0")
            };
            req.body(rest).send().await.unwrap()
        };
        assert!(r.status().is_success(), "{}", r.status());
        assert_eq!(header(&r, "upload-offset"), Some("1500010"));
    }
}

#[tokio::test]
async fn a_stalled_body_is_cut_after_the_idle_timeout_and_keeps_its_bytes() {
    let s = server_with(|c| {
        c.open = true;
        c.limits.body_idle_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let r = s
        .req("POST", "/v1/uploads")
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "3000000")
        .send()
        .await
        .unwrap();
    let loc = header(&r, "location").unwrap().to_string();
    let (tx, body) = held_body();
    tx.send(vec![5; 1_200_000]).await.unwrap();
    // The sender stays open and silent: the server, not the test, decides when to give up.
    let r = s
        .req("PATCH", &loc)
        .header("tus-resumable", "1.0.0")
        .header("content-type", "application/offset+octet-stream")
        .header("upload-offset", "0")
        .body(body)
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 408);
    }
    drop(tx);
    let r = s
        .req("HEAD", &loc)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "upload-offset"),
        Some("1200000"),
        "what arrived before the stall is kept"
    );
}
