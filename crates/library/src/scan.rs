//! Scanning: reconcile the index with what is on disk, incrementally and crash-safely.
//!
//! The steps, in order:
//! 1. **Walk** each scope (a folder tree) with `stat` only: no file is opened unless needed.
//!    Each folder is compared with its own index entries as soon as it is listed; the walk
//!    keeps only the folders that need work, the totals, and what disappeared, so memory grows
//!    with the number of folders and with what changed, never with the library.
//! 2. **Disappeared** = indexed resources under the scopes whose path was not seen (and not
//!    under a folder that could not be read: an unreadable folder never deletes anything).
//!    Their deletion waits until the end, so a file that moved can keep its identity.
//! 3. **Per folder** that needs work, listed again: files whose (device, inode, size, mtime)
//!    match the index are unchanged and not reread; the rest are hashed (BLAKE3, streamed) and
//!    their metadata read, on all cores, a bounded window of folders ahead of the writer. A file is taken only if it did not change while being read. A new file whose hash
//!    matches a disappeared resource is that resource, moved. The folder is regrouped and the
//!    asset ids carried over from the resources' previous assets.
//! 4. Folders are written in batches, each one SQLite transaction and one change set: a
//!    `kill -9` loses at most the batch in flight, which the next scan redoes.
//! 5. **Deletions** of what did not reappear are committed last.

use crate::classify::{self, FileKind};
use crate::group::{GroupInput, group_folder};
use crate::metadata::MetadataReader;
use ferry_core::{ResourceMetadata, ResourceType};
use ferry_store::library::{HistoryLimits, IndexWriter, ResourceRecord, ResourceStat};
use ferry_store::{Store, StoreError};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

/// Why a scan could not run at all. Everything about single files is an [`Issue`] instead.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("library folder {0} does not exist")]
    RootNotFound(PathBuf),
    #[error("{0} is not a folder")]
    RootNotADirectory(PathBuf),
    #[error("cannot read library folder {path}: {source}")]
    RootUnreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a file was passed over, or indexed with less than everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueReason {
    /// Expected: not a photo, video, audio or sidecar.
    NotMedia,
    /// Expected: a zero-byte file has nothing to back up.
    Empty,
    NotRegularFile,
    BrokenSymlink,
    SymlinkLoop,
    Unreadable,
    UnreadableFolder,
    /// Gone between listing and reading.
    Vanished,
    /// Still changing while read (being copied or written): indexed once it is stable.
    Unstable,
    /// Indexed, but its metadata could not be read (truncated or corrupt).
    BadMetadata,
    /// A folder Ferry skips on purpose (trash, thumbnails, its own state).
    ExcludedFolder,
}

impl IssueReason {
    /// Expected outcomes that are counted but not worth a line each.
    pub fn is_expected(self) -> bool {
        matches!(
            self,
            IssueReason::NotMedia | IssueReason::Empty | IssueReason::ExcludedFolder
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Issue {
    #[serde(flatten, with = "ferry_core::path_text::path")]
    pub path: PathBuf,
    pub reason: IssueReason,
    pub detail: String,
}

/// Knobs of a scan. The defaults suit a person's library on a small machine.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    pub history: HistoryLimits,
    /// Resources written per transaction before committing (bounds work lost to a crash).
    pub batch_max_resources: usize,
    /// Longest a batch stays open, so changes reach extensions promptly during long scans.
    pub batch_max_ms: u64,
    /// Hashing threads; 0 means one per core.
    pub threads: usize,
    /// Folders never indexed (Ferry's own state directory, when it lies inside a library).
    pub exclude: Vec<PathBuf>,
    /// Issues kept in the report; the counts are always complete.
    pub max_reported_issues: usize,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            history: HistoryLimits::default(),
            batch_max_resources: 2000,
            batch_max_ms: 2000,
            threads: 0,
            exclude: Vec::new(),
            max_reported_issues: 1000,
        }
    }
}

/// Progress, for displays and for tests that synchronise on a scan's steps.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ScanEvent {
    Walked {
        folders: u64,
        media_files: u64,
        bytes: u64,
    },
    Indexing {
        files_done: u64,
        files_to_read: u64,
        bytes_done: u64,
        bytes_to_read: u64,
    },
    Committed {
        token: Option<String>,
        resources_written: u64,
    },
}

