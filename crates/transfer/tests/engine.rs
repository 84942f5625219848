//! The engine loop over a job store: many jobs at once, fair turns between extensions, and a
//! retry budget that survives a restart (SQLite job store and sessions).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode};
use common::*;
use ferry_core::UrlBase;
use ferry_core::job::{JobState, NewJob, TxItem};
use ferry_store::{JobStore, Store};
use ferry_transfer::{Engine, MapLocator, SqliteSessionStore, UploadSessionStore};

#[tokio::test]
async fn many_jobs_of_two_extensions_all_arrive_once() {
    let srv = server().await;
    let files = tempfile::tempdir().unwrap();
    let mut config = test_config(None, 32 << 10);
    config.extensions = vec!["a".into(), "b".into()];
    config.max_concurrent = 3;
    config.max_concurrent_per_origin = 2;
    let rig = rig(config, &srv.handle.base_url());
    let mut all = Vec::new();
    for i in 0..24u8 {
        let data = bytes(1000 + i as usize * 7000, 200u8.wrapping_add(i));
        let path = write_file(files.path(), &format!("f{i}"), &data);
        let ext = if i % 2 == 0 { "a" } else { "b" };
        let id = rig.add_job(
            ext,
            &path,
            hash(&data),
            destination(srv.addr()),
            BTreeMap::new(),
        );
        all.push((id, data));
    }
    let report = run(&rig).await;
    assert_eq!(report.succeeded, 24);
    for (id, data) in all {
        assert_eq!(rig.job(id).state, JobState::Succeeded);
        assert_eq!(
            srv.object(&hex(&data)).await.as_deref(),
            Some(data.as_slice())
        );
        let r = srv.receipts(&hex(&data)).await;
        assert_eq!(r["receipts"].as_array().unwrap().len(), 1);
    }
}

