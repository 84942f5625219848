//! `ferry-transfer-run`: runs the transfer engine over a Ferry state database until no job is
//! left to process, then exits. The daemon will embed the engine; this thin binary exists so
//! crash tests can `kill -9` a real process mid-upload, and for manual runs and benchmarks.
//!
//! Usage: `ferry-transfer-run --db PATH --ext NAME [--ext NAME…] [--resource-dir DIR]
//! [--prefer ietf|tus|plain] [--chunk-bytes N] [--concurrency N]`. Without `--resource-dir`
//! resources are found in the library index; with it, a resource id names a file in DIR.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use ferry_store::Store;
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
         [--prefer ietf|tus|plain] [--chunk-bytes N] [--concurrency N]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut db = None;
    let mut dir = None;
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