/// What a scan did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanReport {
    pub scopes: Vec<String>,
    pub folders: u64,
    pub media_files: u64,
    pub new_resources: u64,
    pub modified_resources: u64,
    pub moved_resources: u64,
    pub unchanged_resources: u64,
    pub deleted_resources: u64,
    pub bytes_read: u64,
    pub counts_by_reason: BTreeMap<IssueReason, u64>,
    pub issues: Vec<Issue>,
    /// The newest change token after the scan.
    pub change_token: String,
    pub elapsed_ms: u64,
}

impl ScanReport {
    fn issue(&mut self, limit: usize, path: &Path, reason: IssueReason, detail: impl Into<String>) {
        *self.counts_by_reason.entry(reason).or_default() += 1;
        if !reason.is_expected() && self.issues.len() < limit {
            self.issues.push(Issue {
                path: path.to_owned(),
                reason,
                detail: detail.into(),
            });
        }
    }
}

/// Folder names that hold no originals: OS trash, NAS thumbnails, caches.
const EXCLUDED_FOLDER_NAMES: &[&str] = &[
    "@eaDir",
    ".thumbnails",
    ".Trash",
    ".Trashes",
    "lost+found",
    ".git",
    ".ferry",
];

#[derive(Debug, Clone)]
struct FileObs {
    path: PathBuf,
    name: String,
    kind: FileKind,
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
}

impl FileObs {
    fn from_meta(path: PathBuf, name: String, kind: FileKind, m: &Metadata) -> FileObs {
        FileObs {
            path,
            name,
            kind,
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        }
    }

    fn same_stat(&self, r: &ResourceStat) -> bool {
        self.dev == r.dev && self.ino == r.ino && self.size == r.size && self.mtime_ns == r.mtime_ns
    }
}

