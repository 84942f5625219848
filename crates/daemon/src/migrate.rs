//! The one-time move of this device's Ferry to another: what would move (preflight), the
//! outgoing package (a snapshot of the state and each exporting extension's data), sending it
//! to a paired device or a file, and on the new device checking and installing it in one step.
//!
//! Steps on the old device: **prepare** (once; the package is kept in
//! `<state>/migration/outgoing/` and reused by every later `send`, so a resumed move sends the
//! same bytes; from then on the device does not upload: it is frozen for the move) → **send**
//! (over the paired, encrypted stream, or to a file) → when the new device says it installed:
//! **moved** (recorded; `ferry backup` and the daemon refuse to upload here and say why).
//!
//! Steps on the new device: **receive** into `<state>/migration/incoming/` (every entry
//! verified and journalled by the transport) → **check** the snapshot against this device's
//! files (`--root OLD=NEW` rebases folders; each resource's file re-hashed) → **install** in
//! one SQLite transaction, extension data becoming pending imports that run before each
//! extension's first call here.

use crate::backup::now_ms;
use ferry_host::{Host, HostConfig};
use ferry_migrate::{PackageManifest, ReceivedPackage};
use ferry_store::Store;
use ferry_store::migration::{MigrationStoreError, PendingImportRow, SnapshotCounts};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The package format this Ferry writes (the meta inside the transport's manifest).
pub const PACKAGE_FORMAT: u32 = 1;
/// The state snapshot's entry name in a package.
pub const STATE_ENTRY: &str = "state.sqlite";
/// Extension data lives under `ext/<id>/<path_in_archive>`.
pub const EXT_PREFIX: &str = "ext/";

/// What went wrong with a move, classified by what the person does next.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("cannot open Ferry's state in {dir}: {detail}")]
    State { dir: PathBuf, detail: String },
    #[error(transparent)]
    Store(#[from] MigrationStoreError),
    #[error(transparent)]
    StoreOpen(#[from] ferry_store::StoreError),
    #[error(transparent)]
    Transport(#[from] ferry_migrate::MigrateError),
    #[error(transparent)]
    Host(#[from] ferry_host::HostError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The daemon (or another move) holds the state folder.
    #[error(
        "Ferry's daemon (or another `ferry migrate`) is using {0}: stop it first (`systemctl --user stop ferry`)"
    )]
    Busy(PathBuf),
    /// Bad input from the person: a `--root` that does not parse, a package that is not one.
    #[error("{0}")]
    Usage(String),
    #[error("the package is not a Ferry state move: {0}")]
    BadPackage(String),
    /// This device already received another move.
    #[error(
        "this device already holds a moved state (from {from}); a second move would mix two devices"
    )]
    AlreadyReceived { from: String },
    /// A `ferry backup` (or the daemon) uploads from this state now.
    #[error("a `ferry backup` is running on {0}: let it finish (or stop it) first")]
    BackupRunning(PathBuf),
    #[error("nothing to cancel: no move is under way on this device")]
    NothingToCancel,
    /// Everything arrived, but the new device's "installed" never came back: this device stays
    /// frozen until a `send` hears it.
    #[error(
        "the new device did not confirm it installed the move: run `ferry migrate resume` there \
         and `ferry migrate send` here again"
    )]
    NotConfirmed,
    #[error(
        "not enough free space in {path} for the move's package: {need} bytes needed, {have} free"
    )]
    NoSpace { path: PathBuf, need: u64, have: u64 },
}

impl MoveError {
    /// Whether running the same command again continues where this one stopped.
    pub fn is_resumable(&self) -> bool {
        match self {
            MoveError::Transport(e) => e.is_resumable(),
            MoveError::NotConfirmed => true,
            _ => false,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MoveError + '_ {
    move |source| MoveError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where a move keeps its files in the state folder.
#[derive(Debug, Clone)]
pub struct MovePaths {
    pub state_dir: PathBuf,
}

impl MovePaths {
    pub fn new(state_dir: &Path) -> MovePaths {
        MovePaths {
            state_dir: state_dir.to_owned(),
        }
    }
    fn root(&self) -> PathBuf {
        self.state_dir.join("migration")
    }
    /// The prepared package's files.
    pub fn outgoing(&self) -> PathBuf {
        self.root().join("outgoing")
    }
    fn outgoing_manifest(&self) -> PathBuf {
        self.root().join("outgoing.json")
    }
    /// The transport's staging folder on the receiving side.
    pub fn incoming(&self) -> PathBuf {
        self.root().join("incoming")
    }
    /// Whether a receive stopped part-way here (the transport's manifest is in staging).
    pub fn has_unfinished_receive(&self) -> bool {
        self.incoming().join("manifest.json").is_file()
    }
    /// Extension data waiting for its import, one folder per extension.
    pub fn imports(&self) -> PathBuf {
        self.root().join("imports")
    }
    fn db(&self) -> PathBuf {
        self.state_dir.join("ferry.db")
    }
}

/// A move's phases, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MovePhase {
    #[default]
    Preparing,
    Exporting,
    Pairing,
    Transferring,
    Checking,
    Installing,
    Done,
}

/// Live counters of a move, per phase (bytes, or files while checking).
#[derive(Debug, Default)]
pub struct MoveProgress {
    phase: Mutex<(MovePhase, String)>,
    pub done: AtomicU64,
    pub total: AtomicU64,
}

impl MoveProgress {
    pub fn set_phase(&self, phase: MovePhase, what: impl Into<String>, total: u64) {
        if let Ok(mut p) = self.phase.lock() {
            *p = (phase, what.into());
        }
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }
    pub fn phase(&self) -> (MovePhase, String) {
        self.phase
            .lock()
            .map(|p| p.clone())
            .unwrap_or((MovePhase::Preparing, String::new()))
    }
    fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
    /// The transport's progress: entry bytes verified at the receiving end, of the total.
    fn transport(&self, e: ferry_migrate::Progress) {
        if e.phase == ferry_migrate::Phase::Transferring
            && self.phase().0 != MovePhase::Transferring
        {
            self.set_phase(MovePhase::Transferring, "", e.total_bytes);
        }
        if self.phase().0 == MovePhase::Transferring {
            self.total.store(e.total_bytes, Ordering::Relaxed);
            self.done.store(e.done_bytes, Ordering::Relaxed);
        }
    }
}

/// The meta a package carries beside its entries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackageMeta {
    pub format: u32,
    pub ferry_version: String,
    pub source_host: String,
    pub library_id: String,
    pub created_ms: i64,
    pub counts: SnapshotCounts,
    pub extensions: Vec<ExtensionMove>,
    /// The bundled extension backed up to this device's built-in server, whose copies stay
    /// here: the new device backs up to its own.
    #[serde(default)]
    pub builtin_server_stays: bool,
}

/// One extension's part of a move.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExtensionMove {
    pub id: String,
    /// Its `[migration] data_version` (given to the importer).
    pub data_version: String,
    pub compressible: bool,
    pub size_estimate_bytes: u64,
    pub files: u64,
    pub bytes: u64,
    /// Why its data is not in the package (hung, failed, cancelled), if it is not.
    pub left_out: Option<String>,
}

