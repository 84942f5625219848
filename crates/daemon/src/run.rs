//! Ferry's one loop, shared by `ferry daemon` and `ferry backup`: index the folders, let the
//! extension host call every extension that has work, send their jobs through one transfer
//! engine behind the conditions gate, and (for the bundled extension) verify against its
//! server. `ferry backup DIR` is this loop with only the bundled extension, run until it
//! has nothing left to do; `ferry daemon` runs every enabled extension until stopped.
//!
//! The steps, in order (each a function below):
//! 1. [`open_state`]: the state folder and the store.
//! 2. [`index`]: scan the folders and record them as the library's roots (consent scopes are
//!    resolved against them).
//! 3. [`connect_bundled`]: the bundled extension's server started or proven, its manifest
//!    written and its consent recorded.
//! 4. [`start_host`], [`start_engine`], the gate: the parts, each on its own store connection
//!    (the engine's wrapped so its events feed the live tally).
//! 5. [`wire`]: what wakes whom — new jobs wake the engine, finished transfers, library
//!    changes and consent changes wake the host.
//! 6. [`wait`]: until the bundled extension is settled (one-shot) or a stop (daemon).
//! 7. Wind down (host and engine drain), then [`verify`] the bundled extension's work.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_core::policy::Decision;
use ferry_host::{Host, HostConfig, Settled};
use ferry_library::{ScanError, ScanOptions};
use ferry_store::library::hex;
use ferry_store::{JobStore, Store};
use ferry_transfer::{Engine, EngineConfig};
use tokio::sync::{Notify, watch};

use crate::backup::{
    BackupError, BackupSummary, Missing, Phase, Progress, Target, plan, scan_into,
};
use crate::extension::{self, BundledConsent, ExtensionError};
use crate::gate::{Gate, drive_engine};
use crate::server::{Embedded, ServerClient, ServerError};
use crate::tracked::{Locator, Sessions, SharedStore, Tally, Tracked};

/// What the loop runs and for how long.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The library's folders (at least one).
    pub dirs: Vec<PathBuf>,
    pub state_dir: PathBuf,
    /// The person's extensions folder (the bundled extension lives in the state folder).
    pub extensions_dir: PathBuf,
    /// The bundled extension's server and how its consent is taken; `None`: it does not run.
    pub bundled: Option<(Target, BundledConsent)>,
    /// Run the bundled extension alone (`ferry backup`); else every enabled extension.
    pub only_bundled: bool,
    pub policy: Option<ferry_core::Policy>,
    pub observer: ferry_conditions::ObserverConfig,
    pub max_concurrent: usize,
    /// Keep going (watch the folders) until `stop`; else end when the bundled extension is
    /// settled, or at once when the conditions say wait.
    pub watch: bool,
    /// Notified when consent or installed extensions changed (the control API's `wake`).
    pub extensions_changed: Arc<Notify>,
}

/// The bundled extension's server, as the loop uses it.
struct BundledServer {
    url: String,
    client: ServerClient,
    embedded: Option<Embedded>,
    /// A remote server's TLS trust, which the engine applies to its origin.
    tls: Option<ferry_tls::ServerTls>,
}

