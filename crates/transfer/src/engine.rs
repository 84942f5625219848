//! The engine loop: takes jobs from the job store, runs their uploads concurrently, retries
//! transient failures by `ferry_core::retry`'s policy, and records the outcome.
//!
//! Durability: `registered → pending` is recorded before the first byte is sent; the retry
//! state (attempts, not-before time) and the upload's resume point live in the job's
//! [`UploadSession`], saved before the engine acts on them. A job becomes `succeeded` or
//! `failed` in the store only on success or when the budget is spent; a restart finds its
//! `pending` jobs again (fetch by `process`) and resumes them with their budget intact.
//!
//! Scheduling: at most `max_concurrent` transfers, `max_concurrent_per_origin` per origin, jobs
//! of different extensions taken in turn (fair share), an origin in backoff
//! ([`OriginBackoff`]) left alone until it is ready.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_core::job::{Action, ErrorCode, Job, JobState, Outcome, TransferEvent, TransitionError};
use ferry_core::retry::{OriginBackoff, RetryPolicy, Verdict};
use ferry_store::{JobStore, JobStoreError, Store};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::session::{SessionStoreError, UploadSession, UploadSessionStore};
use crate::upload::{TransferConfig, UploadError, UploadJob, Uploader};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A jitter sample in `[0, 1)`, from the standard library's per-process random hash keys.
fn jitter() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_ms());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Finds a job's file from its resource id.
pub trait ResourceLocator: Send + Sync + std::fmt::Debug {
    fn locate(&self, resource_id: &str) -> Option<PathBuf>;
}

/// Resource ids mapped to paths by the caller (tests, one-off uploads).
#[derive(Debug, Default, Clone)]
pub struct MapLocator(pub Arc<Mutex<HashMap<String, PathBuf>>>);

impl MapLocator {
    pub fn insert(&self, resource_id: impl Into<String>, path: impl Into<PathBuf>) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(resource_id.into(), path.into());
        }
    }
}

impl ResourceLocator for MapLocator {
    fn locate(&self, resource_id: &str) -> Option<PathBuf> {
        self.0.lock().ok()?.get(resource_id).cloned()
    }
}

/// Resources as the library index knows them.
#[derive(Debug, Clone)]
pub struct StoreLocator(pub Arc<Mutex<Store>>);

