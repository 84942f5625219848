//! ferry-backup end to end on real parts: real photos scanned into a real ferry-store file,
//! the `ferry-backup` process over real pipes (served by the SDK's test harness), the real
//! transfer engine carrying out its jobs, and a real ferry-server on 127.0.0.1 with a token.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::UrlBase;
use ferry_core::job::{Action, ErrorCode as JobErrorCode, JobState, Outcome};
use ferry_extension::protocol::{CallReason, ProcessStatus, Scope};
use ferry_extension::testing::{CallOptions, HostConfig, Launch, TestHost};
use ferry_library::{ScanOptions, scan};
use ferry_store::library::HistoryLimits;
use ferry_store::{JobStore, Store};
use ferry_transfer::{Engine, EngineConfig, SqliteSessionStore, StoreLocator};

const EXT: &str = "ferry-backup";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../library/tests/fixtures/library")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

struct Server {
    rt: tokio::runtime::Runtime,
    handle: Option<ferry_server::ServerHandle>,
    _dir: tempfile::TempDir,
    base_url: String,
    token: String,
}

impl Server {
    fn start() -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (handle, token) = rt.block_on(async {
            let token = ferry_server::create_token(dir.path(), "test")
                .await
                .unwrap();
            let config = ferry_server::Config::new(dir.path(), "127.0.0.1:0".parse().unwrap());
            (ferry_server::Server::start(config).await.unwrap(), token)
        });
        Server {
            base_url: handle.base_url(),
            rt,
            handle: Some(handle),
            _dir: dir,
            token,
        }
    }

    /// The subset of `hashes` the server stores, asked over HTTP like any client.
    fn stored(&self, hashes: &[String]) -> HashSet<String> {
        let url = format!("{}/v1/objects/check", self.base_url);
        self.rt.block_on(async {
            let r = reqwest::Client::new()
                .post(url)
                .header("authorization", format!("Bearer {}", self.token))
                .json(&serde_json::json!({ "blake3": hashes }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let v: serde_json::Value = r.json().await.unwrap();
            v["blake3"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h.as_str().unwrap().to_owned())
                .collect()
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.rt.block_on(h.shutdown());
        }
    }
}

/// Ferry's state for one "installation": the store and the kv file.
struct State {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    store: Arc<Mutex<Store>>,
}

fn install(root: &Path) -> State {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let store = Store::open(&path.join("ferry.db")).unwrap();
    let state = State {
        _dir: dir,
        dir: path,
        store: Arc::new(Mutex::new(store)),
    };
    rescan(&state, root, HistoryLimits::default());
    state
}

fn rescan(state: &State, root: &Path, history: HistoryLimits) {
    let opts = ScanOptions {
        history,
        ..ScanOptions::default()
    };
    scan(
        &mut state.store.lock().unwrap(),
        &[root.to_owned()],
        &opts,
        &mut |_| {},
    )
    .unwrap();
}

fn host(state: &State, server: &Server, job_limit: u32, token: &str) -> TestHost {
    let token_file = state.dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    TestHost::new(
        state.store.clone(),
        &state.dir.join("kv.json"),
        HostConfig {
            extension_id: EXT.into(),
            config: serde_json::json!({
                "server_url": server.base_url,
                "token_file": token_file,
            }),
            scope: Scope::Library,
            destination_bases: vec![UrlBase::parse(&server.base_url).unwrap()],
            job_limit,
        },
    )
    .unwrap()
}

fn backup_exe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry-backup"))
}

/// Runs the transfer engine over the store until no job is left to send.
fn transfer(state: &State, server: &Server) {
    let sessions = Arc::new(SqliteSessionStore::new(state.store.clone()));
    let locator = Arc::new(StoreLocator(state.store.clone()));
    let config = EngineConfig {
        extensions: vec![EXT.into()],
        ..EngineConfig::default()
    };
    let engine = Engine::new(state.store.clone(), sessions, locator, config).unwrap();
    server.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), engine.run_until_idle())
            .await
            .expect("transfers finish")
            .unwrap()
    });
}

fn jobs_in(state: &State, action: Action) -> usize {
    state
        .store
        .lock()
        .unwrap()
        .fetch(EXT, action)
        .unwrap()
        .len()
}

