//! `ferry restore DIR`: get the photos back. Lists every object the caller stored on a
//! ferry-server (`GET /v1/objects`), works out from the receipts' metadata where each one
//! lived (`path` relative to its library root; objects backed up before paths were sent go
//! to `_unsorted/`), and writes one file per (object, distinct path) into DIR — each
//! downloaded into a temp file beside its final name, verified against its BLAKE3 (the object
//! id), given its modification time, made durable, and only then linked into place.
//!
//! The steps, in order:
//! 1. [`Lister`]: page through `GET /v1/objects?after=CURSOR&limit=1000`.
//! 2. [`plan`]: receipts → [`Wanted`] files, paths sanitised ([`sanitise_rel`]) so nothing can
//!    be written outside DIR, filters applied ([`Filter`]).
//! 3. `resolve`: per final path, newest receipt first: a free name is claimed, an identical
//!    file (same BLAKE3, remembered in the [`Journal`] by its stat stamp) is skipped, a
//!    different file is kept and the restored one goes beside it (`IMG_0001 (restored).JPG`).
//! 4. Downloads, a few at once (one per object: the same bytes under two paths are fetched
//!    once and copied locally), resumed from a partial temp file with `Range`, refetched when
//!    the BLAKE3 does not match (bounded attempts).
//! 5. Durability in batches ([`FsSync`]): verified temp files are handed to one task that
//!    gathers up to [`BATCH_FILES`] files / [`BATCH_BYTES`] bytes / [`BATCH_WAIT`], makes them
//!    all durable with one `syncfs(2)` of DIR's filesystem, and only then links each into
//!    place (one fsync per file was the largest single cost of a restore to a local disk;
//!    one `syncfs` writes the batch out in one pass). Where `syncfs` cannot be
//!    trusted to report a failed write (not Linux, Linux before 5.8, a filesystem other than
//!    ext4, XFS, Btrfs, F2FS or tmpfs), where it fails, and for a file on another filesystem
//!    (a mount inside DIR), each file is fsynced on its own.
//!    A `kill -9` or power cut before the links leaves temp files, never names: the next run
//!    places the whole ones without downloading them (their BLAKE3 matches) and fetches the
//!    rest again.
//!
//! **Invariant**: nothing is ever written under a final name that has not been verified
//! against its BLAKE3 and made durable (its own fsync, or a successful `syncfs` that began
//! after its last write); an existing file is never replaced (`link(2)` refuses an existing
//! name); every path joined to DIR is relative, free of `..`, empty components and NUL, and no
//! folder on the way is a symbolic link.
//!
//! `--since` compares with the receipt's `received_ms` (when the server received the upload:
//! exact and always present), not the capture time (the camera's local clock without a zone,
//! missing for many files).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read as _, Write as _};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_core::path_text;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::backup::Target;
use crate::server::{Embedded, ServerError};

/// The folder in DIR holding the restore's journal.
pub const JOURNAL_DIR: &str = ".ferry-restore";
/// Where objects without a `path` in any receipt go (backed up before paths were sent).
pub const UNSORTED: &str = "_unsorted";
/// Most objects asked for in one listing page (the server's own bound).
pub const PAGE_LIMIT: usize = 1000;
/// A listing page larger than this is not the protocol's.
const MAX_PAGE_BYTES: usize = 64 << 20;
/// Bytes gathered before one write (and hash update) on a blocking thread; also the most a
/// `kill -9` can lose of one download in flight (what arrived but was not yet written). A
/// typical photo fits in one: one hand-over to a blocking thread per file, not several.
const WRITE_BLOCK: usize = 1 << 20;
/// What arrived is written at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Most verified files made durable by one `syncfs(2)` (and then linked) together.
const BATCH_FILES: usize = 64;
/// Most bytes of verified files waiting for one `syncfs(2)`: bounds how long one sync takes.
const BATCH_BYTES: u64 = 32 << 20;
/// Longest a verified file waits for others to share its `syncfs(2)` (a slow link, the tail).
const BATCH_WAIT: Duration = Duration::from_millis(100);
/// Candidates tried for a free name beside a taken one.
const MAX_BESIDE: u32 = 1000;
const TEMP_PREFIX: &str = ".ferry-restore-";
const TEMP_SUFFIX: &str = ".part";

/// What to restore, from where, into where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The folder to restore into (created if missing).
    pub dir: PathBuf,
    /// Ferry's state folder: where the built-in server stores (for [`Target::Embedded`]).
    pub state_dir: PathBuf,
    pub source: Target,
    pub filter: Filter,
    /// Downloads at once.
    pub concurrency: usize,
    /// Attempts per object before it is reported failed (a damaged or cut download is
    /// fetched again; a cut one resumes where it stopped).
    pub attempts: u32,
}

/// Which files to restore; empty fields select everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only files whose newest receipt for their path was received at or after this time
    /// (ms since the epoch; see [`parse_since`]).
    pub since_ms: Option<i64>,
    /// Only files under one of these library-relative folders (component-wise prefixes).
    pub folders: Vec<PathBuf>,
    /// Only files of one of these assets (`asset_id` in the receipt).
    pub assets: Vec<String>,
}

/// What the caller does next about a [`RestoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Fix the command line or the folder (a usage error).
    FixInput,
    /// Give a token the server accepts.
    FixToken,
    /// The server is unreachable, answered nonsense or presented an untrusted certificate:
    /// check it (or the trust options) and run again.
    CheckServer,
    /// The disk is full: free space and run again (it resumes).
    FreeSpace,
    /// Another restore writes into the same folder: wait for it.
    AlreadyRunning,
    /// Something else failed; the message says what.
    Report,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The server has no listing API (an older ferry-server).
    #[error(
        "the server at {url} cannot list what it holds (it has no GET /v1/objects): it is older than this Ferry; update ferry-server"
    )]
    NoListing { url: String },
    /// No `--from` and no built-in server in the state folder.
    #[error(
        "nothing was backed up to a built-in server in {}: restore from your server with --from URL --token T",
        path_text::display(.state_dir)
    )]
    NoBuiltInServer { state_dir: PathBuf },
    #[error("--since {text:?}: {detail}")]
    BadSince { text: String, detail: String },
    #[error("--folder {}: {detail}", path_text::display(.folder))]
    BadFolder { folder: PathBuf, detail: String },
    /// DIR cannot be created or written.
    #[error("cannot restore into {}: {source}", path_text::display(.dir))]
    Dir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// ENOSPC / EDQUOT while writing: the run stops; what was placed stays, partial temp
    /// files stay to be resumed, nothing half-written is under a final name.
    #[error(
        "the disk holding {} is full ({source}): {restored} files restored so far, nothing half-written under a final name; free some space and run the same command again (it resumes)",
        path_text::display(.dir)
    )]
    DiskFull {
        dir: PathBuf,
        restored: u64,
        #[source]
        source: io::Error,
    },
    /// Another `ferry restore` holds DIR's lock.
    #[error(
        "another ferry restore is writing into {}: wait for it to finish",
        path_text::display(.dir)
    )]
    AlreadyRunning { dir: PathBuf },
    #[error("internal: {0}")]
    Internal(String),
}

impl RestoreError {
    pub fn next_step(&self) -> NextStep {
        match self {
            RestoreError::Server(ServerError::Unauthorized { .. }) => NextStep::FixToken,
            RestoreError::Server(
                ServerError::Unreachable { .. }
                | ServerError::BadResponse { .. }
                | ServerError::Certificate { .. },
            )
            | RestoreError::NoListing { .. } => NextStep::CheckServer,
            RestoreError::Server(ServerError::BadUrl(..) | ServerError::Trust { .. })
            | RestoreError::NoBuiltInServer { .. }
            | RestoreError::BadSince { .. }
            | RestoreError::BadFolder { .. }
            | RestoreError::Dir { .. } => NextStep::FixInput,
            RestoreError::DiskFull { .. } => NextStep::FreeSpace,
            RestoreError::AlreadyRunning { .. } => NextStep::AlreadyRunning,
            RestoreError::Server(ServerError::Embedded { .. }) | RestoreError::Internal(_) => {
                NextStep::Report
            }
        }
    }
}

/// Why one file could not be restored (the run goes on with the others).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum FileFailure {
    /// Every attempt's bytes hashed to something else than the object id.
    #[error("the downloaded bytes did not match the BLAKE3 {attempts} times")]
    Corrupt { attempts: u32 },
    /// Cut connections, server errors: retried, resumed, then given up.
    #[error("download failed {attempts} times; last: {detail}")]
    Download { attempts: u32, detail: String },
    /// Listed, but the server no longer holds it (404).
    #[error("the server no longer holds it")]
    Gone,
    /// A file (or a symbolic link) sits where a folder of its path should be.
    #[error("{detail}")]
    InTheWay { detail: String },
    /// The listing named an object that is not a BLAKE3 hex id.
    #[error("the server listed a malformed object id")]
    BadId,
    #[error("cannot write: {detail}")]
    Io { detail: String },
}

/// The listing's shapes (`GET /v1/objects`). Unknown fields are ignored; metadata values
/// that are not strings are dropped.
#[derive(Debug, Clone, Deserialize)]
pub struct ListedObject {
    pub id: String,
    pub size_bytes: u64,
    #[serde(default)]
    pub receipts: Vec<ListedReceipt>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ListedReceipt {
    #[serde(default)]
    pub upload_id: String,
    #[serde(default)]
    pub received_ms: i64,
    #[serde(default, deserialize_with = "strings_only")]
    pub metadata: BTreeMap<String, String>,
}

/// The listing carries at most this many receipts per object (the newest); an object with
/// that many is asked for all of its own (`GET /v1/objects/{id}/receipts`).
const LISTED_RECEIPTS: usize = 100;

#[derive(Debug, Deserialize)]
struct Receipts {
    #[serde(default)]
    receipts: Vec<ListedReceipt>,
}

#[derive(Debug, Deserialize)]
struct Page {
    #[serde(default)]
    objects: Vec<ListedObject>,
    #[serde(default)]
    next_after: Option<String>,
}

fn strings_only<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Text(String),
        Other(serde::de::IgnoredAny),
    }
    let m = Option::<BTreeMap<String, Value>>::deserialize(d)?.unwrap_or_default();
    Ok(m.into_iter()
        .filter_map(|(k, v)| match v {
            Value::Text(t) => Some((k, t)),
            Value::Other(_) => None,
        })
        .collect())
}

/// `--since`: an RFC 3339 date (`2024-06-01`: that day's start in the local time zone) or
/// datetime (`2024-06-01T10:00:00Z`, `…+02:00`; without an offset: local time), as ms since
/// the epoch.
pub fn parse_since(text: &str) -> Result<i64, RestoreError> {
    let bad = |detail: String| RestoreError::BadSince {
        text: text.to_owned(),
        detail,
    };
    let t = text.trim();
    if let Ok(ts) = t.parse::<jiff::Timestamp>() {
        return Ok(ts.as_millisecond());
    }
    let tz = jiff::tz::TimeZone::system();
    if let Ok(dt) = t.parse::<jiff::civil::DateTime>()
        && t.contains(['T', 't', ' '])
    {
        return dt
            .to_zoned(tz)
            .map(|z| z.timestamp().as_millisecond())
            .map_err(|e| bad(e.to_string()));
    }
    match t.parse::<jiff::civil::Date>() {
        Ok(d) => d
            .to_zoned(tz)
            .map(|z| z.timestamp().as_millisecond())
            .map_err(|e| bad(e.to_string())),
        Err(_) => Err(bad(
            "not an RFC 3339 date or datetime (2024-06-01, 2024-06-01T10:00:00Z)".into(),
        )),
    }
}

