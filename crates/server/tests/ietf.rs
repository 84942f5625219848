//! The IETF resumable-upload draft over real HTTP: creation, offset retrieval, appends,
//! completion, conflicts, limits, cancellation and every interop version.

mod common;
use common::*;

const PARTIAL: &str = "application/partial-upload";

async fn create_empty(s: &TestServer, version: &str) -> String {
    let r = s
        .req("POST", "/v1/uploads")
        .header("upload-draft-interop-version", version)
        .header("upload-complete", "?0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "upload-offset"), Some("0"));
    assert_eq!(header(&r, "upload-complete"), Some("?0"));
    header(&r, "location").unwrap().to_string()
}

async fn head_v8(s: &TestServer, loc: &str) -> reqwest::Response {
    s.req("HEAD", loc)
        .header("upload-draft-interop-version", "8")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn options_advertises_both_protocols_and_limits() {
    let s = open_server().await;
    let r = s.req("OPTIONS", "/v1/uploads").send().await.unwrap();
    assert!(r.status().is_success());
    assert_eq!(header(&r, "accept-patch"), Some(PARTIAL));
    let limit = header(&r, "upload-limit").unwrap();
    let dict = ferry_server::sf::parse_dictionary(limit).unwrap();
    let keys: Vec<&str> = dict.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["max-size", "max-append-size", "max-age"]);
    assert_eq!(header(&r, "tus-version"), Some("1.0.0"));
    assert!(header(&r, "tus-extension").unwrap().contains("checksum"));
    assert!(header(&r, "tus-max-size").is_some());
}

#[tokio::test]
async fn create_head_append_complete_and_finish_twice() {
    let s = open_server().await;
    let data = bytes(3_000_000, 1);
    let loc = create_empty(&s, "8").await;

    let r = s
        .req("HEAD", &loc)
        .header("upload-draft-interop-version", "8")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "upload-offset"), Some("0"));
    assert_eq!(header(&r, "upload-complete"), Some("?0"));
    assert_eq!(header(&r, "cache-control"), Some("no-store"));

    let r = s
        .ietf_append(&loc, 0, false)
        .body(data[..1_000_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "upload-offset"), Some("1000000"));

    // A stale offset gets 409 with the right one and the draft's problem type.
    let r = s
        .ietf_append(&loc, 0, true)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(header(&r, "upload-offset"), Some("1000000"));
    assert_problem(r, "#mismatching-upload-offset").await;

    let r = s
        .ietf_append(&loc, 1000000, true)
        .header("content-digest", sha256_field(&data[1_000_000..]))
        .body(data[1_000_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "upload-complete"), Some("?1"));
    assert_eq!(header(&r, "upload-offset"), Some("3000000"));
    assert_object_headers(&r, &data);
    assert_eq!(s.get_object(&blake3_hex(&data)).await, data);

    let r = s
        .req("HEAD", &loc)
        .header("upload-draft-interop-version", "8")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "upload-complete"), Some("?1"));
    assert_eq!(header(&r, "upload-length"), Some("3000000"));

    // Appending after completion is refused...
    let r = s
        .ietf_append(&loc, 3000000, true)
        .body("more")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_problem(r, "#completed-upload").await;
    // ...but finishing it again (empty append at the end) names the same object.
    let r = s.ietf_append(&loc, 3000000, true).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_object_headers(&r, &data);
}

#[tokio::test]
async fn creation_with_whole_body_completes_at_once() {
    let s = open_server().await;
    let data = bytes(70_000, 2);
    let r = s
        .req("PUT", "/v1/uploads")
        .header("upload-draft-interop-version", "7")
        .header("upload-complete", "?1")
        .header("repr-digest", sha256_field(&data))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(header(&r, "location").unwrap().starts_with("/v1/uploads/"));
    assert_eq!(header(&r, "upload-complete"), Some("?1"));
    assert_object_headers(&r, &data);
}

#[tokio::test]
async fn interop_versions_3_5_6_and_unknown() {
    let s = open_server().await;
    // Draft-01 (3): Upload-Incomplete with the inverted meaning; its absence means complete.
    let data = bytes(10_000, 3);
    let r = s
        .req("POST", "/v1/uploads")
        .header("upload-draft-interop-version", "3")
        .header("upload-incomplete", "?1")
        .body(data[..4000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "upload-incomplete"), Some("?1"));
    assert_eq!(header(&r, "upload-offset"), Some("4000"));
    let loc = header(&r, "location").unwrap().to_string();
    let r = s
        .req("PATCH", &loc)
        .header("upload-draft-interop-version", "3")
        .header("upload-offset", "4000")
        .body(data[4000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "upload-incomplete"), Some("?0"));
    assert_object_headers(&r, &data);

    // 5 and 6, as tus-js-client's ietf-draft-03/-05 modes send them (no or partial-upload type).
    for (version, content_type) in [("5", None), ("6", Some(PARTIAL))] {
        let data = bytes(5000, version.as_bytes()[0]);
        let loc = create_empty(&s, version).await;
        let mut req = s
            .req("PATCH", &loc)
            .header("upload-draft-interop-version", version)
            .header("upload-offset", "0")
            .header("upload-complete", "?1");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let r = req.body(data.clone()).send().await.unwrap();
        assert_eq!(r.status(), 200, "version {version}");
        assert_object_headers(&r, &data);
    }

    for bad in ["4", "9", "0", "abc", "-1"] {
        let r = s
            .req("POST", "/v1/uploads")
            .header("upload-draft-interop-version", bad)
            .header("upload-complete", "?0")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "version {bad}");
        let text = r.text().await.unwrap();
        assert!(text.contains("Upload-Draft-Interop-Version"), "{text}");
    }

    // Versions 7 and 8 insist on the append media type.
    let loc = create_empty(&s, "8").await;
    let r = s
        .req("PATCH", &loc)
        .header("upload-draft-interop-version", "8")
        .header("content-type", "application/octet-stream")
        .header("upload-offset", "0")
        .header("upload-complete", "?1")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
}