/// The host's loop, in small: call until `completed`, let the transfers run, repeat until
/// nothing is left to acknowledge. Returns the number of calls.
fn run_to_completion(l: &mut Launch<'_>, state: &State, server: &Server) -> usize {
    let mut calls = 0;
    let mut reasons = vec![CallReason::FirstRun];
    loop {
        calls += 1;
        assert!(calls < 100, "no end in sight");
        let r = l.process_jobs(reasons).unwrap();
        assert_ne!(r.status, ProcessStatus::Failure, "{r:?}");
        transfer(state, server);
        if r.status == ProcessStatus::Completed
            && jobs_in(state, Action::Acknowledge) == 0
            && jobs_in(state, Action::Process) == 0
        {
            return calls;
        }
        reasons = vec![CallReason::Continue, CallReason::JobsFinished];
    }
}

fn all_resources(state: &State, root: &Path) -> Vec<ferry_store::library::ResourceRecord> {
    state.store.lock().unwrap().resources_under(root).unwrap()
}

fn read_kv(state: &State) -> BTreeMap<String, String> {
    serde_json::from_slice(&std::fs::read(state.dir.join("kv.json")).unwrap()).unwrap()
}

fn library() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("library");
    for f in ["plain", "raw", "live", "video", "sidecars"] {
        copy_dir(&fixtures().join(f), &root.join(f));
    }
    (dir, root)
}

#[test]
fn backs_up_everything_then_a_reinstall_uploads_nothing() {
    let (_lib, root) = library();
    let server = Server::start();
    let state = install(&root);
    let resources = all_resources(&state, &root);
    assert!(resources.len() >= 10, "{} resources", resources.len());

    // A small limit: several calls, and pairs must wait for room rather than split.
    let mut h = host(&state, &server, 3, &server.token);
    let mut l = h.launch(&mut backup_exe()).unwrap();
    let calls = run_to_completion(&mut l, &state, &server);
    assert!(calls > 2, "a limit of 3 needs several calls, took {calls}");
    assert!(l.close().unwrap().success());

    let hashes: Vec<String> = resources.iter().map(|r| hex(&r.blake3)).collect();
    let stored = server.stored(&hashes);
    for h in &hashes {
        assert!(stored.contains(h), "{h} not on the server");
    }
    // Every asset's resources were created in one transaction.
    let mut tx_of: HashMap<String, usize> = HashMap::new();
    for (i, tx) in h.created.iter().enumerate() {
        for rid in tx {
            assert!(
                tx_of.insert(rid.clone(), i).is_none(),
                "{rid} created twice"
            );
        }
    }
    let mut by_asset: HashMap<&str, HashSet<usize>> = HashMap::new();
    for r in &resources {
        by_asset
            .entry(r.asset_id.as_str())
            .or_default()
            .insert(tx_of[&r.id]);
    }
    assert!(by_asset.values().all(|txs| txs.len() == 1), "{by_asset:?}");
    assert!(
        by_asset.len() < resources.len(),
        "the fixture must hold multi-resource assets"
    );
    // The server's object id is recorded for every resource.
    let kv = read_kv(&state);
    for r in &resources {
        let record: serde_json::Value =
            serde_json::from_str(&kv[&format!("asset/{}", r.asset_id)]).unwrap();
        assert_eq!(record[&r.id]["object_id"], hex(&r.blake3), "{record}");
    }
    // Receipts show each resource sent once.
    let receipts = state.store.lock().unwrap().receipts(1000, 0).unwrap();
    assert_eq!(receipts.len(), resources.len());
    assert!(receipts.iter().all(|r| r.state == JobState::Succeeded));

    // Ferry's state deleted: a new store (new ids), a new kv. Nothing is uploaded again.
    let fresh = install(&root);
    let mut h2 = host(&fresh, &server, 3, &server.token);
    let mut l2 = h2.launch(&mut backup_exe()).unwrap();
    run_to_completion(&mut l2, &fresh, &server);
    assert!(l2.close().unwrap().success());
    assert!(h2.created.is_empty(), "re-created {:?}", h2.created);
    assert!(
        fresh
            .store
            .lock()
            .unwrap()
            .receipts(10, 0)
            .unwrap()
            .is_empty()
    );
    let kv = read_kv(&fresh);
    for r in all_resources(&fresh, &root) {
        let record: serde_json::Value =
            serde_json::from_str(&kv[&format!("asset/{}", r.asset_id)]).unwrap();
        assert_eq!(record[&r.id]["hash"], hex(&r.blake3));
    }
}