#[derive(Debug)]
struct FolderObs {
    dir: PathBuf,
    files: Vec<FileObs>,
    /// Files present but not readable now: their index entries are kept as they are.
    kept_paths: Vec<PathBuf>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Scans `scopes` (folder trees) into the index. `on_event` sees progress.
pub fn scan(
    store: &mut Store,
    scopes: &[PathBuf],
    opts: &ScanOptions,
    on_event: &mut dyn FnMut(&ScanEvent),
) -> Result<ScanReport, ScanError> {
    let started = Instant::now();
    let mut report = ScanReport::default();
    let mut roots = Vec::new();
    for scope in scopes {
        let root = match fs::canonicalize(scope) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ScanError::RootNotFound(scope.clone()));
            }
            Err(e) => {
                return Err(ScanError::RootUnreadable {
                    path: scope.clone(),
                    source: e,
                });
            }
        };
        if !root.is_dir() {
            return Err(ScanError::RootNotADirectory(scope.clone()));
        }
        if let Err(e) = fs::read_dir(&root) {
            return Err(ScanError::RootUnreadable {
                path: scope.clone(),
                source: e,
            });
        }
        roots.push(root);
    }
    // A scope inside another is covered by it: walk each folder once.
    roots.sort();
    roots.dedup();
    let nested: Vec<PathBuf> = roots
        .iter()
        .filter(|r| roots.iter().any(|o| o != *r && r.starts_with(o)))
        .cloned()
        .collect();
    roots.retain(|r| !nested.contains(r));
    report.scopes = roots
        .iter()
        .map(|r| r.to_string_lossy().into_owned())
        .collect();
    let excluded: Vec<PathBuf> = opts
        .exclude
        .iter()
        .filter_map(|p| fs::canonicalize(p).ok())
        .collect();

    // 1. + 2. Walk, one folder at a time, comparing each with its index entries as it is
    // listed: what remains is the list of folders that need work, the totals, and the
    // resources that disappeared — never the whole library.
    let limit = opts.max_reported_issues;
    let mut pass = WalkPass::default();
    let mut incomplete: Vec<PathBuf> = Vec::new();
    for root in &roots {
        walk(
            root,
            &excluded,
            &mut incomplete,
            &mut report,
            limit,
            &mut |folder, complete, report| pass.compare(store, folder, complete, report),
        )?;
    }
    // Folders the index knows that the walk did not see (deleted, renamed, excluded now):
    // everything in them disappeared, unless it lies under a folder that could not be read.
    for root in &roots {
        for dir in store.resource_dirs_under(root)? {
            if pass.seen_dirs.contains(&dir) || incomplete.iter().any(|d| dir.starts_with(d)) {
                continue;
            }
            for r in store.resource_stats_in_dir(&dir)? {
                pass.disappeared.entry(r.blake3).or_default().push(r);
            }
        }
    }
    report.folders = pass.seen_dirs.len() as u64;
    report.media_files = pass.media_files;
    on_event(&ScanEvent::Walked {
        folders: report.folders,
        media_files: report.media_files,
        bytes: pass.bytes,
    });
    let WalkPass {
        dirty,
        mut disappeared,
        files_to_read,
        bytes_to_read,
        seen_dirs,
        ..
    } = pass;
    drop(seen_dirs);
    let mut progress = Progress {
        files_to_read,
        bytes_to_read,
        ..Progress::default()
    };
    let mut claims = AssetClaims {
        at_risk: disappeared
            .values()
            .flatten()
            .map(|r| r.asset_id.clone())
            .collect(),
        taken: HashSet::new(),
    };

    // 3. + 4. The folders that need work, read on all cores and written in folder order: a
    // window of folders runs ahead of the writer (bounded in files and in folders), so
    // memory holds one window, not the library.
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.threads
    };
    let mut writer = store.index_writer()?;
    let mut batch_written = 0u64;
    let mut batch_started = Instant::now();
    // Files to read, tagged with their folder's place in the window; the readers share the
    // receiving end. The window bounds how much is queued.
    let (jobs_tx, jobs_rx) = mpsc::channel::<(u64, FileObs)>();
    let jobs_rx = std::sync::Mutex::new(jobs_rx);
    let outcome: Result<(), ScanError> = std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<(u64, ReadResult)>();
        for _ in 0..threads {
            let tx = tx.clone();
            let jobs_rx = &jobs_rx;
            s.spawn(move || {
                let mut buf = vec![0u8; READ_BUF];
                let mut reader = MetadataReader::new();
                loop {
                    let next = jobs_rx.lock().ok().and_then(|q| q.recv().ok());
                    let Some((seq, obs)) = next else { break };
                    if tx
                        .send((seq, read_file(obs, &mut buf, &mut reader)))
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut window: VecDeque<InFlight> = VecDeque::new();
        // `seq` of the window's first folder; folder `seq` sits at `seq - front_seq`.
        let mut front_seq = 0u64;
        let mut files_ahead = 0usize;
        let mut dirty = dirty.into_iter();
        let result = (|| {
            loop {
                // Fill the window: list the next folders again (they may have changed since
                // the walk; the walk only chose them) and queue what they need read.
                while files_ahead < MAX_FILES_AHEAD && window.len() < MAX_FOLDERS_AHEAD {
                    let Some(dir) = dirty.next() else { break };
                    let Some(folder) = relist(&dir, &excluded) else {
                        continue;
                    };
                    let stats: HashMap<PathBuf, ResourceStat> = writer
                        .store()
                        .resource_stats_in_dir(&dir)?
                        .into_iter()
                        .map(|r| (r.path.clone(), r))
                        .collect();
                    let seq = front_seq + window.len() as u64;
                    let mut expected = 0;
                    for obs in &folder.files {
                        if !stats.get(&obs.path).is_some_and(|r| obs.same_stat(r)) {
                            expected += 1;
                            // A closed queue means the readers are gone: the results say so.
                            let _ = jobs_tx.send((seq, obs.clone()));
                        }
                    }
                    files_ahead += expected;
                    window.push_back(InFlight {
                        folder,
                        expected,
                        results: Vec::new(),
                    });
                }
                let Some(front) = window.front() else { break };
                if front.results.len() < front.expected {
                    let Ok((seq, res)) = rx.recv() else { break };
                    progress.files_done += 1;
                    progress.bytes_done += match &res {
                        Ok(f) => f.obs.size,
                        Err((obs, _, _)) => obs.size,
                    };
                    on_event(&progress.event());
                    if let Some(slot) = seq
                        .checked_sub(front_seq)
                        .and_then(|i| window.get_mut(i as usize))
                    {
                        slot.results.push(res);
                    }
                    continue;
                }
                let Some(done) = window.pop_front() else {
                    break;
                };
                front_seq += 1;
                files_ahead -= done.expected;
                batch_written += index_folder(
                    &mut writer,
                    &done.folder,
                    done.results,
                    &mut disappeared,
                    &mut claims,
                    &mut report,
                    limit,
                )?;
                if batch_written as usize >= opts.batch_max_resources
                    || batch_started.elapsed().as_millis() as u64 >= opts.batch_max_ms
                {
                    crate::failpoint::hit("scan.before_commit");
                    let token = writer.commit_in_place(now_ms(), opts.history)?;
                    crate::failpoint::hit("scan.after_commit");
                    on_event(&ScanEvent::Committed {
                        token,
                        resources_written: batch_written,
                    });
                    batch_written = 0;
                    batch_started = Instant::now();
                }
            }
            Ok(())
        })();
        // On an error (or the end), close the queue: the readers finish what they hold.
        drop(jobs_tx);
        drop(rx);
        result
    });
    outcome?;

    // 5. What did not reappear is gone.
    for records in disappeared.values() {
        for r in records {
            writer.delete_resource(&r.id)?;
            report.deleted_resources += 1;
            batch_written += 1;
        }
    }
    crate::failpoint::hit("scan.before_commit");
    let token = writer.commit(now_ms(), opts.history)?;
    crate::failpoint::hit("scan.after_commit");
    on_event(&ScanEvent::Committed {
        token,
        resources_written: batch_written,
    });
    report.change_token = store.current_change_token()?;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

#[derive(Debug, Default)]
struct Progress {
    files_done: u64,
    files_to_read: u64,
    bytes_done: u64,
    bytes_to_read: u64,
}

impl Progress {
    fn event(&self) -> ScanEvent {
        ScanEvent::Indexing {
            files_done: self.files_done,
            files_to_read: self.files_to_read,
            bytes_done: self.bytes_done,
            bytes_to_read: self.bytes_to_read,
        }
    }
}

/// Most files queued for reading ahead of the folder being written.
const MAX_FILES_AHEAD: usize = 4096;
/// Most folders listed ahead of the folder being written (many small folders).
const MAX_FOLDERS_AHEAD: usize = 256;

/// Asset ids kept across folders. An asset's resources share its folder, so only a moved
/// resource can carry its asset id into another folder's group: those ids (the assets of the
/// disappeared resources) are `at_risk`, and the first group to keep one `taken`s it. Both
/// sets grow with what moved, not with the library.
struct AssetClaims {
    at_risk: HashSet<String>,
    taken: HashSet<String>,
}

/// A folder whose files are being read, waiting for its turn to be written.
struct InFlight {
    folder: FolderObs,
    expected: usize,
    results: Vec<ReadResult>,
}

/// What the walk keeps: bounded by the number of folders and by what changed.
#[derive(Default)]
struct WalkPass {
    /// Every folder listed (to find the index's folders that are gone).
    seen_dirs: HashSet<PathBuf>,
    /// Folders with something to read, write or delete, in walk order.
    dirty: Vec<PathBuf>,
    disappeared: HashMap<[u8; 32], Vec<ResourceStat>>,
    media_files: u64,
    bytes: u64,
    files_to_read: u64,
    bytes_to_read: u64,
}

impl WalkPass {
    /// Compares one listed folder with its index entries. `complete`: the listing saw every
    /// entry (an entry that failed to list must not make its index entry disappear).
    fn compare(
        &mut self,
        store: &Store,
        folder: FolderObs,
        complete: bool,
        report: &mut ScanReport,
    ) -> Result<(), ScanError> {
        self.media_files += folder.files.len() as u64;
        self.bytes += folder.files.iter().map(|f| f.size).sum::<u64>();
        let listed: HashMap<&Path, &FileObs> =
            folder.files.iter().map(|o| (o.path.as_path(), o)).collect();
        let kept: HashSet<&Path> = folder.kept_paths.iter().map(PathBuf::as_path).collect();
        let (mut indexed, mut unchanged) = (0usize, 0usize);
        let mut unchanged_bytes = 0u64;
        for r in store.resource_stats_in_dir(&folder.dir)? {
            indexed += 1;
            match listed.get(r.path.as_path()) {
                Some(obs) if obs.same_stat(&r) => {
                    unchanged += 1;
                    unchanged_bytes += r.size;
                }
                Some(_) => {}
                None if kept.contains(r.path.as_path()) || !complete => {}
                None => self.disappeared.entry(r.blake3).or_default().push(r),
            }
        }
        let to_read = folder.files.len() - unchanged;
        self.files_to_read += to_read as u64;
        self.bytes_to_read += folder.files.iter().map(|f| f.size).sum::<u64>() - unchanged_bytes;
        // A folder whose files all match its entries, one for one, is left as it is.
        let untouched = to_read == 0
            && folder.kept_paths.is_empty()
            && indexed == unchanged
            && unchanged == folder.files.len();
        if untouched {
            report.unchanged_resources += folder.files.len() as u64;
        } else {
            self.dirty.push(folder.dir.clone());
        }
        self.seen_dirs.insert(folder.dir);
        Ok(())
    }
}

/// Lists `dir` again for indexing (the walk already reported its issues, and chose it).
fn relist(dir: &Path, excluded: &[PathBuf]) -> Option<FolderObs> {
    let mut scratch = ScanReport::default();
    let mut visited = HashSet::new();
    list_folder(dir, excluded, &mut visited, &mut scratch, 0)
        .ok()
        .map(|(folder, _, _)| folder)
}

/// Walks `root` depth-first in name order, handing each folder to `on_folder` as soon as it
/// is listed (with whether its listing was complete).
fn walk(
    root: &Path,
    excluded: &[PathBuf],
    incomplete: &mut Vec<PathBuf>,
    report: &mut ScanReport,
    limit: usize,
    on_folder: &mut dyn FnMut(FolderObs, bool, &mut ScanReport) -> Result<(), ScanError>,
) -> Result<(), ScanError> {
    let mut visited: HashSet<(u64, u64)> = HashSet::new();
    if let Ok(m) = fs::metadata(root) {
        visited.insert((m.dev(), m.ino()));
    }
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        match list_folder(&dir, excluded, &mut visited, report, limit) {
            Ok((folder, mut subdirs, complete)) => {
                if !complete {
                    incomplete.push(dir);
                }
                // Depth-first, in name order.
                subdirs.reverse();
                stack.extend(subdirs);
                on_folder(folder, complete, report)?;
            }
            Err(e) => {
                report.issue(limit, &dir, IssueReason::UnreadableFolder, e.to_string());
                incomplete.push(dir);
            }
        }
    }
    Ok(())
}

/// Lists one folder: its media files, the entries kept as indexed (present, unreadable now),
/// its subfolders to walk, and whether every entry could be listed.
fn list_folder(
    dir: &Path,
    excluded: &[PathBuf],
    visited: &mut HashSet<(u64, u64)>,
    report: &mut ScanReport,
    limit: usize,
) -> io::Result<(FolderObs, Vec<PathBuf>, bool)> {
    let entries = fs::read_dir(dir)?;
    let mut complete = true;
    let mut names: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries {
        match entry {
            Ok(e) => names.push((e.file_name().to_string_lossy().into_owned(), e.path())),
            Err(e) => {
                report.issue(limit, dir, IssueReason::UnreadableFolder, e.to_string());
                complete = false;
            }
        }
    }
    names.sort();
    let mut folder = FolderObs {
        dir: dir.to_owned(),
        files: Vec::new(),
        kept_paths: Vec::new(),
    };
    let mut subdirs = Vec::new();
    for (name, path) in names {
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                let is_link = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
                let reason = if e.raw_os_error() == Some(40) {
                    IssueReason::SymlinkLoop
                } else if is_link && e.kind() == io::ErrorKind::NotFound {
                    IssueReason::BrokenSymlink
                } else if e.kind() == io::ErrorKind::NotFound {
                    IssueReason::Vanished
                } else {
                    folder.kept_paths.push(path.clone());
                    IssueReason::Unreadable
                };
                report.issue(limit, &path, reason, e.to_string());
                continue;
            }
        };
        if meta.is_dir() {
            if EXCLUDED_FOLDER_NAMES.contains(&name.as_str())
                || name.starts_with(".Trash-")
                || excluded
                    .iter()
                    .any(|x| fs::canonicalize(&path).is_ok_and(|p| &p == x))
            {
                report.issue(limit, &path, IssueReason::ExcludedFolder, "skipped folder");
                continue;
            }
            if !visited.insert((meta.dev(), meta.ino())) {
                report.issue(
                    limit,
                    &path,
                    IssueReason::SymlinkLoop,
                    "folder already visited (a link back into the library)",
                );
                continue;
            }
            subdirs.push(path);
            continue;
        }
        if !meta.is_file() {
            report.issue(
                limit,
                &path,
                IssueReason::NotRegularFile,
                "not a regular file",
            );
            continue;
        }
        let kind = match classify::kind_from_name(&name) {
            Some(k) => Some(k),
            None => sniff_kind(&path),
        };
        let Some(kind) = kind else {
            report.issue(limit, &path, IssueReason::NotMedia, "not a media file");
            continue;
        };
        if meta.len() == 0 {
            report.issue(limit, &path, IssueReason::Empty, "zero bytes");
            continue;
        }
        folder
            .files
            .push(FileObs::from_meta(path, name, kind, &meta));
    }
    Ok((folder, subdirs, complete))
}

