//! ferry-server with its objects in an S3 bucket: every protocol's upload lands there and comes
//! back byte for byte (whole and in ranges, one request and multipart), a store that cannot work
//! fails the start quickly with the error that says why, and the real binary does both.
//!
//! They need a real S3 (`scripts/scaleout start DIR` starts SeaweedFS and exports
//! `FERRY_TEST_S3_URL` and the `AWS_*` settings). Without it they say they skip, except under
//! `CI`, where a missing engine is a failure. Each test works under a prefix of its own and
//! leaves nothing behind: it checks what its prefix holds, then deletes it.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_server::{Server, StartError, StoreUrl};
use object_store::{ObjectStore, ObjectStoreExt};

const SERVER: &str = env!("CARGO_BIN_EXE_ferry-server");
/// Above the 16 MiB the server stores with one request: three parts, the last a small one.
const MULTIPART_BYTES: usize = (32 << 20) + (1 << 20) + 7;
/// How long a failing start may take: the probe's limit, and some slack for a busy machine.
const START_FAILS_WITHIN: Duration = Duration::from_secs(12);

/// The S3 store under test, or `None` when there is none and this is not CI.
fn s3_base() -> Option<String> {
    match std::env::var("FERRY_TEST_S3_URL") {
        Ok(u) if !u.is_empty() => Some(u.trim_end_matches('/').to_string()),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but FERRY_TEST_S3_URL is not: the scale-out engines are missing \
                 (start them with `scripts/scaleout start DIR`)"
            );
            eprintln!("skipping: FERRY_TEST_S3_URL is unset (see `scripts/scaleout start DIR`)");
            None
        }
    }
}

/// One test's prefix of the bucket, and a client of it to check and empty it afterwards.
struct Prefix {
    url: String,
    store: Arc<dyn ObjectStore>,
}

impl Prefix {
    async fn new(base: &str) -> Prefix {
        let url = format!("{base}/test-{}", uuid::Uuid::new_v4().simple());
        let blobs = StoreUrl::parse(&url).unwrap().open(None).await.unwrap();
        Prefix {
            url,
            store: blobs.store().clone(),
        }
    }

    /// Asserts the prefix holds exactly the objects `ids` (no probe object, no stray part),
    /// then deletes everything in it.
    async fn finish(self, ids: &[String]) {
        let listed: Vec<object_store::ObjectMeta> =
            futures_util::TryStreamExt::try_collect(self.store.list(None))
                .await
                .unwrap();
        let mut keys: Vec<String> = listed.iter().map(|m| m.location.to_string()).collect();
        keys.sort();
        for m in &listed {
            self.store.delete(&m.location).await.unwrap();
        }
        let mut want: Vec<String> = ids
            .iter()
            .map(|id| ferry_server::blobs::object_path(id).to_string())
            .collect();
        want.sort();
        want.dedup();
        assert_eq!(keys, want, "what {} holds", self.url);
        let left: Vec<object_store::ObjectMeta> =
            futures_util::TryStreamExt::try_collect(self.store.list(None))
                .await
                .unwrap();
        assert!(left.is_empty(), "{} still holds {left:?}", self.url);
    }
}

/// This process's `AWS_*` settings, to start a server with one of them changed.
fn aws_env() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .collect()
}

/// GETs the object whole and in ranges (one inside, one from an offset to the end, a suffix,
/// and with `boundary` one across it) and checks each against `data`.
async fn assert_served(s: &TestServer, id: &str, data: &[u8], boundary: Option<usize>) {
    assert_eq!(s.get_object(id).await, data, "GET {id}");
    let n = data.len();
    let mut ranges = vec![
        ("bytes=1000-1999".to_string(), 1000..2000),
        (format!("bytes={}-", n - 10), n - 10..n),
        ("bytes=-100".to_string(), n - 100..n),
    ];
    if let Some(b) = boundary {
        ranges.push((format!("bytes={}-{}", b - 10, b + 9), b - 10..b + 10));
    }
    for (range, want) in ranges {
        let r = s
            .req("GET", &format!("/v1/objects/{id}"))
            .header("range", &range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            header(&r, "content-range"),
            Some(format!("bytes {}-{}/{n}", want.start, want.end - 1).as_str()),
            "{range}"
        );
        assert_eq!(&r.bytes().await.unwrap()[..], &data[want], "{range}");
    }
}

