//! The upload job model (SPEC.md, "Jobs"): states, fetch-by-action, the job limit and the
//! all-or-nothing transaction rules, as pure functions every job store calls.
//!
//! Sans-io: callers load a [`TxView`] (the jobs a transaction touches and the extension's
//! unacknowledged count), pass `now_ms` and fresh ids in, and persist the [`JobWrite`]s that
//! come back in one atomic commit. Keeping the rules here means the SQLite store and the
//! in-memory store cannot disagree about them.

use crate::destination::{Destination, DestinationError, UrlBase};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use uuid::Uuid;

/// Ferry's default job limit per extension (PhotoKit does not publish its number).
pub const DEFAULT_JOB_LIMIT: u32 = 200;
/// How many times an extension may retry one failed job by default: once, as in PhotoKit.
pub const DEFAULT_MAX_RETRIES: u32 = 1;
/// Most items in one transaction; bounds the work and memory of a single commit.
pub const MAX_TX_ITEMS: usize = 1000;
/// Most metadata entries on one job, and their total size in bytes.
pub const MAX_METADATA_ENTRIES: usize = 32;
pub const MAX_METADATA_BYTES: usize = 4 * 1024;
/// Longest resource id, in bytes.
pub const MAX_RESOURCE_ID_BYTES: usize = 1024;
/// Attempts kept per job; older ones are dropped first.
pub const MAX_ATTEMPTS: usize = 16;
/// Response headers kept from a server, and their total size: a server's answer is not
/// ours to refuse, so the excess is dropped rather than failing the job.
pub const MAX_RESPONSE_HEADERS: usize = 64;
pub const MAX_RESPONSE_HEADER_BYTES: usize = 16 * 1024;

/// A resource's BLAKE3 hash, pinned on a job when it is created.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        s
    }

    pub fn from_hex(hex: &str) -> Option<ContentHash> {
        let b = hex.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = nibble(b[2 * i])? << 4 | nibble(b[2 * i + 1])?;
        }
        Some(ContentHash(out))
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.to_hex())
    }
}

impl From<ContentHash> for String {
    fn from(h: ContentHash) -> String {
        h.to_hex()
    }
}

impl TryFrom<String> for ContentHash {
    type Error = String;
    fn try_from(s: String) -> Result<ContentHash, String> {
        ContentHash::from_hex(&s).ok_or_else(|| format!("not a 64-digit hex hash: {s:?}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Registered,
    Pending,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Registered,
        JobState::Pending,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Registered => "registered",
            JobState::Pending => "pending",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn from_name(name: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an extension fetches jobs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Process,
    Retry,
    Acknowledge,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Process, Action::Retry, Action::Acknowledge];

    /// The states a job in this action's set may be in; stores narrow their query with this,
    /// then apply [`Job::in_action`] for the exact set.
    pub fn states(self) -> &'static [JobState] {
        match self {
            Action::Process => &[JobState::Registered, JobState::Pending],
            Action::Retry => &[JobState::Failed],
            Action::Acknowledge => &[JobState::Succeeded, JobState::Failed],
        }
    }
}

/// A stable reason a job failed. Serialised snake_case; a code Ferry does not know (from a newer
/// store or peer) is kept as `Other`, never dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum ErrorCode {
    NetworkLost,
    TimedOut,
    ServerError,
    ClientError,
    ResourceChanged,
    ResourceMissing,
    DestinationRefused,
    /// The server's answers made no sense (garbage, contradictory limits, success without
    /// the bytes).
    BadResponse,
    Other(String),
}

impl ErrorCode {
    const NAMES: [(ErrorCode, &'static str); 8] = [
        (ErrorCode::NetworkLost, "network_lost"),
        (ErrorCode::TimedOut, "timed_out"),
        (ErrorCode::ServerError, "server_error"),
        (ErrorCode::ClientError, "client_error"),
        (ErrorCode::ResourceChanged, "resource_changed"),
        (ErrorCode::ResourceMissing, "resource_missing"),
        (ErrorCode::DestinationRefused, "destination_refused"),
        (ErrorCode::BadResponse, "bad_response"),
    ];

    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::Other(name) => name,
            known => Self::NAMES
                .iter()
                .find(|(c, _)| c == known)
                .map(|(_, n)| *n)
                .unwrap_or("other"),
        }
    }

