//! The Python example extension (extensions/python-example, standard library only) against
//! the Rust side: a real `python3` process over real pipes, served by the harness from a real
//! ferry-store file. Proves the protocol is language-neutral: the same rules hold (one job
//! per resource, an asset's resources in one transaction, progress kept across launches).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use ferry_core::UrlBase;
use ferry_core::job::{Action, Outcome};
use ferry_extension::protocol::*;
use ferry_extension::testing::{CallOptions, HostConfig, TestHost};
use ferry_library::{ScanOptions, scan};
use ferry_store::{JobStore, Store};

const EXT: &str = "python-example";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../extensions/python-example/ferry_example.py")
}

fn python() -> Command {
    let mut c = Command::new("python3");
    c.arg(script());
    c
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../library/tests/fixtures/library")
}

/// Plays Ferry's transfer engine: every job in `process` succeeds.
fn finish_all(store: &Arc<Mutex<Store>>) -> usize {
    let mut s = store.lock().unwrap();
    let jobs = s.fetch(EXT, Action::Process).unwrap();
    for j in &jobs {
        s.start(j.id, 1).unwrap();
        s.finish(
            j.id,
            Outcome::Succeeded {
                status: 201,
                headers: vec![],
            },
            2,
        )
        .unwrap();
    }
    jobs.len()
}

#[test]
fn python_extension_uploads_every_resource_once_keeping_assets_whole() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("library");
    for f in ["plain", "raw", "live"] {
        copy_dir(&fixtures().join(f), &root.join(f));
    }
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut store = Store::open(&state.join("ferry.db")).unwrap();
    let rescan = |store: &mut Store| {
        scan(
            store,
            std::slice::from_ref(&root),
            &ScanOptions::default(),
            &mut |_| {},
        )
        .unwrap();
    };
    rescan(&mut store);
    let store = Arc::new(Mutex::new(store));
    let base = "http://127.0.0.1:9/v1/";
    let mut host = TestHost::new(
        store.clone(),
        &state.join("kv.json"),
        HostConfig {
            extension_id: EXT.into(),
            config: serde_json::json!({
                "upload_url": "http://127.0.0.1:9/v1/uploads",
                "authorization": "Bearer t",
            }),
            scope: Scope::Library,
            destination_bases: vec![UrlBase::parse(base).unwrap()],
            job_limit: 3,
        },
    )
    .unwrap();

    // First launch: told to stop after a few host calls, it answers `processing`.
    {
        let mut l = host.launch(&mut python()).unwrap();
        let r = l
            .process_jobs_with(
                vec![CallReason::FirstRun],
                CallOptions {
                    time_budget_ms: 30_000,
                    will_terminate_after_calls: Some(2),
                    ..CallOptions::default()
                },
            )
            .unwrap();
        assert_eq!(r.status, ProcessStatus::Processing, "{r:?}");
        assert!(l.close().unwrap().success());
    }
    // Later launches: call, let the "transfers" finish, until caught up.
    let mut l = host.launch(&mut python()).unwrap();
    let mut calls = 0;
    loop {
        calls += 1;
        assert!(calls < 50, "no end in sight");
        let r = l.process_jobs(vec![CallReason::Continue]).unwrap();
        assert_ne!(r.status, ProcessStatus::Failure, "{r:?}");
        let sent = finish_all(&store);
        if r.status == ProcessStatus::Completed && sent == 0 {
            // One more call acknowledges what finished last.
            let r = l.process_jobs(vec![CallReason::JobsFinished]).unwrap();
            assert_eq!(r.status, ProcessStatus::Completed);
            if finish_all(&store) == 0 {
                break;
            }
        }
    }
    assert!(l.close().unwrap().success());

    let resources = store.lock().unwrap().resources_under(&root).unwrap();
    let mut tx_of: HashMap<String, usize> = HashMap::new();
    for (i, tx) in host.created.iter().enumerate() {
        for rid in tx {
            assert!(tx_of.insert(rid.clone(), i).is_none(), "{rid} got two jobs");
        }
    }
    assert_eq!(tx_of.len(), resources.len(), "every resource got a job");
    let mut txs_of_asset: HashMap<&str, HashSet<usize>> = HashMap::new();
    for r in &resources {
        txs_of_asset
            .entry(&r.asset_id)
            .or_default()
            .insert(tx_of[&r.id]);
    }
    assert!(
        txs_of_asset.values().all(|t| t.len() == 1),
        "{txs_of_asset:?}"
    );
    assert!(txs_of_asset.len() < resources.len(), "fixture has pairs");
    let unacked = store.lock().unwrap().unacknowledged_count(EXT).unwrap();
    assert_eq!(unacked, 0);

    // A new photo: the next launch creates exactly its job, from the change history.
    copy_dir(&fixtures().join("video"), &root.join("video"));
    rescan(&mut store.lock().unwrap());
    let new: HashSet<String> = store
        .lock()
        .unwrap()
        .resources_under(&root.join("video"))
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    host.created.clear();
    host.calls.clear();
    let mut l = host.launch(&mut python()).unwrap();
    let r = l.process_jobs(vec![CallReason::LibraryChanged]).unwrap();
    assert_ne!(r.status, ProcessStatus::Failure, "{r:?}");
    assert!(l.close().unwrap().success());
    let created: HashSet<String> = host.created.iter().flatten().cloned().collect();
    assert_eq!(created, new);
    assert!(host.calls.iter().any(|c| c == LIBRARY_CHANGES));
    assert!(!host.calls.iter().any(|c| c == LIBRARY_LIST_ASSETS));
}

/// What a host sends about a line of the extension's it could not read (an error answer with
/// `"id": null`), between calls and in the middle of one: the example logs it and carries on.
#[test]
fn an_error_answer_without_id_is_logged_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("library");
    copy_dir(&fixtures().join("plain"), &root.join("plain"));
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut store = Store::open(&state.join("ferry.db")).unwrap();
    scan(
        &mut store,
        std::slice::from_ref(&root),
        &ScanOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let store = Arc::new(Mutex::new(store));
    let mut host = TestHost::new(
        store.clone(),
        &state.join("kv.json"),
        HostConfig {
            extension_id: EXT.into(),
            config: serde_json::json!({"upload_url": "http://127.0.0.1:9/v1/uploads"}),
            scope: Scope::Library,
            destination_bases: vec![UrlBase::parse("http://127.0.0.1:9/v1/").unwrap()],
            job_limit: 100,
        },
    )
    .unwrap();
    let mut l = host.launch(&mut python()).unwrap();
    l.send_line(
        br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"not JSON","data":{"code":"parse_error"}}}
"#,
    )
    .unwrap();
    let r = l
        .process_jobs_with(
            vec![CallReason::FirstRun],
            CallOptions {
                time_budget_ms: 30_000,
                null_id_error_after_calls: Some(1),
                ..CallOptions::default()
            },
        )
        .unwrap();
    assert_eq!(r.status, ProcessStatus::Completed, "{r:?}");
    assert!(l.close().unwrap().success());
    // It did its work: a job per resource of plain/ (three photos).
    assert_eq!(store.lock().unwrap().unacknowledged_count(EXT).unwrap(), 3);
}
