//! A host-side harness for testing extensions before (and beside) the real host: it launches a
//! real extension process, talks to it over real pipes, and serves every extension → Ferry
//! method from a real ferry-store SQLite file, with the key-value store in a JSON file written
//! atomically (temp → fsync → rename → fsync dir).
//!
//! It is not the production host (no rlimits, process groups, rate limits or scheduling): it
//! applies the protocol's rules (scope, bases, job limit, message size) so that an extension
//! tested here behaves the same under the real one. Feature `testing`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_core::job::{Job, TxItem};
use ferry_core::{ContentHash, UrlBase};
use ferry_store::library::{AssetRecord, ChangesError, ResourceRecord};
use ferry_store::{JobStore, JobStoreError, Store};
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use crate::protocol::*;

/// How long the harness waits for any one answer before calling the extension hung.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("spawning the extension: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("talking to the extension: {0}")]
    Io(#[from] std::io::Error),
    #[error("the extension broke the protocol: {0}")]
    Protocol(String),
    #[error("the extension closed its stdout")]
    Closed,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the extension answered with an error: {0}")]
    Rpc(RpcError),
    #[error(transparent)]
    Store(#[from] ferry_store::StoreError),
    #[error(transparent)]
    Jobs(#[from] JobStoreError),
    #[error("kv file: {0}")]
    Kv(String),
    /// The harness killed the extension, as asked by [`CallOptions::kill_after_calls`].
    #[error("killed by the harness")]
    Killed,
}

/// What the manifest and the user's consent would give the extension.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub extension_id: String,
    pub config: Value,
    pub scope: Scope,
    pub destination_bases: Vec<UrlBase>,
    pub job_limit: u32,
}

/// The harness: a store shared with whoever else drives it (a transfer engine, a scanner).
#[derive(Debug)]
pub struct TestHost {
    store: Arc<Mutex<Store>>,
    kv_path: PathBuf,
    cfg: HostConfig,
    /// Every method the extension called, in order (for tests that check what was asked).
    pub calls: Vec<String>,
    /// The resource ids each committed transaction created jobs for, in order.
    pub created: Vec<Vec<String>>,
    /// Answer this many next calls `rate_limited` (`retry_after_ms` 1), as a busy host would.
    pub rate_limit_next: u32,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn token_seq(token: &str) -> Option<i64> {
    token.rsplit_once('.')?.1.parse().ok()
}

fn unavailable(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(ErrorCode::Unavailable, e.to_string())
}

fn params<T: DeserializeOwned>(v: Value) -> Result<T, RpcError> {
    // A missing params member means "no parameters".
    let v = if v.is_null() {
        Value::Object(Default::default())
    } else {
        v
    };
    serde_json::from_value(v).map_err(|e| RpcError::new(ErrorCode::InvalidParams, e.to_string()))
}

fn ok<T: serde::Serialize>(v: T) -> Result<Value, RpcError> {
    serde_json::to_value(v).map_err(|e| RpcError::new(ErrorCode::Internal, e.to_string()))
}

/// Folds a later change of one asset into an earlier one (`None`: they cancel out).
fn fold(earlier: ChangeKind, later: ChangeKind) -> Option<ChangeKind> {
    use ChangeKind::*;
    match (earlier, later) {
        (Inserted, Deleted) => None,
        (Inserted, _) => Some(Inserted),
        (Deleted, Inserted) | (Deleted, Updated) => Some(Updated),
        (_, Deleted) => Some(Deleted),
        (Updated, _) => Some(Updated),
    }
}

impl TestHost {
    /// Opens the harness on a store (records the consented bases and job limit there).
    pub fn new(
        store: Arc<Mutex<Store>>,
        kv_path: &Path,
        cfg: HostConfig,
    ) -> Result<TestHost, HarnessError> {
        {
            let mut s = store
                .lock()
                .map_err(|_| HarnessError::Kv("store lock poisoned".into()))?;
            s.set_destination_bases(&cfg.extension_id, &cfg.destination_bases)?;
            s.set_job_limit(&cfg.extension_id, cfg.job_limit)?;
        }
        Ok(TestHost {
            store,
            kv_path: kv_path.to_owned(),
            cfg,
            calls: Vec::new(),
            created: Vec::new(),
            rate_limit_next: 0,
        })
    }

    pub fn store(&self) -> Arc<Mutex<Store>> {
        self.store.clone()
    }

    pub fn config(&self) -> &HostConfig {
        &self.cfg
    }

    /// Starts the extension and completes `initialize`.
    pub fn launch(&mut self, cmd: &mut Command) -> Result<Launch<'_>, HarnessError> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(HarnessError::Spawn)?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| HarnessError::Protocol("no stdout pipe".into()))?;
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut line = Vec::new();
                match r
                    .by_ref()
                    .take(MAX_MESSAGE_BYTES as u64 + 2)
                    .read_until(b'\n', &mut line)
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let mut launch = Launch {
            host: self,
            child,
            stdin,
            lines: rx,
            next_id: 0,
            bad_lines: 0,
        };
        let init = InitializeParams {
            protocol_version: PROTOCOL_VERSION,
            extension_id: launch.host.cfg.extension_id.clone(),
            ferry_version: env!("CARGO_PKG_VERSION").into(),
            config: launch.host.cfg.config.clone(),
            scope: launch.host.cfg.scope.clone(),
            destination_bases: launch.host.cfg.destination_bases.clone(),
            job_limit: launch.host.cfg.job_limit,
            migration: None,
        };
        let answer = launch.request(INITIALIZE, serde_json::to_value(init).unwrap_or_default())?;
        let r: InitializeResult = serde_json::from_value(answer)
            .map_err(|e| HarnessError::Protocol(format!("initialize answer: {e}")))?;
        if r.protocol_version != PROTOCOL_VERSION {
            return Err(HarnessError::Protocol(format!(
                "protocol version {}",
                r.protocol_version
            )));
        }
        Ok(launch)
    }

    fn read_kv(&self) -> Result<BTreeMap<String, String>, RpcError> {
        match std::fs::read(&self.kv_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(unavailable),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(unavailable(e)),
        }
    }

    fn write_kv(&self, kv: &BTreeMap<String, String>) -> Result<(), RpcError> {
        let bytes = serde_json::to_vec(kv).map_err(unavailable)?;
        let tmp = self.kv_path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(unavailable)?;
        f.write_all(&bytes).map_err(unavailable)?;
        f.sync_all().map_err(unavailable)?;
        std::fs::rename(&tmp, &self.kv_path).map_err(unavailable)?;
        if let Some(dir) = self.kv_path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// Applies kv writes all or none: checked first, then one durable file write.
    fn kv_write(&self, entries: Vec<KvSetParams>) -> Result<Value, RpcError> {
        if entries.iter().any(|e| {
            e.key.is_empty()
                || e.key.len() > MAX_KV_KEY_BYTES
                || e.value
                    .as_ref()
                    .is_some_and(|v| v.len() > MAX_KV_VALUE_BYTES)
        }) {
            return Err(RpcError::new(ErrorCode::TooLarge, "key or value too large"));
        }
        let mut kv = self.read_kv()?;
        for e in entries {
            match e.value {
                Some(v) => kv.insert(e.key, v),
                None => kv.remove(&e.key),
            };
        }
        let total: usize = kv.iter().map(|(k, v)| k.len() + v.len()).sum();
        if total > MAX_KV_TOTAL_BYTES {
            return Err(RpcError::new(ErrorCode::StorageFull, "kv store full"));
        }
        self.write_kv(&kv)?;
        ok(Empty {})
    }

    /// Whether the extension may see this asset (its scope).
    fn visible(&self, store: &Store, asset: &AssetRecord) -> Result<bool, RpcError> {
        match &self.cfg.scope {
            Scope::Library => Ok(true),
            Scope::Folders { folders } => {
                let roots = store.roots().map_err(unavailable)?;
                Ok(roots.iter().any(|root| {
                    asset.dir.strip_prefix(root).is_ok_and(|rel| {
                        folders
                            .iter()
                            .any(|f| rel.starts_with(Path::new(f.trim_matches('/'))))
                    })
                }))
            }
        }
    }

    fn view(&self, store: &Store, id: &str) -> Result<Option<AssetView>, RpcError> {
        let Some(asset) = store.asset(id).map_err(unavailable)? else {
            return Ok(None);
        };
        if !self.visible(store, &asset)? {
            return Ok(None);
        }
        let resources = store.resources_of_asset(id).map_err(unavailable)?;
        Ok(Some(AssetView {
            id: asset.id,
            created_ms: asset.created_ms,
            updated_ms: asset.updated_ms,
            resources: {
                let roots = store.roots().map_err(unavailable)?;
                resources
                    .into_iter()
                    .map(|r| resource_view(r, &roots))
                    .collect()
            },
        }))
    }

    /// Answers one extension → Ferry request.
    pub fn serve(&mut self, method: &str, p: Value) -> Result<Value, RpcError> {
        self.calls.push(method.to_owned());
        if self.rate_limit_next > 0 {
            self.rate_limit_next -= 1;
            let mut data = serde_json::Map::new();
            data.insert("retry_after_ms".into(), 1.into());
            return Err(RpcError::with_data(
                ErrorCode::RateLimited,
                "too many calls",
                data,
            ));
        }
        let ext = self.cfg.extension_id.clone();
        let arc = self.store.clone();
        let lock = || {
            arc.lock()
                .map_err(|_| RpcError::new(ErrorCode::Internal, "store lock poisoned"))
        };
        match method {
            LIBRARY_CURRENT_TOKEN => {
                let token = lock()?.current_change_token().map_err(unavailable)?;
                ok(TokenResult { token })
            }
            LIBRARY_CHANGES => {
                let p: ChangesParams = params(p)?;
                let limit = p.limit.unwrap_or(1000).clamp(1, MAX_CHANGES_PAGE_ITEMS) as usize;
                let store = lock()?;
                let sets = store.changes_since(&p.since).map_err(|e| match e {
                    ChangesError::ChangeTokenExpired { .. } => {
                        RpcError::new(ErrorCode::ChangeTokenExpired, e.to_string())
                    }
                    ChangesError::InvalidToken(_) => {
                        RpcError::new(ErrorCode::InvalidToken, e.to_string())
                    }
                    ChangesError::Store(e) => unavailable(e),
                })?;
                let until = match &p.until {
                    Some(u) => u.clone(),
                    None => sets
                        .last()
                        .map(|s| s.token.clone())
                        .unwrap_or_else(|| p.since.clone()),
                };
                let until_seq = token_seq(&until)
                    .ok_or_else(|| RpcError::new(ErrorCode::InvalidToken, "bad until"))?;
                let mut merged: BTreeMap<String, Option<ChangeKind>> = BTreeMap::new();
                for set in sets
                    .iter()
                    .filter(|s| token_seq(&s.token).is_some_and(|q| q <= until_seq))
                {
                    let kinds = [
                        (&set.inserted, ChangeKind::Inserted),
                        (&set.updated, ChangeKind::Updated),
                        (&set.deleted, ChangeKind::Deleted),
                    ];
                    for (ids, kind) in kinds {
                        for id in ids {
                            match merged.get_mut(id) {
                                Some(slot) => {
                                    *slot = match *slot {
                                        Some(earlier) => fold(earlier, kind),
                                        // Inserted then deleted, then back: new to the reader.
                                        None => Some(ChangeKind::Inserted),
                                    }
                                }
                                None => {
                                    merged.insert(id.clone(), Some(kind));
                                }
                            }
                        }
                    }
                }
                let mut all = Vec::new();
                for (asset_id, kind) in merged {
                    let Some(kind) = kind else { continue };
                    // Out-of-scope assets do not exist for the extension; a deleted one can
                    // no longer be placed, so deletions are reported as they come.
                    if kind != ChangeKind::Deleted {
                        match store.asset(&asset_id).map_err(unavailable)? {
                            Some(a) if self.visible(&store, &a)? => {}
                            Some(_) => continue,
                            None => {}
                        }
                    }
                    all.push(AssetChange { asset_id, kind });
                }
                let start = (p.offset as usize).min(all.len());
                let end = (start + limit).min(all.len());
                ok(ChangesResult {
                    until,
                    changes: all[start..end].to_vec(),
                    next_offset: (end < all.len()).then_some(end as u64),
                })
            }
            LIBRARY_ASSETS => {
                let p: AssetsParams = params(p)?;
                if p.ids.len() > MAX_PAGE_ITEMS as usize {
                    return Err(RpcError::new(ErrorCode::TooLarge, "too many ids"));
                }
                let store = lock()?;
                let mut r = AssetsResult {
                    assets: Vec::new(),
                    missing: Vec::new(),
                };
                for id in p.ids {
                    match self.view(&store, &id)? {
                        Some(v) => r.assets.push(v),
                        None => r.missing.push(id),
                    }
                }
                ok(r)
            }
            LIBRARY_LIST_ASSETS => {
                let p: ListAssetsParams = params(p)?;
                let limit = p.limit.unwrap_or(200).clamp(1, MAX_PAGE_ITEMS) as usize;
                let store = lock()?;
                let mut ids = Vec::new();
                let mut offset = 0;
                loop {
                    let page = store.assets(10_000, offset).map_err(unavailable)?;
                    if page.is_empty() {
                        break;
                    }
                    offset += page.len() as u64;
                    for a in page {
                        if p.after.as_ref().is_none_or(|after| a.id > *after)
                            && self.visible(&store, &a)?
                        {
                            ids.push(a.id);
                        }
                    }
                }
                ids.sort();
                let more = ids.len() > limit;
                ids.truncate(limit);
                let mut assets = Vec::new();
                for id in &ids {
                    if let Some(v) = self.view(&store, id)? {
                        assets.push(v);
                    }
                }
                ok(ListAssetsResult {
                    assets,
                    next_after: if more { ids.last().cloned() } else { None },
                })
            }
            JOBS_FETCH => {
                let p: FetchParams = params(p)?;
                let limit = p.limit.unwrap_or(MAX_PAGE_ITEMS).clamp(1, MAX_PAGE_ITEMS) as usize;
                let mut jobs: Vec<Job> = lock()?
                    .fetch(&ext, p.action)
                    .map_err(unavailable)?
                    .into_iter()
                    .filter(|j| p.after.is_none_or(|a| j.id > a))
                    .collect();
                jobs.sort_by_key(|j| j.id);
                let more = jobs.len() > limit;
                jobs.truncate(limit);
                let next_after = if more {
                    jobs.last().map(|j| j.id)
                } else {
                    None
                };
                ok(FetchResult { jobs, next_after })
            }
            JOBS_TRANSACTION => {
                let p = TransactionRequest::parse(p)
                    .map_err(|e| RpcError::new(ErrorCode::InvalidParams, e))?;
                let mut store = lock()?;
                // The host's own refusals (scope, then a method it cannot send with), by item;
                // the job rules still name an earlier offending item, as the host does.
                let mut refusals: Vec<(usize, RpcError)> = Vec::new();
                let mut bad_methods = p.bad_methods.iter().peekable();
                for (index, item) in p.items.iter().enumerate() {
                    let bad_method = bad_methods.next_if(|t| t.index == index);
                    if let TxItem::Create(new) = item {
                        let known = match store.resource(&new.resource_id).map_err(unavailable)? {
                            Some(r) => match store.asset(&r.asset_id).map_err(unavailable)? {
                                Some(a) => self.visible(&store, &a)?,
                                None => false,
                            },
                            None => false,
                        };
                        if !known {
                            refusals.push((
                                index,
                                rejected("unknown_resource", index, "no such resource"),
                            ));
                            continue;
                        }
                    }
                    if let Some(t) = bad_method {
                        refusals.push((index, rejected(t.code(), index, &t.to_string())));
                    }
                }
                if let Some((_, refusal)) = refusals.first() {
                    let refused = refusals.iter().map(|(i, _)| *i).collect();
                    let earlier = earlier_rejection(&p.items, &refused, |kept| {
                        let mut jobs = std::collections::HashMap::new();
                        for id in ferry_core::job::referenced_ids(kept) {
                            if let Some(j) = store.job(id).map_err(unavailable)? {
                                jobs.insert(id, j);
                            }
                        }
                        let view = ferry_core::job::TxView {
                            extension: &ext,
                            jobs: &jobs,
                            unacknowledged: store
                                .unacknowledged_count(&ext)
                                .map_err(unavailable)?,
                        };
                        let policy = store.policy(&ext).map_err(unavailable)?;
                        Ok(ferry_core::job::plan_transaction(&view, kept, &policy, now_ms()).err())
                    })?;
                    return Err(match earlier {
                        Some(e) => rejected(e.code(), e.index, &e.to_string()),
                        None => refusal.clone(),
                    });
                }
                match store.transaction(&ext, &p.items, now_ms()) {
                    Ok(jobs) => {
                        let created: Vec<String> = p
                            .items
                            .iter()
                            .filter_map(|i| match i {
                                TxItem::Create(n) => Some(n.resource_id.clone()),
                                _ => None,
                            })
                            .collect();
                        if !created.is_empty() {
                            self.created.push(created);
                        }
                        ok(TransactionResult {
                            jobs: jobs.iter().map(|j| j.id).collect::<Vec<Uuid>>(),
                        })
                    }
                    Err(JobStoreError::Rejected(e)) => {
                        Err(rejected(e.code(), e.index, &e.to_string()))
                    }
                    Err(e) => Err(unavailable(e)),
                }
            }
            JOBS_LIMIT => {
                let store = lock()?;
                let job_limit = store.policy(&ext).map_err(unavailable)?.job_limit;
                let unacknowledged = store.unacknowledged_count(&ext).map_err(unavailable)?;
                ok(LimitResult {
                    job_limit,
                    unacknowledged,
                    available: job_limit.saturating_sub(unacknowledged),
                })
            }
            KV_GET => {
                let p: KvGetParams = params(p)?;
                ok(KvGetResult {
                    value: self.read_kv()?.get(&p.key).cloned(),
                })
            }
            KV_SET => {
                let p: KvSetParams = params(p)?;
                self.kv_write(vec![p])
            }
            KV_GET_MANY => {
                let p: KvGetManyParams = params(p)?;
                if p.keys.len() > MAX_PAGE_ITEMS as usize {
                    return Err(RpcError::new(ErrorCode::TooLarge, "too many keys"));
                }
                let kv = self.read_kv()?;
                ok(KvGetManyResult {
                    values: p.keys.iter().map(|k| kv.get(k).cloned()).collect(),
                })
            }
            KV_SET_MANY => {
                let p: KvSetManyParams = params(p)?;
                if p.entries.len() > MAX_PAGE_ITEMS as usize {
                    return Err(RpcError::new(ErrorCode::TooLarge, "too many entries"));
                }
                self.kv_write(p.entries)
            }
            KV_LIST => {
                let p: KvListParams = params(p)?;
                let keys = self
                    .read_kv()?
                    .into_keys()
                    .filter(|k| k.starts_with(&p.prefix))
                    .collect();
                ok(KvListResult { keys })
            }
            other => Err(RpcError::new(
                ErrorCode::MethodNotFound,
                format!("unknown method {other:?}"),
            )),
        }
    }
}

fn rejected(reason: &str, index: usize, message: &str) -> RpcError {
    let mut data = serde_json::Map::new();
    data.insert("reason".into(), reason.into());
    data.insert("index".into(), index.into());
    RpcError::with_data(ErrorCode::TransactionRejected, message, data)
}

/// A resource as an extension sees it: its path relative to its library root, never where
/// that root is.
pub fn resource_view(r: ResourceRecord, roots: &[std::path::PathBuf]) -> ResourceView {
    let (file_name, file_name_bytes) = ResourceView::name_of(&r.path);
    let (relative_path, relative_path_bytes, library) = ResourceView::placement(&r.path, roots);
    ResourceView {
        file_name,
        file_name_bytes,
        relative_path,
        relative_path_bytes,
        library,
        modified_ms: Some(r.mtime_ns.div_euclid(1_000_000)),
        id: r.id,
        asset_id: r.asset_id,
        resource_type: r.resource_type,
        size_bytes: r.size,
        content_type: r.content_type,
        content_hash: ContentHash(r.blake3),
        metadata: r.metadata,
    }
}

/// When to send `will_terminate` during a call, for tests of termination.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions {
    pub time_budget_ms: u64,
    /// Send `will_terminate` after the extension made this many host calls in this call.
    pub will_terminate_after_calls: Option<usize>,
    /// SIGKILL the extension right after answering this many host calls (crash tests).
    pub kill_after_calls: Option<usize>,
    /// After answering this many host calls, send what a host sends to a line it could not
    /// read: a `parse_error` answer with `"id": null` (tests that an extension carries on).
    pub null_id_error_after_calls: Option<usize>,
}

/// One running extension process.
#[derive(Debug)]
pub struct Launch<'h> {
    host: &'h mut TestHost,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Vec<u8>>,
    next_id: i64,
    /// Lines answered `parse_error` / `invalid_request` so far.
    bad_lines: u32,
}

