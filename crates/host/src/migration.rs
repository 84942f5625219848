//! Migration (protocol version 2), the extension side of moving Ferry to a new device: ask an
//! extension how much it would export (`migration.preflight`), run its export
//! (`migration.export`, each of its `archive.append`s copied durably into an export folder),
//! and on the new device run the import waiting for it (`migration.import`) before its first
//! `process_jobs`, recording the outcome it then sees in `initialize`.
//!
//! Rules kept here:
//! - an extension exports only its own data folder (`<data_dir>/extensions/<id>/`): a path
//!   outside it, or through a symbolic link, is refused; the name in the archive is kept byte
//!   for byte, and refused when it could escape or clash (absolute, `.`/`..`/empty parts, NUL,
//!   a duplicate, a file where a folder was, or the reverse);
//! - a file is answered only once it is durable (temp file → fsync → rename → fsync folder):
//!   the answer is the progress and the backpressure;
//! - an export that is hung, cancelled, far over its estimate, or ends any way but `{}` leaves
//!   the extension's data out, and the files it did copy are removed;
//! - an import that does not answer `{}` leaves nothing behind: the data folder (but its log)
//!   and the key-value store are wiped, so the extension starts clean rather than half-imported.

use crate::session::{self, CallKind, Ended};
use crate::{CallFailure, Capability, Gate, Host, HostError, Manifest, manifest, now_ms};
use ferry_extension::protocol::{self as p, ErrorCode, RpcError, TerminateReason};
use ferry_store::extensions::{Consent, ImportState};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use tokio::sync::watch;

pub use ferry_extension::protocol::ImportSource;

/// What an extension says it would export.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MigrationPreflight {
    pub size_estimate_bytes: u64,
    pub data_version: String,
    pub compressible: bool,
}

/// One file of an export, as copied to `out_dir/<path_in_archive>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExportedFile {
    pub path_in_archive: String,
    pub size: u64,
    pub blake3: [u8; 32],
}

/// How one extension's export ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExportOutcome {
    /// It answered `{}`: every file it appended, in order.
    Exported { files: Vec<ExportedFile> },
    /// Its data is not part of the migration (the files it appended were removed).
    LeftOut { reason: String },
}

/// How a pending import ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ImportOutcome {
    /// It answered `{}`; the import folder is deleted.
    Succeeded,
    /// It did not: its data folder and key-value store were wiped, the import folder deleted.
    Failed { reason: String },
    /// Ferry stopped it (shutdown, conditions, disabled) before it could end: nothing was
    /// recorded or wiped, and it runs again before the next call.
    Interrupted { reason: String },
}

/// Why a migration call could not be made or did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("no extension {0:?} is installed")]
    NotInstalled(String),
    #[error("extension {0:?} is not enabled")]
    NotEnabled(String),
    #[error("extension {0:?} does not declare the export capability")]
    NoExportCapability(String),
    /// It answered `initialize` with version 1: it cannot take migration calls.
    #[error("extension {0:?} speaks protocol version 1; migration needs version 2")]
    SpeaksV1(String),
    /// The launch ended without an answer (crash, hang, protocol violation, ...).
    #[error("extension {id:?}: {failure}")]
    Call { id: String, failure: CallFailure },
    /// It answered the call with an error.
    #[error("extension {id:?} refused: {error}")]
    Refused { id: String, error: RpcError },
    /// Its answer does not have the documented shape.
    #[error("extension {id:?} gave a bad answer: {detail}")]
    BadAnswer { id: String, detail: String },
    #[error(transparent)]
    Host(#[from] HostError),
}

/// The protocol's view of a recorded import outcome (the `migration` field of `initialize`).
pub(crate) fn status_view(st: ferry_store::extensions::ImportStatus) -> p::ImportStatus {
    p::ImportStatus {
        status: match st.state {
            ImportState::Succeeded => p::ImportState::Success,
            ImportState::Failed => p::ImportState::Failure,
        },
        message: st.message,
        source: ImportSource {
            extension: st.source_extension,
            version: st.source_version,
        },
    }
}

