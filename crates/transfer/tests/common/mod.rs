//! Shared test helpers: an in-process ferry-server, files with known bytes, jobs in a memory
//! job store, and an engine configured for fast retries.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::job::{ContentHash, Job, NewJob, TxItem};
use ferry_core::retry::RetryPolicy;
use ferry_core::{Destination, Method, UrlBase};
use ferry_server::{Config, Server, ServerHandle};
use ferry_store::{JobStore, MemoryJobStore};
use ferry_transfer::{
    Engine, EngineConfig, MapLocator, MemorySessionStore, Protocol, TransferConfig,
};
use uuid::Uuid;

pub const EXT: &str = "com.example.backup";

pub struct TestServer {
    pub handle: ServerHandle,
    pub dir: tempfile::TempDir,
}

pub async fn server() -> TestServer {
    server_with(|_| {}).await
}

pub async fn server_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    config.open = true;
    adjust(&mut config);
    let handle = Server::start(config).await.unwrap();
    TestServer { handle, dir }
}

impl TestServer {
    pub fn addr(&self) -> std::net::SocketAddr {
        self.handle.local_addr()
    }

    /// The stored object's bytes, or `None` if the server holds no such object.
    pub async fn object(&self, blake3_hex: &str) -> Option<Vec<u8>> {
        let r = reqwest::get(format!(
            "{}/v1/objects/{blake3_hex}",
            self.handle.base_url()
        ))
        .await
        .unwrap();
        if r.status() == 404 {
            return None;
        }
        assert_eq!(r.status(), 200);
        Some(r.bytes().await.unwrap().to_vec())
    }

    /// How many objects the server stores (files under its blob folder).
    pub fn object_count(&self) -> usize {
        fn count(d: &std::path::Path) -> usize {
            std::fs::read_dir(d).map_or(0, |entries| {
                entries
                    .flatten()
                    .map(|e| match e.file_type() {
                        Ok(t) if t.is_dir() => count(&e.path()),
                        Ok(t) if t.is_file() => 1,
                        _ => 0,
                    })
                    .sum()
            })
        }
        count(&self.dir.path().join("blobs"))
    }

    pub async fn receipts(&self, blake3_hex: &str) -> serde_json::Value {
        let r = reqwest::get(format!(
            "{}/v1/objects/{blake3_hex}/receipts",
            self.handle.base_url()
        ))
        .await
        .unwrap();
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
    }
}

/// Deterministic bytes that differ per `seed` (no dedup between tests).
pub fn bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed as u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

pub fn hash(data: &[u8]) -> ContentHash {
    ContentHash(*blake3::hash(data).as_bytes())
}

pub fn hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

pub fn destination(addr: std::net::SocketAddr) -> Destination {
    Destination::new(Method::Post, format!("http://{addr}/v1/uploads"))
}

/// Fast retries, short idle timeout, small chunks: what the tests want.
pub fn test_config(prefer: Option<Protocol>, chunk_bytes: u64) -> EngineConfig {
    EngineConfig {
        extensions: vec![EXT.to_string()],
        max_concurrent: 4,
        max_concurrent_per_origin: 4,
        retry: RetryPolicy {
            base_delay_ms: 5,
            max_delay_ms: 50,
            max_attempts: 6,
            ..RetryPolicy::default()
        },
        transfer: TransferConfig {
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(2),
            chunk_cap_bytes: chunk_bytes,
            prefer,
            ..TransferConfig::default()
        },
        poll_interval: Duration::from_millis(200),
        stop_grace: Duration::from_secs(20),
    }
}

/// A memory job store, the engine over it, and the locator jobs' files are registered in.
pub struct Rig {
    pub jobs: Arc<Mutex<MemoryJobStore>>,
    pub sessions: MemorySessionStore,
    pub locator: MapLocator,
    pub engine: Engine<MemoryJobStore>,
}

pub fn rig(config: EngineConfig, base: &str) -> Rig {
    let mut store = MemoryJobStore::new();
    for ext in &config.extensions {
        store
            .set_destination_bases(ext, &[UrlBase::parse(base).unwrap()])
            .unwrap();
    }
    let jobs = Arc::new(Mutex::new(store));
    let sessions = MemorySessionStore::new();
    let locator = MapLocator::default();
    let engine = Engine::new(
        jobs.clone(),
        Arc::new(sessions.clone()),
        Arc::new(locator.clone()),
        config,
    )
    .unwrap();
    Rig {
        jobs,
        sessions,
        locator,
        engine,
    }
}

impl Rig {
    /// Creates a job for `path` pinned to `pinned` (the file's hash at "creation").
    pub fn add_job(
        &self,
        ext: &str,
        path: &Path,
        pinned: ContentHash,
        dest: Destination,
        metadata: BTreeMap<String, String>,
    ) -> Uuid {
        let id = Uuid::now_v7();
        let resource_id = format!("res-{id}");
        self.locator.insert(resource_id.clone(), path);
        let item = TxItem::Create(NewJob {
            id,
            resource_id,
            content_hash: pinned,
            destination: dest,
            metadata,
        });
        self.jobs
            .lock()
            .unwrap()
            .transaction(ext, &[item], ferry_transfer::engine::now_ms())
            .unwrap();
        id
    }

    pub fn job(&self, id: Uuid) -> Job {
        self.jobs.lock().unwrap().job(id).unwrap().unwrap()
    }
}

pub fn header<'a>(job: &'a Job, name: &str) -> Option<&'a str> {
    job.response_headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Runs the engine until idle, bounded so a hang fails the test instead of the suite.
pub async fn run(rig: &Rig) -> ferry_transfer::RunReport {
    tokio::time::timeout(Duration::from_secs(60), rig.engine.run_until_idle())
        .await
        .expect("engine hung")
        .unwrap()
}