#[tokio::test]
async fn upload_length_and_limits_are_enforced() {
    let s = server_with(|c| {
        c.open = true;
        c.limits.max_size_bytes = 1000;
        c.limits.max_append_size_bytes = 300;
    })
    .await;
    let r = s
        .req("POST", "/v1/uploads")
        .header("upload-draft-interop-version", "8")
        .header("upload-complete", "?0")
        .header("upload-length", "1001")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    let r = s
        .req("POST", "/v1/uploads")
        .header("upload-draft-interop-version", "8")
        .header("upload-complete", "?0")
        .header("upload-length", "500")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let loc = header(&r, "location").unwrap().to_string();
    let patch = |offset: u64, complete: &str, body: Vec<u8>| {
        s.req("PATCH", &loc)
            .header("upload-draft-interop-version", "8")
            .header("content-type", PARTIAL)
            .header("upload-offset", offset.to_string())
            .header("upload-complete", complete.to_string())
            .body(body)
            .send()
    };
    // Over max-append-size: refused whole, offset unchanged.
    assert_eq!(patch(0, "?0", vec![1; 301]).await.unwrap().status(), 413);
    assert_eq!(patch(0, "?0", vec![1; 300]).await.unwrap().status(), 204);
    // Running past Upload-Length.
    let r = patch(300, "?0", vec![1; 201]).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_problem(r, "#inconsistent-upload-length").await;
    // Claiming completion short of Upload-Length.
    assert_eq!(patch(300, "?1", vec![1; 100]).await.unwrap().status(), 400);
    // A different Upload-Length than at creation.
    let r = s
        .ietf_append(&loc, 300, false)
        .header("upload-length", "499")
        .body(vec![1; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .req("HEAD", &loc)
        .header("upload-draft-interop-version", "8")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "upload-offset"),
        Some("300"),
        "refused appends left nothing behind"
    );
    assert_eq!(header(&r, "upload-length"), Some("500"));
    // Reaching Upload-Length completes the upload.
    let r = patch(300, "?1", vec![1; 200]).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_object_headers(&r, &[1u8; 500]);
}

#[tokio::test]
async fn delete_cancels() {
    let s = open_server().await;
    let loc = create_empty(&s, "8").await;
    let r = s
        .req("DELETE", &loc)
        .header("upload-draft-interop-version", "8")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = s
        .req("HEAD", &loc)
        .header("upload-draft-interop-version", "8")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = s.ietf_append(&loc, 0, true).body("x").send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        std::fs::read_dir(s.dir.path().join("partial"))
            .unwrap()
            .count(),
        0
    );
}