/// One export in progress: what was appended, and whether the data is already left out.
pub(crate) struct ExportRun<'a> {
    pub(crate) cancel: watch::Receiver<bool>,
    pub(crate) time_budget_ms: Option<u64>,
    out_dir: PathBuf,
    /// The extension's data folder as Ferry names it, and as the file system resolves it
    /// (an extension may name its files either way).
    data_dir: PathBuf,
    data_dir_canonical: Option<PathBuf>,
    /// Most bytes the export may hold in all (`None`: no estimate given).
    limit: Option<u64>,
    total: u64,
    files: Vec<ExportedFile>,
    /// Every path appended, and every folder those paths imply.
    names: HashSet<String>,
    dirs: HashSet<String>,
    /// Folders Ferry created under `out_dir`, to remove when the data is left out.
    created_dirs: Vec<PathBuf>,
    verdict: Option<String>,
    /// The export cannot go on (too large, Ferry cannot write): end the launch now.
    pub(crate) ended: bool,
    progress: &'a (dyn Fn(u64) + Send + Sync),
}

fn rpc(code: ErrorCode, message: impl Into<String>) -> RpcError {
    RpcError::new(code, message)
}

/// Checks a `path_in_archive` against the rules and the paths already appended.
fn check_archive_path(
    name: &str,
    names: &HashSet<String>,
    dirs: &HashSet<String>,
) -> Result<(), RpcError> {
    let bad = |why: &str| {
        Err(rpc(
            ErrorCode::BadArchivePath,
            format!("path_in_archive {name:?}: {why}"),
        ))
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if name.starts_with('/') {
        return bad("is absolute");
    }
    if name.contains('\0') {
        return bad("contains NUL");
    }
    if name.len() > 4096 {
        return bad("is over 4096 bytes");
    }
    for part in name.split('/') {
        match part {
            "" => return bad("has an empty component"),
            "." | ".." => return bad("has a '.' or '..' component"),
            _ if part.len() > 255 => return bad("has a component over 255 bytes"),
            _ => {}
        }
    }
    if names.contains(name) {
        return bad("was already appended");
    }
    if dirs.contains(name) {
        return bad("is a folder of a file already appended");
    }
    let mut prefix = String::new();
    for part in name
        .split('/')
        .collect::<Vec<_>>()
        .split_last()
        .map_or(&[][..], |(_, d)| d)
    {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        if names.contains(&prefix) {
            return bad("lies under a file already appended");
        }
    }
    Ok(())
}

/// Why a copy did not complete.
enum CopyError {
    /// The source is not a regular file of the data folder (raced away, replaced).
    Source(String),
    /// Over the size the export may hold.
    TooLarge,
    /// The migration was cancelled while copying.
    Cancelled,
    /// Ferry could not write the export.
    Dest(String),
}

/// Creates the folders of `dest` under `out_dir` that do not exist, each made durable in its
/// parent; returns those it created.
fn create_dirs(out_dir: &Path, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut cur = dir;
    while cur != out_dir && !cur.is_dir() {
        missing.push(cur.to_path_buf());
        match cur.parent() {
            Some(p) => cur = p,
            None => break,
        }
    }
    missing.reverse();
    for d in &missing {
        std::fs::create_dir(d)?;
        if let Some(parent) = d.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
    }
    Ok(missing)
}

/// Copies `src` to `dest` durably: a temp file beside it, fsync, rename, fsync the folder.
/// Returns the size and BLAKE3 of the bytes copied, and the folders created.
fn copy_durably(
    src: &Path,
    out_dir: &Path,
    dest: &Path,
    room: Option<u64>,
    cancel: &watch::Receiver<bool>,
) -> Result<(u64, [u8; 32], Vec<PathBuf>), CopyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dest_err = |e: std::io::Error| CopyError::Dest(format!("{}: {e}", dest.display()));
    // O_NOFOLLOW: the file checked is the file read, even if it was swapped for a link since.
    let mut input = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(src)
        .map_err(|e| CopyError::Source(format!("{}: {e}", src.display())))?;
    let meta = input
        .metadata()
        .map_err(|e| CopyError::Source(e.to_string()))?;
    if !meta.is_file() {
        return Err(CopyError::Source(format!(
            "{} is not a regular file",
            src.display()
        )));
    }
    if room.is_some_and(|r| meta.len() > r) {
        return Err(CopyError::TooLarge);
    }
    let parent = dest.parent().unwrap_or(out_dir);
    let created = create_dirs(out_dir, parent).map_err(dest_err)?;
    let tmp = parent.join(format!(".{}.ferry-tmp", uuid::Uuid::now_v7()));
    let result = (|| {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(ferry_store::private::FILE_MODE)
            .open(&tmp)
            .map_err(dest_err)?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyError::Source(e.to_string())),
            };
            size += n as u64;
            // A file that grows while copied is held to the same limit.
            if room.is_some_and(|r| size > r) {
                return Err(CopyError::TooLarge);
            }
            if *cancel.borrow() {
                return Err(CopyError::Cancelled);
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(dest_err)?;
        }
        out.sync_all().map_err(dest_err)?;
        drop(out);
        std::fs::rename(&tmp, dest).map_err(dest_err)?;
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(dest_err)?;
        Ok((size, *hasher.finalize().as_bytes()))
    })();
    match result {
        Ok((size, hash)) => Ok((size, hash, created)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

impl<'a> ExportRun<'a> {
    fn new(
        data_dir: PathBuf,
        out_dir: PathBuf,
        limit: Option<u64>,
        cancel: watch::Receiver<bool>,
        progress: &'a (dyn Fn(u64) + Send + Sync),
    ) -> ExportRun<'a> {
        ExportRun {
            cancel,
            time_budget_ms: None,
            data_dir_canonical: data_dir.canonicalize().ok(),
            data_dir,
            out_dir,
            limit,
            total: 0,
            files: Vec::new(),
            names: HashSet::new(),
            dirs: HashSet::new(),
            created_dirs: Vec::new(),
            verdict: None,
            ended: false,
            progress,
        }
    }

    /// The data is left out, for `reason` (the first reason given wins).
    pub(crate) fn leave_out(&mut self, reason: &str) {
        if self.verdict.is_none() {
            self.verdict = Some(reason.to_owned());
        }
    }

    pub(crate) fn verdict(&self) -> Option<&str> {
        self.verdict.as_deref()
    }

    /// The file `path` names, checked to be a regular file of the data folder reached
    /// without a symbolic link (each component is looked at, not followed).
    fn resolve(&self, path: &str) -> Result<PathBuf, RpcError> {
        let outside = |why: String| {
            rpc(
                ErrorCode::OutsideDataFolder,
                format!("path {path:?}: {why}"),
            )
        };
        if path.is_empty() || path.contains('\0') {
            return Err(outside("is empty or contains NUL".into()));
        }
        let given = Path::new(path);
        let abs = if given.is_absolute() {
            given.to_path_buf()
        } else {
            // Relative to the extension's working folder, which is its data folder.
            self.data_dir.join(given)
        };
        let (base, rel) = [Some(&self.data_dir), self.data_dir_canonical.as_ref()]
            .into_iter()
            .flatten()
            .find_map(|b| {
                abs.strip_prefix(b)
                    .ok()
                    .map(|r| (b.clone(), r.to_path_buf()))
            })
            .ok_or_else(|| outside("is not inside the extension's data folder".into()))?;
        let parts: Vec<Component> = rel.components().collect();
        if parts.is_empty() {
            return Err(outside("is the data folder itself, not a file".into()));
        }
        let mut cur = base;
        for (i, part) in parts.iter().enumerate() {
            match part {
                Component::Normal(n) => cur.push(n),
                _ => return Err(outside("has a '..' component".into())),
            }
            let meta = std::fs::symlink_metadata(&cur)
                .map_err(|e| outside(format!("{}: {e}", cur.display())))?;
            if meta.file_type().is_symlink() {
                return Err(outside(format!("{} is a symbolic link", cur.display())));
            }
            let last = i + 1 == parts.len();
            if last && !meta.is_file() {
                return Err(outside("is not a regular file".into()));
            }
            if !last && !meta.is_dir() {
                return Err(outside(format!("{} is not a folder", cur.display())));
            }
        }
        Ok(cur)
    }

    /// Answers one `archive.append`: checked, copied durably, recorded.
    pub(crate) async fn append(
        &mut self,
        raw: serde_json::Value,
    ) -> Result<serde_json::Value, RpcError> {
        if let Some(v) = &self.verdict {
            return Err(rpc(ErrorCode::NotNow, format!("the export is over ({v})")));
        }
        let q: p::ArchiveAppendParams = serde_json::from_value(raw)
            .map_err(|e| rpc(ErrorCode::InvalidParams, e.to_string()))?;
        check_archive_path(&q.path_in_archive, &self.names, &self.dirs)?;
        let src = self.resolve(&q.path)?;
        let room = self.limit.map(|l| l.saturating_sub(self.total));
        let dest = self.out_dir.join(&q.path_in_archive);
        let out_dir = self.out_dir.clone();
        let cancel = self.cancel.clone();
        let copied =
            tokio::task::spawn_blocking(move || copy_durably(&src, &out_dir, &dest, room, &cancel))
                .await
                .unwrap_or_else(|_| Err(CopyError::Dest("the copy failed".into())));
        match copied {
            Ok((size, blake3, created)) => {
                self.created_dirs.extend(created);
                let mut prefix = String::new();
                let parts: Vec<&str> = q.path_in_archive.split('/').collect();
                for part in &parts[..parts.len() - 1] {
                    if !prefix.is_empty() {
                        prefix.push('/');
                    }
                    prefix.push_str(part);
                    self.dirs.insert(prefix.clone());
                }
                self.names.insert(q.path_in_archive.clone());
                self.total = self.total.saturating_add(size);
                self.files.push(ExportedFile {
                    path_in_archive: q.path_in_archive,
                    size,
                    blake3,
                });
                (self.progress)(size);
                serde_json::to_value(p::ArchiveAppendResult { size })
                    .map_err(|e| rpc(ErrorCode::Internal, e.to_string()))
            }
            Err(CopyError::Source(why)) => Err(rpc(ErrorCode::OutsideDataFolder, why)),
            Err(CopyError::Cancelled) => Err(rpc(
                ErrorCode::Cancelled,
                "the migration was cancelled; answer migration.export and exit",
            )),
            Err(CopyError::TooLarge) => {
                let limit = self.limit.unwrap_or(0);
                self.leave_out(&format!(
                    "lies about its size: the export would hold more than {limit} bytes \
                     (twice its estimate plus slack)"
                ));
                self.ended = true;
                Err(rpc(
                    ErrorCode::ExportTooLarge,
                    format!("the export would hold more than {limit} bytes; its data is left out"),
                ))
            }
            Err(CopyError::Dest(why)) => {
                self.leave_out(&format!("Ferry could not write the export: {why}"));
                self.ended = true;
                Err(rpc(
                    ErrorCode::Internal,
                    format!("Ferry could not write the export: {why}"),
                ))
            }
        }
    }

    /// Removes what this export copied (its data is left out), best effort.
    fn remove_copies(&self) {
        for f in &self.files {
            let _ = std::fs::remove_file(self.out_dir.join(&f.path_in_archive));
        }
        for d in self.created_dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Empties the data folder but its log (`stderr.log`, Ferry's own record of the extension).
fn wipe_data_folder(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name() == "stderr.log" {
            continue;
        }
        // file_type does not follow links: a link is removed, never what it points at.
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

/// A gate that stays open and a stop that never comes, for launches the caller drives itself
/// (the migration CLI): the senders are kept for the launch's length.
type OpenGate = (
    (watch::Sender<Gate>, watch::Sender<bool>),
    watch::Receiver<Gate>,
    watch::Receiver<bool>,
);

fn open_gate() -> OpenGate {
    let (g_tx, g) = watch::channel(Gate::Allow);
    let (s_tx, s) = watch::channel(false);
    ((g_tx, s_tx), g, s)
}

impl Host {
    /// Installed + enabled extensions whose manifest lists `export`.
    pub fn exporters(&self) -> Result<Vec<Manifest>, HostError> {
        let (manifests, _) = manifest::load_dirs(&self.inner.config.manifest_dirs());
        let store = self.lock_store()?;
        let mut out = Vec::new();
        for m in manifests {
            if m.has(Capability::Export) && store.consent(&m.id)?.is_some_and(|c| c.is_enabled()) {
                out.push(m);
            }
        }
        Ok(out)
    }

    fn installed(&self, id: &str) -> Result<Manifest, HostError> {
        manifest::find_in(&self.inner.config.manifest_dirs(), id)?
            .ok_or_else(|| HostError::NotInstalled(id.to_owned()))
    }

    fn enabled(&self, id: &str) -> Result<Consent, HostError> {
        self.lock_store()?
            .consent(id)?
            .filter(Consent::is_enabled)
            .ok_or_else(|| HostError::NotEnabled(id.to_owned()))
    }

    /// Asks `id` what it would export (`migration.preflight`, one launch).
    pub async fn migration_preflight(
        &self,
        id: &str,
    ) -> Result<MigrationPreflight, MigrationError> {
        let m = self.installed(id).map_err(|e| match e {
            HostError::NotInstalled(id) => MigrationError::NotInstalled(id),
            e => e.into(),
        })?;
        if !m.has(Capability::Export) {
            return Err(MigrationError::NoExportCapability(id.to_owned()));
        }
        let lock = self.call_lock(id);
        let _held = lock.lock().await;
        let c = self.enabled(id).map_err(|e| match e {
            HostError::NotEnabled(id) => MigrationError::NotEnabled(id),
            e => e.into(),
        })?;
        let mut kind = CallKind::Preflight;
        let ended = self.launch(&m, &c, &mut kind).await?;
        match ended {
            Ended::Answered(Ok(v)) => {
                let r: p::MigrationPreflightResult =
                    serde_json::from_value(v).map_err(|e| MigrationError::BadAnswer {
                        id: id.to_owned(),
                        detail: e.to_string(),
                    })?;
                Ok(MigrationPreflight {
                    size_estimate_bytes: r.size_estimate_bytes,
                    data_version: r.data_version,
                    compressible: r.compressible,
                })
            }
            Ended::Answered(Err(error)) => Err(MigrationError::Refused {
                id: id.to_owned(),
                error,
            }),
            Ended::Failed(CallFailure::NotAvailable { .. }) => {
                Err(MigrationError::SpeaksV1(id.to_owned()))
            }
            Ended::Failed(failure) => Err(MigrationError::Call {
                id: id.to_owned(),
                failure,
            }),
        }
    }

    /// Runs migration.export; copies each appended file to out_dir/<path_in_archive>;
    /// `progress` gets +bytes per file. `size_estimate` (from the preflight) bounds the export
    /// at twice it plus `export_size_slack_bytes`. `cancel` turning true ends it (the data is
    /// left out). An extension that cannot export is `LeftOut` with the reason.
    pub async fn migration_export(
        &self,
        id: &str,
        out_dir: &Path,
        size_estimate: Option<u64>,
        cancel: watch::Receiver<bool>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<ExportOutcome, HostError> {
        let m = self.installed(id)?;
        if !m.has(Capability::Export) {
            return Ok(ExportOutcome::LeftOut {
                reason: "it does not declare the export capability".into(),
            });
        }
        let lock = self.call_lock(id);
        let _held = lock.lock().await;
        let c = self.enabled(id)?;
        if *cancel.borrow() {
            return Ok(ExportOutcome::LeftOut {
                reason: "cancelled".into(),
            });
        }
        if let Err(e) = std::fs::create_dir_all(out_dir) {
            return Ok(ExportOutcome::LeftOut {
                reason: format!("cannot create {}: {e}", out_dir.display()),
            });
        }
        let data_dir = self.inner.config.data_dir.join("extensions").join(id);
        if let Err(e) = ferry_store::private::create_private_dir_all(&data_dir) {
            return Ok(ExportOutcome::LeftOut {
                reason: format!("cannot create {}: {e}", data_dir.display()),
            });
        }
        let limit = size_estimate.map(|e| {
            e.saturating_mul(2)
                .saturating_add(self.inner.config.export_size_slack_bytes)
        });
        let mut kind = CallKind::Export(Box::new(ExportRun::new(
            data_dir,
            out_dir.to_owned(),
            limit,
            cancel,
            progress,
        )));
        let ended = self.launch(&m, &c, &mut kind).await?;
        let CallKind::Export(run) = kind else {
            return Ok(ExportOutcome::LeftOut {
                reason: "internal: the export was lost".into(),
            });
        };
        let left_out = |reason: String| {
            run.remove_copies();
            ExportOutcome::LeftOut { reason }
        };
        Ok(match (run.verdict(), ended) {
            (Some(v), _) => left_out(v.to_owned()),
            // Cancelled while a copy ran, before the loop saw the signal itself.
            (None, _) if *run.cancel.borrow() => left_out("cancelled".into()),
            (None, Ended::Answered(Ok(v))) if v.is_object() => ExportOutcome::Exported {
                files: run.files.clone(),
            },
            (None, Ended::Answered(Ok(v))) => {
                left_out(format!("answered migration.export with {v}, not an object"))
            }
            (None, Ended::Answered(Err(e))) => left_out(format!("answered an error: {e}")),
            (None, Ended::Failed(f)) => left_out(f.to_string()),
        })
    }

    /// Runs any pending import for `id` now (used by the host itself before process_jobs,
    /// and by tests). `None`: no import was pending.
    pub async fn run_pending_import(&self, id: &str) -> Result<Option<ImportOutcome>, HostError> {
        let m = self.installed(id)?;
        let lock = self.call_lock(id);
        let _held = lock.lock().await;
        let c = self.enabled(id)?;
        let (_keep, gate, stop) = open_gate();
        self.import_pending(&m, &c, gate, stop).await
    }

    /// The import of `m`, if one is pending: launched, then recorded (success: the import
    /// folder deleted; failure: data folder and kv wiped too). The caller holds the call lock
    /// and has checked consent.
    pub(crate) async fn import_pending(
        &self,
        m: &Manifest,
        c: &Consent,
        gate: watch::Receiver<Gate>,
        stop: watch::Receiver<bool>,
    ) -> Result<Option<ImportOutcome>, HostError> {
        let Some(pending) = self.lock_store()?.pending_import(&m.id)? else {
            return Ok(None);
        };
        let source = ImportSource {
            extension: pending.source_extension.clone(),
            version: pending.source_version.clone(),
        };
        // Refusals before any launch record the failure but wipe nothing: the extension was
        // never asked to import, so whatever it has is its own.
        let refused = if !m.has(Capability::Import) {
            Some("it does not declare the import capability".to_owned())
        } else if !pending.dir.is_dir() {
            Some(format!(
                "the import folder {} is missing",
                pending.dir.display()
            ))
        } else if pending.dir.to_str().is_none() {
            Some(format!(
                "the import folder {} is not UTF-8, which the protocol cannot carry",
                pending.dir.display()
            ))
        } else {
            None
        };
        if let Some(reason) = refused {
            self.lock_store()?
                .finish_import(&m.id, Err(reason.clone()), now_ms())?;
            tracing::warn!(extension = %m.id, %reason, "import not run");
            return Ok(Some(ImportOutcome::Failed { reason }));
        }
        let mut kind = CallKind::Import {
            params: p::MigrationImportParams {
                dir: pending.dir.to_string_lossy().into_owned(),
                source,
            },
        };
        // The data folder holds nothing of this device yet (the import runs before the first
        // call here), unless an earlier attempt was cut (kill -9, shutdown): then it is half
        // imported, and an import on top of that would mix the two. Start clean every time.
        if let Err(e) = wipe_data_folder(&self.inner.config.data_dir.join("extensions").join(&m.id))
        {
            tracing::warn!(extension = %m.id, error = %e, "could not clear the data folder before the import");
        }
        let (init, ctx) = self.launch_parts(m, c)?;
        let ended = session::run_call(self.launch_of(m, init, ctx, gate, stop), &mut kind).await;
        let outcome = match ended {
            Ended::Answered(Ok(v)) if v.is_object() => ImportOutcome::Succeeded,
            Ended::Answered(Ok(v)) => ImportOutcome::Failed {
                reason: format!("answered migration.import with {v}, not an object"),
            },
            Ended::Answered(Err(e)) => ImportOutcome::Failed {
                reason: format!("answered an error: {e}"),
            },
            Ended::Failed(
                f @ CallFailure::Stopped {
                    reason:
                        TerminateReason::Shutdown
                        | TerminateReason::Conditions
                        | TerminateReason::Disabled,
                },
            ) => ImportOutcome::Interrupted {
                reason: f.to_string(),
            },
            Ended::Failed(f) => ImportOutcome::Failed {
                reason: f.to_string(),
            },
        };
        let now = now_ms();
        match &outcome {
            ImportOutcome::Succeeded => {
                // Recorded before the folder goes: a crash in between leaves a stray folder,
                // never an import run again on data already moved.
                self.lock_store()?.finish_import(&m.id, Ok(()), now)?;
                remove_import_dir(&pending.dir);
            }
            ImportOutcome::Failed { reason } => {
                let data_dir = self.inner.config.data_dir.join("extensions").join(&m.id);
                let mut reason = reason.clone();
                if let Err(e) = wipe_data_folder(&data_dir) {
                    reason.push_str(&format!("; wiping {} failed: {e}", data_dir.display()));
                }
                {
                    let mut s = self.lock_store()?;
                    s.wipe_extension_kv(&m.id)?;
                    s.finish_import(&m.id, Err(reason.clone()), now)?;
                }
                remove_import_dir(&pending.dir);
                tracing::warn!(extension = %m.id, %reason, "import failed; its data was wiped");
            }
            ImportOutcome::Interrupted { .. } => {}
        }
        Ok(Some(outcome))
    }

    /// One launch of `kind` for `m` with the caller's own (open) gate.
    async fn launch(
        &self,
        m: &Manifest,
        c: &Consent,
        kind: &mut CallKind<'_>,
    ) -> Result<Ended, HostError> {
        let (init, ctx) = self.launch_parts(m, c)?;
        let (_keep, gate, stop) = open_gate();
        Ok(session::run_call(self.launch_of(m, init, ctx, gate, stop), kind).await)
    }
}

fn remove_import_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove the import folder");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_are_checked_byte_for_byte() {
        let mut names = HashSet::new();
        let mut dirs = HashSet::new();
        names.insert("a/b.txt".to_owned());
        dirs.insert("a".to_owned());
        names.insert("f".to_owned());
        for ok in ["b.txt", "a/c.txt", "ä/ß", "a/b.txt.1", ".hidden", "a..b"] {
            assert!(check_archive_path(ok, &names, &dirs).is_ok(), "{ok}");
        }
        for bad in [
            "", "/etc/x", "a/../x", "./x", "a/./x", "..", "a//b", "a/", "x\0y", "a/b.txt", "a",
            "f/g",
        ] {
            let e = check_archive_path(bad, &names, &dirs).unwrap_err();
            assert_eq!(e.kind(), Some(ErrorCode::BadArchivePath), "{bad:?}");
        }
    }

    #[test]
    fn a_failed_import_leaves_only_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("stderr.log"), "log").unwrap();
        std::fs::create_dir_all(d.join("sub/deeper")).unwrap();
        std::fs::write(d.join("sub/deeper/x"), "x").unwrap();
        std::fs::write(d.join("state.json"), "{}").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "keep").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.join("link")).unwrap();
        wipe_data_folder(d).unwrap();
        let left: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["stderr.log"]);
        assert!(
            outside.path().join("keep").is_file(),
            "a link is not followed"
        );
    }
}
