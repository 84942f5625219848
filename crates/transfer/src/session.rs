//! Upload sessions: what must survive a crash for an upload to resume instead of restart, and
//! for a job's retry budget not to reset on restart.
//!
//! A session is saved (durably, for the SQLite store) after every step the server acknowledged:
//! the upload's creation (its URL) and every append (its offset). On restart the engine loads
//! it, asks the server for the real offset (`HEAD`) and continues from there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ferry_core::retry::AttemptState;
use ferry_store::Store;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::preflight::Protocol;
use crate::source::Prepass;

/// One job's transfer state between attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadSession {
    pub job_id: Uuid,
    /// The protocol of the upload in `upload_url`; `None` before creation.
    pub protocol: Option<Protocol>,
    /// The server's upload resource (absolute URL), once created.
    pub upload_url: Option<String>,
    /// The offset the server last acknowledged.
    pub offset_bytes: u64,
    /// The file as it was when it matched the job's hash; a resume with the same stamp skips
    /// re-hashing.
    pub prepass: Option<Prepass>,
    /// Transient failures so far (the retry budget).
    pub attempts: AttemptState,
    /// No new attempt before this time (ms since the epoch).
    pub not_before_ms: i64,
}

impl UploadSession {
    pub fn new(job_id: Uuid) -> UploadSession {
        UploadSession {
            job_id,
            protocol: None,
            upload_url: None,
            offset_bytes: 0,
            prepass: None,
            attempts: AttemptState::default(),
            not_before_ms: 0,
        }
    }

    /// Forgets the server-side upload (it expired, or the file changed) but keeps the budget.
    pub fn restart(&mut self) {
        self.protocol = None;
        self.upload_url = None;
        self.offset_bytes = 0;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionStoreError {
    #[error(transparent)]
    Store(#[from] ferry_store::StoreError),
    #[error("upload session of job {job} is unreadable: {why}")]
    Corrupt { job: Uuid, why: String },
    #[error("session store lock poisoned")]
    Poisoned,
}

/// Where sessions live. Each call is durable on return.
pub trait UploadSessionStore: Send + Sync + std::fmt::Debug {
    fn load(&self, job: Uuid) -> Result<Option<UploadSession>, SessionStoreError>;
    fn save(&self, session: &UploadSession) -> Result<(), SessionStoreError>;
    fn remove(&self, job: Uuid) -> Result<(), SessionStoreError>;
}

/// Sessions in memory: for tests, and for callers that accept restarting after a crash.
#[derive(Debug, Default, Clone)]
pub struct MemorySessionStore {
    sessions: Arc<Mutex<HashMap<Uuid, UploadSession>>>,
}

impl MemorySessionStore {
    pub fn new() -> MemorySessionStore {
        MemorySessionStore::default()
    }
}

impl UploadSessionStore for MemorySessionStore {
    fn load(&self, job: Uuid) -> Result<Option<UploadSession>, SessionStoreError> {
        let s = self
            .sessions
            .lock()
            .map_err(|_| SessionStoreError::Poisoned)?;
        Ok(s.get(&job).cloned())
    }

    fn save(&self, session: &UploadSession) -> Result<(), SessionStoreError> {
        let mut s = self
            .sessions
            .lock()
            .map_err(|_| SessionStoreError::Poisoned)?;
        s.insert(session.job_id, session.clone());
        Ok(())
    }

    fn remove(&self, job: Uuid) -> Result<(), SessionStoreError> {
        let mut s = self
            .sessions
            .lock()
            .map_err(|_| SessionStoreError::Poisoned)?;
        s.remove(&job);
        Ok(())
    }
}

/// Sessions in Ferry's SQLite store (table `upload_sessions`), sharing the job store's handle.
#[derive(Debug, Clone)]
pub struct SqliteSessionStore {
    store: Arc<Mutex<Store>>,
}

impl SqliteSessionStore {
    pub fn new(store: Arc<Mutex<Store>>) -> SqliteSessionStore {
        SqliteSessionStore { store }
    }
}

fn now_ms() -> i64 {
    crate::engine::now_ms()
}

impl UploadSessionStore for SqliteSessionStore {
    fn load(&self, job: Uuid) -> Result<Option<UploadSession>, SessionStoreError> {
        let store = self.store.lock().map_err(|_| SessionStoreError::Poisoned)?;
        match store.upload_session(job)? {
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
        let body = serde_json::to_string(session).map_err(|e| SessionStoreError::Corrupt {
            job: session.job_id,
            why: e.to_string(),
        })?;
        let mut store = self.store.lock().map_err(|_| SessionStoreError::Poisoned)?;
        store.put_upload_session(session.job_id, &body, now_ms())?;
        Ok(())
    }

    fn remove(&self, job: Uuid) -> Result<(), SessionStoreError> {
        let mut store = self.store.lock().map_err(|_| SessionStoreError::Poisoned)?;
        store.delete_upload_session(job)?;
        Ok(())
    }
}
