//! The SDK against a real host side: the probe extension runs as a child process over real
//! pipes, and the harness serves its calls from a real ferry-store file scanned from real
//! photos. Checks the lifecycle, paging helpers, the kv store, `will_terminate` seen mid-call,
//! and that bad input from the host is survived.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use ferry_extension::protocol::*;
use ferry_extension::testing::{CallOptions, HarnessError, HostConfig, TestHost};
use ferry_library::{ScanOptions, scan};
use ferry_store::Store;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
    store: Arc<Mutex<Store>>,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn fixture(folders: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("library");
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../library/tests/fixtures/library");
    for f in folders {
        copy_dir(&lib.join(f), &root.join(f));
    }
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut store = Store::open(&state.join("ferry.db")).unwrap();
    // Folder scopes are relative to the library's roots.
    std::fs::create_dir_all(&root).unwrap();
    store.add_root(&root.canonicalize().unwrap(), 0).unwrap();
    scan(
        &mut store,
        std::slice::from_ref(&root),
        &ScanOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    Fixture {
        root,
        state,
        store: Arc::new(Mutex::new(store)),
        _dir: dir,
    }
}

fn host(f: &Fixture, config: serde_json::Value, scope: Scope) -> TestHost {
    TestHost::new(
        f.store.clone(),
        &f.state.join("kv.json"),
        HostConfig {
            extension_id: "probe".into(),
            config,
            scope,
            destination_bases: vec![],
            job_limit: 7,
        },
    )
    .unwrap()
}

fn probe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry-extension-probe"))
}

fn message(r: &ProcessJobsResult) -> serde_json::Value {
    serde_json::from_str(r.message.as_deref().unwrap()).unwrap()
}

fn asset_count(f: &Fixture) -> u64 {
    f.store.lock().unwrap().library_counts().unwrap().assets
}

#[test]
fn lifecycle_paging_and_kv_across_launches() {
    let f = fixture(&["plain", "raw", "live"]);
    let assets = asset_count(&f);
    assert!(assets >= 5, "fixture has {assets} assets");
    let mut h = host(&f, serde_json::json!({"mode": "report"}), Scope::Library);

    // First launch: no saved token, so the probe lists every asset in pages of 2.
    let mut l = h.launch(&mut probe()).unwrap();
    let r = l.process_jobs(vec![CallReason::FirstRun]).unwrap();
    assert_eq!(r.status, ProcessStatus::Completed, "{r:?}");
    assert_eq!(message(&r)["listed"], assets);
    // A second call in the same launch reads the token it saved: nothing changed.
    let r = l.process_jobs(vec![CallReason::Continue]).unwrap();
    assert_eq!(message(&r)["changes"], 0, "{r:?}");
    assert_eq!(message(&r)["available"], 7);
    assert!(l.close().unwrap().success());

    // Add photos; a new launch sees exactly them through changes_all + assets.
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../library/tests/fixtures/library/video"),
        &f.root.join("video"),
    );
    let before = asset_count(&f);
    scan(
        &mut f.store.lock().unwrap(),
        std::slice::from_ref(&f.root),
        &ScanOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let added = asset_count(&f) - before;
    assert!(added > 0);
    let mut l = h.launch(&mut probe()).unwrap();
    let r = l.process_jobs(vec![CallReason::LibraryChanged]).unwrap();
    let m = message(&r);
    assert_eq!(m["changes"], added, "{m}");
    assert_eq!(m["assets"], added, "{m}");
    assert_eq!(m["missing"], 0, "{m}");
    assert!(l.close().unwrap().success());
}

#[test]
fn out_of_scope_assets_do_not_exist() {
    let f = fixture(&["plain", "raw"]);
    let mut h = host(
        &f,
        serde_json::json!({"mode": "report"}),
        Scope::Folders {
            folders: vec!["plain".into()],
        },
    );
    let mut l = h.launch(&mut probe()).unwrap();
    let r = l.process_jobs(vec![CallReason::FirstRun]).unwrap();
    // plain/ holds three single-photo assets; raw/ is outside the scope.
    assert_eq!(message(&r)["listed"], 3, "{r:?}");
    assert!(l.close().unwrap().success());
}

#[test]
fn will_terminate_is_seen_inside_process_jobs() {
    let f = fixture(&["plain"]);
    let mut h = host(
        &f,
        serde_json::json!({"mode": "until_terminate"}),
        Scope::Library,
    );
    let mut l = h.launch(&mut probe()).unwrap();
    let r = l
        .process_jobs_with(
            vec![CallReason::FirstRun],
            CallOptions {
                time_budget_ms: 30_000,
                will_terminate_after_calls: Some(5),
                ..CallOptions::default()
            },
        )
        .unwrap();
    assert_eq!(r.status, ProcessStatus::Processing);
    // The notification follows the fifth answer on the pipe, so the reader thread has set
    // the flag before the sixth answer arrives: the probe stops after five or six calls.
    let calls = message(&r)["calls"].as_u64().unwrap();
    assert!((5..=6).contains(&calls), "stopped after {calls} calls");
    // The flag belongs to that call: the next one runs until told again.
    let r = l
        .process_jobs_with(
            vec![CallReason::Continue],
            CallOptions {
                time_budget_ms: 30_000,
                will_terminate_after_calls: Some(3),
                ..CallOptions::default()
            },
        )
        .unwrap();
    let calls = message(&r)["calls"].as_u64().unwrap();
    assert!((3..=4).contains(&calls), "stopped after {calls} calls");
    assert!(l.close().unwrap().success());
}

