//! The zoo: misbehaving extensions (real Python child processes) run beside a well-behaved
//! one under the real scheduler. Each misbehaviour is contained — stopped or refused, backed
//! off, visible in status — and the well-behaved extension still finishes its work.

mod common;

use common::{Lib, alive, wait_until};
use ferry_host::{ExtensionState, Gate};
use ferry_store::JobStore;
use tokio::sync::watch;

/// Zoo member, and what its status must show once it has been dealt with.
const ZOO: &[(&str, &str)] = &[
    ("crash_at_start", "crashed"),
    ("crash_mid_transaction", "crashed"),
    ("hang", "stopped"),
    ("ignore_term", "stopped"),
    ("garbage", "protocol_violation"),
    ("long_line", "protocol_violation"),
    ("spam", "protocol_violation"),
    ("flood_requests", "protocol_violation"),
    ("unknown_method", "failure"),
    ("over_limit", "failure"),
    ("out_of_scope", "failure"),
    ("bad_destination", "failure"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zoo_is_contained_and_a_good_extension_finishes_beside_it() {
    let mut lib = Lib::new();
    let inside = lib.add("in", 40);
    let outside = lib.add("out", 5);
    let total = inside.len() + outside.len();

    let good = lib.install("good", "good", "job_limit = 1000\ncall_budget_ms = 20000");
    lib.enable(&good);
    for (mode, _) in ZOO {
        let id = mode.replace('_', "-");
        let extra = match *mode {
            "over_limit" => "job_limit = 3\ncall_budget_ms = 2000".to_owned(),
            "out_of_scope" => format!(
                "scope = [\"in\"]\ncall_budget_ms = 2000\n[config]\nforeign_resource = {{ id = {:?}, content_hash = {:?} }}",
                outside[0].id, outside[0].hash_hex
            ),
            _ => "call_budget_ms = 2000".to_owned(),
        };
        let m = lib.install(&id, mode, &extra);
        lib.enable(&m);
    }
    let fork = lib.install("fork-linger", "fork_linger", "call_budget_ms = 2000");
    lib.enable(&fork);

    let host = lib.host();
    let (_gate_tx, gate) = watch::channel(Gate::Allow);
    let (stop_tx, stop) = watch::channel(false);
    let runner = {
        let host = host.clone();
        tokio::spawn(async move { host.run(gate, stop).await })
    };

    let store = lib.store.clone();
    let good_jobs = move || store.lock().unwrap().unacknowledged_count("good").unwrap() as usize;
    wait_until(120, "the good extension to create a job per resource, and every zoo member to fail at least once", || {
        let status = host.status();
        let good_done = status
            .iter()
            .any(|s| s.id == "good" && s.last_outcome.as_deref() == Some("completed"));
        let zoo_failed = ZOO.iter().all(|(mode, _)| {
            let id = mode.replace('_', "-");
            status.iter().any(|s| s.id == id && s.failures >= 1)
        });
        good_done && zoo_failed && good_jobs() == total
    })
    .await;

    let status = host.status();
    for (mode, label) in ZOO {
        let id = mode.replace('_', "-");
        let s = status.iter().find(|s| s.id == id).unwrap();
        assert_eq!(s.last_outcome.as_deref(), Some(*label), "{id}: {s:?}");
        assert!(s.consecutive_failures >= 1, "{id}: {s:?}");
        assert!(s.last_error.is_some(), "{id}: {s:?}");
        assert!(s.backoff_until_ms.is_some(), "{id}: {s:?}");
        assert_ne!(s.state, ExtensionState::Disabled, "{id}: {s:?}");
    }
    let reason = |id: &str| {
        status
            .iter()
            .find(|s| s.id == id)
            .and_then(|s| s.last_error.clone())
            .unwrap_or_default()
    };
    assert!(
        reason("unknown-method").contains("method_not_found"),
        "{}",
        reason("unknown-method")
    );
    assert!(
        reason("over-limit").contains("limit_exceeded"),
        "{}",
        reason("over-limit")
    );
    assert!(
        reason("out-of-scope").contains("unknown_resource"),
        "{}",
        reason("out-of-scope")
    );
    assert!(
        reason("bad-destination").contains("bad_destination"),
        "{}",
        reason("bad-destination")
    );
    assert!(
        reason("long-line").contains("over the limit"),
        "{}",
        reason("long-line")
    );

    // Nothing the zoo tried made a job; the good extension's jobs are exactly one per resource.
    {
        let s = lib.store.lock().unwrap();
        for (mode, _) in ZOO {
            let id = mode.replace('_', "-");
            let made = s.unacknowledged_count(&id).unwrap();
            // A transaction sent just before crashing may apply (it is whole or nothing);
            // every other rule breaker made nothing.
            let calls = status.iter().find(|s| s.id == id).map_or(0, |s| s.calls);
            let allowed = if *mode == "crash_mid_transaction" {
                5 * (calls as u32 + 1)
            } else {
                0
            };
            assert!(made <= allowed, "{id} made {made} jobs");
        }
        let mut resources: Vec<String> = s
            .fetch("good", ferry_core::job::Action::Process)
            .unwrap()
            .into_iter()
            .map(|j| j.resource_id)
            .collect();
        resources.sort();
        resources.dedup();
        assert_eq!(resources.len(), total);
    }

    // The spammer's log was cut at the limit.
    let log = ferry_host::session::log_path(&lib.data_dir, "spam");
    let len = std::fs::metadata(&log).unwrap().len();
    assert!(
        len <= host.config().max_log_bytes + 64,
        "log of {len} bytes"
    );

    // The child the fork-linger extension left behind was killed with its group.
    let pid_file = lib.work_dir("fork-linger").join("child.pid");
    wait_until(60, "fork-linger to have run", || pid_file.is_file()).await;
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until(60, "the lingering child to be gone", || !alive(pid)).await;

    stop_tx.send(true).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(60), runner)
        .await
        .expect("the scheduler stops")
        .unwrap();
}
