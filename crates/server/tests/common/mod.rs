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
}

pub async fn open_server() -> TestServer {
    server_with(|c| c.open = true).await
}

pub async fn server_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    adjust(&mut config);
    let handle = Server::start(config).await.unwrap();
    TestServer {
        handle,
        dir,
        client: reqwest::Client::new(),
    }
}

impl TestServer {
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
