//! Idempotent creation (`Idempotency-Key`): a creation repeated because its answer never
//! arrived (a kill -9 of the client, a cut) yields the same upload — finished: the same
//! object and one receipt; unfinished: where to resume — never a second upload.

mod common;
use common::*;

async fn receipts(s: &TestServer, data: &[u8]) -> usize {
    let r = s
        .req("GET", &format!("/v1/objects/{}/receipts", blake3_hex(data)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    v["receipts"].as_array().unwrap().len()
}

fn ietf_create(s: &TestServer, key: &str, complete: bool) -> reqwest::RequestBuilder {
    s.req("POST", "/v1/uploads")
        .header("upload-draft-interop-version", "8")
        .header("upload-complete", if complete { "?1" } else { "?0" })
        .header("idempotency-key", format!("\"{key}\""))
}

#[tokio::test]
async fn a_finished_creation_repeated_answers_the_same_upload_and_object() {
    let s = open_server().await;
    let data = bytes(300_000, 31);
    let first = ietf_create(&s, "job-1", true)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let again = ietf_create(&s, "job-1", true)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(header(&again, "location"), header(&first, "location"));
    assert_eq!(header(&again, "upload-complete"), Some("?1"));
    assert_object_headers(&again, &data);
    assert_eq!(receipts(&s, &data).await, 1, "one upload, not two");

    // tus and plain alike.
    let data = bytes(200_000, 32);
    let tus = |key: &'static str| {
        s.req("POST", "/v1/uploads")
            .header("tus-resumable", "1.0.0")
            .header("upload-length", data.len())
            .header("content-type", "application/offset+octet-stream")
            .header("idempotency-key", key)
            .body(data.clone())
            .send()
    };
    let a = tus("\"tus-1\"").await.unwrap();
    let b = tus("\"tus-1\"").await.unwrap();
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (201, 201));
    assert_eq!(header(&a, "location"), header(&b, "location"));
    assert_eq!(header(&b, "upload-offset"), Some("200000"));
    assert_eq!(receipts(&s, &data).await, 1);

    let data = bytes(100_000, 33);
    let plain = || {
        s.req("PUT", "/v1/uploads")
            .header("idempotency-key", "plain-1")
            .body(data.clone())
            .send()
    };
    let a = plain().await.unwrap();
    let b = plain().await.unwrap();
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (201, 201));
    assert_eq!(header(&a, "location"), header(&b, "location"));
    assert_object_headers(&b, &data);
    assert_eq!(receipts(&s, &data).await, 1);
}

#[tokio::test]
async fn an_unfinished_creation_repeated_answers_where_to_resume() {
    let s = open_server().await;
    let data = bytes(1_000_000, 34);
    let r = ietf_create(&s, "job-2", false).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let loc = header(&r, "location").unwrap().to_string();
    let r = s
        .ietf_append(&loc, 0, false)
        .body(data[..400_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // The client lost everything but the job: it creates again, with the whole file.
    let r = ietf_create(&s, "job-2", true)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "location"), Some(loc.as_str()));
    assert_eq!(header(&r, "upload-offset"), Some("400000"));
    assert_eq!(header(&r, "upload-complete"), Some("?0"));
    // It resumes there, and one object comes of it.
    let r = s
        .ietf_append(&loc, 400_000, true)
        .body(data[400_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_object_headers(&r, &data);
    assert_eq!(receipts(&s, &data).await, 1);
}

#[tokio::test]
async fn keys_are_checked_and_scoped_to_the_credentials() {
    let s = open_server().await;
    let data = bytes(50_000, 35);
    let r = ietf_create(&s, "job-3", true)
        .header("upload-length", 50_000)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // The same key for another length: 422, nothing created.
    let other = bytes(60_000, 36);
    let r = ietf_create(&s, "job-3", true)
        .header("upload-length", 60_000)
        .body(other.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = s
        .req("GET", &format!("/v1/objects/{}", blake3_hex(&other)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The same key under other credentials is another key.
    let r = ietf_create(&s, "job-3", true)
        .header("authorization", "Bearer someone-else")
        .body(other.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_object_headers(&r, &other);
    // Malformed keys are refused plainly.
    for bad in ["\"\"", "\"a\\\"b\""] {
        let r = s
            .req("POST", "/v1/uploads")
            .header("upload-draft-interop-version", "8")
            .header("upload-complete", "?1")
            .header("idempotency-key", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
}