impl Launch<'_> {
    pub fn host(&mut self) -> &mut TestHost {
        self.host
    }

    fn send(&mut self, msg: &Message) -> Result<(), HarnessError> {
        let stdin = self.stdin.as_mut().ok_or(HarnessError::Closed)?;
        stdin.write_all(&msg.to_line())?;
        stdin.flush()?;
        Ok(())
    }

    pub fn notify(&mut self, method: &str, params: Value) -> Result<(), HarnessError> {
        self.send(&Message::Notification {
            method: method.into(),
            params,
        })
    }

    /// Sends a raw line (tests of malformed input).
    pub fn send_line(&mut self, line: &[u8]) -> Result<(), HarnessError> {
        let stdin = self.stdin.as_mut().ok_or(HarnessError::Closed)?;
        stdin.write_all(line)?;
        stdin.flush()?;
        Ok(())
    }

    /// The next message. As the host does: blank lines are skipped, and a line that is not
    /// JSON or not JSON-RPC is answered (`parse_error` / `invalid_request`) and skipped, up to
    /// [`MAX_BAD_LINES`] in the launch; one more is a protocol violation.
    fn next_message(&mut self) -> Result<Message, HarnessError> {
        loop {
            let line = match self.lines.recv_timeout(ANSWER_DEADLINE) {
                Ok(l) => l,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(HarnessError::Timeout(ANSWER_DEADLINE));
                }
                Err(RecvTimeoutError::Disconnected) => return Err(HarnessError::Closed),
            };
            let body = line.strip_suffix(b"\n").ok_or_else(|| {
                HarnessError::Protocol(format!("line of {} bytes without newline", line.len()))
            })?;
            if body.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let e = match Message::parse(body) {
                Ok(m) => return Ok(m),
                Err(e) => e,
            };
            match e.answer() {
                Some(answer) if self.bad_lines < MAX_BAD_LINES => {
                    self.bad_lines += 1;
                    self.send(&answer)?;
                }
                _ => return Err(HarnessError::Protocol(e.to_string())),
            }
        }
    }

    fn request(&mut self, method: &str, params: Value) -> Result<Value, HarnessError> {
        self.request_with(method, params, CallOptions::default())
    }

    /// Sends a request and serves the extension's calls until its answer arrives.
    pub fn request_with(
        &mut self,
        method: &str,
        params: Value,
        opts: CallOptions,
    ) -> Result<Value, HarnessError> {
        self.next_id += 1;
        let id = Id::Number(self.next_id);
        self.send(&Message::Request {
            id: id.clone(),
            method: method.into(),
            params,
        })?;
        let mut served = 0usize;
        loop {
            match self.next_message()? {
                Message::Response { id: rid, result } if rid == id => {
                    return result.map_err(HarnessError::Rpc);
                }
                Message::Response { id: rid, .. } => {
                    return Err(HarnessError::Protocol(format!(
                        "answer to unknown request {rid:?}"
                    )));
                }
                Message::Notification { method, .. } => {
                    return Err(HarnessError::Protocol(format!(
                        "unexpected notification {method}"
                    )));
                }
                Message::Request {
                    id: rid,
                    method,
                    params,
                } => {
                    let result = self.host.serve(&method, params);
                    self.send(&Message::Response { id: rid, result })?;
                    served += 1;
                    if opts.kill_after_calls == Some(served) {
                        let _ = self.child.kill();
                        let _ = self.child.wait();
                        self.stdin = None;
                        return Err(HarnessError::Killed);
                    }
                    if opts.null_id_error_after_calls == Some(served) {
                        let answer = FrameError::Parse("a test of the extension".into()).answer();
                        if let Some(answer) = answer {
                            self.send(&answer)?;
                        }
                    }
                    if opts.will_terminate_after_calls == Some(served) {
                        let p = WillTerminateParams {
                            reason: TerminateReason::TimeBudget,
                            grace_ms: 5000,
                        };
                        self.notify(WILL_TERMINATE, serde_json::to_value(p).unwrap_or_default())?;
                    }
                }
            }
        }
    }

    /// One `process_jobs` call.
    pub fn process_jobs(
        &mut self,
        reasons: Vec<CallReason>,
    ) -> Result<ProcessJobsResult, HarnessError> {
        self.process_jobs_with(
            reasons,
            CallOptions {
                time_budget_ms: 30_000,
                ..CallOptions::default()
            },
        )
    }

    pub fn process_jobs_with(
        &mut self,
        reasons: Vec<CallReason>,
        opts: CallOptions,
    ) -> Result<ProcessJobsResult, HarnessError> {
        let params = serde_json::to_value(ProcessJobsParams {
            reasons,
            time_budget_ms: opts.time_budget_ms,
        })
        .unwrap_or_default();
        let v = self.request_with(PROCESS_JOBS, params, opts)?;
        serde_json::from_value(v)
            .map_err(|e| HarnessError::Protocol(format!("process_jobs answer: {e}")))
    }

    /// Calls `process_jobs` until the extension answers `completed` (or `failure`), at most
    /// `max_calls` times; returns the answers.
    pub fn process_until_completed(
        &mut self,
        max_calls: usize,
    ) -> Result<Vec<ProcessJobsResult>, HarnessError> {
        let mut answers = Vec::new();
        let mut reasons = vec![CallReason::FirstRun];
        for _ in 0..max_calls {
            let r = self.process_jobs(reasons)?;
            let status = r.status;
            answers.push(r);
            if status != ProcessStatus::Processing {
                return Ok(answers);
            }
            reasons = vec![CallReason::Continue];
        }
        Err(HarnessError::Protocol(format!(
            "still processing after {max_calls} calls"
        )))
    }

    /// Closes stdin and waits (≤ [`ANSWER_DEADLINE`]) for the process to exit.
    pub fn close(mut self) -> Result<ExitStatus, HarnessError> {
        self.stdin = None;
        let deadline = Instant::now() + ANSWER_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(HarnessError::Timeout(ANSWER_DEADLINE));
            }
            // Polling the child's exit with a deadline: std has no wait-with-timeout.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Launch<'_> {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
