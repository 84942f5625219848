//! tus 1.0 over real HTTP: core, creation, creation-with-upload, creation-defer-length,
//! termination, checksum and expiration.

mod common;
use common::*;
use sha1::Digest as _;

const OCTETS: &str = "application/offset+octet-stream";

async fn create(s: &TestServer, length: usize, metadata: Option<&str>) -> String {
    let mut req = s
        .req("POST", "/v1/uploads")
        .header("tus-resumable", "1.0.0")
        .header("upload-length", length.to_string());
    if let Some(m) = metadata {
        req = req.header("upload-metadata", m);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "tus-resumable"), Some("1.0.0"));
    let expires = header(&r, "upload-expires").unwrap();
    assert!(httpdate::parse_http_date(expires).is_ok(), "{expires}");
    header(&r, "location").unwrap().to_string()
}

fn patch(s: &TestServer, loc: &str, offset: usize, body: Vec<u8>) -> reqwest::RequestBuilder {
    s.req("PATCH", loc)
        .header("tus-resumable", "1.0.0")
        .header("content-type", OCTETS)
        .header("upload-offset", offset.to_string())
        .body(body)
}

#[tokio::test]
async fn core_and_creation() {
    let s = open_server().await;
    let data = bytes(2_500_000, 10);
    let meta = format!("filename {},asset_id {}", b64(b"IMG_0001.HEIC"), b64(b"A1"));
    let loc = create(&s, data.len(), Some(&meta)).await;

    let r = s
        .req("HEAD", &loc)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "upload-offset"), Some("0"));
    assert_eq!(header(&r, "upload-length"), Some("2500000"));
    assert_eq!(header(&r, "cache-control"), Some("no-store"));
    assert_eq!(header(&r, "upload-metadata"), Some(meta.as_str()));

    let r = s
        .req("PATCH", &loc)
        .header("tus-resumable", "1.0.0")
        .header("content-type", "application/octet-stream")
        .header("upload-offset", "0")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    let r = patch(&s, &loc, 0, data[..1_000_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "upload-offset"), Some("1000000"));
    assert!(header(&r, "upload-expires").is_some());

    let r = patch(&s, &loc, 5, data[5..].to_vec()).send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(header(&r, "upload-offset"), Some("1000000"));

    let r = patch(&s, &loc, 1_000_000, data[1_000_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "upload-offset"), Some("2500000"));
    assert_object_headers(&r, &data);
    assert_eq!(s.get_object(&blake3_hex(&data)).await, data);

    // The metadata went with the object.
    let r = s
        .req(
            "GET",
            &format!("/v1/objects/{}/receipts", blake3_hex(&data)),
        )
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["receipts"][0]["metadata"]["filename"], "IMG_0001.HEIC");
    assert_eq!(v["receipts"][0]["metadata"]["asset_id"], "A1");
}

#[tokio::test]
async fn version_other_than_1_0_0_is_412() {
    let s = open_server().await;
    let r = s
        .req("POST", "/v1/uploads")
        .header("tus-resumable", "0.2.2")
        .header("upload-length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(header(&r, "tus-version"), Some("1.0.0"));
}

#[tokio::test]
async fn creation_with_upload_defer_length_and_zero_length() {
    let s = open_server().await;
    let data = bytes(100_000, 11);
    let r = s
        .req("POST", "/v1/uploads")
        .header("tus-resumable", "1.0.0")
        .header("upload-length", data.len().to_string())
        .header("content-type", OCTETS)
        .body(data[..40_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "upload-offset"), Some("40000"));
    let loc = header(&r, "location").unwrap().to_string();
    let r = patch(&s, &loc, 40_000, data[40_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_object_headers(&r, &data);

    let r = s
        .req("POST", "/v1/uploads")
        .header("tus-resumable", "1.0.0")
        .header("upload-defer-length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let loc = header(&r, "location").unwrap().to_string();
    let r = s
        .req("HEAD", &loc)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "upload-defer-length"), Some("1"));
    let data = bytes(3000, 12);
    let r = patch(&s, &loc, 0, data[..1000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = patch(&s, &loc, 1000, data[1000..].to_vec())
        .header("upload-length", "3000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_object_headers(&r, &data);

    let r = s
        .req("POST", "/v1/uploads")
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_object_headers(&r, b"");

    for (name, value) in [
        ("upload-defer-length", "2"),
        ("upload-length", "-1"),
        ("upload-length", "1e3"),
    ] {
        let r = s
            .req("POST", "/v1/uploads")
            .header("tus-resumable", "1.0.0")
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{name}: {value}");
    }
}

#[tokio::test]
async fn checksum_extension() {
    let s = open_server().await;
    let data = bytes(30_000, 13);
    let loc = create(&s, data.len(), None).await;
    let chunk = &data[..10_000];

    let wrong = format!("sha1 {}", b64(&sha1::Sha1::digest(b"other")));
    let r = patch(&s, &loc, 0, chunk.to_vec())
        .header("upload-checksum", wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 460);
    let r = s
        .req("HEAD", &loc)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "upload-offset"),
        Some("0"),
        "the bad chunk was discarded"
    );

    let r = patch(&s, &loc, 0, chunk.to_vec())
        .header("upload-checksum", "crc32 AAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let sha1 = format!("sha1 {}", b64(&sha1::Sha1::digest(chunk)));
    assert_eq!(
        patch(&s, &loc, 0, chunk.to_vec())
            .header("upload-checksum", sha1)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let chunk = &data[10_000..20_000];
    // A damaged chunk in the middle is cut off again, and its bytes count in no digest: the
    // object below has the digests of `data`.
    let mut damaged = chunk.to_vec();
    damaged[5_000] ^= 1;
    let sha256 = format!("sha256 {}", b64(&sha2::Sha256::digest(chunk)));
    let r = patch(&s, &loc, 10_000, damaged)
        .header("upload-checksum", sha256.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 460);
    assert_eq!(
        patch(&s, &loc, 10_000, chunk.to_vec())
            .header("upload-checksum", sha256)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let chunk = &data[20_000..];
    let md5 = format!("md5 {}", b64(&md5::Md5::digest(chunk)));
    let r = patch(&s, &loc, 20_000, chunk.to_vec())
        .header("upload-checksum", md5)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_object_headers(&r, &data);
}

#[tokio::test]
async fn termination_and_expiration() {
    let s = open_server().await;
    let loc = create(&s, 10, None).await;
    let r = s
        .req("DELETE", &loc)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = s
        .req("HEAD", &loc)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let loc = create(&s, 10, None).await;
    assert_eq!(
        patch(&s, &loc, 0, vec![7; 4])
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let far_future_ms = ferry_server::uploads::now_unix_ms() + 3 * 24 * 3600 * 1000;
    assert_eq!(s.handle.collect_expired_at(far_future_ms).await.unwrap(), 1);
    let r = s
        .req("HEAD", &loc)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        std::fs::read_dir(s.dir.path().join("partial"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn expired_upload_is_gone_before_collection() {
    let s = server_with(|c| {
        c.open = true;
        c.limits.max_age = std::time::Duration::ZERO;
    })
    .await;
    let r = s
        .req("POST", "/v1/uploads")
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "10")
        .send()
        .await
        .unwrap();
    let loc = header(&r, "location").unwrap().to_string();
    assert_eq!(
        patch(&s, &loc, 0, vec![1; 10])
            .send()
            .await
            .unwrap()
            .status(),
        410
    );
}
