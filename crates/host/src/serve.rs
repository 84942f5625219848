//! Answering an extension's requests from the store, with its scope enforced on every answer:
//! an asset outside the scope does not exist for it (not in changes, assets, listings, fetches
//! or transactions), and a resource or job is checked through its asset's folder.
//!
//! Each handler is synchronous and takes the store lock for one short stretch; the session
//! runs it on a blocking thread so the lock is never held across an await.

use ferry_core::job::{
    Action, Job, MAX_TX_ITEMS, TransactionError, TxItem, TxView, plan_transaction, referenced_ids,
};
use ferry_extension::protocol::{
    self as p, AssetChange, AssetView, AssetsParams, AssetsResult, ChangeKind, ChangesParams,
    ChangesResult, ErrorCode, FetchParams, FetchResult, KvGetParams, KvGetResult, KvListParams,
    KvListResult, KvSetParams, LimitResult, ListAssetsParams, ListAssetsResult, ResourceView,
    RpcError, Scope, TokenResult, TransactionRequest, TransactionResult,
};
use ferry_store::extensions::KvError;
use ferry_store::library::{AssetRecord, ChangeKind as StoreChangeKind, ChangesError};
use ferry_store::{JobStore, JobStoreError, Store, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Answers above this size are cut (pages) or refused (`too_large`) so that they fit in one
/// line under the protocol's limit, with room for the envelope.
const MAX_ANSWER_BYTES: usize = p::MAX_MESSAGE_BYTES - 64 * 1024;
/// How many assets one `list_assets` page may read past the scope before answering with a
/// short page: keeps one answer's work bounded when the scope is a small part of the library.
const MAX_LIST_SCANNED: usize = 20_000;
/// Most keys one `kv.list` answer carries.
pub const MAX_KV_LIST_KEYS: usize = 2_000;

/// Which folders an extension may see, resolved against the library's roots.
#[derive(Debug, Clone)]
pub struct ScopeFilter {
    /// `None`: the whole library.
    dirs: Option<Vec<PathBuf>>,
}

impl ScopeFilter {
    pub fn new(scope: &Scope, roots: &[PathBuf]) -> ScopeFilter {
        match scope {
            Scope::Library => ScopeFilter { dirs: None },
            Scope::Folders { folders } => ScopeFilter {
                dirs: Some(
                    roots
                        .iter()
                        .flat_map(|r| folders.iter().map(move |f| r.join(f)))
                        .collect(),
                ),
            },
        }
    }

    pub fn is_library(&self) -> bool {
        self.dirs.is_none()
    }

    /// Whether an asset in folder `dir` is visible (component-wise prefix).
    pub fn contains(&self, dir: &Path) -> bool {
        match &self.dirs {
            None => true,
            Some(dirs) => dirs.iter().any(|d| dir.starts_with(d)),
        }
    }
}

/// What one session's handlers need: who is asking and what it may see.
#[derive(Debug, Clone)]
pub struct Context {
    pub extension: String,
    pub scope: ScopeFilter,
    pub store: Arc<Mutex<Store>>,
}

/// Why a request was not answered with a result.
fn err(code: ErrorCode, message: impl Into<String>) -> RpcError {
    RpcError::new(code, message)
}

fn store_err(e: StoreError) -> RpcError {
    err(ErrorCode::Unavailable, format!("Ferry's store failed: {e}"))
}

fn job_store_err(e: JobStoreError) -> RpcError {
    match e {
        JobStoreError::Rejected(t) => tx_rejected(&t),
        other => err(
            ErrorCode::Unavailable,
            format!("Ferry's store failed: {other}"),
        ),
    }
}

fn tx_rejected(t: &TransactionError) -> RpcError {
    rejected(t.index, Some(t.job), t.code(), t.to_string())
}

fn rejected(index: usize, job: Option<uuid::Uuid>, reason: &str, message: String) -> RpcError {
    let mut data = serde_json::Map::new();
    data.insert("reason".into(), reason.into());
    data.insert("index".into(), index.into());
    if let Some(job) = job {
        data.insert("job".into(), job.to_string().into());
    }
    RpcError::with_data(ErrorCode::TransactionRejected, message, data)
}

fn params<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, RpcError> {
    // Absent params mean "all defaults" for methods whose params are all optional.
    let value = if value.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        value
    };
    serde_json::from_value(value).map_err(|e| err(ErrorCode::InvalidParams, e.to_string()))
}

fn answer<T: Serialize>(value: &T) -> Result<serde_json::Value, RpcError> {
    serde_json::to_value(value).map_err(|e| err(ErrorCode::Internal, e.to_string()))
}