/// The state of the old device while and after a move.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MovedMark {
    pub at_ms: i64,
    /// Where it went: an address, or the file it was exported to.
    pub to: String,
    pub package: String,
}

/// What was installed on the new device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReceivedMark {
    pub at_ms: i64,
    pub package: String,
    pub source_host: String,
    pub created_ms: i64,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn open_store(paths: &MovePaths) -> Result<Store, MoveError> {
    crate::config::prepare_state_dir(&paths.state_dir).map_err(|e| MoveError::State {
        dir: paths.state_dir.clone(),
        detail: e.to_string(),
    })?;
    Store::open(&paths.db()).map_err(|e| MoveError::State {
        dir: paths.state_dir.clone(),
        detail: e.to_string(),
    })
}

/// Holds the state folder against the daemon (and another move) while a move runs.
fn take_lock(paths: &MovePaths) -> Result<MoveLock, MoveError> {
    let state = crate::daemon::StateLock::take(&paths.state_dir).map_err(|e| match e {
        crate::daemon::DaemonError::AlreadyRunning(p) => MoveError::Busy(p),
        other => MoveError::State {
            dir: paths.state_dir.clone(),
            detail: other.to_string(),
        },
    })?;
    // Exclusive on the uploads lock: no `ferry backup` runs (each holds it shared).
    let uploads = open_uploads_lock(&paths.state_dir).map_err(io_err(&paths.state_dir))?;
    match uploads.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(MoveError::BackupRunning(paths.state_dir.clone()));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&paths.state_dir)(e)),
    }
    Ok(MoveLock {
        _state: state,
        _uploads: uploads,
    })
}

/// A move's hold on the state folder: the daemon's lock, and the uploads lock exclusively.
#[derive(Debug)]
pub struct MoveLock {
    _state: crate::daemon::StateLock,
    _uploads: std::fs::File,
}

fn open_uploads_lock(state_dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(ferry_store::private::FILE_MODE)
        .open(state_dir.join("uploads.lock"))
}

/// Held (shared) by `ferry backup` and the daemon for as long as they may upload: a move
/// cannot be prepared under them, and they cannot start under a move being prepared (the lock
/// is released by the kernel on any exit, `kill -9` included).
#[derive(Debug)]
pub struct UploadsGuard {
    _file: std::fs::File,
}

/// Takes the uploads lock shared; `Err` names why not (a move holds it).
pub fn hold_uploads(state_dir: &Path) -> Result<UploadsGuard, String> {
    let f = open_uploads_lock(state_dir)
        .map_err(|e| format!("{}: {e}", state_dir.join("uploads.lock").display()))?;
    match f.try_lock_shared() {
        Ok(()) => Ok(UploadsGuard { _file: f }),
        Err(std::fs::TryLockError::WouldBlock) => Err(
            "a move to another device is being prepared or sent (`ferry migrate`): this device \
             does not upload meanwhile"
                .into(),
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("uploads.lock: {e}")),
    }
}

/// Why this device must not upload (moved away, or frozen for a move), if so: for `ferry
/// backup`, the daemon and `ferry status`.
pub fn upload_block(store: &Store) -> Result<Option<String>, ferry_store::StoreError> {
    if let Some(m) = store.device_mark("moved_to")? {
        let to = serde_json::from_str::<MovedMark>(&m)
            .map(|m| format!("{} at {}", m.to, format_ms(m.at_ms)))
            .unwrap_or(m);
        return Ok(Some(format!(
            "this device's Ferry moved to another device ({to}); it no longer uploads here. \
             `ferry migrate status` says more; `ferry migrate cancel` makes this device upload again"
        )));
    }
    if store.device_mark("migration_outgoing")?.is_some() {
        return Ok(Some(
            "a move to another device is under way (`ferry migrate send`): this device does not \
             upload meanwhile. Finish it with `ferry migrate send`, or `ferry migrate cancel`"
                .into(),
        ));
    }
    Ok(None)
}

fn format_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| ms.to_string())
}

// ---------------------------------------------------------------------------------------------
// Preflight

