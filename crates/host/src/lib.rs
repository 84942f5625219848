//! Ferry's extension host: reads the installed extensions' manifests, records the user's
//! consent, and runs each enabled extension as a sandboxed child process that it calls
//! (`process_jobs`) when there is work and conditions allow, answering the extension's
//! requests from the store with its scope enforced.
//!
//! Invariant: nothing runs, and no job is created, for an extension that is not enabled; an
//! extension sees only assets in its granted scope; whatever one extension does (crash, hang,
//! flood, garbage) costs only that extension (it is stopped and backed off) — the host, the
//! store and the other extensions carry on.

pub mod consent;
pub mod manifest;
pub mod migration;
pub mod serve;
pub mod session;

pub use consent::{DisableReport, Grant};
pub use manifest::{
    Capability, Manifest, ManifestError, MigrationSettings, default_extensions_dir,
};
pub use migration::{
    ExportOutcome, ExportedFile, ImportOutcome, ImportSource, MigrationError, MigrationPreflight,
};
pub use session::{CallFailure, CallOutcome};

use ferry_core::retry::RetryPolicy;
use ferry_extension::protocol::{self as p, CallReason, InitializeParams, ProcessStatus};
use ferry_store::extensions::Consent;
use ferry_store::{JobStoreError, Store, StoreError};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::{Duration, Instant};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A jitter sample in `[0, 1)` from the standard library's per-process random hash keys.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_ms());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No manifest with this id in the extensions folder.
    #[error("no extension {0:?} is installed")]
    NotInstalled(String),
    /// The user has not enabled it (or disabled it).
    #[error("extension {0:?} is not enabled")]
    NotEnabled(String),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The grant asks for more than the manifest declares, or is malformed.
    #[error("cannot enable {id:?}: {problem}")]
    Grant { id: String, problem: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    JobStore(#[from] JobStoreError),
    /// The store's lock was poisoned by a panic elsewhere: the host cannot go on safely.
    #[error("the store is unavailable")]
    StoreUnavailable,
}

/// Whether conditions let extensions run now (the daemon derives it from its policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    Allow,
    Wait(String),
}

/// Where the host finds extensions and keeps their files, and its limits.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The person's extensions folder (manifests installed by hand or by a package).
    pub extensions_dir: PathBuf,
    /// Each extension gets `<data_dir>/extensions/<id>/` as its working folder and log place.
    /// `<data_dir>/extensions/` also holds the manifests Ferry writes itself (the bundled
    /// extension), searched after `extensions_dir`.
    pub data_dir: PathBuf,
    /// Run only these extensions (`ferry backup` runs only the bundled one); `None`: all.
    pub only: Option<Vec<String>>,
    /// Never run these, even when installed and enabled.
    pub except: Vec<String>,
    /// Finished jobs are acknowledged in batches: an extension is called for them when a
    /// quarter of its job limit has finished, when fewer than this many of its jobs are left
    /// queued (the transfer engine is about to run dry: set it to the engine's concurrency),
    /// or when the oldest finished one has waited `ack_delay_ms`.
    pub refill_below: u32,
    pub ack_delay_ms: u64,
    /// How long after `will_terminate` the answer may take before SIGTERM.
    pub will_terminate_grace_ms: u64,
    /// How long after SIGTERM before SIGKILL.
    pub term_grace_ms: u64,
    /// How long an extension may take to exit once its stdin is closed after an answer.
    pub exit_grace_ms: u64,
    /// Requests per second one extension may make (bursts of twice that).
    pub max_calls_per_second: u32,
    /// Address-space limit (RLIMIT_AS) of an extension process.
    pub memory_limit_bytes: u64,
    /// Open-files limit (RLIMIT_NOFILE) of an extension process.
    pub open_files_limit: u64,
    /// The `prlimit` program that applies the two limits; `None` runs without them.
    pub prlimit: Option<PathBuf>,
    /// The most stderr kept per launch.
    pub max_log_bytes: u64,
    /// Backoff after failures: the delay doubles from `base_delay_ms` up to `max_delay_ms`.
    pub backoff: RetryPolicy,
    /// Delay before calling again an extension that answered `processing`.
    pub continue_delay_ms: u64,
    /// How often the scheduler looks for work without being woken (library changes made by
    /// another process, jobs finished).
    pub poll_interval_ms: u64,
    /// Most calls running at once.
    pub max_concurrent_calls: usize,
    /// An export that appends nothing (and does not answer) for this long is hung: stopped,
    /// its data left out.
    pub export_idle_timeout_ms: u64,
    /// How much an export may go over its preflight estimate before it is refused: twice the
    /// estimate plus this (an estimate is an estimate; an extension that lies is stopped).
    pub export_size_slack_bytes: u64,
    /// How long a `migration.import` may take before it is stopped (and counted as failed).
    pub import_timeout_ms: u64,
}