impl ResourceLocator for StoreLocator {
    fn locate(&self, resource_id: &str) -> Option<PathBuf> {
        self.0
            .lock()
            .ok()?
            .resource(resource_id)
            .ok()?
            .map(|r| r.path)
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Extensions whose jobs this engine carries out; empty: every extension the job store
    /// knows, read again each time the engine looks for work (a daemon's extensions come and go).
    pub extensions: Vec<String>,
    pub max_concurrent: usize,
    pub max_concurrent_per_origin: usize,
    pub retry: RetryPolicy,
    pub transfer: TransferConfig,
    /// How often `run` looks for new jobs when nobody calls [`Engine::wake`].
    pub poll_interval: Duration,
    /// When `run` is told to stop: how long the requests in flight get to finish (their
    /// progress saved) before they are abandoned.
    pub stop_grace: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            extensions: Vec::new(),
            max_concurrent: 4,
            max_concurrent_per_origin: 2,
            retry: RetryPolicy::default(),
            transfer: TransferConfig::default(),
            poll_interval: Duration::from_secs(5),
            stop_grace: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Jobs(#[from] JobStoreError),
    #[error(transparent)]
    Sessions(#[from] SessionStoreError),
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("engine task: {0}")]
    Task(String),
}

/// What a run did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    pub succeeded: u32,
    pub failed: u32,
    /// Attempts that failed and were scheduled again.
    pub retried: u32,
}

#[derive(Debug, Default)]
struct OriginState {
    backoff: OriginBackoff,
    running: usize,
}

/// How one job's attempt ended.
#[derive(Debug)]
enum JobEnd {
    Succeeded,
    Failed,
    Retry,
    /// The engine is stopping; the job's progress is saved and it stays `pending`.
    Stopped,
    /// The job left `process` under us (cancelled): nothing to record.
    Gone,
}

/// What one recorded transfer event came to: its job's new state, or why it did not apply.
type Recorded = Result<Result<Job, TransitionError>, EngineError>;

/// Group commit of the workers' transfer events. Each `Start`/`Finish` is durable before its
/// worker acts on it (the worker awaits the answer), but the events that arrive while one
/// commit is in progress all go into the next one: with many transfers in flight, one fsync
/// carries many state changes instead of one each (two per job would cap a loopback backup
/// at the disk's fsync rate).
#[derive(Debug, Clone)]
struct Recorder {
    queue: mpsc::UnboundedSender<(TransferEvent, oneshot::Sender<Recorded>)>,
}

impl Recorder {
    /// Starts the committing task; it ends when the last `Recorder` clone is dropped.
    fn start<J: JobStore + Send + 'static>(jobs: Arc<Mutex<J>>) -> Recorder {
        let (queue, mut rx) =
            mpsc::unbounded_channel::<(TransferEvent, oneshot::Sender<Recorded>)>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let (events, replies): (Vec<TransferEvent>, Vec<_>) = batch.into_iter().unzip();
                let jobs = jobs.clone();
                let results = tokio::task::spawn_blocking(move || commit_events(&jobs, &events))
                    .await
                    .unwrap_or_else(|e| {
                        replies
                            .iter()
                            .map(|_| Err(EngineError::Task(e.to_string())))
                            .collect()
                    });
                for (reply, result) in replies.into_iter().zip(results) {
                    // A worker that was stopped meanwhile no longer listens: its event is
                    // recorded all the same, as it would have been without batching.
                    let _ = reply.send(result);
                }
            }
        });
        Recorder { queue }
    }

    /// Records one event; answers once it is committed.
    async fn record(&self, event: TransferEvent) -> Recorded {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((event, tx))
            .map_err(|_| EngineError::Task("event recorder stopped".into()))?;
        rx.await
            .map_err(|_| EngineError::Task("event recorder stopped".into()))?
    }
}

/// Commits `events` in one transaction; if that fails as a whole, each alone, so every event
/// gets its own answer (and one bad event cannot fail its neighbours).
fn commit_events<J: JobStore>(jobs: &Mutex<J>, events: &[TransferEvent]) -> Vec<Recorded> {
    let Ok(mut j) = jobs.lock() else {
        return events
            .iter()
            .map(|_| Err(EngineError::Task("job store lock poisoned".into())))
            .collect();
    };
    match j.record(events, now_ms()) {
        Ok(results) if results.len() == events.len() => results.into_iter().map(Ok).collect(),
        _ => events
            .iter()
            .map(|e| match j.record(std::slice::from_ref(e), now_ms()) {
                Ok(mut r) if r.len() == 1 => Ok(r.remove(0)),
                Ok(_) => Err(EngineError::Task(
                    "job store answered the wrong count".into(),
                )),
                Err(err) => Err(err.into()),
            })
            .collect(),
    }
}

/// The transfer engine. `J` is the job store, shared with whoever creates jobs.
#[derive(Debug)]
pub struct Engine<J> {
    jobs: Arc<Mutex<J>>,
    sessions: Arc<dyn UploadSessionStore>,
    locator: Arc<dyn ResourceLocator>,
    uploader: Arc<Uploader>,
    config: EngineConfig,
    origins: Arc<Mutex<HashMap<String, OriginState>>>,
    wake: Arc<Notify>,
    /// The policy's largest file allowed now (a metered network's small-file allowance); `0`:
    /// no limit. Larger files wait (see [`Engine::set_policy_limits`]).
    max_file_bytes: AtomicU64,
}

fn origin_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}:{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port_or_known_default().unwrap_or(0)
        ),
        Err(_) => url.to_string(),
    }
}

