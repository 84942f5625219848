//! The job store as the engine sees it, plus a live tally: every transfer event the engine
//! records passes through here, so progress costs no extra queries and no polling.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ferry_core::UrlBase;
use ferry_core::job::{
    Action, ContentHash, ExtensionPolicy, Job, JobState, Receipt, TransferEvent, TransitionError,
    TxItem,
};
use ferry_store::{JobFilter, JobStore, JobStoreError, Store};
use ferry_transfer::{ResourceLocator, SessionStoreError, UploadSession, UploadSessionStore};
use tokio::sync::Notify;
use uuid::Uuid;

/// Counters of what the engine did, read by progress displays and the control API.
#[derive(Debug, Default)]
pub struct Tally {
    pub started: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub bytes_succeeded: AtomicU64,
    /// Signalled after every recorded batch of transfer events (one consumer: a stored permit
    /// means no event is lost between a check and the wait).
    pub changed: Notify,
    /// Bumped whenever what a display shows may have changed (transfer events, phase and
    /// decision changes, jobs created): any number of watchers, e.g. the dashboard's live
    /// updates, wait on it instead of polling.
    pub revision: tokio::sync::watch::Sender<u64>,
}

impl Tally {
    /// Tells every watcher of [`Tally::revision`] that something changed.
    pub fn bump(&self) {
        self.revision.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// [`Store`] wrapped so the engine's transfer events update a [`Tally`].
#[derive(Debug)]
pub struct Tracked {
    pub inner: Store,
    pub tally: Arc<Tally>,
}

pub type SharedStore = Arc<Mutex<Tracked>>;

impl Tracked {
    pub fn new(inner: Store, tally: Arc<Tally>) -> Tracked {
        Tracked { inner, tally }
    }
}

impl JobStore for Tracked {
    fn policy(&self, extension: &str) -> Result<ExtensionPolicy, JobStoreError> {
        self.inner.policy(extension)
    }
    fn set_destination_bases(
        &mut self,
        extension: &str,
        bases: &[UrlBase],
    ) -> Result<(), JobStoreError> {
        self.inner.set_destination_bases(extension, bases)
    }
    fn set_job_limit(&mut self, extension: &str, job_limit: u32) -> Result<(), JobStoreError> {
        self.inner.set_job_limit(extension, job_limit)
    }
    fn set_max_retries(&mut self, extension: &str, max_retries: u32) -> Result<(), JobStoreError> {
        self.inner.set_max_retries(extension, max_retries)
    }
    fn transaction(
        &mut self,
        extension: &str,
        items: &[TxItem],
        now_ms: i64,
    ) -> Result<Vec<Job>, JobStoreError> {
        self.inner.transaction(extension, items, now_ms)
    }
    fn fetch(&self, extension: &str, action: Action) -> Result<Vec<Job>, JobStoreError> {
        self.inner.fetch(extension, action)
    }
    fn record(
        &mut self,
        events: &[TransferEvent],
        now_ms: i64,
    ) -> Result<Vec<Result<Job, TransitionError>>, JobStoreError> {
        let results = self.inner.record(events, now_ms)?;
        for (event, result) in events.iter().zip(&results) {
            let Ok(job) = result else { continue };
            match event {
                TransferEvent::Start { .. } => {
                    self.tally.started.fetch_add(1, Ordering::Relaxed);
                }
                TransferEvent::Finish { .. } if job.state == JobState::Succeeded => {
                    self.tally.succeeded.fetch_add(1, Ordering::Relaxed);
                    // From the index, not a map of every resource kept for the purpose.
                    let size = self
                        .inner
                        .resource_size(&job.resource_id)
                        .ok()
                        .flatten()
                        .unwrap_or(0);
                    self.tally
                        .bytes_succeeded
                        .fetch_add(size, Ordering::Relaxed);
                }
                TransferEvent::Finish { .. } => {
                    self.tally.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.tally.changed.notify_one();
        self.tally.bump();
        Ok(results)
    }
    fn job(&self, id: Uuid) -> Result<Option<Job>, JobStoreError> {
        self.inner.job(id)
    }
    fn jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, JobStoreError> {
        self.inner.jobs(filter)
    }
    fn receipts(&self, limit: usize, offset: usize) -> Result<Vec<Receipt>, JobStoreError> {
        self.inner.receipts(limit, offset)
    }
    fn receipts_for_hash(&self, hash: &ContentHash) -> Result<Vec<Receipt>, JobStoreError> {
        self.inner.receipts_for_hash(hash)
    }
    fn unacknowledged_count(&self, extension: &str) -> Result<u32, JobStoreError> {
        self.inner.unacknowledged_count(extension)
    }
    fn cancel_all(&mut self, extension: &str, now_ms: i64) -> Result<Vec<Job>, JobStoreError> {
        self.inner.cancel_all(extension, now_ms)
    }
    fn extensions(&self) -> Result<Vec<String>, JobStoreError> {
        self.inner.extensions()
    }
}

/// Upload sessions in the same database, through the same lock as the jobs.
///
/// A session that only caches the pre-pass (the file's hash check) holds nothing a restart
/// needs: without it the file is hashed again and sent from the start, which is what would
/// happen anyway with no upload URL to resume. Such sessions stay in memory; a session that
/// carries resume state (an upload URL) or retry state (attempts, a not-before time) is
/// committed before `save` returns. For a small file this saves two commits (save and delete)
/// of the four its job would otherwise cost.
#[derive(Debug, Clone)]
pub struct Sessions {
    store: SharedStore,
    volatile: Arc<Mutex<HashMap<Uuid, UploadSession>>>,
    /// Jobs with a row in the database (from this run or an earlier one).
    durable: Arc<Mutex<std::collections::HashSet<Uuid>>>,
}

fn needs_durability(s: &UploadSession) -> bool {
    s.upload_url.is_some()
        || s.attempts != ferry_core::retry::AttemptState::default()
        || s.not_before_ms > 0
}

impl Sessions {
    pub fn new(store: SharedStore) -> Result<Sessions, SessionStoreError> {
        let durable = store
            .lock()
            .map_err(|_| SessionStoreError::Poisoned)?
            .inner
            .upload_sessions()?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        Ok(Sessions {
            store,
            volatile: Arc::default(),
            durable: Arc::new(Mutex::new(durable)),
        })
    }
}

impl UploadSessionStore for Sessions {
    fn load(&self, job: Uuid) -> Result<Option<UploadSession>, SessionStoreError> {
        if let Some(s) = self
            .volatile
            .lock()
            .map_err(|_| SessionStoreError::Poisoned)?
            .get(&job)
        {
            return Ok(Some(s.clone()));
        }
        if !self
            .durable
            .lock()
            .map_err(|_| SessionStoreError::Poisoned)?
            .contains(&job)
        {
            return Ok(None);
        }
        let store = self.store.lock().map_err(|_| SessionStoreError::Poisoned)?;
        match store.inner.upload_session(job)? {
            None => Ok(None),
            Some(body) => {
                serde_json::from_str(&body)
                    .map(Some)
                    .map_err(|e| SessionStoreError::Corrupt {
                        job,
                        why: e.to_string(),
                    })
            }
        }
    }

    fn save(&self, session: &UploadSession) -> Result<(), SessionStoreError> {
        let id = session.job_id;
        let mut durable = self
            .durable
            .lock()
            .map_err(|_| SessionStoreError::Poisoned)?;
        if !needs_durability(session) && !durable.contains(&id) {
            self.volatile
                .lock()
                .map_err(|_| SessionStoreError::Poisoned)?
                .insert(id, session.clone());
            return Ok(());
        }
        let body = serde_json::to_string(session).map_err(|e| SessionStoreError::Corrupt {
            job: id,
            why: e.to_string(),
        })?;
        let mut store = self.store.lock().map_err(|_| SessionStoreError::Poisoned)?;
        store
            .inner
            .put_upload_session(id, &body, ferry_transfer::engine::now_ms())?;
        drop(store);
        durable.insert(id);
        self.volatile
            .lock()
            .map_err(|_| SessionStoreError::Poisoned)?
            .remove(&id);
        Ok(())
    }

    fn remove(&self, job: Uuid) -> Result<(), SessionStoreError> {
        self.volatile
            .lock()
            .map_err(|_| SessionStoreError::Poisoned)?
            .remove(&job);
        let mut durable = self
            .durable
            .lock()
            .map_err(|_| SessionStoreError::Poisoned)?;
        if durable.contains(&job) {
            let mut store = self.store.lock().map_err(|_| SessionStoreError::Poisoned)?;
            store.inner.delete_upload_session(job)?;
            durable.remove(&job);
        }
        Ok(())
    }
}

/// Resources found through the library index.
#[derive(Debug, Clone)]
pub struct Locator(pub SharedStore);

impl ResourceLocator for Locator {
    fn locate(&self, resource_id: &str) -> Option<std::path::PathBuf> {
        self.0
            .lock()
            .ok()?
            .inner
            .resource(resource_id)
            .ok()?
            .map(|r| r.path)
    }
}
