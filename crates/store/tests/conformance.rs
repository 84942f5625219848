//! One conformance suite every `JobStore` must pass: each test is a function generic over the
//! trait, instantiated below for SQLite (on a temporary file) and for the memory store, so
//! the two cannot drift apart in what callers observe.

use ferry_core::*;
use ferry_store::{JobFilter, JobStore, JobStoreError, MemoryJobStore, Store};
use std::collections::BTreeMap;
use uuid::Uuid;

const EXT: &str = "ext.one";
const OTHER: &str = "ext.two";

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn hash(n: u8) -> ContentHash {
    ContentHash([n; 32])
}

fn create(n: u128) -> TxItem {
    TxItem::Create(NewJob {
        id: id(n),
        resource_id: format!("res-{n}"),
        content_hash: hash(n as u8),
        destination: Destination::new(Method::Put, format!("https://up.example/u/{n}"))
            .header("X-Album", "Summer"),
        metadata: BTreeMap::from([("file_name".to_owned(), format!("{n}.jpg"))]),
    })
}

fn ack(n: u128) -> TxItem {
    TxItem::Acknowledge { job: id(n) }
}

fn ok() -> Outcome {
    Outcome::Succeeded {
        status: 201,
        headers: vec![("ETag".into(), "\"e\"".into())],
    }
}

fn failed(code: &str) -> Outcome {
    Outcome::Failed {
        status: Some(503),
        headers: vec![("Retry-After".into(), "5".into())],
        error: ErrorCode::from_name(code),
    }
}

fn setup<S: JobStore>(s: &mut S) {
    let bases = [UrlBase::parse("https://up.example/u/").unwrap()];
    s.set_destination_bases(EXT, &bases).unwrap();
    s.set_destination_bases(OTHER, &bases).unwrap();
}

fn ids(jobs: &[Job]) -> Vec<u128> {
    jobs.iter().map(|j| j.id.as_u128()).collect()
}

fn fetch<S: JobStore>(s: &S, action: Action) -> Vec<u128> {
    ids(&s.fetch(EXT, action).unwrap())
}

