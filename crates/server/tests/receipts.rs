//! Adding a receipt for an object the caller's user already holds (`POST
//! /v1/objects/{id}/receipts` and the batch `POST /v1/objects/receipts`): the other copy's
//! metadata is listed beside the upload's, repeating a request (even concurrently) makes one
//! receipt, another user's object is answered exactly as one never stored, and bad metadata is
//! refused before anything is looked up.

mod common;
use common::*;

use serde_json::{Value, json};

async fn user_token(s: &TestServer, user: &str) -> String {
    let a = s.accounts().await;
    if a.user(user).await.is_err() {
        a.create_user(user, None).await.unwrap();
    }
    let t = a.create_token(Some(user), "device").await.unwrap();
    a.close().await;
    t
}

async fn used_bytes(s: &TestServer, user: &str) -> u64 {
    let a = s.accounts().await;
    let u = a.user(user).await.unwrap().used_bytes;
    a.close().await;
    u
}

/// tus-style metadata, keys in the order given.
fn meta(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k} {}", b64(v.as_bytes())))
        .collect::<Vec<_>>()
        .join(",")
}

/// A plain upload of `data` as `token` at `path`; its object id.
async fn put(s: &TestServer, token: &str, data: &[u8], path: &str) -> String {
    let r = s
        .req("PUT", "/v1/uploads")
        .bearer_auth(token)
        .header(
            "ferry-metadata",
            meta(&[("path", path), ("library", "Pictures")]),
        )
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    blake3_hex(data)
}

