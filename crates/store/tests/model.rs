//! Model-based property test: random sequences of transactions, transfer events, settings
//! changes and restarts (the SQLite store is closed and reopened) run against both stores and
//! a small reference model written here, independently of `ferry-core`'s rules. After every
//! step the SPEC.md invariants are asserted. proptest prints the failing case (and keeps its
//! seed in `proptest-regressions/`), shrunk to a short sequence.

use ferry_core::*;
use ferry_store::{JobFilter, JobStore, JobStoreError, MemoryJobStore, Store};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use uuid::Uuid;

const EXTS: [&str; 2] = ["ext.a", "ext.b"];
const JOB_IDS: u8 = 8;
/// A generated job number at or above `JOB_IDS` is a "pick": it names one of the jobs the
/// model says the operation fits (see `resolve`), so random sequences often walk a job
/// through its whole life (create, start, fail, retry, fail, acknowledge) instead of mostly
/// hitting wrong states.
const PICKS: u8 = 2 * JOB_IDS;

#[derive(Debug, Clone)]
enum ItemSpec {
    Create { job: u8, bad_destination: bool },
    Retry { job: u8, destination: Option<bool> },
    Ack { job: u8 },
    Cancel { job: u8 },
}

#[derive(Debug, Clone)]
enum Op {
    Tx { ext: usize, items: Vec<ItemSpec> },
    Start { job: u8 },
    Finish { job: u8, success: bool },
    SetLimit { ext: usize, job_limit: u32 },
    CancelAll { ext: usize },
    Reopen,
}

fn item() -> impl Strategy<Value = ItemSpec> {
    let job = 0..PICKS;
    prop_oneof![
        4 => (job.clone(), prop::bool::weighted(0.1))
            .prop_map(|(job, bad_destination)| ItemSpec::Create { job, bad_destination }),
        2 => (job.clone(), prop::option::of(prop::bool::weighted(0.2)))
            .prop_map(|(job, destination)| ItemSpec::Retry { job, destination }),
        3 => job.clone().prop_map(|job| ItemSpec::Ack { job }),
        1 => job.prop_map(|job| ItemSpec::Cancel { job }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize, prop::collection::vec(item(), 1..5))
            .prop_map(|(ext, items)| Op::Tx { ext, items }),
        4 => (0..PICKS).prop_map(|job| Op::Start { job }),
        4 => (0..PICKS, any::<bool>()).prop_map(|(job, success)| Op::Finish { job, success }),
        1 => (0..2usize, 0..6u32).prop_map(|(ext, job_limit)| Op::SetLimit { ext, job_limit }),
        1 => (0..2usize).prop_map(|ext| Op::CancelAll { ext }),
        1 => Just(Op::Reopen),
    ]
}

// ---------------------------------------------------------------------------------------------
// The reference model: only what SPEC.md says, written plainly.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum S {
    Registered,
    Pending,
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MJob {
    ext: usize,
    state: S,
    acked: bool,
    retries: u32,
}

#[derive(Debug, Default)]
struct Model {
    jobs: BTreeMap<u8, MJob>,
    limits: [u32; 2],
    /// Set when the limit was lowered under the current count; the count may then stay over
    /// the limit until acknowledges bring it down.
    over_allowed: [bool; 2],
    receipts: Vec<u8>,
}

impl Model {
    fn new() -> Model {
        Model {
            limits: [200, 200],
            ..Model::default()
        }
    }

    fn count(&self, ext: usize) -> u32 {
        self.jobs
            .values()
            .filter(|j| j.ext == ext && !j.acked)
            .count() as u32
    }