fn lock(ctx: &Context) -> Result<std::sync::MutexGuard<'_, Store>, RpcError> {
    ctx.store
        .lock()
        .map_err(|_| err(ErrorCode::Unavailable, "Ferry's store is unavailable"))
}

fn now_ms() -> i64 {
    crate::now_ms()
}

/// Answers one request. `method` must be one of [`p::HOST_METHODS`] or
/// [`p::MIGRATION_CLEAR_STATUS`] (`archive.append` is the session's own: it copies files);
/// others are refused with `method_not_found`.
pub fn handle(
    ctx: &Context,
    method: &str,
    raw: serde_json::Value,
) -> Result<serde_json::Value, RpcError> {
    match method {
        p::LIBRARY_CURRENT_TOKEN => {
            let token = lock(ctx)?.current_change_token().map_err(store_err)?;
            answer(&TokenResult { token })
        }
        p::LIBRARY_CHANGES => changes(ctx, params(raw)?),
        p::LIBRARY_ASSETS => assets(ctx, params(raw)?),
        p::LIBRARY_LIST_ASSETS => list_assets(ctx, params(raw)?),
        p::JOBS_FETCH => fetch(ctx, params(raw)?),
        p::JOBS_TRANSACTION => transaction(
            ctx,
            TransactionRequest::parse(raw).map_err(|e| err(ErrorCode::InvalidParams, e))?,
        ),
        p::JOBS_LIMIT => {
            let store = lock(ctx)?;
            let job_limit = store
                .policy(&ctx.extension)
                .map_err(job_store_err)?
                .job_limit;
            let unacknowledged = store
                .unacknowledged_count(&ctx.extension)
                .map_err(job_store_err)?;
            answer(&LimitResult {
                job_limit,
                unacknowledged,
                available: job_limit.saturating_sub(unacknowledged),
            })
        }
        p::KV_GET => {
            let q: KvGetParams = params(raw)?;
            check_key(&q.key)?;
            let value = lock(ctx)?
                .kv_get(&ctx.extension, &q.key)
                .map_err(store_err)?;
            answer(&KvGetResult { value })
        }
        p::KV_SET => {
            let q: KvSetParams = params(raw)?;
            check_entry(&q)?;
            kv_write(ctx, &[(q.key.as_str(), q.value.as_deref())])
        }
        p::KV_GET_MANY => {
            let q: p::KvGetManyParams = params(raw)?;
            check_count(q.keys.len())?;
            for k in &q.keys {
                check_key(k)?;
            }
            let store = lock(ctx)?;
            let values = q
                .keys
                .iter()
                .map(|k| store.kv_get(&ctx.extension, k))
                .collect::<Result<Vec<_>, _>>()
                .map_err(store_err)?;
            answer(&p::KvGetManyResult { values })
        }
        p::KV_SET_MANY => {
            let q: p::KvSetManyParams = params(raw)?;
            check_count(q.entries.len())?;
            for e in &q.entries {
                check_entry(e)?;
            }
            let entries: Vec<(&str, Option<&str>)> = q
                .entries
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_deref()))
                .collect();
            kv_write(ctx, &entries)
        }
        p::KV_LIST => {
            let q: KvListParams = params(raw)?;
            let mut keys = lock(ctx)?
                .kv_list(&ctx.extension, &q.prefix, usize::MAX)
                .map_err(store_err)?;
            // The protocol has no paging for kv.list: an answer past the limit is refused
            // rather than cut, so the extension never mistakes part for the whole.
            if keys.len() > MAX_KV_LIST_KEYS {
                keys.clear();
                return Err(err(
                    ErrorCode::TooLarge,
                    format!("more than {MAX_KV_LIST_KEYS} keys match; use a longer prefix"),
                ));
            }
            answer(&KvListResult { keys })
        }
        // Version 2 (the session lets it through only for an extension that speaks it).
        p::MIGRATION_CLEAR_STATUS => {
            lock(ctx)?
                .clear_import_status(&ctx.extension)
                .map_err(store_err)?;
            answer(&p::Empty {})
        }
        other => Err(err(
            ErrorCode::MethodNotFound,
            format!("no method {other:?}"),
        )),
    }
}

