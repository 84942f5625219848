//! The answers to "is everything safe?" and "why is this one waiting?", computed from the
//! state database. The CLI computes them itself when no daemon runs; the daemon's control API
//! serves the same structures, with its live decision filled in.

use std::collections::{BTreeMap, HashMap, HashSet};

use ferry_core::job::{ContentHash, Job, JobState, Receipt};
use ferry_core::policy::Decision;
use ferry_host::serve::ScopeFilter;
use ferry_store::extensions::Consent;
use ferry_store::library::hex;
use ferry_store::{JobFilter, JobStore, JobStoreError, Store, StoreError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Jobs(#[from] JobStoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no asset {0:?} in the library index (see `ferry library ls`)")]
    NoSuchAsset(String),
}

/// Jobs of one extension by what they are waiting for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExtensionStatus {
    pub extension: String,
    /// Jobs that delivered their resource.
    pub succeeded: u64,
    /// Registered or pending: still to go.
    pub pending: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Pending jobs by why they wait now (`in_flight_or_next` when nothing holds them).
    pub waiting: BTreeMap<String, u64>,
}

/// The library's size.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LibraryTotals {
    pub assets: u64,
    pub resources: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub library: LibraryTotals,
    /// Library resources whose content a job delivered.
    pub resources_backed_up: u64,
    pub resources_not_backed_up: u64,
    /// True when every indexed resource was delivered and nothing failed or waits.
    pub safe: bool,
    pub extensions: Vec<ExtensionStatus>,
    /// The conditions' decision now, when known (the daemon observes them).
    pub decision: Option<Decision>,
    #[serde(default)]
    pub daemon: Option<serde_json::Value>,
    /// How each installed or consented extension's calls went (failures, backoff).
    #[serde(default)]
    pub extension_calls: Vec<ferry_host::ExtensionStatus>,
    /// Why this device does not upload, when its Ferry moved to another device (or a move is
    /// under way).
    #[serde(default)]
    pub upload_blocked: Option<String>,
}

/// How each extension's calls went, from the host's records in the store and the manifests in
/// `extensions_dir` and the state folder. Empty if the store cannot be read.
pub fn extension_calls(
    state_dir: &std::path::Path,
    extensions_dir: &std::path::Path,
) -> Vec<ferry_host::ExtensionStatus> {
    let Ok(store) = Store::open(&state_dir.join("ferry.db")) else {
        return Vec::new();
    };
    let config = ferry_host::HostConfig::new(extensions_dir.to_owned(), state_dir.to_owned());
    ferry_host::Host::new(std::sync::Arc::new(std::sync::Mutex::new(store)), config)
        .map(|h| h.status())
        .unwrap_or_default()
}

/// Every job, all pages.
pub fn all_jobs(store: &Store) -> Result<Vec<Job>, JobStoreError> {
    jobs_where(store, |_| true)
}

/// The jobs `keep` accepts, read page by page: memory holds one page and what is kept, not
/// every job the store ever had (acknowledged jobs stay, so that is one per upload made).
pub fn jobs_where(
    store: &Store,
    mut keep: impl FnMut(&Job) -> bool,
) -> Result<Vec<Job>, JobStoreError> {
    let mut out = Vec::new();
    for_each_job(store, |j| {
        if keep(&j) {
            out.push(j);
        }
    })?;
    Ok(out)
}

/// Every job, in id order, one page in memory at a time.
pub fn for_each_job(store: &Store, mut visit: impl FnMut(Job)) -> Result<(), JobStoreError> {
    let mut after: Option<Uuid> = None;
    loop {
        let page = store.jobs(&JobFilter {
            after,
            ..JobFilter::default()
        })?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        page.into_iter().for_each(&mut visit);
    }
    Ok(())
}

/// Retry not-before times of jobs between attempts, from their upload sessions.
pub(crate) fn backoff_until(store: &Store) -> Result<HashMap<Uuid, i64>, StoreError> {
    #[derive(serde::Deserialize)]
    struct S {
        #[serde(default)]
        not_before_ms: i64,
    }
    Ok(store
        .upload_sessions()?
        .into_iter()
        .filter_map(|(id, body)| {
            serde_json::from_str::<S>(&body)
                .ok()
                .map(|s| (id, s.not_before_ms))
        })
        .collect())
}

pub(crate) fn waiting_reason(
    job: &Job,
    decision: Option<&Decision>,
    backoff: &HashMap<Uuid, i64>,
    now_ms: i64,
) -> String {
    if let Some(Decision::Wait(r)) = decision {
        return r.code().to_owned();
    }
    match backoff.get(&job.id) {
        Some(&t) if t > now_ms => "retry_backoff".to_owned(),
        _ if job.state == JobState::Pending => "in_flight".to_owned(),
        _ => "queued".to_owned(),
    }
}

