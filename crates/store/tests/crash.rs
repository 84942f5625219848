//! Crash test: a child process (this test binary, re-executed in "child mode") applies a
//! deterministic sequence of job-store steps to a SQLite file and prints each step's number
//! after its commit returns; the parent SIGKILLs it at seeded random moments, reopens the file
//! and requires it to equal the reference (the memory store after the last reported step, or
//! after the next one, whose commit may have landed before its print). Nothing lost, nothing
//! applied twice. The seed is printed; `FERRY_CRASH_SEED=<n>` replays a run.

use ferry_core::*;
use ferry_store::{JobFilter, JobStore, MemoryJobStore, Store};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use uuid::Uuid;

const EXT: &str = "ext.crash";
const CHILD_PATH_ENV: &str = "FERRY_CRASH_CHILD_DB";
const CHILD_START_ENV: &str = "FERRY_CRASH_CHILD_START";
const KILLS: usize = 20;
/// The child stops by itself after this many steps, so a parent that fails to kill it
/// cannot leave it running forever.
const CHILD_MAX_STEPS: u64 = 100_000;

/// splitmix64: a tiny seeded generator, enough to pick kill moments reproducibly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn setup(s: &mut impl JobStore) {
    let bases = [UrlBase::parse("https://up.example/u/").unwrap()];
    s.set_destination_bases(EXT, &bases).unwrap();
    s.set_job_limit(EXT, 40).unwrap();
}

/// Step `i`, decided from the reference state before it; applied the same way to any store.
/// Rejections (say, the limit) are part of the deterministic sequence and change nothing.
fn apply(i: u64, reference: &MemoryJobStore, store: &mut impl JobStore) {
    let now_ms = 1_000_000 + i as i64;
    let pick = |action| reference.fetch(EXT, action).unwrap();
    match i % 6 {
        0 | 3 => {
            let items: Vec<TxItem> = (0..3u128)
                .map(|k| {
                    let n = u128::from(i) * 4 + k;
                    TxItem::Create(NewJob {
                        id: Uuid::from_u128(n + 1),
                        resource_id: format!("res-{n}"),
                        content_hash: ContentHash([(n % 251) as u8; 32]),
                        destination: Destination::new(
                            Method::Put,
                            format!("https://up.example/u/{n}"),
                        ),
                        metadata: BTreeMap::from([("step".to_owned(), i.to_string())]),
                    })
                })
                .collect();
            let _ = store.transaction(EXT, &items, now_ms);
        }
        1 => {
            let events: Vec<TransferEvent> = pick(Action::Process)
                .iter()
                .filter(|j| j.state == JobState::Registered)
                .take(4)
                .map(|j| TransferEvent::Start { job: j.id })
                .collect();
            store.record(&events, now_ms).unwrap();
        }
        2 | 5 => {
            let events: Vec<TransferEvent> = pick(Action::Process)
                .iter()
                .filter(|j| j.state == JobState::Pending)
                .take(3)
                .map(|j| TransferEvent::Finish {
                    job: j.id,
                    outcome: if j.id.as_u128() % 3 == 0 {
                        Outcome::Failed {
                            status: Some(503),
                            headers: vec![],
                            error: ErrorCode::ServerError,
                        }
                    } else {
                        Outcome::Succeeded {
                            status: 201,
                            headers: vec![("ETag".into(), format!("e{i}"))],
                        }
                    },
                })
                .collect();
            store.record(&events, now_ms).unwrap();
        }
        _ => {
            let mut items: Vec<TxItem> = pick(Action::Retry)
                .iter()
                .take(1)
                .map(|j| TxItem::Retry {
                    job: j.id,
                    destination: None,
                })
                .collect();
            let retried: Vec<Uuid> = items.iter().map(TxItem::job_id).collect();
            items.extend(
                pick(Action::Acknowledge)
                    .iter()
                    .filter(|j| !retried.contains(&j.id))
                    .take(4)
                    .map(|j| TxItem::Acknowledge { job: j.id }),
            );
            if i % 12 == 4
                && let Some(j) = pick(Action::Process)
                    .iter()
                    .find(|j| j.state == JobState::Registered)
            {
                items.push(TxItem::Cancel { job: j.id });
            }
            let _ = store.transaction(EXT, &items, now_ms);
        }
    }
}