/// One durable commit of kv writes, all or none.
fn kv_write(
    ctx: &Context,
    entries: &[(&str, Option<&str>)],
) -> Result<serde_json::Value, RpcError> {
    match lock(ctx)?.kv_set_many(&ctx.extension, entries, p::MAX_KV_TOTAL_BYTES) {
        Ok(()) => answer(&p::Empty {}),
        Err(KvError::Full { .. }) => Err(err(
            ErrorCode::StorageFull,
            format!(
                "the key-value store holds at most {} bytes",
                p::MAX_KV_TOTAL_BYTES
            ),
        )),
        Err(KvError::Store(e)) => Err(store_err(e)),
    }
}

fn check_count(n: usize) -> Result<(), RpcError> {
    if n > p::MAX_PAGE_ITEMS as usize {
        return Err(err(
            ErrorCode::TooLarge,
            format!("at most {} keys in one call", p::MAX_PAGE_ITEMS),
        ));
    }
    Ok(())
}

fn check_entry(e: &KvSetParams) -> Result<(), RpcError> {
    check_key(&e.key)?;
    if let Some(v) = &e.value
        && v.len() > p::MAX_KV_VALUE_BYTES
    {
        return Err(err(
            ErrorCode::TooLarge,
            format!("a value is at most {} bytes", p::MAX_KV_VALUE_BYTES),
        ));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), RpcError> {
    if key.is_empty() || key.len() > p::MAX_KV_KEY_BYTES {
        return Err(err(
            ErrorCode::InvalidParams,
            format!("a key is 1 to {} bytes", p::MAX_KV_KEY_BYTES),
        ));
    }
    Ok(())
}

/// The folder of an asset that exists, or of one that was deleted (its tombstone).
fn asset_dir(store: &Store, asset_id: &str) -> Result<Option<PathBuf>, StoreError> {
    match store.asset(asset_id)? {
        Some(a) => Ok(Some(a.dir)),
        None => store.deleted_asset_dir(asset_id),
    }
}

fn visible_asset(ctx: &Context, store: &Store, asset_id: &str) -> Result<bool, StoreError> {
    if ctx.scope.is_library() {
        return Ok(true);
    }
    Ok(asset_dir(store, asset_id)?.is_some_and(|d| ctx.scope.contains(&d)))
}

/// Whether the resource exists and the extension can see it.
fn visible_resource(ctx: &Context, store: &Store, resource_id: &str) -> Result<bool, StoreError> {
    match store.resource(resource_id)? {
        None => Ok(false),
        Some(r) => visible_asset(ctx, store, &r.asset_id),
    }
}

/// Whether a job of this extension is visible: its resource is in scope, or gone (a job for
/// a deleted resource was created in scope and must still be acknowledged).
fn visible_job(ctx: &Context, store: &Store, job: &Job) -> Result<bool, StoreError> {
    if ctx.scope.is_library() {
        return Ok(true);
    }
    match store.resource(&job.resource_id)? {
        None => Ok(true),
        Some(r) => visible_asset(ctx, store, &r.asset_id),
    }
}

fn changes(ctx: &Context, q: ChangesParams) -> Result<serde_json::Value, RpcError> {
    let limit = q.limit.unwrap_or(1000).clamp(1, p::MAX_CHANGES_PAGE_ITEMS) as usize;
    let store = lock(ctx)?;
    let checked = store.check_extension_token(&ctx.extension, &q.since);
    let (until, all) = match checked
        .and_then(|()| store.merged_changes(&q.since, q.until.as_deref()))
    {
        Ok(r) => r,
        Err(ChangesError::ChangeTokenExpired { oldest_kept }) => {
            let mut data = serde_json::Map::new();
            data.insert("oldest_kept".into(), oldest_kept.into());
            return Err(RpcError::with_data(
                ErrorCode::ChangeTokenExpired,
                "this change token expired (the history since it was pruned, or your consent changed since); resynchronise with library.list_assets",
                data,
            ));
        }
        Err(ChangesError::InvalidToken(t)) => {
            return Err(err(
                ErrorCode::InvalidToken,
                format!("not a change token of this library: {t:?}"),
            ));
        }
        Err(ChangesError::Store(e)) => return Err(store_err(e)),
    };
    let mut visible = Vec::new();
    for (asset_id, kind) in all {
        if visible_asset(ctx, &store, &asset_id).map_err(store_err)? {
            visible.push((asset_id, kind));
        }
    }
    drop(store);
    let offset = usize::try_from(q.offset).unwrap_or(usize::MAX);
    let page: Vec<AssetChange> = visible
        .iter()
        .skip(offset)
        .take(limit)
        .map(|(asset_id, kind)| AssetChange {
            asset_id: asset_id.clone(),
            kind: match kind {
                StoreChangeKind::Inserted => ChangeKind::Inserted,
                StoreChangeKind::Updated => ChangeKind::Updated,
                StoreChangeKind::Deleted => ChangeKind::Deleted,
            },
        })
        .collect();
    let end = offset.saturating_add(page.len());
    answer(&ChangesResult {
        until,
        changes: page,
        next_offset: (end < visible.len()).then_some(end as u64),
    })
}

fn asset_view(store: &Store, a: &AssetRecord, roots: &[PathBuf]) -> Result<AssetView, StoreError> {
    let resources = store
        .resources_of_asset(&a.id)?
        .into_iter()
        .map(|r| {
            let (file_name, file_name_bytes) = ResourceView::name_of(&r.path);
            let (relative_path, relative_path_bytes, library) =
                ResourceView::placement(&r.path, roots);
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
                content_hash: ferry_core::ContentHash(r.blake3),
                metadata: r.metadata,
            }
        })
        .collect();
    Ok(AssetView {
        id: a.id.clone(),
        created_ms: a.created_ms,
        updated_ms: a.updated_ms,
        resources,
    })
}