    pub fn from_name(name: &str) -> ErrorCode {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(c, _)| c.clone())
            .unwrap_or_else(|| ErrorCode::Other(name.to_owned()))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ErrorCode> for String {
    fn from(c: ErrorCode) -> String {
        c.as_str().to_owned()
    }
}

impl From<String> for ErrorCode {
    fn from(s: String) -> ErrorCode {
        ErrorCode::from_name(&s)
    }
}

/// How a transfer ended, as the transfer engine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Succeeded {
        status: u16,
        headers: Vec<(String, String)>,
    },
    /// `status` is absent when no response arrived (connection lost, timeout, file changed).
    Failed {
        status: Option<u16>,
        headers: Vec<(String, String)>,
        error: ErrorCode,
    },
}

/// One try at sending a job's bytes, kept for the user's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    /// `succeeded`, `failed` or `cancelled` once over.
    pub state: Option<JobState>,
    pub status: Option<u16>,
    pub error: Option<ErrorCode>,
}

/// A job as stored and as shown to its extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: Uuid,
    pub extension: String,
    pub resource_id: String,
    pub content_hash: ContentHash,
    pub destination: Destination,
    pub metadata: BTreeMap<String, String>,
    pub state: JobState,
    pub acknowledged: bool,
    /// How many times the extension re-queued this job after it failed.
    pub retries: u32,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub finished_ms: Option<i64>,
    pub attempts: Vec<Attempt>,
    pub status: Option<u16>,
    /// Names lower-cased.
    pub response_headers: Vec<(String, String)>,
    pub error: Option<ErrorCode>,
}

impl Job {
    /// The job as people, logs and reports may see it: secret header values redacted. The
    /// extension that made it gets it whole (`jobs.fetch`).
    pub fn redacted(mut self) -> Job {
        self.destination = self.destination.redacted();
        self
    }

    /// Whether fetch-by-`action` returns this job: SPEC.md's sets, exactly.
    pub fn in_action(&self, action: Action, max_retries: u32) -> bool {
        match action {
            Action::Process => matches!(self.state, JobState::Registered | JobState::Pending),
            Action::Retry => {
                self.state == JobState::Failed && !self.acknowledged && self.retries < max_retries
            }
            Action::Acknowledge => {
                matches!(self.state, JobState::Succeeded | JobState::Failed) && !self.acknowledged
            }
        }
    }

    /// Whether the job holds one of its extension's `job_limit` slots.
    pub fn counts_against_limit(&self) -> bool {
        self.state != JobState::Cancelled && !self.acknowledged
    }
}

/// What Ferry remembers of a job once its extension let go of it (acknowledged or cancelled):
/// the user's history and the dedup index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub job_id: Uuid,
    pub extension: String,
    pub resource_id: String,
    pub content_hash: ContentHash,
    pub destination: Destination,
    /// `succeeded`, `failed` or `cancelled`.
    pub state: JobState,
    pub status: Option<u16>,
    pub response_headers: Vec<(String, String)>,
    pub error: Option<ErrorCode>,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
    pub acknowledged_ms: i64,
}

impl Receipt {
    /// The receipt with its destination's secret header values redacted.
    pub fn redacted(mut self) -> Receipt {
        self.destination = self.destination.redacted();
        self
    }

    /// The receipt of a job let go of at `acknowledged_ms`. A job never changes after that
    /// (no transition applies to an acknowledged job), so a store may keep the final job and
    /// rebuild the receipt from it.
    pub fn of(job: &Job, acknowledged_ms: i64) -> Receipt {
        Receipt {
            job_id: job.id,
            extension: job.extension.clone(),
            resource_id: job.resource_id.clone(),
            content_hash: job.content_hash,
            destination: job.destination.clone(),
            state: job.state,
            status: job.status,
            response_headers: job.response_headers.clone(),
            error: job.error.clone(),
            created_ms: job.created_ms,
            finished_ms: job.finished_ms,
            acknowledged_ms,
        }
    }
}

