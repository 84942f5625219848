//! The job store: where upload jobs, their receipts and each extension's job settings live.
//!
//! [`JobStore`] is the interface the daemon and the extension host use; SQLite ([`Store`]) and
//! memory ([`MemoryJobStore`]) implement it and one conformance suite checks both. Neither
//! decides anything: each loads the state a change needs, asks `ferry_core::job` for the
//! decision, and persists the result, so the rules live in one place.
//!
//! Durability (SQLite): every method that changes state runs one SQLite transaction and commits
//! it (WAL, `synchronous=FULL`) before returning, so a caller never acts on a transition that a
//! crash could take back, and a crash mid-call leaves the state before the call. The write
//! path of one change:
//!
//! 1. `BEGIN IMMEDIATE`: take the write lock before reading, so the view cannot go stale.
//! 2. Read the rows the change names (and the extension's count and policy).
//! 3. Ask `ferry_core::job` for the decision; a rejection rolls back, having written nothing.
//! 4. Write the job rows (spec only if it changed, live state always) and receipt pointers.
//! 5. `COMMIT`: SQLite appends the pages to the WAL and fsyncs it. This is the only fsync the
//!    caller waits for; once it returns the change survives `kill -9` and power loss.
//! 6. Later, a checkpoint copies WAL pages into the database file (SQLite fsyncs the WAL
//!    before and the database after), off the caller's path.
//!
//! Batching: [`JobStore::transaction`] takes many items and [`JobStore::record`] many transfer
//! events per commit, so a burst of small uploads costs one fsync, not one per transition.

use crate::db::{Store, StoreError};
use ferry_core::UrlBase;
use ferry_core::job::{
    Action, ContentHash, ExtensionPolicy, Job, JobState, JobWrite, Outcome, Receipt,
    TransactionError, TransferEvent, TransitionError, TxItem, TxView, apply_event, plan_cancel_all,
    plan_transaction, referenced_ids,
};
use rusqlite::{OptionalExtension, Transaction, params};
use std::collections::HashMap;
use uuid::Uuid;

/// Most jobs one [`JobStore::jobs`] call returns; page with [`JobFilter::after`].
pub const MAX_PAGE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum JobStoreError {
    /// The transaction broke a rule; nothing was written.
    #[error(transparent)]
    Rejected(#[from] TransactionError),
    /// A transfer event did not fit the job's state; nothing was written.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("job store holds a value it cannot read: {0}")]
    Corrupt(String),
}

impl From<rusqlite::Error> for JobStoreError {
    fn from(e: rusqlite::Error) -> JobStoreError {
        JobStoreError::Store(StoreError::Sqlite(e))
    }
}

/// Which jobs [`JobStore::jobs`] lists, in id order (UUID v7: creation order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub extension: Option<String>,
    pub state: Option<JobState>,
    pub acknowledged: Option<bool>,
    /// Only ids greater than this one: the cursor for the next page.
    pub after: Option<Uuid>,
    /// At most this many (capped at [`MAX_PAGE`]; 0 means the cap).
    pub limit: usize,
}

impl JobFilter {
    fn page(&self) -> usize {
        if self.limit == 0 {
            MAX_PAGE
        } else {
            self.limit.min(MAX_PAGE)
        }
    }

    fn matches(&self, j: &Job) -> bool {
        self.extension.as_ref().is_none_or(|e| *e == j.extension)
            && self.state.is_none_or(|s| s == j.state)
            && self.acknowledged.is_none_or(|a| a == j.acknowledged)
            && self.after.is_none_or(|a| j.id > a)
    }
}

/// A fresh job id (UUID v7: time-ordered, so id order is creation order).
pub fn new_job_id() -> Uuid {
    Uuid::now_v7()
}