    fn fetch(&self, ext: usize, action: Action) -> BTreeSet<u8> {
        self.jobs
            .iter()
            .filter(|(_, j)| j.ext == ext)
            .filter(|(_, j)| match action {
                Action::Process => matches!(j.state, S::Registered | S::Pending),
                Action::Retry => j.state == S::Failed && !j.acked && j.retries == 0,
                Action::Acknowledge => matches!(j.state, S::Succeeded | S::Failed) && !j.acked,
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Returns `Err((code, index))` for a rejected transaction, applying nothing.
    fn transaction(&mut self, ext: usize, items: &[ItemSpec]) -> Result<(), (&'static str, usize)> {
        let mut next = self.jobs.clone();
        let mut seen = BTreeSet::new();
        let mut takers = Vec::new();
        let mut freed = 0i64;
        let mut receipts = Vec::new();
        for (i, it) in items.iter().enumerate() {
            let job = match it {
                ItemSpec::Create { job, .. }
                | ItemSpec::Retry { job, .. }
                | ItemSpec::Ack { job }
                | ItemSpec::Cancel { job } => *job,
            };
            if !seen.insert(job) {
                return Err(("duplicate_item", i));
            }
            match (it, self.jobs.get(&job)) {
                (ItemSpec::Create { .. }, Some(_)) => return Err(("job_exists", i)),
                (
                    ItemSpec::Create {
                        bad_destination, ..
                    },
                    None,
                ) => {
                    if *bad_destination {
                        return Err(("bad_destination", i));
                    }
                    takers.push(i);
                    next.insert(
                        job,
                        MJob {
                            ext,
                            state: S::Registered,
                            acked: false,
                            retries: 0,
                        },
                    );
                }
                (_, None) => return Err(("unknown_job", i)),
                (_, Some(j)) if j.ext != ext => return Err(("foreign_job", i)),
                (ItemSpec::Retry { destination, .. }, Some(j)) => {
                    if j.state != S::Failed || j.acked {
                        return Err(("wrong_state", i));
                    }
                    if j.retries >= 1 {
                        return Err(("retries_exhausted", i));
                    }
                    if *destination == Some(true) {
                        return Err(("bad_destination", i));
                    }
                    takers.push(i);
                    freed += 1;
                    next.insert(
                        job,
                        MJob {
                            state: S::Registered,
                            retries: j.retries + 1,
                            ..j.clone()
                        },
                    );
                }
                (ItemSpec::Ack { .. }, Some(j)) => {
                    if !matches!(j.state, S::Succeeded | S::Failed) || j.acked {
                        return Err(("wrong_state", i));
                    }
                    freed += 1;
                    receipts.push(job);
                    next.insert(
                        job,
                        MJob {
                            acked: true,
                            ..j.clone()
                        },
                    );
                }
                (ItemSpec::Cancel { .. }, Some(j)) => {
                    if !matches!(j.state, S::Registered | S::Pending) {
                        return Err(("wrong_state", i));
                    }
                    freed += 1;
                    receipts.push(job);
                    next.insert(
                        job,
                        MJob {
                            state: S::Cancelled,
                            acked: true,
                            ..j.clone()
                        },
                    );
                }
            }
        }
        let base = i64::from(self.count(ext)) - freed;
        let limit = i64::from(self.limits[ext]);
        if let Some(&i) = takers
            .iter()
            .enumerate()
            .find(|(n, _)| base + *n as i64 + 1 > limit)
            .map(|(_, i)| i)
        {
            return Err(("limit_exceeded", i));
        }
        self.jobs = next;
        self.receipts.extend(receipts);
        Ok(())
    }

    fn start(&mut self, job: u8) -> bool {
        match self.jobs.get_mut(&job) {
            Some(j) if j.state == S::Registered => {
                j.state = S::Pending;
                true
            }
            _ => false,
        }
    }

    fn finish(&mut self, job: u8, success: bool) -> bool {
        match self.jobs.get_mut(&job) {
            Some(j) if j.state == S::Pending => {
                j.state = if success { S::Succeeded } else { S::Failed };
                true
            }
            _ => false,
        }
    }

    fn cancel_all(&mut self, ext: usize) {
        for (id, j) in self.jobs.iter_mut() {
            if j.ext == ext && matches!(j.state, S::Registered | S::Pending) {
                j.state = S::Cancelled;
                j.acked = true;
                self.receipts.push(*id);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Driving the real stores.

fn uuid(job: u8) -> Uuid {
    Uuid::from_u128(0x0100 + u128::from(job))
}

fn destination(bad: bool, job: u8) -> Destination {
    let host = if bad {
        "elsewhere.example"
    } else {
        "up.example"
    };
    Destination::new(Method::Put, format!("https://{host}/u/{job}"))
}

fn tx_items(items: &[ItemSpec]) -> Vec<TxItem> {
    items
        .iter()
        .map(|it| match it {
            ItemSpec::Create {
                job,
                bad_destination,
            } => TxItem::Create(NewJob {
                id: uuid(*job),
                resource_id: format!("res-{job}"),
                content_hash: ContentHash([*job; 32]),
                destination: destination(*bad_destination, *job),
                metadata: BTreeMap::new(),
            }),
            ItemSpec::Retry {
                job,
                destination: d,
            } => TxItem::Retry {
                job: uuid(*job),
                destination: d.map(|bad| destination(bad, *job)),
            },
            ItemSpec::Ack { job } => TxItem::Acknowledge { job: uuid(*job) },
            ItemSpec::Cancel { job } => TxItem::Cancel { job: uuid(*job) },
        })
        .collect()
}

fn outcome_code(r: &Result<Vec<Job>, JobStoreError>) -> Result<(), (String, usize)> {
    match r {
        Ok(_) => Ok(()),
        Err(JobStoreError::Rejected(e)) => Err((e.code().to_owned(), e.index)),
        Err(other) => panic!("store failed: {other}"),
    }
}

fn setup(s: &mut impl JobStore) {
    let bases = [UrlBase::parse("https://up.example/u/").unwrap()];
    for ext in EXTS {
        s.set_destination_bases(ext, &bases).unwrap();
    }
}

fn state_of(j: &Job) -> S {
    match j.state {
        JobState::Registered => S::Registered,
        JobState::Pending => S::Pending,
        JobState::Succeeded => S::Succeeded,
        JobState::Failed => S::Failed,
        JobState::Cancelled => S::Cancelled,
    }
}

fn short(id: Uuid) -> u8 {
    (id.as_u128() - 0x0100) as u8
}

fn check_invariants(sql: &Store, mem: &MemoryJobStore, model: &Model) {
    let all = JobFilter::default();
    let sql_jobs = sql.jobs(&all).unwrap();
    // The SQLite store holds exactly what the memory store holds, field for field.
    assert_eq!(sql_jobs, mem.jobs(&all).unwrap(), "stores diverged");
    let sql_receipts = sql.receipts(10_000, 0).unwrap();
    assert_eq!(
        sql_receipts,
        mem.receipts(10_000, 0).unwrap(),
        "receipts diverged"
    );

    // Both equal the model.
    let projected: BTreeMap<u8, MJob> = sql_jobs
        .iter()
        .map(|j| {
            let ext = EXTS.iter().position(|e| *e == j.extension).unwrap();
            (
                short(j.id),
                MJob {
                    ext,
                    state: state_of(j),
                    acked: j.acknowledged,
                    retries: j.retries,
                },
            )
        })
        .collect();
    assert_eq!(projected, model.jobs, "store differs from the model");
    // One receipt per job let go of; within one step (a cancel_all) their order is the
    // store's, so compare as sets and check the newest-first order by time separately.
    let mut receipt_ids: Vec<u8> = sql_receipts.iter().map(|r| short(r.job_id)).collect();
    receipt_ids.sort_unstable();
    let mut expected = model.receipts.clone();
    expected.sort_unstable();
    assert_eq!(receipt_ids, expected, "receipts differ from the model");
    assert!(
        sql_receipts
            .windows(2)
            .all(|w| w[0].acknowledged_ms >= w[1].acknowledged_ms),
        "receipts are not newest first"
    );

    for j in &sql_jobs {
        if j.state == JobState::Cancelled {
            assert!(j.acknowledged, "cancelled but not acknowledged: {j:?}");
        }
        assert!(j.retries <= 1, "retried more than once: {j:?}");
        if j.acknowledged {
            let n = sql_receipts.iter().filter(|r| r.job_id == j.id).count();
            assert_eq!(n, 1, "acknowledged job needs exactly one receipt: {j:?}");
        }
    }
    for (e, ext) in EXTS.iter().enumerate() {
        for store in [sql as &dyn JobStore, mem as &dyn JobStore] {
            let count = store.unacknowledged_count(ext).unwrap();
            assert_eq!(count, model.count(e));
            if !model.over_allowed[e] {
                assert!(
                    count <= model.limits[e],
                    "{ext}: {count} over the limit {}",
                    model.limits[e]
                );
            }
            for action in Action::ALL {
                let fetched = store.fetch(ext, action).unwrap();
                assert!(
                    fetched.iter().all(|j| !j.acknowledged),
                    "fetch returned an acknowledged job"
                );
                let got: BTreeSet<u8> = fetched.iter().map(|j| short(j.id)).collect();
                assert_eq!(got.len(), fetched.len(), "fetch returned a job twice");
                assert_eq!(got, model.fetch(e, action), "{ext} {action:?}");
            }
        }
    }
}

/// Turns a pick into a job id: one of `fits` if any, else a plain id.
fn resolve(pick: u8, fits: impl Iterator<Item = u8>) -> u8 {
    if pick < JOB_IDS {
        return pick;
    }
    let fits: Vec<u8> = fits.collect();
    if fits.is_empty() {
        pick % JOB_IDS
    } else {
        fits[usize::from(pick) % fits.len()]
    }
}

fn in_state(model: &Model, state: S) -> impl Iterator<Item = u8> + '_ {
    model
        .jobs
        .iter()
        .filter(move |(_, j)| j.state == state)
        .map(|(id, _)| *id)
}

fn resolve_items(model: &Model, ext: usize, items: &[ItemSpec]) -> Vec<ItemSpec> {
    items
        .iter()
        .map(|it| match it.clone() {
            ItemSpec::Create {
                job,
                bad_destination,
            } => ItemSpec::Create {
                job: job % JOB_IDS,
                bad_destination,
            },
            ItemSpec::Retry { job, destination } => ItemSpec::Retry {
                job: resolve(job, model.fetch(ext, Action::Retry).into_iter()),
                destination,
            },
            ItemSpec::Ack { job } => ItemSpec::Ack {
                job: resolve(job, model.fetch(ext, Action::Acknowledge).into_iter()),
            },
            ItemSpec::Cancel { job } => ItemSpec::Cancel {
                job: resolve(job, model.fetch(ext, Action::Process).into_iter()),
            },
        })
        .collect()
}

fn run(ops: &[Op], path: &Path) {
    let mut sql = Store::open(path).unwrap();
    let mut mem = MemoryJobStore::new();
    let mut model = Model::new();
    setup(&mut sql);
    setup(&mut mem);
    for (step, op) in ops.iter().enumerate() {
        let now_ms = 1_000 + step as i64;
        match op {
            Op::Tx { ext, items } => {
                let items = &resolve_items(&model, *ext, items);
                let tx = tx_items(items);
                let a = outcome_code(&sql.transaction(EXTS[*ext], &tx, now_ms));
                let b = outcome_code(&mem.transaction(EXTS[*ext], &tx, now_ms));
                let m = model
                    .transaction(*ext, items)
                    .map_err(|(c, i)| (c.to_owned(), i));
                assert_eq!(a, b, "step {step}: stores disagree on {op:?}");
                assert_eq!(a, m, "step {step}: store and model disagree on {op:?}");
            }
            Op::Start { job } => {
                let job = &resolve(*job, in_state(&model, S::Registered));
                let a = sql.start(uuid(*job), now_ms).is_ok();
                let b = mem.start(uuid(*job), now_ms).is_ok();
                let m = model.start(*job);
                assert_eq!((a, b), (m, m), "step {step}: {op:?}");
            }
            Op::Finish { job, success } => {
                let job = &resolve(*job, in_state(&model, S::Pending));
                let outcome = if *success {
                    Outcome::Succeeded {
                        status: 201,
                        headers: vec![("ETag".into(), "x".into())],
                    }
                } else {
                    Outcome::Failed {
                        status: Some(500),
                        headers: vec![],
                        error: ErrorCode::ServerError,
                    }
                };
                let a = sql.finish(uuid(*job), outcome.clone(), now_ms).is_ok();
                let b = mem.finish(uuid(*job), outcome, now_ms).is_ok();
                let m = model.finish(*job, *success);
                assert_eq!((a, b), (m, m), "step {step}: {op:?}");
            }
            Op::SetLimit { ext, job_limit } => {
                sql.set_job_limit(EXTS[*ext], *job_limit).unwrap();
                mem.set_job_limit(EXTS[*ext], *job_limit).unwrap();
                model.limits[*ext] = *job_limit;
            }
            Op::CancelAll { ext } => {
                sql.cancel_all(EXTS[*ext], now_ms).unwrap();
                mem.cancel_all(EXTS[*ext], now_ms).unwrap();
                model.cancel_all(*ext);
            }
            Op::Reopen => {
                drop(sql);
                sql = Store::open(path).unwrap();
            }
        }
        for e in 0..2 {
            let count = model.count(e);
            model.over_allowed[e] = count > model.limits[e]
                && (model.over_allowed[e] || matches!(op, Op::SetLimit { ext, .. } if *ext == e));
        }
        check_invariants(&sql, &mem, &model);
    }
}

proptest! {
    // Every step commits with fsync, so cases cost real disk time on a shared machine;
    // PROPTEST_CASES=2000 runs a longer search.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(128),
        ..ProptestConfig::default()
    })]

    #[test]
    fn stores_follow_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        run(&ops, &dir.path().join("ferry.db"));
    }
}