/// The per-extension settings the rules read: consented bases, the limit and the retry count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtensionPolicy {
    pub job_limit: u32,
    pub max_retries: u32,
    pub bases: Vec<UrlBase>,
}

impl Default for ExtensionPolicy {
    /// No bases: an extension nobody configured can create nothing.
    fn default() -> ExtensionPolicy {
        ExtensionPolicy {
            job_limit: DEFAULT_JOB_LIMIT,
            max_retries: DEFAULT_MAX_RETRIES,
            bases: Vec::new(),
        }
    }
}

/// A new job as an extension asks for it; the id is minted by the caller (UUID v7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewJob {
    pub id: Uuid,
    pub resource_id: String,
    pub content_hash: ContentHash,
    pub destination: Destination,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// One change in a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TxItem {
    Create(NewJob),
    Retry {
        job: Uuid,
        destination: Option<Destination>,
    },
    Acknowledge {
        job: Uuid,
    },
    Cancel {
        job: Uuid,
    },
}

impl TxItem {
    pub fn job_id(&self) -> Uuid {
        match self {
            TxItem::Create(n) => n.id,
            TxItem::Retry { job, .. } | TxItem::Acknowledge { job } | TxItem::Cancel { job } => {
                *job
            }
        }
    }

    fn verb(&self) -> &'static str {
        match self {
            TxItem::Create(_) => "create",
            TxItem::Retry { .. } => "retry",
            TxItem::Acknowledge { .. } => "acknowledge",
            TxItem::Cancel { .. } => "cancel",
        }
    }
}

/// The state a transaction is decided against. `jobs` holds every existing job whose id an
/// item names (any extension); ids absent from it do not exist.
#[derive(Debug, Clone, Copy)]
pub struct TxView<'a> {
    pub extension: &'a str,
    pub jobs: &'a HashMap<Uuid, Job>,
    /// The extension's jobs that count against its limit, before the transaction.
    pub unacknowledged: u32,
}

/// One row to persist: the job's full new state, and a receipt when it was let go of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobWrite {
    pub job: Job,
    /// True for a create (insert), false for an update of an existing row.
    pub insert: bool,
    pub receipt: Option<Receipt>,
}

/// A transaction rejected as a whole: the first offending item, by index, and its job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("transaction item {index} ({job}): {reason}")]
pub struct TransactionError {
    pub index: usize,
    pub job: Uuid,
    pub reason: Rejection,
}

impl TransactionError {
    /// The stable wire code for the reason.
    pub fn code(&self) -> &'static str {
        self.reason.code()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the transaction would hold {would_hold} jobs, over the limit of {job_limit}")]
    LimitExceeded { job_limit: u32, would_hold: u32 },
    #[error("no such job")]
    UnknownJob,
    #[error("the job belongs to another extension")]
    ForeignJob,
    #[error("a job with this id already exists")]
    JobExists,
    #[error("the job appears again in this transaction (first at item {first_index})")]
    DuplicateItem { first_index: usize },
    #[error("cannot {action} a job that is {state}{}", if *acknowledged { " and acknowledged" } else { "" })]
    WrongState {
        action: &'static str,
        state: JobState,
        acknowledged: bool,
    },
    #[error("the job was already retried {retries} times (at most {max_retries})")]
    RetriesExhausted { retries: u32, max_retries: u32 },
    #[error("bad destination: {0}")]
    Destination(#[from] DestinationError),
    #[error("bad resource id (empty or over {MAX_RESOURCE_ID_BYTES} bytes)")]
    ResourceId,
    #[error(
        "bad metadata: at most {MAX_METADATA_ENTRIES} entries and {MAX_METADATA_BYTES} bytes, keys of [a-z0-9_.-]"
    )]
    Metadata,
    #[error("too many items (at most {MAX_TX_ITEMS})")]
    TooManyItems,
}

impl Rejection {
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::LimitExceeded { .. } => "limit_exceeded",
            Rejection::UnknownJob => "unknown_job",
            Rejection::ForeignJob => "foreign_job",
            Rejection::JobExists => "job_exists",
            Rejection::DuplicateItem { .. } => "duplicate_item",
            Rejection::WrongState { .. } => "wrong_state",
            Rejection::RetriesExhausted { .. } => "retries_exhausted",
            Rejection::Destination(_) => "bad_destination",
            Rejection::ResourceId => "bad_resource_id",
            Rejection::Metadata => "bad_metadata",
            Rejection::TooManyItems => "too_many_items",
        }
    }
}