/// A plain server that records the `ferry-metadata` of each upload in arrival order.
async fn recording_server() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let app = Router::new().fallback(move |method: Method, headers: HeaderMap, body: Body| {
        let s = s.clone();
        async move {
            let _ = axum::body::to_bytes(body, 1 << 20).await;
            if method == Method::OPTIONS {
                return StatusCode::NOT_IMPLEMENTED;
            }
            let m = headers
                .get("ferry-metadata")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            s.lock().unwrap().push(m);
            StatusCode::CREATED
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

#[tokio::test]
async fn extensions_take_turns() {
    let (addr, seen) = recording_server().await;
    let files = tempfile::tempdir().unwrap();
    let mut config = test_config(None, 1 << 20);
    config.extensions = vec!["a".into(), "b".into()];
    config.max_concurrent = 1;
    let rig = rig(config, &format!("http://{addr}"));
    // "a" queues six jobs before "b" queues two: "b" must not wait for all of "a".
    for (ext, n) in [("a", 6), ("b", 2)] {
        for i in 0..n {
            let data = bytes(100, i);
            let path = write_file(files.path(), &format!("{ext}{i}"), &data);
            let mut meta = BTreeMap::new();
            meta.insert("ext".to_string(), ext.to_string());
            rig.add_job(ext, &path, hash(&data), destination(addr), meta);
        }
    }
    let report = run(&rig).await;
    assert_eq!(report.succeeded, 8);
    let order: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|m| {
            if m.ends_with("YQ==") {
                "a".into()
            } else {
                "b".into()
            }
        })
        .collect();
    let first_b = order.iter().position(|e| e == "b").unwrap();
    assert!(
        first_b <= 1,
        "b waited behind {first_b} of a's jobs: {order:?}"
    );
}

#[tokio::test]
async fn retry_budget_survives_a_restart() {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let app = Router::new().fallback(move || {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            StatusCode::SERVICE_UNAVAILABLE
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let files = tempfile::tempdir().unwrap();
    let db = files.path().join("ferry.db");
    let data = bytes(500, 33);
    let path = write_file(files.path(), "f", &data);
    let locator = MapLocator::default();
    locator.insert("r1", &path);
    let mut config = test_config(None, 1 << 20);
    config.retry.max_attempts = 5;
    let job_id = uuid::Uuid::now_v7();
    {
        let mut store = Store::open(&db).unwrap();
        store
            .set_destination_bases(EXT, &[UrlBase::parse(&format!("http://{addr}")).unwrap()])
            .unwrap();
        let item = TxItem::Create(NewJob {
            id: job_id,
            resource_id: "r1".into(),
            content_hash: hash(&data),
            destination: destination(addr),
            metadata: BTreeMap::new(),
        });
        store.transaction(EXT, &[item], 0).unwrap();
    }
    // First run: stopped once two attempts have failed.
    {
        let store = Arc::new(Mutex::new(Store::open(&db).unwrap()));
        let sessions = Arc::new(SqliteSessionStore::new(store.clone()));
        let engine = Engine::new(
            store,
            sessions.clone(),
            Arc::new(locator.clone()),
            config.clone(),
        )
        .unwrap();
        let two_failed = async {
            loop {
                if sessions
                    .load(job_id)
                    .unwrap()
                    .is_some_and(|s| s.attempts.attempts >= 2)
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), engine.run(two_failed))
            .await
            .unwrap()
            .unwrap();
    }
    let before = count.load(Ordering::SeqCst);
    assert!(before >= 2);
    // "Restart": everything reopened from disk.
    let store = Arc::new(Mutex::new(Store::open(&db).unwrap()));
    assert_eq!(
        store.lock().unwrap().job(job_id).unwrap().unwrap().state,
        JobState::Pending
    );
    let sessions = Arc::new(SqliteSessionStore::new(store.clone()));
    let engine = Engine::new(store.clone(), sessions.clone(), Arc::new(locator), config).unwrap();
    tokio::time::timeout(Duration::from_secs(30), engine.run_until_idle())
        .await
        .unwrap()
        .unwrap();
    let job = store.lock().unwrap().job(job_id).unwrap().unwrap();
    assert_eq!((job.state, job.status), (JobState::Failed, Some(503)));
    assert_eq!(job.error.as_ref().map(|e| e.as_str()), Some("server_error"));
    let total = count.load(Ordering::SeqCst);
    // Five attempts in all (one more if the stop cut an attempt before it was recorded).
    assert!(
        (5..=6).contains(&total),
        "{total} attempts: the budget was reset"
    );
    assert_eq!(
        sessions.load(job_id).unwrap(),
        None,
        "a finished job leaves no session"
    );
}

#[tokio::test]
async fn bandwidth_cap_holds_across_concurrent_uploads() {
    let srv = server().await;
    let files = tempfile::tempdir().unwrap();
    let mut config = test_config(Some(ferry_transfer::Protocol::Ietf), 256 << 10);
    let rate = 2u64 << 20;
    config.transfer.max_bytes_per_s = Some(rate);
    let rig = rig(config, &srv.handle.base_url());
    let mut all = Vec::new();
    for i in 0..3u8 {
        let data = bytes(2 << 20, 230 + i);
        let path = write_file(files.path(), &format!("b{i}"), &data);
        let id = rig.add_job(
            EXT,
            &path,
            hash(&data),
            destination(srv.addr()),
            BTreeMap::new(),
        );
        all.push((id, data));
    }
    let started = std::time::Instant::now();
    let report = run(&rig).await;
    let elapsed = started.elapsed();
    assert_eq!(report.succeeded, 3);
    // 6 MiB at 2 MiB/s with one second of burst: at least two seconds.
    assert!(
        elapsed >= Duration::from_millis(1900),
        "cap not held: {elapsed:?}"
    );
    for (id, data) in all {
        assert_eq!(rig.job(id).state, JobState::Succeeded);
        assert_eq!(
            srv.object(&hex(&data)).await.as_deref(),
            Some(data.as_slice())
        );
    }
}

/// Stopping drains: the chunk in flight is finished and saved, no further one is sent, the job
/// stays pending, and the next run resumes from exactly there. (Abandoning the chunk instead
/// would leave the server holding part of it, past the saved offset.)
#[tokio::test]
async fn stop_finishes_the_chunk_in_flight_then_the_next_run_resumes() {
    const CHUNK: u64 = 256 << 10;
    let srv = server().await;
    let files = tempfile::tempdir().unwrap();
    let mut config = test_config(Some(ferry_transfer::Protocol::Ietf), CHUNK);
    // 512 KiB/s after a one-second burst: each later chunk is in flight for about half a second.
    config.transfer.max_bytes_per_s = Some(512 << 10);
    let rig = rig(config, &srv.handle.base_url());
    let data = bytes(2 << 20, 241);
    let path = write_file(files.path(), "big", &data);
    let id = rig.add_job(
        EXT,
        &path,
        hash(&data),
        destination(srv.addr()),
        BTreeMap::new(),
    );
    let sessions = rig.sessions.clone();
    let stop = async move {
        // Once two chunks are acknowledged the third is on its way: stop then.
        loop {
            if let Some(s) = sessions.load(id).unwrap()
                && s.offset_bytes >= 2 * CHUNK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let report = tokio::time::timeout(Duration::from_secs(60), rig.engine.run(stop))
        .await
        .expect("engine hung")
        .unwrap();
    assert_eq!(report.succeeded, 0);
    assert_eq!(rig.job(id).state, JobState::Pending);
    let session = rig.sessions.load(id).unwrap().expect("the session is kept");
    let saved = session.offset_bytes;
    assert!(
        saved >= 2 * CHUNK && saved < data.len() as u64,
        "saved {saved}"
    );
    assert_eq!(saved % CHUNK, 0, "a whole chunk was finished, not cut");
    let head = reqwest::Client::new()
        .head(session.upload_url.clone().unwrap())
        .header("upload-draft-interop-version", "8")
        .send()
        .await
        .unwrap();
    let on_server: u64 = head.headers()["upload-offset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(on_server, saved, "the server holds exactly what was saved");

    let report = run(&rig).await;
    assert_eq!(report.succeeded, 1);
    assert_eq!(rig.job(id).state, JobState::Succeeded);
    assert_eq!(
        srv.object(&hex(&data)).await.as_deref(),
        Some(data.as_slice())
    );
}

/// The device's policy limits a running engine: under a metered network's small-file
/// allowance only the small file goes (the large one waits, and a run that is not `forever`
/// ends without it); the allowance lifted, the large one goes, under the policy's rate cap.
#[tokio::test]
async fn policy_limits_hold_back_large_files_and_cap_the_rate() {
    let srv = server().await;
    let files = tempfile::tempdir().unwrap();
    let rig = rig(
        test_config(Some(ferry_transfer::Protocol::Ietf), 256 << 10),
        &srv.handle.base_url(),
    );
    let small = bytes(50_000, 240);
    let large = bytes(3 << 20, 241);
    let mut ids = Vec::new();
    for (name, data) in [("small", &small), ("large", &large)] {
        let path = write_file(files.path(), name, data);
        ids.push(rig.add_job(
            EXT,
            &path,
            hash(data),
            destination(srv.addr()),
            BTreeMap::new(),
        ));
    }
    rig.engine.set_policy_limits(None, Some(100_000));
    let report = run(&rig).await;
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert_eq!(rig.job(ids[0]).state, JobState::Succeeded);
    assert_eq!(rig.job(ids[1]).state, JobState::Registered, "never started");
    assert_eq!(srv.object(&hex(&large)).await, None);

    let rate = 1u64 << 20;
    rig.engine.set_policy_limits(Some(rate), None);
    let started = std::time::Instant::now();
    let report = run(&rig).await;
    let elapsed = started.elapsed();
    assert_eq!(report.succeeded, 1, "{report:?}");
    // 3 MiB at 1 MiB/s with one second of burst: at least two seconds.
    assert!(
        elapsed >= Duration::from_millis(1900),
        "policy cap not held: {elapsed:?}"
    );
    assert_eq!(
        srv.object(&hex(&large)).await.as_deref(),
        Some(large.as_slice())
    );
}
