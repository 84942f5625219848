//! Consent and scope: nothing runs and no job exists for an extension that was not enabled;
//! disabling cancels its jobs and stops a running call at once; an asset outside the scope
//! never appears in any answer, whichever method is asked.

mod common;

use common::{Lib, wait_until};
use ferry_core::job::{Action, JobState, NewJob, TxItem};
use ferry_core::{ContentHash, Destination, Method};
use ferry_extension::protocol::{self as p, ErrorCode, Scope};
use ferry_host::serve::{Context, ScopeFilter, handle};
use ferry_host::{CallFailure, CallOutcome, Gate, HostError, consent};
use ferry_store::{JobFilter, JobStore, JobStoreError};
use serde_json::json;
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_ever_exists_for_an_extension_never_enabled() {
    let mut lib = Lib::new();
    let res = lib.add("in", 5);
    lib.install("never", "good", "");
    let good = lib.install("good", "good", "");
    lib.enable(&good);
    let host = lib.host();

    // The scheduler runs the enabled one to completion and never launches the other.
    let (_gate_tx, gate) = watch::channel(Gate::Allow);
    let (stop_tx, stop) = watch::channel(false);
    let runner = {
        let host = host.clone();
        tokio::spawn(async move { host.run(gate, stop).await })
    };
    wait_until(60, "the enabled extension to complete", || {
        host.status()
            .iter()
            .any(|s| s.id == "good" && s.last_outcome.as_deref() == Some("completed"))
    })
    .await;
    stop_tx.send(true).unwrap();
    runner.await.unwrap();
    assert!(lib.work_dir("good").join("launches").is_file());
    assert!(
        !lib.work_dir("never").join("launches").exists(),
        "never-enabled extension ran"
    );

    // Asked directly, the host refuses to call it.
    assert!(matches!(
        host.call_now("never").await,
        Err(HostError::NotEnabled(_))
    ));

    // Its requests, were it running, are refused; the store itself refuses it too (no bases).
    let ctx = Context {
        extension: "never".into(),
        scope: ScopeFilter::new(&Scope::Library, &[]),
        store: lib.store.clone(),
    };
    let item = json!({"items": [{"op": "create", "id": "0190f5a0-0000-7000-8000-000000000001",
        "resource_id": res[0].id, "content_hash": res[0].hash_hex,
        "destination": {"method": "PUT", "url": "http://127.0.0.1:9/up/x", "headers": []}}]});
    let e = handle(&ctx, p::JOBS_TRANSACTION, item).unwrap_err();
    assert_eq!(e.kind(), Some(ErrorCode::NotNow));
    let direct = lib.store.lock().unwrap().transaction(
        "never",
        &[create(&res[0].id, &res[0].hash_hex, 1)],
        common::now_ms(),
    );
    assert!(
        matches!(direct, Err(JobStoreError::Rejected(_))),
        "{direct:?}"
    );

    let s = lib.store.lock().unwrap();
    let filter = JobFilter {
        extension: Some("never".into()),
        ..JobFilter::default()
    };
    assert!(s.jobs(&filter).unwrap().is_empty());
    assert_eq!(s.unacknowledged_count("good").unwrap(), 5);
}