fn hex(b: &[u8; 32]) -> String {
    ferry_core::ContentHash(*b).to_hex()
}

#[test]
fn expired_change_token_resynchronises_and_uploads_only_new_resources() {
    let (_lib, root) = library();
    let server = Server::start();
    let state = install(&root);
    let mut h = host(&state, &server, 50, &server.token);
    {
        let mut l = h.launch(&mut backup_exe()).unwrap();
        run_to_completion(&mut l, &state, &server);
        assert!(l.close().unwrap().success());
    }
    let before: HashSet<String> = all_resources(&state, &root)
        .into_iter()
        .map(|r| r.id)
        .collect();
    h.created.clear();
    h.calls.clear();
    // Two more change sets with a history of one: the saved token is now too old.
    let tight = HistoryLimits { max_change_sets: 1 };
    copy_dir(&fixtures().join("edited"), &root.join("edited"));
    rescan(&state, &root, tight);
    copy_dir(&fixtures().join("audio"), &root.join("audio"));
    rescan(&state, &root, tight);
    let new: HashSet<String> = all_resources(&state, &root)
        .into_iter()
        .map(|r| r.id)
        .filter(|id| !before.contains(id))
        .collect();
    assert!(!new.is_empty());

    let mut l = h.launch(&mut backup_exe()).unwrap();
    run_to_completion(&mut l, &state, &server);
    assert!(l.close().unwrap().success());
    assert!(h.calls.iter().any(|c| c == "library.list_assets"));
    let created: HashSet<String> = h.created.iter().flatten().cloned().collect();
    // New content only: the new resources whose bytes the server did not already have.
    let hashes: HashMap<String, [u8; 32]> = all_resources(&state, &root)
        .into_iter()
        .map(|r| (r.id, r.blake3))
        .collect();
    assert!(created.is_subset(&new), "{created:?} vs {new:?}");
    let stored = server.stored(&new.iter().map(|id| hex(&hashes[id])).collect::<Vec<_>>());
    assert_eq!(
        stored.len(),
        new.iter()
            .map(|id| hashes[id])
            .collect::<HashSet<_>>()
            .len()
    );
}

#[test]
fn failed_jobs_are_retried_once_if_transient_and_acknowledged_if_permanent() {
    let (_lib, root) = library();
    let server = Server::start();
    let state = install(&root);
    let mut h = host(&state, &server, 200, &server.token);
    let mut l = h.launch(&mut backup_exe()).unwrap();
    let r = l.process_jobs(vec![CallReason::FirstRun]).unwrap();
    assert_eq!(r.status, ProcessStatus::Completed, "{r:?}");
    // Fail two jobs by hand, as the transfer engine would: one transient, one permanent.
    let jobs = state
        .store
        .lock()
        .unwrap()
        .fetch(EXT, Action::Process)
        .unwrap();
    assert!(jobs.len() >= 2);
    let (transient, permanent) = (jobs[0].id, jobs[1].id);
    let fail = |id, error: JobErrorCode, status| {
        let mut s = state.store.lock().unwrap();
        s.start(id, 1).unwrap();
        s.finish(
            id,
            Outcome::Failed {
                status,
                headers: vec![],
                error,
            },
            2,
        )
        .unwrap();
    };
    fail(transient, JobErrorCode::NetworkLost, None);
    fail(permanent, JobErrorCode::ClientError, Some(400));
    let r = l.process_jobs(vec![CallReason::RetryAvailable]).unwrap();
    let m: serde_json::Value = serde_json::from_str(r.message.as_deref().unwrap()).unwrap();
    assert_eq!(
        (m["retried"].as_u64(), m["failed"].as_u64()),
        (Some(1), Some(1)),
        "{m}"
    );
    let job = |id| state.store.lock().unwrap().job(id).unwrap().unwrap();
    assert_eq!(
        (job(transient).state, job(transient).retries),
        (JobState::Registered, 1)
    );
    assert!(job(permanent).acknowledged);
    // Failing again: no second retry, it is acknowledged.
    fail(transient, JobErrorCode::NetworkLost, None);
    let r = l.process_jobs(vec![CallReason::JobsFinished]).unwrap();
    let m: serde_json::Value = serde_json::from_str(r.message.as_deref().unwrap()).unwrap();
    assert_eq!(
        (m["retried"].as_u64(), m["failed"].as_u64()),
        (Some(0), Some(1)),
        "{m}"
    );
    assert!(job(transient).acknowledged);
    assert!(l.close().unwrap().success());
}