/// The job store's interface. Every `&mut self` method is atomic and durable on return.
pub trait JobStore {
    /// The extension's settings; [`ExtensionPolicy::default`] (no bases) if never set.
    fn policy(&self, extension: &str) -> Result<ExtensionPolicy, JobStoreError>;
    /// Records the destination bases the user consented to for the extension.
    fn set_destination_bases(
        &mut self,
        extension: &str,
        bases: &[UrlBase],
    ) -> Result<(), JobStoreError>;
    fn set_job_limit(&mut self, extension: &str, job_limit: u32) -> Result<(), JobStoreError>;
    fn set_max_retries(&mut self, extension: &str, max_retries: u32) -> Result<(), JobStoreError>;

    /// Applies the items whole, or returns [`JobStoreError::Rejected`] and writes nothing.
    /// Returns the jobs' new states in item order.
    fn transaction(
        &mut self,
        extension: &str,
        items: &[TxItem],
        now_ms: i64,
    ) -> Result<Vec<Job>, JobStoreError>;

    /// Exactly SPEC.md's set for `action`, oldest first.
    fn fetch(&self, extension: &str, action: Action) -> Result<Vec<Job>, JobStoreError>;

    /// Applies transfer events in one commit. Each event stands alone: one that does not fit
    /// its job's state is reported in its slot and changes nothing; the others apply.
    fn record(
        &mut self,
        events: &[TransferEvent],
        now_ms: i64,
    ) -> Result<Vec<Result<Job, TransitionError>>, JobStoreError>;

    /// `registered → pending`.
    fn start(&mut self, job: Uuid, now_ms: i64) -> Result<Job, JobStoreError> {
        single(self.record(&[TransferEvent::Start { job }], now_ms)?)
    }

    /// `pending → succeeded | failed`.
    fn finish(&mut self, job: Uuid, outcome: Outcome, now_ms: i64) -> Result<Job, JobStoreError> {
        single(self.record(&[TransferEvent::Finish { job, outcome }], now_ms)?)
    }

    /// Ferry's own view of a job, acknowledged or not; extensions see jobs only through
    /// [`JobStore::fetch`].
    fn job(&self, id: Uuid) -> Result<Option<Job>, JobStoreError>;
    /// Ferry's own listing (history, recovery of `pending` jobs after a restart), by id.
    fn jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, JobStoreError>;
    /// Receipts, newest first.
    fn receipts(&self, limit: usize, offset: usize) -> Result<Vec<Receipt>, JobStoreError>;
    /// Every receipt for content with this hash, newest first: has it been sent before?
    fn receipts_for_hash(&self, hash: &ContentHash) -> Result<Vec<Receipt>, JobStoreError>;
    fn unacknowledged_count(&self, extension: &str) -> Result<u32, JobStoreError>;
    /// Cancels every registered and pending job of the extension (it was disabled).
    fn cancel_all(&mut self, extension: &str, now_ms: i64) -> Result<Vec<Job>, JobStoreError>;
    /// Every extension the store has settings or jobs for, by id: whose jobs a transfer
    /// engine that serves all extensions looks at.
    fn extensions(&self) -> Result<Vec<String>, JobStoreError>;
}

/// An extension's unacknowledged jobs by state: what the host's scheduler weighs before
/// calling it (cancelled jobs are acknowledged at once, so they never count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct JobCounts {
    pub registered: u32,
    pub pending: u32,
    pub succeeded: u32,
    pub failed: u32,
}

impl JobCounts {
    /// Finished and waiting for the extension's acknowledge.
    pub fn finished(&self) -> u32 {
        self.succeeded.saturating_add(self.failed)
    }

    /// Still to send (queued or in flight).
    pub fn open(&self) -> u32 {
        self.registered.saturating_add(self.pending)
    }
}

fn single(mut results: Vec<Result<Job, TransitionError>>) -> Result<Job, JobStoreError> {
    match results.pop() {
        Some(r) => Ok(r?),
        None => Err(JobStoreError::Corrupt("an event produced no result".into())),
    }
}

// ---------------------------------------------------------------------------------------------
// In memory: for tests of the layers above, and the reference the SQLite store is checked
// against in the conformance suite.