/// The reference after `steps` steps.
fn reference_after(steps: u64) -> MemoryJobStore {
    let mut reference = MemoryJobStore::new();
    setup(&mut reference);
    for i in 0..steps {
        let before = reference.clone();
        apply(i, &before, &mut reference);
    }
    reference
}

fn snapshot(s: &impl JobStore) -> (Vec<Job>, Vec<Receipt>) {
    let mut jobs = Vec::new();
    let mut filter = JobFilter::default();
    loop {
        let page = s.jobs(&filter).unwrap();
        let Some(last) = page.last() else { break };
        filter.after = Some(last.id);
        jobs.extend(page);
    }
    (jobs, s.receipts(usize::MAX / 2, 0).unwrap())
}

/// Child mode: run steps from `CHILD_START_ENV` on until killed. A no-op as a normal test.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_PATH_ENV) else {
        return;
    };
    let start: u64 = std::env::var(CHILD_START_ENV).unwrap().parse().unwrap();
    let mut store = Store::open(Path::new(&path)).unwrap();
    if start == 0 {
        setup(&mut store);
    }
    let mut reference = reference_after(start);
    let mut out = std::io::stdout().lock();
    for i in start..start + CHILD_MAX_STEPS {
        apply(i, &reference.clone(), &mut store);
        let before = reference.clone();
        apply(i, &before, &mut reference);
        // Printed only after the store call returned, i.e. after its commit.
        writeln!(out, "step {i}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn kill_9_loses_nothing_and_applies_nothing_twice() {
    let seed = std::env::var("FERRY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    println!("crash test seed: {seed} (FERRY_CRASH_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ferry.db");
    let exe = std::env::current_exe().unwrap();
    // The next step the child should run, and the reference state before it.
    let mut next: u64 = 0;
    let mut reference = reference_after(0);
    let mut landed_after_print = 0;
    for round in 0..KILLS {
        let kill_after_lines = 1 + rng.next() % 30;
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads=1",
                "--quiet",
            ])
            .env(CHILD_PATH_ENV, &db)
            .env(CHILD_START_ENV, next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap());
        let mut last_reported: Option<u64> = None;
        let mut seen = 0;
        let mut line = String::new();
        let mut killed = false;
        loop {
            line.clear();
            if lines.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if let Some(n) = line.trim().strip_prefix("step ") {
                let n: u64 = n.parse().unwrap();
                assert!(
                    last_reported.is_none_or(|l| n == l + 1),
                    "child skipped a step"
                );
                last_reported = Some(n);
                seen += 1;
                if seen == kill_after_lines && !killed {
                    // Move the kill a random distance into the next step (its reads, its
                    // writes, its fsync), so kills do not all land right after a print.
                    // This randomises timing; nothing waits on it for correctness.
                    let delay = std::time::Duration::from_micros(rng.next() % 3_000);
                    let t = std::time::Instant::now();
                    while t.elapsed() < delay {
                        std::hint::spin_loop();
                    }
                    child.kill().unwrap(); // SIGKILL
                    killed = true;
                }
            }
        }
        let status = child.wait().unwrap();
        assert!(
            killed,
            "seed {seed} round {round}: child ended by itself: {status}"
        );

        // Every reported step is committed; the one after it may be too.
        let reported_through = last_reported.map_or(next, |l| l + 1);
        while next < reported_through {
            let before = reference.clone();
            apply(next, &before, &mut reference);
            next += 1;
        }
        let store = Store::open(&db).unwrap();
        let actual = snapshot(&store);
        drop(store);
        if actual != snapshot(&reference) {
            let mut one_more = reference.clone();
            apply(next, &reference, &mut one_more);
            assert!(
                actual == snapshot(&one_more),
                "seed {seed} round {round}: after step {next} the store matches neither the \
                 reference before nor after step {next}"
            );
            reference = one_more;
            next += 1;
            landed_after_print += 1;
        }
        println!(
            "round {round}: killed after step {}, store at step {next}",
            reported_through
        );
    }
    println!("{landed_after_print} of {KILLS} kills landed between a commit and its print");
    // The run exercised real work, not an empty store.
    let (jobs, receipts) = snapshot(&reference);
    assert!(
        jobs.len() > 20 && !receipts.is_empty(),
        "too little happened: seed {seed}"
    );
}