fn json_len<T: Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX)
}

fn assets(ctx: &Context, q: AssetsParams) -> Result<serde_json::Value, RpcError> {
    if q.ids.len() > p::MAX_PAGE_ITEMS as usize {
        return Err(err(
            ErrorCode::InvalidParams,
            format!("at most {} ids", p::MAX_PAGE_ITEMS),
        ));
    }
    let store = lock(ctx)?;
    let mut out = AssetsResult {
        assets: vec![],
        missing: vec![],
    };
    let mut bytes = 0usize;
    let roots = store.roots().map_err(store_err)?;
    for id in q.ids {
        let rec = store.asset(&id).map_err(store_err)?;
        match rec {
            Some(a) if ctx.scope.contains(&a.dir) => {
                let view = asset_view(&store, &a, &roots).map_err(store_err)?;
                bytes = bytes.saturating_add(json_len(&view));
                if bytes > MAX_ANSWER_BYTES {
                    return Err(err(
                        ErrorCode::TooLarge,
                        "the answer would be over the message limit; ask for fewer ids",
                    ));
                }
                out.assets.push(view);
            }
            _ => out.missing.push(id),
        }
    }
    answer(&out)
}

fn list_assets(ctx: &Context, q: ListAssetsParams) -> Result<serde_json::Value, RpcError> {
    let limit = q.limit.unwrap_or(200).clamp(1, p::MAX_PAGE_ITEMS) as usize;
    let store = lock(ctx)?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut after = q.after;
    let mut scanned = 0usize;
    let roots = store.roots().map_err(store_err)?;
    let mut more = true;
    'pages: while out.len() < limit && scanned < MAX_LIST_SCANNED {
        let page = store
            .assets_by_id(after.as_deref(), 1000)
            .map_err(store_err)?;
        if page.is_empty() {
            more = false;
            break;
        }
        for a in page {
            scanned += 1;
            if ctx.scope.contains(&a.dir) {
                let view = asset_view(&store, &a, &roots).map_err(store_err)?;
                let len = json_len(&view);
                if bytes.saturating_add(len) > MAX_ANSWER_BYTES && !out.is_empty() {
                    // Cut the page here; the next one starts at this asset.
                    break 'pages;
                }
                bytes = bytes.saturating_add(len);
                out.push(view);
            }
            after = Some(a.id);
            if out.len() >= limit {
                break 'pages;
            }
        }
    }
    if more {
        // Is anything left past `after`? One cheap look keeps the last page honest.
        more = !store
            .assets_by_id(after.as_deref(), 1)
            .map_err(store_err)?
            .is_empty();
    }
    answer(&ListAssetsResult {
        assets: out,
        next_after: if more { after } else { None },
    })
}

fn fetch(ctx: &Context, q: FetchParams) -> Result<serde_json::Value, RpcError> {
    let limit = q
        .limit
        .unwrap_or(p::MAX_PAGE_ITEMS)
        .clamp(1, p::MAX_PAGE_ITEMS) as usize;
    let store = lock(ctx)?;
    let mut all = store
        .fetch(&ctx.extension, q.action)
        .map_err(job_store_err)?;
    all.sort_by_key(|j| j.id);
    let mut jobs = Vec::new();
    let mut bytes = 0usize;
    let mut next_after = None;
    for j in all.into_iter().filter(|j| q.after.is_none_or(|a| j.id > a)) {
        if !visible_job(ctx, &store, &j).map_err(store_err)? {
            continue;
        }
        let len = json_len(&j);
        if jobs.len() >= limit || (bytes.saturating_add(len) > MAX_ANSWER_BYTES && !jobs.is_empty())
        {
            next_after = jobs.last().map(|j: &Job| j.id);
            break;
        }
        bytes = bytes.saturating_add(len);
        jobs.push(j);
    }
    answer(&FetchResult { jobs, next_after })
}

