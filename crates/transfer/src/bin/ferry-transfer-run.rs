//! `ferry-transfer-run`: runs the transfer engine over a Ferry state database until no job is
//! left to process, then exits. The daemon will embed the engine; this thin binary exists so
//! crash tests can `kill -9` a real process mid-upload, and for manual runs and benchmarks.
//!
//! Usage: `ferry-transfer-run --db PATH --ext NAME [--ext NAME…] [--resource-dir DIR]
//! [--prefer ietf|tus|plain] [--chunk-bytes N] [--concurrency N] [--max-bytes-per-s N]
//! [--enqueue-to URL | --enqueue-only URL]`. Without
//! `--resource-dir` resources are found in the library index; with it, a resource id names a
//! file in DIR. `--enqueue-to URL` first creates one job per file in DIR (for the first
//! `--ext`, POST to URL), as an extension would: for benchmarks and manual runs;
//! `--enqueue-only URL` creates them and exits (a benchmark then times the upload alone).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use ferry_core::job::{ContentHash, NewJob, TxItem};
use ferry_core::{Destination, Method, UrlBase};
use ferry_store::{JobStore, Store};
use ferry_transfer::{
    Engine, EngineConfig, Protocol, ResourceLocator, SqliteSessionStore, StoreLocator,
};

#[derive(Debug)]
struct DirLocator(PathBuf);

impl ResourceLocator for DirLocator {
    fn locate(&self, resource_id: &str) -> Option<PathBuf> {
        // A resource id is a plain file name here; anything that could leave DIR is not one.
        if resource_id.is_empty() || resource_id.contains('/') || resource_id.starts_with('.') {
            return None;
        }
        Some(self.0.join(resource_id))
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("ferry-transfer-run: {why}");
    eprintln!(
        "usage: ferry-transfer-run --db PATH --ext NAME [--ext NAME...] [--resource-dir DIR] \
         [--prefer ietf|tus|plain] [--chunk-bytes N] [--concurrency N] [--max-bytes-per-s N] \
         [--enqueue-to URL | --enqueue-only URL]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut db = None;
    let mut dir = None;
    let mut enqueue_to: Option<String> = None;
    let mut enqueue_only = false;
    let mut config = EngineConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let Some(v) = args.next() else {
            return usage(&format!("{a} needs a value"));
        };
        match a.as_str() {
            "--db" => db = Some(PathBuf::from(v)),
            "--ext" => config.extensions.push(v),
            "--resource-dir" => dir = Some(PathBuf::from(v)),
            "--enqueue-to" => enqueue_to = Some(v),
            "--enqueue-only" => {
                enqueue_to = Some(v);
                enqueue_only = true;
            }
            "--prefer" => {
                config.transfer.prefer = Some(match v.as_str() {
                    "ietf" => Protocol::Ietf,
                    "tus" => Protocol::Tus,
                    "plain" => Protocol::Plain,
                    _ => return usage("--prefer is ietf, tus or plain"),
                })
            }
            "--chunk-bytes" => match v.parse() {
                Ok(n) => config.transfer.chunk_cap_bytes = n,
                Err(_) => return usage("--chunk-bytes is a number"),
            },
            "--concurrency" => match v.parse() {
                Ok(n) => {
                    config.max_concurrent = n;
                    config.max_concurrent_per_origin = n;
                }
                Err(_) => return usage("--concurrency is a number"),
            },
            // A bandwidth cap: slow enough that a torture's faults land mid-upload on any machine.
            "--max-bytes-per-s" => match v.parse() {
                Ok(n) if n > 0 => config.transfer.max_bytes_per_s = Some(n),
                _ => return usage("--max-bytes-per-s is a positive number"),
            },
            _ => return usage(&format!("unknown argument {a}")),
        }
    }
    let Some(db) = db else {
        return usage("--db is required");
    };
    if config.extensions.is_empty() {
        return usage("at least one --ext is required");
    }
    config.retry.base_delay_ms = 50;
    config.retry.max_delay_ms = 2_000;
    let store = match Store::open(&db) {
        Ok(s) => Arc::new(Mutex::new(s)),
        Err(e) => {
            eprintln!("ferry-transfer-run: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(url) = &enqueue_to {
        let Some(d) = &dir else {
            return usage("--enqueue-to needs --resource-dir");
        };
        let Ok(mut s) = store.lock() else {
            return ExitCode::FAILURE;
        };
        if let Err(e) = enqueue(&mut s, &config.extensions[0], d, url) {
            eprintln!("ferry-transfer-run: enqueue: {e}");
            return ExitCode::FAILURE;
        }
        if enqueue_only {
            return ExitCode::SUCCESS;
        }
    }
    let locator: Arc<dyn ResourceLocator> = match dir {
        Some(d) => Arc::new(DirLocator(d)),
        None => Arc::new(StoreLocator(store.clone())),
    };
    let sessions = Arc::new(SqliteSessionStore::new(store.clone()));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry-transfer-run: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let engine = Engine::new(store, sessions, locator, config)?;
        engine.run_until_idle().await
    });
    match result {
        Ok(r) => {
            println!(
                "succeeded {} failed {} retried {}",
                r.succeeded, r.failed, r.retried
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry-transfer-run: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One job per regular file in `dir`, in batches of the store's transaction limit.
fn enqueue(store: &mut Store, ext: &str, dir: &std::path::Path, url: &str) -> Result<(), String> {
    let base = UrlBase::parse(url).map_err(|e| e.to_string())?;
    store
        .set_destination_bases(ext, &[base])
        .map_err(|e| e.to_string())?;
    store
        .set_job_limit(ext, 1_000_000)
        .map_err(|e| e.to_string())?;
    let mut items = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let mut hasher = blake3::Hasher::new();
        let file = std::fs::File::open(e.path()).map_err(|err| format!("{name}: {err}"))?;
        hasher
            .update_reader(file)
            .map_err(|err| format!("{name}: {err}"))?;
        items.push(TxItem::Create(NewJob {
            id: ferry_store::new_job_id(),
            resource_id: name,
            content_hash: ContentHash(*hasher.finalize().as_bytes()),
            destination: Destination::new(Method::Post, url),
            metadata: Default::default(),
        }));
        if items.len() == ferry_core::job::MAX_TX_ITEMS {
            store
                .transaction(ext, &items, 0)
                .map_err(|e| e.to_string())?;
            items.clear();
        }
    }
    if !items.is_empty() {
        store
            .transaction(ext, &items, 0)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
