//! `ferry backup DIR`: index a folder, send every resource the server lacks through the
//! transfer engine under the current conditions, then verify every resource against the
//! server's own digests. The command line's one long-running operation, as a library call
//! with a live [`Progress`] for displays.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ferry_core::policy::{Decision, WaitReason};
use ferry_library::{ScanError, ScanEvent, ScanOptions};
use ferry_store::Store;
use ferry_store::library::hex;
use serde::Serialize;
use tokio::sync::watch;

use crate::extension::{self, BundledConsent};
use crate::server::{ServerClient, ServerError};
use crate::tracked::{SharedStore, Tally, Tracked};

/// Where to send the backup.
#[derive(Debug, Clone)]
pub enum Target {
    /// A ferry-server started in-process on loopback, storing in the state folder.
    Embedded,
    Remote {
        url: String,
        token: String,
        /// How its certificate is trusted (`ca_file`, `cert_sha256`): by every part that
        /// talks to it — the check client, the transfer engine (for its origin only) and the
        /// bundled extension.
        trust: ferry_tls::ServerTrust,
    },
}

#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The folders to back up (at least one).
    pub dirs: Vec<PathBuf>,
    pub state_dir: PathBuf,
    pub target: Target,
    /// Obey the device's conditions (network, power, ...) through this policy; `None`: go now.
    pub policy: Option<ferry_core::Policy>,
    /// Where the conditions the policy judges are read from.
    pub observer: ferry_conditions::ObserverConfig,
    pub max_concurrent: usize,
    /// Keep going as files arrive, until `stop` is set. Without it the run ends when
    /// everything is sent, or at once when the conditions say wait.
    pub watch: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The folder to back up is not there or not readable: the user gave a wrong path.
    #[error(transparent)]
    Folder(ScanError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("cannot open Ferry's state in {dir}: {detail}")]
    State { dir: PathBuf, detail: String },
    #[error("indexing failed: {0}")]
    Scan(ScanError),
    #[error("job store: {0}")]
    Jobs(#[from] ferry_store::JobStoreError),
    #[error("library index: {0}")]
    Index(#[from] ferry_store::StoreError),
    #[error("transfer engine: {0}")]
    Engine(#[from] ferry_transfer::EngineError),
    #[error("{0}")]
    Extension(#[from] extension::ExtensionError),
    /// This device's Ferry moved to another device, or a move is under way: it must not
    /// upload (the new device does).
    #[error("{0}")]
    Moved(String),
    #[error("internal: {0}")]
    Internal(String),
}

/// What a backup is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Starting,
    Indexing,
    Checking,
    Sending,
    Verifying,
    Watching,
    Done,
}

impl Phase {
    /// The phase's name as JSON spells it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Indexing => "indexing",
            Phase::Checking => "checking",
            Phase::Sending => "sending",
            Phase::Verifying => "verifying",
            Phase::Watching => "watching",
            Phase::Done => "done",
        }
    }
}

/// Milliseconds spent in each finished phase, and the running phase with when it began.
type PhaseTimes = (
    BTreeMap<&'static str, u64>,
    Option<(Phase, std::time::Instant)>,
);

/// Live counters of one backup; cheap to read from another thread.
#[derive(Debug, Default)]
pub struct Progress {
    phase: Mutex<Phase>,
    decision: Mutex<Option<Decision>>,
    conditions: Mutex<Option<tokio::sync::watch::Receiver<ferry_core::Conditions>>>,
    server_url: Mutex<String>,
    pub index_files_done: AtomicU64,
    pub index_files_total: AtomicU64,
    pub index_bytes_done: AtomicU64,
    pub index_bytes_total: AtomicU64,
    pub resources_total: AtomicU64,
    pub bytes_total: AtomicU64,
    pub already_stored: AtomicU64,
    pub already_stored_bytes: AtomicU64,
    pub to_send: AtomicU64,
    pub bytes_to_send: AtomicU64,
    pub tally: Arc<Tally>,
    /// Where the time went: milliseconds spent in each phase so far, and the phase running
    /// now with when it began.
    phase_times: Mutex<PhaseTimes>,
}

/// A consistent-enough copy of [`Progress`] for one display frame or JSON event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Snapshot {
    pub phase: Phase,
    pub index_files_done: u64,
    pub index_files_total: u64,
    pub index_bytes_done: u64,
    pub index_bytes_total: u64,
    pub resources_total: u64,
    pub bytes_total: u64,
    pub already_stored: u64,
    pub to_send: u64,
    pub bytes_to_send: u64,
    pub sent: u64,
    pub bytes_sent: u64,
    pub failed: u64,
    pub in_flight: u64,
    /// Why uploads wait now, if they do (conditions); jobs waiting for it.
    pub waiting_reason: Option<&'static str>,
    pub waiting: u64,
}