fn create(resource: &str, hash_hex: &str, n: u128) -> TxItem {
    TxItem::Create(NewJob {
        id: uuid::Uuid::from_u128(0x0190f5a0_0000_7000_8000_000000000000 + n),
        resource_id: resource.into(),
        content_hash: ContentHash::from_hex(hash_hex).unwrap(),
        destination: Destination::new(Method::Put, format!("http://127.0.0.1:9/up/{n}")),
        metadata: Default::default(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_cancels_registered_and_pending_jobs_and_stops_calls() {
    let mut lib = Lib::new();
    lib.add("in", 4);
    let good = lib.install("good", "good", "");
    lib.enable(&good);
    let host = lib.host();
    let outcome = host.call_now("good").await.unwrap();
    assert!(
        matches!(
            outcome,
            CallOutcome::Answered {
                status: p::ProcessStatus::Completed,
                ..
            }
        ),
        "{outcome:?}"
    );
    let jobs = lib
        .store
        .lock()
        .unwrap()
        .fetch("good", Action::Process)
        .unwrap();
    assert_eq!(jobs.len(), 4);
    lib.store
        .lock()
        .unwrap()
        .start(jobs[0].id, common::now_ms())
        .unwrap();

    let report = host.disable("good").unwrap();
    assert!(report.was_enabled);
    assert_eq!(report.cancelled_jobs.len(), 4);
    {
        let s = lib.store.lock().unwrap();
        for j in &jobs {
            let j = s.job(j.id).unwrap().unwrap();
            assert_eq!(j.state, JobState::Cancelled);
        }
        assert!(s.fetch("good", Action::Process).unwrap().is_empty());
        assert!(!consent::is_enabled(&s, "good").unwrap());
    }
    assert!(matches!(
        host.call_now("good").await,
        Err(HostError::NotEnabled(_))
    ));
    // Disabling again changes nothing and says so.
    let again = host.disable("good").unwrap();
    assert!(!again.was_enabled && again.cancelled_jobs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_stops_a_running_call_at_once() {
    let mut lib = Lib::new();
    lib.add("in", 1);
    // Ignores will_terminate and SIGTERM, with a budget far longer than the test waits.
    let m = lib.install("stubborn", "ignore_term", "call_budget_ms = 600000");
    lib.enable(&m);
    let host = lib.host();
    let call = {
        let host = host.clone();
        tokio::spawn(async move { host.call_now("stubborn").await })
    };
    let launches = lib.work_dir("stubborn").join("launches");
    wait_until(60, "the extension to start", || launches.is_file()).await;
    host.disable("stubborn").unwrap();
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(60), call)
        .await
        .expect("the call ends soon after disabling")
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome,
        CallOutcome::Failed {
            failure: CallFailure::Stopped {
                reason: p::TerminateReason::Disabled
            }
        }
    );
}

/// Every method, asked by an extension limited to `in/`: no answer names anything from
/// `out/` — not live assets, not deleted ones, not resources, not jobs made before the scope
/// was narrowed.
#[test]
fn out_of_scope_assets_never_appear_in_any_answer() {
    let mut lib = Lib::new();
    let token0 = lib.store.lock().unwrap().current_change_token().unwrap();
    let inside = lib.add("in", 6);
    let outside = lib.add("out", 6);
    let nested_out = lib.add("inside-not", 2); // a sibling whose name starts like "in"
    lib.delete(&inside[5]);
    lib.delete(&outside[5]);

    let m = lib.install("probe", "good", "");
    // First enabled for the whole library: it makes a job for an outside resource.
    lib.enable(&m);
    let whole = Context {
        extension: "probe".into(),
        scope: ScopeFilter::new(&Scope::Library, &[lib.root.clone()]),
        store: lib.store.clone(),
    };
    let tx = |r: &common::Res, n: u128| {
        json!({"items": [{"op": "create", "id": uuid::Uuid::from_u128(0x0190f5a0_0000_7000_8000_000000000000 + n),
            "resource_id": r.id, "content_hash": r.hash_hex,
            "destination": {"method": "PUT", "url": format!("http://127.0.0.1:9/up/{n}"), "headers": []}}]})
    };
    handle(&whole, p::JOBS_TRANSACTION, tx(&outside[0], 1)).unwrap();
    handle(&whole, p::JOBS_TRANSACTION, tx(&inside[0], 2)).unwrap();
    // Then the user narrows it to `in/`.
    consent::enable(
        &mut lib.store.lock().unwrap(),
        &m,
        ferry_host::Grant::requested(&m).with_folders(vec!["in".into()]),
        common::now_ms(),
    )
    .unwrap();
    let ctx = Context {
        extension: "probe".into(),
        scope: ScopeFilter::new(
            &Scope::Folders {
                folders: vec!["in".into()],
            },
            &[lib.root.clone()],
        ),
        store: lib.store.clone(),
    };

    let forbidden: Vec<String> = outside
        .iter()
        .chain(&nested_out)
        .flat_map(|r| [r.asset_id.clone(), r.id.clone()])
        .chain([uuid::Uuid::from_u128(0x0190f5a0_0000_7000_8000_000000000001).to_string()])
        .collect();
    let mut answers = Vec::new();
    let mut ask = |method: &str, params: serde_json::Value| {
        let r = handle(&ctx, method, params);
        let text = match &r {
            Ok(v) => v.to_string(),
            Err(e) => serde_json::to_string(e).unwrap(),
        };
        answers.push((method.to_owned(), text));
        r
    };
    let mut tried = std::collections::BTreeSet::new();
    let mut note = |m: &str| {
        tried.insert(m.to_owned());
    };

    note(p::LIBRARY_CURRENT_TOKEN);
    ask(p::LIBRARY_CURRENT_TOKEN, json!({})).unwrap();
    note(p::LIBRARY_CHANGES);
    let changes = ask(p::LIBRARY_CHANGES, json!({"since": token0})).unwrap();
    let changed: Vec<&str> = changes["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["asset_id"].as_str().unwrap())
        .collect();
    // Inside assets inserted (and the one deleted inside netted out); nothing from outside.
    assert_eq!(changed.len(), 5, "{changes}");
    // A deletion inside the scope is reported to a token taken before it.
    let mid = lib.store.lock().unwrap().current_change_token().unwrap();
    lib.delete(&inside[4]);
    let out_more = lib.add("out", 1);
    lib.delete(&out_more[0]);
    lib.delete(&outside[4]);
    let after = ask(p::LIBRARY_CHANGES, json!({"since": mid})).unwrap();
    let kinds: Vec<(String, String)> = after["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["asset_id"].as_str().unwrap().to_owned(),
                c["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![(inside[4].asset_id.clone(), "deleted".to_owned())]
    );

    note(p::LIBRARY_ASSETS);
    let all_ids: Vec<String> = inside
        .iter()
        .chain(&outside)
        .map(|r| r.asset_id.clone())
        .collect();
    let assets = handle(&ctx, p::LIBRARY_ASSETS, json!({"ids": all_ids})).unwrap();
    // `missing` echoes the ids asked for; an outside id is indistinguishable from a deleted one.
    let found: Vec<&str> = assets["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(found.len(), 4, "{assets}");
    for r in &outside {
        assert!(
            assets["missing"]
                .as_array()
                .unwrap()
                .contains(&json!(r.asset_id))
        );
    }
    ask(p::LIBRARY_ASSETS, json!({"ids": found})).unwrap();

    note(p::LIBRARY_LIST_ASSETS);
    let mut after_id: Option<String> = None;
    let mut listed = 0;
    loop {
        let mut q = json!({"limit": 1});
        if let Some(a) = &after_id {
            q["after"] = json!(a);
        }
        let page = ask(p::LIBRARY_LIST_ASSETS, q).unwrap();
        listed += page["assets"].as_array().unwrap().len();
        match page["next_after"].as_str() {
            Some(a) => after_id = Some(a.to_owned()),
            None => break,
        }
    }
    assert_eq!(listed, 4);

    note(p::JOBS_FETCH);
    for action in ["process", "retry", "acknowledge"] {
        ask(p::JOBS_FETCH, json!({"action": action})).unwrap();
    }
    let process = handle(&ctx, p::JOBS_FETCH, json!({"action": "process"})).unwrap();
    assert_eq!(process["jobs"].as_array().unwrap().len(), 1, "{process}");

    note(p::JOBS_TRANSACTION);
    let e = ask(p::JOBS_TRANSACTION, tx(&outside[1], 3)).unwrap_err();
    assert_eq!(e.data_str("reason"), Some("unknown_resource"));
    let e = ask(p::JOBS_TRANSACTION, tx(&nested_out[0], 4)).unwrap_err();
    assert_eq!(e.data_str("reason"), Some("unknown_resource"));
    let hidden = uuid::Uuid::from_u128(0x0190f5a0_0000_7000_8000_000000000001);
    let e = handle(
        &ctx,
        p::JOBS_TRANSACTION,
        json!({"items": [{"op": "cancel", "job": hidden}]}),
    )
    .unwrap_err();
    assert_eq!(e.data_str("reason"), Some("unknown_job"));
    ask(p::JOBS_TRANSACTION, tx(&inside[1], 5)).unwrap();

    note(p::JOBS_LIMIT);
    ask(p::JOBS_LIMIT, json!({})).unwrap();
    note(p::KV_SET);
    ask(p::KV_SET, json!({"key": "k", "value": "v"})).unwrap();
    note(p::KV_GET);
    ask(p::KV_GET, json!({"key": "k"})).unwrap();
    note(p::KV_LIST);
    ask(p::KV_LIST, json!({"prefix": ""})).unwrap();
    note(p::KV_SET_MANY);
    ask(
        p::KV_SET_MANY,
        json!({"entries": [{"key": "a", "value": "1"}, {"key": "k", "value": null}]}),
    )
    .unwrap();
    note(p::KV_GET_MANY);
    let many = ask(p::KV_GET_MANY, json!({"keys": ["a", "k", "b"]})).unwrap();
    assert_eq!(many, json!({"values": ["1", null, null]}));

    assert_eq!(tried.len(), p::HOST_METHODS.len(), "every method is tried");
    for (method, text) in &answers {
        for f in &forbidden {
            assert!(!text.contains(f.as_str()), "{method} answered {f}: {text}");
        }
    }
    // An unknown method is an error, not a crash.
    let e = handle(&ctx, "library.everything", json!({})).unwrap_err();
    assert_eq!(e.kind(), Some(ErrorCode::MethodNotFound));
}