/// Runs the loop; see the module's steps.
pub async fn run(
    opts: RunOptions,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> Result<BackupSummary, BackupError> {
    let started = Instant::now();
    let store = open_state(&opts.state_dir)?;
    // Held for the whole run: a move cannot freeze this state while it uploads.
    let _uploads = crate::migrate::hold_uploads(&opts.state_dir).map_err(BackupError::Moved)?;
    if let Some(why) = crate::migrate::upload_block(&store)? {
        return Err(BackupError::Moved(why));
    }
    progress.set_phase(Phase::Indexing);
    let (store, roots, index_issues) = index(store, &opts, &progress).await?;
    progress.set_phase(Phase::Checking);
    let bundled = match &opts.bundled {
        Some((target, consent)) => {
            Some(connect_bundled(target, *consent, &opts, &progress, &mut stop).await?)
        }
        None => None,
    };
    let tally = progress.tally.clone();
    let shared: SharedStore = Arc::new(Mutex::new(Tracked::new(store, tally.clone())));
    if let Some(b) = &bundled {
        plan(&shared, &b.client, &roots, &progress).await?;
    }
    let host = start_host(&opts, bundled.is_some())?;
    let engine = start_engine(&opts, shared.clone(), bundled.as_ref())?;
    let gate = match &opts.policy {
        Some(policy) => Gate::observe(policy.clone(), opts.observer.clone()).await,
        None => Gate::open(),
    };
    progress.set_conditions(gate.conditions.clone());

    progress.set_phase(Phase::Sending);
    let (stop_parts_tx, stop_parts) = watch::channel(false);
    let engine_task = tokio::spawn(drive_engine(
        engine.clone(),
        gate.decisions.clone(),
        stop_parts.clone(),
    ));
    let host_task = {
        let host = host.clone();
        let gate = host_gate(gate.decisions.clone(), stop_parts.clone());
        let stop = stop_parts.clone();
        tokio::spawn(async move { host.run(gate, stop).await })
    };
    let (rescans, watch_stop) = if opts.watch {
        watch_library(&opts)?
    } else {
        (tokio::sync::mpsc::unbounded_channel().1, Arc::default())
    };
    let wiring = wire(&host, &engine, &tally, &opts, stop_parts.clone());

    let result = wait(
        &opts,
        &host,
        &gate,
        bundled.as_ref(),
        &shared,
        &roots,
        &progress,
        rescans,
        stop,
    )
    .await;

    // 7. Wind down: no new call or upload starts, those running finish and are saved.
    watch_stop.store(true, Ordering::Relaxed);
    let _ = stop_parts_tx.send(true);
    let _ = host_task.await;
    for t in wiring {
        t.abort();
    }
    match engine_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(e) => return Err(BackupError::Internal(e.to_string())),
    }
    result?;

    let summary = match bundled {
        Some(b) => {
            progress.set_phase(Phase::Verifying);
            let s = verify(&b, &shared, &roots, &progress, index_issues, started).await?;
            if let Some(e) = b.embedded {
                e.handle.shutdown().await;
            }
            s
        }
        None => BackupSummary {
            dirs: roots,
            index_issues,
            elapsed_ms: started.elapsed().as_millis() as u64,
            phase_ms: progress.phase_ms(),
            ..BackupSummary::default()
        },
    };
    progress.set_phase(Phase::Done);
    Ok(summary)
}

/// Step 1: The state folder and the store (created or upgraded before anyone else opens it).
fn open_state(state_dir: &Path) -> Result<Store, BackupError> {
    let err = |detail: String| BackupError::State {
        dir: state_dir.to_owned(),
        detail,
    };
    crate::config::prepare_state_dir(state_dir).map_err(|e| err(e.to_string()))?;
    Store::open(&state_dir.join("ferry.db")).map_err(|e| err(e.to_string()))
}

/// Step 2: Scans the folders (on a blocking thread) and records each as a library root. Returns
/// the canonical roots and how many files the scan could not index.
async fn index(
    mut store: Store,
    opts: &RunOptions,
    progress: &Arc<Progress>,
) -> Result<(Store, Vec<PathBuf>, u64), BackupError> {
    let dirs = opts.dirs.clone();
    let state_dir = opts.state_dir.clone();
    let p = progress.clone();
    let (mut store, report) = tokio::task::spawn_blocking(move || {
        let r = scan_into(&mut store, &dirs, &state_dir, &p);
        (store, r)
    })
    .await
    .map_err(|e| BackupError::Internal(e.to_string()))?;
    let report = report.map_err(|e| match e {
        ScanError::RootNotFound(_)
        | ScanError::RootNotADirectory(_)
        | ScanError::RootUnreadable { .. } => BackupError::Folder(e),
        e => BackupError::Scan(e),
    })?;
    let mut roots = Vec::new();
    for dir in &opts.dirs {
        let root = std::fs::canonicalize(dir).map_err(|e| {
            BackupError::Folder(ScanError::RootUnreadable {
                path: dir.clone(),
                source: e,
            })
        })?;
        record_root(&mut store, &root)?;
        roots.push(root);
    }
    let issues = report
        .counts_by_reason
        .iter()
        .filter(|(k, _)| !k.is_expected())
        .map(|(_, v)| v)
        .sum();
    Ok((store, roots, issues))
}

/// Records `root` as a library root unless an existing root already covers it: a consent
/// limited to folder `F` means `F` under each root, so nested roots would widen it.
pub fn record_root(store: &mut Store, root: &Path) -> Result<(), BackupError> {
    if store.roots()?.iter().any(|r| root.starts_with(r)) {
        return Ok(());
    }
    store.add_root(root, ferry_transfer::engine::now_ms())?;
    Ok(())
}