/// What a move would take, before anything moves.
#[derive(Debug, Clone, Serialize)]
pub struct Preflight {
    pub counts: SnapshotCounts,
    /// The state database's size now (the snapshot is at most this).
    pub state_bytes: u64,
    pub extensions: Vec<ExtensionMove>,
    /// Extensions with key-value records that do not export: their records move, no files.
    pub kv_only: Vec<String>,
    pub total_bytes_estimate: u64,
    /// At 100 MB/s (a gigabit network), plus hashing at 1 GB/s.
    pub estimated_seconds: u64,
    pub free_bytes_here: Option<u64>,
    pub blocked: Option<String>,
    /// The bundled extension backs up to this device's built-in server: its copies (and the
    /// extension's memory of them) stay here; the new device backs up to its own.
    pub builtin_server_stays: bool,
}

fn host_for(paths: &MovePaths, extensions_dir: &Path, store: Store) -> Result<Host, MoveError> {
    let config = HostConfig::new(extensions_dir.to_owned(), paths.state_dir.clone());
    Ok(Host::new(Arc::new(Mutex::new(store)), config)?)
}

/// Counts what moves and asks each exporting extension for its size.
pub async fn preflight(state_dir: &Path, extensions_dir: &Path) -> Result<Preflight, MoveError> {
    let paths = MovePaths::new(state_dir);
    let store = open_store(&paths)?;
    let counts = store.migration_counts()?;
    let blocked = upload_block(&store)?;
    let kv_exts = store.kv_extensions()?;
    let state_bytes = std::fs::metadata(paths.db()).map(|m| m.len()).unwrap_or(0);
    let host = host_for(&paths, extensions_dir, store)?;
    let mut extensions = Vec::new();
    for m in host.exporters()? {
        let e = match host.migration_preflight(&m.id).await {
            Ok(p) => ExtensionMove {
                id: m.id.clone(),
                data_version: p.data_version,
                compressible: p.compressible,
                size_estimate_bytes: p.size_estimate_bytes,
                files: 0,
                bytes: 0,
                left_out: None,
            },
            Err(e) => ExtensionMove {
                id: m.id.clone(),
                data_version: String::new(),
                compressible: false,
                size_estimate_bytes: 0,
                files: 0,
                bytes: 0,
                left_out: Some(e.to_string()),
            },
        };
        extensions.push(e);
    }
    let builtin_server_stays = bundled_used_builtin_server(state_dir);
    let kv_only = kv_exts
        .into_iter()
        .filter(|id| !extensions.iter().any(|e| &e.id == id))
        .filter(|id| !(builtin_server_stays && id == crate::extension::EXTENSION))
        .collect();
    let total: u64 = state_bytes
        + extensions
            .iter()
            .map(|e| e.size_estimate_bytes)
            .sum::<u64>();
    Ok(Preflight {
        counts,
        state_bytes,
        extensions,
        kv_only,
        total_bytes_estimate: total,
        estimated_seconds: total / 100_000_000 + total / 1_000_000_000 + 1,
        free_bytes_here: ferry_migrate::free_bytes(state_dir).ok(),
        blocked,
        builtin_server_stays,
    })
}

// ---------------------------------------------------------------------------------------------
// Prepare (old device)

/// The prepared outgoing package.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prepared {
    pub manifest: PackageManifest,
    pub meta: PackageMeta,
}

impl Prepared {
    pub fn id(&self) -> String {
        hex(&self.manifest.id())
    }
}