/// A file whose name says nothing: keep it if its bytes are media.
fn sniff_kind(path: &Path) -> Option<FileKind> {
    let mut head = [0u8; classify::SNIFF_LEN];
    let mut f = File::open(path).ok()?;
    let n = f.read(&mut head).ok()?;
    classify::kind_from_content_type(classify::sniff(&head[..n])?)
}

type ReadResult = Result<ReadFile, (FileObs, IssueReason, String)>;

/// A file read: its hash, sniffed type and metadata.
struct ReadFile {
    obs: FileObs,
    blake3: [u8; 32],
    content_type: String,
    metadata: ResourceMetadata,
    metadata_problem: Option<String>,
}

const READ_BUF: usize = 256 * 1024;
/// How much of a file's start is kept for sniffing and in-memory metadata parsing.
const HEAD_KEEP: usize = 256 * 1024;
const STABLE_ATTEMPTS: usize = 3;

/// Hashes a file, taking it only if it did not change while being read.
fn read_file(
    mut obs: FileObs,
    buf: &mut [u8],
    meta_reader: &mut MetadataReader,
) -> Result<ReadFile, (FileObs, IssueReason, String)> {
    for _ in 0..STABLE_ATTEMPTS {
        let mut f = match File::open(&obs.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err((obs, IssueReason::Vanished, e.to_string()));
            }
            Err(e) => return Err((obs, IssueReason::Unreadable, e.to_string())),
        };
        let before = match f.metadata() {
            Ok(m) => m,
            Err(e) => return Err((obs, IssueReason::Unreadable, e.to_string())),
        };
        let mut hasher = blake3::Hasher::new();
        // The first bytes are kept: type sniffing and (for JPEGs) metadata read them from
        // memory instead of opening the file again.
        let mut head: Vec<u8> = Vec::with_capacity((before.len() as usize).min(HEAD_KEEP));
        let mut total = 0u64;
        loop {
            let n = match f.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err((obs, IssueReason::Unreadable, e.to_string())),
            };
            if head.len() < HEAD_KEEP {
                let take = (HEAD_KEEP - head.len()).min(n);
                head.extend_from_slice(&buf[..take]);
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        let after = match fs::metadata(&obs.path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err((obs, IssueReason::Vanished, e.to_string()));
            }
            Err(e) => return Err((obs, IssueReason::Unreadable, e.to_string())),
        };
        let stable = |a: &Metadata, b: &Metadata| {
            a.dev() == b.dev()
                && a.ino() == b.ino()
                && a.len() == b.len()
                && a.mtime() == b.mtime()
                && a.mtime_nsec() == b.mtime_nsec()
        };
        if stable(&before, &after) && total == after.len() {
            obs = FileObs::from_meta(obs.path, obs.name, obs.kind, &after);
            if total == 0 {
                return Err((obs, IssueReason::Empty, "zero bytes".into()));
            }
            let content_type = classify::sniff(&head)
                .unwrap_or_else(|| classify::fallback_content_type(obs.kind, &obs.name))
                .to_owned();
            let whole = head.len() as u64 == total;
            let read = meta_reader.read_with_head(&obs.path, &content_type, Some((&head, whole)));
            return Ok(ReadFile {
                obs,
                blake3: *hasher.finalize().as_bytes(),
                content_type,
                metadata: read.metadata,
                metadata_problem: read.problem,
            });
        }
        obs = FileObs::from_meta(obs.path, obs.name, obs.kind, &after);
    }
    Err((
        obs,
        IssueReason::Unstable,
        "still changing while being read; will index it once it is stable".into(),
    ))
}