fn metadata_ok(m: &BTreeMap<String, String>) -> bool {
    let bytes: usize = m.iter().map(|(k, v)| k.len() + v.len()).sum();
    m.len() <= MAX_METADATA_ENTRIES
        && bytes <= MAX_METADATA_BYTES
        && m.keys().all(|k| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
        })
        && m.values().all(|v| !v.chars().any(char::is_control))
}

/// Decides a transaction: every item is checked against `view` and `policy`; either all
/// writes come back, in item order, or the first violation does and nothing may be written.
///
/// The limit is judged on the transaction as a whole (acknowledges and cancels in it free
/// slots for its creates and retries, whatever their order); the item named is the first
/// slot-taking item that does not fit.
pub fn plan_transaction(
    view: &TxView<'_>,
    items: &[TxItem],
    policy: &ExtensionPolicy,
    now_ms: i64,
) -> Result<Vec<JobWrite>, TransactionError> {
    let reject = |index: usize, reason: Rejection| TransactionError {
        index,
        job: items[index].job_id(),
        reason,
    };
    if items.len() > MAX_TX_ITEMS {
        return Err(reject(MAX_TX_ITEMS, Rejection::TooManyItems));
    }
    let mut seen: HashMap<Uuid, usize> = HashMap::with_capacity(items.len());
    let mut writes = Vec::with_capacity(items.len());
    let mut takers = Vec::new();
    let mut freed: u32 = 0;
    for (index, item) in items.iter().enumerate() {
        let id = item.job_id();
        if let Some(&first_index) = seen.get(&id) {
            return Err(reject(index, Rejection::DuplicateItem { first_index }));
        }
        seen.insert(id, index);
        let existing = view.jobs.get(&id);
        let current = match (item, existing) {
            (TxItem::Create(_), Some(_)) => return Err(reject(index, Rejection::JobExists)),
            (TxItem::Create(_), None) => None,
            (_, None) => return Err(reject(index, Rejection::UnknownJob)),
            (_, Some(job)) if job.extension != view.extension => {
                return Err(reject(index, Rejection::ForeignJob));
            }
            (_, Some(job)) => Some(job),
        };
        let wrong_state = |job: &Job| Rejection::WrongState {
            action: item.verb(),
            state: job.state,
            acknowledged: job.acknowledged,
        };
        let write = match (item, current) {
            (TxItem::Create(new), _) => {
                if new.resource_id.is_empty() || new.resource_id.len() > MAX_RESOURCE_ID_BYTES {
                    return Err(reject(index, Rejection::ResourceId));
                }
                if !metadata_ok(&new.metadata) {
                    return Err(reject(index, Rejection::Metadata));
                }
                let destination = new
                    .destination
                    .validate(&policy.bases)
                    .map_err(|e| reject(index, e.into()))?;
                takers.push(index);
                JobWrite {
                    insert: true,
                    receipt: None,
                    job: Job {
                        id: new.id,
                        extension: view.extension.to_owned(),
                        resource_id: new.resource_id.clone(),
                        content_hash: new.content_hash,
                        destination,
                        metadata: new.metadata.clone(),
                        state: JobState::Registered,
                        acknowledged: false,
                        retries: 0,
                        created_ms: now_ms,
                        updated_ms: now_ms,
                        finished_ms: None,
                        attempts: Vec::new(),
                        status: None,
                        response_headers: Vec::new(),
                        error: None,
                    },
                }
            }
            (TxItem::Retry { destination, .. }, Some(job)) => {
                if job.state != JobState::Failed || job.acknowledged {
                    return Err(reject(index, wrong_state(job)));
                }
                if job.retries >= policy.max_retries {
                    return Err(reject(
                        index,
                        Rejection::RetriesExhausted {
                            retries: job.retries,
                            max_retries: policy.max_retries,
                        },
                    ));
                }
                let mut next = job.clone();
                // The old destination is checked again too: the user may have narrowed the
                // bases since the job was created, and a retry is a new request to send.
                next.destination = destination
                    .as_ref()
                    .unwrap_or(&job.destination)
                    .validate(&policy.bases)
                    .map_err(|e| reject(index, e.into()))?;
                // A failed, unacknowledged job already holds a slot; re-queueing keeps it
                // (the limit is re-checked below, so a lowered limit is honoured).
                takers.push(index);
                freed += 1;
                next.state = JobState::Registered;
                next.retries += 1;
                next.updated_ms = now_ms;
                next.finished_ms = None;
                next.status = None;
                next.response_headers.clear();
                next.error = None;
                JobWrite {
                    job: next,
                    insert: false,
                    receipt: None,
                }
            }
            (TxItem::Acknowledge { .. }, Some(job)) => {
                if !job.in_action(Action::Acknowledge, u32::MAX) {
                    return Err(reject(index, wrong_state(job)));
                }
                let mut next = job.clone();
                next.acknowledged = true;
                next.updated_ms = now_ms;
                freed += 1;
                JobWrite {
                    receipt: Some(Receipt::of(&next, now_ms)),
                    job: next,
                    insert: false,
                }
            }
            (TxItem::Cancel { .. }, Some(job)) => {
                if !job.in_action(Action::Process, u32::MAX) {
                    return Err(reject(index, wrong_state(job)));
                }
                freed += 1;
                let next = cancelled(job, now_ms);
                JobWrite {
                    receipt: Some(Receipt::of(&next, now_ms)),
                    job: next,
                    insert: false,
                }
            }
            (_, None) => return Err(reject(index, Rejection::UnknownJob)),
        };
        writes.push(write);
    }
    // Every slot this transaction frees is available to every taker in it.
    let base = i64::from(view.unacknowledged) - i64::from(freed);
    let total = base + takers.len() as i64;
    for (n, &index) in takers.iter().enumerate() {
        if base + n as i64 + 1 > i64::from(policy.job_limit) {
            return Err(reject(
                index,
                Rejection::LimitExceeded {
                    job_limit: policy.job_limit,
                    would_hold: u32::try_from(total.max(0)).unwrap_or(u32::MAX),
                },
            ));
        }
    }
    Ok(writes)
}