/// A transaction: refused whole (`transaction_rejected`, naming the first offending item) or
/// committed whole. Ferry's own checks (scope; a method it cannot send with) come before the
/// job store's rules, but an earlier item that breaks those rules is still the one named.
fn transaction(ctx: &Context, q: TransactionRequest) -> Result<serde_json::Value, RpcError> {
    if q.items.len() > MAX_TX_ITEMS {
        return Err(rejected(
            MAX_TX_ITEMS,
            None,
            "too_many_items",
            format!("at most {MAX_TX_ITEMS} items"),
        ));
    }
    let mut store = lock(ctx)?;
    // Consent is checked under the same lock as the write: a disable (which takes the lock)
    // either happened before and refuses this, or happens after and cancels what this made.
    let enabled = store
        .consent(&ctx.extension)
        .map_err(store_err)?
        .is_some_and(|c| c.is_enabled());
    if !enabled {
        return Err(err(ErrorCode::NotNow, "the extension is not enabled"));
    }
    // Ferry's own refusals, by item: an item outside the scope is refused as such even if its
    // method is bad too (the method is a destination rule, checked after the resource).
    let mut refusals: Vec<(usize, RpcError)> = Vec::new();
    let mut bad_methods = q.bad_methods.iter().peekable();
    for (index, item) in q.items.iter().enumerate() {
        let bad_method = bad_methods.next_if(|t| t.index == index);
        match item {
            TxItem::Create(new) => {
                if !visible_resource(ctx, &store, &new.resource_id).map_err(store_err)? {
                    refusals.push((
                        index,
                        rejected(
                            index,
                            Some(new.id),
                            "unknown_resource",
                            "no such resource".into(),
                        ),
                    ));
                    continue;
                }
            }
            TxItem::Retry { job, .. } | TxItem::Acknowledge { job } | TxItem::Cancel { job } => {
                // A job whose resource left the scope is as invisible as the resource.
                if let Some(j) = store.job(*job).map_err(job_store_err)?
                    && j.extension == ctx.extension
                    && !visible_job(ctx, &store, &j).map_err(store_err)?
                {
                    refusals.push((
                        index,
                        rejected(index, Some(*job), "unknown_job", "no such job".into()),
                    ));
                    continue;
                }
            }
        }
        if let Some(t) = bad_method {
            refusals.push((index, tx_rejected(t)));
        }
    }
    if let Some((_, refusal)) = refusals.first() {
        let refused: BTreeSet<usize> = refusals.iter().map(|(i, _)| *i).collect();
        let earlier = p::earlier_rejection(&q.items, &refused, |kept| {
            planned_rejection(&store, &ctx.extension, kept)
        })?;
        return Err(earlier
            .as_ref()
            .map_or_else(|| refusal.clone(), tx_rejected));
    }
    let jobs = store
        .transaction(&ctx.extension, &q.items, now_ms())
        .map_err(job_store_err)?;
    answer(&TransactionResult {
        jobs: jobs.into_iter().map(|j| j.id).collect(),
    })
}

/// What the job store's rules would say to `items`, deciding against the store without
/// writing (the store decides the same way: core's `plan_transaction`).
fn planned_rejection(
    store: &Store,
    extension: &str,
    items: &[TxItem],
) -> Result<Option<TransactionError>, RpcError> {
    let mut jobs = HashMap::new();
    for id in referenced_ids(items) {
        if let Some(j) = store.job(id).map_err(job_store_err)? {
            jobs.insert(id, j);
        }
    }
    let view = TxView {
        extension,
        jobs: &jobs,
        unacknowledged: store
            .unacknowledged_count(extension)
            .map_err(job_store_err)?,
    };
    let policy = store.policy(extension).map_err(job_store_err)?;
    Ok(plan_transaction(&view, items, &policy, now_ms()).err())
}

/// Whether the action has jobs of this extension that finished after `since_ms` (the host's
/// test for "jobs finished" / "retry available").
pub fn finished_since(
    store: &Store,
    extension: &str,
    action: Action,
    since_ms: i64,
) -> Result<bool, JobStoreError> {
    Ok(store
        .fetch(extension, action)?
        .iter()
        .any(|j| j.finished_ms.unwrap_or(j.updated_ms) > since_ms))
}
