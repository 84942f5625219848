//! Every error the host sends, as docs/protocol.md section 7 says, on real parts (Python zoo
//! extensions as child processes, a real SQLite store): a method Ferry cannot send with is
//! `transaction_rejected` / `bad_destination` at its item, a line that is not JSON is answered
//! `parse_error` with a null id, one that is not JSON-RPC `invalid_request`, and the call goes
//! on; an extension that writes nothing but garbage is stopped as a violation and backed off.

mod common;

use common::{Lib, alive, wait_until};
use ferry_core::job::{Action, ErrorCode as JobError, JobState, NewJob, Outcome, TxItem};
use ferry_core::{ContentHash, Destination, Method};
use ferry_extension::protocol::{self as p, ErrorCode, ProcessStatus, Scope};
use ferry_host::serve::{Context, ScopeFilter, handle};
use ferry_host::{CallFailure, CallOutcome, ExtensionState, Gate};
use ferry_store::JobStore;
use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

fn job_id(n: u128) -> Uuid {
    Uuid::from_u128(0x0190f5a0_0000_7000_8000_000000000000 + n)
}

/// The message of a call answered `completed`, as JSON.
fn completed(outcome: &CallOutcome) -> Value {
    match outcome {
        CallOutcome::Answered {
            status: ProcessStatus::Completed,
            message: Some(m),
        } => serde_json::from_str(m).unwrap(),
        other => panic!("not completed: {other:?}"),
    }
}

/// Makes a job of `ext` for `r` and finishes it with `outcome`.
fn finished_job(lib: &Lib, ext: &str, r: &common::Res, n: u128, outcome: Outcome) -> Uuid {
    let mut s = lib.store.lock().unwrap();
    let id = job_id(n);
    let item = TxItem::Create(NewJob {
        id,
        resource_id: r.id.clone(),
        content_hash: ContentHash::from_hex(&r.hash_hex).unwrap(),
        destination: Destination::new(Method::Put, format!("http://127.0.0.1:9/up/{n}")),
        metadata: Default::default(),
    });
    s.transaction(ext, &[item], common::now_ms()).unwrap();
    s.start(id, common::now_ms()).unwrap();
    s.finish(id, outcome, common::now_ms()).unwrap();
    id
}

/// (a) A destination with method GET (or DELETE) is a broken destination rule, refused with
/// the item's index like any other, in a create and in a retry; nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_ferry_cannot_send_with_is_rejected_as_a_bad_destination() {
    let mut lib = Lib::new();
    let res = lib.add("in", 4);
    let (failed, done) = (job_id(1), job_id(2));
    let m = lib.install(
        "bad-method",
        "bad_method",
        &format!("[config]\nfailed_job = \"{failed}\"\ndone_job = \"{done}\""),
    );
    lib.enable(&m);
    let failure = Outcome::Failed {
        status: Some(503),
        headers: vec![],
        error: JobError::ServerError,
    };
    finished_job(&lib, "bad-method", &res[2], 1, failure);
    let success = Outcome::Succeeded {
        status: 201,
        headers: vec![],
    };
    finished_job(&lib, "bad-method", &res[3], 2, success);

    let host = lib.host();
    let m = completed(&host.call_now("bad-method").await.unwrap());
    let results = &m["results"];
    assert_eq!(
        results["create"],
        json!({"code": -32003, "name": "transaction_rejected", "reason": "bad_destination",
               "index": 1, "job": m["ids"][1]}),
        "{m}"
    );
    assert_eq!(
        results["retry"],
        json!({"code": -32003, "name": "transaction_rejected", "reason": "bad_destination",
               "index": 1, "job": failed.to_string()}),
        "{m}"
    );
    // A method that is not a string at all is the params' shape: invalid params.
    assert_eq!(results["not_a_string"]["code"], -32602, "{m}");
    assert_eq!(results["not_a_string"]["name"], "invalid_params", "{m}");

    // All or nothing: no job was created, retried or acknowledged.
    let s = lib.store.lock().unwrap();
    assert!(s.fetch("bad-method", Action::Process).unwrap().is_empty());
    assert_eq!(s.job(failed).unwrap().unwrap().state, JobState::Failed);
    assert_eq!(s.job(failed).unwrap().unwrap().retries, 0);
    assert!(!s.job(done).unwrap().unwrap().acknowledged);
    assert_eq!(s.unacknowledged_count("bad-method").unwrap(), 2);
}

