//! Accounts on one server: what one user stored is invisible to another through every route,
//! identical bytes are stored once but owned per user, quotas refuse what does not fit (at
//! creation and at completion), a revoked token is refused from its next request, the `user` /
//! `token` subcommands of the real binary, and a data folder from before accounts.

mod common;
use common::*;

use serde_json::{Value, json};

/// A token of `user` (created, with `quota`, if it does not exist yet), through the same
/// library calls the `user` / `token` subcommands make, on the server's own data folder.
async fn user_token(s: &TestServer, user: &str, quota: Option<u64>) -> String {
    let a = s.accounts().await;
    if a.user(user).await.is_err() {
        a.create_user(user, quota).await.unwrap();
    }
    let t = a.create_token(Some(user), "device").await.unwrap();
    a.close().await;
    t
}

fn sha256_hex(b: &[u8]) -> String {
    <sha2::Sha256 as sha2::Digest>::digest(b)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn partial_files(s: &TestServer) -> usize {
    std::fs::read_dir(s.dir.path().join("partial"))
        .unwrap()
        .count()
}

async fn json_of(r: reqwest::Response) -> Value {
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn check(s: &TestServer, token: &str, blake3: &str, sha256: &str) -> Value {
    json_of(
        s.req("POST", "/v1/objects/check")
            .bearer_auth(token)
            .json(&json!({ "blake3": [blake3], "sha256": [sha256] }))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn listing(s: &TestServer, token: &str) -> Value {
    json_of(
        s.req("GET", "/v1/objects")
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn receipts(s: &TestServer, token: &str, id: &str) -> Vec<Value> {
    let r = s
        .req("GET", &format!("/v1/objects/{id}/receipts"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    json_of(r).await["receipts"].as_array().unwrap().clone()
}

/// Status, whether any object header came back, and the body.
async fn answer(r: reqwest::Response) -> (u16, bool, Vec<u8>) {
    let object_headers = ["ferry-object-id", "ferry-blake3", "repr-digest", "etag"]
        .iter()
        .any(|h| r.headers().contains_key(*h));
    (
        r.status().as_u16(),
        object_headers,
        r.bytes().await.unwrap().to_vec(),
    )
}

fn upload_id(location: &str) -> &str {
    location.rsplit('/').next().unwrap()
}

#[tokio::test]
async fn another_users_objects_receipts_and_uploads_are_invisible() {
    let s = server_with(|_| {}).await;
    let alice = user_token(&s, "alice", None).await;
    let bob = user_token(&s, "bob", None).await;
    let data = bytes(700_000, 60);
    let (id, sha) = (blake3_hex(&data), sha256_hex(&data));

    // Alice: a tus upload in two appends, with metadata.
    let r = s
        .req("POST", "/v1/uploads")
        .bearer_auth(&alice)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", data.len())
        .header(
            "upload-metadata",
            format!("filename {}", b64(b"IMG_1.HEIC")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let done_url = header(&r, "location").unwrap().to_string();
    for (from, to) in [(0, 300_000), (300_000, data.len())] {
        let r = s
            .req("PATCH", &done_url)
            .bearer_auth(&alice)
            .header("tus-resumable", "1.0.0")
            .header("content-type", "application/offset+octet-stream")
            .header("upload-offset", from)
            .body(data[from..to].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    // Alice: a draft upload left half done.
    let part = bytes(200_000, 61);
    let r = s
        .req("POST", "/v1/uploads")
        .bearer_auth(&alice)
        .header("upload-draft-interop-version", "8")
        .header("upload-complete", "?0")
        .header("upload-length", part.len())
        .body(part[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let open_url = header(&r, "location").unwrap().to_string();

    // What alice sees (so the answers to bob below are refusals, not a broken route).
    assert_eq!(
        s.req("GET", &format!("/v1/objects/{id}"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        check(&s, &alice, &id, &sha).await,
        json!({ "blake3": [id], "sha256": [sha] })
    );
    assert_eq!(
        listing(&s, &alice).await["objects"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(receipts(&s, &alice, &id).await.len(), 1);

    // Bob, on alice's object: exactly what an object nobody stored gets.
    let never = blake3_hex(b"never stored by anyone");
    for (method, path) in [
        ("GET", "/v1/objects/{}"),
        ("HEAD", "/v1/objects/{}"),
        ("GET", "/v1/objects/{}/receipts"),
    ] {
        let ask = |object: &str| {
            s.req(method, &path.replace("{}", object))
                .bearer_auth(&bob)
                .header("range", "bytes=10-")
                .send()
        };
        let hers = answer(ask(&id).await.unwrap()).await;
        let nobodys = answer(ask(&never).await.unwrap()).await;
        assert_eq!(hers.0, 404, "{method} {path}");
        assert!(!hers.1, "{method} {path}: object headers leaked");
        assert_eq!(hers, nobodys, "{method} {path}");
    }
    assert_eq!(
        check(&s, &bob, &id, &sha).await,
        json!({ "blake3": [], "sha256": [] })
    );
    assert_eq!(
        listing(&s, &bob).await,
        json!({ "objects": [], "next_after": null })
    );

    // Bob, on alice's upload URLs (finished and unfinished), in both protocols: each route
    // answers as for an upload that never existed, and changes nothing.
    let nobodys_url = format!("/v1/uploads/{}", "0".repeat(32));
    for url in [&done_url, &open_url] {
        let offset = if url == &done_url {
            data.len()
        } else {
            100_000
        };
        let requests: Vec<(&str, reqwest::RequestBuilder, reqwest::RequestBuilder)> = vec![
            ("tus HEAD", s.req("HEAD", url), s.req("HEAD", &nobodys_url)),
            (
                "draft HEAD",
                s.req("HEAD", url),
                s.req("HEAD", &nobodys_url),
            ),
            (
                "tus PATCH",
                s.req("PATCH", url),
                s.req("PATCH", &nobodys_url),
            ),
            (
                "draft PATCH",
                s.ietf_append(url, offset as u64, false),
                s.ietf_append(&nobodys_url, offset as u64, false),
            ),
            (
                "draft empty completion",
                s.ietf_append(url, offset as u64, true),
                s.ietf_append(&nobodys_url, offset as u64, true),
            ),
            (
                "tus DELETE",
                s.req("DELETE", url),
                s.req("DELETE", &nobodys_url),
            ),
            (
                "draft DELETE",
                s.req("DELETE", url),
                s.req("DELETE", &nobodys_url),
            ),
        ];
        for (what, hers, nobodys) in requests {
            let shape = |b: reqwest::RequestBuilder| {
                let b = b.bearer_auth(&bob);
                let b = if what.starts_with("tus") {
                    b.header("tus-resumable", "1.0.0")
                        .header("content-type", "application/offset+octet-stream")
                        .header("upload-offset", offset)
                } else {
                    b.header("upload-draft-interop-version", "8")
                };
                if what.ends_with("PATCH") {
                    b.body(vec![7u8; 10])
                } else {
                    b
                }
            };
            let hers = answer(shape(hers).send().await.unwrap()).await;
            let nobodys = answer(shape(nobodys).send().await.unwrap()).await;
            assert_eq!(hers.0, 404, "{what} {url}");
            assert!(!hers.1, "{what} {url}: object headers leaked");
            assert_eq!(hers, nobodys, "{what} {url}");
        }
    }
    // Alice's uploads are as she left them.
    let r = s
        .req("HEAD", &open_url)
        .bearer_auth(&alice)
        .header("upload-draft-interop-version", "8")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), header(&r, "upload-offset")),
        (204, Some("100000"))
    );
    let r = s
        .req("HEAD", &done_url)
        .bearer_auth(&alice)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_object_headers(&r, &data);
    assert_eq!(receipts(&s, &alice, &id).await.len(), 1);
    let r = s
        .ietf_append(&open_url, 100_000, true)
        .bearer_auth(&alice)
        .body(part[100_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_object_headers(&r, &part);

    // An idempotency key alice used names nothing for bob.
    let keyed = |token: &str, body: Vec<u8>| {
        s.req("PUT", "/v1/uploads")
            .bearer_auth(token)
            .header("idempotency-key", "\"job-7\"")
            .body(body)
            .send()
    };
    let key_data = bytes(10_000, 62);
    let a = keyed(&alice, key_data.clone()).await.unwrap();
    let b = keyed(&bob, key_data.clone()).await.unwrap();
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (201, 201));
    assert_ne!(header(&a, "location"), header(&b, "location"));

    // Bob uploads alice's first bytes himself: his own receipt and ownership; hers stay hers.
    let r = s
        .req("POST", "/v1/uploads")
        .bearer_auth(&bob)
        .header("ferry-metadata", format!("filename {}", b64(b"bob.heic")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_object_headers(&r, &data);
    let bobs_upload = upload_id(header(&r, "location").unwrap()).to_string();
    let his = receipts(&s, &bob, &id).await;
    assert_eq!(his.len(), 1, "{his:?}");
    assert_eq!(his[0]["upload_id"], bobs_upload.as_str());
    assert_eq!(his[0]["metadata"], json!({ "filename": "bob.heic" }));
    let hers = receipts(&s, &alice, &id).await;
    assert_eq!(hers.len(), 1, "{hers:?}");
    assert_eq!(hers[0]["upload_id"], upload_id(&done_url));
    assert_eq!(hers[0]["metadata"], json!({ "filename": "IMG_1.HEIC" }));
    assert_eq!(
        check(&s, &bob, &id, &sha).await,
        json!({ "blake3": [id], "sha256": [sha] })
    );
    let page = listing(&s, &bob).await;
    let ids: Vec<&str> = page["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [blake3_hex(&key_data).as_str(), id.as_str()]);
    assert_eq!(page["objects"][1]["receipts"].as_array().unwrap().len(), 1);
    assert_eq!(
        page["objects"][1]["receipts"][0]["upload_id"],
        bobs_upload.as_str()
    );
    assert_eq!(
        s.req("GET", &format!("/v1/objects/{id}"))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        data
    );
    // The upload alice finished after bob's attempts is hers alone.
    let part_id = blake3_hex(&part);
    assert_eq!(
        s.req("HEAD", &format!("/v1/objects/{part_id}"))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Stored once: one blob per distinct object, whoever holds it.
    let mut want = vec![id.clone(), part_id, blake3_hex(&key_data)];
    want.sort();
    assert_eq!(s.stored_objects().await, want);
}

async fn assert_quota_refused(r: reqwest::Response, used: u64, quota: u64, needed: u64) {
    assert_eq!(r.status(), 413);
    assert_eq!(header(&r, "ferry-problem"), Some("quota-exceeded"));
    assert_eq!(header(&r, "content-type"), Some("application/problem+json"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "urn:ferry:problem:quota-exceeded");
    assert_eq!(v["title"], "Content Too Large");
    assert_eq!(v["status"], 413);
    assert_eq!(
        (
            v["used-bytes"].as_u64(),
            v["quota-bytes"].as_u64(),
            v["needed-bytes"].as_u64()
        ),
        (Some(used), Some(quota), Some(needed)),
        "{v}"
    );
    let detail = v["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("{used} of {quota} bytes used")),
        "{detail}"
    );
}

#[tokio::test]
async fn a_quota_refuses_at_creation_and_at_completion_and_only_its_user() {
    let s = server_with(|_| {}).await;
    let small = user_token(&s, "small", Some(100_000)).await;
    let free = user_token(&s, "free", None).await;
    let big = bytes(150_000, 70);
    let partials = partial_files(&s);

    // Declared lengths that do not fit: refused before anything is created.
    let r = s
        .req("POST", "/v1/uploads")
        .bearer_auth(&small)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", big.len())
        .send()
        .await
        .unwrap();
    assert_quota_refused(r, 0, 100_000, 150_000).await;
    let r = s
        .req("POST", "/v1/uploads")
        .bearer_auth(&small)
        .header("upload-draft-interop-version", "8")
        .header("upload-complete", "?0")
        .header("upload-length", big.len())
        .send()
        .await
        .unwrap();
    assert_quota_refused(r, 0, 100_000, 150_000).await;
    let r = s
        .req("PUT", "/v1/uploads")
        .bearer_auth(&small)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_quota_refused(r, 0, 100_000, 150_000).await;
    assert_eq!(
        partial_files(&s),
        partials,
        "a refused creation leaves no partial file"
    );

    // What fits is stored.
    let fits = bytes(60_000, 71);
    let r = s
        .req("PUT", "/v1/uploads")
        .bearer_auth(&small)
        .body(fits.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // No length declared: refused when it completes, and the upload is gone with its bytes.
    let r = s
        .req("POST", "/v1/uploads")
        .bearer_auth(&small)
        .header("upload-draft-interop-version", "8")
        .header("upload-complete", "?0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let url = header(&r, "location").unwrap().to_string();
    let more = bytes(50_000, 72);
    let r = s
        .ietf_append(&url, 0, false)
        .bearer_auth(&small)
        .body(more[..20_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = s
        .ietf_append(&url, 20_000, true)
        .bearer_auth(&small)
        .body(more[20_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_quota_refused(r, 60_000, 100_000, 50_000).await;
    let r = s
        .req("HEAD", &url)
        .bearer_auth(&small)
        .header("upload-draft-interop-version", "8")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "discarded");
    assert!(
        !s.stored_objects().await.contains(&blake3_hex(&more)),
        "no blob for a refused object"
    );
    assert_eq!(partial_files(&s), partials);
    assert_eq!(
        s.req("HEAD", &format!("/v1/objects/{}", blake3_hex(&more)))
            .bearer_auth(&small)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // A tus length deferred, then declared: checked when declared.
    let r = s
        .req("POST", "/v1/uploads")
        .bearer_auth(&small)
        .header("tus-resumable", "1.0.0")
        .header("upload-defer-length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let url = header(&r, "location").unwrap().to_string();
    let r = s
        .req("PATCH", &url)
        .bearer_auth(&small)
        .header("tus-resumable", "1.0.0")
        .header("content-type", "application/offset+octet-stream")
        .header("upload-offset", 0)
        .header("upload-length", more.len())
        .body(more.clone())
        .send()
        .await
        .unwrap();
    assert_quota_refused(r, 60_000, 100_000, 50_000).await;

    // The same bytes again add nothing: a re-upload that promises their BLAKE3 is not refused
    // at creation, and completes (one object, counted once). Without the promise, the declared
    // length alone is what creation can judge.
    let again = |promise: bool| {
        let r = s
            .req("POST", "/v1/uploads")
            .bearer_auth(&small)
            .header("upload-draft-interop-version", "8")
            .header("upload-complete", "?1")
            .header("upload-length", fits.len());
        let r = if promise {
            r.header(
                "repr-digest",
                format!("blake3=:{}:", b64(blake3::hash(&fits).as_bytes())),
            )
        } else {
            r
        };
        r.body(fits.clone()).send()
    };
    assert_quota_refused(again(false).await.unwrap(), 60_000, 100_000, 60_000).await;
    let r = again(true).await.unwrap();
    assert_eq!(r.status(), 201);
    assert_object_headers(&r, &fits);
    assert_eq!(receipts(&s, &small, &blake3_hex(&fits)).await.len(), 2);
    let accounts = s.accounts().await;
    assert_eq!(accounts.user("small").await.unwrap().used_bytes, 60_000);

    // Other users are not affected.
    let r = s
        .req("PUT", "/v1/uploads")
        .bearer_auth(&free)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(accounts.user("free").await.unwrap().used_bytes, 150_000);
    // A quota raised: what was refused now fits.
    accounts.set_quota("small", Some(300_000)).await.unwrap();
    accounts.close().await;
    let r = s
        .req("PUT", "/v1/uploads")
        .bearer_auth(&small)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

/// Runs the real `ferry-server` binary; returns (success, stdout, stderr).
async fn cli(args: &[&str], s: &TestServer) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-server"))
        .args(args)
        .args(s.data_args())
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A line of a table the binary printed, split on whitespace, found by its first column.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first:?} in\n{table}"))
}

#[tokio::test]
async fn user_and_token_commands_of_the_binary_and_revocation_at_once() {
    let s = server_with(|_| {}).await;
    let data = &s;
    let ok = |r: (bool, String, String)| {
        assert!(r.0, "stdout: {}\nstderr: {}", r.1, r.2);
        r.1
    };
    ok(cli(&["user", "create", "alice", "--quota", "1000000"], data).await);
    let (success, _, err) = cli(&["user", "create", "alice"], data).await;
    assert!(!success && err.contains("exists already"), "{err}");
    let (success, _, err) = cli(&["user", "create", "no/slash"], data).await;
    assert!(!success && err.contains("not a user name"), "{err}");
    ok(cli(&["user", "create", "bob"], data).await);

    let phone = ok(cli(
        &["token", "create", "--user", "alice", "--name", "phone"],
        data,
    )
    .await);
    let phone = phone.trim().to_string();
    let laptop = ok(cli(
        &["token", "create", "--user", "alice", "--name", "laptop"],
        data,
    )
    .await);
    let laptop = laptop.trim().to_string();
    let legacy = ok(cli(&["token", "create", "--name", "script"], data).await);
    let legacy = legacy.trim().to_string();
    let bobs = ok(cli(
        &["token", "create", "--user", "bob", "--name", "phone"],
        data,
    )
    .await);
    let bobs = bobs.trim().to_string();
    assert!(phone.starts_with("ferry_") && phone.len() > 40, "{phone}");
    let (success, _, err) = cli(
        &["token", "create", "--user", "nobody", "--name", "x"],
        data,
    )
    .await;
    assert!(!success && err.contains("user create nobody"), "{err}");

    let all = ok(cli(&["token", "list"], data).await);
    assert_eq!(all.lines().count(), 1 + 4, "{all}");
    assert!(!all.contains(&phone), "a token is never shown again");
    let alices = ok(cli(&["token", "list", "--user", "alice"], data).await);
    assert_eq!(alices.lines().count(), 1 + 2, "{alices}");
    assert!(
        alices
            .lines()
            .skip(1)
            .all(|l| l.split_whitespace().nth(1) == Some("alice")),
        "{alices}"
    );

    // Each token works as its user.
    let status = |token: String| {
        let req = s.req("GET", "/v1/objects").bearer_auth(token).send();
        async move { req.await.unwrap().status().as_u16() }
    };
    for t in [&phone, &laptop, &legacy, &bobs] {
        assert_eq!(status(t.clone()).await, 200);
    }
    let r = s
        .req("PUT", "/v1/uploads")
        .bearer_auth(&phone)
        .body(vec![1u8; 4321])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let users = ok(cli(&["user", "list"], data).await);
    assert_eq!(row(&users, "alice")[1..], ["1000000", "4321", "2"]);
    assert_eq!(row(&users, "bob")[1..], ["unlimited", "0", "1"]);
    assert_eq!(row(&users, "default")[1..], ["unlimited", "0", "1"]);
    ok(cli(&["user", "set-quota", "alice", "none"], data).await);
    ok(cli(&["user", "set-quota", "bob", "4000"], data).await);
    let users = ok(cli(&["user", "list"], data).await);
    assert_eq!(row(&users, "alice")[1], "unlimited");
    assert_eq!(row(&users, "bob")[1], "4000");
    let (success, _, err) = cli(&["user", "set-quota", "nobody", "1"], data).await;
    assert!(!success && err.contains("no user"), "{err}");

    // "phone" names two tokens (alice's and bob's): refused, with their ids.
    let (success, _, err) = cli(&["token", "revoke", "phone"], data).await;
    assert!(!success && err.contains("revoke one by its id"), "{err}");
    assert_eq!(status(phone.clone()).await, 200);
    // By name within a user; the server, running all along, refuses it from the next request.
    let said = ok(cli(&["token", "revoke", "phone", "--user", "alice"], data).await);
    assert!(said.contains("phone of user alice"), "{said}");
    let r = s
        .req("GET", "/v1/objects")
        .bearer_auth(&phone)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(header(&r, "www-authenticate").is_some_and(|v| v.starts_with("Bearer")));
    for t in [&laptop, &bobs, &legacy] {
        assert_eq!(
            status(t.clone()).await,
            200,
            "the other tokens keep working"
        );
    }
    // By id, as `token list` shows it.
    let listed = ok(cli(&["token", "list", "--user", "bob"], data).await);
    assert_eq!(row(&listed, "ID")[1..], ["USER", "NAME", "CREATED"]);
    let bob_id = listed
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    ok(cli(&["token", "revoke", &bob_id], data).await);
    assert_eq!(status(bobs.clone()).await, 401);
    let (success, _, err) = cli(&["token", "revoke", &bob_id], data).await;
    assert!(!success && err.contains("no token"), "{err}");
    // The library's revocation (what the command runs) is as immediate.
    let accounts = data.accounts().await;
    accounts.revoke_token("laptop", None).await.unwrap();
    accounts.close().await;
    assert_eq!(status(laptop.clone()).await, 401);
    assert_eq!(status(legacy.clone()).await, 200);
}

/// A data folder as the server wrote it before accounts (migrations 1–3, rows written as
/// that code wrote them), opened by today's server: its token, object and receipt belong to
/// the default user and work as before; a new user sees none of them.
#[tokio::test]
async fn a_data_folder_from_before_accounts_belongs_to_the_default_user() {
    let dir = tempfile::tempdir().unwrap();
    let content = bytes(123_456, 80);
    let id = blake3_hex(&content);
    let token = "ferry_an_old_token_made_before_accounts";
    {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("meta.db"))
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .unwrap();
        sqlx::migrate!("./migrations")
            .run_to(3, &pool)
            .await
            .unwrap();
        let tables: Vec<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'users'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(tables.is_empty(), "the folder predates accounts");
        // The statements the code before accounts ran.
        sqlx::query("INSERT INTO tokens (sha256_hex, name, created_unix_ms) VALUES (?, ?, ?)")
            .bind(sha256_hex(token.as_bytes()))
            .bind("old-phone")
            .bind(1_000_i64)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO objects (id, sha256_hex, size_bytes, created_unix_ms) VALUES (?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(sha256_hex(&content))
        .bind(content.len() as i64)
        .bind(2_000_i64)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO uploads (id, protocol, offset_bytes, length_bytes, metadata_json, metadata_raw, expected_sha256_hex, expected_blake3_hex, idempotency_key, object_id, created_unix_ms, expires_unix_ms) VALUES (?, 'plain', ?, ?, ?, NULL, NULL, NULL, NULL, ?, 1500, 99999)")
            .bind("0123456789abcdef0123456789abcdef")
            .bind(content.len() as i64)
            .bind(content.len() as i64)
            .bind(r#"{"filename":"old.jpg"}"#)
            .bind(&id)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let blob = dir.path().join("blobs/objects").join(&id[..2]).join(&id);
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, &content).unwrap();
    }

    let config = ferry_server::Config::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    let s = TestServer {
        handle: ferry_server::Server::start(config.clone()).await.unwrap(),
        dir,
        client: reqwest::Client::new(),
        config,
    };
    assert_eq!(s.get_object_as(token, &id).await, content);
    let r = receipts(&s, token, &id).await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["upload_id"], "0123456789abcdef0123456789abcdef");
    assert_eq!(
        r[0]["received_ms"], 1500,
        "an old receipt was received at its creation"
    );
    assert_eq!(r[0]["metadata"], json!({ "filename": "old.jpg" }));
    let page = listing(&s, token).await;
    assert_eq!(page["objects"][0]["id"], id.as_str());
    assert_eq!(page["objects"][0]["stored_ms"], 2000);
    assert_eq!(page["objects"][0]["size_bytes"], content.len());
    let accounts = s.accounts().await;
    let default = accounts.user("default").await.unwrap();
    assert_eq!(default.used_bytes, content.len() as u64);
    let tokens = accounts.tokens(Some("default")).await.unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].name, "old-phone");
    accounts.close().await;
    // New uploads by the old token are the default user's too, after the old object.
    let more = bytes(1000, 81);
    let r = s
        .req("PUT", "/v1/uploads")
        .bearer_auth(token)
        .body(more.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let page = listing(&s, token).await;
    let ids: Vec<&str> = page["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.clone(), blake3_hex(&more)]);
    // And what belongs to the default user is no one else's.
    let newcomer = user_token(&s, "newcomer", None).await;
    assert_eq!(
        s.req("GET", &format!("/v1/objects/{id}"))
            .bearer_auth(&newcomer)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(listing(&s, &newcomer).await["objects"], json!([]));
    // The embedded server's path (a token without a user) still lands on the default user.
    let embedded = ferry_server::create_token(s.dir.path(), "ferry-backup")
        .await
        .unwrap();
    assert_eq!(s.get_object_as(&embedded, &id).await, content);
}