impl HostConfig {
    pub fn new(extensions_dir: PathBuf, data_dir: PathBuf) -> Self {
        let prlimit = ["/usr/bin/prlimit", "/bin/prlimit"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file());
        HostConfig {
            extensions_dir,
            data_dir,
            will_terminate_grace_ms: 5_000,
            term_grace_ms: 2_000,
            exit_grace_ms: 2_000,
            max_calls_per_second: 200,
            memory_limit_bytes: 4 << 30,
            open_files_limit: 256,
            prlimit,
            max_log_bytes: 1 << 20,
            backoff: RetryPolicy {
                base_delay_ms: 2_000,
                max_delay_ms: 15 * 60_000,
                ..RetryPolicy::default()
            },
            continue_delay_ms: 100,
            poll_interval_ms: 2_000,
            max_concurrent_calls: 8,
            only: None,
            except: Vec::new(),
            refill_below: 8,
            ack_delay_ms: 30_000,
            export_idle_timeout_ms: 60_000,
            export_size_slack_bytes: 64 << 20,
            import_timeout_ms: 10 * 60_000,
        }
    }

    /// Where manifests are looked for, in order.
    pub fn manifest_dirs(&self) -> Vec<PathBuf> {
        let bundled = self.data_dir.join("extensions");
        let mut dirs = vec![self.extensions_dir.clone()];
        if bundled != self.extensions_dir {
            dirs.push(bundled);
        }
        dirs
    }

    /// Whether this host runs `id` at all.
    pub fn runs(&self, id: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == id))
            && !self.except.iter().any(|e| e == id)
    }
}

/// Whether finished jobs are worth a launch now. Each call starts a process, so finished jobs
/// are acknowledged in batches (a quarter of the job limit), unless the extension's queue is
/// about to run dry (its next jobs are created in the same call) or the oldest has waited
/// `ack_delay_ms`; never sooner than `continue_delay_ms` after the last call. Pure: `now` in.
fn acknowledge_due(
    cfg: &HostConfig,
    counts: ferry_store::JobCounts,
    job_limit: u32,
    now: i64,
    last_call_ended_ms: i64,
) -> bool {
    if counts.finished() == 0
        || now < last_call_ended_ms.saturating_add(cfg.continue_delay_ms as i64)
    {
        return false;
    }
    counts.registered < cfg.refill_below
        || counts.finished() >= (job_limit / 4).max(1)
        || now >= last_call_ended_ms.saturating_add(cfg.ack_delay_ms as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_store::JobCounts;

    #[test]
    fn finished_jobs_are_acknowledged_in_batches_unless_the_queue_runs_dry() {
        let cfg = HostConfig::new(PathBuf::new(), PathBuf::new()); // refill 8, 100 ms, 30 s
        let counts = |registered, succeeded| JobCounts {
            registered,
            pending: 4,
            succeeded,
            failed: 0,
        };
        let at = 1_000_000;
        // Nothing finished: no reason.
        assert!(!acknowledge_due(&cfg, counts(0, 0), 200, at, 0));
        // A few finished, plenty queued: wait for the batch.
        assert!(!acknowledge_due(&cfg, counts(100, 10), 200, at, at - 1_000));
        // A quarter of the limit: now.
        assert!(acknowledge_due(&cfg, counts(100, 50), 200, at, at - 1_000));
        // The queue is about to run dry: now, even for one.
        assert!(acknowledge_due(&cfg, counts(7, 1), 200, at, at - 1_000));
        // ... but never right after the last call.
        assert!(!acknowledge_due(&cfg, counts(7, 1), 200, at, at - 50));
        // The oldest has waited long enough: now.
        assert!(acknowledge_due(&cfg, counts(100, 1), 200, at, at - 30_000));
        // A job limit under 4 still batches by one.
        assert!(acknowledge_due(&cfg, counts(100, 1), 3, at, at - 1_000));
    }
}

/// Whether an extension has anything left to do, as far as Ferry can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Up to date: it answered `completed` for the library as it is, and none of its jobs
    /// is queued, in flight or waiting to be acknowledged or retried.
    Yes,
    /// Still working (or about to be called).
    No,
    /// Its last calls failed: `consecutive` in a row, the last with `last_error`.
    Failing {
        consecutive: u32,
        last_error: String,
    },
    /// Not installed or not enabled.
    Absent,
}