/// The rejection names the first offending item, whichever rule it breaks: the job store's
/// rules (checked after Ferry's own) still win for an earlier item, and a bad method wins
/// over a later item's trouble.
#[test]
fn a_bad_method_is_named_at_its_place_among_the_other_rules() {
    let mut lib = Lib::new();
    let res = lib.add("in", 3);
    let m = lib.install("probe", "good", "");
    lib.enable(&m);
    let ctx = Context {
        extension: "probe".into(),
        scope: ScopeFilter::new(&Scope::Library, &[lib.root.clone()]),
        store: lib.store.clone(),
    };
    let create = |r: &common::Res, n: u128, method: &str| {
        json!({"op": "create", "id": job_id(n), "resource_id": r.id, "content_hash": r.hash_hex,
               "destination": {"method": method, "url": format!("http://127.0.0.1:9/up/{n}"),
                               "headers": []}})
    };
    let tx = |items: Vec<Value>| handle(&ctx, p::JOBS_TRANSACTION, json!({"items": items}));
    let rejection = |e: &ferry_extension::protocol::RpcError| {
        assert_eq!(e.kind(), Some(ErrorCode::TransactionRejected), "{e:?}");
        assert_eq!(e.code, -32003);
        (
            e.data_str("reason").unwrap().to_owned(),
            e.data_u64("index").unwrap(),
        )
    };
    tx(vec![create(&res[0], 1, "PUT")]).unwrap();

    let e = tx(vec![create(&res[1], 2, "PUT"), create(&res[2], 3, "GET")]).unwrap_err();
    assert_eq!(rejection(&e), ("bad_destination".into(), 1));
    assert_eq!(e.data_str("job"), Some(job_id(3).to_string().as_str()));
    assert!(e.message.contains("\"GET\""), "{}", e.message);
    // Methods are exact, as HTTP's are: lower case is not PUT.
    let e = tx(vec![create(&res[1], 2, "put")]).unwrap_err();
    assert_eq!(rejection(&e), ("bad_destination".into(), 0));
    // An earlier item that breaks a job rule (an id already used) is the one named.
    let e = tx(vec![create(&res[1], 1, "PUT"), create(&res[2], 3, "GET")]).unwrap_err();
    assert_eq!(rejection(&e), ("job_exists".into(), 0));
    // A later one is not.
    let e = tx(vec![create(&res[2], 3, "GET"), create(&res[1], 1, "PUT")]).unwrap_err();
    assert_eq!(rejection(&e), ("bad_destination".into(), 0));
    // Nor a later resource Ferry does not know; an earlier one is named first.
    let unknown = common::Res {
        asset_id: "nope".into(),
        id: "nope".into(),
        hash_hex: res[0].hash_hex.clone(),
    };
    let e = tx(vec![
        create(&res[2], 3, "DELETE"),
        create(&unknown, 4, "PUT"),
    ])
    .unwrap_err();
    assert_eq!(rejection(&e), ("bad_destination".into(), 0));
    let e = tx(vec![create(&unknown, 4, "PUT"), create(&res[2], 3, "GET")]).unwrap_err();
    assert_eq!(rejection(&e), ("unknown_resource".into(), 0));
    // Malformed params that are not about the method stay invalid params.
    let mut bad_hash = create(&res[2], 3, "GET");
    bad_hash["content_hash"] = json!("zz");
    let e = tx(vec![bad_hash]).unwrap_err();
    assert_eq!(e.kind(), Some(ErrorCode::InvalidParams), "{e:?}");
    assert_eq!(e.code, -32602);

    // Nothing but the first transaction was written.
    let s = lib.store.lock().unwrap();
    assert_eq!(s.unacknowledged_count("probe").unwrap(), 1);
}