impl Progress {
    pub fn phase(&self) -> Phase {
        self.phase.lock().map(|p| *p).unwrap_or_default()
    }

    pub(crate) fn set_phase(&self, p: Phase) {
        if let Ok(mut ph) = self.phase.lock()
            && *ph != p
        {
            *ph = p;
            drop(ph);
            if let Ok(mut t) = self.phase_times.lock() {
                let (spent, current) = &mut *t;
                if let Some((was, since)) = current.take() {
                    *spent.entry(was.name()).or_default() += since.elapsed().as_millis() as u64;
                }
                *current = Some((p, std::time::Instant::now()));
            }
            self.tally.bump();
        }
    }

    /// Milliseconds spent in each phase so far (the running one up to now).
    pub fn phase_ms(&self) -> BTreeMap<String, u64> {
        let Ok(t) = self.phase_times.lock() else {
            return BTreeMap::new();
        };
        let (spent, current) = &*t;
        let mut out: BTreeMap<String, u64> =
            spent.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        if let Some((p, since)) = current {
            *out.entry(p.name().to_owned()).or_default() += since.elapsed().as_millis() as u64;
        }
        out
    }

    pub(crate) fn set_decision(&self, d: Decision) {
        if let Ok(mut x) = self.decision.lock()
            && *x != Some(d)
        {
            *x = Some(d);
            drop(x);
            self.tally.bump();
        }
    }

    /// The conditions' decision the run obeys now (`None` before sending starts).
    pub fn decision(&self) -> Option<Decision> {
        self.decision.lock().ok().and_then(|d| *d)
    }

    pub(crate) fn set_conditions(
        &self,
        c: Option<tokio::sync::watch::Receiver<ferry_core::Conditions>>,
    ) {
        if let Ok(mut x) = self.conditions.lock() {
            *x = c;
        }
    }

    /// What the conditions observer sees now (`None` when conditions are not observed).
    pub fn conditions(&self) -> Option<ferry_core::Conditions> {
        self.conditions
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|rx| rx.borrow().clone()))
    }

    fn waiting_reason(&self) -> Option<WaitReason> {
        self.decision().and_then(|d| d.wait_reason())
    }

    pub(crate) fn set_server_url(&self, url: &str) {
        if let Ok(mut u) = self.server_url.lock() {
            *u = url.to_owned();
        }
    }

    /// The server the run sends to (empty before it is known).
    pub fn server_url(&self) -> String {
        self.server_url
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    pub fn snapshot(&self) -> Snapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let t = &self.tally;
        let sent = g(&t.succeeded);
        let failed = g(&t.failed);
        let started = g(&t.started);
        let to_send = g(&self.to_send);
        let reason = self.waiting_reason();
        let remaining = to_send.saturating_sub(sent + failed);
        Snapshot {
            phase: self.phase(),
            index_files_done: g(&self.index_files_done),
            index_files_total: g(&self.index_files_total),
            index_bytes_done: g(&self.index_bytes_done),
            index_bytes_total: g(&self.index_bytes_total),
            resources_total: g(&self.resources_total),
            bytes_total: g(&self.bytes_total),
            already_stored: g(&self.already_stored),
            to_send,
            bytes_to_send: g(&self.bytes_to_send),
            sent,
            bytes_sent: g(&t.bytes_succeeded),
            failed,
            in_flight: started.saturating_sub(sent + failed),
            waiting_reason: reason.map(|r| r.code()),
            waiting: if reason.is_some() { remaining } else { 0 },
        }
    }
}

/// A resource the server does not hold after the backup, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Missing {
    #[serde(flatten, with = "ferry_core::path_text::path")]
    pub path: PathBuf,
    pub resource_id: String,
    pub blake3: String,
    /// The last job's error code, or why no job ran (`not_sent`, a waiting reason).
    pub why: String,
}

fn serialize_opt_path<S: serde::Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_some(&ferry_core::path_text::display(p)),
        None => s.serialize_none(),
    }
}

/// The result of a backup.
#[derive(Debug, Clone, Serialize, Default)]
pub struct BackupSummary {
    #[serde(serialize_with = "ferry_core::path_text::serialize_list")]
    pub dirs: Vec<PathBuf>,
    pub server_url: String,
    #[serde(serialize_with = "serialize_opt_path")]
    pub embedded_server_dir: Option<PathBuf>,
    pub assets: u64,
    pub resources: u64,
    pub bytes: u64,
    pub sent: u64,
    pub bytes_sent: u64,
    pub already_stored: u64,
    pub failed: u64,
    pub verified: u64,
    /// What the server lacks, the first [`MISSING_LISTED`] of them (`resources - verified`
    /// counts them all).
    pub missing: Vec<Missing>,
    pub index_issues: u64,
    pub elapsed_ms: u64,
    /// Milliseconds spent in each phase (`indexing`, `checking` what the server holds,
    /// `sending` while the extension creates jobs, `verifying`): where the time went.
    pub phase_ms: BTreeMap<String, u64>,
}