fn cancelled(job: &Job, now_ms: i64) -> Job {
    let mut next = job.clone();
    if next.state == JobState::Pending
        && let Some(last) = next.attempts.last_mut()
        && last.finished_ms.is_none()
    {
        last.finished_ms = Some(now_ms);
        last.state = Some(JobState::Cancelled);
    }
    next.state = JobState::Cancelled;
    next.acknowledged = true;
    next.updated_ms = now_ms;
    next.finished_ms = Some(now_ms);
    next
}

/// Cancels every registered and pending job in `jobs` (an extension being disabled).
pub fn plan_cancel_all<'a>(jobs: impl IntoIterator<Item = &'a Job>, now_ms: i64) -> Vec<JobWrite> {
    jobs.into_iter()
        .filter(|j| j.in_action(Action::Process, u32::MAX))
        .map(|j| {
            let next = cancelled(j, now_ms);
            JobWrite {
                receipt: Some(Receipt::of(&next, now_ms)),
                job: next,
                insert: false,
            }
        })
        .collect()
}

/// A transfer event on one job, from the transfer engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TransferEvent {
    Start { job: Uuid },
    Finish { job: Uuid, outcome: Outcome },
}

impl TransferEvent {
    pub fn job_id(&self) -> Uuid {
        match self {
            TransferEvent::Start { job } | TransferEvent::Finish { job, .. } => *job,
        }
    }
}

/// A transfer event that does not fit the job's state. The engine drops such events (a job
/// cancelled mid-transfer still reports its finish); they are not faults of the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("no such job {0}")]
    UnknownJob(Uuid),
    #[error("cannot {event} job {job}: it is {state}")]
    WrongState {
        job: Uuid,
        event: &'static str,
        state: JobState,
    },
}