/// A path from receipt metadata (escaped as [`path_text::display`] shows it) made safe to
/// join to DIR: relative, no `.`/`..`/empty components, no NUL, each component at most 255
/// bytes, and not DIR's own journal folder. `None`: nothing usable is left. The flag says
/// whether anything had to change.
pub fn sanitise_rel(text: &str) -> Option<(PathBuf, bool)> {
    let (bytes, unescaped) = match path_text::unescape(text) {
        Ok(b) => (b, true),
        // Not the escaped form: take the text as it is.
        Err(_) => (text.as_bytes().to_vec(), false),
    };
    let mut out: Vec<Vec<u8>> = Vec::new();
    for comp in bytes.split(|b| *b == b'/') {
        match comp {
            b"" | b"." | b".." => {}
            c => {
                let (name, _) = safe_component(c);
                if out.is_empty() && name == JOURNAL_DIR.as_bytes() {
                    out.push(b"_ferry-restore".to_vec());
                } else {
                    out.push(name);
                }
            }
        }
    }
    if out.is_empty() {
        return None;
    }
    let joined = out.join(&b'/');
    // A trailing slash alone is not worth a flag; anything else that changed is.
    let changed = !unescaped || joined.as_slice() != bytes.strip_suffix(b"/").unwrap_or(&bytes);
    Some((PathBuf::from(OsString::from_vec(joined)), changed))
}

/// One name component: NUL → `_`, at most 255 bytes (the extension kept when it can be).
fn safe_component(c: &[u8]) -> (Vec<u8>, bool) {
    let mut changed = false;
    let mut name: Vec<u8> = c
        .iter()
        .map(|b| {
            if *b == 0 {
                changed = true;
                b'_'
            } else {
                *b
            }
        })
        .collect();
    if name.len() > 255 {
        changed = true;
        let ext = name
            .iter()
            .rposition(|b| *b == b'.')
            .filter(|p| *p > 0 && name.len() - p <= 16)
            .map(|p| name[p..].to_vec())
            .unwrap_or_default();
        name.truncate(255 - ext.len());
        name.extend_from_slice(&ext);
    }
    (name, changed)
}

/// A single name (a `file_name` or `library` from metadata): `/` and NUL → `_`; `.`, `..`
/// and empty are unusable.
pub fn sanitise_name(text: &str) -> Option<OsString> {
    let bytes = path_text::unescape(text).unwrap_or_else(|_| text.as_bytes().to_vec());
    let replaced: Vec<u8> = bytes
        .iter()
        .map(|b| if *b == b'/' { b'_' } else { *b })
        .collect();
    let (name, _) = safe_component(&replaced);
    match name.as_slice() {
        b"" | b"." | b".." => None,
        _ => Some(OsString::from_vec(name)),
    }
}

/// The `n`th name beside `name` (n ≥ 1): `IMG_0001 (restored).JPG`, then `(restored 2)`, …
pub fn beside_name(name: &OsStr, n: u32) -> OsString {
    let b = name.as_bytes();
    let (stem, ext) = match b.iter().rposition(|c| *c == b'.') {
        Some(p) if p > 0 => (&b[..p], &b[p..]),
        _ => (b, &b[b.len()..]),
    };
    let tag = if n == 1 {
        " (restored)".to_owned()
    } else {
        format!(" (restored {n})")
    };
    let room = 255usize.saturating_sub(tag.len() + ext.len());
    let mut out = stem[..stem.len().min(room)].to_vec();
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(ext);
    OsString::from_vec(out)
}

/// One file to restore: an object under one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub id: String,
    pub size: u64,
    /// Relative to DIR, sanitised.
    pub rel: PathBuf,
    /// The path as the metadata gave it, when sanitising changed it.
    pub sanitised_from: Option<String>,
    pub modified_ms: Option<i64>,
    /// The newest receipt's time for this path.
    pub received_ms: i64,
}

/// What the listing asks for, after the filter.
#[derive(Debug, Default)]
pub struct Plan {
    pub wanted: Vec<Wanted>,
    /// Objects with malformed ids: never fetched.
    pub bad_ids: Vec<String>,
}

/// Receipts → files. With receipts from more than one library (`library`), each library's
/// tree goes into its own folder `DIR/<library>/`; with one, straight into DIR.
pub fn plan(objects: &[ListedObject], filter: &Filter) -> Plan {
    let libraries: BTreeSet<&str> = objects
        .iter()
        .flat_map(|o| &o.receipts)
        .filter(|r| r.metadata.contains_key("path"))
        .filter_map(|r| r.metadata.get("library").map(String::as_str))
        .collect();
    let per_library = libraries.len() > 1;
    let folders: Vec<PathBuf> = filter
        .folders
        .iter()
        .filter_map(|f| {
            sanitise_rel(&path_text::escape_bytes(f.as_os_str().as_bytes())).map(|x| x.0)
        })
        .collect();
    let mut out = Plan::default();
    let mut seen = HashSet::new();
    for o in objects {
        if !valid_id(&o.id) {
            out.bad_ids.push(o.id.chars().take(80).collect());
            continue;
        }
        let id = o.id.to_ascii_lowercase();
        struct At<'a> {
            received_ms: i64,
            newest: &'a ListedReceipt,
            assets: BTreeSet<&'a str>,
        }
        let mut by_path: BTreeMap<&str, At> = BTreeMap::new();
        for r in &o.receipts {
            let Some(p) = r.metadata.get("path") else {
                continue;
            };
            let at = by_path.entry(p.as_str()).or_insert(At {
                received_ms: r.received_ms,
                newest: r,
                assets: BTreeSet::new(),
            });
            if r.received_ms > at.received_ms {
                at.received_ms = r.received_ms;
                at.newest = r;
            }
            if let Some(a) = r.metadata.get("asset_id") {
                at.assets.insert(a);
            }
        }
        let mut files: Vec<(PathBuf, Option<PathBuf>, Option<String>, &At)> = Vec::new();
        let fallback;
        if by_path.is_empty() {
            let newest = o.receipts.iter().max_by_key(|r| r.received_ms);
            let name = newest
                .and_then(|r| r.metadata.get("file_name"))
                .and_then(|n| sanitise_name(n))
                .unwrap_or_else(|| OsString::from(&id));
            fallback = At {
                received_ms: newest.map(|r| r.received_ms).unwrap_or(0),
                newest: newest.unwrap_or(&EMPTY_RECEIPT),
                assets: o
                    .receipts
                    .iter()
                    .filter_map(|r| r.metadata.get("asset_id").map(String::as_str))
                    .collect(),
            };
            files.push((Path::new(UNSORTED).join(name), None, None, &fallback));
        } else {
            for (text, at) in &by_path {
                let (rel, changed) = match sanitise_rel(text) {
                    Some(x) => x,
                    None => (
                        Path::new(UNSORTED).join(
                            at.newest
                                .metadata
                                .get("file_name")
                                .and_then(|n| sanitise_name(n))
                                .unwrap_or_else(|| OsString::from(&id)),
                        ),
                        true,
                    ),
                };
                let in_library = rel.clone();
                let rel = match (per_library, at.newest.metadata.get("library")) {
                    (true, Some(l)) => match sanitise_name(l) {
                        Some(l) => Path::new(&l).join(rel),
                        None => rel,
                    },
                    _ => rel,
                };
                files.push((
                    rel,
                    Some(in_library),
                    changed.then(|| (*text).to_owned()),
                    at,
                ));
            }
        }
        for (rel, in_library, sanitised_from, at) in files {
            if let Some(since) = filter.since_ms
                && at.received_ms < since
            {
                continue;
            }
            if !filter.assets.is_empty() && !filter.assets.iter().any(|a| at.assets.contains(&**a))
            {
                continue;
            }
            if !folders.is_empty()
                && !folders.iter().any(|f| {
                    rel.starts_with(f) || in_library.as_ref().is_some_and(|l| l.starts_with(f))
                })
            {
                continue;
            }
            if !seen.insert((id.clone(), rel.clone())) {
                continue;
            }
            out.wanted.push(Wanted {
                id: id.clone(),
                size: o.size_bytes,
                rel,
                sanitised_from,
                modified_ms: at
                    .newest
                    .metadata
                    .get("modified_ms")
                    .and_then(|m| m.trim().parse().ok()),
                received_ms: at.received_ms,
            });
        }
    }
    out
}

static EMPTY_RECEIPT: ListedReceipt = ListedReceipt {
    upload_id: String::new(),
    received_ms: 0,
    metadata: BTreeMap::new(),
};

fn valid_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a restore is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Starting,
    Listing,
    Checking,
    Downloading,
    Done,
}

/// Something a person should hear about one file, as it happens.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum FileEvent {
    /// Written beside its name: `path` is where it belonged, `restored_as` where it went.
    Renamed(Renamed),
    Failed(Failed),
    /// The metadata's path was unsafe; the file goes to `path` instead.
    Sanitised {
        original: String,
        #[serde(flatten, with = "path_text::path")]
        path: PathBuf,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Renamed {
    #[serde(flatten, with = "path_text::path")]
    pub path: PathBuf,
    pub restored_as: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failed {
    #[serde(flatten, with = "path_text::path")]
    pub path: PathBuf,
    pub id: String,
    pub reason: FileFailure,
    pub detail: String,
}

/// Live counters of one restore; cheap to read from another thread.
#[derive(Debug, Default)]
pub struct Progress {
    phase: Mutex<Phase>,
    server_url: Mutex<String>,
    events: Mutex<VecDeque<FileEvent>>,
    pub objects_listed: AtomicU64,
    pub files_total: AtomicU64,
    pub files_checked: AtomicU64,
    pub to_download: AtomicU64,
    pub bytes_to_download: AtomicU64,
    pub restored: AtomicU64,
    pub skipped_identical: AtomicU64,
    pub renamed_for_collision: AtomicU64,
    pub failed: AtomicU64,
    pub bytes_restored: AtomicU64,
    pub bytes_downloaded: AtomicU64,
    pub bytes_resumed: AtomicU64,
    pub refetched: AtomicU64,
}

/// A copy of [`Progress`] for one display frame or JSON event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Snapshot {
    pub phase: Phase,
    pub objects_listed: u64,
    pub files_total: u64,
    pub files_checked: u64,
    /// Files to write (after skipping identical ones).
    pub to_download: u64,
    pub bytes_to_download: u64,
    pub restored: u64,
    pub skipped_identical: u64,
    pub renamed_for_collision: u64,
    pub failed: u64,
    pub bytes_restored: u64,
    /// Body bytes received, including bytes fetched again after damage.
    pub bytes_downloaded: u64,
    /// Bytes not fetched again: partial temp files of an earlier run continued with `Range`.
    pub bytes_resumed: u64,
    pub refetched: u64,
}

impl Progress {
    pub fn phase(&self) -> Phase {
        self.phase.lock().map(|p| *p).unwrap_or_default()
    }

    fn set_phase(&self, p: Phase) {
        if let Ok(mut ph) = self.phase.lock() {
            *ph = p;
        }
    }

    /// The server restored from (empty before it is known).
    pub fn server_url(&self) -> String {
        self.server_url
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    fn event(&self, e: FileEvent) {
        if let Ok(mut q) = self.events.lock() {
            q.push_back(e);
        }
    }

    /// The file events since the last call, oldest first.
    pub fn take_events(&self) -> Vec<FileEvent> {
        self.events
            .lock()
            .map(|mut q| q.drain(..).collect())
            .unwrap_or_default()
    }

    pub fn snapshot(&self) -> Snapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            phase: self.phase(),
            objects_listed: g(&self.objects_listed),
            files_total: g(&self.files_total),
            files_checked: g(&self.files_checked),
            to_download: g(&self.to_download),
            bytes_to_download: g(&self.bytes_to_download),
            restored: g(&self.restored),
            skipped_identical: g(&self.skipped_identical),
            renamed_for_collision: g(&self.renamed_for_collision),
            failed: g(&self.failed),
            bytes_restored: g(&self.bytes_restored),
            bytes_downloaded: g(&self.bytes_downloaded),
            bytes_resumed: g(&self.bytes_resumed),
            refetched: g(&self.refetched),
        }
    }
}