/// One file of the folder after reading, before grouping.
struct Current {
    record: ResourceRecord,
    /// Its id was made by this scan: insert without looking for an old row.
    is_new: bool,
    /// The asset it belonged to before this scan (kept if the grouping allows).
    previous_asset: Option<String>,
}

#[allow(clippy::too_many_arguments)]
fn index_folder(
    writer: &mut IndexWriter<'_>,
    folder: &FolderObs,
    results: Vec<ReadResult>,
    disappeared: &mut HashMap<[u8; 32], Vec<ResourceStat>>,
    claims: &mut AssetClaims,
    report: &mut ScanReport,
    limit: usize,
) -> Result<u64, ScanError> {
    let now = now_ms();
    // An asset id is kept by at most one group: within the folder this set says which are
    // taken, across folders `claims`.
    let mut claimed_here: HashSet<String> = HashSet::new();
    let mut existing: HashMap<PathBuf, ResourceRecord> = writer
        .store()
        .resources_in_dir(&folder.dir)?
        .into_iter()
        .map(|r| (r.path.clone(), r))
        .collect();
    // The walk decided what disappeared from an earlier listing of this folder: a file that
    // was missing then (being replaced, moved out and back) and is here now keeps its entry,
    // so it must not be deleted at the end nor handed to a copy elsewhere as "moved".
    let present: HashSet<&Path> = folder
        .files
        .iter()
        .map(|o| o.path.as_path())
        .chain(folder.kept_paths.iter().map(PathBuf::as_path))
        .collect();
    for r in existing.values() {
        if present.contains(r.path.as_path()) {
            forget_disappeared(disappeared, &r.blake3, &r.id);
        }
    }
    let mut current: Vec<Current> = Vec::new();
    let mut read: Vec<ReadFile> = Vec::new();
    for res in results {
        match res {
            Ok(f) => read.push(f),
            Err((obs, reason, detail)) => report.issue(limit, &obs.path, reason, detail),
        }
    }
    let read_paths: HashSet<PathBuf> = read.iter().map(|f| f.obs.path.clone()).collect();
    for obs in &folder.files {
        match existing.remove(&obs.path) {
            Some(r)
                if obs.dev == r.dev
                    && obs.ino == r.ino
                    && obs.size == r.size
                    && obs.mtime_ns == r.mtime_ns
                    && !read_paths.contains(&obs.path) =>
            {
                report.unchanged_resources += 1;
                current.push(Current {
                    previous_asset: Some(r.asset_id.clone()),
                    record: r,
                    is_new: false,
                });
            }
            // Modified (its prior record is needed below), or a file that failed to read:
            // its entry stays as it is until it can be read.
            Some(r) => {
                existing.insert(r.path.clone(), r);
            }
            None => {}
        }
    }
    // Present but unreadable now: keep their entries as they are.
    for p in &folder.kept_paths {
        if let Some(r) = existing.remove(p) {
            current.push(Current {
                previous_asset: Some(r.asset_id.clone()),
                record: r,
                is_new: false,
            });
        }
    }

    read.sort_by(|a, b| a.obs.path.cmp(&b.obs.path));

    for f in read {
        report.bytes_read += f.obs.size;
        if let Some(problem) = &f.metadata_problem {
            report.issue(
                limit,
                &f.obs.path,
                IssueReason::BadMetadata,
                problem.clone(),
            );
        }
        let (id, previous_asset) = if let Some(prior) = existing.remove(&f.obs.path) {
            report.modified_resources += 1;
            (prior.id, Some(prior.asset_id))
        } else if let Some(moved) = take_disappeared(disappeared, &f.blake3, f.obs.size) {
            report.moved_resources += 1;
            (moved.id, Some(moved.asset_id))
        } else {
            report.new_resources += 1;
            (uuid::Uuid::now_v7().to_string(), None)
        };
        current.push(Current {
            is_new: previous_asset.is_none(),
            record: ResourceRecord {
                id,
                asset_id: String::new(),
                resource_type: ResourceType::Photo,
                path: f.obs.path,
                dev: f.obs.dev,
                ino: f.obs.ino,
                size: f.obs.size,
                mtime_ns: f.obs.mtime_ns,
                content_type: f.content_type,
                blake3: f.blake3,
                metadata: f.metadata,
                indexed_ms: now,
            },
            previous_asset,
        });
    }
    // Files whose read failed this time keep their entries (and place in the grouping).
    for obs in &folder.files {
        if let Some(r) = existing.remove(&obs.path) {
            current.push(Current {
                previous_asset: Some(r.asset_id.clone()),
                record: r,
                is_new: false,
            });
        }
    }
    current.sort_by(|a, b| a.record.path.cmp(&b.record.path));

    // Regroup the folder and carry asset ids over.
    let inputs: Vec<GroupInput> = current
        .iter()
        .map(|c| {
            let name = c
                .record
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let kind = classify::kind_from_name(&name)
                .or_else(|| classify::kind_from_content_type(&c.record.content_type))
                .unwrap_or(FileKind::Photo);
            GroupInput {
                name,
                kind,
                content_identifier: c.record.metadata.content_identifier.clone(),
                capture_epoch_s: c.record.metadata.capture_epoch_s(),
            }
        })
        .collect();
    let groups = group_folder(&inputs);
    let mut written = 0u64;
    for g in groups {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, _) in &g.members {
            if let Some(a) = current[*i].previous_asset.as_deref() {
                *votes.entry(a).or_default() += 1;
            }
        }
        let mut ranked: Vec<(&str, usize)> = votes.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let kept = ranked
            .iter()
            .map(|(a, _)| a.to_string())
            .find(|a| !claimed_here.contains(a) && !claims.taken.contains(a));
        let asset_id = match kept {
            Some(id) => {
                writer.put_asset(&id, &folder.dir, now)?;
                id
            }
            None => {
                let id = uuid::Uuid::now_v7().to_string();
                writer.insert_asset(&id, &folder.dir, now)?;
                id
            }
        };
        if claims.at_risk.contains(&asset_id) {
            claims.taken.insert(asset_id.clone());
        }
        claimed_here.insert(asset_id.clone());
        for (i, t) in g.members {
            let c = &current[i];
            let mut r = c.record.clone();
            r.asset_id = asset_id.clone();
            r.resource_type = t;
            if c.is_new {
                writer.insert_resource(&r, now)?;
                written += 1;
            } else if r != c.record || c.previous_asset.as_deref() != Some(asset_id.as_str()) {
                writer.put_resource(&r, now)?;
                written += 1;
            }
        }
    }
    Ok(written)
}

fn take_disappeared(
    disappeared: &mut HashMap<[u8; 32], Vec<ResourceStat>>,
    blake3: &[u8; 32],
    size: u64,
) -> Option<ResourceStat> {
    let list = disappeared.get_mut(blake3)?;
    // Gone when its folder was walked, but perhaps back since (its folder is written later):
    // only a resource still gone may move.
    let pos = list
        .iter()
        .position(|r| r.size == size && fs::symlink_metadata(&r.path).is_err())?;
    Some(list.swap_remove(pos))
}

/// Takes resource `id` (recorded with hash `blake3`) off the disappeared list.
fn forget_disappeared(
    disappeared: &mut HashMap<[u8; 32], Vec<ResourceStat>>,
    blake3: &[u8; 32],
    id: &str,
) {
    if let Some(list) = disappeared.get_mut(blake3) {
        list.retain(|r| r.id != id);
    }
}