/// Prepares the outgoing package, or returns the one prepared before (a resumed move sends
/// the same bytes). From the first call on, the device is frozen for the move.
pub async fn prepare(
    state_dir: &Path,
    extensions_dir: &Path,
    progress: &MoveProgress,
    cancel: watch::Receiver<bool>,
) -> Result<Prepared, MoveError> {
    let paths = MovePaths::new(state_dir);
    let mut store = open_store(&paths)?;
    if let Ok(bytes) = std::fs::read(paths.outgoing_manifest())
        && store.device_mark("migration_outgoing")?.is_some()
        && let Ok(p) = serde_json::from_slice::<Prepared>(&bytes)
    {
        return Ok(p);
    }
    if store.device_mark("moved_to")?.is_some() {
        return Err(MoveError::Usage(
            "this device's Ferry already moved to another device (`ferry migrate status`); \
             `ferry migrate cancel` first to move it again"
                .into(),
        ));
    }
    // The package is written beside the state: room for a copy of the database and each
    // extension's estimate, checked before anything is written.
    let db_bytes = std::fs::metadata(paths.db()).map(|m| m.len()).unwrap_or(0);
    if let Ok(free) = ferry_migrate::free_bytes(state_dir)
        && free < db_bytes.saturating_mul(2)
    {
        return Err(MoveError::NoSpace {
            path: state_dir.to_owned(),
            need: db_bytes.saturating_mul(2),
            have: free,
        });
    }
    // Frozen from here: what the snapshot says is sent stays true until the move ends.
    store.set_device_mark(
        "migration_outgoing",
        Some(&serde_json::json!({ "started_ms": now_ms() }).to_string()),
    )?;
    let out = paths.outgoing();
    let _ = std::fs::remove_dir_all(&out);
    ferry_store::private::create_private_dir_all(&out).map_err(io_err(&out))?;
    // The built-in server's copies stay on this device (its data folder is a backup, not
    // Ferry's state): the bundled extension's memory of them does not move, so on the new
    // device it backs up to that device's own built-in server from scratch.
    let builtin = bundled_used_builtin_server(state_dir);
    let forget: Vec<&str> = if builtin {
        vec![crate::extension::EXTENSION]
    } else {
        Vec::new()
    };
    let library_id = store.library_id().to_owned();
    let host = host_for(&paths, extensions_dir, store)?;
    let mut extensions = Vec::new();
    for m in host.exporters()? {
        let id = m.id.clone();
        let mut e = ExtensionMove {
            id: id.clone(),
            data_version: String::new(),
            compressible: false,
            size_estimate_bytes: 0,
            files: 0,
            bytes: 0,
            left_out: None,
        };
        match host.migration_preflight(&id).await {
            Err(err) => e.left_out = Some(err.to_string()),
            Ok(p)
                if ferry_migrate::free_bytes(state_dir)
                    .is_ok_and(|free| free < p.size_estimate_bytes) =>
            {
                e.size_estimate_bytes = p.size_estimate_bytes;
                e.left_out = Some(format!(
                    "not enough free space for its {} bytes of data",
                    p.size_estimate_bytes
                ));
            }
            Ok(p) => {
                e.data_version = p.data_version;
                e.compressible = p.compressible;
                e.size_estimate_bytes = p.size_estimate_bytes;
                progress.set_phase(MovePhase::Exporting, id.clone(), p.size_estimate_bytes);
                let dir = out.join(EXT_PREFIX).join(&id);
                ferry_store::private::create_private_dir_all(&dir).map_err(io_err(&dir))?;
                let add = |n: u64| progress.add(n);
                match host
                    .migration_export(&id, &dir, Some(p.size_estimate_bytes), cancel.clone(), &add)
                    .await?
                {
                    ferry_host::ExportOutcome::Exported { files } => {
                        e.files = files.len() as u64;
                        e.bytes = files.iter().map(|f| f.size).sum();
                    }
                    ferry_host::ExportOutcome::LeftOut { reason } => {
                        // Its data is left out (nothing half of it moves); the move goes on.
                        let _ = std::fs::remove_dir_all(&dir);
                        e.left_out = Some(reason);
                    }
                }
            }
        }
        extensions.push(e);
    }
    if *cancel.borrow() {
        return Err(MoveError::Transport(ferry_migrate::MigrateError::Cancelled));
    }
    ferry_library::failpoint::hit("migrate.after_export");
    drop(host);
    // The snapshot after the exports: what an extension recorded in its key-value store while
    // exporting belongs with the files it exported.
    progress.set_phase(MovePhase::Preparing, "state snapshot", 0);
    let counts = open_store(&paths)?.migration_snapshot(&out.join(STATE_ENTRY), &forget)?;
    for dir in [out.join(EXT_PREFIX), out.clone()] {
        if dir.is_dir() {
            std::fs::File::open(&dir)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&dir))?;
        }
    }
    let meta = PackageMeta {
        format: PACKAGE_FORMAT,
        ferry_version: env!("CARGO_PKG_VERSION").into(),
        source_host: hostname(),
        library_id,
        created_ms: now_ms(),
        counts,
        extensions: extensions.clone(),
        builtin_server_stays: builtin,
    };
    let compressible: Vec<String> = extensions
        .iter()
        .filter(|e| e.compressible)
        .map(|e| format!("{EXT_PREFIX}{}/", e.id))
        .collect();
    progress.set_phase(MovePhase::Preparing, "hashing the package", 0);
    let meta_json =
        serde_json::to_value(&meta).map_err(|e| MoveError::BadPackage(e.to_string()))?;
    let root = out.clone();
    let manifest = tokio::task::spawn_blocking(move || {
        PackageManifest::build(&root, meta_json, |name: &[u8]| {
            name == STATE_ENTRY.as_bytes()
                || compressible.iter().any(|p| name.starts_with(p.as_bytes()))
        })
    })
    .await
    .map_err(|e| MoveError::BadPackage(e.to_string()))??;
    let prepared = Prepared { manifest, meta };
    let bytes = serde_json::to_vec(&prepared).map_err(|e| MoveError::BadPackage(e.to_string()))?;
    write_durably(&paths.outgoing_manifest(), &bytes)?;
    ferry_library::failpoint::hit("migrate.after_prepare");
    Ok(prepared)
}

/// Whether the bundled extension's manifest points at this state's built-in server (a
/// loopback URL with the built-in server's token).
fn bundled_used_builtin_server(state_dir: &Path) -> bool {
    let manifest = state_dir
        .join("extensions")
        .join(format!("{}.toml", crate::extension::EXTENSION));
    let (Ok(text), Ok(token)) = (
        std::fs::read_to_string(manifest),
        std::fs::read_to_string(state_dir.join("server-token")),
    ) else {
        return false;
    };
    let Ok(v) = text.parse::<toml::Table>() else {
        return false;
    };
    let config = v.get("config").and_then(|c| c.as_table());
    let url = config
        .and_then(|c| c.get("server_url"))
        .and_then(|u| u.as_str())
        .unwrap_or_default();
    let same_token = config
        .and_then(|c| c.get("token"))
        .and_then(|t| t.as_str())
        .is_some_and(|t| t.trim() == token.trim());
    let loopback = url.starts_with("http://127.0.0.1:") || url.starts_with("http://localhost:");
    loopback && same_token
}

/// temp → fsync → rename → fsync dir.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), MoveError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// After the new device said it installed (or the file is written): this device stops
/// uploading, and the prepared package goes.
fn finish_send(paths: &MovePaths, prepared: &Prepared, to: &str) -> Result<MovedMark, MoveError> {
    let mut store = open_store(paths)?;
    let mark = MovedMark {
        at_ms: now_ms(),
        to: to.to_owned(),
        package: prepared.id(),
    };
    let json = serde_json::to_string(&mark).map_err(|e| MoveError::BadPackage(e.to_string()))?;
    store.set_device_mark("moved_to", Some(&json))?;
    store.set_device_mark("migration_outgoing", None)?;
    let _ = std::fs::remove_dir_all(paths.outgoing());
    let _ = std::fs::remove_file(paths.outgoing_manifest());
    Ok(mark)
}