/// Step 3: The bundled extension's server: the built-in one started, or the given one proven
/// (URL and token) before anything is queued; then its manifest and consent.
async fn connect_bundled(
    target: &Target,
    consent: BundledConsent,
    opts: &RunOptions,
    progress: &Progress,
    stop: &mut watch::Receiver<bool>,
) -> Result<BundledServer, BackupError> {
    let embedded = match target {
        Target::Embedded => Some(Embedded::start(&opts.state_dir).await?),
        Target::Remote { .. } => None,
    };
    let (url, token, trust) = match (target, &embedded) {
        (Target::Remote { url, token, trust }, _) => (url.clone(), token.clone(), trust.clone()),
        (Target::Embedded, Some(e)) => (e.base_url(), e.token.clone(), Default::default()),
        (Target::Embedded, None) => unreachable!("embedded server started above"),
    };
    // Ferry's own verifier for a remote server, even with no setting: a refused certificate
    // is then reported with the fingerprint the server presented.
    let tls = match target {
        Target::Remote { .. } => {
            Some(
                ferry_tls::ServerTls::new(&trust).map_err(|source| ServerError::Trust {
                    url: url.clone(),
                    source,
                })?,
            )
        }
        Target::Embedded => None,
    };
    let client = ServerClient::with_tls(&url, &token, tls.as_ref())?;
    progress.set_server_url(&url);
    // A daemon (watch) waits out a server that is down or failing (5xx), as its uploads
    // would; a one-shot backup says so at once. A refused token is never waited out.
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
    extension::install(&opts.state_dir, &url, &token, &trust, consent)?;
    Ok(BundledServer {
        url,
        client,
        embedded,
        tls,
    })
}

/// 4a. The extension host, on its own store connection.
fn start_host(opts: &RunOptions, with_bundled: bool) -> Result<Host, BackupError> {
    let store = open_state(&opts.state_dir)?;
    let mut config = HostConfig::new(opts.extensions_dir.clone(), opts.state_dir.clone());
    if opts.only_bundled {
        config.only = Some(vec![extension::EXTENSION.to_owned()]);
    } else if !with_bundled {
        // Installed earlier (by `ferry backup`), but this daemon has no server for it.
        config.except = vec![extension::EXTENSION.to_owned()];
    }
    config.refill_below = opts.max_concurrent.max(1) as u32;
    if opts.watch {
        // Every reason to call is signalled (wire); the poll is a safety net, and an idle
        // daemon must not wake more often than once a minute.
        config.poll_interval_ms = 60_000;
    }
    Host::new(Arc::new(Mutex::new(store)), config)
        .map_err(|e| BackupError::Extension(ExtensionError::Host(e)))
}

/// 4b. One transfer engine for every extension's jobs, taken in turn.
fn start_engine(
    opts: &RunOptions,
    shared: SharedStore,
    bundled: Option<&BundledServer>,
) -> Result<Arc<Engine<Tracked>>, BackupError> {
    // The bundled server's trust applies to its origin only: other extensions' destinations
    // are verified against the platform's roots.
    let origin_tls = bundled
        .and_then(|b| {
            let origin = reqwest::Url::parse(&b.url).ok()?;
            Some(ferry_transfer::OriginTls {
                origin,
                tls: b.tls.clone()?,
            })
        })
        .into_iter()
        .collect();
    let config = EngineConfig {
        extensions: if opts.only_bundled {
            vec![extension::EXTENSION.to_owned()]
        } else {
            Vec::new()
        },
        max_concurrent: opts.max_concurrent.max(1),
        max_concurrent_per_origin: opts.max_concurrent.max(1),
        // Every new job wakes the engine and retries carry their own time: the poll is only a
        // safety net.
        poll_interval: Duration::from_secs(600),
        transfer: ferry_transfer::TransferConfig {
            origin_tls,
            ..Default::default()
        },
        ..EngineConfig::default()
    };
    Ok(Arc::new(Engine::new(
        shared.clone(),
        Arc::new(Sessions::new(shared.clone()).map_err(ferry_transfer::EngineError::from)?),
        Arc::new(Locator(shared)),
        config,
    )?))
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The conditions' decision as the host needs it: extensions run only when uploads may.
fn host_gate(
    mut decisions: watch::Receiver<Decision>,
    mut stop: watch::Receiver<bool>,
) -> watch::Receiver<ferry_host::Gate> {
    let of = |d: &Decision| match d.wait_reason() {
        None => ferry_host::Gate::Allow,
        Some(r) => ferry_host::Gate::Wait(r.code().to_owned()),
    };
    let (tx, rx) = watch::channel(of(&decisions.borrow_and_update()));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = decisions.changed() => if r.is_err() {
                    // A gate that never changes: hold the last value until stop.
                    stopped(&mut stop).await;
                    return;
                },
                _ = stopped(&mut stop) => return,
            }
            let g = of(&decisions.borrow_and_update());
            tx.send_if_modified(|old| {
                let changed = *old != g;
                *old = g;
                changed
            });
        }
    });
    rx
}