/// Applies one transfer event: `start` takes a registered job to pending, `finish` a pending
/// one to succeeded or failed with the server's answer.
pub fn apply_event(
    job: Option<&Job>,
    event: &TransferEvent,
    now_ms: i64,
) -> Result<Job, TransitionError> {
    let job = job.ok_or(TransitionError::UnknownJob(event.job_id()))?;
    let wrong = |event| TransitionError::WrongState {
        job: job.id,
        event,
        state: job.state,
    };
    let mut next = job.clone();
    next.updated_ms = now_ms;
    match event {
        TransferEvent::Start { .. } => {
            if job.state != JobState::Registered {
                return Err(wrong("start"));
            }
            next.state = JobState::Pending;
            if next.attempts.len() >= MAX_ATTEMPTS {
                next.attempts.remove(0);
            }
            next.attempts.push(Attempt {
                started_ms: now_ms,
                finished_ms: None,
                state: None,
                status: None,
                error: None,
            });
        }
        TransferEvent::Finish { outcome, .. } => {
            if job.state != JobState::Pending {
                return Err(wrong("finish"));
            }
            let (state, status, headers, error) = match outcome {
                Outcome::Succeeded { status, headers } => {
                    (JobState::Succeeded, Some(*status), headers, None)
                }
                Outcome::Failed {
                    status,
                    headers,
                    error,
                } => (JobState::Failed, *status, headers, Some(error.clone())),
            };
            next.state = state;
            next.finished_ms = Some(now_ms);
            next.status = status;
            next.response_headers = bounded_headers(headers);
            next.error = error.clone();
            if let Some(last) = next.attempts.last_mut()
                && last.finished_ms.is_none()
            {
                last.finished_ms = Some(now_ms);
                last.state = Some(state);
                last.status = status;
                last.error = error;
            }
        }
    }
    Ok(next)
}

/// Lower-cases names and keeps what fits in the bounds, in the server's order.
fn bounded_headers(headers: &[(String, String)]) -> Vec<(String, String)> {
    let mut bytes = 0;
    headers
        .iter()
        .take(MAX_RESPONSE_HEADERS)
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .take_while(|(n, v)| {
            bytes += n.len() + v.len();
            bytes <= MAX_RESPONSE_HEADER_BYTES
        })
        .collect()
}

/// The ids named by a transaction, for loading its view. Duplicates are kept out.
pub fn referenced_ids(items: &[TxItem]) -> Vec<Uuid> {
    let mut seen = HashSet::new();
    items
        .iter()
        .map(TxItem::job_id)
        .filter(|id| seen.insert(*id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_stable_and_unknown_codes_survive() {
        for (code, name) in ErrorCode::NAMES.iter() {
            assert_eq!(serde_json::to_string(code).unwrap(), format!("\"{name}\""));
        }
        let unknown: ErrorCode = serde_json::from_str("\"quota_exceeded\"").unwrap();
        assert_eq!(unknown, ErrorCode::Other("quota_exceeded".into()));
        assert_eq!(
            serde_json::to_string(&unknown).unwrap(),
            "\"quota_exceeded\""
        );
        assert_eq!(
            serde_json::to_string(&JobState::Succeeded).unwrap(),
            "\"succeeded\""
        );
        assert_eq!(
            serde_json::to_string(&Action::Acknowledge).unwrap(),
            "\"acknowledge\""
        );
    }

    #[test]
    fn content_hash_hex_round_trips_and_rejects_junk() {
        let h = ContentHash(std::array::from_fn(|i| i as u8 * 7));
        assert_eq!(ContentHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(ContentHash::from_hex(&h.to_hex().to_uppercase()), Some(h));
        assert_eq!(ContentHash::from_hex("abc"), None);
        assert_eq!(ContentHash::from_hex(&"zz".repeat(32)), None);
        assert_eq!(ContentHash::from_hex(&"\u{e9}".repeat(32)), None);
    }

    #[test]
    fn response_headers_are_bounded() {
        let many: Vec<(String, String)> = (0..100)
            .map(|i| (format!("X-H{i}"), "v".repeat(400)))
            .collect();
        let kept = bounded_headers(&many);
        assert!(kept.len() < 64 && !kept.is_empty());
        assert!(
            kept.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>() <= MAX_RESPONSE_HEADER_BYTES
        );
        assert_eq!(kept[0].0, "x-h0");
    }
}