/// (b) One line that is not JSON, one JSON-RPC 1.0 request and one request without a
/// method: each is answered as JSON-RPC 2.0 says, and the call completes as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_are_answered_and_the_call_goes_on() {
    let mut lib = Lib::new();
    lib.add("in", 1);
    let m = lib.install("bad-lines", "bad_lines", "job_limit = 9");
    lib.enable(&m);
    let host = lib.host();
    let m = completed(&host.call_now("bad-lines").await.unwrap());

    let answers = m["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 3, "{m}");
    for (a, (id, code, name)) in answers.iter().zip([
        (json!(null), -32700, "parse_error"),
        (json!("old"), -32600, "invalid_request"),
        (json!("no-method"), -32600, "invalid_request"),
    ]) {
        assert_eq!(a["jsonrpc"], "2.0", "{a}");
        assert_eq!(a["id"], id, "{a}");
        assert_eq!(a["error"]["code"], code, "{a}");
        assert_eq!(a["error"]["data"]["code"], name, "{a}");
        assert!(a.get("result").is_none(), "{a}");
    }
    // The call went on: its next request was served.
    assert_eq!(m["limit"]["job_limit"], 9, "{m}");
    let s = host.status();
    let s = s.iter().find(|s| s.id == "bad-lines").unwrap();
    assert_eq!(s.last_outcome.as_deref(), Some("completed"), "{s:?}");
    assert_eq!(s.consecutive_failures, 0, "{s:?}");
}

/// (c) An extension that writes garbage forever gets its first `MAX_BAD_LINES` lines
/// answered, is then stopped as a protocol violation, and is backed off by the scheduler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_writing_garbage_forever_is_stopped_and_backed_off() {
    let mut lib = Lib::new();
    lib.add("in", 1);
    let m = lib.install("garbage", "garbage", "call_budget_ms = 600000");
    lib.enable(&m);
    let mut config = lib.config();
    // A backoff far longer than the test: once failed, it stays backed off while we look.
    config.backoff.base_delay_ms = 600_000;
    config.backoff.max_delay_ms = 600_000;
    let host = ferry_host::Host::new(lib.store.clone(), config).unwrap();
    let (_gate_tx, gate) = watch::channel(Gate::Allow);
    let (stop_tx, stop) = watch::channel(false);
    let runner = {
        let host = host.clone();
        tokio::spawn(async move { host.run(gate, stop).await })
    };
    let status = || {
        host.status()
            .into_iter()
            .find(|s| s.id == "garbage")
            .unwrap()
    };
    // Its call budget is ten minutes: only the bad-line limit can end it within the wait.
    wait_until(60, "the garbage writer to fail", || status().failures >= 1).await;
    let s = status();
    assert_eq!(
        s.last_outcome.as_deref(),
        Some("protocol_violation"),
        "{s:?}"
    );
    let error = s.last_error.clone().unwrap_or_default();
    assert!(
        error.contains(&format!("more than {} lines", p::MAX_BAD_LINES)),
        "{error}"
    );
    assert_eq!(s.state, ExtensionState::BackingOff, "{s:?}");
    assert!(
        s.backoff_until_ms.unwrap() > s.last_call_ms.unwrap() + 60_000,
        "{s:?}"
    );
    assert_eq!((s.calls, s.consecutive_failures), (1, 1), "{s:?}");

    // Exactly MAX_BAD_LINES lines were answered, each with the error its kind calls for.
    let work = lib.work_dir("garbage");
    let answers: Vec<Value> = std::fs::read_to_string(work.join("answers"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), p::MAX_BAD_LINES as usize, "{answers:?}");
    for (i, a) in answers.iter().enumerate() {
        let n = i + 1;
        let expected = if n % 2 == 1 {
            json!([null, -32700])
        } else {
            json!([n, -32600])
        };
        assert_eq!(*a, expected, "answer {n}");
    }
    let pid: u32 = std::fs::read_to_string(work.join("pid"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(!alive(pid), "the garbage writer is still running");
    let launches = std::fs::read_to_string(work.join("launches")).unwrap();
    assert_eq!(launches.lines().count(), 1, "relaunched during its backoff");

    stop_tx.send(true).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(60), runner)
        .await
        .expect("the scheduler stops")
        .unwrap();
}

/// A line over the size limit is still no line to answer: the launch stops at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_over_the_limit_is_still_a_violation() {
    let mut lib = Lib::new();
    lib.add("in", 1);
    let m = lib.install("long-line", "long_line", "call_budget_ms = 600000");
    lib.enable(&m);
    let host = lib.host();
    match host.call_now("long-line").await.unwrap() {
        CallOutcome::Failed {
            failure: CallFailure::ProtocolViolation { message },
        } => assert!(message.contains("over the limit"), "{message}"),
        other => panic!("{other:?}"),
    }
}