async fn tus_upload(s: &TestServer, data: &[u8]) -> String {
    let r = s
        .req("POST", "/v1/uploads")
        .header("tus-resumable", "1.0.0")
        .header("upload-length", data.len().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let loc = header(&r, "location").unwrap().to_string();
    let half = data.len() / 2;
    let mut last = None;
    for (offset, chunk) in [(0, &data[..half]), (half, &data[half..])] {
        let r = s
            .req("PATCH", &loc)
            .header("tus-resumable", "1.0.0")
            .header("content-type", "application/offset+octet-stream")
            .header("upload-offset", offset.to_string())
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "tus PATCH at {offset}");
        last = Some(r);
    }
    let r = last.unwrap();
    assert_object_headers(&r, data);
    blake3_hex(data)
}

async fn ietf_upload(s: &TestServer, data: &[u8]) -> String {
    let r = s
        .req("POST", "/v1/uploads")
        .header("upload-draft-interop-version", "8")
        .header("upload-complete", "?0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let loc = header(&r, "location").unwrap().to_string();
    let half = data.len() / 2;
    let r = s
        .ietf_append(&loc, 0, false)
        .body(data[..half].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = s
        .ietf_append(&loc, half as u64, true)
        .body(data[half..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_object_headers(&r, data);
    blake3_hex(data)
}

async fn plain_upload(s: &TestServer, data: &[u8]) -> String {
    let r = s
        .req("POST", "/v1/uploads")
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_object_headers(&r, data);
    blake3_hex(data)
}

#[tokio::test]
async fn every_protocol_stores_in_s3_and_serves_it_back() {
    let Some(base) = s3_base() else { return };
    let prefix = Prefix::new(&base).await;
    let url = prefix.url.clone();
    let s = server_with(|c| {
        c.open = true;
        c.store = Some(url);
    })
    .await;

    let tus = bytes(2_500_000, 101);
    let ietf = bytes(3_000_000, 102);
    let plain = bytes(1_234_567, 103);
    let big = bytes(MULTIPART_BYTES, 104);
    let ids = vec![
        tus_upload(&s, &tus).await,
        ietf_upload(&s, &ietf).await,
        plain_upload(&s, &plain).await,
        // Streamed in parts, never held whole.
        tus_upload(&s, &big).await,
    ];
    // The same bytes again: the same object, still stored once.
    assert_eq!(plain_upload(&s, &plain).await, ids[2]);

    assert_served(&s, &ids[0], &tus, None).await;
    assert_served(&s, &ids[1], &ietf, None).await;
    assert_served(&s, &ids[2], &plain, None).await;
    assert_served(&s, &ids[3], &big, Some(16 << 20)).await;
    // Nothing went to the data directory but the (now removed) partial files.
    assert!(!s.dir.path().join("blobs").exists());
    let partial: Vec<_> = std::fs::read_dir(s.dir.path().join("partial"))
        .unwrap()
        .collect();
    assert!(partial.is_empty(), "{partial:?}");

    s.handle.shutdown().await;
    prefix.finish(&ids).await;
}

/// Starts a server on `store` with `aws` settings; it must fail, quickly.
async fn start_fails(store: &str, aws: BTreeMap<String, String>) -> StartError {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ferry_server::Config::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    config.store = Some(store.into());
    config.store_env = Some(aws);
    let started = Instant::now();
    let e = match Server::start(config).await {
        Ok(h) => panic!("started on {store} at {}", h.base_url()),
        Err(e) => e,
    };
    assert!(
        started.elapsed() < START_FAILS_WITHIN,
        "{store}: failed only after {:?}: {e}",
        started.elapsed()
    );
    assert!(e.to_string().contains(store), "names the store: {e}");
    e
}

#[tokio::test]
async fn a_missing_bucket_fails_the_start() {
    let Some(_) = s3_base() else { return };
    let store = format!("s3://no-such-bucket-{}", uuid::Uuid::new_v4().simple());
    // Twice: the first attempt must not have created the bucket (SeaweedFS creates one on
    // a write with an admin's keys).
    for _ in 0..2 {
        match start_fails(&store, aws_env()).await {
            StartError::StoreBucketMissing { bucket, .. } => {
                assert_eq!(format!("s3://{bucket}"), store)
            }
            e => panic!("{e:?}"),
        }
    }
}

#[tokio::test]
async fn a_wrong_secret_fails_the_start_and_is_never_shown() {
    let Some(base) = s3_base() else { return };
    let prefix = Prefix::new(&base).await;
    let wrong = format!("wrong-secret-{}", uuid::Uuid::new_v4().simple());
    let mut aws = aws_env();
    let right = aws.insert("AWS_SECRET_ACCESS_KEY".into(), wrong.clone());
    let e = start_fails(&prefix.url, aws).await;
    assert!(matches!(e, StartError::StoreDenied { .. }), "{e:?}");
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains(&wrong), "{shown}");
    if let Some(right) = right.filter(|r| !r.is_empty()) {
        assert!(!shown.contains(&right), "{shown}");
    }
    prefix.finish(&[]).await;
}

/// Needs no S3: nobody listens on the endpoint.
#[tokio::test]
async fn an_unreachable_endpoint_fails_the_start() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let aws = BTreeMap::from([
        (
            "AWS_ENDPOINT_URL".to_string(),
            format!("http://127.0.0.1:{closed}"),
        ),
        ("AWS_ACCESS_KEY_ID".into(), "ferry".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "ferrysecret".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ALLOW_HTTP".into(), "true".into()),
    ]);
    let e = start_fails("s3://ferry/unreachable", aws).await;
    assert!(matches!(e, StartError::StoreUnreachable { .. }), "{e:?}");
}

/// Needs no S3 either: URLs are checked before anything is opened.
#[tokio::test]
async fn bad_urls_fail_the_start_without_showing_a_password() {
    for (database, store, want) in [
        (Some("mysql://ferry:pw-mysql@db/ferry"), None, "database"),
        (Some("sqlite:"), None, "database"),
        (None, Some("s3://"), "store"),
        (None, Some("file:"), "store"),
        (None, Some("ftp://host/x"), "store"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ferry_server::Config::new(dir.path(), "127.0.0.1:0".parse().unwrap());
        config.database = database.map(Into::into);
        config.store = store.map(Into::into);
        let e = Server::start(config).await.unwrap_err();
        match (&e, want) {
            (StartError::DatabaseUrl(_), "database") | (StartError::StoreUrl(_), "store") => {}
            _ => panic!("{database:?} {store:?}: {e:?}"),
        }
        assert!(!format!("{e} {e:?}").contains("pw-mysql"), "{e}");
        // Refused before the data directory was touched.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{e}");
    }
}

/// Runs `ferry-server serve …` and returns the child with its first stdout line.
fn spawn_serve(args: &[&str], env: &[(&str, &str)]) -> (std::process::Child, String) {
    let mut child = Command::new(SERVER)
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line)
}

#[tokio::test]
async fn the_binary_serves_from_s3_and_refuses_a_bad_store() {
    let Some(base) = s3_base() else { return };
    let prefix = Prefix::new(&base).await;
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();
    let listen = ["--listen", "127.0.0.1:0", "--open", "--data", d];

    let (mut child, line) = spawn_serve(&[&listen[..], &["--store", &prefix.url]].concat(), &[]);
    let base_url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {line:?}"))
        .to_string();
    let body = bytes(300_000, 105);
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base_url}/v1/uploads"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = blake3_hex(&body);
    let got = client
        .get(format!("{base_url}/v1/objects/{id}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], &body[..]);
    child.kill().unwrap();
    child.wait().unwrap();

    // A wrong secret: no address line, a non-zero exit, a message naming the store and
    // showing neither secret.
    let wrong = format!("wrong-secret-{}", uuid::Uuid::new_v4().simple());
    let (mut child, line) = spawn_serve(
        &[&listen[..], &["--store", &prefix.url]].concat(),
        &[("AWS_SECRET_ACCESS_KEY", &wrong)],
    );
    assert_eq!(line, "", "a server that cannot store must not listen");
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&prefix.url) && err.contains("access denied"),
        "{err}"
    );
    assert!(!err.contains(&wrong), "{err}");
    if let Ok(right) = std::env::var("AWS_SECRET_ACCESS_KEY")
        && !right.is_empty()
    {
        assert!(!err.contains(&right), "{err}");
    }

    prefix.finish(&[id]).await;
}

/// Needs no S3: a database nobody answers at is named, without its password.
#[test]
fn the_binary_names_an_unreachable_database_without_its_password() {
    let data = tempfile::tempdir().unwrap();
    let (mut child, line) = spawn_serve(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.path().to_str().unwrap(),
            "--database",
            "postgres://ferry:pw-in-url@127.0.0.1:1/ferry",
        ],
        &[],
    );
    assert_eq!(line, "", "a server without its database must not listen");
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("postgres://ferry:***@127.0.0.1:1/ferry"),
        "{err}"
    );
    assert!(!err.contains("pw-in-url"), "{err}");
}
