//! What a restore client reads back: `GET /v1/objects` pages through the caller's own objects
//! with their receipts (a cursor that neither skips nor repeats while uploads keep arriving),
//! and `GET /v1/objects/{id}` resumes a cut download with `Range`.

mod common;
use common::*;

use futures_util::StreamExt as _;
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

/// A plain upload of `data` as `token`, with a `filename` metadata value; its object id.
async fn put(s: &TestServer, token: &str, data: &[u8], filename: &str) -> String {
    let r = s
        .req("PUT", "/v1/uploads")
        .bearer_auth(token)
        .header(
            "ferry-metadata",
            format!("filename {}", b64(filename.as_bytes())),
        )
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    blake3_hex(data)
}

async fn page(s: &TestServer, token: &str, query: &str) -> Value {
    let r = s
        .req("GET", &format!("/v1/objects{query}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{query}");
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    r.json().await.unwrap()
}

fn ids(page: &Value) -> Vec<String> {
    page["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn listing_pages_are_scoped_and_stable_while_objects_arrive() {
    let s = server_with(|_| {}).await;
    let carol = user_token(&s, "carol").await;
    let dave = user_token(&s, "dave").await;
    let mut stored = Vec::new();
    for i in 0..25u8 {
        stored.push(
            put(
                &s,
                &carol,
                &bytes(1000 + i as usize, i),
                &format!("c{i}.jpg"),
            )
            .await,
        );
    }
    // Dave's objects, one of them also carol's bytes, never show in her listing.
    put(&s, &dave, &bytes(5000, 200), "d.jpg").await;
    put(&s, &dave, &bytes(1003, 3), "dave-copy.jpg").await;

    // Pages of 10 while new objects arrive between them, and an object carol already holds
    // is uploaded again (a new receipt, not a new place in the order).
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut round = 0u8;
    loop {
        let query = match &after {
            Some(a) => format!("?limit=10&after={a}"),
            None => "?limit=10".into(),
        };
        let p = page(&s, &carol, &query).await;
        seen.extend(ids(&p));
        if round < 2 {
            for j in 0..3u8 {
                let n = 100 + round * 10 + j;
                stored.push(put(&s, &carol, &bytes(2000 + n as usize, n), "new.jpg").await);
            }
            put(&s, &carol, &bytes(1000, 0), "again.jpg").await;
            put(&s, &dave, &bytes(3000 + round as usize, 250), "d2.jpg").await;
        }
        round += 1;
        match p["next_after"].as_str() {
            Some(a) => after = Some(a.to_string()),
            None => break,
        }
    }
    assert_eq!(
        seen, stored,
        "every object once, in the order carol first stored it"
    );
    assert_eq!(stored.len(), 31);

    // One page holds them all by default (100), the last page says there is no next one.
    let all = page(&s, &carol, "").await;
    assert_eq!(ids(&all), stored);
    assert_eq!(all["next_after"], Value::Null);
    let first = &all["objects"][0];
    let data = bytes(1000, 0);
    assert_eq!(first["size_bytes"], 1000);
    let sha: String = <sha2::Sha256 as sha2::Digest>::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(first["sha256"], sha.as_str());
    assert!(first["stored_ms"].as_i64().unwrap() > 1_700_000_000_000);
    // Its receipts: carol's three uploads of it (the first and two "again"), newest first,
    // with the metadata sent; dave's copy of object 3 is not among carol's receipts.
    let receipts = first["receipts"].as_array().unwrap();
    let names: Vec<&str> = receipts
        .iter()
        .map(|r| r["metadata"]["filename"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["again.jpg", "again.jpg", "c0.jpg"]);
    let times: Vec<i64> = receipts
        .iter()
        .map(|r| r["received_ms"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    assert!(
        receipts
            .iter()
            .all(|r| r["upload_id"].as_str().unwrap().len() == 32)
    );
    let fourth = &all["objects"][3]["receipts"];
    assert_eq!(fourth.as_array().unwrap().len(), 1);
    assert_eq!(fourth[0]["metadata"], json!({ "filename": "c3.jpg" }));

    // Dave sees his own only.
    assert_eq!(ids(&page(&s, &dave, "").await).len(), 4);
    // Bounds.
    for bad in [
        "?limit=0",
        "?limit=1001",
        "?limit=x",
        "?after=-1",
        "?after=abc",
    ] {
        let r = s
            .req("GET", &format!("/v1/objects{bad}"))
            .bearer_auth(&carol)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let max = page(&s, &carol, "?limit=1000").await;
    assert_eq!(ids(&max).len(), 31);
    let r = s.req("GET", "/v1/objects").send().await.unwrap();
    assert_eq!(r.status(), 401, "no token, no listing");
}

#[tokio::test]
async fn a_cut_download_resumes_with_range() {
    let s = server_with(|_| {}).await;
    let erin = user_token(&s, "erin").await;
    let other = user_token(&s, "frank").await;
    let data = bytes(3 << 20, 90);
    let id = put(&s, &erin, &data, "big.mov").await;
    let url = format!("/v1/objects/{id}");
    let get = |range: Option<&str>, if_range: Option<&str>, token: &str| {
        let mut r = s.req("GET", &url).bearer_auth(token);
        if let Some(v) = range {
            r = r.header("range", v);
        }
        if let Some(v) = if_range {
            r = r.header("if-range", v);
        }
        r.send()
    };

    // A download cut after its first megabyte or so…
    let r = get(None, None, &erin).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "accept-ranges"), Some("bytes"));
    let etag = header(&r, "etag").unwrap().to_string();
    assert_eq!(etag, format!("\"{id}\""));
    let mut got = Vec::new();
    let mut stream = r.bytes_stream();
    while got.len() < 1_000_000 {
        got.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    drop(stream);
    // …resumes where it stopped, and the two parts are the object.
    let start = got.len();
    let r = get(Some(&format!("bytes={start}-")), Some(&etag), &erin)
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        header(&r, "content-range"),
        Some(format!("bytes {start}-{}/{}", data.len() - 1, data.len()).as_str())
    );
    assert_eq!(
        header(&r, "content-length"),
        Some((data.len() - start).to_string().as_str())
    );
    // The object headers describe the whole object, not the range.
    assert_object_headers(&r, &data);
    got.extend_from_slice(&r.bytes().await.unwrap());
    assert_eq!(got.len(), data.len());
    assert!(got == data, "resumed bytes differ");

    // Closed, suffix and clamped ranges.
    for (range, want) in [
        ("bytes=10-19", 10..20),
        ("bytes=-100", data.len() - 100..data.len()),
        ("bytes=3000000-99999999", 3_000_000..data.len()),
        ("BYTES=0-0", 0..1),
    ] {
        let r = get(Some(range), None, &erin).await.unwrap();
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            header(&r, "content-range"),
            Some(format!("bytes {}-{}/{}", want.start, want.end - 1, data.len()).as_str()),
            "{range}"
        );
        assert!(r.bytes().await.unwrap() == data[want.clone()], "{range}");
    }
    // Unsatisfiable: 416 with the size.
    for range in [format!("bytes={}-", data.len()), "bytes=-0".into()] {
        let r = get(Some(&range), None, &erin).await.unwrap();
        assert_eq!(r.status(), 416, "{range}");
        assert_eq!(
            header(&r, "content-range"),
            Some(format!("bytes */{}", data.len()).as_str())
        );
    }
    // Ignored (the whole object): several ranges, another unit, nonsense, a stale If-Range.
    for (range, if_range) in [
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=5-2", None),
        ("bytes=x-", None),
        ("bytes=10-", Some("\"another-version\"")),
    ] {
        let r = get(Some(range), if_range, &erin).await.unwrap();
        assert_eq!(r.status(), 200, "{range} {if_range:?}");
        assert_eq!(r.bytes().await.unwrap().len(), data.len());
    }
    // Another user gets 404, not a range of it.
    let r = get(Some("bytes=0-9"), None, &other).await.unwrap();
    assert_eq!(r.status(), 404);
    let r = get(Some(&format!("bytes={}-", data.len())), None, &other)
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "not even the size leaks through a 416");
}