/// What the host remembers per extension across calls (persisted as JSON in the store).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Runtime {
    /// The consent this record belongs to; a new enable starts afresh.
    enabled_at_ms: i64,
    consecutive_failures: u32,
    backoff_until_ms: i64,
    last_call_started_ms: Option<i64>,
    last_call_ended_ms: Option<i64>,
    last_outcome: Option<CallOutcome>,
    last_error: Option<String>,
    /// The library's token when the extension last answered `completed`.
    completed_token: Option<String>,
    continue_requested: bool,
    calls: u64,
    failures: u64,
    #[serde(skip)]
    running: bool,
}

/// What `ferry extensions list` and the daemon's status show.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExtensionStatus {
    pub id: String,
    pub name: Option<String>,
    pub installed: bool,
    pub enabled: bool,
    pub state: ExtensionState,
    /// `completed`, `processing`, `failure`, `crashed`, `stopped`, ...
    pub last_outcome: Option<String>,
    pub last_message: Option<String>,
    pub last_error: Option<String>,
    /// Failures since the last good answer.
    pub consecutive_failures: u32,
    pub failures: u64,
    pub calls: u64,
    pub backoff_until_ms: Option<i64>,
    pub last_call_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtensionState {
    NotInstalled,
    Disabled,
    Idle,
    Running,
    BackingOff,
}

#[derive(Debug)]
struct Inner {
    store: Arc<Mutex<Store>>,
    config: HostConfig,
    runtime: Mutex<HashMap<String, Runtime>>,
    /// One call at a time per extension (the scheduler and `call_now` share it).
    call_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    wake: Notify,
    disabled: watch::Sender<u64>,
    jobs_changed: watch::Sender<u64>,
    /// Bumped after every call's outcome is recorded.
    calls: watch::Sender<u64>,
}

/// The extension host. Cheap to clone (one shared state).
#[derive(Debug, Clone)]
pub struct Host {
    inner: Arc<Inner>,
}

impl Host {
    pub fn new(store: Arc<Mutex<Store>>, config: HostConfig) -> Result<Host, HostError> {
        let mut runtime = HashMap::new();
        {
            let s = store.lock().map_err(|_| HostError::StoreUnavailable)?;
            for c in s.consents()? {
                if let Some(body) = s.extension_runtime(&c.id)? {
                    // A record this version cannot read starts afresh rather than failing.
                    let rt: Runtime = serde_json::from_str(&body).unwrap_or_default();
                    runtime.insert(c.id.clone(), rt);
                }
            }
        }
        Ok(Host {
            inner: Arc::new(Inner {
                store,
                config,
                runtime: Mutex::new(runtime),
                call_locks: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                disabled: watch::channel(0).0,
                jobs_changed: watch::channel(0).0,
                calls: watch::channel(0).0,
            }),
        })
    }

