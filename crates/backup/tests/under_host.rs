//! ferry-backup under the real extension host (ferry-host): manifest, consent, the protocol
//! served from the real store, the process launched and stopped by the host; jobs carried out
//! by the real transfer engine to a real ferry-server. The whole chain of issue 6's "show it".

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::job::{Action, JobState};
use ferry_extension::protocol::ProcessStatus;
use ferry_host::{CallOutcome, Grant, Host, HostConfig, Manifest, consent};
use ferry_library::{ScanOptions, scan};
use ferry_store::{JobStore, Store};
use ferry_transfer::{Engine, EngineConfig, SqliteSessionStore, StoreLocator};

const EXT: &str = "ferry-backup";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn the_example_manifest_is_valid_for_the_host() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ferry-backup.toml.example");
    let m = Manifest::load(&path).unwrap();
    assert_eq!(m.id, EXT);
    assert_eq!(m.config["server_url"], "https://backup.example.org");
}

#[test]
fn backs_up_a_library_under_the_real_host_and_a_reinstall_sends_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let srv_dir = tempfile::tempdir().unwrap();
    let (server, token) = rt.block_on(async {
        let token = ferry_server::create_token(srv_dir.path(), "t")
            .await
            .unwrap();
        let config = ferry_server::Config::new(srv_dir.path(), "127.0.0.1:0".parse().unwrap());
        (ferry_server::Server::start(config).await.unwrap(), token)
    });
    let base_url = server.base_url().trim_end_matches('/').to_owned();

    let lib = tempfile::tempdir().unwrap();
    let root = lib
        .path()
        .join("library")
        .canonicalize()
        .unwrap_or_else(|_| {
            std::fs::create_dir_all(lib.path().join("library")).unwrap();
            lib.path().join("library").canonicalize().unwrap()
        });
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../library/tests/fixtures/library");
    for f in ["plain", "raw", "live", "sidecars"] {
        copy_dir(&fixtures.join(f), &root.join(f));
    }

    // One "installation" of Ferry: state dir, store, extensions dir with the manifest.
    let run = |label: &str| -> (usize, usize, Vec<String>) {
        let state = tempfile::tempdir().unwrap();
        let ext_dir = state.path().join("extensions");
        let data_dir = state.path().join("state");
        std::fs::create_dir_all(&ext_dir).unwrap();
        std::fs::create_dir_all(&data_dir).unwrap();
        let mut store = Store::open(&data_dir.join("ferry.db")).unwrap();
        store.add_root(&root, 0).unwrap();
        scan(
            &mut store,
            std::slice::from_ref(&root),
            &ScanOptions::default(),
            &mut |_| {},
        )
        .unwrap();
        let token_file = state.path().join("token");
        std::fs::write(&token_file, &token).unwrap();
        let manifest_path: PathBuf = ext_dir.join(format!("{EXT}.toml"));
        std::fs::write(
            &manifest_path,
            format!(
                "id = {EXT:?}\nname = \"Backup\"\nexec = {exe:?}\ncapabilities = [\"upload\"]\n\
                 scope = \"library\"\ndestination_bases = [\"{base_url}/v1/\"]\njob_limit = 4\n\
                 [config]\nserver_url = {base_url:?}\ntoken_file = {tf:?}\n",
                exe = env!("CARGO_BIN_EXE_ferry-backup"),
                tf = token_file.to_str().unwrap(),
            ),
        )
        .unwrap();
        let m = Manifest::load(&manifest_path).unwrap();
        consent::enable(&mut store, &m, Grant::requested(&m), 1).unwrap();
        let store = Arc::new(Mutex::new(store));
        let host = Host::new(store.clone(), HostConfig::new(ext_dir, data_dir)).unwrap();
        let engine = Engine::new(
            store.clone(),
            Arc::new(SqliteSessionStore::new(store.clone())),
            Arc::new(StoreLocator(store.clone())),
            EngineConfig {
                extensions: vec![EXT.into()],
                ..EngineConfig::default()
            },
        )
        .unwrap();
        let mut calls = 0;
        loop {
            calls += 1;
            assert!(calls < 100, "{label}: no end in sight");
            let outcome = rt.block_on(host.call_now(EXT)).unwrap();
            let status = match &outcome {
                CallOutcome::Answered { status, .. } => *status,
                other => panic!("{label}: {other:?}"),
            };
            assert_ne!(status, ProcessStatus::Failure, "{label}: {outcome:?}");
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(120), engine.run_until_idle())
                    .await
                    .expect("transfers finish")
                    .unwrap()
            });
            let s = store.lock().unwrap();
            if status == ProcessStatus::Completed
                && s.fetch(EXT, Action::Acknowledge).unwrap().is_empty()
                && s.fetch(EXT, Action::Process).unwrap().is_empty()
            {
                break;
            }
        }
        let s = store.lock().unwrap();
        let receipts = s.receipts(1000, 0).unwrap();
        assert!(
            receipts.iter().all(|r| r.state == JobState::Succeeded),
            "{label}"
        );
        let hashes: Vec<String> = s
            .resources_under(&root)
            .unwrap()
            .iter()
            .map(|r| ferry_core::ContentHash(r.blake3).to_hex())
            .collect();
        (calls, receipts.len(), hashes)
    };

    let (calls, sent, hashes) = run("first install");
    assert!(calls > 1, "a job limit of 4 needs several calls");
    assert_eq!(sent, hashes.len(), "every resource sent once");
    // Everything is on the server.
    let stored: serde_json::Value = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{base_url}/v1/objects/check"))
            .header("authorization", format!("Bearer {token}"))
            .json(&serde_json::json!({ "blake3": hashes }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(stored["blake3"].as_array().unwrap().len(), hashes.len());

    // Ferry's state deleted and installed again: zero jobs, zero bytes sent.
    let (_, sent_again, _) = run("reinstall");
    assert_eq!(sent_again, 0);
    rt.block_on(server.shutdown());
}