/// What `send` / `export` did.
#[derive(Debug, Clone, Serialize)]
pub struct SendSummary {
    pub package: String,
    pub entries: u64,
    pub bytes: u64,
    pub wire_bytes: u64,
    /// Distinct contents sent in this run, and those the receiver held already (a resume).
    pub sent_entries: u64,
    pub skipped_entries: u64,
    pub elapsed_ms: u64,
    pub moved: MovedMark,
    pub extensions: Vec<ExtensionMove>,
}

/// Prepares (or reuses) the package and sends it to the device that printed `code` at `to`.
pub async fn send(
    state_dir: &Path,
    extensions_dir: &Path,
    to: &str,
    code: &str,
    progress: Arc<MoveProgress>,
    cancel: watch::Receiver<bool>,
) -> Result<SendSummary, MoveError> {
    let started = std::time::Instant::now();
    let paths = MovePaths::new(state_dir);
    let _lock = take_lock(&paths)?;
    let prepared = prepare(state_dir, extensions_dir, &progress, cancel.clone()).await?;
    progress.set_phase(MovePhase::Pairing, to, 0);
    let p = progress.clone();
    let report = ferry_migrate::send(
        &paths.outgoing(),
        &prepared.manifest,
        to,
        code,
        move |e: ferry_migrate::Progress| p.transport(e),
    )
    .await?;
    if !report.installed {
        return Err(MoveError::NotConfirmed);
    }
    ferry_library::failpoint::hit("migrate.after_confirmed");
    let moved = finish_send(&paths, &prepared, to)?;
    progress.set_phase(MovePhase::Done, "", 0);
    Ok(SendSummary::of(
        &prepared,
        moved,
        (
            report.wire_bytes,
            report.sent_entries,
            report.skipped_entries,
        ),
        started,
    ))
}

impl SendSummary {
    /// `wire`: bytes written, distinct contents sent now, and those the other side held.
    fn of(
        prepared: &Prepared,
        moved: MovedMark,
        (wire_bytes, sent_entries, skipped_entries): (u64, u64, u64),
        started: std::time::Instant,
    ) -> SendSummary {
        SendSummary {
            package: prepared.id(),
            entries: prepared.manifest.entries.len() as u64,
            bytes: prepared.manifest.total_bytes(),
            wire_bytes,
            sent_entries,
            skipped_entries,
            elapsed_ms: started.elapsed().as_millis() as u64,
            moved,
            extensions: prepared.meta.extensions.clone(),
        }
    }
}

/// Writes the move to a file, for devices that never meet.
pub async fn export(
    state_dir: &Path,
    extensions_dir: &Path,
    out: &Path,
    progress: Arc<MoveProgress>,
    cancel: watch::Receiver<bool>,
) -> Result<SendSummary, MoveError> {
    let started = std::time::Instant::now();
    let paths = MovePaths::new(state_dir);
    let _lock = take_lock(&paths)?;
    let prepared = prepare(state_dir, extensions_dir, &progress, cancel).await?;
    progress.set_phase(
        MovePhase::Transferring,
        out.display().to_string(),
        prepared.manifest.total_bytes(),
    );
    let p = progress.clone();
    let root = paths.outgoing();
    let manifest = prepared.manifest.clone();
    let out_path = out.to_owned();
    let written = tokio::task::spawn_blocking(move || {
        ferry_migrate::export_file(&root, &manifest, &out_path, |e: ferry_migrate::Progress| {
            p.transport(e)
        })
    })
    .await
    .map_err(|e| MoveError::BadPackage(e.to_string()))??;
    let abs = std::fs::canonicalize(out).unwrap_or_else(|_| out.to_owned());
    let moved = finish_send(&paths, &prepared, &format!("file {}", abs.display()))?;
    progress.set_phase(MovePhase::Done, "", 0);
    let entries = prepared.manifest.entries.len() as u64;
    Ok(SendSummary::of(
        &prepared,
        moved,
        (written, entries, 0),
        started,
    ))
}

// ---------------------------------------------------------------------------------------------
// Receive and install (new device)

/// What the new device installed.
#[derive(Debug, Clone, Serialize)]
pub struct InstallSummary {
    pub package: String,
    pub source_host: String,
    pub counts: SnapshotCounts,
    /// Files found at their (rebased) path with the same bytes.
    pub files_verified: u64,
    /// Files not found here: the next scan reports them as deleted unless they appear.
    pub files_missing: u64,
    /// Files whose bytes differ: the next scan indexes them anew.
    pub files_differ: u64,
    pub extensions: Vec<ExtensionMove>,
    /// Already installed by an earlier run (a resumed move whose confirmation was cut).
    pub already_installed: bool,
    /// The old device backed up to its built-in server, whose copies stayed there: `ferry
    /// backup` here sends to this device's own.
    pub builtin_server_stayed: bool,
    /// The old device did not hear the confirmation: run `ferry migrate send` there again
    /// (with a new `receive` here) so it stops uploading.
    pub confirmation_lost: bool,
    pub elapsed_ms: u64,
}

/// Parses `OLD=NEW` folder pairs.
pub fn parse_roots(specs: &[String]) -> Result<Vec<(PathBuf, PathBuf)>, MoveError> {
    specs
        .iter()
        .map(|s| {
            let (old, new) = s.split_once('=').ok_or_else(|| {
                MoveError::Usage(format!(
                    "--root {s:?}: expected OLD=NEW (two absolute folders)"
                ))
            })?;
            let (old, new) = (PathBuf::from(old), PathBuf::from(new));
            if !old.is_absolute() || !new.is_absolute() {
                return Err(MoveError::Usage(format!(
                    "--root {s:?}: both folders must be absolute paths"
                )));
            }
            Ok((old, new))
        })
        .collect()
}