    /// One launch of `m` with this host's configuration, disable signal and job counter.
    pub(crate) fn launch_of<'a>(
        &'a self,
        manifest: &'a Manifest,
        init: InitializeParams,
        ctx: serve::Context,
        gate: watch::Receiver<Gate>,
        stop: watch::Receiver<bool>,
    ) -> session::Launch<'a> {
        session::Launch {
            manifest,
            init,
            ctx,
            config: &self.inner.config,
            gate,
            stop,
            disabled: self.inner.disabled.subscribe(),
            jobs_changed: &self.inner.jobs_changed,
        }
    }

    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    /// The library changed or jobs finished: look for work now.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Bumped after every transaction an extension made (new jobs for the transfer engine).
    pub fn jobs_changed(&self) -> watch::Receiver<u64> {
        self.inner.jobs_changed.subscribe()
    }

    /// Bumped after every call ends (its outcome recorded): see [`Host::settled`].
    pub fn calls(&self) -> watch::Receiver<u64> {
        self.inner.calls.subscribe()
    }

    /// Whether `id` is done for now (see [`Settled`]).
    pub fn settled(&self, id: &str) -> Result<Settled, HostError> {
        let Some(c) = self.lock_store()?.consent(id)?.filter(Consent::is_enabled) else {
            return Ok(Settled::Absent);
        };
        if manifest::find_in(&self.inner.config.manifest_dirs(), id)?.is_none() {
            return Ok(Settled::Absent);
        }
        let rt = self.with_runtime(id, |rt| rt.clone());
        if rt.enabled_at_ms == c.enabled_at_ms && rt.consecutive_failures > 0 && !rt.running {
            return Ok(Settled::Failing {
                consecutive: rt.consecutive_failures,
                last_error: rt.last_error.unwrap_or_default(),
            });
        }
        if rt.running || rt.continue_requested || rt.enabled_at_ms != c.enabled_at_ms {
            return Ok(Settled::No);
        }
        let store = self.lock_store()?;
        if rt.completed_token.as_deref() != Some(store.current_change_token()?.as_str()) {
            return Ok(Settled::No);
        }
        let counts = store.job_counts(id)?;
        Ok(if counts.open() == 0 && counts.finished() == 0 {
            Settled::Yes
        } else {
            Settled::No
        })
    }

    /// Disables `id` (consent revoked, jobs cancelled, one commit) and stops its running call
    /// at once.
    pub fn disable(&self, id: &str) -> Result<DisableReport, HostError> {
        let report = {
            let mut s = self.lock_store()?;
            consent::disable(&mut s, id, now_ms())?
        };
        self.inner.disabled.send_modify(|n| *n = n.wrapping_add(1));
        Ok(report)
    }

    fn lock_store(&self) -> Result<std::sync::MutexGuard<'_, Store>, HostError> {
        self.inner
            .store
            .lock()
            .map_err(|_| HostError::StoreUnavailable)
    }

    fn call_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .inner
            .call_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        locks.entry(id.to_owned()).or_default().clone()
    }

    fn with_runtime<T>(&self, id: &str, f: impl FnOnce(&mut Runtime) -> T) -> T {
        let mut map = self.inner.runtime.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(id.to_owned()).or_default())
    }

    /// Gives back the memory the host's store connection caches (the daemon went idle).
    pub fn release_memory(&self) {
        if let Ok(store) = self.inner.store.lock() {
            let _ = store.release_memory();
        }
    }

    /// Status of every installed or consented extension, by id.
    pub fn status(&self) -> Vec<ExtensionStatus> {
        let (manifests, _) = manifest::load_dirs(&self.inner.config.manifest_dirs());
        let consents: Vec<Consent> = self
            .inner
            .store
            .lock()
            .ok()
            .and_then(|s| s.consents().ok())
            .unwrap_or_default();
        let mut ids: Vec<String> = manifests
            .iter()
            .map(|m| m.id.clone())
            .chain(consents.iter().map(|c| c.id.clone()))
            .collect();
        ids.sort();
        ids.dedup();
        let now = now_ms();
        let runtime = self
            .inner
            .runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        ids.into_iter()
            .map(|id| {
                let m = manifests.iter().find(|m| m.id == id);
                let c = consents.iter().find(|c| c.id == id);
                let enabled = c.is_some_and(Consent::is_enabled);
                let rt = runtime
                    .get(&id)
                    .filter(|rt| c.is_some_and(|c| c.enabled_at_ms == rt.enabled_at_ms))
                    .cloned()
                    .unwrap_or_default();
                let state = if m.is_none() {
                    ExtensionState::NotInstalled
                } else if !enabled {
                    ExtensionState::Disabled
                } else if rt.running {
                    ExtensionState::Running
                } else if rt.consecutive_failures > 0 && rt.backoff_until_ms > now {
                    ExtensionState::BackingOff
                } else {
                    ExtensionState::Idle
                };
                let last_message = match &rt.last_outcome {
                    Some(CallOutcome::Answered { message, .. }) => message.clone(),
                    _ => None,
                };
                ExtensionStatus {
                    name: m.map(|m| m.name.clone()),
                    installed: m.is_some(),
                    enabled,
                    state,
                    last_outcome: rt.last_outcome.as_ref().map(CallOutcome::label),
                    last_message,
                    last_error: rt.last_error.clone(),
                    consecutive_failures: rt.consecutive_failures,
                    failures: rt.failures,
                    calls: rt.calls,
                    backoff_until_ms: (rt.consecutive_failures > 0).then_some(rt.backoff_until_ms),
                    last_call_ms: rt.last_call_started_ms,
                    id,
                }
            })
            .collect()
    }

    /// One launch and `process_jobs` round of `id` now, whatever its backoff (for `ferry
    /// backup`). Waits for a call of the same extension already running.
    pub async fn call_now(&self, id: &str) -> Result<CallOutcome, HostError> {
        let m = manifest::find_in(&self.inner.config.manifest_dirs(), id)?
            .ok_or_else(|| HostError::NotInstalled(id.to_owned()))?;
        let (_gate_tx, gate) = watch::channel(Gate::Allow);
        let (_stop_tx, stop) = watch::channel(false);
        let lock = self.call_lock(id);
        let _held = lock.lock().await;
        let c = self
            .lock_store()?
            .consent(id)?
            .filter(Consent::is_enabled)
            .ok_or_else(|| HostError::NotEnabled(id.to_owned()))?;
        let reasons = self.reasons(&c, now_ms()).unwrap_or_default();
        Ok(self.call(&m, &c, reasons, gate, stop).await)
    }

    /// Why `c`'s extension should be called now, or `None` if it should not; `Some(vec![])`
    /// never happens from the scheduler (no reason, no call).
    fn reasons(&self, c: &Consent, now: i64) -> Option<Vec<CallReason>> {
        let rt = self.with_runtime(&c.id, |rt| {
            if rt.enabled_at_ms != c.enabled_at_ms {
                *rt = Runtime {
                    enabled_at_ms: c.enabled_at_ms,
                    ..Runtime::default()
                };
            }
            rt.clone()
        });
        if rt.consecutive_failures > 0 {
            return (now >= rt.backoff_until_ms).then(|| vec![CallReason::AfterFailure]);
        }
        if rt.continue_requested {
            let due =
                rt.last_call_ended_ms.unwrap_or(0) + self.inner.config.continue_delay_ms as i64;
            return (now >= due).then(|| vec![CallReason::Continue]);
        }
        let store = self.inner.store.lock().ok()?;
        let mut reasons = Vec::new();
        match &rt.completed_token {
            None => reasons.push(CallReason::FirstRun),
            Some(t) => {
                if store.current_change_token().ok()? != *t {
                    reasons.push(CallReason::LibraryChanged);
                }
            }
        }
        let since = rt.last_call_started_ms.unwrap_or(i64::MIN);
        let counts = store.job_counts(&c.id).ok()?;
        let last_ended = rt.last_call_ended_ms.unwrap_or(i64::MIN);
        if counts.finished() > 0
            && self.acknowledge_due(counts, c.job_limit, now, last_ended)
            && serve::finished_since(&store, &c.id, ferry_core::job::Action::Acknowledge, since)
                .unwrap_or(false)
        {
            reasons.push(CallReason::JobsFinished);
        }
        if counts.failed > 0
            && serve::finished_since(&store, &c.id, ferry_core::job::Action::Retry, since)
                .unwrap_or(false)
        {
            reasons.push(CallReason::RetryAvailable);
        }
        (!reasons.is_empty()).then_some(reasons)
    }

    fn acknowledge_due(
        &self,
        counts: ferry_store::JobCounts,
        job_limit: u32,
        now: i64,
        last_call_ended_ms: i64,
    ) -> bool {
        acknowledge_due(
            &self.inner.config,
            counts,
            job_limit,
            now,
            last_call_ended_ms,
        )
    }

    /// When the scheduler should look at `c` again without being woken.
    fn next_due_ms(&self, id: &str) -> Option<i64> {
        let cfg = &self.inner.config;
        let (running, due, last_ended) = self.with_runtime(id, |rt| {
            let last_ended = rt.last_call_ended_ms.unwrap_or(0);
            let due = if rt.consecutive_failures > 0 {
                Some(rt.backoff_until_ms)
            } else if rt.continue_requested {
                Some(last_ended + cfg.continue_delay_ms as i64)
            } else {
                None
            };
            (rt.running, due, last_ended)
        });
        if running {
            return None;
        }
        if due.is_some() {
            return due;
        }
        // Finished jobs held back for a batch are acknowledged after `ack_delay_ms` at the latest
        // (or as soon as the minimum interval allows, when only that held them).
        let counts = self.inner.store.lock().ok()?.job_counts(id).ok()?;
        (counts.finished() > 0).then(|| {
            let soon = last_ended + cfg.continue_delay_ms as i64;
            let late = last_ended + cfg.ack_delay_ms as i64;
            if counts.registered < cfg.refill_below {
                soon
            } else {
                late
            }
        })
    }

    /// What a launch of `m` starts with: the `initialize` params (the protocol version its
    /// manifest asks for; for version 2, the recorded import status) and the serving context.
    fn launch_parts(
        &self,
        m: &Manifest,
        c: &Consent,
    ) -> Result<(InitializeParams, serve::Context), HostError> {
        let s = self.lock_store()?;
        let roots = s.roots()?;
        // A version 1 extension gets exactly what it always got: no `migration` field.
        let migration = if m.protocol_version >= p::MIGRATION_PROTOCOL_VERSION {
            s.import_status(&m.id)?.map(|st| p::MigrationInfo {
                import_status: Some(migration::status_view(st)),
            })
        } else {
            None
        };
        drop(s);
        let scope = consent::scope_of(c);
        let ctx = serve::Context {
            extension: m.id.clone(),
            scope: serve::ScopeFilter::new(&scope, &roots),
            store: self.inner.store.clone(),
        };
        let init = InitializeParams {
            protocol_version: m.protocol_version,
            extension_id: m.id.clone(),
            ferry_version: env!("CARGO_PKG_VERSION").to_owned(),
            config: m.config.clone(),
            scope,
            destination_bases: c.bases.clone(),
            job_limit: c.job_limit,
            migration,
        };
        Ok((init, ctx))
    }

    /// Runs one call and records its outcome. A pending migration import runs first, in its
    /// own launch, so the `process_jobs` launch's `initialize` carries its outcome.
    async fn call(
        &self,
        m: &Manifest,
        c: &Consent,
        reasons: Vec<CallReason>,
        gate: watch::Receiver<Gate>,
        stop: watch::Receiver<bool>,
    ) -> CallOutcome {
        let started = now_ms();
        self.with_runtime(&m.id, |rt| {
            rt.running = true;
            rt.last_call_started_ms = Some(started);
        });
        // Interrupted (shutdown, conditions): no process_jobs before the import has run.
        let interrupted = match self.import_pending(m, c, gate.clone(), stop.clone()).await {
            Ok(Some(migration::ImportOutcome::Interrupted { reason })) => Some(reason),
            Ok(_) => None,
            Err(e) => Some(format!("the pending import could not run: {e}")),
        };
        let prepared = (|| -> Result<(String, InitializeParams, serve::Context), HostError> {
            let token = self.lock_store()?.current_change_token()?;
            let (init, ctx) = self.launch_parts(m, c)?;
            Ok((token, init, ctx))
        })();
        let outcome = match (interrupted, prepared) {
            (Some(message), _) => {
                let outcome = CallOutcome::Failed {
                    failure: CallFailure::SpawnFailed { message },
                };
                self.record(&m.id, &outcome, String::new());
                outcome
            }
            (None, Err(e)) => CallOutcome::Failed {
                failure: CallFailure::SpawnFailed {
                    message: e.to_string(),
                },
            },
            (None, Ok((token_before, init, ctx))) => {
                let outcome = session::run(self.launch_of(m, init, ctx, gate, stop), reasons).await;
                self.record(&m.id, &outcome, token_before);
                outcome
            }
        };
        self.with_runtime(&m.id, |rt| rt.running = false);
        // After `running` is cleared: a watcher woken by this sees the call over.
        self.inner.calls.send_modify(|n| *n = n.wrapping_add(1));
        outcome
    }

    fn record(&self, id: &str, outcome: &CallOutcome, token_before: String) {
        let now = now_ms();
        let policy = self.inner.config.backoff;
        let body = self.with_runtime(id, |rt| {
            rt.calls += 1;
            rt.last_call_ended_ms = Some(now);
            rt.last_outcome = Some(outcome.clone());
            rt.continue_requested = false;
            match outcome {
                CallOutcome::Answered {
                    status: ProcessStatus::Completed,
                    ..
                } => {
                    rt.consecutive_failures = 0;
                    rt.last_error = None;
                    rt.completed_token = Some(token_before);
                }
                CallOutcome::Answered {
                    status: ProcessStatus::Processing,
                    ..
                } => {
                    rt.consecutive_failures = 0;
                    rt.last_error = None;
                    rt.continue_requested = true;
                }
                CallOutcome::NotEnabled => {}
                failed => {
                    rt.failures += 1;
                    rt.consecutive_failures = rt.consecutive_failures.saturating_add(1);
                    // Half fixed, half jitter: never "again at once", never in lockstep.
                    let cap = policy.backoff_ms(rt.consecutive_failures, 1.0);
                    let delay = cap / 2 + policy.backoff_ms(rt.consecutive_failures, jitter()) / 2;
                    rt.backoff_until_ms = now.saturating_add(delay.min(i64::MAX as u64) as i64);
                    rt.last_error = Some(match failed {
                        CallOutcome::Failed { failure } => failure.to_string(),
                        CallOutcome::Answered { message, .. } => message
                            .clone()
                            .unwrap_or_else(|| "answered failure".to_owned()),
                        CallOutcome::NotEnabled => String::new(),
                    });
                }
            }
            serde_json::to_string(rt).ok()
        });
        if let (Some(body), Ok(mut s)) = (body, self.inner.store.lock()) {
            // Losing this record costs at most one early call after a restart.
            let _ = s.put_extension_runtime(id, &body, now);
        }
        if outcome.is_failure() {
            tracing::warn!(extension = id, outcome = %outcome.label(), "extension call failed; backing off");
        }
    }

    /// The scheduler: calls every enabled extension when it has work and the gate allows,
    /// until `stop` turns true; then lets running calls wind down (they get
    /// `will_terminate(shutdown)`) and returns.
    pub async fn run(&self, mut gate: watch::Receiver<Gate>, mut stop: watch::Receiver<bool>) {
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut gate_open_ended = false;
        let mut stop_ended = false;
        loop {
            if *stop.borrow() {
                break;
            }
            let now = now_ms();
            let poll = Duration::from_millis(self.inner.config.poll_interval_ms);
            let mut next = Instant::now() + poll;
            if matches!(*gate.borrow(), Gate::Allow) {
                let (manifests, _) = manifest::load_dirs(&self.inner.config.manifest_dirs());
                let consents = self
                    .inner
                    .store
                    .lock()
                    .ok()
                    .and_then(|s| s.consents().ok())
                    .unwrap_or_default();
                for c in consents
                    .into_iter()
                    .filter(|c| c.is_enabled() && self.inner.config.runs(&c.id))
                {
                    let Some(m) = manifests.iter().find(|m| m.id == c.id) else {
                        continue;
                    };
                    if tasks.len() >= self.inner.config.max_concurrent_calls
                        || self.with_runtime(&c.id, |rt| rt.running)
                    {
                        continue;
                    }
                    if let Some(reasons) = self.reasons(&c, now) {
                        self.with_runtime(&c.id, |rt| rt.running = true);
                        let host = self.clone();
                        let m = m.clone();
                        let (g, s) = (gate.clone(), stop.clone());
                        tasks.spawn(async move {
                            let lock = host.call_lock(&m.id);
                            let _held = lock.lock().await;
                            host.call(&m, &c, reasons, g, s).await;
                        });
                    } else if let Some(at) = self.next_due_ms(&c.id) {
                        let wait = Duration::from_millis(at.saturating_sub(now).max(0) as u64);
                        next = next.min(Instant::now() + wait);
                    }
                }
            }
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                r = gate.changed(), if !gate_open_ended => {
                    if r.is_err() { gate_open_ended = true; }
                }
                r = stop.changed(), if !stop_ended => {
                    if r.is_err() { stop_ended = true; }
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = tokio::time::sleep_until(next) => {}
            }
        }
        while tasks.join_next().await.is_some() {}
    }
}
