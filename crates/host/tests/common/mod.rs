//! Shared set-up for the host's tests: a real SQLite store with a small library, manifests for
//! the Python zoo, and waiting on conditions with a deadline (never sleeping as a signal).
#![allow(dead_code)]

use ferry_core::ResourceType;
use ferry_host::{Grant, Host, HostConfig, Manifest, consent};
use ferry_store::Store;
use ferry_store::library::{HistoryLimits, ResourceRecord};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Lib {
    pub dir: tempfile::TempDir,
    pub store: Arc<Mutex<Store>>,
    pub root: PathBuf,
    pub ext_dir: PathBuf,
    pub data_dir: PathBuf,
    next: u32,
}

/// A resource as the tests know it.
#[derive(Debug, Clone)]
pub struct Res {
    pub asset_id: String,
    pub id: String,
    pub hash_hex: String,
}

pub fn now_ms() -> i64 {
    ferry_host::now_ms()
}

impl Lib {
    pub fn new() -> Lib {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("library");
        let ext_dir = dir.path().join("extensions");
        let data_dir = dir.path().join("state");
        std::fs::create_dir_all(&ext_dir).unwrap();
        std::fs::create_dir_all(&data_dir).unwrap();
        let mut store = Store::open(&data_dir.join("ferry.db")).unwrap();
        store.add_root(&root, now_ms()).unwrap();
        Lib {
            dir,
            store: Arc::new(Mutex::new(store)),
            root,
            ext_dir,
            data_dir,
            next: 0,
        }
    }

    /// Adds `n` one-resource assets in `folder` (relative to the root), in one change set.
    pub fn add(&mut self, folder: &str, n: u32) -> Vec<Res> {
        let mut out = Vec::new();
        let mut store = self.store.lock().unwrap();
        let mut w = store.index_writer().unwrap();
        for _ in 0..n {
            self.next += 1;
            let k = self.next;
            let dir = self.root.join(folder);
            let asset_id = format!("a{k:05}");
            let id = format!("r{k:05}");
            let blake3 = [k as u8; 32];
            w.put_asset(&asset_id, &dir, now_ms()).unwrap();
            w.put_resource(
                &ResourceRecord {
                    id: id.clone(),
                    asset_id: asset_id.clone(),
                    resource_type: ResourceType::Photo,
                    path: dir.join(format!("IMG_{k:05}.JPG")),
                    dev: 1,
                    ino: u64::from(k),
                    size: 1000 + u64::from(k),
                    mtime_ns: 1,
                    content_type: "image/jpeg".into(),
                    blake3,
                    metadata: Default::default(),
                    indexed_ms: now_ms(),
                },
                now_ms(),
            )
            .unwrap();
            out.push(Res {
                asset_id,
                id,
                hash_hex: ferry_core::ContentHash(blake3).to_hex(),
            });
        }
        w.commit(now_ms(), HistoryLimits::default()).unwrap();
        out
    }

    /// Deletes a resource (and so its one-resource asset).
    pub fn delete(&self, r: &Res) {
        let mut store = self.store.lock().unwrap();
        let mut w = store.index_writer().unwrap();
        w.delete_resource(&r.id).unwrap();
        w.commit(now_ms(), HistoryLimits::default()).unwrap();
    }

    /// Writes `<id>.toml` running the zoo in `mode`, plus `extra` TOML lines.
    pub fn install(&self, id: &str, mode: &str, extra: &str) -> Manifest {
        self.install_with(id, mode, &["upload"], extra)
    }

    /// [`Lib::install`] with these capabilities (`export`, `import`: protocol version 2).
    pub fn install_with(&self, id: &str, mode: &str, caps: &[&str], extra: &str) -> Manifest {
        let zoo = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/zoo/zoo.py");
        let text = format!(
            "id = {id:?}\nname = \"Zoo {mode}\"\nexec = {python:?}\nargs = [{zoo:?}, {mode:?}]\n\
             capabilities = {caps:?}\ndestination_bases = [\"http://127.0.0.1:9/up\"]\n{extra}\n",
            python = python(),
            zoo = zoo.to_str().unwrap(),
        );
        let path = self.ext_dir.join(format!("{id}.toml"));
        std::fs::write(&path, text).unwrap();
        Manifest::load(&path).unwrap()
    }

    pub fn enable(&self, m: &Manifest) {
        consent::enable(
            &mut self.store.lock().unwrap(),
            m,
            Grant::requested(m),
            now_ms(),
        )
        .unwrap();
    }

    /// Short budgets and backoffs so misbehaviour is dealt with in seconds.
    pub fn config(&self) -> HostConfig {
        let mut c = HostConfig::new(self.ext_dir.clone(), self.data_dir.clone());
        c.will_terminate_grace_ms = 500;
        c.term_grace_ms = 500;
        c.exit_grace_ms = 1000;
        c.backoff.base_delay_ms = 200;
        c.backoff.max_delay_ms = 1000;
        c.poll_interval_ms = 200;
        c.max_concurrent_calls = 32;
        c
    }

    pub fn host(&self) -> Host {
        Host::new(self.store.clone(), self.config()).unwrap()
    }

    /// The extension's working folder (where the zoo writes its marker files).
    pub fn work_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("extensions").join(id)
    }
}

pub fn python() -> String {
    for p in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        if Path::new(p).is_file() {
            return p.to_owned();
        }
    }
    "python3".to_owned()
}

/// Polls `cond` until it holds, failing the test after `secs` seconds with `what`.
pub async fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if cond() {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a process is alive (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