/// Regression: a `?1` append cut mid-body kept its bytes but also took its short length as the
/// upload's length, so tus-js-client saw offset == length on resume and stopped early.
#[tokio::test]
async fn a_cut_final_append_keeps_its_bytes_but_does_not_complete() {
    let s = open_server().await;
    let data = bytes(3_000_000, 50);
    let r = s
        .req("POST", "/v1/uploads")
        .header("upload-draft-interop-version", "6")
        .header("upload-complete", "?0")
        .header("upload-length", "3000000")
        .send()
        .await
        .unwrap();
    let loc = header(&r, "location").unwrap().to_string();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    tx.send(Ok(data[..1_500_000].to_vec())).await.unwrap();
    let cut = tokio::spawn(
        s.req("PATCH", &loc)
            .header("upload-draft-interop-version", "6")
            .header("content-type", PARTIAL)
            .header("upload-offset", "0")
            .header("upload-complete", "?1")
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while s.received(&loc) < 1 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "append never reached the disk"
        );
        tokio::task::yield_now().await;
    }
    tx.send(Err(std::io::Error::other("cable pulled")))
        .await
        .unwrap();
    assert!(cut.await.unwrap().is_err());

    let r = s
        .req("HEAD", &loc)
        .header("upload-draft-interop-version", "6")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "upload-complete"), Some("?0"));
    assert_eq!(header(&r, "upload-length"), Some("3000000"));
    let offset: usize = header(&r, "upload-offset").unwrap().parse().unwrap();
    assert!(
        (1 << 20..=1_500_000).contains(&offset),
        "kept the delivered bytes: {offset}"
    );
    let r = s
        .req("PATCH", &loc)
        .header("upload-draft-interop-version", "6")
        .header("content-type", PARTIAL)
        .header("upload-offset", offset.to_string())
        .header("upload-complete", "?1")
        .body(data[offset..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_object_headers(&r, &data);
}

/// A client still hashing when it created the upload sends `Repr-Digest` with the append that
/// completes it: a right one completes, a wrong one discards the upload (no object), and one
/// that differs from the digest given at creation is refused before any byte is written.
#[tokio::test]
async fn repr_digest_on_the_completing_append_is_verified() {
    let s = open_server().await;
    let data = bytes(2_000_000, 7);

    let loc = create_empty(&s, "8").await;
    let r = s
        .ietf_append(&loc, 0, false)
        .body(data[..1_000_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = s
        .ietf_append(&loc, 1_000_000, true)
        .header("repr-digest", sha256_field(&data))
        .body(data[1_000_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_object_headers(&r, &data);

    let other = bytes(2_000_000, 8);
    let loc = create_empty(&s, "8").await;
    let r = s
        .ietf_append(&loc, 0, true)
        .header("repr-digest", sha256_field(&data))
        .body(other.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = head_v8(&s, &loc).await;
    assert_eq!(r.status(), 404, "a mismatching upload is discarded whole");
    let r = s
        .req("GET", &format!("/v1/objects/{}", blake3_hex(&other)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "no object for bytes that failed their digest"
    );

    // Created with one digest, completed with another: refused, the upload kept as it was.
    let r = s
        .req("POST", "/v1/uploads")
        .header("upload-draft-interop-version", "8")
        .header("upload-complete", "?0")
        .header("repr-digest", sha256_field(&data))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let loc = header(&r, "location").unwrap().to_string();
    let r = s
        .ietf_append(&loc, 0, true)
        .header("repr-digest", sha256_field(&other))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = head_v8(&s, &loc).await;
    assert_eq!(header(&r, "upload-offset"), Some("0"));
}

fn blake3_field(data: &[u8]) -> String {
    format!(
        "blake3={}",
        ferry_server::sf::serialize_bytes(blake3::hash(data).as_bytes())
    )
}

/// The server asks for a BLAKE3 `Repr-Digest` (`Want-Repr-Digest`) and keeps the promise it
/// was made at creation: bytes that hash to it become the object; bytes that do not are
/// discarded whole, answered with `Ferry-Problem: upload-discarded`, and no object appears.
#[tokio::test]
async fn a_blake3_promised_at_creation_is_checked_at_completion() {
    let s = open_server().await;
    let r = s.req("OPTIONS", "/v1/uploads").send().await.unwrap();
    let want = ferry_server::sf::parse_dictionary(header(&r, "want-repr-digest").unwrap()).unwrap();
    assert_eq!(want[0].0, "blake3", "BLAKE3 is the server's first choice");

    let data = bytes(3_000_000, 21);
    let create = |promise: String| {
        s.req("POST", "/v1/uploads")
            .header("upload-draft-interop-version", "8")
            .header("upload-complete", "?0")
            .header("repr-digest", promise)
            .send()
    };
    // Kept: in two appends, the promise only at creation.
    let r = create(blake3_field(&data)).await.unwrap();
    assert_eq!(r.status(), 201);
    let loc = header(&r, "location").unwrap().to_string();
    let r = s
        .ietf_append(&loc, 0, false)
        .body(data[..1_000_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = s
        .ietf_append(&loc, 1_000_000, true)
        .body(data[1_000_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_object_headers(&r, &data);

    // Broken: the last part is other bytes (a file edited while it was sent).
    let mut mixed = data.clone();
    mixed[2_999_999] ^= 1;
    let r = create(blake3_field(&data)).await.unwrap();
    let loc = header(&r, "location").unwrap().to_string();
    let r = s
        .ietf_append(&loc, 0, true)
        .body(mixed.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(header(&r, "ferry-problem"), Some("upload-discarded"));
    assert_eq!(head_v8(&s, &loc).await.status(), 404);
    let r = s
        .req("GET", &format!("/v1/objects/{}", blake3_hex(&mixed)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "no object for bytes that broke the promise"
    );

    // A completing append that promises another BLAKE3 than the creation did: refused before
    // any byte is written, the upload kept as it was.
    let r = create(blake3_field(&data)).await.unwrap();
    let loc = header(&r, "location").unwrap().to_string();
    let r = s
        .ietf_append(&loc, 0, true)
        .header("repr-digest", blake3_field(&mixed))
        .body(mixed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(header(&r, "ferry-problem"), None);
    assert_eq!(header(&head_v8(&s, &loc).await, "upload-offset"), Some("0"));

    // A malformed BLAKE3 is a clear 400, not an ignored field.
    let r = create("blake3=:AAAA:".into()).await.unwrap();
    assert_eq!(r.status(), 400);
}