pub fn status(
    store: &Store,
    decision: Option<Decision>,
    now_ms: i64,
) -> Result<Status, ReportError> {
    let c = store.library_counts()?;
    let library = LibraryTotals {
        assets: c.assets,
        resources: c.resources,
        bytes: c.bytes,
    };
    let backoff = backoff_until(store)?;
    let mut per: BTreeMap<String, ExtensionStatus> = BTreeMap::new();
    // Page by page, holding no list of every job nor a set of every delivered hash (a library
    // of a million): what succeeded and was acknowledged is asked of the receipts' index;
    // only the few succeeded jobs not yet acknowledged, and the failed ones, are kept.
    let mut unacknowledged_delivered: HashSet<[u8; 32]> = HashSet::new();
    let mut failed_hashes: Vec<ferry_core::ContentHash> = Vec::new();
    for_each_job(store, |j| {
        let e = per
            .entry(j.extension.clone())
            .or_insert_with(|| ExtensionStatus {
                extension: j.extension.clone(),
                ..Default::default()
            });
        match j.state {
            JobState::Succeeded => {
                e.succeeded += 1;
                if !j.acknowledged {
                    unacknowledged_delivered.insert(j.content_hash.0);
                }
            }
            JobState::Failed => {
                e.failed += 1;
                failed_hashes.push(j.content_hash);
            }
            JobState::Cancelled => e.cancelled += 1,
            JobState::Registered | JobState::Pending => {
                e.pending += 1;
                *e.waiting
                    .entry(waiting_reason(&j, decision.as_ref(), &backoff, now_ms))
                    .or_default() += 1;
            }
        }
    })?;
    let delivered = |h: &ferry_core::ContentHash| -> Result<bool, JobStoreError> {
        Ok(unacknowledged_delivered.contains(&h.0) || store.delivered_with_receipt(h)?)
    };
    let mut backed_up = 0u64;
    let mut total = 0u64;
    // Every indexed path is absolute: "/" covers the whole index.
    let mut after_path: Option<std::path::PathBuf> = None;
    loop {
        let page = store.resource_stats_under_page(
            std::path::Path::new("/"),
            after_path.as_deref(),
            10_000,
        )?;
        let Some(last) = page.last() else { break };
        after_path = Some(last.path.clone());
        for r in &page {
            total += 1;
            if delivered(&ferry_core::ContentHash(r.blake3))? {
                backed_up += 1;
            }
        }
    }
    let extensions: Vec<ExtensionStatus> = per.into_values().collect();
    let busy = extensions.iter().any(|e| e.pending > 0);
    // A failed job whose content was delivered later (retry, another job) is no risk.
    let mut failed_open = 0usize;
    for h in &failed_hashes {
        if !delivered(h)? {
            failed_open += 1;
        }
    }
    Ok(Status {
        library,
        resources_backed_up: backed_up,
        resources_not_backed_up: total - backed_up,
        safe: backed_up == total && !busy && failed_open == 0,
        extensions,
        decision,
        daemon: None,
        extension_calls: Vec::new(),
        upload_blocked: crate::migrate::upload_block(store)?,
    })
}

/// One resource of an asset and what became of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceWhy {
    pub resource_id: String,
    #[serde(flatten, with = "ferry_core::path_text::path")]
    pub path: std::path::PathBuf,
    pub blake3: String,
    pub size_bytes: u64,
    /// `backed_up`, `waiting`, `failed`, `no_job`.
    pub verdict: String,
    /// A sentence for people.
    pub explanation: String,
    pub job: Option<Job>,
    /// Per extension that was ever enabled: what it did with this resource.
    #[serde(default)]
    pub by_extension: Vec<ExtensionWhy>,
}

/// What one extension did with one resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtensionWhy {
    pub extension: String,
    /// `backed_up`, `waiting`, `failed`, `cancelled`, `no_job`, `outside_scope`, `disabled`.
    pub verdict: String,
    pub explanation: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Why {
    pub asset_id: String,
    pub resources: Vec<ResourceWhy>,
}