fn rejected(r: Result<Vec<Job>, JobStoreError>) -> TransactionError {
    match r {
        Err(JobStoreError::Rejected(e)) => e,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn fetch_sets_follow_states<S: JobStore>(mut s: S) {
    setup(&mut s);
    let all: Vec<TxItem> = (1..=6).map(create).collect();
    s.transaction(EXT, &all, 10).unwrap();
    // 1 registered, 2 pending, 3 succeeded, 4 failed, 5 failed+retried+failed, 6 cancelled.
    for n in 2..=5 {
        s.start(id(n), 11).unwrap();
    }
    s.finish(id(3), ok(), 12).unwrap();
    s.finish(id(4), failed("server_error"), 12).unwrap();
    s.finish(id(5), failed("timed_out"), 12).unwrap();
    s.transaction(
        EXT,
        &[TxItem::Retry {
            job: id(5),
            destination: None,
        }],
        13,
    )
    .unwrap();
    s.start(id(5), 14).unwrap();
    s.finish(id(5), failed("timed_out"), 15).unwrap();
    s.transaction(EXT, &[TxItem::Cancel { job: id(6) }], 16)
        .unwrap();
    assert_eq!(fetch(&s, Action::Process), vec![1, 2]);
    assert_eq!(fetch(&s, Action::Retry), vec![4]);
    assert_eq!(fetch(&s, Action::Acknowledge), vec![3, 4, 5]);
    assert_eq!(s.unacknowledged_count(EXT).unwrap(), 5);
    assert!(s.fetch(OTHER, Action::Process).unwrap().is_empty());
    s.transaction(EXT, &[ack(3), ack(4)], 17).unwrap();
    assert_eq!(fetch(&s, Action::Retry), Vec::<u128>::new());
    assert_eq!(fetch(&s, Action::Acknowledge), vec![5]);
    assert_eq!(s.unacknowledged_count(EXT).unwrap(), 3);
}

fn rejected_transaction_writes_nothing<S: JobStore>(mut s: S) {
    setup(&mut s);
    s.transaction(EXT, &[create(1)], 10).unwrap();
    let before = s.jobs(&JobFilter::default()).unwrap();
    let items = [
        create(2),
        TxItem::Cancel { job: id(1) },
        TxItem::Create(NewJob {
            id: id(3),
            resource_id: "r".into(),
            content_hash: hash(3),
            destination: Destination::new(Method::Post, "https://elsewhere.example/u/3"),
            metadata: BTreeMap::new(),
        }),
    ];
    let e = rejected(s.transaction(EXT, &items, 11));
    assert_eq!((e.index, e.job, e.code()), (2, id(3), "bad_destination"));
    assert_eq!(s.jobs(&JobFilter::default()).unwrap(), before);
    assert!(s.job(id(2)).unwrap().is_none());
    assert!(s.receipts(10, 0).unwrap().is_empty());
    assert_eq!(s.unacknowledged_count(EXT).unwrap(), 1);
}

fn job_limit_default_and_configurable<S: JobStore>(mut s: S) {
    setup(&mut s);
    assert_eq!(s.policy(EXT).unwrap().job_limit, 200, "SPEC.md's default");
    let first: Vec<TxItem> = (1..=200).map(create).collect();
    s.transaction(EXT, &first, 10).unwrap();
    let e = rejected(s.transaction(EXT, &[create(201)], 11));
    assert_eq!((e.index, e.job, e.code()), (0, id(201), "limit_exceeded"));
    // Another extension has its own slots.
    s.transaction(OTHER, &[create(1000)], 11).unwrap();
    s.set_job_limit(EXT, 201).unwrap();
    s.transaction(EXT, &[create(201)], 12).unwrap();
    assert_eq!(s.unacknowledged_count(EXT).unwrap(), 201);
    // Cancelling frees slots immediately.
    s.transaction(EXT, &[TxItem::Cancel { job: id(1) }, create(202)], 13)
        .unwrap();
    assert_eq!(s.unacknowledged_count(EXT).unwrap(), 201);
    assert_eq!(s.policy(EXT).unwrap().job_limit, 201);
}

fn retry_once_with_new_destination<S: JobStore>(mut s: S) {
    setup(&mut s);
    s.transaction(EXT, &[create(1)], 10).unwrap();
    s.start(id(1), 11).unwrap();
    s.finish(id(1), failed("network_lost"), 12).unwrap();
    let dest = Destination::new(Method::Post, "https://up.example/u/again/1").header("X-Try", "2");
    let out = s
        .transaction(
            EXT,
            &[TxItem::Retry {
                job: id(1),
                destination: Some(dest),
            }],
            13,
        )
        .unwrap();
    let j = &out[0];
    assert_eq!(
        (j.state, j.retries, j.status, j.error.clone()),
        (JobState::Registered, 1, None, None)
    );
    let stored = s.job(id(1)).unwrap().unwrap();
    assert_eq!(&stored, j);
    assert_eq!(stored.destination.url, "https://up.example/u/again/1");
    assert_eq!(
        stored.destination.headers,
        vec![("x-try".to_owned(), "2".to_owned())]
    );
    s.start(id(1), 14).unwrap();
    s.finish(id(1), failed("network_lost"), 15).unwrap();
    let e = rejected(s.transaction(
        EXT,
        &[TxItem::Retry {
            job: id(1),
            destination: None,
        }],
        16,
    ));
    assert_eq!(e.code(), "retries_exhausted");
    s.set_max_retries(EXT, 2).unwrap();
    assert_eq!(fetch(&s, Action::Retry), vec![1]);
    s.transaction(
        EXT,
        &[TxItem::Retry {
            job: id(1),
            destination: None,
        }],
        17,
    )
    .unwrap();
    assert_eq!(s.job(id(1)).unwrap().unwrap().attempts.len(), 2);
}

fn acknowledge_hides_job_and_keeps_receipt<S: JobStore>(mut s: S) {
    setup(&mut s);
    s.transaction(EXT, &[create(1), create(2), create(3)], 10)
        .unwrap();
    for n in 1..=3 {
        s.start(id(n), 20).unwrap();
    }
    s.finish(id(1), ok(), 30).unwrap();
    s.finish(id(2), failed("resource_changed"), 31).unwrap();
    s.finish(id(3), ok(), 32).unwrap();
    s.transaction(EXT, &[ack(1)], 40).unwrap();
    s.transaction(EXT, &[ack(2), ack(3)], 41).unwrap();
    for action in Action::ALL {
        assert!(fetch(&s, action).is_empty(), "{action:?}");
    }
    assert_eq!(s.unacknowledged_count(EXT).unwrap(), 0);
    let all = s.receipts(10, 0).unwrap();
    let order: Vec<u128> = all.iter().map(|r| r.job_id.as_u128()).collect();
    assert_eq!(order, vec![3, 2, 1], "newest first");
    assert_eq!(s.receipts(1, 1).unwrap(), vec![all[1].clone()]);
    let r = &s.receipts_for_hash(&hash(1)).unwrap()[0];
    assert_eq!(
        (r.job_id, r.state, r.status),
        (id(1), JobState::Succeeded, Some(201))
    );
    assert_eq!(
        r.response_headers,
        vec![("etag".to_owned(), "\"e\"".to_owned())]
    );
    assert_eq!((r.finished_ms, r.acknowledged_ms), (Some(30), 40));
    assert_eq!(r.destination.url, "https://up.example/u/1");
    let r2 = &s.receipts_for_hash(&hash(2)).unwrap()[0];
    assert_eq!(r2.error, Some(ErrorCode::ResourceChanged));
    assert!(s.receipts_for_hash(&hash(99)).unwrap().is_empty());
    // The job itself stays readable for history, marked acknowledged.
    assert!(s.job(id(1)).unwrap().unwrap().acknowledged);
}

fn cancel_and_cancel_all<S: JobStore>(mut s: S) {
    setup(&mut s);
    s.transaction(EXT, &(1..=4).map(create).collect::<Vec<_>>(), 10)
        .unwrap();
    s.transaction(OTHER, &[create(10)], 10).unwrap();
    s.start(id(2), 11).unwrap();
    s.start(id(3), 11).unwrap();
    s.finish(id(3), ok(), 12).unwrap();
    let out = s.cancel_all(EXT, 13).unwrap();
    assert_eq!(ids(&out), vec![1, 2, 4]);
    for j in &out {
        assert_eq!((j.state, j.acknowledged), (JobState::Cancelled, true));
    }
    assert!(fetch(&s, Action::Process).is_empty());
    assert_eq!(fetch(&s, Action::Acknowledge), vec![3]);
    assert_eq!(s.unacknowledged_count(EXT).unwrap(), 1);
    assert_eq!(ids(&s.fetch(OTHER, Action::Process).unwrap()), vec![10]);
    assert_eq!(s.receipts(10, 0).unwrap().len(), 3);
    // The transfer that was running on job 2 reports; the cancel stands.
    let late = s.finish(id(2), ok(), 14);
    assert!(matches!(
        late,
        Err(JobStoreError::Transition(TransitionError::WrongState {
            state: JobState::Cancelled,
            ..
        }))
    ));
    let e = rejected(s.transaction(EXT, &[TxItem::Cancel { job: id(3) }], 15));
    assert_eq!(e.code(), "wrong_state");
}

fn finish_records_the_answer<S: JobStore>(mut s: S) {
    setup(&mut s);
    s.transaction(EXT, &[create(1), create(2)], 10).unwrap();
    s.start(id(1), 11).unwrap();
    let j = s
        .finish(
            id(1),
            Outcome::Succeeded {
                status: 200,
                headers: vec![
                    ("X-Object-ID".into(), "abc".into()),
                    ("Date".into(), "d".into()),
                ],
            },
            12,
        )
        .unwrap();
    assert_eq!(
        j.response_headers,
        vec![
            ("x-object-id".into(), "abc".into()),
            ("date".into(), "d".into())
        ]
    );
    assert_eq!((j.status, j.finished_ms), (Some(200), Some(12)));
    assert_eq!(j.attempts.len(), 1);
    assert_eq!(j.attempts[0].finished_ms, Some(12));
    s.start(id(2), 13).unwrap();
    let j = s
        .finish(
            id(2),
            Outcome::Failed {
                status: None,
                headers: vec![],
                error: ErrorCode::from_name("quota_gone"),
            },
            14,
        )
        .unwrap();
    // An error code this Ferry does not know survives the round trip through the store.
    assert_eq!(
        s.job(id(2)).unwrap().unwrap().error,
        Some(ErrorCode::Other("quota_gone".into()))
    );
    assert_eq!(j.state, JobState::Failed);
    assert!(matches!(
        s.start(id(99), 15),
        Err(JobStoreError::Transition(TransitionError::UnknownJob(_)))
    ));
}

fn events_in_one_batch_stand_alone<S: JobStore>(mut s: S) {
    setup(&mut s);
    s.transaction(EXT, &[create(1), create(2)], 10).unwrap();
    let out = s
        .record(
            &[
                TransferEvent::Start { job: id(1) },
                TransferEvent::Finish {
                    job: id(2),
                    outcome: ok(),
                },
                TransferEvent::Finish {
                    job: id(1),
                    outcome: ok(),
                },
            ],
            11,
        )
        .unwrap();
    assert!(out[0].is_ok() && out[1].is_err() && out[2].is_ok());
    assert_eq!(s.job(id(1)).unwrap().unwrap().state, JobState::Succeeded);
    assert_eq!(s.job(id(2)).unwrap().unwrap().state, JobState::Registered);
}

fn other_extensions_jobs_are_out_of_reach<S: JobStore>(mut s: S) {
    setup(&mut s);
    s.transaction(OTHER, &[create(1)], 10).unwrap();
    let e = rejected(s.transaction(EXT, &[TxItem::Cancel { job: id(1) }], 11));
    assert_eq!((e.code(), e.index, e.job), ("foreign_job", 0, id(1)));
    let e = rejected(s.transaction(EXT, &[create(2), ack(77)], 11));
    assert_eq!((e.code(), e.index, e.job), ("unknown_job", 1, id(77)));
    let e = rejected(s.transaction(EXT, &[create(1)], 11));
    assert_eq!(e.code(), "job_exists");
    let e = rejected(s.transaction(EXT, &[create(2), create(2)], 11));
    assert_eq!((e.code(), e.index), ("duplicate_item", 1));
    // No bases declared: nothing can be created.
    let e = rejected(s.transaction("ext.unconfigured", &[create(3)], 11));
    assert_eq!(e.code(), "bad_destination");
}

fn jobs_filter_and_paging<S: JobStore>(mut s: S) {
    setup(&mut s);
    s.transaction(EXT, &(1..=5).map(create).collect::<Vec<_>>(), 10)
        .unwrap();
    s.transaction(OTHER, &[create(6)], 10).unwrap();
    s.start(id(2), 11).unwrap();
    let page = |f: JobFilter| ids(&s.jobs(&f).unwrap());
    assert_eq!(page(JobFilter::default()), vec![1, 2, 3, 4, 5, 6]);
    let mine = JobFilter {
        extension: Some(EXT.into()),
        limit: 2,
        ..JobFilter::default()
    };
    assert_eq!(page(mine.clone()), vec![1, 2]);
    assert_eq!(
        page(JobFilter {
            after: Some(id(2)),
            ..mine.clone()
        }),
        vec![3, 4]
    );
    assert_eq!(
        page(JobFilter {
            state: Some(JobState::Pending),
            ..JobFilter::default()
        }),
        vec![2]
    );
    assert_eq!(
        page(JobFilter {
            acknowledged: Some(true),
            ..JobFilter::default()
        }),
        Vec::<u128>::new()
    );
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = ferry_store::Store::open(&dir.path().join("ferry.db")).unwrap();
                    super::$name(store);
                }
            )*
        }
        mod memory {
            $(
                #[test]
                fn $name() {
                    super::$name(super::MemoryJobStore::new());
                }
            )*
        }
    };
}