#[test]
fn bad_input_from_the_host_is_survived() {
    let f = fixture(&["plain"]);
    let mut h = host(&f, serde_json::json!({"mode": "report"}), Scope::Library);
    let mut l = h.launch(&mut probe()).unwrap();
    l.send_line(b"{not json\n").unwrap();
    l.send_line(b"[1,2,3]\n").unwrap();
    l.send_line(b"\n").unwrap();
    let mut long = vec![b'x'; MAX_MESSAGE_BYTES + 10];
    long.push(b'\n');
    l.send_line(&long).unwrap();
    l.send_line(br#"{"jsonrpc":"2.0","method":"no_such_notification"}"#)
        .unwrap();
    l.send_line(b"\n").unwrap();
    // What a host answers to a line it could not read: an error with a null id.
    l.send_line(
        br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"not JSON","data":{"code":"parse_error"}}}
"#,
    )
    .unwrap();
    match l.request_with(
        "no_such_method",
        serde_json::json!({}),
        CallOptions::default(),
    ) {
        Err(HarnessError::Rpc(e)) => assert_eq!(e.kind(), Some(ErrorCode::MethodNotFound)),
        other => panic!("{other:?}"),
    }
    match l.request_with(
        PROCESS_JOBS,
        serde_json::json!({"reasons": 3}),
        CallOptions::default(),
    ) {
        Err(HarnessError::Rpc(e)) => assert_eq!(e.kind(), Some(ErrorCode::InvalidParams)),
        other => panic!("{other:?}"),
    }
    // Still working after all that.
    let r = l.process_jobs(vec![CallReason::FirstRun]).unwrap();
    assert_eq!(message(&r)["listed"], 3, "{r:?}");
    assert!(l.close().unwrap().success());
}

/// An error answer with a null id arriving while the extension waits on its own call is not
/// taken for that call's answer: it is logged and skipped, and the call completes.
#[test]
fn an_error_answer_without_id_mid_call_is_skipped() {
    let f = fixture(&["plain"]);
    let mut h = host(&f, serde_json::json!({"mode": "report"}), Scope::Library);
    let mut l = h.launch(&mut probe()).unwrap();
    for after in 1..=3 {
        let r = l
            .process_jobs_with(
                vec![CallReason::FirstRun],
                CallOptions {
                    time_budget_ms: 30_000,
                    null_id_error_after_calls: Some(after),
                    ..CallOptions::default()
                },
            )
            .unwrap();
        assert_eq!(r.status, ProcessStatus::Completed, "{r:?}");
    }
    assert!(l.close().unwrap().success());
}

#[test]
fn a_refused_initialize_is_reported_and_the_process_exits() {
    let f = fixture(&["plain"]);
    let mut h = host(&f, serde_json::json!({"mode": "fail_init"}), Scope::Library);
    match h.launch(&mut probe()) {
        Err(HarnessError::Rpc(e)) => assert!(e.message.contains("configured to fail"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rate_limited_calls_are_repeated_after_the_hosts_delay() {
    let f = fixture(&["plain"]);
    let mut h = host(&f, serde_json::json!({"mode": "report"}), Scope::Library);
    h.rate_limit_next = 3;
    let mut l = h.launch(&mut probe()).unwrap();
    let r = l.process_jobs(vec![CallReason::FirstRun]).unwrap();
    assert_eq!(r.status, ProcessStatus::Completed, "{r:?}");
    assert_eq!(message(&r)["listed"], 3, "{r:?}");
    assert!(l.close().unwrap().success());
    // The first call (kv.get) was answered `rate_limited` three times, then served.
    assert_eq!(h.calls[..4], ["kv.get"; 4]);
    // More than the SDK's patience: the error reaches the extension, classified transient.
    h.rate_limit_next = ferry_extension::RATE_LIMIT_RETRIES + 1;
    let mut l = h.launch(&mut probe()).unwrap();
    let r = l.process_jobs(vec![CallReason::FirstRun]).unwrap();
    assert_eq!(r.status, ProcessStatus::Processing, "{r:?}");
    let error = message(&r)["error"].as_str().unwrap().to_owned();
    assert!(error.contains("too many calls"), "{error}");
    assert!(l.close().unwrap().success());
}