#[test]
fn will_terminate_mid_call_then_the_next_call_finishes_without_duplicates() {
    let (_lib, root) = library();
    let server = Server::start();
    let state = install(&root);
    let mut h = host(&state, &server, 200, &server.token);
    let mut l = h.launch(&mut backup_exe()).unwrap();
    let r = l
        .process_jobs_with(
            vec![CallReason::FirstRun],
            CallOptions {
                time_budget_ms: 30_000,
                will_terminate_after_calls: Some(6),
                ..CallOptions::default()
            },
        )
        .unwrap();
    assert_eq!(r.status, ProcessStatus::Processing, "{r:?}");
    assert!(l.close().unwrap().success());
    // A fresh process continues where the first stopped.
    let mut l = h.launch(&mut backup_exe()).unwrap();
    run_to_completion(&mut l, &state, &server);
    assert!(l.close().unwrap().success());
    let created: Vec<String> = h.created.iter().flatten().cloned().collect();
    let unique: HashSet<&String> = created.iter().collect();
    assert_eq!(unique.len(), created.len(), "a resource got two jobs");
    assert_eq!(created.len(), all_resources(&state, &root).len());
}

#[test]
fn a_wrong_token_is_a_failure_with_a_reason() {
    let (_lib, root) = library();
    let server = Server::start();
    let state = install(&root);
    let mut h = host(&state, &server, 200, "not-a-token");
    let mut l = h.launch(&mut backup_exe()).unwrap();
    let r = l.process_jobs(vec![CallReason::FirstRun]).unwrap();
    assert_eq!(r.status, ProcessStatus::Failure);
    assert!(r.message.unwrap().contains("401"));
    assert!(l.host().created.is_empty());
    assert!(l.close().unwrap().success());
}

#[test]
fn killed_at_any_host_call_the_next_launch_loses_nothing_and_duplicates_nothing() {
    let (_lib, root) = library();
    let server = Server::start();
    let state = install(&root);
    // Room for the whole library: a relaunch that forgot what it created would create again.
    let mut h = host(&state, &server, 50, &server.token);
    // SIGKILL after the k-th host call, for every k in turn, each launch on top of what the
    // previous kills left (jobs created, kv half-written, a cursor mid-page).
    let mut kills = 0;
    for (i, k) in (1..=24).enumerate() {
        let mut l = h.launch(&mut backup_exe()).unwrap();
        let r = l.process_jobs_with(
            vec![CallReason::Continue],
            CallOptions {
                time_budget_ms: 30_000,
                kill_after_calls: Some(k),
                ..CallOptions::default()
            },
        );
        // A call that finished before the k-th host call is fine too.
        match r {
            Err(ferry_extension::testing::HarnessError::Killed) => kills += 1,
            Ok(r) => assert_ne!(r.status, ProcessStatus::Failure, "{r:?}"),
            Err(e) => panic!("kill at {k}: {e}"),
        }
        drop(l);
        // Mostly the jobs stay unsent, so the next launch meets them in flight.
        if i % 4 == 3 {
            transfer(&state, &server);
        }
    }
    assert!(kills >= 8, "only {kills} calls were cut");
    let mut l = h.launch(&mut backup_exe()).unwrap();
    run_to_completion(&mut l, &state, &server);
    assert!(l.close().unwrap().success());

    let resources = all_resources(&state, &root);
    let created: Vec<String> = h.created.iter().flatten().cloned().collect();
    let unique: HashSet<&String> = created.iter().collect();
    assert_eq!(unique.len(), created.len(), "a resource got two jobs");
    assert_eq!(created.len(), resources.len());
    let hashes: Vec<String> = resources.iter().map(|r| hex(&r.blake3)).collect();
    assert_eq!(server.stored(&hashes).len(), hashes.len());
}
