//! `kill -9` of a real engine process at random moments, then a restart: every resource ends
//! up on the server exactly once with its digest, and resumed uploads re-send little.
//! The seed is printed; `FERRY_TEST_SEED=N` reruns one.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use ferry_core::UrlBase;
use ferry_core::job::{JobState, NewJob, TxItem};
use ferry_faultproxy::{Fault, FaultProxy, Plan};
use ferry_store::{JobStore, Store};

const CHUNK: u64 = 64 << 10;

fn seed() -> u64 {
    std::env::var("FERRY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

async fn crash_and_resume(prefer: &str, seed_offset: u8) {
    let seed = seed();
    eprintln!("crash test ({prefer}) seed {seed} (FERRY_TEST_SEED={seed} reruns it)");
    let mut rng = seed | 1;
    let srv = server().await;
    let proxy = FaultProxy::start(srv.addr()).await.unwrap();
    // Slow enough that kills land mid-upload.
    proxy.set(Plan::always(Fault::Trickle {
        bytes_per_s: 3 << 20,
    }));
    let work = tempfile::tempdir().unwrap();
    let res_dir = work.path().join("res");
    std::fs::create_dir(&res_dir).unwrap();
    let db = work.path().join("ferry.db");
    let mut files = Vec::new();
    {
        let mut store = Store::open(&db).unwrap();
        store
            .set_destination_bases(
                EXT,
                &[UrlBase::parse(&format!("http://{}", proxy.addr())).unwrap()],
            )
            .unwrap();
        let mut items = Vec::new();
        for i in 0..10u8 {
            // Every file spans several chunks (creation carries no body, see the report).
            let size = CHUNK as usize + 1 + (next(&mut rng) % (6 * CHUNK)) as usize;
            let data = bytes(size, seed_offset.wrapping_add(i));
            let name = format!("r{i}");
            std::fs::write(res_dir.join(&name), &data).unwrap();
            items.push(TxItem::Create(NewJob {
                id: uuid::Uuid::now_v7(),
                resource_id: name,
                content_hash: hash(&data),
                destination: destination(proxy.addr()),
                metadata: BTreeMap::new(),
            }));
            files.push(data);
        }
        store.transaction(EXT, &items, 0).unwrap();
    }
    let total: u64 = files.iter().map(|f| f.len() as u64).sum();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_ferry-transfer-run"))
            .args(["--db", db.to_str().unwrap(), "--ext", EXT])
            .args(["--resource-dir", res_dir.to_str().unwrap()])
            .args(["--prefer", prefer, "--chunk-bytes", &CHUNK.to_string()])
            .args(["--concurrency", "3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let kills = 6;
    for _ in 0..kills {
        let mut child = run();
        let after_ms = 30 + next(&mut rng) % 400;
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let mut child = run();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "seed {seed}: final run exited {status}");

    let store = Store::open(&db).unwrap();
    let finished = store
        .fetch(EXT, ferry_core::job::Action::Acknowledge)
        .unwrap();
    assert_eq!(
        finished.len(),
        files.len(),
        "seed {seed}: every job finished"
    );
    for j in finished {
        assert_eq!(j.state, JobState::Succeeded, "seed {seed}: {j:?}");
    }
    for data in &files {
        assert_eq!(
            srv.object(&hex(data)).await.as_deref(),
            Some(data.as_slice()),
            "seed {seed}"
        );
        let r = srv.receipts(&hex(data)).await;
        assert_eq!(
            r["receipts"].as_array().unwrap().len(),
            1,
            "seed {seed}: uploaded once"
        );
    }
    let sent = proxy.stats().bytes_to_server;
    // Each kill may cost up to one chunk per transfer in flight (3), plus headers.
    let bound = total + (kills + 1) * 3 * CHUNK + (256 << 10);
    assert!(
        sent <= bound,
        "seed {seed}: sent {sent} for {total} (bound {bound})"
    );
    eprintln!("crash test ({prefer}): {total} bytes of files, {sent} bytes sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ietf_kill_9_at_random_points_then_resume() {
    crash_and_resume("ietf", 170).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_kill_9_at_random_points_then_resume() {
    crash_and_resume("tus", 190).await;
}