/// A [`JobStore`] in memory. Nothing survives the value being dropped.
#[derive(Debug, Default, Clone)]
pub struct MemoryJobStore {
    jobs: HashMap<Uuid, Job>,
    policies: HashMap<String, ExtensionPolicy>,
    /// Oldest first.
    receipts: Vec<Receipt>,
}

impl MemoryJobStore {
    pub fn new() -> MemoryJobStore {
        MemoryJobStore::default()
    }

    fn apply(&mut self, writes: Vec<JobWrite>) -> Vec<Job> {
        writes
            .into_iter()
            .map(|w| {
                if let Some(r) = w.receipt {
                    self.receipts.push(r);
                }
                self.jobs.insert(w.job.id, w.job.clone());
                w.job
            })
            .collect()
    }

    fn policy_mut(&mut self, extension: &str) -> &mut ExtensionPolicy {
        self.policies.entry(extension.to_owned()).or_default()
    }
}

fn oldest_first(jobs: &mut [Job]) {
    jobs.sort_by_key(|j| (j.created_ms, j.id));
}

impl JobStore for MemoryJobStore {
    fn policy(&self, extension: &str) -> Result<ExtensionPolicy, JobStoreError> {
        Ok(self.policies.get(extension).cloned().unwrap_or_default())
    }