/// Refuses before anything moves when this device cannot take a move.
fn check_receivable(paths: &MovePaths) -> Result<Option<ReceivedMark>, MoveError> {
    let store = open_store(paths)?;
    if let Some(m) = store.device_mark("migrated_from")? {
        let mark: Option<ReceivedMark> = serde_json::from_str(&m).ok();
        return Ok(mark);
    }
    let c = store.migration_counts()?;
    let kv = store.kv_extensions()?.len() as u64;
    if c.jobs + c.unfinished_jobs + c.receipts + kv > 0 {
        return Err(MoveError::Store(MigrationStoreError::NotFresh {
            jobs: c.jobs + c.unfinished_jobs,
            receipts: c.receipts,
            kv,
        }));
    }
    Ok(None)
}

/// A receiver bound and waiting for its sender.
#[derive(Debug)]
pub struct Waiting {
    receiver: ferry_migrate::Receiver,
    paths: MovePaths,
    _lock: MoveLock,
    installed: Option<ReceivedMark>,
}

impl Waiting {
    pub fn addr(&self) -> std::net::SocketAddr {
        self.receiver.addr()
    }
    pub fn code(&self) -> String {
        self.receiver.code().to_string()
    }
}

/// Binds `listen` and makes the one-time code; the caller prints both, then calls
/// [`receive`].
pub async fn listen(state_dir: &Path, listen: std::net::SocketAddr) -> Result<Waiting, MoveError> {
    let paths = MovePaths::new(state_dir);
    let lock = take_lock(&paths)?;
    let installed = check_receivable(&paths)?;
    let receiver = ferry_migrate::Receiver::bind(listen).await?;
    Ok(Waiting {
        receiver,
        paths,
        _lock: lock,
        installed,
    })
}

/// Receives the move, checks and installs it, then tells the sender.
pub async fn receive(
    waiting: Waiting,
    roots: &[(PathBuf, PathBuf)],
    progress: Arc<MoveProgress>,
) -> Result<InstallSummary, MoveError> {
    let started = std::time::Instant::now();
    let Waiting {
        receiver,
        paths,
        _lock,
        installed,
    } = waiting;
    progress.set_phase(MovePhase::Pairing, "", 0);
    let p = progress.clone();
    let staging = paths.incoming();
    ferry_store::private::create_private_dir_all(&staging).map_err(io_err(&staging))?;
    let mut receiver = receiver;
    let session = receiver
        .receive(&staging, move |e: ferry_migrate::Progress| p.transport(e))
        .await?;
    let mut summary = install(&paths, session.package(), roots, &progress, installed)?;
    ferry_library::failpoint::hit("migrate.after_install");
    // Installed whatever happens to the confirmation. The old device hears it at once, before
    // the (long) check of the library files: it waits for it only so long.
    match session.confirm_installed().await {
        Ok(_) => {
            let _ = std::fs::remove_dir_all(&staging);
        }
        Err(e) => {
            // Staging stays: the old device's next `send` moves nothing again and is told the
            // move is installed.
            tracing::warn!(error = %e, "the old device did not hear that the move is installed");
            summary.confirmation_lost = true;
        }
    }
    ferry_library::failpoint::hit("migrate.before_check");
    check_files(&paths, &progress, &mut summary).await?;
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    progress.set_phase(MovePhase::Done, "", 0);
    Ok(summary)
}

/// Installs a move from a file written by `ferry migrate export`.
pub async fn import(
    state_dir: &Path,
    file: &Path,
    roots: &[(PathBuf, PathBuf)],
    progress: Arc<MoveProgress>,
) -> Result<InstallSummary, MoveError> {
    let started = std::time::Instant::now();
    let paths = MovePaths::new(state_dir);
    let _lock = take_lock(&paths)?;
    let size = std::fs::metadata(file)
        .map_err(|e| MoveError::Usage(format!("cannot read {}: {e}", file.display())))?
        .len();
    let installed = check_receivable(&paths)?;
    let staging = paths.incoming();
    ferry_store::private::create_private_dir_all(&staging).map_err(io_err(&staging))?;
    progress.set_phase(MovePhase::Transferring, file.display().to_string(), size);
    let p = progress.clone();
    let file2 = file.to_owned();
    let staging2 = staging.clone();
    let package = tokio::task::spawn_blocking(move || {
        ferry_migrate::import_file(&file2, &staging2, |e: ferry_migrate::Progress| {
            p.transport(e)
        })
    })
    .await
    .map_err(|e| MoveError::BadPackage(e.to_string()))??;
    let mut summary = install(&paths, &package, roots, &progress, installed)?;
    let _ = std::fs::remove_dir_all(&staging);
    check_files(&paths, &progress, &mut summary).await?;
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    progress.set_phase(MovePhase::Done, "", 0);
    Ok(summary)
}

