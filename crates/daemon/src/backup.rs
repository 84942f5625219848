//! `ferry backup DIR`: index a folder, send every resource the server lacks through the
//! transfer engine under the current conditions, then verify every resource against the
//! server's own digests. The command line's one long-running operation, as a library call
//! with a live [`Progress`] for displays.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_core::policy::{Decision, WaitReason};
use ferry_library::{ScanError, ScanEvent, ScanOptions};
use ferry_store::library::hex;
use ferry_store::{JobStore, Store};
use ferry_transfer::{Engine, EngineConfig};
use serde::Serialize;
use tokio::sync::watch;

use crate::extension::{self, Bundled, StepOutcome};
use crate::gate::{Gate, drive_engine};
use crate::server::{Embedded, ServerClient, ServerError};
use crate::tracked::{Locator, Sessions, SharedStore, Tally, Tracked};

/// Shortest time between two job creation steps while the engine is busy.
const STEP_INTERVAL: Duration = Duration::from_millis(100);

/// Where to send the backup.
#[derive(Debug, Clone)]
pub enum Target {
    /// A ferry-server started in-process on loopback, storing in the state folder.
    Embedded,
    Remote {
        url: String,
        token: String,
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

/// Live counters of one backup; cheap to read from another thread.
#[derive(Debug, Default)]
pub struct Progress {
    phase: Mutex<Phase>,
    decision: Mutex<Option<Decision>>,
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

    fn set_phase(&self, p: Phase) {
        if let Ok(mut ph) = self.phase.lock() {
            *ph = p;
        }
    }

    fn set_decision(&self, d: Decision) {
        if let Ok(mut x) = self.decision.lock() {
            *x = Some(d);
        }
    }

    /// The conditions' decision the run obeys now (`None` before sending starts).
    pub fn decision(&self) -> Option<Decision> {
        self.decision.lock().ok().and_then(|d| *d)
    }

    fn waiting_reason(&self) -> Option<WaitReason> {
        self.decision().and_then(|d| d.wait_reason())
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
    pub path: PathBuf,
    pub resource_id: String,
    pub blake3: String,
    /// The last job's error code, or why no job ran (`not_sent`, a waiting reason).
    pub why: String,
}

/// The result of a backup.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    pub dirs: Vec<PathBuf>,
    pub server_url: String,
    pub embedded_server_dir: Option<PathBuf>,
    pub assets: u64,
    pub resources: u64,
    pub bytes: u64,
    pub sent: u64,
    pub bytes_sent: u64,
    pub already_stored: u64,
    pub failed: u64,
    pub verified: u64,
    pub missing: Vec<Missing>,
    pub index_issues: u64,
    pub elapsed_ms: u64,
}

impl BackupSummary {
    pub fn complete(&self) -> bool {
        self.missing.is_empty() && self.verified == self.resources
    }
}

pub fn now_ms() -> i64 {
    ferry_transfer::engine::now_ms()
}

fn scan_into(
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

fn is_folder_error(e: &ScanError) -> bool {
    matches!(
        e,
        ScanError::RootNotFound(_)
            | ScanError::RootNotADirectory(_)
            | ScanError::RootUnreadable { .. }
    )
}

fn lock(store: &SharedStore) -> Result<std::sync::MutexGuard<'_, Tracked>, BackupError> {
    store
        .lock()
        .map_err(|_| BackupError::Internal("store lock poisoned".into()))
}

fn resources_under(
    store: &SharedStore,
    roots: &[PathBuf],
) -> Result<Vec<ferry_store::library::ResourceRecord>, BackupError> {
    let g = lock(store)?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for root in roots {
        for r in g.inner.resources_under(root)? {
            // Nested roots list a resource twice.
            if seen.insert(r.id.clone()) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// Asks the server which resources under `roots` it lacks: the totals progress shows. (The
/// extension asks again for itself: it decides what to send.)
async fn plan(
    store: &SharedStore,
    client: &ServerClient,
    roots: &[PathBuf],
    progress: &Progress,
) -> Result<(), BackupError> {
    let resources = resources_under(store, roots)?;
    let hashes: Vec<String> = resources.iter().map(|r| hex(&r.blake3)).collect();
    let present = match client.present(&hashes).await {
        Ok(p) => p,
        // The totals are for display; a server in trouble now (down, 5xx) leaves them as
        // they were rather than stopping the backup (the uploads retry on their own).
        Err(e @ (ServerError::Unreachable { .. } | ServerError::BadResponse { .. })) => {
            tracing::warn!(error = %e, "could not ask the server what it holds; totals not updated");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let (mut n, mut bytes, mut stored, mut stored_bytes) = (0u64, 0u64, 0u64, 0u64);
    for r in &resources {
        n += 1;
        bytes += r.size;
        if present.contains(&hex(&r.blake3)) {
            stored += 1;
            stored_bytes += r.size;
        }
    }
    let s = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
    s(&progress.resources_total, n);
    s(&progress.bytes_total, bytes);
    s(&progress.already_stored, stored);
    s(&progress.already_stored_bytes, stored_bytes);
    for r in &resources {
        progress.tally.note_size(&r.id, r.size);
    }
    // What is still to go, plus what this run already sent (a rescan while watching).
    let sent = Tally::get(&progress.tally.succeeded);
    let sent_bytes = Tally::get(&progress.tally.bytes_succeeded);
    s(&progress.to_send, n - stored + sent);
    s(&progress.bytes_to_send, bytes - stored_bytes + sent_bytes);
    Ok(())
}

/// Runs a backup to completion (or, with `watch`, until `stop` turns true).
pub async fn run(
    opts: BackupOptions,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> Result<BackupSummary, BackupError> {
    let started = Instant::now();
    std::fs::create_dir_all(&opts.state_dir).map_err(|e| BackupError::State {
        dir: opts.state_dir.clone(),
        detail: e.to_string(),
    })?;
    let db_path = opts.state_dir.join("ferry.db");
    let open = || {
        Store::open(&db_path).map_err(|e| BackupError::State {
            dir: opts.state_dir.clone(),
            detail: e.to_string(),
        })
    };
    let mut store = open()?;

    // 1. Index the folder.
    progress.set_phase(Phase::Indexing);
    let (store, scan_report) = {
        let dirs = opts.dirs.clone();
        let state_dir = opts.state_dir.clone();
        let p = progress.clone();
        tokio::task::spawn_blocking(move || {
            let r = scan_into(&mut store, &dirs, &state_dir, &p);
            (store, r)
        })
        .await
        .map_err(|e| BackupError::Internal(e.to_string()))?
    };
    let scan_report = scan_report.map_err(|e| {
        if is_folder_error(&e) {
            BackupError::Folder(e)
        } else {
            BackupError::Scan(e)
        }
    })?;
    let mut roots = Vec::new();
    for dir in &opts.dirs {
        roots.push(std::fs::canonicalize(dir).map_err(|e| {
            BackupError::Folder(ScanError::RootUnreadable {
                path: dir.clone(),
                source: e,
            })
        })?);
    }

    // 2. The server.
    progress.set_phase(Phase::Checking);
    let embedded = match &opts.target {
        Target::Embedded => Some(Embedded::start(&opts.state_dir).await?),
        Target::Remote { .. } => None,
    };
    let (url, token) = match (&opts.target, &embedded) {
        (Target::Remote { url, token }, _) => (url.clone(), token.clone()),
        (Target::Embedded, Some(e)) => (e.base_url(), e.token.clone()),
        (Target::Embedded, None) => unreachable!("embedded server started above"),
    };
    let client = ServerClient::new(&url, &token)?;
    if let Ok(mut u) = progress.server_url.lock() {
        *u = url.clone();
    }
    // Proves the URL and token before anything is queued. A daemon (watch) waits out a
    // server that is down or failing (5xx), as its uploads would; a one-shot backup says so
    // at once. A refused token is never waited out: the user must fix it.
    let mut wait = Duration::from_secs(1);
    loop {
        match client.present(&[]).await {
            Ok(_) => break,
            Err(e @ (ServerError::Unreachable { .. } | ServerError::BadResponse { .. }))
                if opts.watch =>
            {
                tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "server not ready; waiting");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => return Err(e.into()),
                }
                wait = (wait * 2).min(Duration::from_secs(60));
            }
            Err(e) => return Err(e.into()),
        }
    }

    let tally = progress.tally.clone();
    let shared: SharedStore = Arc::new(Mutex::new(Tracked::new(store, tally.clone())));
    plan(&shared, &client, &roots, &progress).await?;
    // The command line is the consent: install and enable the bundled extension.
    let mut bundled = Bundled::install(&opts.state_dir, &url, &token)?;

    // 3. Send, under the conditions.
    progress.set_phase(Phase::Sending);
    let engine_config = EngineConfig {
        extensions: vec![extension::EXTENSION.to_owned()],
        max_concurrent: opts.max_concurrent.max(1),
        max_concurrent_per_origin: opts.max_concurrent.max(1),
        // Every step wakes the engine and retries carry their own time: the poll is only a
        // safety net, and an idle daemon must not wake more often than once a minute.
        poll_interval: Duration::from_secs(600),
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::new(
        shared.clone(),
        Arc::new(Sessions::new(shared.clone()).map_err(ferry_transfer::EngineError::from)?),
        Arc::new(Locator(shared.clone())),
        engine_config,
    )?);
    let gate = match &opts.policy {
        Some(policy) => Gate::observe(policy.clone(), opts.observer.clone()).await,
        None => Gate::open(),
    };
    let (engine_stop_tx, engine_stop_rx) = watch::channel(false);
    let runner = tokio::spawn(drive_engine(
        engine.clone(),
        gate.decisions.clone(),
        engine_stop_rx,
    ));

    // Watching: a second connection keeps the index in step; each scan re-plans.
    let (rescan_tx, mut rescan_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watch_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if opts.watch {
        let mut watch_store = open()?;
        let dirs = opts.dirs.clone();
        let state_dir = opts.state_dir.clone();
        let stop_flag = watch_stop.clone();
        std::thread::spawn(move || {
            let wopts = ferry_library::WatchOptions {
                scan: ScanOptions {
                    exclude: vec![state_dir],
                    ..ScanOptions::default()
                },
                ..Default::default()
            };
            let mut on_scan = |_cause, _r: &ferry_library::ScanReport| {
                if stop_flag.load(Ordering::Relaxed) || rescan_tx.send(()).is_err() {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            };
            if let Err(e) =
                ferry_library::watch(&mut watch_store, &dirs, &wopts, &mut |_| {}, &mut on_scan)
            {
                tracing::warn!(error = %e, "watching stopped");
            }
        });
    }

    let mut decisions = gate.decisions.clone();
    let mut decisions_live = true;
    let result: Result<(), BackupError> = async {
        loop {
            let decision = *decisions.borrow_and_update();
            progress.set_decision(decision);
            let step_started = Instant::now();
            let finished_at_step = Tally::get(&tally.succeeded) + Tally::get(&tally.failed);
            let mut outcome = if opts.watch && !decision.is_allow() {
                // The extension runs only when the conditions allow, like the transfers: while
                // they say wait it is not launched; the decision turning, new files or a stop
                // wake this loop.
                StepOutcome::Processing
            } else {
                let outcome = bundled.step().await?;
                tracing::debug!(
                    elapsed_ms = step_started.elapsed().as_millis() as u64,
                    ?outcome,
                    "extension step"
                );
                engine.wake();
                outcome
            };
            if outcome == StepOutcome::Completed {
                // Done only when its jobs are all sent and let go of, too.
                let g = lock(&shared)?;
                let open = !g
                    .fetch(extension::EXTENSION, ferry_core::Action::Process)?
                    .is_empty()
                    || !g
                        .fetch(extension::EXTENSION, ferry_core::Action::Acknowledge)?
                        .is_empty();
                if open {
                    outcome = StepOutcome::Processing;
                }
            }
            if outcome == StepOutcome::Completed {
                if !opts.watch {
                    return Ok(());
                }
                progress.set_phase(Phase::Watching);
            } else if !opts.watch && !decision.is_allow() {
                // A one-shot backup does not wait for conditions that may not change for
                // hours: it ends now, and the summary names the reason for what is missing.
                // Its jobs stay registered; the next run or the daemon sends them.
                return Ok(());
            } else {
                progress.set_phase(Phase::Sending);
            }
            let stepped = Instant::now();
            // An extension with more to do is asked again after a while even when no transfer
            // finishes; one that is done (or may not run now) waits for a reason — a finished
            // transfer, new files, the conditions turning — so an idle daemon sleeps.
            let ask_again = outcome != StepOutcome::Completed && decision.is_allow();
            tokio::select! {
                _ = async {
                    // Batch: each step launches the extension, so it comes only when it pays —
                    // a quarter of the job limit has finished since the last one (acknowledged
                    // and refilled in a few commits), or the engine is about to run dry (fewer
                    // transfers in flight than it may run: nothing queued). Never more often
                    // than once per STEP_INTERVAL while transfers run.
                    let t = &progress.tally;
                    loop {
                        t.changed.notified().await;
                        let finished = Tally::get(&t.succeeded) + Tally::get(&t.failed);
                        let in_flight = Tally::get(&t.started).saturating_sub(finished);
                        // Jobs neither started nor finished-and-waiting-for-the-acknowledge
                        // (those finished since the last step, counted high: a step may have
                        // acknowledged some that finished while it ran).
                        let starving = in_flight < opts.max_concurrent as u64 && {
                            let unacked = lock(&shared)
                                .and_then(|g| Ok(g.unacknowledged_count(extension::EXTENSION)?))
                                .map_or(0, u64::from);
                            let queued = unacked
                                .saturating_sub(in_flight)
                                .saturating_sub(finished.saturating_sub(finished_at_step));
                            queued < opts.max_concurrent as u64
                        };
                        let batch = finished.saturating_sub(finished_at_step)
                            >= u64::from(extension::JOB_LIMIT / 4);
                        if starving || batch {
                            break;
                        }
                    }
                    if Tally::get(&t.started) > Tally::get(&t.succeeded) + Tally::get(&t.failed) {
                        tokio::time::sleep_until((stepped + STEP_INTERVAL).into()).await;
                    }
                } => {}
                // A gate that never changes (no policy: go now) has no sender: its `changed()`
                // answers "closed" at once, and must not spin this loop.
                r = decisions.changed(), if decisions_live => decisions_live = r.is_ok(),
                Some(()) = rescan_rx.recv(), if opts.watch => {
                    plan(&shared, &client, &roots, &progress).await?;
                }
                r = stop.changed() => if r.is_err() || *stop.borrow() { return Ok(()) },
                _ = tokio::time::sleep(Duration::from_secs(1)), if ask_again => {}
            }
        }
    }
    .await;
    watch_stop.store(true, Ordering::Relaxed);
    let _ = engine_stop_tx.send(true);
    match runner.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(e) => return Err(BackupError::Internal(e.to_string())),
    }
    result?;

    // 4. Verify against the server's digests.
    progress.set_phase(Phase::Verifying);
    let resources = resources_under(&shared, &roots)?;
    let hashes: Vec<String> = resources.iter().map(|r| hex(&r.blake3)).collect();
    let present = client.present(&hashes).await?;
    let waiting = progress.waiting_reason();
    let mut missing = Vec::new();
    let mut assets = HashSet::new();
    let mut bytes = 0;
    {
        let g = lock(&shared)?;
        for (r, h) in resources.iter().zip(&hashes) {
            assets.insert(r.asset_id.as_str());
            bytes += r.size;
            if present.contains(h) {
                continue;
            }
            let last = g
                .receipts_for_hash(&ferry_core::ContentHash(r.blake3))?
                .into_iter()
                .next();
            let why = match (last.and_then(|rc| rc.error), waiting) {
                (Some(code), _) => code.to_string(),
                (None, Some(w)) => w.code().to_owned(),
                (None, None) => "not_sent".to_owned(),
            };
            missing.push(Missing {
                path: r.path.clone(),
                resource_id: r.id.clone(),
                blake3: h.clone(),
                why,
            });
        }
    }
    progress.set_phase(Phase::Done);
    let snap = progress.snapshot();
    let summary = BackupSummary {
        dirs: roots.clone(),
        server_url: url,
        embedded_server_dir: embedded.as_ref().map(|e| e.data_dir.clone()),
        assets: assets.len() as u64,
        resources: resources.len() as u64,
        bytes,
        sent: snap.sent,
        bytes_sent: snap.bytes_sent,
        already_stored: snap.already_stored,
        failed: snap.failed,
        verified: (resources.len() - missing.len()) as u64,
        missing,
        index_issues: scan_report
            .counts_by_reason
            .iter()
            .filter(|(k, _)| !k.is_expected())
            .map(|(_, v)| v)
            .sum(),
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    if let Some(e) = embedded {
        e.handle.shutdown().await;
    }
    Ok(summary)
}