/// The folders watched on a thread of their own (its own store connection); each committed
/// scan is one message.
type Rescans = tokio::sync::mpsc::UnboundedReceiver<()>;

/// The watcher's store connection's page cache.
const WATCH_PAGE_CACHE_KIB: u32 = 2048;

/// How long after going idle the daemon gives back memory a second time.
const IDLE_TRIM_DELAY: Duration = Duration::from_secs(5);

fn watch_library(opts: &RunOptions) -> Result<(Rescans, Arc<AtomicBool>), BackupError> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let stop = Arc::new(AtomicBool::new(false));
    let mut store = open_state(&opts.state_dir)?;
    // A rescan after a watcher event covers a folder or two: a small cache does.
    store
        .set_page_cache_kib(WATCH_PAGE_CACHE_KIB)
        .map_err(|e| BackupError::State {
            dir: opts.state_dir.clone(),
            detail: e.to_string(),
        })?;
    let dirs = opts.dirs.clone();
    let state_dir = opts.state_dir.clone();
    let stop_flag = stop.clone();
    std::thread::spawn(move || {
        let wopts = ferry_library::WatchOptions {
            scan: ScanOptions {
                exclude: vec![state_dir],
                ..ScanOptions::default()
            },
            ..Default::default()
        };
        let mut on_scan = |_cause, r: &ferry_library::ScanReport| {
            // A scan that changed nothing (a touched sidecar, a periodic rescan) wakes no one:
            // no extension call, no plan, no live page.
            let changed =
                r.new_resources + r.modified_resources + r.moved_resources + r.deleted_resources
                    > 0;
            if stop_flag.load(Ordering::Relaxed) || changed && tx.send(()).is_err() {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        };
        if let Err(e) = ferry_library::watch(&mut store, &dirs, &wopts, &mut |_| {}, &mut on_scan) {
            tracing::warn!(error = %e, "watching stopped");
        }
    });
    Ok((rx, stop))
}

/// Step 5: What wakes whom: an extension's new jobs wake the engine; finished transfers (at most
/// every 50 ms) and consent changes wake the host. Library changes wake it from [`wait`].
fn wire(
    host: &Host,
    engine: &Arc<Engine<Tracked>>,
    tally: &Arc<Tally>,
    opts: &RunOptions,
    mut stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    {
        let mut jobs = host.jobs_changed();
        let engine = engine.clone();
        let tally = tally.clone();
        tasks.push(tokio::spawn(async move {
            while jobs.changed().await.is_ok() {
                engine.wake();
                tally.bump();
            }
        }));
    }
    {
        let host = host.clone();
        let tally = tally.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tally.changed.notified() => {}
                    _ = stopped(&mut stop) => return,
                }
                host.wake();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    {
        let host = host.clone();
        let changed = opts.extensions_changed.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                changed.notified().await;
                host.wake();
            }
        }));
    }
    tasks
}