fn install(
    paths: &MovePaths,
    package: &ReceivedPackage,
    roots: &[(PathBuf, PathBuf)],
    progress: &MoveProgress,
    installed: Option<ReceivedMark>,
) -> Result<InstallSummary, MoveError> {
    let manifest = package.manifest();
    let id = hex(&manifest.id());
    let meta: PackageMeta = serde_json::from_value(manifest.meta.clone())
        .map_err(|e| MoveError::BadPackage(format!("its description: {e}")))?;
    if meta.format != PACKAGE_FORMAT {
        return Err(MoveError::BadPackage(format!(
            "format {} (this Ferry reads {PACKAGE_FORMAT})",
            meta.format
        )));
    }
    if let Some(mark) = installed {
        if mark.package == id {
            // Installed by an earlier run whose confirmation was cut: nothing to do again.
            let store = open_store(paths)?;
            return Ok(InstallSummary {
                package: id,
                source_host: meta.source_host,
                counts: store.snapshot_counts()?,
                files_verified: 0,
                files_missing: 0,
                files_differ: 0,
                extensions: meta.extensions,
                already_installed: true,
                builtin_server_stayed: meta.builtin_server_stays,
                confirmation_lost: false,
                elapsed_ms: 0,
            });
        }
        return Err(MoveError::AlreadyReceived {
            from: format!("{} at {}", mark.source_host, format_ms(mark.at_ms)),
        });
    }
    let state_entry = manifest
        .entries
        .iter()
        .find(|e| e.name == STATE_ENTRY.as_bytes())
        .ok_or_else(|| MoveError::BadPackage("no state snapshot in it".into()))?;

    // Every extension id comes from the package: one that is not a valid id (`..`, a path)
    // must never name a folder here.
    for e in &meta.extensions {
        if !ferry_host::manifest::valid_id(&e.id) {
            return Err(MoveError::BadPackage(format!("an extension id {:?}", e.id)));
        }
    }
    // A working copy of the snapshot (the verified blob stays as it arrived), brought to this
    // Ferry's schema by opening it, its folders rebased (the files are checked after the
    // install: `check_files`).
    let work = paths.incoming().join("work.sqlite");
    for suffix in ["", "-wal", "-shm"] {
        let mut p = work.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    std::fs::copy(package.path_of(state_entry), &work).map_err(io_err(&work))?;
    let mut snap = Store::open(&work)?;
    snap.rebase_roots(roots)?;
    drop(snap);

    // Extension data: each exporting extension's files, as appended, in its import folder.
    progress.set_phase(MovePhase::Installing, "", 0);
    let imports_root = paths.imports();
    let mut imports = Vec::new();
    for e in meta.extensions.iter().filter(|e| e.left_out.is_none()) {
        let dir = imports_root.join(&e.id);
        let _ = std::fs::remove_dir_all(&dir);
        ferry_store::private::create_private_dir_all(&dir).map_err(io_err(&dir))?;
        let prefix = format!("{EXT_PREFIX}{}/", e.id);
        materialize_prefix(package, prefix.as_bytes(), &dir, &paths.state_dir)?;
        imports.push(PendingImportRow {
            extension: e.id.clone(),
            // Absolute: the extension runs in its own folder (a relative `--state-dir`).
            dir: std::path::absolute(&dir).unwrap_or(dir),
            source_extension: e.id.clone(),
            source_version: e.data_version.clone(),
        });
    }
    let mark = ReceivedMark {
        at_ms: now_ms(),
        package: id.clone(),
        source_host: meta.source_host.clone(),
        created_ms: meta.created_ms,
    };
    let mark_json =
        serde_json::to_string(&mark).map_err(|e| MoveError::BadPackage(e.to_string()))?;
    let mut store = open_store(paths)?;
    // The one step: before it this device has nothing of the move, after it everything.
    let counts = store.install_snapshot(&work, &imports, &mark_json, now_ms())?;
    drop(store);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = work.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    Ok(InstallSummary {
        package: id,
        source_host: meta.source_host,
        counts,
        files_verified: 0,
        files_missing: 0,
        files_differ: 0,
        extensions: meta.extensions,
        already_installed: false,
        builtin_server_stayed: meta.builtin_server_stays,
        confirmation_lost: false,
        elapsed_ms: 0,
    })
}

/// The arrival check, after the install: each resource's file re-hashed at its (rebased)
/// path; the same bytes get their new inode and time recorded, so the next scan sees no change;
/// a missing or different file is counted (the next scan handles it as any change). A kill
/// during it loses nothing: the next scan re-hashes what was not recorded.
async fn check_files(
    paths: &MovePaths,
    progress: &Arc<MoveProgress>,
    summary: &mut InstallSummary,
) -> Result<(), MoveError> {
    if summary.already_installed {
        return Ok(());
    }
    let paths = paths.clone();
    let p = progress.clone();
    let (verified, missing, differ) = tokio::task::spawn_blocking(move || {
        let mut store = open_store(&paths)?;
        let resources = store.resources_to_check()?;
        p.set_phase(MovePhase::Checking, "library files", resources.len() as u64);
        let (mut verified, mut missing, mut differ) = (0u64, 0u64, 0u64);
        let mut found = Vec::new();
        for r in &resources {
            match check_file(r) {
                FileCheck::Same { dev, ino, mtime_ns } => {
                    verified += 1;
                    found.push((r.id.clone(), dev, ino, mtime_ns));
                }
                FileCheck::Missing => missing += 1,
                FileCheck::Differs => differ += 1,
            }
            p.add(1);
            // Recorded in batches: a long check keeps what it learned if it is cut.
            if found.len() >= 4096 {
                store.update_resource_stats(&found)?;
                found.clear();
            }
        }
        store.update_resource_stats(&found)?;
        Ok::<_, MoveError>((verified, missing, differ))
    })
    .await
    .map_err(|e| MoveError::BadPackage(e.to_string()))??;
    summary.files_verified = verified;
    summary.files_missing = missing;
    summary.files_differ = differ;
    Ok(())
}

/// Puts every entry named `prefix…` at `dest/…` (a hard link to the verified blob, or a copy
/// across file systems, or for a second entry with the same content: two names must not
/// share one inode), then fsyncs each folder it created up to `top`: the import folder must
/// be whole and durable before the install points at it. Names were validated by the
/// transport (relative, no `..`).
fn materialize_prefix(
    package: &ReceivedPackage,
    prefix: &[u8],
    dest: &Path,
    top: &Path,
) -> Result<(), MoveError> {
    use std::os::unix::ffi::OsStrExt;
    let mut dirs = std::collections::BTreeSet::new();
    let mut linked = std::collections::HashSet::new();
    // dest and every folder above it up to the state folder (created by this move).
    let mut d = dest.to_owned();
    while d.starts_with(top) && d != top {
        dirs.insert(d.clone());
        if !d.pop() {
            break;
        }
    }
    for e in &package.manifest().entries {
        let Some(rest) = e.name.strip_prefix(prefix) else {
            continue;
        };
        let rel = Path::new(std::ffi::OsStr::from_bytes(rest));
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(MoveError::BadPackage(format!(
                "an entry named {}",
                String::from_utf8_lossy(&e.name)
            )));
        }
        let to = dest.join(rel);
        let parent = to.parent().unwrap_or(dest).to_owned();
        std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let mut up = parent.clone();
        while up.starts_with(dest) && up != dest {
            dirs.insert(up.clone());
            if !up.pop() {
                break;
            }
        }
        let from = package.path_of(e);
        let _ = std::fs::remove_file(&to);
        if !linked.insert(from.clone()) || std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(io_err(&to))?;
            std::fs::File::open(&to)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&to))?;
        }
        dirs.insert(parent);
    }
    for d in dirs {
        std::fs::File::open(&d)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&d))?;
    }
    Ok(())
}

