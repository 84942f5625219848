//! The test harness stands in for the host in the SDK's and extensions' tests, so it sends the
//! errors the host sends (docs/protocol.md section 7): a method Ferry cannot send with is
//! `transaction_rejected` / `bad_destination` at its item, and a line that is not JSON or not
//! JSON-RPC is answered (`parse_error` / `invalid_request`) up to `MAX_BAD_LINES` per launch.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use ferry_core::UrlBase;
use ferry_extension::protocol::*;
use ferry_extension::testing::{HarnessError, HostConfig, TestHost};
use ferry_library::{ScanOptions, scan};
use ferry_store::Store;
use serde_json::{Value, json};

/// A harness over a real store holding the fixture's `plain/` photos (three resources).
fn harness(dir: &Path) -> (TestHost, Vec<(String, String)>) {
    let root = dir.join("library/plain");
    std::fs::create_dir_all(&root).unwrap();
    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../library/tests/fixtures/library/plain");
    for e in std::fs::read_dir(fixtures).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), root.join(e.file_name())).unwrap();
    }
    let mut store = Store::open(&dir.join("ferry.db")).unwrap();
    scan(
        &mut store,
        &[dir.join("library")],
        &ScanOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let resources = store
        .resources_under(&dir.join("library"))
        .unwrap()
        .into_iter()
        .map(|r| (r.id, ferry_core::ContentHash(r.blake3).to_hex()))
        .collect();
    let host = TestHost::new(
        Arc::new(Mutex::new(store)),
        &dir.join("kv.json"),
        HostConfig {
            extension_id: "x".into(),
            config: json!({}),
            scope: Scope::Library,
            destination_bases: vec![UrlBase::parse("http://127.0.0.1:9/up").unwrap()],
            job_limit: 10,
        },
    )
    .unwrap();
    (host, resources)
}

#[test]
fn a_method_ferry_cannot_send_with_is_a_bad_destination_at_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, res) = harness(dir.path());
    let create = |(rid, hash): &(String, String), n: u8, method: Value| {
        json!({"op": "create", "id": format!("0190f5a0-0000-7000-8000-0000000000{n:02}"),
               "resource_id": rid, "content_hash": hash,
               "destination": {"method": method, "url": "http://127.0.0.1:9/up/x", "headers": []}})
    };
    let mut tx = |items: Vec<Value>| h.serve(JOBS_TRANSACTION, json!({"items": items}));
    let reason = |e: &RpcError| {
        assert_eq!(e.kind(), Some(ErrorCode::TransactionRejected), "{e:?}");
        (
            e.data_str("reason").unwrap().to_owned(),
            e.data_u64("index").unwrap(),
        )
    };
    tx(vec![create(&res[0], 1, json!("PUT"))]).unwrap();
    let e = tx(vec![
        create(&res[1], 2, json!("PUT")),
        create(&res[2], 3, json!("GET")),
    ])
    .unwrap_err();
    assert_eq!(reason(&e), ("bad_destination".into(), 1));
    // An earlier item breaking a job rule (an id already used) is named first.
    let e = tx(vec![
        create(&res[1], 1, json!("PUT")),
        create(&res[2], 3, json!("GET")),
    ])
    .unwrap_err();
    assert_eq!(reason(&e), ("job_exists".into(), 0));
    // A method that is not a string is the params' shape.
    let e = tx(vec![create(&res[2], 3, json!(7))]).unwrap_err();
    assert_eq!(e.kind(), Some(ErrorCode::InvalidParams), "{e:?}");
}

/// An extension that writes `argv[1]` bad lines in its `process_jobs` call, reading the answer
/// to each, then answers `completed` with those answers as its message.
const BAD_LINES: &str = r#"
import json, sys
def read():
    line = sys.stdin.readline()
    if not line:
        sys.exit(0)
    return json.loads(line)
def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
m = read()
send({"jsonrpc": "2.0", "id": m["id"], "result": {"protocol_version": 1}})
m = read()
lines = ["not JSON {{{", json.dumps({"jsonrpc": "1.0", "id": "old", "method": "jobs.limit"}),
         json.dumps({"jsonrpc": "2.0", "id": 9, "params": {}})]
answers = []
for i in range(int(sys.argv[1])):
    sys.stdout.write(lines[i % 3] + "\n")
    sys.stdout.write("\n")  # blank: ignored, not counted
    sys.stdout.flush()
    answers.append(read())
send({"jsonrpc": "2.0", "id": m["id"],
      "result": {"status": "completed", "message": json.dumps(answers)}})
read()
"#;

fn bad_lines(n: u32) -> Command {
    let mut c = Command::new("python3");
    c.args(["-c", BAD_LINES, &n.to_string()]);
    c
}

#[test]
fn bad_lines_are_answered_then_the_call_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, _) = harness(dir.path());
    let mut l = h.launch(&mut bad_lines(3)).unwrap();
    let r = l.process_jobs(vec![CallReason::FirstRun]).unwrap();
    let answers: Vec<Value> = serde_json::from_str(r.message.as_deref().unwrap()).unwrap();
    let got: Vec<(Value, Value)> = answers
        .iter()
        .map(|a| (a["id"].clone(), a["error"]["code"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            (json!(null), json!(-32700)),
            (json!("old"), json!(-32600)),
            (json!(9), json!(-32600)),
        ]
    );
    assert!(l.close().unwrap().success());
}

#[test]
fn one_bad_line_more_than_the_limit_is_a_violation() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, _) = harness(dir.path());
    let mut l = h.launch(&mut bad_lines(MAX_BAD_LINES)).unwrap();
    let r = l.process_jobs(vec![CallReason::FirstRun]).unwrap();
    let answers: Vec<Value> = serde_json::from_str(r.message.as_deref().unwrap()).unwrap();
    assert_eq!(answers.len(), MAX_BAD_LINES as usize);
    drop(l);
    let mut l = h.launch(&mut bad_lines(MAX_BAD_LINES + 1)).unwrap();
    match l.process_jobs(vec![CallReason::FirstRun]) {
        // The 17th line (a JSON-RPC 1.0 request) is not answered.
        Err(HarnessError::Protocol(e)) => assert!(e.contains("jsonrpc must be"), "{e}"),
        other => panic!("{other:?}"),
    }
}
