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

/// One crash scenario: how many resources, how big, how many kills and when.
struct Scenario {
    files: usize,
    /// Largest file; every file spans several chunks when `multi_chunk`.
    multi_chunk: bool,
    kills: u64,
    /// A kill lands this long after the start: `min_ms + rand % spread_ms`.
    min_ms: u64,
    spread_ms: u64,
    /// Trickle the proxy (bytes/s) so kills land mid-upload; `None`: full speed.
    trickle: Option<u64>,
}

async fn crash_and_resume(prefer: &str, seed_offset: u8) {
    crash_scenario(
        prefer,
        seed_offset,
        Scenario {
            files: 10,
            multi_chunk: true,
            kills: 6,
            min_ms: 30,
            spread_ms: 400,
            trickle: Some(3 << 20),
        },
    )
    .await
}

async fn crash_scenario(prefer: &str, seed_offset: u8, sc: Scenario) {
    let seed = seed();
    eprintln!("crash test ({prefer}) seed {seed} (FERRY_TEST_SEED={seed} reruns it)");
    let mut rng = seed | 1;
    let srv = server().await;
    let proxy = FaultProxy::start(srv.addr()).await.unwrap();
    // Slow enough that kills land mid-upload.
    if let Some(bytes_per_s) = sc.trickle {
        proxy.set(Plan::always(Fault::Trickle { bytes_per_s }));
    }
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
        // All jobs at once, as a backup of the whole library made with a raised job limit.
        store
            .set_job_limit(EXT, u32::try_from(sc.files).unwrap().max(200))
            .unwrap();
        let mut items = Vec::new();
        for i in 0..sc.files {
            // Multi-chunk: every file spans several chunks (creation carries no body). Else
            // mostly photos that fit one request (created with their body), some larger.
            let size = if sc.multi_chunk {
                CHUNK as usize + 1 + (next(&mut rng) % (6 * CHUNK)) as usize
            } else if next(&mut rng).is_multiple_of(10) {
                CHUNK as usize + (next(&mut rng) % (3 * CHUNK)) as usize
            } else {
                8 + (next(&mut rng) % CHUNK) as usize
            };
            let mut data = bytes(size, seed_offset.wrapping_add(i as u8));
            // Distinct contents, even for files of one size and seed.
            if size >= 8 {
                data[..8].copy_from_slice(&(i as u64).to_le_bytes());
            }
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
    let kills = sc.kills;
    for _ in 0..kills {
        let mut child = run();
        let after_ms = sc.min_ms + next(&mut rng) % sc.spread_ms;
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    // How far the killed runs got (the kills are meant to land mid-backup).
    let done_before = Store::open(&db)
        .unwrap()
        .fetch(EXT, ferry_core::job::Action::Acknowledge)
        .unwrap()
        .len();
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
    let mut duplicates = 0u64;
    for data in &files {
        assert_eq!(
            srv.object(&hex(data)).await.as_deref(),
            Some(data.as_slice()),
            "seed {seed}"
        );
        let r = srv.receipts(&hex(data)).await;
        let receipts = r["receipts"].as_array().unwrap().len() as u64;
        assert!(receipts >= 1, "seed {seed}: no receipt");
        duplicates += receipts - 1;
    }
    // Exactly once. A multi-chunk upload saves its URL before any byte is sent, so a restart
    // resumes it; a file sent whole with its creation may be completed by the server and the
    // process killed before it saved anything: the restart creates again with the same
    // `Idempotency-Key` (the job's id) and gets that upload back, not a second one.
    assert_eq!(duplicates, 0, "seed {seed}: uploaded once");
    let sent = proxy.stats().bytes_to_server;
    // Each kill may cost up to one chunk per transfer in flight (3), plus headers.
    let bound = total + (kills + 1) * 3 * CHUNK + (256 << 10);
    assert!(
        sent <= bound,
        "seed {seed}: sent {sent} for {total} (bound {bound})"
    );
    eprintln!(
        "crash test ({prefer}): {} files, {kills} kills, {total} bytes of files, {sent} bytes sent, {duplicates} duplicate uploads; before the last run {done_before} jobs had finished",
        files.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ietf_kill_9_at_random_points_then_resume() {
    crash_and_resume("ietf", 170).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_kill_9_at_random_points_then_resume() {
    crash_and_resume("tus", 190).await;
}

/// The scenario: a backup of 500 resources, `kill -9` of the uploader 30 times at
/// random moments, then a run to the end: every resource is on the server exactly once (one
/// upload, one receipt) with its digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_thirty_times_during_500_resources() {
    crash_scenario(
        "ietf",
        210,
        Scenario {
            files: 500,
            multi_chunk: false,
            kills: 30,
            min_ms: 20,
            spread_ms: 200,
            trickle: None,
        },
    )
    .await;
}