conformance!(
    fetch_sets_follow_states,
    rejected_transaction_writes_nothing,
    job_limit_default_and_configurable,
    retry_once_with_new_destination,
    acknowledge_hides_job_and_keeps_receipt,
    cancel_and_cancel_all,
    finish_records_the_answer,
    events_in_one_batch_stand_alone,
    other_extensions_jobs_are_out_of_reach,
    jobs_filter_and_paging,
);

#[test]
fn sqlite_keeps_everything_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.db");
    let mut s = Store::open(&path).unwrap();
    setup(&mut s);
    s.set_job_limit(EXT, 7).unwrap();
    s.transaction(EXT, &[create(1), create(2)], 10).unwrap();
    s.start(id(1), 11).unwrap();
    s.finish(id(1), ok(), 12).unwrap();
    s.transaction(EXT, &[ack(1)], 13).unwrap();
    let jobs = s.jobs(&JobFilter::default()).unwrap();
    let receipts = s.receipts(10, 0).unwrap();
    drop(s);
    let s = Store::open(&path).unwrap();
    assert_eq!(s.jobs(&JobFilter::default()).unwrap(), jobs);
    assert_eq!(s.receipts(10, 0).unwrap(), receipts);
    assert_eq!(s.policy(EXT).unwrap().job_limit, 7);
    assert_eq!(
        s.policy(EXT).unwrap().bases[0].as_str(),
        "https://up.example/u/"
    );
}