impl<J: JobStore + Send + 'static> Engine<J> {
    pub fn new(
        jobs: Arc<Mutex<J>>,
        sessions: Arc<dyn UploadSessionStore>,
        locator: Arc<dyn ResourceLocator>,
        config: EngineConfig,
    ) -> Result<Engine<J>, EngineError> {
        let uploader = Arc::new(Uploader::new(config.transfer.clone())?);
        Ok(Engine {
            jobs,
            sessions,
            locator,
            uploader,
            config,
            origins: Arc::new(Mutex::new(HashMap::new())),
            wake: Arc::new(Notify::new()),
            max_file_bytes: AtomicU64::new(0),
        })
    }

    /// What the device's policy allows now: an upload rate not to exceed (over the configured
    /// one, from the next block of every transfer) and the largest file that may start (a
    /// metered network's small-file allowance; larger files wait, uploads already running go
    /// on). `None`: no such limit.
    pub fn set_policy_limits(
        &self,
        bandwidth_cap_bytes_per_s: Option<u64>,
        max_file_bytes: Option<u64>,
    ) {
        self.uploader.set_policy_cap(bandwidth_cap_bytes_per_s);
        let new = max_file_bytes.map_or(0, |m| m.max(1));
        if self.max_file_bytes.swap(new, Ordering::SeqCst) != new {
            self.wake.notify_one();
        }
    }

    /// Whether the job's file is over the policy's size limit now (a file that cannot be
    /// looked at is not: its upload fails with the reason).
    fn too_large_now(&self, job: &Job) -> bool {
        let max = self.max_file_bytes.load(Ordering::SeqCst);
        max > 0
            && self
                .locator
                .locate(&job.resource_id)
                .and_then(|p| std::fs::metadata(p).ok())
                .is_some_and(|m| m.len() > max)
    }

    /// Tells a running engine that new jobs were committed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn lock_jobs(&self) -> Result<std::sync::MutexGuard<'_, J>, EngineError> {
        self.jobs
            .lock()
            .map_err(|_| EngineError::Task("job store lock poisoned".into()))
    }

    /// Jobs to process, extensions interleaved so none starves the others, starting with the
    /// extension whose turn it is.
    fn candidates(&self, turn: usize) -> Result<Vec<(usize, Job)>, EngineError> {
        let jobs = self.lock_jobs()?;
        let all;
        let extensions = if self.config.extensions.is_empty() {
            all = jobs.extensions()?;
            &all
        } else {
            &self.config.extensions
        };
        let n = extensions.len();
        let mut per_ext = Vec::new();
        for k in 0..n {
            let i = (turn + k) % n;
            let list = jobs.fetch(&extensions[i], Action::Process)?;
            per_ext.push(list.into_iter().map(move |j| (i, j)));
        }
        drop(jobs);
        let mut out = Vec::new();
        loop {
            let before = out.len();
            for it in per_ext.iter_mut() {
                if let Some(j) = it.next() {
                    out.push(j);
                }
            }
            if out.len() == before {
                return Ok(out);
            }
        }
    }

    /// Processes jobs until none is left to process; returns what happened. Jobs waiting for
    /// a retry keep the run alive until they end.
    pub async fn run_until_idle(&self) -> Result<RunReport, EngineError> {
        self.run_loop(false, std::future::pending()).await
    }

    /// Processes jobs until `stop` resolves, then drains: no new job or chunk is started, the
    /// requests in flight finish and their progress is saved (at most `stop_grace`; after that
    /// they are abandoned, and their sessions still let the next run resume them).
    pub async fn run(
        &self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<RunReport, EngineError> {
        self.run_loop(true, stop).await
    }

    async fn run_loop(
        &self,
        forever: bool,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<RunReport, EngineError> {
        tokio::pin!(stop);
        // Set once `stop` resolved: the moment the requests in flight are abandoned.
        let mut draining_until: Option<tokio::time::Instant> = None;
        self.uploader.set_stopping(false);
        let mut report = RunReport::default();
        let mut running: HashSet<Uuid> = HashSet::new();
        let mut tasks: JoinSet<(Uuid, String, Result<JobEnd, EngineError>)> = JoinSet::new();
        let mut turn = 0usize;
        let recorder = Recorder::start(self.jobs.clone());
        // The jobs to process, read again only when someone says there are new ones, the poll
        // interval passes, or a job must be re-read (it will be retried): reading every job
        // after each finished transfer made the loop quadratic in the job limit.
        let mut cached: Vec<(usize, Job)> = Vec::new();
        let mut stale = true;
        loop {
            let now = now_ms();
            let mut wake_at: Option<i64> = None;
            if stale && draining_until.is_none() {
                cached = self.candidates(turn)?;
                stale = false;
            }
            let mut waiting = 0usize;
            if draining_until.is_some() {
                if tasks.is_empty() {
                    return Ok(report);
                }
                cached.clear();
            }
            for (ext_index, job) in &cached {
                if running.contains(&job.id) {
                    continue;
                }
                if running.len() >= self.config.max_concurrent.max(1) {
                    waiting += 1;
                    continue;
                }
                if self.too_large_now(job) {
                    // Waits for the limit to go (a wake); a run that is not `forever` ends
                    // without it rather than wait for another network.
                    if forever {
                        waiting += 1;
                    }
                    continue;
                }
                let session = self.sessions.load(job.id)?;
                if let Some(s) = &session
                    && s.not_before_ms > now
                {
                    waiting += 1;
                    wake_at = Some(wake_at.map_or(s.not_before_ms, |w| w.min(s.not_before_ms)));
                    continue;
                }
                let origin = origin_of(&job.destination.url);
                {
                    let mut origins = self
                        .origins
                        .lock()
                        .map_err(|_| EngineError::Task("origin lock poisoned".into()))?;
                    let o = origins.entry(origin.clone()).or_default();
                    if !o.backoff.ready(now) {
                        waiting += 1;
                        wake_at =
                            Some(wake_at.map_or(o.backoff.until_ms, |w| w.min(o.backoff.until_ms)));
                        continue;
                    }
                    if o.running >= self.config.max_concurrent_per_origin.max(1) {
                        waiting += 1;
                        continue;
                    }
                    o.running += 1;
                }
                running.insert(job.id);
                // The next pass starts with the extension after this one.
                turn = ext_index + 1;
                let job = job.clone();
                let worker = Worker {
                    recorder: recorder.clone(),
                    sessions: self.sessions.clone(),
                    locator: self.locator.clone(),
                    uploader: self.uploader.clone(),
                    retry: self.config.retry,
                    origins: self.origins.clone(),
                };
                let session = session.unwrap_or_else(|| UploadSession::new(job.id));
                tasks.spawn(async move {
                    let id = job.id;
                    let r = worker.process(job, session, origin.clone()).await;
                    (id, origin, r)
                });
            }
            if tasks.is_empty() && waiting == 0 && !forever {
                return Ok(report);
            }
            // At least 1 ms: a zero poll interval must not become a busy loop (or a clamp panic).
            let poll_ms = (self.config.poll_interval.as_millis() as i64).max(1);
            let sleep_ms = match wake_at {
                Some(at) => (at - now_ms()).clamp(1, poll_ms),
                None => poll_ms,
            };
            let sleep = tokio::time::sleep(Duration::from_millis(sleep_ms as u64));
            let abandon = async {
                match draining_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                done = tasks.join_next(), if !tasks.is_empty() => {
                    let Some(done) = done else { continue };
                    let (id, origin, r) = done.map_err(|e| EngineError::Task(e.to_string()))?;
                    running.remove(&id);
                    cached.retain(|(_, j)| j.id != id);
                    if let Ok(mut origins) = self.origins.lock()
                        && let Some(o) = origins.get_mut(&origin)
                    {
                        o.running = o.running.saturating_sub(1);
                    }
                    match r? {
                        JobEnd::Succeeded => report.succeeded += 1,
                        JobEnd::Failed => report.failed += 1,
                        JobEnd::Retry => {
                            report.retried += 1;
                            stale = true;
                        }
                        JobEnd::Stopped | JobEnd::Gone => {}
                    }
                    // Nothing cached left to start: look for more at once.
                    if cached.iter().all(|(_, j)| running.contains(&j.id)) {
                        stale = true;
                    }
                }
                _ = sleep, if draining_until.is_none() => stale = true,
                _ = self.wake.notified(), if draining_until.is_none() => stale = true,
                _ = &mut stop, if draining_until.is_none() => {
                    self.uploader.set_stopping(true);
                    draining_until = Some(tokio::time::Instant::now() + self.config.stop_grace);
                    tracing::info!(in_flight = tasks.len(), "stopping: finishing the requests in flight");
                }
                _ = abandon, if draining_until.is_some() => {
                    tracing::warn!(
                        in_flight = tasks.len(),
                        grace_ms = self.config.stop_grace.as_millis() as u64,
                        "stopping: requests still in flight after the grace period are abandoned; their uploads resume from the last saved offset"
                    );
                    return Ok(report);
                }
            }
        }
    }
}

/// What one job's task needs (owned, so the task is `'static`).
struct Worker {
    recorder: Recorder,
    sessions: Arc<dyn UploadSessionStore>,
    locator: Arc<dyn ResourceLocator>,
    uploader: Arc<Uploader>,
    retry: RetryPolicy,
    origins: Arc<Mutex<HashMap<String, OriginState>>>,
}

impl Worker {
    /// Records a finish; `Gone` if the job is no longer pending (cancelled meanwhile).
    async fn finish(&self, id: Uuid, outcome: Outcome) -> Result<JobEnd, EngineError> {
        let failed = matches!(outcome, Outcome::Failed { .. });
        let r = self
            .recorder
            .record(TransferEvent::Finish { job: id, outcome })
            .await?;
        self.sessions.remove(id)?;
        Ok(match r {
            Ok(_) if failed => JobEnd::Failed,
            Ok(_) => JobEnd::Succeeded,
            Err(_) => JobEnd::Gone,
        })
    }

    async fn process(
        &self,
        job: Job,
        mut session: UploadSession,
        origin: String,
    ) -> Result<JobEnd, EngineError> {
        let id = job.id;
        if job.state == JobState::Registered {
            let r = self
                .recorder
                .record(TransferEvent::Start { job: id })
                .await?;
            if r.is_err() {
                return Ok(JobEnd::Gone);
            }
        }
        let Some(path) = self.locator.locate(&job.resource_id) else {
            let outcome = Outcome::Failed {
                status: None,
                headers: Vec::new(),
                error: ErrorCode::ResourceMissing,
            };
            return self.finish(id, outcome).await;
        };
        let spec = UploadJob {
            job_id: id,
            destination: &job.destination,
            metadata: &job.metadata,
            source_path: &path,
            pinned_blake3: job.content_hash,
        };
        let result = self
            .uploader
            .upload(&spec, &mut session, self.sessions.as_ref())
            .await;
        match result {
            Ok(d) => {
                if let Ok(mut o) = self.origins.lock() {
                    o.entry(origin).or_default().backoff.on_success();
                }
                tracing::info!(job = %id, protocol = d.protocol.as_str(), size_bytes = d.size_bytes, "upload succeeded");
                self.finish(
                    id,
                    Outcome::Succeeded {
                        status: d.status,
                        headers: d.headers,
                    },
                )
                .await
            }
            Err(UploadError::Session(e)) => Err(e.into()),
            Err(UploadError::Stopped) => Ok(JobEnd::Stopped),
            Err(UploadError::Failed(f)) => {
                let now = now_ms();
                if let Ok(mut o) = self.origins.lock() {
                    o.entry(origin).or_default().backoff.on_failure(
                        &self.retry,
                        f.failure,
                        now,
                        jitter(),
                    );
                }
                match self
                    .retry
                    .on_failure(&mut session.attempts, f.failure, now, jitter())
                {
                    Verdict::RetryAt(at) => {
                        tracing::info!(job = %id, failure = ?f.failure, detail = %f.detail, retry_in_ms = at - now, "attempt failed");
                        session.not_before_ms = at;
                        self.sessions.save(&session)?;
                        Ok(JobEnd::Retry)
                    }
                    Verdict::Fail(code) => {
                        tracing::warn!(job = %id, failure = ?f.failure, detail = %f.detail, %code, "upload failed");
                        self.finish(
                            id,
                            Outcome::Failed {
                                status: f.status,
                                headers: f.headers,
                                error: code,
                            },
                        )
                        .await
                    }
                }
            }
        }
    }
}