pub fn why(
    store: &Store,
    asset: &str,
    decision: Option<Decision>,
    now_ms: i64,
) -> Result<Why, ReportError> {
    let resources = store.resources_of_asset(asset)?;
    if resources.is_empty() {
        return Err(ReportError::NoSuchAsset(asset.to_owned()));
    }
    // Only the jobs of this asset's resources or their content.
    let jobs = jobs_where(store, |j| {
        resources
            .iter()
            .any(|r| j.resource_id == r.id || j.content_hash.0 == r.blake3)
    })?;
    let backoff = backoff_until(store)?;
    let roots = store.roots()?;
    let consents: Vec<(Consent, ScopeFilter)> = store
        .consents()?
        .into_iter()
        .map(|c| {
            let scope = ScopeFilter::new(&ferry_host::consent::scope_of(&c), &roots);
            (c, scope)
        })
        .collect();
    let dir = store.asset(asset)?.map(|a| a.dir).unwrap_or_default();
    let mut out = Vec::new();
    for r in resources {
        // The newest job for this resource or its content.
        let job = jobs
            .iter()
            .filter(|j| j.resource_id == r.id || j.content_hash.0 == r.blake3)
            .max_by_key(|j| j.id)
            .cloned();
        let (verdict, explanation) = match &job {
            None => (
                "no_job",
                "no extension has created a job for it yet (the server may already hold it: \
                 run `ferry backup` on its folder to check)"
                    .to_owned(),
            ),
            Some(j) => match j.state {
                JobState::Succeeded => (
                    "backed_up",
                    format!(
                        "delivered to {} (HTTP {})",
                        j.destination.url,
                        j.status.unwrap_or(0)
                    ),
                ),
                JobState::Failed => (
                    "failed",
                    format!(
                        "the upload failed: {} after {} attempt(s){}",
                        j.error.as_ref().map(|e| e.as_str()).unwrap_or("unknown"),
                        j.attempts.len(),
                        j.status
                            .map(|s| format!(", last HTTP {s}"))
                            .unwrap_or_default()
                    ),
                ),
                JobState::Cancelled => ("no_job", "its job was cancelled".to_owned()),
                JobState::Registered | JobState::Pending => (
                    "waiting",
                    format!(
                        "waiting: {}",
                        waiting_reason(j, decision.as_ref(), &backoff, now_ms)
                    ),
                ),
            },
        };
        let by_extension = consents
            .iter()
            .map(|(c, scope)| {
                let job = jobs
                    .iter()
                    .filter(|j| {
                        j.extension == c.id
                            && (j.resource_id == r.id || j.content_hash.0 == r.blake3)
                    })
                    .max_by_key(|j| j.id);
                extension_why(c, scope, &dir, job, decision.as_ref(), &backoff, now_ms)
            })
            .collect();
        out.push(ResourceWhy {
            resource_id: r.id.clone(),
            path: r.path.clone(),
            blake3: hex(&r.blake3),
            size_bytes: r.size,
            verdict: verdict.to_owned(),
            explanation,
            job: job.map(Job::redacted),
            by_extension,
        });
    }
    Ok(Why {
        asset_id: asset.to_owned(),
        resources: out,
    })
}

/// One extension's verdict on one resource: its newest job for it, else why it has none.
fn extension_why(
    c: &Consent,
    scope: &ScopeFilter,
    dir: &std::path::Path,
    job: Option<&Job>,
    decision: Option<&Decision>,
    backoff: &HashMap<Uuid, i64>,
    now_ms: i64,
) -> ExtensionWhy {
    let (verdict, explanation) = match job.map(|j| j.state) {
        Some(JobState::Succeeded) => ("backed_up", "delivered".to_owned()),
        Some(JobState::Failed) => (
            "failed",
            format!(
                "its upload failed: {}",
                job.and_then(|j| j.error.as_ref())
                    .map(|e| e.as_str())
                    .unwrap_or("unknown")
            ),
        ),
        Some(JobState::Registered | JobState::Pending) => (
            "waiting",
            format!(
                "waiting: {}",
                job.map(|j| waiting_reason(j, decision, backoff, now_ms))
                    .unwrap_or_default()
            ),
        ),
        Some(JobState::Cancelled) => ("cancelled", "its job was cancelled".to_owned()),
        None if !c.is_enabled() => ("disabled", "the extension is disabled".to_owned()),
        None if !scope.contains(dir) => (
            "outside_scope",
            "outside consent scope: not in the folders this extension may see".to_owned(),
        ),
        None => ("no_job", "it has not created a job for it (yet)".to_owned()),
    };
    ExtensionWhy {
        extension: c.id.clone(),
        verdict: verdict.to_owned(),
        explanation,
    }
}

/// Receipts, newest first: the history of what was let go of.
pub fn history(store: &Store, limit: usize, offset: usize) -> Result<Vec<Receipt>, JobStoreError> {
    Ok(store
        .receipts(limit, offset)?
        .into_iter()
        .map(Receipt::redacted)
        .collect())
}

/// Has this content been delivered (by any job)?
pub fn delivered(store: &Store, hash: &ContentHash) -> Result<bool, JobStoreError> {
    Ok(store
        .receipts_for_hash(hash)?
        .iter()
        .any(|r| r.state == JobState::Succeeded))
}