/// How many missing resources a summary lists by name: enough to act on, and a library that
/// is all missing does not make a summary the size of the library.
pub const MISSING_LISTED: usize = 1000;

impl BackupSummary {
    pub fn complete(&self) -> bool {
        self.missing.is_empty() && self.verified == self.resources
    }
}

pub fn now_ms() -> i64 {
    ferry_transfer::engine::now_ms()
}

pub(crate) fn scan_into(
    store: &mut Store,
    dirs: &[PathBuf],
    state_dir: &Path,
    progress: &Progress,
) -> Result<ferry_library::ScanReport, ScanError> {
    let opts = ScanOptions {
        exclude: vec![state_dir.to_owned()],
        ..ScanOptions::default()
    };
    let mut on_event = |e: &ScanEvent| {
        if let ScanEvent::Indexing {
            files_done,
            files_to_read,
            bytes_done,
            bytes_to_read,
        } = e
        {
            let s = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
            s(&progress.index_files_done, *files_done);
            s(&progress.index_files_total, *files_to_read);
            s(&progress.index_bytes_done, *bytes_done);
            s(&progress.index_bytes_total, *bytes_to_read);
        }
    };
    ferry_library::scan(store, dirs, &opts, &mut on_event)
}

fn lock(store: &SharedStore) -> Result<std::sync::MutexGuard<'_, Tracked>, BackupError> {
    store
        .lock()
        .map_err(|_| BackupError::Internal("store lock poisoned".into()))
}

/// Resources asked about per round trip while planning: one server check batch.
const PLAN_PAGE: usize = crate::server::CHECK_BATCH;

/// `roots` without those inside another (a nested root would count its resources twice).
pub(crate) fn outermost(roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for r in roots {
        if roots.iter().any(|o| o != r && r.starts_with(o)) || out.contains(r) {
            continue;
        }
        out.push(r.clone());
    }
    out
}

/// Asks the server which resources under `roots` it lacks: the totals progress shows. (The
/// extension asks again for itself: it decides what to send.) Page by page: memory stays
/// flat however large the library.
pub(crate) async fn plan(
    store: &SharedStore,
    client: &ServerClient,
    roots: &[PathBuf],
    progress: &Progress,
) -> Result<(), BackupError> {
    let (mut n, mut bytes, mut stored, mut stored_bytes) = (0u64, 0u64, 0u64, 0u64);
    for root in outermost(roots) {
        let mut after: Option<PathBuf> = None;
        loop {
            let page =
                lock(store)?
                    .inner
                    .resource_stats_under_page(&root, after.as_deref(), PLAN_PAGE)?;
            let Some(last) = page.last() else { break };
            after = Some(last.path.clone());
            let hashes: Vec<String> = page.iter().map(|r| hex(&r.blake3)).collect();
            let present = match client.present(&hashes).await {
                Ok(p) => p,
                // The totals are for display; a server in trouble now (down, 5xx) leaves them
                // as they were rather than stopping the backup (the uploads retry on their own).
                Err(e @ (ServerError::Unreachable { .. } | ServerError::BadResponse { .. })) => {
                    tracing::warn!(error = %e, "could not ask the server what it holds; totals not updated");
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            for (r, h) in page.iter().zip(&hashes) {
                n += 1;
                bytes += r.size;
                if present.contains(h) {
                    stored += 1;
                    stored_bytes += r.size;
                }
            }
        }
    }
    let s = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
    s(&progress.resources_total, n);
    s(&progress.bytes_total, bytes);
    s(&progress.already_stored, stored);
    s(&progress.already_stored_bytes, stored_bytes);
    // What is still to go, plus what this run already sent (a rescan while watching).
    let sent = Tally::get(&progress.tally.succeeded);
    let sent_bytes = Tally::get(&progress.tally.bytes_succeeded);
    s(&progress.to_send, n - stored + sent);
    s(&progress.bytes_to_send, bytes - stored_bytes + sent_bytes);
    Ok(())
}

/// Runs a backup to completion (or, with `watch`, until `stop` turns true): Ferry's loop
/// ([`crate::run`]) with the bundled extension alone, consented by the command line.
pub async fn run(
    opts: BackupOptions,
    progress: Arc<Progress>,
    stop: watch::Receiver<bool>,
) -> Result<BackupSummary, BackupError> {
    let run = crate::run::RunOptions {
        dirs: opts.dirs,
        extensions_dir: ferry_host::default_extensions_dir(),
        state_dir: opts.state_dir,
        bundled: Some((opts.target, BundledConsent::Grant)),
        only_bundled: true,
        policy: opts.policy,
        observer: opts.observer,
        max_concurrent: opts.max_concurrent,
        watch: opts.watch,
        extensions_changed: Arc::default(),
    };
    crate::run::run(run, progress, stop).await
}
