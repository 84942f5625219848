//! Shared helpers for the HTTP tests: an in-process server on a loopback port and a client.
#![allow(dead_code)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ferry_server::{Config, Server, ServerHandle};
use sha2::{Digest, Sha256};

pub struct TestServer {
    pub handle: ServerHandle,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
    /// What it was started with: [`TestServer::restart`] starts it again the same way.
    pub config: Config,
}

pub async fn open_server() -> TestServer {
    server_with(|c| c.open = true).await
}

/// A server on a fresh data directory. Two variables run the whole suite on the scale-out
/// backends (`scripts/test` sets them for its second pass): `FERRY_TEST_SERVER_STORE=s3://…`
/// puts each server's objects under a prefix of its own (configured by the `AWS_*`
/// variables), `FERRY_TEST_SERVER_DATABASE=postgres://…/ADMIN_DB` gives each server a
/// database of its own. What they leave behind is the engines' folder's, removed with it.
pub async fn server_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    if let Some(base) = std::env::var("FERRY_TEST_SERVER_STORE")
        .ok()
        .filter(|u| !u.is_empty())
    {
        config.store = Some(format!(
            "{}/t-{}",
            base.trim_end_matches('/'),
            uuid::Uuid::new_v4().simple()
        ));
    }
    if let Some(admin) = std::env::var("FERRY_TEST_SERVER_DATABASE")
        .ok()
        .filter(|u| !u.is_empty())
    {
        config.database = Some(fresh_postgres_database(&admin).await);
    }
    adjust(&mut config);
    let handle = Server::start(config.clone()).await.unwrap();
    TestServer {
        handle,
        dir,
        client: reqwest::Client::new(),
        config,
    }
}

/// Creates a database of its own on the PostgreSQL that `admin` (a URL ending in a database
/// to connect to) reaches, and answers its URL.
pub async fn fresh_postgres_database(admin: &str) -> String {
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(admin)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
    format!("{base}/{name}")
}

impl TestServer {
    /// Shuts the server down and starts it again on the same data, database and store.
    pub async fn restart(self) -> TestServer {
        let TestServer {
            handle,
            dir,
            client,
            config,
        } = self;
        handle.shutdown().await;
        let handle = Server::start(config.clone()).await.unwrap();
        TestServer {
            handle,
            dir,
            client,
            config,
        }
    }

    /// The server's accounts, opened as `ferry-server user …` / `token …` open them.
    pub async fn accounts(&self) -> ferry_server::accounts::Accounts {
        ferry_server::accounts::Accounts::connect(self.dir.path(), self.config.database.as_deref())
            .await
            .unwrap()
    }

    /// A device token of the default user, made as `ferry-server token create` makes it.
    pub async fn create_token(&self, name: &str) -> String {
        ferry_server::create_token_in(self.dir.path(), self.config.database.as_deref(), name)
            .await
            .unwrap()
    }

    /// The flags that make a `ferry-server` command use this server's data, database and store.
    pub fn data_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = vec!["--data".into(), self.dir.path().into()];
        if let Some(d) = &self.config.database {
            args.extend(["--database".into(), d.into()]);
        }
        if let Some(st) = &self.config.store {
            args.extend(["--store".into(), st.into()]);
        }
        args
    }

    /// How many bytes of the append running on the upload at `location` the server holds:
    /// its partial file's length (local store), or what the append has received (S3 store).
    pub fn received(&self, location: &str) -> u64 {
        let id = location.rsplit('/').next().unwrap_or_default();
        match std::fs::metadata(self.dir.path().join("partial").join(id)) {
            Ok(m) => m.len(),
            Err(_) => self.handle.bytes_in_flight(id).unwrap_or(0),
        }
    }

    /// Every object id the server's store holds (its folder, or its S3 prefix).
    pub async fn stored_objects(&self) -> Vec<String> {
        self.handle.stored_object_ids().await.unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.handle.base_url(), path)
    }

    /// An IETF-draft append (interop version 8): the four headers every append repeats.
    pub fn ietf_append(
        &self,
        location: &str,
        offset: u64,
        complete: bool,
    ) -> reqwest::RequestBuilder {
        self.req("PATCH", location)
            .header("upload-draft-interop-version", "8")
            .header("content-type", "application/partial-upload")
            .header("upload-offset", offset.to_string())
            .header("upload-complete", if complete { "?1" } else { "?0" })
    }

    pub fn req(&self, method: &str, path: &str) -> reqwest::RequestBuilder {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        self.client.request(m, self.url(path))
    }

    pub async fn get_object(&self, id: &str) -> Vec<u8> {
        let r = self
            .req("GET", &format!("/v1/objects/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET object {id}");
        r.bytes().await.unwrap().to_vec()
    }
}

impl TestServer {
    /// `GET /v1/objects/{id}` with `token`, which must answer 200.
    pub async fn get_object_as(&self, token: &str, id: &str) -> Vec<u8> {
        let r = self
            .req("GET", &format!("/v1/objects/{id}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET object {id}");
        r.bytes().await.unwrap().to_vec()
    }
}

pub fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

pub fn blake3_hex(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

pub fn sha256_field(b: &[u8]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(b)))
}

pub fn b64(b: &[u8]) -> String {
    STANDARD.encode(b)
}

/// Deterministic bytes that differ per `seed`, so separate tests never dedup into each other.
pub fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed as usize * 7) % 251) as u8 ^ seed)
        .collect()
}

/// Asserts a completion response names exactly the object holding `data`.
/// Asserts an `application/problem+json` answer whose type ends with `suffix`.
pub async fn assert_problem(r: reqwest::Response, suffix: &str) {
    let problem: serde_json::Value = r.json().await.unwrap();
    let kind = problem["type"].as_str().unwrap_or_default();
    assert!(
        kind.ends_with(suffix),
        "problem type {kind:?}, want …{suffix}"
    );
}

pub fn assert_object_headers(r: &reqwest::Response, data: &[u8]) {
    assert_eq!(
        header(r, "ferry-object-id"),
        Some(blake3_hex(data).as_str())
    );
    assert_eq!(header(r, "ferry-blake3"), Some(blake3_hex(data).as_str()));
    assert_eq!(header(r, "repr-digest"), Some(sha256_field(data).as_str()));
    assert_eq!(
        header(r, "ferry-size-bytes"),
        Some(data.len().to_string().as_str())
    );
}
