//! Benchmark of the SQLite job store (not a test): committed transitions per second for
//! 100,000 jobs in batched commits, the cost of one unbatched commit, and fetch-by-action
//! latency with 100,000 jobs stored. Run: `cargo bench -p ferry-store`.
//!
//! Goals from issue 3: at least 20,000 transitions/s with `synchronous=FULL`, fetches under
//! 5 ms. Plain `main` timing with `Instant`: the figures are what matters, not statistics.

use ferry_core::*;
use ferry_store::{JobStore, Store};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

const JOBS: u128 = 100_000;
const BATCH: u128 = 200;

fn new_job(n: u128) -> TxItem {
    TxItem::Create(NewJob {
        id: Uuid::from_u128(n + 1),
        resource_id: format!("asset-{n}/photo"),
        content_hash: pseudo_hash(n),
        destination: Destination::new(Method::Put, format!("https://up.example/u/{n}.heic"))
            .header("X-Album", "Camera Roll"),
        metadata: BTreeMap::from([
            ("file_name".to_owned(), format!("IMG_{n:05}.HEIC")),
            ("resource_type".to_owned(), "photo".to_owned()),
        ]),
    })
}

/// Spread like real BLAKE3 hashes, so the receipts' hash index sees random inserts.
fn pseudo_hash(n: u128) -> ContentHash {
    let mut out = [0u8; 32];
    let mut x = n as u64;
    for chunk in out.chunks_mut(8) {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    ContentHash(out)
}

fn ok(n: u128) -> Outcome {
    Outcome::Succeeded {
        status: 201,
        headers: vec![
            ("ETag".into(), format!("\"{n:x}\"")),
            ("Location".into(), format!("/u/{n}.heic")),
        ],
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = Store::open(&dir.path().join("bench.db")).expect("open store");
    let ext = "bench.photos";
    let bases = [UrlBase::parse("https://up.example/u/").expect("base")];
    store.set_destination_bases(ext, &bases).expect("bases");

    // 1. Batched: per batch of 200 jobs, one commit each for create, start, finish, ack.
    let started = Instant::now();
    let mut commits = 0u64;
    let mut transitions = 0u64;
    let mut now_ms = 1_000_000_000i64;
    // Time per phase, to see which commits cost what.
    let mut phase = [Duration::ZERO; 4];
    for batch in 0..JOBS / BATCH {
        let range = batch * BATCH..(batch + 1) * BATCH;
        let ids: Vec<Uuid> = range.clone().map(|n| Uuid::from_u128(n + 1)).collect();
        now_ms += 1;
        let creates: Vec<TxItem> = range.clone().map(new_job).collect();
        let t = Instant::now();
        store.transaction(ext, &creates, now_ms).expect("create");
        phase[0] += t.elapsed();
        let starts: Vec<TransferEvent> = ids
            .iter()
            .map(|&job| TransferEvent::Start { job })
            .collect();
        let t = Instant::now();
        let results = store.record(&starts, now_ms);
        phase[1] += t.elapsed();
        assert!(results.expect("start").iter().all(Result::is_ok));
        let finishes: Vec<TransferEvent> = range
            .clone()
            .zip(&ids)
            .map(|(n, &job)| TransferEvent::Finish {
                job,
                outcome: ok(n),
            })
            .collect();
        let t = Instant::now();
        let results = store.record(&finishes, now_ms);
        phase[2] += t.elapsed();
        assert!(results.expect("finish").iter().all(Result::is_ok));
        let acks: Vec<TxItem> = ids.iter().map(|&job| TxItem::Acknowledge { job }).collect();
        let t = Instant::now();
        store.transaction(ext, &acks, now_ms).expect("ack");
        phase[3] += t.elapsed();
        commits += 4;
        transitions += 4 * BATCH as u64;
    }
    let batched = started.elapsed();
    println!(
        "batched: {transitions} transitions in {commits} commits over {JOBS} jobs: {:.2} s, \
         {:.0} transitions/s, {:.0} commits/s",
        batched.as_secs_f64(),
        transitions as f64 / batched.as_secs_f64(),
        commits as f64 / batched.as_secs_f64()
    );

    let per_commit = |d: Duration| d.as_secs_f64() * 1e3 / (JOBS / BATCH) as f64;
    println!(
        "  ms per commit of {BATCH}: create {:.2}, start {:.2}, finish {:.2}, acknowledge {:.2}",
        per_commit(phase[0]),
        per_commit(phase[1]),
        per_commit(phase[2]),
        per_commit(phase[3])
    );

    // 2. Unbatched: one commit per transition, as a lone upload would cause.
    let single_jobs = 500u128;
    let started = Instant::now();
    for n in JOBS..JOBS + single_jobs {
        now_ms += 1;
        let id = Uuid::from_u128(n + 1);
        store
            .transaction(ext, &[new_job(n)], now_ms)
            .expect("create");
        store.start(id, now_ms).expect("start");
        store.finish(id, ok(n), now_ms).expect("finish");
        store
            .transaction(ext, &[TxItem::Acknowledge { job: id }], now_ms)
            .expect("ack");
    }
    let single = started.elapsed();
    let single_commits = 4.0 * single_jobs as f64;
    println!(
        "unbatched: {single_commits} commits: {:.0} transitions/s, {:.3} ms per commit",
        single_commits / single.as_secs_f64(),
        single.as_secs_f64() * 1e3 / single_commits
    );

    // 3. Fetch latency: 100,500 jobs stored (acknowledged), plus a live set of 200 jobs in
    //    every state, as an extension would see it mid-run.
    let live: Vec<u128> = (JOBS + single_jobs..JOBS + single_jobs + 200).collect();
    store
        .transaction(
            ext,
            &live.iter().map(|&n| new_job(n)).collect::<Vec<_>>(),
            now_ms,
        )
        .expect("live create");
    let id = |n: u128| Uuid::from_u128(n + 1);
    let starts: Vec<TransferEvent> = live[..150]
        .iter()
        .map(|&n| TransferEvent::Start { job: id(n) })
        .collect();
    store.record(&starts, now_ms).expect("live start");
    let finishes: Vec<TransferEvent> = live[..100]
        .iter()
        .map(|&n| TransferEvent::Finish {
            job: id(n),
            outcome: if n % 2 == 0 {
                ok(n)
            } else {
                Outcome::Failed {
                    status: Some(503),
                    headers: vec![],
                    error: ErrorCode::ServerError,
                }
            },
        })
        .collect();
    store.record(&finishes, now_ms).expect("live finish");
    for action in Action::ALL {
        let mut times = Vec::with_capacity(1000);
        let mut found = 0;
        for _ in 0..1000 {
            let t = Instant::now();
            found = store.fetch(ext, action).expect("fetch").len();
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "fetch {action:?} ({found} jobs of {} stored): median {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            JOBS + single_jobs + 200,
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3,
        );
    }
    let mut times = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let t = Instant::now();
        let n = store.unacknowledged_count(ext).expect("count");
        times.push(t.elapsed());
        assert_eq!(n, 200);
    }
    times.sort();
    println!(
        "unacknowledged_count: median {:.3} ms, p99 {:.3} ms",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3
    );
}