/// The result of a restore. `restored`, `skipped_identical`, `renamed_for_collision` and
/// `failed` partition `files`.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreSummary {
    #[serde(flatten, with = "path_text::dir")]
    pub dir: PathBuf,
    pub server_url: String,
    /// Objects the server listed for this token.
    pub objects: u64,
    /// Files selected (one per object and path, after the filters).
    pub files: u64,
    /// Written under their own name.
    pub restored: u64,
    /// Already in DIR with the same BLAKE3: left alone.
    pub skipped_identical: u64,
    /// Written beside their name, which another file holds (listed in `renamed`).
    pub renamed_for_collision: u64,
    /// Not restored (listed in `failures` with the reason).
    pub failed: u64,
    /// Bytes written under final names.
    pub bytes: u64,
    /// Body bytes received (more than `bytes` when downloads were damaged and fetched again).
    pub bytes_downloaded: u64,
    /// Bytes of partial downloads left by an interrupted run, continued rather than fetched
    /// again.
    pub bytes_resumed: u64,
    /// Downloads fetched again after a BLAKE3 mismatch or a cut.
    pub refetched: u64,
    /// Files whose metadata path had to be made safe.
    pub sanitised: u64,
    /// Stopped before the end (Ctrl-C): run again to resume.
    pub interrupted: bool,
    pub elapsed_ms: u64,
    pub renamed: Vec<Renamed>,
    pub failures: Vec<Failed>,
}

impl RestoreSummary {
    /// Every selected file is in DIR.
    pub fn complete(&self) -> bool {
        self.failed == 0 && !self.interrupted
    }
}

/// DIR's memory of files it already hashed: path → (stat stamp, BLAKE3). A file whose
/// stamp still matches is not read again. Append-only JSON lines in
/// `DIR/.ferry-restore/journal`, compacted at the end of each run; losing it costs only
/// hashing again.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    /// Held (`flock`) while this restore runs: a second one into the same folder would share
    /// its temp files.
    _lock: std::fs::File,
    known: Mutex<HashMap<PathBuf, Stamp>>,
    file: Mutex<Option<std::fs::File>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    blake3: String,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
}

#[derive(Serialize, Deserialize)]
struct JournalLine {
    #[serde(flatten, with = "path_text::path")]
    path: PathBuf,
    #[serde(flatten)]
    stamp: Stamp,
}

impl Stamp {
    fn of(m: &std::fs::Metadata, blake3: String) -> Stamp {
        Stamp {
            blake3,
            size: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
            ino: m.ino(),
        }
    }

    fn matches(&self, m: &std::fs::Metadata) -> bool {
        *self == Stamp::of(m, self.blake3.clone())
    }
}