/// Step 6: Until the bundled extension has nothing left to do (one-shot), the conditions say wait
/// (one-shot: it does not wait hours for them), or a stop. Keeps the progress's phase,
/// decision and totals current on the way.
#[allow(clippy::too_many_arguments)]
async fn wait(
    opts: &RunOptions,
    host: &Host,
    gate: &Gate,
    bundled: Option<&BundledServer>,
    shared: &SharedStore,
    roots: &[PathBuf],
    progress: &Progress,
    mut rescans: Rescans,
    mut stop: watch::Receiver<bool>,
) -> Result<(), BackupError> {
    let mut calls = host.calls();
    let mut decisions = gate.decisions.clone();
    let mut decisions_live = true;
    // Whether memory was given back since the last event (see `IDLE_TRIM_DELAY`).
    let mut trimmed = false;
    loop {
        let idle;
        let decision = *decisions.borrow_and_update();
        progress.set_decision(decision);
        if !opts.watch && !decision.is_allow() {
            // Its jobs stay registered; the next run or the daemon sends them.
            return Ok(());
        }
        if bundled.is_some() {
            match host
                .settled(extension::EXTENSION)
                .map_err(ExtensionError::Host)?
            {
                Settled::Yes if !opts.watch => return Ok(()),
                Settled::Yes => {
                    progress.set_phase(Phase::Watching);
                    idle = true;
                }
                Settled::Failing {
                    consecutive,
                    last_error,
                } if !opts.watch && consecutive >= 3 => {
                    return Err(ExtensionError::Failing {
                        calls: consecutive,
                        detail: last_error,
                    }
                    .into());
                }
                Settled::Absent if !opts.watch => {
                    return Err(ExtensionError::Host(ferry_host::HostError::NotEnabled(
                        extension::EXTENSION.into(),
                    ))
                    .into());
                }
                _ => {
                    idle = false;
                    progress.set_phase(Phase::Sending);
                }
            }
        } else {
            progress.set_phase(Phase::Watching);
            // Other extensions' work is not tracked here: quiet is the sign.
            idle = true;
        }
        // Idle and quiet for a moment (the last call's and uploads' buffers are freed by their
        // tasks after the wake-up that brought this loop here): give back what the passes over
        // the library cached. Once per quiet spell, not a period.
        let quiet = async {
            if idle && !trimmed {
                tokio::time::sleep(IDLE_TRIM_DELAY).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            () = quiet => {
                release_idle_memory(host, shared);
                trimmed = true;
                continue;
            }
            r = calls.changed() => {
                trimmed = false;
                if r.is_err() { return Ok(()) }
            }
            // A gate that never changes (no policy: go now) has no sender: its `changed()`
            // answers "closed" at once, and must not spin this loop.
            r = decisions.changed(), if decisions_live => {
                trimmed = false;
                decisions_live = r.is_ok();
            }
            Some(()) = rescans.recv(), if opts.watch => {
                trimmed = false;
                host.wake();
                if let Some(b) = bundled {
                    plan(shared, &b.client, roots, progress).await?;
                }
                // The index changed: live pages look again even when no job comes of it (a
                // file outside every consent's folders).
                progress.tally.bump();
            }
            r = stop.changed() => if r.is_err() || *stop.borrow() { return Ok(()) },
        }
    }
}

/// A daemon with nothing left to do gives back what its passes over the library cached (the
/// store connections' pages, then glibc's free memory, nearly all of which is free once idle:
/// 2 MB in use of 80 MB held, watching 100,000 backed-up files).
fn release_idle_memory(host: &Host, shared: &SharedStore) {
    host.release_memory();
    if let Ok(s) = shared.lock() {
        let _ = s.inner.release_memory();
    }
    crate::release_free_memory();
}

/// Step 7: Every resource under the roots checked against the server's own digests; what it lacks
/// is listed with why (the last job's error, the conditions, or not sent).
async fn verify(
    b: &BundledServer,
    shared: &SharedStore,
    roots: &[PathBuf],
    progress: &Progress,
    index_issues: u64,
    started: Instant,
) -> Result<BackupSummary, BackupError> {
    let waiting = progress.decision().and_then(|d| d.wait_reason());
    let mut missing = Vec::new();
    let (mut resources, mut unverified, mut assets, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    // Page by page, in path order: memory stays flat however large the library.
    for root in crate::backup::outermost(roots) {
        assets += shared
            .lock()
            .map_err(|_| BackupError::Internal("store lock poisoned".into()))?
            .inner
            .asset_count_under(&root)?;
        let mut after: Option<PathBuf> = None;
        loop {
            let page = shared
                .lock()
                .map_err(|_| BackupError::Internal("store lock poisoned".into()))?
                .inner
                .resource_stats_under_page(&root, after.as_deref(), crate::server::CHECK_BATCH)?;
            let Some(last) = page.last() else { break };
            after = Some(last.path.clone());
            let hashes: Vec<String> = page.iter().map(|r| hex(&r.blake3)).collect();
            let present = b.client.present(&hashes).await?;
            let g = shared
                .lock()
                .map_err(|_| BackupError::Internal("store lock poisoned".into()))?;
            for (r, h) in page.iter().zip(&hashes) {
                resources += 1;
                bytes += r.size;
                if present.contains(h) {
                    continue;
                }
                unverified += 1;
                if missing.len() >= crate::backup::MISSING_LISTED {
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
    }
    let snap = progress.snapshot();
    Ok(BackupSummary {
        dirs: roots.to_vec(),
        server_url: b.url.clone(),
        embedded_server_dir: b.embedded.as_ref().map(|e| e.data_dir.clone()),
        assets,
        resources,
        bytes,
        sent: snap.sent,
        bytes_sent: snap.bytes_sent,
        already_stored: snap.already_stored,
        failed: snap.failed,
        verified: resources - unverified,
        missing,
        index_issues,
        elapsed_ms: started.elapsed().as_millis() as u64,
        phase_ms: progress.phase_ms(),
    })
}