/// `POST /v1/objects/{id}/receipts` with `metadata` (no header when `None`): status and body.
async fn add(s: &TestServer, token: &str, id: &str, metadata: Option<&str>) -> (u16, Value) {
    let mut req = s
        .req("POST", &format!("/v1/objects/{id}/receipts"))
        .bearer_auth(token);
    if let Some(m) = metadata {
        req = req.header("ferry-metadata", m);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

async fn receipts(s: &TestServer, token: &str, id: &str) -> (u16, Vec<Value>) {
    let r = s
        .req("GET", &format!("/v1/objects/{id}/receipts"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (
        status,
        v["receipts"].as_array().cloned().unwrap_or_default(),
    )
}

fn paths(receipts: &[Value]) -> Vec<String> {
    receipts
        .iter()
        .map(|r| r["metadata"]["path"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn listing(s: &TestServer, token: &str) -> Value {
    let r = s
        .req("GET", "/v1/objects?limit=1000")
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn batch(s: &TestServer, token: &str, body: &Value) -> (u16, Value) {
    let r = s
        .req("POST", "/v1/objects/receipts")
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn a_receipt_for_a_held_object_is_listed_once_however_often_it_is_added() {
    let s = server_with(|_| {}).await;
    let carol = user_token(&s, "carol").await;
    let data = bytes(3000, 41);
    let id = put(&s, &carol, &data, "Trips/a.jpg").await;
    let used = used_bytes(&s, "carol").await;

    let best = meta(&[("path", "Best/a.jpg"), ("library", "Pictures")]);
    let (status, first) = add(&s, &carol, &id, Some(&best)).await;
    assert_eq!(status, 201, "{first}");
    let receipt_id = first["upload_id"].as_str().unwrap().to_string();
    assert_eq!(receipt_id.len(), 32);
    assert_eq!(first["metadata"]["path"], "Best/a.jpg");
    assert!(first["received_ms"].as_i64().unwrap() > 0);

    // The same metadata again, keys in another order: the same receipt, nothing written.
    let reordered = meta(&[("library", "Pictures"), ("path", "Best/a.jpg")]);
    let (status, again) = add(&s, &carol, &id, Some(&reordered)).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, first);
    // The upload's own metadata: its receipt, not a second one.
    let (status, upload) = add(
        &s,
        &carol,
        &id,
        Some(&meta(&[("path", "Trips/a.jpg"), ("library", "Pictures")])),
    )
    .await;
    assert_eq!(status, 200, "{upload}");
    assert_ne!(upload["upload_id"], first["upload_id"]);

    let (status, all) = receipts(&s, &carol, &id).await;
    assert_eq!(status, 200);
    assert_eq!(paths(&all), ["Trips/a.jpg", "Best/a.jpg"], "oldest first");
    let page = listing(&s, &carol).await;
    let objects = page["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 1, "one object, two receipts: {page}");
    let mut listed = paths(objects[0]["receipts"].as_array().unwrap());
    listed.sort();
    assert_eq!(listed, ["Best/a.jpg", "Trips/a.jpg"]);
    assert_eq!(
        used_bytes(&s, "carol").await,
        used,
        "nothing added to the quota"
    );

    // Concurrent identical requests make one receipt.
    let third = meta(&[("path", "Third/a.jpg")]);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (url, token, third) = (
                s.url(&format!("/v1/objects/{id}/receipts")),
                carol.clone(),
                third.clone(),
            );
            let client = s.client.clone();
            tokio::spawn(async move {
                let r = client
                    .post(url)
                    .bearer_auth(token)
                    .header("ferry-metadata", third)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap();
                (status, v["upload_id"].as_str().unwrap().to_string())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert_eq!(
        answers.iter().filter(|(st, _)| *st == 201).count(),
        1,
        "{answers:?}"
    );
    assert!(answers.iter().all(|(st, _)| *st == 201 || *st == 200));
    assert!(
        answers.iter().all(|(_, u)| *u == answers[0].1),
        "{answers:?}"
    );
    let (_, all) = receipts(&s, &carol, &id).await;
    assert_eq!(paths(&all), ["Trips/a.jpg", "Best/a.jpg", "Third/a.jpg"]);

    // An added receipt is cancelled like an upload's: the receipt goes, the object stays.
    let r = s
        .req("DELETE", &format!("/v1/uploads/{receipt_id}"))
        .bearer_auth(&carol)
        .header("upload-draft-interop-version", "8")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_, all) = receipts(&s, &carol, &id).await;
    assert_eq!(paths(&all), ["Trips/a.jpg", "Third/a.jpg"]);
    assert_eq!(s.get_object_as(&carol, &id).await, data);
}

#[tokio::test]
async fn another_users_object_is_answered_as_one_never_stored() {
    let s = server_with(|_| {}).await;
    let carol = user_token(&s, "carol").await;
    let dave = user_token(&s, "dave").await;
    let id = put(&s, &carol, &bytes(2000, 42), "Trips/b.jpg").await;
    let never = blake3_hex(b"never stored by anyone");
    let m = meta(&[("path", "Stolen/b.jpg")]);

    let (status, theirs) = add(&s, &dave, &id, Some(&m)).await;
    let (never_status, unknown) = add(&s, &dave, &never, Some(&m)).await;
    assert_eq!((status, never_status), (404, 404));
    assert_eq!(
        theirs, unknown,
        "the same answer, whether another user holds it or no one"
    );
    // The owner gets 404 for an unknown object and a malformed id too.
    assert_eq!(add(&s, &carol, &never, Some(&m)).await.0, 404);
    assert_eq!(add(&s, &carol, "not-an-id", Some(&m)).await.0, 404);

    // Dave learnt nothing and wrote nothing: carol's object has her receipt alone, and dave
    // holds nothing.
    let (_, all) = receipts(&s, &carol, &id).await;
    assert_eq!(paths(&all), ["Trips/b.jpg"]);
    assert!(
        listing(&s, &dave).await["objects"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(receipts(&s, &dave, &id).await.0, 404);
    assert_eq!(used_bytes(&s, "dave").await, 0);

    // The batch form: the same.
    let (status, v) = batch(
        &s,
        &dave,
        &json!({"receipts": [
            {"object_id": id, "metadata": {"path": "Stolen/b.jpg"}},
            {"object_id": never, "metadata": {"path": "Stolen/b.jpg"}},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!({"receipts": [
            {"object_id": id, "status": 404},
            {"object_id": never, "status": 404},
        ]})
    );
    let (_, all) = receipts(&s, &carol, &id).await;
    assert_eq!(paths(&all), ["Trips/b.jpg"]);
}

#[tokio::test]
async fn bad_metadata_is_refused_before_the_object_is_looked_up() {
    let s = server_with(|_| {}).await;
    let carol = user_token(&s, "carol").await;
    let dave = user_token(&s, "dave").await;
    let id = put(&s, &carol, &bytes(1500, 43), "c.jpg").await;
    let never = blake3_hex(b"nobody's");
    let long_key = format!("{} YQ==", "k".repeat(65));
    let bad: [Option<&str>; 6] = [
        None,
        Some(""),
        Some("path not-base64!"),
        Some("path YQ==,path Yg=="),
        Some("path /w=="),
        Some(&long_key),
    ];
    for m in bad {
        for (token, object) in [(&carol, &id), (&dave, &id), (&carol, &never)] {
            let (status, body) = add(&s, token, object, m).await;
            assert_eq!(status, 400, "{m:?}: {body}");
        }
    }
    let too_many = (0..33)
        .map(|i| format!("k{i} YQ=="))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(add(&s, &carol, &id, Some(&too_many)).await.0, 400);
    let too_long = format!("path {}", b64(&vec![b'a'; 9000]));
    assert_eq!(add(&s, &carol, &id, Some(&too_long)).await.0, 400);

    // The batch: one malformed item refuses the whole request and writes nothing.
    let good = json!({"object_id": id, "metadata": {"path": "ok.jpg"}});
    for item in [
        json!({"object_id": "xyz", "metadata": {"path": "x.jpg"}}),
        json!({"object_id": id, "metadata": {}}),
        json!({"object_id": id, "metadata": {"a,b": "x"}}),
        json!({"object_id": id, "metadata": {"bad key": "x"}}),
        json!({"object_id": id, "metadata": {"path": 5}}),
        json!({"object_id": id, "metadata": {"path": "x"}, "extra": 1}),
        json!({"object_id": id, "metadata": {"path": "x".repeat(9000)}}),
    ] {
        let (status, body) = batch(&s, &carol, &json!({"receipts": [good, item]})).await;
        assert_eq!(status, 400, "{item}: {body}");
    }
    let (status, _) = batch(&s, &carol, &json!({"objects": []})).await;
    assert_eq!(status, 400);
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"object_id": id, "metadata": {"path": format!("{i}.jpg")}}))
        .collect();
    assert_eq!(batch(&s, &carol, &json!({"receipts": many})).await.0, 413);
    let (_, all) = receipts(&s, &carol, &id).await;
    assert_eq!(
        paths(&all),
        ["c.jpg"],
        "nothing written by a refused request"
    );
}

#[tokio::test]
async fn a_batch_answers_each_item_in_order_and_matches_the_single_route() {
    let s = server_with(|_| {}).await;
    let carol = user_token(&s, "carol").await;
    let a = put(&s, &carol, &bytes(1200, 44), "a.jpg").await;
    let b = put(&s, &carol, &bytes(1300, 45), "b.jpg").await;
    let never = blake3_hex(b"not here");
    let (status, v) = batch(
        &s,
        &carol,
        &json!({"receipts": [
            {"object_id": a, "metadata": {"path": "copy/a.jpg", "library": "Pictures"}},
            {"object_id": a.to_ascii_uppercase(), "metadata": {"library": "Pictures", "path": "copy/a.jpg"}},
            {"object_id": never, "metadata": {"path": "x.jpg"}},
            {"object_id": b, "metadata": {"path": "b.jpg", "library": "Pictures"}},
            {"object_id": b, "metadata": {"path": "copy/b.jpg"}},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let items = v["receipts"].as_array().unwrap();
    let statuses: Vec<u64> = items
        .iter()
        .map(|i| i["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 200, 404, 200, 201], "{v}");
    assert_eq!(
        items[0]["receipt"], items[1]["receipt"],
        "the same item twice: one receipt"
    );
    assert_eq!(items[1]["object_id"], a, "ids answered lowercase");
    assert!(items[2].get("receipt").is_none());

    // What the batch recorded is what the single route finds: the same receipt.
    let (status, one) = add(
        &s,
        &carol,
        &a,
        Some(&meta(&[("path", "copy/a.jpg"), ("library", "Pictures")])),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(one, items[0]["receipt"]);
    let (_, all) = receipts(&s, &carol, &a).await;
    assert_eq!(paths(&all), ["a.jpg", "copy/a.jpg"]);
    let (_, all) = receipts(&s, &carol, &b).await;
    assert_eq!(paths(&all), ["b.jpg", "copy/b.jpg"]);
}