enum FileCheck {
    Same { dev: u64, ino: u64, mtime_ns: i64 },
    Missing,
    Differs,
}

/// Whether the file at the resource's path holds the bytes the old device indexed.
fn check_file(r: &ferry_store::migration::ResourceToCheck) -> FileCheck {
    let Ok(m) = std::fs::metadata(&r.path) else {
        return FileCheck::Missing;
    };
    if !m.is_file() {
        return FileCheck::Missing;
    }
    if m.len() != r.size {
        return FileCheck::Differs;
    }
    let Ok(file) = std::fs::File::open(&r.path) else {
        return FileCheck::Missing;
    };
    let mut h = blake3::Hasher::new();
    if h.update_reader(file).is_err() {
        return FileCheck::Differs;
    }
    if *h.finalize().as_bytes() != r.blake3 {
        return FileCheck::Differs;
    }
    FileCheck::Same {
        dev: m.dev(),
        ino: m.ino(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
    }
}

// ---------------------------------------------------------------------------------------------
// Status and cancel

/// This device's side of moves.
#[derive(Debug, Clone, Serialize)]
pub struct MoveStatus {
    /// This device's Ferry moved away (and does not upload).
    pub moved_to: Option<MovedMark>,
    /// A prepared package waits to be sent (the device is frozen).
    pub outgoing: Option<OutgoingStatus>,
    /// This device received a move.
    pub migrated_from: Option<ReceivedMark>,
    /// An unfinished receive: bytes verified so far.
    pub incoming_bytes: Option<u64>,
    /// Each extension's import: pending, succeeded or failed.
    pub imports: Vec<ferry_store::migration::ImportRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutgoingStatus {
    pub package: String,
    pub entries: u64,
    pub bytes: u64,
    pub extensions: Vec<ExtensionMove>,
}

pub fn status(state_dir: &Path) -> Result<MoveStatus, MoveError> {
    let paths = MovePaths::new(state_dir);
    let store = open_store(&paths)?;
    let moved_to = store
        .device_mark("moved_to")?
        .and_then(|m| serde_json::from_str(&m).ok());
    let migrated_from = store
        .device_mark("migrated_from")?
        .and_then(|m| serde_json::from_str(&m).ok());
    let outgoing = match store.device_mark("migration_outgoing")? {
        Some(_) => std::fs::read(paths.outgoing_manifest())
            .ok()
            .and_then(|b| serde_json::from_slice::<Prepared>(&b).ok())
            .map(|p| OutgoingStatus {
                package: p.id(),
                entries: p.manifest.entries.len() as u64,
                bytes: p.manifest.total_bytes(),
                extensions: p.meta.extensions,
            }),
        None => None,
    };
    let incoming_bytes = ferry_migrate::staged_bytes(&paths.incoming())
        .ok()
        .filter(|n| *n > 0);
    let imports = store.import_records()?;
    Ok(MoveStatus {
        moved_to,
        outgoing,
        migrated_from,
        incoming_bytes,
        imports,
    })
}

/// What `cancel` undid.
#[derive(Debug, Clone, Serialize)]
pub struct Cancelled {
    pub outgoing: bool,
    pub moved_mark: bool,
    pub incoming: bool,
}

/// Ends a move on this device: a prepared package is dropped and uploads resume; a device that
/// moved away uploads again (the person chose to keep both); an unfinished receive is dropped.
pub fn cancel(state_dir: &Path) -> Result<Cancelled, MoveError> {
    let paths = MovePaths::new(state_dir);
    let _lock = take_lock(&paths)?;
    let mut store = open_store(&paths)?;
    let outgoing = store.device_mark("migration_outgoing")?.is_some();
    let moved_mark = store.device_mark("moved_to")?.is_some();
    let incoming = paths.incoming().exists();
    if !outgoing && !moved_mark && !incoming {
        return Err(MoveError::NothingToCancel);
    }
    store.set_device_mark("migration_outgoing", None)?;
    store.set_device_mark("moved_to", None)?;
    let _ = std::fs::remove_dir_all(paths.outgoing());
    let _ = std::fs::remove_file(paths.outgoing_manifest());
    let _ = std::fs::remove_dir_all(paths.incoming());
    Ok(Cancelled {
        outgoing,
        moved_mark,
        incoming,
    })
}
