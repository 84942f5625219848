//! ferry-backup, Ferry's reference extension: keeps the library backed up to a ferry-server.
//!
//! Each `process_jobs` call follows PhotoKit's order: retry failed jobs whose error may pass,
//! acknowledge finished ones (recording the server's object id in the kv store first, since
//! acknowledging deletes the job), then create jobs for new resources, from the change history
//! since the saved token (or a full pass over the library on first run and after
//! `change_token_expired`), up to the job limit. Before creating jobs it asks the server which
//! content hashes it already stores, so a reinstall uploads nothing again; for each resource it
//! skips that way (the same bytes at a second path, on a second device) it records a receipt of
//! this resource's path on the server (`POST /v1/objects/receipts`, one request per page) before
//! recording the resource as stored, so a restore brings every path back. The asset record
//! remembers which location (library and path) has a receipt, so a renamed resource gets one
//! for its new path and an unchanged one is never sent again. All resources of an asset (a
//! Live Photo's photo and video, a RAW+JPEG pair) go into one transaction.
//!
//! Every step is idempotent, so a call cut short anywhere (kill, `will_terminate`) is simply
//! continued by the next: the cursor in kv says where the pass was, and a resource that
//! already has a live job or a record of being stored is skipped.

mod server;

use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;

use ferry_core::job::{Action, ErrorCode as JobErrorCode, JobState, NewJob, TxItem};
use ferry_core::{ContentHash, Destination, Method};
use ferry_extension::protocol::{
    AssetView, ChangeKind, ChangesParams, ErrorCode, InitializeParams, MAX_PAGE_ITEMS,
    ProcessJobsParams, ProcessJobsResult, ProcessStatus, ResourceView,
};
use ferry_extension::{ErrorClass, Extension, Host, HostError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use server::{CheckError, NewReceipt, Receipts, ServerClient};

/// Assets handled per page of changes or of the full pass.
const PAGE_ASSETS: u32 = 100;
/// kv keys.
const KV_TOKEN: &str = "token";
const KV_CURSOR: &str = "cursor";
const KV_ASSET_PREFIX: &str = "asset/";
/// The server's answer header naming the stored object.
const OBJECT_ID_HEADER: &str = "ferry-object-id";

/// Runs ferry-backup over this process's stdin/stdout (the `ferry-backup` binary, or the
/// `ferry` binary's hidden subcommand).
pub fn main_with_stdio() -> ExitCode {
    ferry_extension::run(Backup::default())
}

/// The manifest's `[config]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The server's base, e.g. `https://backup.example.org` (uploads go to `/v1/uploads`).
    pub server_url: String,
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the token (first line), instead of `token`.
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
    /// A PEM file of certificates trusted for the server beside the system's roots (its own
    /// self-signed certificate, or the CA that signed it).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// The server certificate's SHA-256 fingerprint (`AA:BB:…` or 64 hex digits): exactly
    /// that certificate is accepted.
    #[serde(default)]
    pub cert_sha256: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Shape(#[from] serde_json::Error),
    #[error("config: set exactly one of `token` and `token_file`")]
    Token,
    #[error("config: reading token_file {0}: {1}")]
    TokenFile(std::path::PathBuf, std::io::Error),
    #[error("config: the upload URL is not allowed: {0}")]
    Destination(#[from] ferry_core::DestinationError),
    #[error("config: {0}")]
    Client(#[from] CheckError),
    #[error("config: cert_sha256: {0}")]
    Fingerprint(#[from] ferry_tls::FingerprintError),
    #[error(
        "config: set one of `ca_file` and `cert_sha256` (a pinned certificate is trusted alone)"
    )]
    TrustBoth,
}

impl Config {
    pub fn from_json(v: &serde_json::Value) -> Result<Config, ConfigError> {
        Ok(serde_json::from_value(v.clone())?)
    }

    fn token(&self) -> Result<String, ConfigError> {
        match (&self.token, &self.token_file) {
            (Some(t), None) => Ok(t.trim().to_owned()),
            (None, Some(path)) => {
                let path = home_path(path);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| ConfigError::TokenFile(path.clone(), e))?;
                Ok(text.lines().next().unwrap_or("").trim().to_owned())
            }
            _ => Err(ConfigError::Token),
        }
    }

    /// How the server's certificate is trusted (`ca_file`, `cert_sha256`).
    pub fn trust(&self) -> Result<ferry_tls::ServerTrust, ConfigError> {
        if self.ca_file.is_some() && self.cert_sha256.is_some() {
            return Err(ConfigError::TrustBoth);
        }
        Ok(ferry_tls::ServerTrust {
            ca_file: self.ca_file.as_deref().map(home_path),
            cert_sha256: self.cert_sha256.as_deref().map(str::parse).transpose()?,
        })
    }

    /// Where every job uploads to: the server's upload endpoint, which speaks the IETF
    /// draft, tus and plain uploads (ferry-transfer picks by its `OPTIONS` answer).
    pub fn upload_url(&self) -> String {
        format!("{}/v1/uploads", self.server_url.trim_end_matches('/'))
    }
}

/// `~/` is the user's home, as people write it in config files.
fn home_path(path: &std::path::Path) -> std::path::PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => std::path::Path::new(&home).join(rest),
        _ => path.to_owned(),
    }
}

