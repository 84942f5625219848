//! Interim job creation: what the `ferry-backup` extension does in one `process_jobs` call,
//! done in-process until the extension host lands. Everything goes through
//! [`job_creation_step`], so swapping this module for the host changes one call site.
//!
//! One step, in PhotoKit's order: acknowledge finished jobs (they become receipts), then
//! create jobs for resources the server does not hold yet, up to the extension's job limit.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::Path;

use ferry_core::job::{Action, ContentHash, MAX_TX_ITEMS, NewJob, TxItem};
use ferry_core::{Destination, Method, UrlBase};
use ferry_store::library::{ResourceRecord, hex};
use ferry_store::{JobStore, JobStoreError, new_job_id};

use crate::tracked::Tracked;

/// The extension id backup jobs are filed under (the bundled extension's id).
pub const EXTENSION: &str = "ferry-backup";

/// Whether the extension has more to do (PhotoKit's `processing` / `completed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    Processing,
    Completed,
}

/// One resource still to send.
#[derive(Debug, Clone)]
pub struct Pending {
    pub resource_id: String,
    pub blake3: [u8; 32],
    pub size_bytes: u64,
    pub file_name: String,
    pub asset_id: String,
}

/// The interim extension's state between steps.
#[derive(Debug)]
pub struct Creator {
    uploads_url: String,
    token: String,
    queue: VecDeque<Pending>,
    /// Resources (by id) already queued or sent this run: a rescan must not queue them again.
    seen: HashSet<String>,
}

impl Creator {
    pub fn new(uploads_url: String, token: String) -> Creator {
        Creator {
            uploads_url,
            token,
            queue: VecDeque::new(),
            seen: HashSet::new(),
        }
    }

    /// Records the consent (the base) and queues `resources` minus those in `present` (BLAKE3
    /// hex the server already holds) and those with a job in flight. Returns how many were
    /// queued and their bytes.
    pub fn plan(
        &mut self,
        store: &mut Tracked,
        base_url: &str,
        resources: &[ResourceRecord],
        present: &HashSet<String>,
    ) -> Result<(u64, u64), PlanError> {
        let base = UrlBase::parse(base_url).map_err(|e| PlanError::Base(e.to_string()))?;
        store.set_destination_bases(EXTENSION, &[base])?;
        // Jobs left by an earlier run to another address (the built-in server moved to a
        // new port) can never go: cancel them; their resources are queued again below.
        let (live, stale): (Vec<_>, Vec<_>) = store
            .fetch(EXTENSION, Action::Process)?
            .into_iter()
            .partition(|j| j.destination.url == self.uploads_url);
        for chunk in stale.chunks(MAX_TX_ITEMS) {
            let items: Vec<TxItem> = chunk.iter().map(|j| TxItem::Cancel { job: j.id }).collect();
            store.transaction(EXTENSION, &items, crate::backup::now_ms())?;
        }
        let in_flight: HashSet<String> = live.into_iter().map(|j| j.resource_id).collect();
        let (mut queued, mut queued_bytes) = (0, 0);
        for r in resources {
            if present.contains(&hex(&r.blake3))
                || in_flight.contains(&r.id)
                || !self.seen.insert(r.id.clone())
            {
                continue;
            }
            store.tally.note_size(&r.id, r.size);
            self.queue.push_back(Pending {
                resource_id: r.id.clone(),
                blake3: r.blake3,
                size_bytes: r.size,
                file_name: file_name(&r.path),
                asset_id: r.asset_id.clone(),
            });
            queued += 1;
            queued_bytes += r.size;
        }
        Ok((queued, queued_bytes))
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("destination base: {0}")]
    Base(String),
    #[error(transparent)]
    Jobs(#[from] JobStoreError),
}

fn file_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Metadata is bounded (4 KiB in all); a pathological name is dropped, not the job.
    if name.len() > 512 {
        String::new()
    } else {
        name
    }
}

/// The job creation step (see the module documentation). Durable: every change is one store
/// transaction committed before this returns.
pub fn job_creation_step(
    store: &mut Tracked,
    creator: &mut Creator,
    now_ms: i64,
) -> Result<StepOutcome, JobStoreError> {
    let finished = store.fetch(EXTENSION, Action::Acknowledge)?;
    for chunk in finished.chunks(MAX_TX_ITEMS) {
        let items: Vec<TxItem> = chunk
            .iter()
            .map(|j| TxItem::Acknowledge { job: j.id })
            .collect();
        store.transaction(EXTENSION, &items, now_ms)?;
    }
    let limit = store.policy(EXTENSION)?.job_limit;
    let outstanding = store.unacknowledged_count(EXTENSION)?;
    let room = (limit.saturating_sub(outstanding) as usize).min(MAX_TX_ITEMS);
    if room > 0 && !creator.queue.is_empty() {
        let take = room.min(creator.queue.len());
        let items: Vec<TxItem> = creator
            .queue
            .drain(..take)
            .map(|p| {
                let mut metadata = BTreeMap::new();
                if !p.file_name.is_empty() {
                    metadata.insert("filename".to_owned(), p.file_name);
                }
                metadata.insert("asset_id".to_owned(), p.asset_id);
                TxItem::Create(NewJob {
                    id: new_job_id(),
                    resource_id: p.resource_id,
                    content_hash: ContentHash(p.blake3),
                    destination: Destination::new(Method::Post, creator.uploads_url.clone())
                        .header("authorization", format!("Bearer {}", creator.token)),
                    metadata,
                })
            })
            .collect();
        store.transaction(EXTENSION, &items, now_ms)?;
    }
    let outstanding = store.unacknowledged_count(EXTENSION)?;
    Ok(if creator.queue.is_empty() && outstanding == 0 {
        StepOutcome::Completed
    } else {
        StepOutcome::Processing
    })
}
