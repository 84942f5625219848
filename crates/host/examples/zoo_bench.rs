//! Throughput of a well-behaved extension alone vs beside the zoo of misbehaving ones (real
//! child processes, real SQLite). Run by `crates/host/bench/zoo.sh`; prints the ratio.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Lib, wait_until};
use ferry_host::Gate;
use ferry_store::JobStore;
use std::time::Instant;
use tokio::sync::watch;

const MODES: &[&str] = &[
    "crash_at_start",
    "crash_mid_transaction",
    "hang",
    "ignore_term",
    "garbage",
    "long_line",
    "spam",
    "flood_requests",
    "unknown_method",
    "over_limit",
    "bad_destination",
    "fork_linger",
];

/// Seconds for the good extension to create one job per resource.
async fn run_once(assets: u32, with_zoo: bool) -> f64 {
    let mut lib = Lib::new();
    lib.add("in", assets);
    let good = lib.install(
        "good",
        "good",
        "job_limit = 100000\ncall_budget_ms = 600000",
    );
    lib.enable(&good);
    if with_zoo {
        for mode in MODES {
            let m = lib.install(&mode.replace('_', "-"), mode, "call_budget_ms = 2000");
            lib.enable(&m);
        }
    }
    // The shipped backoff (the tests shorten it): a misbehaving extension is called again
    // after seconds, then minutes, not every few hundred milliseconds.
    let mut config = lib.config();
    config.backoff = ferry_host::HostConfig::new(Default::default(), Default::default()).backoff;
    let host = ferry_host::Host::new(lib.store.clone(), config).unwrap();
    let (_gate_tx, gate) = watch::channel(Gate::Allow);
    let (stop_tx, stop) = watch::channel(false);
    let started = Instant::now();
    let runner = {
        let host = host.clone();
        tokio::spawn(async move { host.run(gate, stop).await })
    };
    let store = lib.store.clone();
    wait_until(600, "the good extension to finish", || {
        store.lock().unwrap().unacknowledged_count("good").unwrap() == assets
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    stop_tx.send(true).unwrap();
    runner.await.unwrap();
    secs
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let assets: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5000);
    let rounds: u32 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let (mut alone, mut beside) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        alone.push(run_once(assets, false).await);
        beside.push(run_once(assets, true).await);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b) = (median(&mut alone), median(&mut beside));
    println!(
        "jobs created by the well-behaved extension: {assets} per run, {rounds} rounds (median)"
    );
    println!(
        "alone:          {a:.2} s  ({:.0} jobs/s)",
        f64::from(assets) / a
    );
    println!(
        "beside the zoo: {b:.2} s  ({:.0} jobs/s)",
        f64::from(assets) / b
    );
    println!(
        "throughput ratio beside/alone: {:.1}% (goal >= 95%)",
        100.0 * a / b
    );
}