    fn extensions(&self) -> Result<Vec<String>, JobStoreError> {
        let mut ids: Vec<String> = self
            .policies
            .keys()
            .cloned()
            .chain(self.jobs.values().map(|j| j.extension.clone()))
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    fn set_destination_bases(
        &mut self,
        extension: &str,
        bases: &[UrlBase],
    ) -> Result<(), JobStoreError> {
        self.policy_mut(extension).bases = bases.to_vec();
        Ok(())
    }

    fn set_job_limit(&mut self, extension: &str, job_limit: u32) -> Result<(), JobStoreError> {
        self.policy_mut(extension).job_limit = job_limit;
        Ok(())
    }

    fn set_max_retries(&mut self, extension: &str, max_retries: u32) -> Result<(), JobStoreError> {
        self.policy_mut(extension).max_retries = max_retries;
        Ok(())
    }

    fn transaction(
        &mut self,
        extension: &str,
        items: &[TxItem],
        now_ms: i64,
    ) -> Result<Vec<Job>, JobStoreError> {
        let jobs: HashMap<Uuid, Job> = referenced_ids(items)
            .into_iter()
            .filter_map(|id| self.jobs.get(&id).map(|j| (id, j.clone())))
            .collect();
        let view = TxView {
            extension,
            jobs: &jobs,
            unacknowledged: self.unacknowledged_count(extension)?,
        };
        let writes = plan_transaction(&view, items, &self.policy(extension)?, now_ms)?;
        Ok(self.apply(writes))
    }

    fn fetch(&self, extension: &str, action: Action) -> Result<Vec<Job>, JobStoreError> {
        let max_retries = self.policy(extension)?.max_retries;
        let mut out: Vec<Job> = self
            .jobs
            .values()
            .filter(|j| j.extension == extension && j.in_action(action, max_retries))
            .cloned()
            .collect();
        oldest_first(&mut out);
        Ok(out)
    }

    fn record(
        &mut self,
        events: &[TransferEvent],
        now_ms: i64,
    ) -> Result<Vec<Result<Job, TransitionError>>, JobStoreError> {
        Ok(events
            .iter()
            .map(|e| {
                let next = apply_event(self.jobs.get(&e.job_id()), e, now_ms)?;
                self.jobs.insert(next.id, next.clone());
                Ok(next)
            })
            .collect())
    }

    fn job(&self, id: Uuid) -> Result<Option<Job>, JobStoreError> {
        Ok(self.jobs.get(&id).cloned())
    }

    fn jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, JobStoreError> {
        let mut out: Vec<Job> = self
            .jobs
            .values()
            .filter(|j| filter.matches(j))
            .cloned()
            .collect();
        out.sort_by_key(|j| j.id);
        out.truncate(filter.page());
        Ok(out)
    }

    fn receipts(&self, limit: usize, offset: usize) -> Result<Vec<Receipt>, JobStoreError> {
        Ok(self
            .receipts
            .iter()
            .rev()
            .skip(offset)
            .take(limit)
            .cloned()
            .collect())
    }

    fn receipts_for_hash(&self, hash: &ContentHash) -> Result<Vec<Receipt>, JobStoreError> {
        Ok(self
            .receipts
            .iter()
            .rev()
            .filter(|r| r.content_hash == *hash)
            .cloned()
            .collect())
    }

    fn unacknowledged_count(&self, extension: &str) -> Result<u32, JobStoreError> {
        let n = self
            .jobs
            .values()
            .filter(|j| j.extension == extension && j.counts_against_limit())
            .count();
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn cancel_all(&mut self, extension: &str, now_ms: i64) -> Result<Vec<Job>, JobStoreError> {
        let mut mine: Vec<Job> = self
            .jobs
            .values()
            .filter(|j| j.extension == extension)
            .cloned()
            .collect();
        oldest_first(&mut mine);
        let writes = plan_cancel_all(&mine, now_ms);
        Ok(self.apply(writes))
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite. A job is split over two rows (see migration 2): its spec, written once, and its
// live state, written on each transition. Both are encoded from and decoded to the same
// `Job`, so the columns queries filter on cannot drift from the job they describe.

/// What the extension asked for; changes only when a retry brings a new destination.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Spec {
    extension: String,
    resource_id: String,
    content_hash: ContentHash,
    destination: ferry_core::Destination,
    metadata: std::collections::BTreeMap<String, String>,
    created_ms: i64,
}

/// A stored spec with its destination's secret header values redacted (a state that moves to
/// another device carries no credentials).
pub(crate) fn redact_spec_body(body: &str) -> Result<String, serde_json::Error> {
    let mut spec: Spec = serde_json::from_str(body)?;
    spec.destination = spec.destination.redacted();
    serde_json::to_string(&spec)
}

/// What transitions change, besides the `state` and `acknowledged` columns.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Live {
    retries: u32,
    updated_ms: i64,
    finished_ms: Option<i64>,
    attempts: Vec<ferry_core::Attempt>,
    status: Option<u16>,
    response_headers: Vec<(String, String)>,
    error: Option<ferry_core::ErrorCode>,
}

fn spec_of(j: &Job) -> Spec {
    Spec {
        extension: j.extension.clone(),
        resource_id: j.resource_id.clone(),
        content_hash: j.content_hash,
        destination: j.destination.clone(),
        metadata: j.metadata.clone(),
        created_ms: j.created_ms,
    }
}

fn live_of(j: &Job) -> Live {
    Live {
        retries: j.retries,
        updated_ms: j.updated_ms,
        finished_ms: j.finished_ms,
        attempts: j.attempts.clone(),
        status: j.status,
        response_headers: j.response_headers.clone(),
        error: j.error.clone(),
    }
}

fn corrupt(e: impl std::fmt::Display) -> JobStoreError {
    JobStoreError::Corrupt(e.to_string())
}

fn encode<T: serde::Serialize>(value: &T) -> Result<String, JobStoreError> {
    serde_json::to_string(value).map_err(corrupt)
}

/// The columns every job query selects, in the order [`JobRow::read`] expects.
const JOB_COLUMNS: &str = "j.id, j.state, j.acknowledged, j.live, s.body";
const JOB_FROM: &str = "jobs j JOIN job_specs s ON s.id = j.id";

/// One job's columns as read, decoded outside rusqlite's row callback so decode errors keep
/// their own type.
struct JobRow {
    id: Vec<u8>,
    state: String,
    acknowledged: bool,
    live: String,
    spec: String,
}

impl JobRow {
    fn read(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<JobRow> {
        Ok(JobRow {
            id: r.get(first)?,
            state: r.get(first + 1)?,
            acknowledged: r.get(first + 2)?,
            live: r.get(first + 3)?,
            spec: r.get(first + 4)?,
        })
    }

    fn decode(self) -> Result<Job, JobStoreError> {
        let id = Uuid::from_slice(&self.id).map_err(corrupt)?;
        let state = JobState::from_name(&self.state)
            .ok_or_else(|| corrupt(format!("job {id} has state {:?}", self.state)))?;
        let spec: Spec = serde_json::from_str(&self.spec).map_err(corrupt)?;
        let live: Live = serde_json::from_str(&self.live).map_err(corrupt)?;
        Ok(Job {
            id,
            extension: spec.extension,
            resource_id: spec.resource_id,
            content_hash: spec.content_hash,
            destination: spec.destination,
            metadata: spec.metadata,
            state,
            acknowledged: self.acknowledged,
            retries: live.retries,
            created_ms: spec.created_ms,
            updated_ms: live.updated_ms,
            finished_ms: live.finished_ms,
            attempts: live.attempts,
            status: live.status,
            response_headers: live.response_headers,
            error: live.error,
        })
    }
}

pub(crate) fn load_policy(
    conn: &rusqlite::Connection,
    extension: &str,
) -> Result<ExtensionPolicy, JobStoreError> {
    let row: Option<(i64, i64, String)> = conn
        .prepare_cached("SELECT job_limit, max_retries, bases FROM extensions WHERE id = ?1")?
        .query_row([extension], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((job_limit, max_retries, bases)) = row else {
        return Ok(ExtensionPolicy::default());
    };
    Ok(ExtensionPolicy {
        job_limit: u32::try_from(job_limit).map_err(corrupt)?,
        max_retries: u32::try_from(max_retries).map_err(corrupt)?,
        bases: serde_json::from_str(&bases).map_err(corrupt)?,
    })
}

pub(crate) fn save_policy(
    tx: &Transaction<'_>,
    extension: &str,
    policy: &ExtensionPolicy,
) -> Result<(), JobStoreError> {
    tx.prepare_cached(
        "INSERT INTO extensions (id, job_limit, max_retries, bases) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET job_limit = ?2, max_retries = ?3, bases = ?4",
    )?
    .execute(params![
        extension,
        i64::from(policy.job_limit),
        i64::from(policy.max_retries),
        encode(&policy.bases)?
    ])?;
    Ok(())
}

fn load_job(conn: &rusqlite::Connection, id: Uuid) -> Result<Option<Job>, JobStoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM {JOB_FROM} WHERE j.id = ?1");
    let row = conn
        .prepare_cached(&sql)?
        .query_row([&id.as_bytes()[..]], |r| JobRow::read(r, 0))
        .optional()?;
    row.map(JobRow::decode).transpose()
}

fn count_unacknowledged(
    conn: &rusqlite::Connection,
    extension: &str,
) -> Result<u32, JobStoreError> {
    // Cancelled jobs are always acknowledged, so "not acknowledged" is the whole rule here;
    // the range is at most about one job limit long.
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM jobs WHERE extension = ?1 AND acknowledged = 0")?
        .query_row([extension], |r| r.get(0))?;
    u32::try_from(n).map_err(corrupt)
}

/// Writes a job's new state; `before` is the state the decision was made from (`None` for a
/// create). The spec row is rewritten only if the spec changed.
fn write_job(tx: &Transaction<'_>, job: &Job, before: Option<&Job>) -> Result<(), JobStoreError> {
    let id = &job.id.as_bytes()[..];
    let live = encode(&live_of(job))?;
    let spec = spec_of(job);
    let changed = match before {
        None => {
            tx.prepare_cached("INSERT INTO job_specs (id, body) VALUES (?1, ?2)")?
                .execute(params![id, encode(&spec)?])?;
            tx.prepare_cached(
                "INSERT INTO jobs (id, extension, state, acknowledged, created_ms, live)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                id,
                job.extension,
                job.state.as_str(),
                job.acknowledged,
                job.created_ms,
                live
            ])?
        }
        Some(before) => {
            if spec_of(before) != spec {
                tx.prepare_cached("UPDATE job_specs SET body = ?2 WHERE id = ?1")?
                    .execute(params![id, encode(&spec)?])?;
            }
            tx.prepare_cached(
                "UPDATE jobs SET state = ?2, acknowledged = ?3, live = ?4 WHERE id = ?1",
            )?
            .execute(params![id, job.state.as_str(), job.acknowledged, live])?
        }
    };
    // Both sides of the write: the decision was made from rows this transaction read.
    if changed != 1 {
        return Err(JobStoreError::Corrupt(format!(
            "writing job {} touched {changed} rows",
            job.id
        )));
    }
    Ok(())
}

fn write_all(
    tx: &Transaction<'_>,
    writes: Vec<JobWrite>,
    before: &HashMap<Uuid, Job>,
) -> Result<Vec<Job>, JobStoreError> {
    let mut out = Vec::with_capacity(writes.len());
    for w in writes {
        let prior =
            if w.insert {
                None
            } else {
                Some(before.get(&w.job.id).ok_or_else(|| {
                    corrupt(format!("update of job {} that was not read", w.job.id))
                })?)
            };
        write_job(tx, &w.job, prior)?;
        if let Some(r) = &w.receipt {
            // Only the pointer is stored; check now that the job's final rows rebuild it.
            if *r != Receipt::of(&w.job, r.acknowledged_ms) {
                return Err(corrupt(format!(
                    "receipt of job {} does not match it",
                    r.job_id
                )));
            }
            tx.prepare_cached(
                "INSERT INTO receipts (job_id, content_hash, acknowledged_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![
                &r.job_id.as_bytes()[..],
                &r.content_hash.0[..],
                r.acknowledged_ms
            ])?;
        }
        out.push(w.job);
    }
    Ok(out)
}

fn collect_jobs(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<Job>, JobStoreError> {
    let rows = stmt.query_map(params, |r| JobRow::read(r, 0))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row?.decode()?);
    }
    Ok(out)
}