/// What is known to be on the server for one asset: resource id → hash and object id.
type AssetRecord = BTreeMap<String, Stored>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    hash: ContentHash,
    object_id: String,
    /// The [`location_key`] of the place the server holds a receipt of this resource for (its
    /// upload's, or one added for a copy). `None`: not known to (a record from before receipts
    /// were added, or a server without them): one is sent when the asset is next handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    receipt_at: Option<String>,
}

/// A short, stable name for where a resource lives (the `library` and `path` of its
/// metadata): a 64-bit FNV-1a of both, so asset records stay small however long the paths
/// (an asset's record is one kv value, at most 64 KiB). Not a security boundary: a collision
/// would only skip one receipt.
fn location_key(metadata: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in ["library", "path"] {
        let value = metadata.get(part);
        // Absent and empty differ; the separator keeps ("ab", "") apart from ("a", "b").
        let bytes = [
            &[u8::from(value.is_some())][..],
            value.map(String::as_bytes).unwrap_or_default(),
            &[0xff],
        ];
        for b in bytes.iter().flat_map(|b| b.iter()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Where the current pass over the library stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
enum Cursor {
    /// Changes `since`..`until`, the first `offset` of them handled.
    Changes {
        since: String,
        until: String,
        offset: u64,
    },
    /// Every asset, by id, after `after`; then continue from `until`.
    Resync {
        until: String,
        after: Option<String>,
    },
}

/// What one call did, for the answer's message.
#[derive(Debug, Default, Serialize)]
struct Report {
    retried: u32,
    acknowledged: u32,
    failed: u32,
    created: u32,
    already_stored: u32,
    /// Receipts recorded for copies whose bytes the server already held.
    receipts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Report {
    fn progress(&self) -> bool {
        self.retried + self.acknowledged + self.created + self.already_stored + self.receipts > 0
    }
}

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Server(#[from] CheckError),
    #[error("kv value {key}: {detail}")]
    Kv { key: String, detail: String },
}

/// How a step ended when it did not fail.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Caught up with the library.
    Done,
    /// Work remains (the limit is reached, or the host asked us to stop).
    More,
}

#[derive(Debug)]
struct Ready {
    client: ServerClient,
    destination: Destination,
}

/// The extension.
#[derive(Debug, Default)]
pub struct Backup {
    ready: Option<Ready>,
}

/// Job errors worth one more try: the network or the server may recover.
fn retryable(error: Option<&JobErrorCode>) -> bool {
    match error {
        None => true,
        Some(c) => matches!(
            c,
            JobErrorCode::NetworkLost
                | JobErrorCode::TimedOut
                | JobErrorCode::ServerError
                | JobErrorCode::BadResponse
        ),
    }
}

/// A metadata value without control characters, at most `max` characters.
/// The longest library-relative path sent in a job's metadata (its whole limit is 4 KiB).
const MAX_PATH_METADATA_BYTES: usize = 3 * 1024;

fn clean(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(max)
        .collect()
}

fn from_kv<T: for<'de> Deserialize<'de>>(
    key: &str,
    value: Option<String>,
) -> Result<Option<T>, StepError> {
    value
        .map(|v| serde_json::from_str(&v))
        .transpose()
        .map_err(|e| StepError::Kv {
            key: key.into(),
            detail: e.to_string(),
        })
}

fn to_kv<T: Serialize>(key: &str, value: &T) -> Result<String, StepError> {
    serde_json::to_string(value).map_err(|e| StepError::Kv {
        key: key.into(),
        detail: e.to_string(),
    })
}

fn kv_json<T: for<'de> Deserialize<'de>>(
    host: &mut Host,
    key: &str,
) -> Result<Option<T>, StepError> {
    let value = host.kv_get(key)?;
    from_kv(key, value)
}

fn kv_put<T: Serialize>(host: &mut Host, key: &str, value: &T) -> Result<(), StepError> {
    host.kv_set(key, Some(&to_kv(key, value)?))?;
    Ok(())
}

fn parse_record(key: &str, value: Option<String>) -> Result<AssetRecord, StepError> {
    Ok(from_kv(key, value)?.unwrap_or_default())
}

/// What a page of assets comes to, written at once by [`PageBatch::commit`].
#[derive(Debug, Default)]
struct PageBatch {
    creates: Vec<TxItem>,
    /// The created jobs' resources, live once the transaction commits.
    created: Vec<(String, ContentHash)>,
    /// Records of resources the server already holds.
    records: Vec<(String, Option<String>)>,
    known: u32,
    /// Receipts the records stand for (sent before the batch is committed).
    receipts: u32,
    /// The page entry this batch starts at.
    first: usize,
}

impl PageBatch {
    /// Creates the jobs in one transaction, then records what the server already holds in
    /// one commit; returns `done` (the entries handled), or where the page stands if the
    /// limit turned out smaller than counted (nothing of this batch is then written).
    fn commit(
        self,
        host: &mut Host,
        live: &mut HashSet<(String, ContentHash)>,
        available: &mut u32,
        report: &mut Report,
        done: usize,
    ) -> Result<usize, StepError> {
        if !self.creates.is_empty() {
            let n = self.creates.len() as u32;
            match host.transaction(self.creates) {
                Ok(_) => {}
                Err(e) if e.rejection_reason() == Some("limit_exceeded") => {
                    *available = 0;
                    return Ok(self.first);
                }
                Err(e) => return Err(e.into()),
            }
            live.extend(self.created);
            *available = available.saturating_sub(n);
            report.created += n;
        }
        if !self.records.is_empty() {
            host.kv_set_many(&self.records)?;
            report.already_stored += self.known;
            report.receipts += self.receipts;
        }
        Ok(done)
    }
}

/// The metadata of one resource as the server keeps it: an upload job carries it, and a
/// receipt added for a copy whose bytes are already stored sends the very same map (so the
/// server takes the two for one receipt).
fn resource_metadata(asset: &AssetView, r: &ResourceView) -> BTreeMap<String, String> {
    let mut metadata = BTreeMap::new();
    metadata.insert("asset_id".to_owned(), asset.id.clone());
    metadata.insert("resource_type".to_owned(), r.resource_type.to_string());
    metadata.insert("file_name".to_owned(), clean(&r.file_name, 255));
    metadata.insert("content_hash".to_owned(), r.content_hash.to_hex());
    if let Some(t) = &r.metadata.capture_time {
        metadata.insert("capture_time".to_owned(), clean(t, 64));
    }
    // Where it was, so a restore can put it back: the path under its library root (already
    // escaped: no control characters), the root's name, the modification time. A path too
    // long for the metadata's size limit is left out rather than cut.
    if let Some(p) = &r.relative_path
        && p.len() <= MAX_PATH_METADATA_BYTES
        && !p.chars().any(char::is_control)
    {
        metadata.insert("path".to_owned(), p.clone());
    }
    if let Some(l) = &r.library {
        metadata.insert("library".to_owned(), clean(l, 255));
    }
    if let Some(m) = r.modified_ms {
        metadata.insert("modified_ms".to_owned(), m.to_string());
    }
    metadata
}

fn asset_key(asset_id: &str) -> String {
    format!("{KV_ASSET_PREFIX}{asset_id}")
}

impl Backup {
    fn ready(&self) -> Option<&Ready> {
        self.ready.as_ref()
    }

    /// Step 1: re-queue failed jobs whose error may pass (once; the host enforces it).
    fn retry(&self, host: &mut Host, report: &mut Report) -> Result<(), StepError> {
        let Some(ready) = self.ready() else {
            return Ok(());
        };
        let items: Vec<TxItem> = host
            .fetch_all(Action::Retry)?
            .into_iter()
            .filter(|j| retryable(j.error.as_ref()))
            .map(|j| TxItem::Retry {
                job: j.id,
                // The current destination: the token may have been replaced since.
                destination: Some(ready.destination.clone()),
            })
            .collect();
        for chunk in items.chunks(MAX_PAGE_ITEMS as usize) {
            match host.transaction(chunk.to_vec()) {
                Ok(_) => report.retried += chunk.len() as u32,
                // A job that changed under us (cancelled, acknowledged elsewhere) is no
                // reason to stop: the rest of the call still has work.
                Err(e) if e.rejection_reason().is_some() => {
                    eprintln!("ferry-backup: retry skipped: {e}");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Step 2: record what the server stored, then acknowledge every finished job.
    fn acknowledge(&self, host: &mut Host, report: &mut Report) -> Result<(), StepError> {
        let jobs = host.fetch_all(Action::Acknowledge)?;
        if jobs.is_empty() {
            return Ok(());
        }
        let mut by_asset: BTreeMap<String, Vec<(String, Stored)>> = BTreeMap::new();
        for j in &jobs {
            if j.state != JobState::Succeeded {
                report.failed += 1;
                continue;
            }
            let Some(asset) = j.metadata.get("asset_id") else {
                continue;
            };
            let object_id = j
                .response_headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(OBJECT_ID_HEADER))
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| j.content_hash.to_hex());
            by_asset.entry(asset.clone()).or_default().push((
                j.resource_id.clone(),
                Stored {
                    hash: j.content_hash,
                    object_id,
                    // The upload's own receipt carries the job's metadata.
                    receipt_at: Some(location_key(&j.metadata)),
                },
            ));
        }
        // The outcome is recorded before the acknowledge deletes it (PhotoKit's step 5), a
        // page of assets per commit.
        let by_asset: Vec<(String, Vec<(String, Stored)>)> = by_asset.into_iter().collect();
        for page in by_asset.chunks(MAX_PAGE_ITEMS as usize) {
            let keys: Vec<String> = page.iter().map(|(asset, _)| asset_key(asset)).collect();
            let current = host.kv_get_many(&keys)?;
            let mut writes = Vec::with_capacity(page.len());
            for ((key, value), (_, stored)) in keys.into_iter().zip(current).zip(page) {
                let mut record = parse_record(&key, value)?;
                record.extend(stored.iter().cloned());
                let json = to_kv(&key, &record)?;
                writes.push((key, Some(json)));
            }
            host.kv_set_many(&writes)?;
        }
        let items: Vec<TxItem> = jobs
            .iter()
            .map(|j| TxItem::Acknowledge { job: j.id })
            .collect();
        for chunk in items.chunks(MAX_PAGE_ITEMS as usize) {
            match host.transaction(chunk.to_vec()) {
                Ok(_) => report.acknowledged += chunk.len() as u32,
                Err(e) if e.rejection_reason().is_some() => {
                    eprintln!("ferry-backup: acknowledge skipped: {e}");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Step 3: create jobs for new resources until caught up or out of slots.
    fn create(&self, host: &mut Host, report: &mut Report) -> Result<Outcome, StepError> {
        let Some(ready) = self.ready() else {
            return Ok(Outcome::Done);
        };
        // Resources that already have a job in flight or waiting to be acknowledged: a call
        // cut short after its transaction but before saving the cursor must not duplicate.
        let mut live: HashSet<(String, ContentHash)> = HashSet::new();
        for action in [Action::Process, Action::Acknowledge] {
            for j in host.fetch_all(action)? {
                live.insert((j.resource_id, j.content_hash));
            }
        }
        let limit = host.limit()?;
        let job_limit = limit.job_limit;
        let mut available = limit.available;
        loop {
            if host.will_terminate_received() {
                return Ok(Outcome::More);
            }
            if available == 0 {
                return Ok(Outcome::More);
            }
            let cursor = match kv_json::<Cursor>(host, KV_CURSOR)? {
                Some(c) => c,
                None => match host.kv_get(KV_TOKEN)? {
                    Some(since) => {
                        let token = host.current_token()?;
                        if token == since {
                            return Ok(Outcome::Done);
                        }
                        Cursor::Changes {
                            since,
                            until: token,
                            offset: 0,
                        }
                    }
                    None => Cursor::Resync {
                        until: host.current_token()?,
                        after: None,
                    },
                },
            };
            let next = match cursor {
                Cursor::Changes {
                    since,
                    until,
                    offset,
                } => {
                    let page = match host.changes(&ChangesParams {
                        since: since.clone(),
                        until: Some(until.clone()),
                        offset,
                        limit: Some(PAGE_ASSETS),
                    }) {
                        Ok(p) => p,
                        Err(e) if e.code() == Some(ErrorCode::ChangeTokenExpired) => {
                            eprintln!("ferry-backup: change history expired; full pass");
                            let until = host.current_token()?;
                            kv_put(host, KV_CURSOR, &Cursor::Resync { until, after: None })?;
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    let mut entries: Vec<Option<AssetView>> = Vec::new();
                    let mut wanted = Vec::new();
                    for c in &page.changes {
                        if c.kind == ChangeKind::Deleted {
                            // The server keeps its objects; our record of them goes.
                            host.kv_set(&asset_key(&c.asset_id), None)?;
                        } else {
                            wanted.push(c.asset_id.clone());
                        }
                    }
                    let mut views: BTreeMap<String, AssetView> = host
                        .assets(&wanted)?
                        .assets
                        .into_iter()
                        .map(|a| (a.id.clone(), a))
                        .collect();
                    for c in &page.changes {
                        entries.push(views.remove(&c.asset_id));
                    }
                    let consumed = self.handle(
                        host,
                        ready,
                        &entries,
                        &mut live,
                        &mut available,
                        job_limit,
                        report,
                    )?;
                    let offset = offset + consumed as u64;
                    if consumed == entries.len() && page.next_offset.is_none() {
                        host.kv_set(KV_TOKEN, Some(&page.until))?;
                        host.kv_set(KV_CURSOR, None)?;
                        None
                    } else {
                        let c = Cursor::Changes {
                            since,
                            until: page.until,
                            offset,
                        };
                        Some((c, consumed < entries.len()))
                    }
                }
                Cursor::Resync { until, after } => {
                    let page = host.list_assets(after.as_deref(), Some(PAGE_ASSETS))?;
                    let ids: Vec<String> = page.assets.iter().map(|a| a.id.clone()).collect();
                    let entries: Vec<Option<AssetView>> =
                        page.assets.into_iter().map(Some).collect();
                    let consumed = self.handle(
                        host,
                        ready,
                        &entries,
                        &mut live,
                        &mut available,
                        job_limit,
                        report,
                    )?;
                    if consumed == entries.len() && page.next_after.is_none() {
                        host.kv_set(KV_TOKEN, Some(&until))?;
                        host.kv_set(KV_CURSOR, None)?;
                        None
                    } else {
                        let stopped = consumed < entries.len();
                        let after = match consumed {
                            0 => after,
                            n => ids.get(n - 1).cloned(),
                        };
                        Some((Cursor::Resync { until, after }, stopped))
                    }
                }
            };
            match next {
                Some((c, stopped)) => {
                    kv_put(host, KV_CURSOR, &c)?;
                    // Stopped inside the page: out of slots or told to stop.
                    if stopped {
                        return Ok(Outcome::More);
                    }
                }
                // Caught up to the pass's end; changes since then are the next pass.
                None => continue,
            }
        }
    }

    /// Handles a page of assets in order (`None`: nothing to do for that entry); returns how
    /// many entries are done. Stops at the first asset whose resources do not all fit in the
    /// slots left, so an asset's resources are created together. The page costs a handful of
    /// host calls, not a few per asset: its records are read in one `kv.get_many`, its jobs
    /// created in one transaction, what the server already holds recorded in one
    /// `kv.set_many` (each commit is an fsync; one per asset would cap the backup at the
    /// disk's fsync rate); likewise two server requests, the check and the receipts of the
    /// copies it already holds (one commit on the server).
    #[allow(clippy::too_many_arguments)]
    fn handle(
        &self,
        host: &mut Host,
        ready: &Ready,
        entries: &[Option<AssetView>],
        live: &mut HashSet<(String, ContentHash)>,
        available: &mut u32,
        job_limit: u32,
        report: &mut Report,
    ) -> Result<usize, StepError> {
        // What each asset still needs: resources neither stored nor in flight (`need`), and
        // stored ones whose current place has no receipt yet (`moved`: renamed, or recorded
        // before receipts existed).
        let keys: Vec<String> = entries.iter().flatten().map(|a| asset_key(&a.id)).collect();
        let mut stored_records = keys
            .iter()
            .zip(host.kv_get_many(&keys)?)
            .map(|(k, v)| parse_record(k, v))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter();
        let mut needs: Vec<Vec<&ResourceView>> = Vec::new();
        let mut moves: Vec<Vec<&ResourceView>> = Vec::new();
        let mut records: Vec<AssetRecord> = Vec::new();
        for entry in entries {
            let mut need = Vec::new();
            let mut moved = Vec::new();
            let Some(asset) = entry else {
                needs.push(need);
                moves.push(moved);
                records.push(AssetRecord::new());
                continue;
            };
            let record = stored_records.next().unwrap_or_default();
            for r in &asset.resources {
                if live.contains(&(r.id.clone(), r.content_hash)) {
                    continue;
                }
                match record.get(&r.id) {
                    Some(s) if s.hash == r.content_hash => {
                        let here = location_key(&resource_metadata(asset, r));
                        if s.receipt_at.as_deref() != Some(here.as_str()) {
                            moved.push(r);
                        }
                    }
                    _ => need.push(r),
                }
            }
            needs.push(need);
            moves.push(moved);
            records.push(record);
        }
        let hashes: Vec<ContentHash> = needs
            .iter()
            .flatten()
            .map(|r| r.content_hash)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut on_server = if hashes.is_empty() {
            HashSet::new()
        } else {
            ready.client.stored(&hashes)?
        };
        // Receipts for every copy the server already holds the bytes of, in one request for
        // the page, before anything is recorded: a failure leaves the page to be done again by
        // a later call (the cursor has not moved), and the server answers a receipt sent twice
        // with the one it has.
        let mut wanted = Vec::new();
        for ((entry, need), (moved, record)) in
            entries.iter().zip(&needs).zip(moves.iter().zip(&records))
        {
            let Some(asset) = entry else { continue };
            for r in need.iter().filter(|r| on_server.contains(&r.content_hash)) {
                wanted.push(NewReceipt {
                    object_id: r.content_hash.to_hex(),
                    metadata: resource_metadata(asset, r),
                });
            }
            for r in moved {
                let object_id = record
                    .get(&r.id)
                    .map(|s| s.object_id.clone())
                    .unwrap_or_else(|| r.content_hash.to_hex());
                wanted.push(NewReceipt {
                    object_id,
                    metadata: resource_metadata(asset, r),
                });
            }
        }
        let receipted = if wanted.is_empty() {
            true
        } else {
            match ready.client.add_receipts(&wanted)? {
                Receipts::Recorded { missing } => {
                    // Bytes the server turned out not to hold (it lost them, or another server
                    // answers at the URL now): uploaded like new ones.
                    if !missing.is_empty() {
                        on_server.retain(|h| !missing.contains(&h.to_hex()));
                        for ((need, moved), record) in
                            needs.iter_mut().zip(moves.iter_mut()).zip(&records)
                        {
                            let (gone, kept): (Vec<&ResourceView>, Vec<&ResourceView>) =
                                moved.iter().partition(|r| {
                                    record
                                        .get(&r.id)
                                        .is_some_and(|s| missing.contains(&s.object_id))
                                });
                            need.extend(gone);
                            *moved = kept;
                        }
                    }
                    true
                }
                Receipts::Unsupported => {
                    // An older ferry-server: the bytes are safe, only this copy's path is not
                    // recorded. The record says so (`receipt_at` unset), so the asset's next
                    // handling tries again; stalling every backup on it would be worse.
                    eprintln!(
                        "ferry-backup: the server cannot record receipts (POST /v1/objects/receipts); {} copies of stored bytes are not recorded at their paths until it is updated",
                        wanted.len()
                    );
                    false
                }
            }
        };
        let mut batch = PageBatch::default();
        for (i, ((entry, need), moved)) in entries.iter().zip(&needs).zip(&moves).enumerate() {
            if host.will_terminate_received() {
                return batch.commit(host, live, available, report, i);
            }
            let Some(asset) = entry else { continue };
            if need.is_empty() && moved.is_empty() {
                continue;
            }
            let (known, mut upload): (Vec<&ResourceView>, Vec<&ResourceView>) = need
                .iter()
                .copied()
                .partition(|r| on_server.contains(&r.content_hash));
            let slots = available.saturating_sub(batch.creates.len() as u32);
            if upload.len() as u32 > slots {
                // An asset larger than the whole limit can never fit: it goes in pieces,
                // the rest on later calls (its created jobs are then live and skipped).
                if upload.len() as u32 > job_limit && slots == job_limit {
                    upload.truncate(slots as usize);
                } else {
                    return batch.commit(host, live, available, report, i);
                }
            }
            // One transaction carries at most a page of items: flush before this asset
            // would overflow it (an asset's resources stay in one transaction).
            if batch.creates.len() + upload.len() > MAX_PAGE_ITEMS as usize {
                let done = batch.commit(host, live, available, report, i)?;
                if done < i {
                    return Ok(done);
                }
                batch = PageBatch {
                    first: i,
                    ..PageBatch::default()
                };
            }
            let whole = upload.len() == need.len() - known.len();
            for r in &upload {
                batch
                    .creates
                    .push(TxItem::Create(self.new_job(ready, asset, r)));
                batch.created.push((r.id.clone(), r.content_hash));
            }
            if !known.is_empty() || (receipted && !moved.is_empty()) {
                let mut record = records[i].clone();
                for r in &known {
                    record.insert(
                        r.id.clone(),
                        Stored {
                            hash: r.content_hash,
                            object_id: r.content_hash.to_hex(),
                            receipt_at: receipted
                                .then(|| location_key(&resource_metadata(asset, r))),
                        },
                    );
                }
                if receipted {
                    for r in moved {
                        if let Some(s) = record.get_mut(&r.id) {
                            s.receipt_at = Some(location_key(&resource_metadata(asset, r)));
                        }
                    }
                    batch.receipts += (known.len() + moved.len()) as u32;
                }
                let key = asset_key(&asset.id);
                let value = to_kv(&key, &record)?;
                batch.records.push((key, Some(value)));
                batch.known += known.len() as u32;
            }
            if !whole {
                return batch.commit(host, live, available, report, i);
            }
        }
        batch.commit(host, live, available, report, entries.len())
    }

    fn new_job(&self, ready: &Ready, asset: &AssetView, r: &ResourceView) -> NewJob {
        NewJob {
            id: Uuid::now_v7(),
            resource_id: r.id.clone(),
            content_hash: r.content_hash,
            destination: ready.destination.clone(),
            metadata: resource_metadata(asset, r),
        }
    }

    fn run_call(&self, host: &mut Host, report: &mut Report) -> Result<Outcome, StepError> {
        self.retry(host, report)?;
        if host.will_terminate_received() {
            return Ok(Outcome::More);
        }
        self.acknowledge(host, report)?;
        if host.will_terminate_received() {
            return Ok(Outcome::More);
        }
        self.create(host, report)
    }
}

impl Extension for Backup {
    fn initialize(&mut self, params: &InitializeParams) -> Result<(), String> {
        let setup = || -> Result<Ready, ConfigError> {
            let config = Config::from_json(&params.config)?;
            let token = config.token()?;
            let destination = Destination::new(Method::Post, config.upload_url())
                .header("authorization", format!("Bearer {token}"))
                .validate(&params.destination_bases)?;
            let client = ServerClient::new(&config.server_url, &token, &config.trust()?)?;
            Ok(Ready {
                client,
                destination,
            })
        };
        self.ready = Some(setup().map_err(|e| e.to_string())?);
        Ok(())
    }

    fn process_jobs(&mut self, host: &mut Host, _params: &ProcessJobsParams) -> ProcessJobsResult {
        let mut report = Report::default();
        let status = match self.run_call(host, &mut report) {
            Ok(Outcome::Done) => ProcessStatus::Completed,
            // Out of slots with nothing done: the host calls again when jobs finish.
            Ok(Outcome::More) if !report.progress() && !host.will_terminate_received() => {
                ProcessStatus::Completed
            }
            Ok(Outcome::More) => ProcessStatus::Processing,
            Err(e) => {
                report.error = Some(e.to_string());
                eprintln!("ferry-backup: {e}");
                match &e {
                    StepError::Host(h) => match h.class() {
                        ErrorClass::Transient | ErrorClass::Terminated => ProcessStatus::Processing,
                        ErrorClass::Permanent => ProcessStatus::Failure,
                    },
                    // The server is down or refuses us: back off.
                    StepError::Server(_) | StepError::Kv { .. } => ProcessStatus::Failure,
                }
            }
        };
        ProcessJobsResult {
            status,
            message: serde_json::to_string(&report).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_needs_exactly_one_token_source() {
        let c =
            Config::from_json(&serde_json::json!({"server_url": "http://127.0.0.1:1"})).unwrap();
        assert!(matches!(c.token(), Err(ConfigError::Token)));
        let c = Config::from_json(&serde_json::json!({
            "server_url": "http://127.0.0.1:1/", "token": " t \n"
        }))
        .unwrap();
        assert_eq!(c.token().unwrap(), "t");
        assert_eq!(c.upload_url(), "http://127.0.0.1:1/v1/uploads");
        assert!(Config::from_json(&serde_json::json!({"server": "x"})).is_err());
    }

    #[test]
    fn config_trust_keys() {
        let base = serde_json::json!({"server_url": "https://127.0.0.1:1", "token": "t"});
        let with = |k: &str, v: &str| {
            let mut c = base.clone();
            c[k] = serde_json::Value::String(v.into());
            Config::from_json(&c).unwrap()
        };
        assert!(
            Config::from_json(&base)
                .unwrap()
                .trust()
                .unwrap()
                .is_default()
        );
        let fp = "ab".repeat(32);
        let t = with("cert_sha256", &fp).trust().unwrap();
        assert_eq!(t.cert_sha256.map(|f| f.0), Some([0xab; 32]));
        let t = with("ca_file", "/etc/ca.pem").trust().unwrap();
        assert_eq!(
            t.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        let e = with("cert_sha256", "AB:CD").trust().unwrap_err();
        assert!(e.to_string().contains("cert_sha256"), "{e}");
        let mut both = with("cert_sha256", &fp);
        both.ca_file = Some("/etc/ca.pem".into());
        assert!(matches!(both.trust(), Err(ConfigError::TrustBoth)));
    }

    #[test]
    fn only_passing_errors_are_retried() {
        assert!(retryable(Some(&JobErrorCode::NetworkLost)));
        assert!(retryable(Some(&JobErrorCode::ServerError)));
        assert!(!retryable(Some(&JobErrorCode::ClientError)));
        assert!(!retryable(Some(&JobErrorCode::ResourceChanged)));
        assert!(!retryable(Some(&JobErrorCode::Other("x".into()))));
    }

    #[test]
    fn location_keys_tell_places_apart_and_never_change() {
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let a = location_key(&m(&[
            ("library", "Pictures"),
            ("path", "Trips/a.jpg"),
            ("modified_ms", "1"),
        ]));
        let touched = location_key(&m(&[
            ("library", "Pictures"),
            ("path", "Trips/a.jpg"),
            ("modified_ms", "2"),
            ("asset_id", "x"),
        ]));
        assert_eq!(a, touched, "only the library and the path count");
        let moved = m(&[("library", "Pictures"), ("path", "Best/a.jpg")]);
        assert_ne!(a, location_key(&moved));
        assert_ne!(
            location_key(&m(&[("library", "ab"), ("path", "")])),
            location_key(&m(&[("library", "a"), ("path", "b")]))
        );
        assert_ne!(location_key(&m(&[("path", "")])), location_key(&m(&[])));
        // Kept in kv records: every version must compute the same keys.
        assert_eq!(location_key(&m(&[])), "d6b3707bf4b856ed");
        assert_eq!(a, "a192001bffc74d21");
    }

    #[test]
    fn metadata_values_lose_control_characters() {
        assert_eq!(clean("a\nb\u{7f}c", 10), "a?b?c");
        assert_eq!(clean("abcdef", 3), "abc");
    }
}
