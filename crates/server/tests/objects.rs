//! Plain uploads, integrity (digests in and out), content-addressed dedup, the batch existence
//! check and metadata receipts.

mod common;
use common::*;

#[tokio::test]
async fn plain_upload_dedup_and_object_reads() {
    let s = open_server().await;
    let data = bytes(1_234_567, 20);
    let meta = format!("asset_id {},resource_type {}", b64(b"A9"), b64(b"photo"));
    let r = s
        .req("POST", "/v1/uploads")
        .header("ferry-metadata", &meta)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_object_headers(&r, &data);
    let first_location = header(&r, "location").unwrap().to_string();

    // The same bytes again (PUT this time): same object, stored once, a second receipt.
    let r = s
        .req("PUT", "/v1/uploads")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_object_headers(&r, &data);
    assert_ne!(header(&r, "location").unwrap(), first_location);
    let id = blake3_hex(&data);
    assert_eq!(s.stored_objects().await, vec![id.clone()], "stored once");
    let r = s
        .req("GET", &format!("/v1/objects/{id}/receipts"))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["receipts"].as_array().unwrap().len(), 2);
    assert_eq!(v["receipts"][0]["metadata"]["resource_type"], "photo");

    assert_eq!(s.get_object(&id).await, data);
    let r = s
        .req("HEAD", &format!("/v1/objects/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), Some("1234567"));
    assert_object_headers(&r, &data);
    let r = s
        .req(
            "GET",
            &format!("/v1/objects/{}", blake3_hex(b"never stored")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn digests_are_verified_and_a_mismatch_stores_nothing() {
    let s = open_server().await;
    let data = bytes(50_000, 21);
    let r = s
        .req("POST", "/v1/uploads")
        .header("repr-digest", sha256_field(b"something else"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .req("POST", "/v1/uploads")
        .header("content-digest", sha256_field(b"something else"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .req("HEAD", &format!("/v1/objects/{}", blake3_hex(&data)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "no partial or unverified object is visible"
    );

    let r = s
        .req("POST", "/v1/uploads")
        .header(
            "repr-digest",
            format!("sha-512=:AAAA:, {}", sha256_field(&data)),
        )
        .header("content-digest", sha256_field(&data))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_object_headers(&r, &data);

    for bad in [
        "sha-256=abc",
        "sha-256=:AAAA:",
        "SHA-256=:x:",
        "sha-256=:%%%:",
    ] {
        let r = s
            .req("POST", "/v1/uploads")
            .header("repr-digest", bad)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn check_says_which_hashes_exist_in_batches_of_thousands() {
    let s = open_server().await;
    let stored: Vec<Vec<u8>> = (0..3).map(|i| bytes(1000 + i, 30 + i as u8)).collect();
    for d in &stored {
        assert_eq!(
            s.req("POST", "/v1/uploads")
                .body(d.clone())
                .send()
                .await
                .unwrap()
                .status(),
            201
        );
    }
    let mut blake3: Vec<String> = (0..2000u32).map(|i| blake3_hex(&i.to_le_bytes())).collect();
    blake3.extend(stored.iter().map(|d| blake3_hex(d)));
    let sha256: Vec<String> = stored
        .iter()
        .map(|d| {
            <sha2::Sha256 as sha2::Digest>::digest(d)
                .iter()
                .map(|b: &u8| format!("{b:02x}"))
                .collect()
        })
        .chain(["00".repeat(32)])
        .collect();
    let r = s
        .req("POST", "/v1/objects/check")
        .json(&serde_json::json!({ "blake3": blake3, "sha256": sha256 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let mut got: Vec<String> = serde_json::from_value(v["blake3"].clone()).unwrap();
    let mut want: Vec<String> = stored.iter().map(|d| blake3_hex(d)).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(v["sha256"].as_array().unwrap().len(), 3);

    let r = s
        .req("POST", "/v1/objects/check")
        .body("{\"blake3\": [\"../x\"]}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .req("POST", "/v1/objects/check")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn metadata_is_bounded_and_validated() {
    let s = open_server().await;
    let too_many: Vec<String> = (0..40).map(|i| format!("k{i} {}", b64(b"v"))).collect();
    for bad in [
        too_many.join(","),
        "name !!!".into(),
        format!("a {},a {}", b64(b"1"), b64(b"2")),
        format!("k {}", "A".repeat(9000)),
    ] {
        let r = s
            .req("POST", "/v1/uploads")
            .header("ferry-metadata", bad.clone())
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{}", &bad[..bad.len().min(40)]);
    }
}

/// Found by fuzzing (server_fields): a metadata key that serde_json treats as its own private
/// marker when read into a `Value`. It is an ordinary key: stored and answered as sent.
#[tokio::test]
async fn a_metadata_key_serde_json_reserves_is_kept_as_sent() {
    let s = open_server().await;
    let data = bytes(1000, 22);
    let meta = format!("$serde_json::private::RawValue {}", b64(b"x"));
    let r = s
        .req("POST", "/v1/uploads")
        .header("ferry-metadata", &meta)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = s
        .req(
            "GET",
            &format!("/v1/objects/{}/receipts", blake3_hex(&data)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Checked on the text: reading it into a `serde_json::Value` trips over that very key.
    let text = r.text().await.unwrap();
    assert!(
        text.contains(r#""metadata":{"$serde_json::private::RawValue":"x"}"#),
        "{text}"
    );
}