const RECEIPT_SELECT: &str =
    "SELECT r.acknowledged_ms, j.id, j.state, j.acknowledged, j.live, s.body
     FROM receipts r JOIN jobs j ON j.id = r.job_id JOIN job_specs s ON s.id = r.job_id";

fn collect_receipts(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<Receipt>, JobStoreError> {
    let rows = stmt.query_map(params, |r| Ok((r.get::<_, i64>(0)?, JobRow::read(r, 1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (acknowledged_ms, job) = row?;
        out.push(Receipt::of(&job.decode()?, acknowledged_ms));
    }
    Ok(out)
}

impl Store {
    fn update_policy(
        &mut self,
        extension: &str,
        change: impl FnOnce(&mut ExtensionPolicy),
    ) -> Result<(), JobStoreError> {
        let tx = self.conn.transaction()?;
        let mut policy = load_policy(&tx, extension)?;
        change(&mut policy);
        save_policy(&tx, extension, &policy)?;
        tx.commit()?;
        Ok(())
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store {
    /// Whether content `hash` was delivered by a job that succeeded and was acknowledged (a
    /// receipt of a succeeded job): one index lookup, so a caller going over a whole library
    /// holds no set of every delivered hash.
    pub fn delivered_with_receipt(&self, hash: &ContentHash) -> Result<bool, JobStoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM receipts r JOIN jobs j ON j.id = r.job_id
             WHERE r.content_hash = ?1 AND j.state = ?2)",
        )?;
        Ok(
            stmt.query_row(params![&hash.0[..], JobState::Succeeded.as_str()], |r| {
                r.get::<_, bool>(0)
            })?,
        )
    }

    /// The extension's unacknowledged jobs by state: one range of the `jobs_by_action` index,
    /// about one job limit long.
    pub fn job_counts(&self, extension: &str) -> Result<JobCounts, JobStoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT state, COUNT(*) FROM jobs WHERE extension = ?1 AND acknowledged = 0
             GROUP BY state",
        )?;
        let rows = stmt.query_map([extension], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        let mut c = JobCounts::default();
        for row in rows {
            let (state, n) = row?;
            let n = u32::try_from(n).map_err(corrupt)?;
            match state.as_str() {
                s if s == JobState::Registered.as_str() => c.registered = n,
                s if s == JobState::Pending.as_str() => c.pending = n,
                s if s == JobState::Succeeded.as_str() => c.succeeded = n,
                s if s == JobState::Failed.as_str() => c.failed = n,
                _ => {}
            }
        }
        Ok(c)
    }
}

impl JobStore for Store {
    fn policy(&self, extension: &str) -> Result<ExtensionPolicy, JobStoreError> {
        load_policy(&self.conn, extension)
    }

    fn extensions(&self) -> Result<Vec<String>, JobStoreError> {
        // Every job's extension has a settings row: creating a job needs consented bases.
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM extensions ORDER BY id")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn set_destination_bases(
        &mut self,
        extension: &str,
        bases: &[UrlBase],
    ) -> Result<(), JobStoreError> {
        self.update_policy(extension, |p| p.bases = bases.to_vec())
    }

    fn set_job_limit(&mut self, extension: &str, job_limit: u32) -> Result<(), JobStoreError> {
        self.update_policy(extension, |p| p.job_limit = job_limit)
    }

    fn set_max_retries(&mut self, extension: &str, max_retries: u32) -> Result<(), JobStoreError> {
        self.update_policy(extension, |p| p.max_retries = max_retries)
    }

    fn transaction(
        &mut self,
        extension: &str,
        items: &[TxItem],
        now_ms: i64,
    ) -> Result<Vec<Job>, JobStoreError> {
        // IMMEDIATE: take the write lock before reading the view, so no other connection can
        // change it between the decision and the write.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut jobs = HashMap::with_capacity(items.len());
        for id in referenced_ids(items) {
            if let Some(j) = load_job(&tx, id)? {
                jobs.insert(id, j);
            }
        }
        let view = TxView {
            extension,
            jobs: &jobs,
            unacknowledged: count_unacknowledged(&tx, extension)?,
        };
        let policy = load_policy(&tx, extension)?;
        // A rejection drops `tx`, which rolls back: nothing was written anyway.
        let writes = plan_transaction(&view, items, &policy, now_ms)?;
        let out = write_all(&tx, writes, &jobs)?;
        tx.commit()?;
        Ok(out)
    }

    fn fetch(&self, extension: &str, action: Action) -> Result<Vec<Job>, JobStoreError> {
        let max_retries = load_policy(&self.conn, extension)?.max_retries;
        // The index narrows to the action's states; core's predicate decides the exact set.
        // Every job any action returns is unacknowledged (registered and pending ones always
        // are), so the query reads only the unacknowledged part of the index.
        let states = action.states();
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM {JOB_FROM} WHERE j.extension = ?1 AND j.acknowledged = 0
             AND j.state IN (?2, ?3) ORDER BY j.created_ms, j.id"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let second = states.get(1).unwrap_or(&states[0]);
        let mut out = collect_jobs(
            &mut stmt,
            params![extension, states[0].as_str(), second.as_str()],
        )?;
        out.retain(|j| j.in_action(action, max_retries));
        Ok(out)
    }

    fn record(
        &mut self,
        events: &[TransferEvent],
        now_ms: i64,
    ) -> Result<Vec<Result<Job, TransitionError>>, JobStoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let current = load_job(&tx, e.job_id())?;
            match apply_event(current.as_ref(), e, now_ms) {
                Ok(next) => {
                    write_job(&tx, &next, current.as_ref())?;
                    out.push(Ok(next));
                }
                Err(refused) => out.push(Err(refused)),
            }
        }
        tx.commit()?;
        Ok(out)
    }

    fn job(&self, id: Uuid) -> Result<Option<Job>, JobStoreError> {
        load_job(&self.conn, id)
    }

    fn jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, JobStoreError> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM {JOB_FROM} WHERE (?1 IS NULL OR j.extension = ?1)
             AND (?2 IS NULL OR j.state = ?2) AND (?3 IS NULL OR j.acknowledged = ?3)
             AND (?4 IS NULL OR j.id > ?4) ORDER BY j.id LIMIT ?5"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        collect_jobs(
            &mut stmt,
            params![
                filter.extension,
                filter.state.map(JobState::as_str),
                filter.acknowledged,
                filter.after.map(|a| a.as_bytes().to_vec()),
                to_i64(filter.page())
            ],
        )
    }

    fn receipts(&self, limit: usize, offset: usize) -> Result<Vec<Receipt>, JobStoreError> {
        let sql = format!("{RECEIPT_SELECT} ORDER BY r.seq DESC LIMIT ?1 OFFSET ?2");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        collect_receipts(&mut stmt, params![to_i64(limit), to_i64(offset)])
    }

    fn receipts_for_hash(&self, hash: &ContentHash) -> Result<Vec<Receipt>, JobStoreError> {
        let sql = format!("{RECEIPT_SELECT} WHERE r.content_hash = ?1 ORDER BY r.seq DESC");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        collect_receipts(&mut stmt, [&hash.0[..]])
    }

    fn unacknowledged_count(&self, extension: &str) -> Result<u32, JobStoreError> {
        count_unacknowledged(&self.conn, extension)
    }

    fn cancel_all(&mut self, extension: &str, now_ms: i64) -> Result<Vec<Job>, JobStoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let out = cancel_all_in(&tx, extension, now_ms)?;
        tx.commit()?;
        Ok(out)
    }
}