impl Journal {
    /// Opens (creating) the journal of `dir` and takes its lock (`WouldBlock`: another
    /// restore holds it).
    pub fn open(dir: &Path) -> io::Result<Journal> {
        let folder = dir.join(JOURNAL_DIR);
        std::fs::create_dir_all(&folder)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(folder.join("lock"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let path = folder.join("journal");
        let mut known = HashMap::new();
        match std::fs::read(&path) {
            Ok(text) => {
                // A torn last line (power cut) is skipped; so is anything unreadable.
                for line in text.split(|b| *b == b'\n') {
                    if let Ok(l) = serde_json::from_slice::<JournalLine>(line) {
                        known.insert(l.path, l.stamp);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        Ok(Journal {
            path,
            _lock: lock,
            known: Mutex::new(known),
            file: Mutex::new(Some(file)),
        })
    }

    /// The BLAKE3 remembered for `rel`, if its stamp still matches `m`.
    fn known(&self, rel: &Path, m: &std::fs::Metadata) -> Option<String> {
        let k = self.known.lock().ok()?;
        k.get(rel)
            .filter(|s| s.matches(m))
            .map(|s| s.blake3.clone())
    }

    fn record(&self, rel: &Path, m: &std::fs::Metadata, blake3: &str) -> io::Result<()> {
        let stamp = Stamp::of(m, blake3.to_owned());
        let line = JournalLine {
            path: rel.to_owned(),
            stamp: stamp.clone(),
        };
        let mut text = serde_json::to_vec(&line).map_err(io::Error::other)?;
        text.push(b'\n');
        if let Ok(mut k) = self.known.lock() {
            k.insert(rel.to_owned(), stamp);
        }
        // Not fsynced: a lost line costs one hash on the next run, never a wrong answer.
        match self.file.lock() {
            Ok(mut f) => match f.as_mut() {
                Some(f) => f.write_all(&text),
                None => Ok(()),
            },
            Err(_) => Ok(()),
        }
    }

    /// Rewrites the journal with one line per path (temp → fsync → rename).
    fn compact(&self) -> io::Result<()> {
        let known = match self.known.lock() {
            Ok(k) => k.clone(),
            Err(_) => return Ok(()),
        };
        let mut text = Vec::new();
        for (path, stamp) in known {
            serde_json::to_writer(&mut text, &JournalLine { path, stamp })
                .map_err(io::Error::other)?;
            text.push(b'\n');
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        if let Ok(mut f) = self.file.lock() {
            *f = std::fs::OpenOptions::new()
                .append(true)
                .open(&self.path)
                .ok();
        }
        Ok(())
    }
}

fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// The restore's HTTP client (reqwest, shared by every download, as the transfer engine's).
#[derive(Debug, Clone)]
struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// Why one request did not give what was asked.
#[derive(Debug)]
enum Fetch {
    /// Ends the run.
    Fatal(RestoreError),
    /// Connection refused, DNS: the server may be gone.
    Connect(String),
    /// Cut, timed out, 5xx: try again (resuming).
    Transient(String),
}

impl Client {
    fn new(
        base: &str,
        token: &str,
        tls: Option<&ferry_tls::ServerTls>,
    ) -> Result<Client, ServerError> {
        let (base, builder) = crate::server::client_builder(base, tls)?;
        let http = builder
            // A body that stops moving for a minute is cut (and resumed); a large video may
            // take longer than any total timeout.
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ServerError::BadUrl(base.clone(), e.to_string()))?;
        Ok(Client {
            base,
            token: token.to_owned(),
            http,
        })
    }

    fn send_error(&self, e: reqwest::Error) -> Fetch {
        if let Some(p) = ferry_tls::CertificateProblem::find(&e) {
            return Fetch::Fatal(
                ServerError::Certificate {
                    url: self.base.clone(),
                    reason: p.reason,
                    seen_sha256: p.seen_sha256,
                }
                .into(),
            );
        }
        if e.is_connect() {
            Fetch::Connect(error_chain(&e))
        } else {
            Fetch::Transient(error_chain(&e))
        }
    }

    fn unreachable(&self, detail: String) -> RestoreError {
        ServerError::Unreachable {
            url: self.base.clone(),
            detail,
        }
        .into()
    }

    fn bad(&self, detail: String) -> RestoreError {
        ServerError::BadResponse {
            url: self.base.clone(),
            detail,
        }
        .into()
    }

    /// One listing page.
    async fn page(&self, after: Option<&str>) -> Result<Page, RestoreError> {
        let mut url = reqwest::Url::parse(&format!("{}/v1/objects", self.base)).map_err(|e| {
            RestoreError::Server(ServerError::BadUrl(self.base.clone(), e.to_string()))
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(a) = after {
                q.append_pair("after", a);
            }
            q.append_pair("limit", &PAGE_LIMIT.to_string());
        }
        match self.get_json(url, "listing").await? {
            Some(page) => Ok(page),
            None => Err(RestoreError::NoListing {
                url: self.base.clone(),
            }),
        }
    }

    /// Every receipt of one object (oldest first).
    async fn receipts(&self, id: &str) -> Result<Vec<ListedReceipt>, RestoreError> {
        let url = reqwest::Url::parse(&format!("{}/v1/objects/{id}/receipts", self.base)).map_err(
            |e| RestoreError::Server(ServerError::BadUrl(self.base.clone(), e.to_string())),
        )?;
        // Gone since it was listed: its download says so.
        Ok(self
            .get_json::<Receipts>(url, "receipts")
            .await?
            .map(|r| r.receipts)
            .unwrap_or_default())
    }

    /// A JSON answer (`None`: 404/405), retried a few times when the server is briefly
    /// unavailable.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: reqwest::Url,
        what: &str,
    ) -> Result<Option<T>, RestoreError> {
        let mut last = String::new();
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            }
            let res = match self
                .http
                .get(url.clone())
                .bearer_auth(&self.token)
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => match self.send_error(e) {
                    Fetch::Fatal(e) => return Err(e),
                    Fetch::Connect(d) | Fetch::Transient(d) => {
                        last = d;
                        continue;
                    }
                },
            };
            let status = res.status();
            match status.as_u16() {
                200 => {}
                401 => {
                    return Err(ServerError::Unauthorized {
                        url: self.base.clone(),
                    }
                    .into());
                }
                404 | 405 => return Ok(None),
                429 | 500..=599 => {
                    last = format!("{what} answered {status}");
                    continue;
                }
                _ => return Err(self.bad(format!("{what} answered {status}"))),
            }
            let body = match read_capped(res, MAX_PAGE_BYTES).await {
                Ok(b) => b,
                Err(Fetch::Fatal(e)) => return Err(e),
                Err(Fetch::Connect(d) | Fetch::Transient(d)) => {
                    last = d;
                    continue;
                }
            };
            return serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| self.bad(format!("{what} is not the expected JSON: {e}")));
        }
        Err(self.unreachable(last))
    }

    async fn list_all(&self, progress: &Progress) -> Result<Vec<ListedObject>, RestoreError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        let mut cursors = HashSet::new();
        loop {
            let page = self.page(after.as_deref()).await?;
            for mut o in page.objects {
                if o.receipts.len() >= LISTED_RECEIPTS && valid_id(&o.id) {
                    // Only the newest are listed: ask for all of them.
                    let known: HashSet<String> =
                        o.receipts.iter().map(|r| r.upload_id.clone()).collect();
                    let more = self.receipts(&o.id.to_ascii_lowercase()).await?;
                    o.receipts
                        .extend(more.into_iter().filter(|r| !known.contains(&r.upload_id)));
                }
                out.push(o);
            }
            progress
                .objects_listed
                .store(out.len() as u64, Ordering::Relaxed);
            match page.next_after {
                Some(next) => {
                    if !cursors.insert(next.clone()) {
                        return Err(self.bad(format!("the listing repeats its cursor {next:?}")));
                    }
                    after = Some(next);
                }
                None => return Ok(out),
            }
        }
    }
}

async fn read_capped(mut res: reqwest::Response, cap: usize) -> Result<Vec<u8>, Fetch> {
    let mut body = Vec::new();
    loop {
        match res.chunk().await {
            Ok(Some(c)) => {
                if body.len() + c.len() > cap {
                    return Err(Fetch::Transient(format!("answer over {cap} bytes")));
                }
                body.extend_from_slice(&c);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(Fetch::Transient(error_chain(&e))),
        }
    }
}

/// Shared by every task of one run.
#[derive(Debug)]
struct Ctx {
    root: PathBuf,
    client: Client,
    journal: Journal,
    progress: Arc<Progress>,
    attempts: u32,
    /// Final names claimed by this run (relative to `root`).
    claims: Mutex<HashSet<PathBuf>>,
    cancel: watch::Sender<bool>,
    fatal: Mutex<Option<RestoreError>>,
    renamed: Mutex<Vec<Renamed>>,
    failures: Mutex<Vec<Failed>>,
    /// Folders that received new names since their last fsync: each is fsynced once when the
    /// downloads end, not after every file (a lost name after a power cut is restored again by
    /// the next run; the file behind every name is fsynced before it gets one).
    dirty_dirs: Mutex<HashSet<PathBuf>>,
    /// Batch durability for DIR's filesystem (`None`: every file is fsynced on its own).
    fs_sync: Option<FsSync>,
    /// Folders (relative to `root`) this run created or checked with [`ensure_parents`]:
    /// checked once per run, not once per file (a folder swapped for a symbolic link after
    /// its check could fool a per-file check just as well: between the check and the write).
    ready_dirs: Mutex<HashSet<PathBuf>>,
}

/// Why a task stopped early.
#[derive(Debug)]
enum Stop {
    File(FileFailure),
    Fatal(RestoreError),
    Cancelled,
}

impl Ctx {
    fn cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    fn fail_run(&self, e: RestoreError) {
        if let Ok(mut f) = self.fatal.lock()
            && f.is_none()
        {
            *f = Some(e);
        }
        self.cancel.send_replace(true);
    }

    fn disk_full(&self, e: io::Error) -> RestoreError {
        RestoreError::DiskFull {
            dir: self.root.clone(),
            restored: self.progress.restored.load(Ordering::Relaxed)
                + self.progress.renamed_for_collision.load(Ordering::Relaxed),
            source: e,
        }
    }

    /// An I/O error of one file: a full disk ends the run, anything else fails the file.
    fn io_stop(&self, e: io::Error, what: &str) -> Stop {
        if is_disk_full(&e) {
            Stop::Fatal(self.disk_full(e))
        } else {
            Stop::File(FileFailure::Io {
                detail: format!("{what}: {e}"),
            })
        }
    }

    fn fail_file(&self, rel: &Path, id: &str, reason: FileFailure) {
        self.progress.failed.fetch_add(1, Ordering::Relaxed);
        let f = Failed {
            path: rel.to_owned(),
            id: id.to_owned(),
            detail: reason.to_string(),
            reason,
        };
        self.progress.event(FileEvent::Failed(f.clone()));
        if let Ok(mut v) = self.failures.lock() {
            v.push(f);
        }
    }
}

/// What is at a candidate name.
#[derive(Debug, PartialEq, Eq)]
enum Occupant {
    Free,
    Identical,
    Different,
    /// A parent is not a folder (a file, a symbolic link).
    Blocked(String),
}

/// Checks the folders on the way to `rel` (none may be a file or a symbolic link) and what
/// the name holds; hashes an existing regular file of the right size unless the journal
/// knows it.
fn occupant(
    root: &Path,
    rel: &Path,
    id: &str,
    size: u64,
    journal: &Journal,
) -> io::Result<Occupant> {
    if let Some(parent) = rel.parent() {
        let mut cur = root.to_path_buf();
        let mut shown = PathBuf::new();
        for c in parent.components() {
            cur.push(c);
            shown.push(c);
            match std::fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(m) => {
                    let what = if m.file_type().is_symlink() {
                        "a symbolic link"
                    } else {
                        "not a folder"
                    };
                    return Ok(Occupant::Blocked(format!(
                        "{} is {what}: it is left alone",
                        path_text::display(&shown)
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Occupant::Free),
                Err(e) => return Err(e),
            }
        }
    }
    let path = root.join(rel);
    let m = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Occupant::Free),
        Err(e) => return Err(e),
    };
    if !m.is_file() || m.len() != size {
        return Ok(Occupant::Different);
    }
    let hash = match journal.known(rel, &m) {
        Some(h) => h,
        None => match hash_file(&path) {
            Ok(h) => {
                // Stat again: a file changing while it was read is not remembered.
                if let Ok(m2) = std::fs::symlink_metadata(&path)
                    && Stamp::of(&m2, String::new()) == Stamp::of(&m, String::new())
                {
                    journal.record(rel, &m2, &h)?;
                }
                h
            }
            // Unreadable: it cannot be shown identical, so it is kept and restored beside.
            Err(_) => return Ok(Occupant::Different),
        },
    };
    Ok(if hash == id {
        Occupant::Identical
    } else {
        Occupant::Different
    })
}

fn hash_file(path: &Path) -> io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Candidate `i` for `rel`: its own name, then the names beside it.
fn candidate(rel: &Path, i: u32) -> PathBuf {
    if i == 0 {
        return rel.to_owned();
    }
    let name = rel.file_name().unwrap_or(OsStr::new("file"));
    rel.with_file_name(beside_name(name, i))
}

/// Where one wanted file goes.
#[derive(Debug)]
enum Decision {
    Skip,
    Write {
        final_rel: PathBuf,
        reason: Option<&'static str>,
    },
    Fail(FileFailure),
}

const REASON_EXISTING: &str = "a different file is already there";
const REASON_VERSION: &str = "a newer version of the same path has that name";

/// Step 3 for one final path's versions (newest first).
fn resolve_group(ctx: &Ctx, group: &[Wanted]) -> Result<Vec<Decision>, RestoreError> {
    let mut out = Vec::with_capacity(group.len());
    for w in group {
        let mut reason = None;
        let mut decision = Decision::Fail(FileFailure::InTheWay {
            detail: format!("no free name beside it after {MAX_BESIDE} tries"),
        });
        for i in 0..MAX_BESIDE {
            let cand = candidate(&w.rel, i);
            let claimed = ctx.claims.lock().map(|c| c.contains(&cand)).unwrap_or(true);
            if claimed {
                reason.get_or_insert(REASON_VERSION);
                continue;
            }
            let occ = occupant(&ctx.root, &cand, &w.id, w.size, &ctx.journal).map_err(|e| {
                if is_disk_full(&e) {
                    ctx.disk_full(e)
                } else {
                    RestoreError::Dir {
                        dir: ctx.root.join(&cand),
                        source: e,
                    }
                }
            })?;
            match occ {
                Occupant::Free => {
                    let mut c = ctx
                        .claims
                        .lock()
                        .map_err(|_| RestoreError::Internal("claims lock poisoned".into()))?;
                    if c.insert(cand.clone()) {
                        decision = Decision::Write {
                            final_rel: cand,
                            reason: if i == 0 { None } else { reason },
                        };
                        break;
                    }
                    reason.get_or_insert(REASON_VERSION);
                }
                Occupant::Identical => {
                    // A run killed between linking the name and removing its temp file
                    // left that temp file behind.
                    let _ = std::fs::remove_file(ctx.root.join(temp_rel(&cand, &w.id)));
                    if let Ok(mut c) = ctx.claims.lock() {
                        c.insert(cand);
                    }
                    decision = Decision::Skip;
                    break;
                }
                Occupant::Different => {
                    reason.get_or_insert(REASON_EXISTING);
                }
                Occupant::Blocked(detail) => {
                    decision = Decision::Fail(FileFailure::InTheWay { detail });
                    break;
                }
            }
        }
        ctx.progress.files_checked.fetch_add(1, Ordering::Relaxed);
        out.push(decision);
    }
    Ok(out)
}

/// One file to write: where it belongs and where it goes.
#[derive(Debug, Clone)]
struct Assigned {
    wanted: Wanted,
    final_rel: PathBuf,
    reason: Option<&'static str>,
}

/// The temp file for `final_rel` in its own folder: the same name on every run, so a cut
/// download resumes.
fn temp_rel(final_rel: &Path, id: &str) -> PathBuf {
    let mut h = blake3::Hasher::new();
    h.update(id.as_bytes());
    h.update(&[0]);
    h.update(final_rel.as_os_str().as_bytes());
    let tag = h.finalize().to_hex();
    final_rel.with_file_name(format!("{TEMP_PREFIX}{}{TEMP_SUFFIX}", &tag.as_str()[..24]))
}

/// Whether `name` is one of this module's temp files.
fn is_temp_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.len() == TEMP_PREFIX.len() + 24 + TEMP_SUFFIX.len()
        && b.starts_with(TEMP_PREFIX.as_bytes())
        && b.ends_with(TEMP_SUFFIX.as_bytes())
        && b[TEMP_PREFIX.len()..TEMP_PREFIX.len() + 24]
            .iter()
            .all(u8::is_ascii_hexdigit)
}

/// After a complete run nothing is left to resume: removes temp files (of earlier runs with
/// other filters, or of files since restored another way) from the folders written into.
fn sweep_temps(root: &Path, folders: &BTreeSet<PathBuf>) {
    for f in folders {
        let Ok(entries) = std::fs::read_dir(root.join(f)) else {
            continue;
        };
        for e in entries.flatten() {
            if is_temp_name(&e.file_name()) && e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Creates the folders on the way to `rel` (0755 as umask allows), refusing to pass a
/// symbolic link or a file.
fn ensure_parents(root: &Path, rel: &Path) -> Result<(), io::Error> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut cur = root.to_path_buf();
    for c in parent.components() {
        if !matches!(c, Component::Normal(_)) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "unsafe path"));
        }
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} is not a folder", path_text::display(&cur)),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::create_dir(&cur) {
                Ok(()) => {
                    if let Some(p) = cur.parent() {
                        std::fs::File::open(p)?.sync_all()?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !std::fs::symlink_metadata(&cur)?.is_dir() {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Opens (creating) a temp file without following a symbolic link.
fn open_temp(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(path)
}

/// A partial temp file opened for appending, with the hash of what it holds.
struct Partial {
    file: std::fs::File,
    len: u64,
    hasher: blake3::Hasher,
}

fn open_partial(path: &Path, size: u64) -> io::Result<Partial> {
    use std::io::Seek as _;
    let mut file = open_temp(path)?;
    let mut len = file.metadata()?.len();
    if len == 0 {
        // A fresh download (the common case): nothing to read back, truncate or seek.
        return Ok(Partial {
            file,
            len,
            hasher: blake3::Hasher::new(),
        });
    }
    if len > size {
        file.set_len(0)?;
        len = 0;
    }
    let mut hasher = blake3::Hasher::new();
    let mut left = len;
    let mut buf = vec![0u8; 256 * 1024];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let len = len - left;
    file.set_len(len)?;
    file.seek(io::SeekFrom::Start(len))?;
    Ok(Partial { file, len, hasher })
}

fn restart(p: &mut Partial) -> io::Result<()> {
    use std::io::Seek as _;
    p.file.set_len(0)?;
    p.file.seek(io::SeekFrom::Start(0))?;
    p.len = 0;
    p.hasher = blake3::Hasher::new();
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
}

/// Writes the received `chunks` at the end of the partial file (and into its hash) on a
/// blocking thread, in one `writev` where the kernel takes them all: the chunks are never
/// copied into one buffer first. A failed write loses the file handle: the download stops
/// there (the temp file keeps what was written before).
async fn flush<B: AsRef<[u8]> + Send + 'static>(
    p: Partial,
    chunks: Vec<B>,
) -> io::Result<(Partial, Vec<B>)> {
    blocking(move || {
        let (mut p, mut chunks) = (p, chunks);
        write_all_vectored(&mut p.file, &chunks)?;
        for c in &chunks {
            p.hasher.update(c.as_ref());
            p.len += c.as_ref().len() as u64;
        }
        chunks.clear();
        Ok((p, chunks))
    })
    .await
}

/// `write_all` for several buffers (std's is not stable yet).
fn write_all_vectored(file: &mut std::fs::File, chunks: &[impl AsRef<[u8]>]) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice> = chunks
        .iter()
        .map(|c| io::IoSlice::new(c.as_ref()))
        .collect();
    let mut left = &mut slices[..];
    while !left.is_empty() {
        match file.write_vectored(left) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut left, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `bytes START-END/TOTAL` → START.
fn range_start(v: Option<&reqwest::header::HeaderValue>) -> Option<u64> {
    let v = v?.to_str().ok()?.trim();
    let rest = v.strip_prefix("bytes ")?;
    rest.split('-').next()?.trim().parse().ok()
}

/// Downloads object `id` into the temp file at `tmp`, resuming what it holds, until its
/// bytes hash to `id`. Returns the open, verified file.
async fn download(ctx: &Ctx, id: &str, size: u64, tmp: &Path) -> Result<std::fs::File, Stop> {
    let mut cancel = ctx.cancel.subscribe();
    let mut last = String::new();
    // Attempts that could not even connect: all of them means the server is gone.
    let mut unconnected = 0u32;
    let mut corrupt = 0u32;
    let url = format!("{}/v1/objects/{id}", ctx.client.base);
    for attempt in 1..=ctx.attempts.max(1) {
        if ctx.cancelled() {
            return Err(Stop::Cancelled);
        }
        if attempt > 1 {
            let wait = Duration::from_millis((200u64 << (attempt - 2).min(4)).min(3000));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.wait_for(|c| *c) => return Err(Stop::Cancelled),
            }
        }
        let path = tmp.to_owned();
        let mut p = blocking(move || open_partial(&path, size))
            .await
            .map_err(|e| ctx.io_stop(e, "temp file"))?;
        if p.len == size {
            if p.hasher.finalize().to_hex().as_str() == id {
                ctx.progress
                    .bytes_resumed
                    .fetch_add(p.len, Ordering::Relaxed);
                return Ok(p.file);
            }
            corrupt += 1;
            ctx.progress.refetched.fetch_add(1, Ordering::Relaxed);
            p = blocking(move || restart(&mut p).map(|()| p))
                .await
                .map_err(|e| ctx.io_stop(e, "temp file"))?;
            if attempt == ctx.attempts {
                break;
            }
        }
        let mut req = ctx.client.http.get(&url).bearer_auth(&ctx.client.token);
        if p.len > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={}-", p.len));
        }
        let sent = tokio::select! {
            r = req.send() => r,
            _ = cancel.wait_for(|c| *c) => return Err(Stop::Cancelled),
        };
        let mut res = match sent {
            Ok(r) => r,
            Err(e) => match ctx.client.send_error(e) {
                Fetch::Fatal(e) => return Err(Stop::Fatal(e)),
                Fetch::Connect(d) => {
                    unconnected += 1;
                    last = d;
                    continue;
                }
                Fetch::Transient(d) => {
                    last = d;
                    continue;
                }
            },
        };
        let status = res.status().as_u16();
        match status {
            206 if p.len > 0 => {
                if range_start(res.headers().get(reqwest::header::CONTENT_RANGE)) != Some(p.len) {
                    // Not the part asked for: start over.
                    last = "the server answered another range than asked".into();
                    blocking(move || restart(&mut p))
                        .await
                        .map_err(|e| ctx.io_stop(e, "temp file"))?;
                    continue;
                }
                ctx.progress
                    .bytes_resumed
                    .fetch_add(p.len, Ordering::Relaxed);
            }
            200 => {
                if p.len > 0 {
                    // The server sends everything (no Range support): start over.
                    p = blocking(move || restart(&mut p).map(|()| p))
                        .await
                        .map_err(|e| ctx.io_stop(e, "temp file"))?;
                }
            }
            401 => {
                return Err(Stop::Fatal(
                    ServerError::Unauthorized {
                        url: ctx.client.base.clone(),
                    }
                    .into(),
                ));
            }
            404 | 410 => return Err(Stop::File(FileFailure::Gone)),
            416 => {
                last = "the server refused the range".into();
                blocking(move || restart(&mut p))
                    .await
                    .map_err(|e| ctx.io_stop(e, "temp file"))?;
                continue;
            }
            _ => {
                last = format!("the server answered {status}");
                continue;
            }
        }
        // The body, in blocks written (and hashed) on a blocking thread.
        let (mut chunks, mut pending) = (Vec::new(), 0usize);
        let mut flushed = Instant::now();
        let mut cut: Option<String> = None;
        let mut too_long = false;
        loop {
            let chunk = tokio::select! {
                c = res.chunk() => Some(c),
                _ = cancel.wait_for(|c| *c) => None,
            };
            let Some(chunk) = chunk else {
                // Kept for the next run; a failure to write it only costs a refetch.
                let _ = flush(p, chunks).await;
                return Err(Stop::Cancelled);
            };
            match chunk {
                Ok(Some(c)) => {
                    ctx.progress
                        .bytes_downloaded
                        .fetch_add(c.len() as u64, Ordering::Relaxed);
                    if p.len + (pending + c.len()) as u64 > size {
                        too_long = true;
                        break;
                    }
                    pending += c.len();
                    chunks.push(c);
                    // A block at a time on a fast link; on a slow one what arrived in the
                    // last moment, so a `kill -9` loses little.
                    if pending >= WRITE_BLOCK || flushed.elapsed() >= FLUSH_EVERY {
                        (p, chunks) = flush(p, chunks)
                            .await
                            .map_err(|e| ctx.io_stop(e, "writing"))?;
                        pending = 0;
                        flushed = Instant::now();
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    cut = Some(error_chain(&e));
                    break;
                }
            }
        }
        // What arrived is kept (a cut resumes after it); an overlong body is not.
        (p, _) = flush(p, chunks)
            .await
            .map_err(|e| ctx.io_stop(e, "writing"))?;
        if too_long {
            last = "the server sent more bytes than the object holds".into();
            corrupt += 1;
            ctx.progress.refetched.fetch_add(1, Ordering::Relaxed);
            blocking(move || restart(&mut p))
                .await
                .map_err(|e| ctx.io_stop(e, "temp file"))?;
            continue;
        }
        if p.len < size {
            last = match cut {
                Some(c) => format!("cut after {} of {size} bytes: {c}", p.len),
                None => format!("the answer ended after {} of {size} bytes", p.len),
            };
            ctx.progress.refetched.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if p.hasher.finalize().to_hex().as_str() == id {
            return Ok(p.file);
        }
        last = "the bytes did not match the BLAKE3".into();
        corrupt += 1;
        ctx.progress.refetched.fetch_add(1, Ordering::Relaxed);
        blocking(move || restart(&mut p))
            .await
            .map_err(|e| ctx.io_stop(e, "temp file"))?;
    }
    let attempts = ctx.attempts.max(1);
    if unconnected == attempts {
        return Err(Stop::Fatal(ctx.client.unreachable(last)));
    }
    if corrupt == attempts {
        return Err(Stop::File(FileFailure::Corrupt { attempts }));
    }
    Err(Stop::File(FileFailure::Download {
        attempts,
        detail: last,
    }))
}

fn system_time(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// Where a verified temp file went.
#[derive(Debug)]
enum Placed {
    At(PathBuf, Option<&'static str>),
    /// An identical file took the name meanwhile; the temp file is gone.
    Identical,
}

/// Gives a verified temp file the modification time its receipt remembers (before it is made
/// durable, so the time is as durable as the bytes).
fn set_mtime(file: &std::fs::File, a: &Assigned) -> io::Result<()> {
    match a.wanted.modified_ms {
        Some(ms) => file.set_modified(system_time(ms)),
        None => Ok(()),
    }
}

/// Links the verified, durable temp file under its final name — never over an existing
/// file: if one appeared since the check, the next free name beside it — and removes the temp
/// name. The folder is fsynced later, once for all its new names.
fn place(ctx: &Ctx, tmp_rel: &Path, a: &Assigned) -> io::Result<Placed> {
    let tmp = ctx.root.join(tmp_rel);
    let mut final_rel = a.final_rel.clone();
    let mut reason = a.reason;
    let mut i = 0;
    loop {
        let dest = ctx.root.join(&final_rel);
        match std::fs::hard_link(&tmp, &dest) {
            Ok(()) => {
                std::fs::remove_file(&tmp)?;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if occupant(
                    &ctx.root,
                    &final_rel,
                    &a.wanted.id,
                    a.wanted.size,
                    &ctx.journal,
                )? == Occupant::Identical
                {
                    std::fs::remove_file(&tmp)?;
                    return Ok(Placed::Identical);
                }
            }
            // No hard links here (FAT, some network shares): rename, after checking the
            // name is free (the one place a racing writer could be overwritten).
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Unsupported | io::ErrorKind::PermissionDenied
                ) && std::fs::symlink_metadata(&dest).is_err() =>
            {
                std::fs::rename(&tmp, &dest)?;
                break;
            }
            Err(e) => return Err(e),
        }
        // Taken by a different file since it was checked: the next name beside it.
        reason = Some(REASON_EXISTING);
        loop {
            i += 1;
            if i > MAX_BESIDE {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "no free name beside it",
                ));
            }
            let cand = candidate(&a.wanted.rel, i);
            if ctx
                .claims
                .lock()
                .map(|mut c| c.insert(cand.clone()))
                .unwrap_or(false)
            {
                final_rel = cand;
                break;
            }
        }
    }
    let dir = ctx.root.join(final_rel.parent().unwrap_or(Path::new("")));
    if let Ok(mut d) = ctx.dirty_dirs.lock() {
        d.insert(dir);
    }
    let m = std::fs::symlink_metadata(ctx.root.join(&final_rel))?;
    ctx.journal.record(&final_rel, &m, &a.wanted.id)?;
    Ok(Placed::At(final_rel, reason))
}

/// Counts where one file went (or why it did not) and tells the person. `Ok(Some(path))`:
/// placed at `path` (relative to DIR); `Ok(None)`: not placed by this call (identical file
/// there, or failed and reported); `Err`: the run must stop (a full disk).
fn settle(ctx: &Ctx, a: &Assigned, placed: io::Result<Placed>) -> Result<Option<PathBuf>, Stop> {
    match placed {
        Ok(Placed::At(final_rel, reason)) => {
            ctx.progress
                .bytes_restored
                .fetch_add(a.wanted.size, Ordering::Relaxed);
            match reason {
                None => {
                    ctx.progress.restored.fetch_add(1, Ordering::Relaxed);
                }
                Some(reason) => {
                    ctx.progress
                        .renamed_for_collision
                        .fetch_add(1, Ordering::Relaxed);
                    let r = Renamed {
                        path: a.wanted.rel.clone(),
                        restored_as: path_text::display(&final_rel),
                        reason,
                    };
                    ctx.progress.event(FileEvent::Renamed(r.clone()));
                    if let Ok(mut v) = ctx.renamed.lock() {
                        v.push(r);
                    }
                }
            }
            Ok(Some(final_rel))
        }
        Ok(Placed::Identical) => {
            ctx.progress
                .skipped_identical
                .fetch_add(1, Ordering::Relaxed);
            Ok(None)
        }
        Err(e) => match ctx.io_stop(e, "placing") {
            Stop::File(r) => {
                ctx.fail_file(&a.wanted.rel, &a.wanted.id, r);
                Ok(None)
            }
            other => Err(other),
        },
    }
}

/// The verified file made durable on its own (modification time, fsync), then placed.
fn place_alone(ctx: &Ctx, file: std::fs::File, tmp_rel: &Path, a: &Assigned) -> io::Result<Placed> {
    set_mtime(&file, a)?;
    file.sync_all()?;
    drop(file);
    place(ctx, tmp_rel, a)
}

/// Batch durability on DIR's filesystem: one `syncfs(2)` makes every file written before it
/// durable, in one pass over the disk instead of one flush per file. The folder is opened
/// before anything is written: Linux (5.8 and later) reports to `syncfs` every writeback
/// error of the filesystem since the descriptor was opened, so an error of this run is never
/// missed.
#[derive(Debug)]
struct FsSync {
    dir: std::fs::File,
    dev: u64,
    /// Cleared by a failed `syncfs`: the rest of the run fsyncs file by file (each fsync
    /// reports its own file's error, so a failure is pinned on the files it hit).
    usable: std::sync::atomic::AtomicBool,
}

impl FsSync {
    /// `None` where `syncfs` cannot be trusted (see [`syncfs_reports_errors`]) or DIR cannot
    /// be opened: the restore then fsyncs each file, as it always may.
    fn open(root: &Path) -> Option<FsSync> {
        if !syncfs_reports_errors() {
            return None;
        }
        let dir = std::fs::File::open(root).ok()?;
        if !local_disk_filesystem(&dir) {
            return None;
        }
        let dev = dir.metadata().ok()?.dev();
        Some(FsSync {
            dir,
            dev,
            usable: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Whether `file` lives on the filesystem one `syncfs` here covers (a mount inside DIR
    /// does not).
    fn covers(&self, file: &std::fs::File) -> bool {
        file.metadata().is_ok_and(|m| m.dev() == self.dev)
    }

    /// One `syncfs(2)`; `false` when it failed or failed before (then the caller fsyncs).
    fn sync(&self) -> bool {
        if !self.usable.load(Ordering::Relaxed) {
            return false;
        }
        let ok = syncfs(&self.dir).is_ok();
        if !ok {
            self.usable.store(false, Ordering::Relaxed);
        }
        ok
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn syncfs(dir: &std::fs::File) -> io::Result<()> {
    rustix::fs::syncfs(dir).map_err(io::Error::from)
}

/// Whether `dir` is on a filesystem whose `syncfs` writes and waits for everything and
/// reports a failed write: ext2/3/4, XFS, Btrfs, F2FS (and tmpfs, where nothing is written).
/// Network, FUSE and stacked filesystems (NFS, SMB, overlayfs on older kernels) may not pass
/// a sync or its errors through: their files are fsynced one by one.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn local_disk_filesystem(dir: &std::fs::File) -> bool {
    const EXT4: u32 = 0xEF53;
    const XFS: u32 = 0x5846_5342;
    const BTRFS: u32 = 0x9123_683E;
    const F2FS: u32 = 0xF2F5_2010;
    const TMPFS: u32 = 0x0102_1994;
    // `f_type` is a C long (or u32): every magic number fits the low 32 bits.
    rustix::fs::fstatfs(dir)
        .is_ok_and(|s| matches!(s.f_type as u32, EXT4 | XFS | BTRFS | F2FS | TMPFS))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn local_disk_filesystem(_dir: &std::fs::File) -> bool {
    false
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn syncfs(_dir: &std::fs::File) -> io::Result<()> {
    // Never called: `syncfs_reports_errors` says no here. An error keeps it harmless.
    Err(io::ErrorKind::Unsupported.into())
}

/// Whether this kernel's `syncfs(2)` reports a failed write back (Linux 5.8 and later;
/// before, it returned success regardless, which would let an unwritten file get its name).
fn syncfs_reports_errors() -> bool {
    cfg!(any(target_os = "linux", target_os = "android"))
        && std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .is_ok_and(|release| kernel_at_least(&release, (5, 8)))
}

/// `release` (`6.18.44-fc-v1300`) is at least version `want` (major, minor).
fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release.trim().split(['.', '-']);
    let mut number = || parts.next().and_then(|p| p.parse::<u32>().ok());
    match (number(), number()) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

/// A verified temp file handed over to be made durable and placed.
#[derive(Debug)]
struct Verified {
    file: std::fs::File,
    tmp_rel: PathBuf,
    a: Assigned,
    /// Told where the file went (`None`: it did not get a name), when the sender waits for
    /// it (an object with more paths copies from its first placed file).
    placed: Option<tokio::sync::oneshot::Sender<Option<PathBuf>>>,
}

/// Step 5: gathers verified files into batches and makes each batch durable, then placed.
/// Ends when every sender is gone and the last batch is placed.
async fn durability_batches(ctx: Arc<Ctx>, mut rx: tokio::sync::mpsc::Receiver<Verified>) {
    while let Some(first) = rx.recv().await {
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        let mut bytes = first.a.wanted.size;
        let mut batch = vec![first];
        while batch.len() < BATCH_FILES && bytes < BATCH_BYTES {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(v)) => {
                    bytes += v.a.wanted.size;
                    batch.push(v);
                }
                // Every sender gone (the downloads ended), or waited long enough.
                Ok(None) | Err(_) => break,
            }
        }
        let c = ctx.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            let sync = || c.fs_sync.as_ref().is_some_and(FsSync::sync);
            flush_batch(&c, batch, sync)
        })
        .await;
        if let Err(e) = flushed {
            ctx.fail_run(RestoreError::Internal(format!(
                "making restored files durable failed: {e}"
            )));
        }
    }
}

/// One batch: modification times, then `sync_all_at_once` (one `syncfs`; `false`: it failed
/// or is unavailable), then each file linked into place — every file fsynced on its own
/// first unless that one sync covered it.
fn flush_batch(ctx: &Ctx, batch: Vec<Verified>, sync_all_at_once: impl FnOnce() -> bool) {
    let mut ready = Vec::with_capacity(batch.len());
    for v in batch {
        // A file on another filesystem than DIR's is not covered by its `syncfs`.
        let covered = ctx.fs_sync.as_ref().is_some_and(|s| s.covers(&v.file));
        match set_mtime(&v.file, &v.a) {
            Ok(()) => ready.push((v, covered)),
            Err(e) => finish(ctx, v, Err(e)),
        }
    }
    let synced = ready.iter().any(|(_, covered)| *covered) && sync_all_at_once();
    for (v, covered) in ready {
        let durable = if synced && covered {
            Ok(())
        } else {
            v.file.sync_all()
        };
        let placed = durable.and_then(|()| place(ctx, &v.tmp_rel, &v.a));
        finish(ctx, v, placed);
    }
}

/// Counts one batched file's outcome and tells a waiting sender where it went.
fn finish(ctx: &Ctx, v: Verified, placed: io::Result<Placed>) {
    let Verified {
        file,
        a,
        placed: tell,
        ..
    } = v;
    drop(file);
    let at = match settle(ctx, &a, placed) {
        Ok(at) => at,
        Err(Stop::Fatal(e)) => {
            ctx.fail_run(e);
            None
        }
        Err(Stop::File(_) | Stop::Cancelled) => None,
    };
    if let Some(tell) = tell {
        // The object's task may have stopped waiting (cancelled): nothing to tell then.
        let _ = tell.send(at);
    }
}

/// Copies a placed, verified file into `tmp` for another path of the same object, checking
/// the BLAKE3 again on the way.
fn copy_verified(src: &Path, tmp: &Path, id: &str) -> io::Result<Option<std::fs::File>> {
    let mut from = std::fs::File::open(src)?;
    let mut to = open_temp(tmp)?;
    to.set_len(0)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        to.write_all(&buf[..n])?;
    }
    if h.finalize().to_hex().as_str() != id {
        drop(to);
        std::fs::remove_file(tmp)?;
        return Ok(None);
    }
    Ok(Some(to))
}

/// Step 4 for one object: fetched once, placed under each of its paths.
/// With `batches`, each verified file is handed over to be made durable with others
/// ([`durability_batches`]); without, it is fsynced and placed here.
async fn restore_object(
    ctx: Arc<Ctx>,
    targets: Vec<Assigned>,
    batches: Option<&tokio::sync::mpsc::Sender<Verified>>,
) -> Result<(), Stop> {
    let Some(first) = targets.first() else {
        return Ok(());
    };
    let (id, size) = (first.wanted.id.clone(), first.wanted.size);
    let mut source: Option<PathBuf> = None;
    let mut iter = targets.into_iter();
    while let Some(a) = iter.next() {
        if ctx.cancelled() {
            return Err(Stop::Cancelled);
        }
        let tmp_rel = temp_rel(&a.final_rel, &id);
        let root = ctx.root.clone();
        let rel = a.final_rel.clone();
        let parent = rel.parent().unwrap_or(Path::new("")).to_owned();
        let known = ctx.ready_dirs.lock().is_ok_and(|d| d.contains(&parent));
        let ready = if known {
            Ok(())
        } else {
            blocking(move || ensure_parents(&root, &rel)).await
        };
        if ready.is_ok()
            && !known
            && let Ok(mut d) = ctx.ready_dirs.lock()
        {
            d.insert(parent);
        }
        if let Err(e) = ready {
            if is_disk_full(&e) {
                return Err(Stop::Fatal(ctx.disk_full(e)));
            }
            ctx.fail_file(
                &a.wanted.rel,
                &id,
                FileFailure::InTheWay {
                    detail: e.to_string(),
                },
            );
            continue;
        }
        let file = match &source {
            None => match download(&ctx, &id, size, &ctx.root.join(&tmp_rel)).await {
                Ok(f) => f,
                Err(Stop::File(reason)) => {
                    // The same reason for every path of this object.
                    ctx.fail_file(&a.wanted.rel, &id, reason.clone());
                    for rest in iter.by_ref() {
                        ctx.fail_file(&rest.wanted.rel, &id, reason.clone());
                    }
                    return Ok(());
                }
                Err(e) => return Err(e),
            },
            Some(src) => {
                let (src, tmp, id2) = (ctx.root.join(src), ctx.root.join(&tmp_rel), id.clone());
                match blocking(move || copy_verified(&src, &tmp, &id2)).await {
                    Ok(Some(f)) => f,
                    Ok(None) => {
                        ctx.fail_file(
                            &a.wanted.rel,
                            &id,
                            FileFailure::Io {
                                detail: "the copy of its first restored path changed".into(),
                            },
                        );
                        continue;
                    }
                    Err(e) => match ctx.io_stop(e, "copying") {
                        Stop::File(r) => {
                            ctx.fail_file(&a.wanted.rel, &id, r);
                            continue;
                        }
                        other => return Err(other),
                    },
                }
            }
        };
        let Some(batches) = batches else {
            let (ctx2, a2, tmp2) = (ctx.clone(), a.clone(), tmp_rel.clone());
            let placed = blocking(move || place_alone(&ctx2, file, &tmp2, &a2)).await;
            if let Some(at) = settle(&ctx, &a, placed)? {
                source.get_or_insert(at);
            }
            continue;
        };
        // More paths of this object copy from the first placed file: wait for it then.
        let (tell, told) = if source.is_none() && iter.len() > 0 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let v = Verified {
            file,
            tmp_rel,
            a,
            placed: tell,
        };
        if batches.send(v).await.is_err() {
            return Err(Stop::Fatal(RestoreError::Internal(
                "the task making restored files durable ended early".into(),
            )));
        }
        if let Some(told) = told
            && let Ok(Some(at)) = told.await
        {
            source = Some(at);
        }
    }
    Ok(())
}

/// Restores everything selected into `opts.dir` (see the module's steps). `stop` turning
/// true ends it early: downloads in flight keep their partial temp files for the next run.
pub async fn run(
    opts: RestoreOptions,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> Result<RestoreSummary, RestoreError> {
    let started = Instant::now();
    let dir = std::path::absolute(&opts.dir).unwrap_or_else(|_| opts.dir.clone());
    // The server first: a wrong token must not leave an empty folder behind.
    let (embedded, url, token, tls) = match &opts.source {
        Target::Embedded => {
            if !opts.state_dir.join("server").is_dir() {
                return Err(RestoreError::NoBuiltInServer {
                    state_dir: opts.state_dir.clone(),
                });
            }
            let e = Embedded::start(&opts.state_dir).await?;
            let (url, token) = (e.base_url(), e.token.clone());
            (Some(e), url, token, None)
        }
        Target::Remote { url, token, trust } => {
            let tls = ferry_tls::ServerTls::new(trust).map_err(|source| ServerError::Trust {
                url: url.clone(),
                source,
            })?;
            (None, url.clone(), token.clone(), Some(tls))
        }
    };
    let client = Client::new(&url, &token, tls.as_ref())?;
    if let Ok(mut u) = progress.server_url.lock() {
        *u = client.base.clone();
    }
    progress.set_phase(Phase::Listing);
    let objects = client.list_all(&progress).await?;

    let root = dir.clone();
    let journal = blocking(move || {
        std::fs::create_dir_all(&root)?;
        let root = std::fs::canonicalize(&root)?;
        // Opened before anything is written (see `FsSync`).
        let fs_sync = FsSync::open(&root);
        Journal::open(&root).map(|j| (root, j, fs_sync))
    })
    .await;
    let (root, journal, fs_sync) = journal.map_err(|e| {
        if e.kind() == io::ErrorKind::WouldBlock {
            RestoreError::AlreadyRunning { dir: dir.clone() }
        } else if is_disk_full(&e) {
            RestoreError::DiskFull {
                dir: dir.clone(),
                restored: 0,
                source: e,
            }
        } else {
            RestoreError::Dir {
                dir: dir.clone(),
                source: e,
            }
        }
    })?;

    let Plan { wanted, bad_ids } = plan(&objects, &opts.filter);
    progress
        .files_total
        .store((wanted.len() + bad_ids.len()) as u64, Ordering::Relaxed);
    let (cancel, _) = watch::channel(false);
    let ctx = Arc::new(Ctx {
        root: root.clone(),
        client,
        journal,
        progress: progress.clone(),
        attempts: opts.attempts.max(1),
        claims: Mutex::new(HashSet::new()),
        cancel,
        fatal: Mutex::new(None),
        renamed: Mutex::new(Vec::new()),
        failures: Mutex::new(Vec::new()),
        dirty_dirs: Mutex::new(HashSet::new()),
        fs_sync,
        ready_dirs: Mutex::new(HashSet::new()),
    });
    for id in &bad_ids {
        ctx.fail_file(Path::new(UNSORTED), id, FileFailure::BadId);
    }
    let sanitised = wanted.iter().filter(|w| w.sanitised_from.is_some()).count() as u64;
    for w in &wanted {
        if let Some(original) = &w.sanitised_from {
            progress.event(FileEvent::Sanitised {
                original: original.clone(),
                path: w.rel.clone(),
            });
        }
    }
    // A stop (Ctrl-C) cancels whatever runs.
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if stop.wait_for(|s| *s).await.is_ok() {
                ctx.cancel.send_replace(true);
            }
        });
    }

    // Step 3: resolve names, per final path, newest version first.
    progress.set_phase(Phase::Checking);
    let folders: BTreeSet<PathBuf> = wanted
        .iter()
        .map(|w| w.rel.parent().unwrap_or(Path::new("")).to_owned())
        .collect();
    let mut groups: BTreeMap<PathBuf, Vec<Wanted>> = BTreeMap::new();
    for w in wanted {
        groups.entry(w.rel.clone()).or_default().push(w);
    }
    let groups: Vec<Vec<Wanted>> = groups
        .into_values()
        .map(|mut g| {
            g.sort_by(|a, b| b.received_ms.cmp(&a.received_ms).then(a.id.cmp(&b.id)));
            g
        })
        .collect();
    let resolved = {
        let ctx = ctx.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<(Wanted, Decision)>, RestoreError> {
            let mut out = Vec::new();
            for g in groups {
                if ctx.cancelled() {
                    break;
                }
                let d = resolve_group(&ctx, &g)?;
                out.extend(g.into_iter().zip(d));
            }
            Ok(out)
        })
        .await
        .map_err(|e| RestoreError::Internal(e.to_string()))??
    };
    let mut jobs: BTreeMap<String, Vec<Assigned>> = BTreeMap::new();
    for (w, d) in resolved {
        match d {
            Decision::Skip => {
                progress.skipped_identical.fetch_add(1, Ordering::Relaxed);
            }
            Decision::Fail(reason) => ctx.fail_file(&w.rel, &w.id, reason),
            Decision::Write { final_rel, reason } => {
                jobs.entry(w.id.clone()).or_default().push(Assigned {
                    wanted: w,
                    final_rel,
                    reason,
                })
            }
        }
    }
    progress.to_download.store(
        jobs.values().map(|v| v.len() as u64).sum(),
        Ordering::Relaxed,
    );
    progress.bytes_to_download.store(
        jobs.values()
            .filter_map(|v| v.first())
            .map(|a| a.wanted.size)
            .sum(),
        Ordering::Relaxed,
    );

    // Step 4: a few objects at once.
    progress.set_phase(Phase::Downloading);
    let queue = Arc::new(Mutex::new(jobs.into_values().collect::<VecDeque<_>>()));
    // Step 5's task, fed by every download task; it ends once they all have.
    let (batches, batcher) = if ctx.fs_sync.is_some() {
        // Room for a second batch while the first is synced: downloads go on meanwhile.
        let (tx, rx) = tokio::sync::mpsc::channel(BATCH_FILES);
        (
            Some(tx),
            Some(tokio::spawn(durability_batches(ctx.clone(), rx))),
        )
    } else {
        (None, None)
    };
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..opts.concurrency.max(1) {
        let (ctx, queue, batches) = (ctx.clone(), queue.clone(), batches.clone());
        workers.spawn(async move {
            loop {
                if ctx.cancelled() {
                    return;
                }
                let Some(job) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                    return;
                };
                match restore_object(ctx.clone(), job, batches.as_ref()).await {
                    Ok(()) | Err(Stop::Cancelled) => {}
                    Err(Stop::Fatal(e)) => ctx.fail_run(e),
                    Err(Stop::File(..)) => {}
                }
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        if let Err(e) = r {
            ctx.fail_run(RestoreError::Internal(format!(
                "a download task failed: {e}"
            )));
        }
    }
    // The last batch: verified files still waiting for their sync and their names.
    drop(batches);
    if let Some(batcher) = batcher
        && let Err(e) = batcher.await
    {
        ctx.fail_run(RestoreError::Internal(format!(
            "making restored files durable failed: {e}"
        )));
    }
    let interrupted = ctx.cancelled();
    {
        // The new names made durable before anything says "restored": one `syncfs` for the
        // folders on DIR's filesystem where it is trusted, else one fsync per folder.
        let dirs: Vec<PathBuf> = ctx
            .dirty_dirs
            .lock()
            .map(|mut d| d.drain().collect())
            .unwrap_or_default();
        let ctx2 = ctx.clone();
        let synced = tokio::task::spawn_blocking(move || {
            let mut opened = Vec::with_capacity(dirs.len());
            for dir in dirs {
                let f = std::fs::File::open(&dir).map_err(|source| RestoreError::Dir {
                    dir: dir.clone(),
                    source,
                })?;
                let covered = ctx2.fs_sync.as_ref().is_some_and(|s| s.covers(&f));
                opened.push((dir, f, covered));
            }
            let synced = opened.iter().any(|(_, _, covered)| *covered)
                && ctx2.fs_sync.as_ref().is_some_and(FsSync::sync);
            for (dir, f, covered) in opened {
                if !(synced && covered)
                    && let Err(source) = f.sync_all()
                {
                    return Err(RestoreError::Dir { dir, source });
                }
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(RestoreError::Internal(e.to_string())));
        if let Err(e) = synced {
            ctx.fail_run(e);
        }
    }
    {
        let ctx = ctx.clone();
        let _ = blocking(move || ctx.journal.compact()).await;
    }
    if let Some(e) = ctx.fatal.lock().ok().and_then(|mut f| f.take()) {
        return Err(e);
    }
    drop(embedded);
    let snap = progress.snapshot();
    let files = snap.files_total;
    let all_there = snap.restored + snap.skipped_identical + snap.renamed_for_collision == files;
    if !interrupted && all_there {
        let root = root.clone();
        let _ = blocking(move || {
            sweep_temps(&root, &folders);
            Ok(())
        })
        .await;
    }
    progress.set_phase(Phase::Done);
    Ok(RestoreSummary {
        dir: root,
        server_url: progress.server_url(),
        objects: objects.len() as u64,
        files,
        restored: snap.restored,
        skipped_identical: snap.skipped_identical,
        renamed_for_collision: snap.renamed_for_collision,
        failed: snap.failed,
        bytes: snap.bytes_restored,
        bytes_downloaded: snap.bytes_downloaded,
        bytes_resumed: snap.bytes_resumed,
        refetched: snap.refetched,
        sanitised,
        interrupted: interrupted
            || snap.restored + snap.skipped_identical + snap.renamed_for_collision + snap.failed
                < files,
        elapsed_ms: started.elapsed().as_millis() as u64,
        renamed: ctx.renamed.lock().map(|v| v.clone()).unwrap_or_default(),
        failures: ctx.failures.lock().map(|v| v.clone()).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(text: &str) -> Option<(String, bool)> {
        sanitise_rel(text).map(|(p, c)| (path_text::display(&p), c))
    }

    #[test]
    fn paths_are_made_safe_and_relative() {
        assert_eq!(rel("a/b.jpg"), Some(("a/b.jpg".into(), false)));
        assert_eq!(
            rel("Vacances été 2023/IMG_0800.JPG"),
            Some(("Vacances été 2023/IMG_0800.JPG".into(), false))
        );
        assert_eq!(
            rel("caf\\xE9/x.jpg"),
            Some(("caf\\xE9/x.jpg".into(), false))
        );
        assert_eq!(rel("../../etc/x"), Some(("etc/x".into(), true)));
        assert_eq!(rel("/abs/x"), Some(("abs/x".into(), true)));
        assert_eq!(rel("a//b/./c"), Some(("a/b/c".into(), true)));
        assert_eq!(rel("a/\\x00b"), Some(("a/_b".into(), true)));
        assert_eq!(
            rel(".ferry-restore/journal"),
            Some(("_ferry-restore/journal".into(), true))
        );
        assert_eq!(
            rel("a/.ferry-restore"),
            Some(("a/.ferry-restore".into(), false))
        );
        assert_eq!(rel("../.."), None);
        assert_eq!(rel(""), None);
        assert_eq!(rel("/"), None);
        let long = format!("{}.jpg", "x".repeat(300));
        let (p, changed) = sanitise_rel(&long).unwrap();
        assert!(changed && p.as_os_str().len() == 255 && p.to_str().unwrap().ends_with(".jpg"));
        // Whatever the input, the result only ever has normal components.
        for t in ["..", "a/../../b", "/../x", "\\x2E\\x2E/x", "./.", "a\\"] {
            if let Some((p, _)) = sanitise_rel(t) {
                assert!(
                    p.components().all(|c| matches!(c, Component::Normal(_))),
                    "{t}: {p:?}"
                );
            }
        }
    }

    #[test]
    fn names_beside_keep_the_extension() {
        assert_eq!(
            beside_name(OsStr::new("IMG_0001.JPG"), 1),
            "IMG_0001 (restored).JPG"
        );
        assert_eq!(
            beside_name(OsStr::new("IMG_0001.JPG"), 2),
            "IMG_0001 (restored 2).JPG"
        );
        assert_eq!(beside_name(OsStr::new(".hidden"), 1), ".hidden (restored)");
        assert_eq!(beside_name(OsStr::new("noext"), 1), "noext (restored)");
        assert_eq!(sanitise_name("a/b"), Some(OsString::from("a_b")));
        assert_eq!(sanitise_name(".."), None);
        let t = temp_rel(Path::new("a/IMG_0001.JPG"), &"f".repeat(64));
        assert_eq!(t.parent(), Some(Path::new("a")));
        assert!(is_temp_name(t.file_name().unwrap()), "{t:?}");
        assert!(!is_temp_name(OsStr::new(".ferry-restore-x.part")));
    }

    #[test]
    fn since_takes_dates_and_datetimes() {
        assert_eq!(
            parse_since("2024-06-01T10:00:00Z").unwrap(),
            1_717_236_000_000
        );
        assert_eq!(
            parse_since("2024-06-01T12:00:00+02:00").unwrap(),
            1_717_236_000_000
        );
        assert!(parse_since("2024-06-01").is_ok());
        assert!(parse_since("yesterday").is_err());
    }

    fn receipt(ms: i64, meta: &[(&str, &str)]) -> ListedReceipt {
        ListedReceipt {
            upload_id: String::new(),
            received_ms: ms,
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn plan_gives_one_file_per_object_and_path() {
        let id = |c: char| c.to_string().repeat(64);
        let objects = vec![
            ListedObject {
                id: id('a'),
                size_bytes: 3,
                receipts: vec![
                    receipt(
                        20,
                        &[
                            ("path", "x/a.jpg"),
                            ("asset_id", "A"),
                            ("modified_ms", "1000"),
                        ],
                    ),
                    receipt(10, &[("path", "y/a.jpg"), ("asset_id", "A")]),
                    receipt(5, &[("path", "x/a.jpg"), ("asset_id", "A")]),
                ],
            },
            ListedObject {
                id: id('b'),
                size_bytes: 4,
                receipts: vec![receipt(
                    30,
                    &[("file_name", "IMG_1.JPG"), ("asset_id", "B")],
                )],
            },
            ListedObject {
                id: "not-hex".into(),
                size_bytes: 1,
                receipts: vec![],
            },
        ];
        let p = plan(&objects, &Filter::default());
        let got: Vec<(String, String, Option<i64>)> = p
            .wanted
            .iter()
            .map(|w| {
                (
                    w.id[..1].to_owned(),
                    path_text::display(&w.rel),
                    w.modified_ms,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a".into(), "x/a.jpg".into(), Some(1000)),
                ("a".into(), "y/a.jpg".into(), None),
                ("b".into(), "_unsorted/IMG_1.JPG".into(), None),
            ]
        );
        assert_eq!(p.bad_ids, ["not-hex"]);
        let only = |f: Filter| -> Vec<String> {
            plan(&objects, &f)
                .wanted
                .iter()
                .map(|w| path_text::display(&w.rel))
                .collect()
        };
        assert_eq!(
            only(Filter {
                since_ms: Some(15),
                ..Filter::default()
            }),
            ["x/a.jpg", "_unsorted/IMG_1.JPG"]
        );
        assert_eq!(
            only(Filter {
                folders: vec!["y".into()],
                ..Filter::default()
            }),
            ["y/a.jpg"]
        );
        assert_eq!(
            only(Filter {
                assets: vec!["B".into()],
                ..Filter::default()
            }),
            ["_unsorted/IMG_1.JPG"]
        );
    }

    #[test]
    fn several_libraries_each_get_a_folder() {
        let objects = vec![
            ListedObject {
                id: "a".repeat(64),
                size_bytes: 1,
                receipts: vec![receipt(1, &[("path", "p.jpg"), ("library", "Pictures")])],
            },
            ListedObject {
                id: "b".repeat(64),
                size_bytes: 1,
                receipts: vec![receipt(1, &[("path", "p.jpg"), ("library", "../Phone")])],
            },
        ];
        let got: Vec<String> = plan(&objects, &Filter::default())
            .wanted
            .iter()
            .map(|w| path_text::display(&w.rel))
            .collect();
        assert_eq!(got, ["Pictures/p.jpg", ".._Phone/p.jpg"]);
    }

    /// A run's shared state over `root`, with no server behind its client (nothing here may
    /// download) and one attempt per object.
    fn offline_ctx(root: &Path, fs_sync: Option<FsSync>) -> Arc<Ctx> {
        Arc::new(Ctx {
            root: root.to_owned(),
            client: Client::new("http://127.0.0.1:9", "token", None).unwrap(),
            journal: Journal::open(root).unwrap(),
            progress: Arc::new(Progress::default()),
            attempts: 1,
            claims: Mutex::new(HashSet::new()),
            cancel: watch::channel(false).0,
            fatal: Mutex::new(None),
            renamed: Mutex::new(Vec::new()),
            failures: Mutex::new(Vec::new()),
            dirty_dirs: Mutex::new(HashSet::new()),
            fs_sync,
            ready_dirs: Mutex::new(HashSet::new()),
        })
    }

    /// `bytes` as the verified temp file of `rel` would hold them, and its assignment.
    fn verified_temp(root: &Path, rel: &str, bytes: &[u8], modified_ms: i64) -> Assigned {
        let id = blake3::hash(bytes).to_hex().to_string();
        let final_rel = PathBuf::from(rel);
        ensure_parents(root, &final_rel).unwrap();
        std::fs::write(root.join(temp_rel(&final_rel, &id)), bytes).unwrap();
        Assigned {
            wanted: Wanted {
                id,
                size: bytes.len() as u64,
                rel: final_rel.clone(),
                sanitised_from: None,
                modified_ms: Some(modified_ms),
                received_ms: 1,
            },
            final_rel,
            reason: None,
        }
    }

    fn handed_over(root: &Path, a: Assigned) -> Verified {
        let tmp_rel = temp_rel(&a.final_rel, &a.wanted.id);
        Verified {
            file: open_temp(&root.join(&tmp_rel)).unwrap(),
            tmp_rel,
            a,
            placed: None,
        }
    }

    #[test]
    fn a_batch_gets_its_names_only_after_its_sync_and_falls_back_to_fsync_when_it_fails() {
        for sync_works in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let root = std::fs::canonicalize(dir.path()).unwrap();
            let ctx = offline_ctx(&root, FsSync::open(&root));
            let files = [("a/x.jpg", b"first".as_slice()), ("a/y.jpg", b"second")];
            let batch: Vec<Verified> = files
                .iter()
                .map(|(rel, bytes)| handed_over(&root, verified_temp(&root, rel, bytes, 1_500)))
                .collect();
            let temps: Vec<PathBuf> = batch.iter().map(|v| root.join(&v.tmp_rel)).collect();
            let mut synced = false;
            flush_batch(&ctx, batch, || {
                // The invariant: no name before the sync; the verified bytes under temp names.
                for (rel, _) in files {
                    assert!(!root.join(rel).exists(), "{rel} named before the sync");
                }
                assert!(temps.iter().all(|t| t.exists()));
                synced = true;
                sync_works
            });
            assert_eq!(synced, ctx.fs_sync.is_some(), "one sync for the batch");
            for (rel, bytes) in files {
                assert_eq!(std::fs::read(root.join(rel)).unwrap(), bytes, "{rel}");
                let m = std::fs::metadata(root.join(rel)).unwrap();
                assert_eq!(m.modified().unwrap(), system_time(1_500), "{rel}");
            }
            assert!(temps.iter().all(|t| !t.exists()), "temp names removed");
            let snap = ctx.progress.snapshot();
            assert_eq!(
                (snap.restored, snap.failed),
                (2, 0),
                "sync worked: {sync_works}"
            );
            assert!(ctx.dirty_dirs.lock().unwrap().contains(&root.join("a")));
        }
    }

    #[tokio::test]
    async fn verified_temp_files_a_kill_left_unnamed_are_placed_without_downloading() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let ctx = offline_ctx(&root, FsSync::open(&root));
        // Killed after the sync, before the links: whole, verified temp files.
        let whole = verified_temp(&root, "b/whole.jpg", b"all of it", 2_000);
        // Power cut before the sync: the temp file has its length, not its bytes.
        let torn = verified_temp(&root, "b/torn.jpg", b"lost bytes", 2_000);
        std::fs::write(
            root.join(temp_rel(&torn.final_rel, &torn.wanted.id)),
            [0u8; 10],
        )
        .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(BATCH_FILES);
        let batcher = tokio::spawn(durability_batches(ctx.clone(), rx));
        for a in [whole, torn] {
            let r = restore_object(ctx.clone(), vec![a], Some(&tx)).await;
            assert!(r.is_ok(), "{r:?}");
        }
        drop(tx);
        batcher.await.unwrap();
        assert_eq!(
            std::fs::read(root.join("b/whole.jpg")).unwrap(),
            b"all of it"
        );
        assert!(
            !root.join("b/torn.jpg").exists(),
            "a file whose bytes do not match never gets its name"
        );
        let snap = ctx.progress.snapshot();
        assert_eq!(snap.bytes_downloaded, 0, "{snap:?}");
        assert_eq!(snap.bytes_resumed, 9, "{snap:?}");
        assert_eq!((snap.restored, snap.failed), (1, 1), "{snap:?}");
    }

    #[test]
    fn syncfs_is_trusted_from_linux_5_8() {
        assert!(kernel_at_least("6.18.44-fc-v1300\n", (5, 8)));
        assert!(kernel_at_least("5.8.0", (5, 8)));
        assert!(!kernel_at_least("5.7.19-arch1", (5, 8)));
        assert!(!kernel_at_least("4.19", (5, 8)));
        assert!(!kernel_at_least("", (5, 8)));
        assert!(!kernel_at_least("six", (5, 8)));
    }

    #[test]
    fn listing_metadata_keeps_strings_only() {
        let page: Page = serde_json::from_str(
            r#"{"objects":[{"id":"x","size_bytes":1,"stored_ms":1,"receipts":[{"upload_id":"u","received_ms":5,"metadata":{"path":"a","n":1,"o":{"k":[1]}}}]}],"next_after":null}"#,
        )
        .unwrap();
        assert_eq!(page.objects[0].receipts[0].metadata.len(), 1);
        assert!(page.next_after.is_none());
    }
}