/// Cancels every registered and pending job of `extension` inside `tx` (which the caller
/// commits): shared by [`JobStore::cancel_all`] and disabling an extension, which must cancel
/// in the same commit that records the disable.
pub(crate) fn cancel_all_in(
    tx: &Transaction<'_>,
    extension: &str,
    now_ms: i64,
) -> Result<Vec<Job>, JobStoreError> {
    let mine = {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM {JOB_FROM} WHERE j.extension = ?1
             AND j.acknowledged = 0 AND j.state IN ('registered', 'pending')
             ORDER BY j.created_ms, j.id"
        );
        let mut stmt = tx.prepare_cached(&sql)?;
        collect_jobs(&mut stmt, [extension])?
    };
    let writes = plan_cancel_all(&mine, now_ms);
    let before: HashMap<Uuid, Job> = mine.into_iter().map(|j| (j.id, j)).collect();
    write_all(tx, writes, &before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::MIGRATIONS;

    fn plan(store: &Store, sql: &str) -> String {
        let mut stmt = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let rows = stmt
            .query_map(params!["ext", "failed", "failed"], |r| {
                r.get::<_, String>(3)
            })
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    /// Fetch and the limit count must stay index range scans: a full scan over 100k jobs is
    /// what the 5 ms fetch budget forbids.
    #[test]
    fn fetch_and_count_read_the_action_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.db")).unwrap();
        let fetch = format!(
            "SELECT {JOB_COLUMNS} FROM {JOB_FROM} WHERE j.extension = ?1 AND j.acknowledged = 0
             AND j.state IN (?2, ?3) ORDER BY j.created_ms, j.id"
        );
        let p = plan(&store, &fetch);
        assert!(p.contains("USING INDEX jobs_by_action"), "{p}");
        assert!(!p.contains("SCAN j"), "{p}");
        let count = "SELECT COUNT(*) FROM jobs WHERE extension = ?1 AND acknowledged = 0 \
                     AND ?2 = ?3";
        let p = plan(&store, count);
        assert!(p.contains("USING COVERING INDEX jobs_by_action"), "{p}");
    }

    /// A store made before jobs existed (schema 1) gains the job tables on open.
    #[test]
    fn schema_1_store_upgrades() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        let version: i64 = store
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        store.set_job_limit("ext", 3).unwrap();
        assert_eq!(store.policy("ext").unwrap().job_limit, 3);
        assert_eq!(store.unacknowledged_count("ext").unwrap(), 0);
    }
}
