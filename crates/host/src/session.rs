//! One launch of an extension: start it as a child process in its own process group, speak
//! the protocol over its stdin/stdout, answer its requests, and make sure that when the call
//! is over nothing of it is left running.
//!
//! Timeline of a call with budget B and grace G: `initialize`, then `process_jobs`; at B − G
//! (or when the gate turns, the user disables it, or Ferry stops) `will_terminate`; at the end
//! of the grace SIGTERM to the whole group, then SIGKILL after `term_grace_ms`. After an answer
//! Ferry closes stdin and waits briefly for the process to exit. Whatever happened, the group is
//! sent SIGKILL at the end, so children that outlive the extension do not linger.
//!
//! One launch makes one call ([`CallKind`]): `process_jobs`, or for a version 2 extension one
//! of the migration calls. The loop is the same for all; only the request sent after
//! `initialize`, the budget, and what the extension may call while it is open differ. An
//! export also ends early when it appends nothing for `export_idle_timeout_ms` (hung) or is
//! cancelled (`will_terminate` with the reason, then the usual SIGTERM / SIGKILL).
//!
//! What the extension writes: a line that is not JSON is answered `parse_error` (id null), one
//! that is not a valid JSON-RPC message `invalid_request` (`FrameError::answer`), and the call
//! goes on; after [`p::MAX_BAD_LINES`] of them in the launch, or one line over
//! [`p::MAX_MESSAGE_BYTES`], the launch stops as a protocol violation.

use crate::serve::{self, Context};
use crate::{Gate, HostConfig};
use ferry_extension::protocol::{
    self as p, CallReason, ErrorCode, Id, InitializeParams, InitializeResult, Message,
    ProcessJobsParams, ProcessJobsResult, ProcessStatus, RpcError, TerminateReason,
    WillTerminateParams,
};
use std::path::Path;
use std::process::Stdio;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::time::{Duration, Instant};

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CallOutcome {
    /// The extension answered `process_jobs`.
    Answered {
        status: ProcessStatus,
        message: Option<String>,
    },
    /// It did not answer: crashed, broke the protocol, ran out of time, or could not start.
    Failed { failure: CallFailure },
    /// Nothing ran: the extension is not enabled (any more).
    NotEnabled,
}

impl CallOutcome {
    /// Whether the host backs the extension off after this call.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            CallOutcome::Failed { .. }
                | CallOutcome::Answered {
                    status: ProcessStatus::Failure,
                    ..
                }
        )
    }

    /// A short name for status displays.
    pub fn label(&self) -> String {
        match self {
            CallOutcome::Answered { status, .. } => match status {
                ProcessStatus::Completed => "completed".into(),
                ProcessStatus::Processing => "processing".into(),
                ProcessStatus::Failure => "failure".into(),
            },
            CallOutcome::Failed { failure } => failure.label().into(),
            CallOutcome::NotEnabled => "not_enabled".into(),
        }
    }
}

/// Why a call had no answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[serde(tag = "failure", rename_all = "snake_case")]
pub enum CallFailure {
    #[error("could not start: {message}")]
    SpawnFailed { message: String },
    #[error("exited before answering (exit code {code:?}, signal {signal:?})")]
    Crashed {
        code: Option<i32>,
        signal: Option<i32>,
    },
    #[error("broke the protocol: {message}")]
    ProtocolViolation { message: String },
    /// It answered `initialize` with a version Ferry did not offer.
    #[error("answered protocol version {version}, which Ferry did not offer")]
    VersionMismatch { version: u32 },
    /// It speaks an older version than the call needs (a version 1 extension asked to
    /// export or import).
    #[error("speaks protocol version {version}; {method} needs version 2")]
    NotAvailable { method: String, version: u32 },
    /// No answer within the budget (or the grace after `will_terminate`): stopped.
    #[error("did not answer in time ({reason:?}); stopped")]
    Stopped { reason: TerminateReason },
}

impl CallFailure {
    pub fn label(&self) -> &'static str {
        match self {
            CallFailure::SpawnFailed { .. } => "spawn_failed",
            CallFailure::Crashed { .. } => "crashed",
            CallFailure::ProtocolViolation { .. } => "protocol_violation",
            CallFailure::VersionMismatch { .. } => "version_mismatch",
            CallFailure::NotAvailable { .. } => "not_available",
            CallFailure::Stopped { .. } => "stopped",
        }
    }
}

/// Everything one launch needs.
#[derive(Debug)]
pub(crate) struct Launch<'a> {
    pub manifest: &'a crate::Manifest,
    pub init: InitializeParams,
    pub ctx: Context,
    pub config: &'a HostConfig,
    pub gate: watch::Receiver<Gate>,
    pub stop: watch::Receiver<bool>,
    /// Bumped when the user disables an extension, so a running call stops at once.
    pub disabled: watch::Receiver<u64>,
    /// Bumped after every transaction that changed jobs (for the daemon's transfer engine).
    pub jobs_changed: &'a watch::Sender<u64>,
}

enum Event {
    Line(Vec<u8>),
    TooLong(usize),
    Eof,
}

/// Reads one line of at most `max` bytes (newline excluded) into `buf`.
async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Event> {
    buf.clear();
    let mut over = 0usize;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(if over > 0 {
                Event::TooLong(over)
            } else if buf.is_empty() {
                Event::Eof
            } else {
                Event::Line(std::mem::take(buf))
            });
        }
        let (chunk, done) = match avail.iter().position(|b| *b == b'\n') {
            Some(i) => (&avail[..i], Some(i + 1)),
            None => (avail, None),
        };
        if over > 0 || buf.len() + chunk.len() > max {
            over = over.max(buf.len()).saturating_add(chunk.len());
            buf.clear();
        } else {
            buf.extend_from_slice(chunk);
        }
        let used = done.unwrap_or(avail.len());
        r.consume(used);
        if done.is_some() {
            if over > 0 {
                return Ok(Event::TooLong(over));
            }
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Event::Line(std::mem::take(buf)));
        }
    }
}

/// Sends `signal` to the whole process group `pgid` (the `kill` command: no unsafe code).
async fn signal_group(pgid: u32, signal: &str) {
    let _ = tokio::process::Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

/// Copies the extension's stderr to its log file, keeping at most `max_bytes` per launch and
/// draining the rest so the extension never blocks on a full pipe.
async fn copy_log(mut from: tokio::process::ChildStderr, path: std::path::PathBuf, max_bytes: u64) {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(ferry_store::private::FILE_MODE)
        .open(&path)
        .await
        .ok();
    let mut written = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(f) = file.as_mut() {
            let room = max_bytes.saturating_sub(written) as usize;
            let take = n.min(room);
            if take > 0 && f.write_all(&buf[..take]).await.is_err() {
                file = None;
            }
            written += take as u64;
            if take < n
                && let Some(f) = file.as_mut()
            {
                let _ = f.write_all(b"\n[ferry: log truncated]\n").await;
                file = None;
            }
        }
    }
}

/// A token bucket: `rate` requests per second, bursts of `2 × rate`.
struct RateLimit {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    fn new(rate: u32) -> RateLimit {
        let rate = f64::from(rate.max(1));
        RateLimit {
            rate,
            tokens: rate * 2.0,
            at: Instant::now(),
        }
    }

    /// `None` if allowed, else how long until the next token.
    fn take(&mut self) -> Option<u64> {
        let now = Instant::now();
        let dt = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.rate * 2.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            Some((((1.0 - self.tokens) / self.rate) * 1000.0).ceil() as u64)
        }
    }
}

const INITIALIZE_ID: i64 = 1;
/// The id of the launch's one call (`process_jobs`, or a `migration.*` call).
const CALL_ID: i64 = 2;

/// How long an export may take in all when its caller sets no budget: it has no natural
/// length (a large data folder), so hangs are caught by `export_idle_timeout_ms` instead.
const EXPORT_NO_BUDGET: Duration = Duration::from_secs(30 * 24 * 3600);

/// What a launch asks of the extension after `initialize`: one kind of call.
pub(crate) enum CallKind<'a> {
    /// The usual call (several per launch in the protocol; the host makes one).
    ProcessJobs { reasons: Vec<CallReason> },
    /// Version 2: `migration.preflight`.
    Preflight,
    /// Version 2: `migration.export`, its `archive.append`s copied by the run.
    Export(Box<crate::migration::ExportRun<'a>>),
    /// Version 2: `migration.import`.
    Import { params: p::MigrationImportParams },
}

impl CallKind<'_> {
    fn method(&self) -> &'static str {
        match self {
            CallKind::ProcessJobs { .. } => p::PROCESS_JOBS,
            CallKind::Preflight => p::MIGRATION_PREFLIGHT,
            CallKind::Export(_) => p::MIGRATION_EXPORT,
            CallKind::Import { .. } => p::MIGRATION_IMPORT,
        }
    }

    /// The time the call may take, start to answer.
    fn budget(&self, m: &crate::Manifest, cfg: &HostConfig) -> Duration {
        match self {
            CallKind::ProcessJobs { .. } | CallKind::Preflight => {
                Duration::from_millis(m.call_budget_ms)
            }
            CallKind::Export(x) => x
                .time_budget_ms
                .map_or(EXPORT_NO_BUDGET, Duration::from_millis)
                .min(EXPORT_NO_BUDGET),
            CallKind::Import { .. } => Duration::from_millis(cfg.import_timeout_ms),
        }
    }

    /// The call's params, sent when `left` of its budget remains.
    fn params(&self, left: Duration) -> serde_json::Value {
        let v = match self {
            CallKind::ProcessJobs { reasons } => serde_json::to_value(ProcessJobsParams {
                reasons: reasons.clone(),
                time_budget_ms: left.as_millis() as u64,
            }),
            CallKind::Preflight => serde_json::to_value(p::Empty {}),
            CallKind::Export(x) => serde_json::to_value(p::MigrationExportParams {
                time_budget_ms: x.time_budget_ms,
            }),
            CallKind::Import { params } => serde_json::to_value(params),
        };
        v.unwrap_or_default()
    }

    fn needs_version(&self) -> u32 {
        match self {
            CallKind::ProcessJobs { .. } => p::PROTOCOL_VERSION,
            _ => p::MIGRATION_PROTOCOL_VERSION,
        }
    }
}

/// How a launch's call ended, before the call kind reads it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ended {
    /// The extension answered: its result, or its error answer.
    Answered(Result<serde_json::Value, RpcError>),
    /// No answer: crashed, broke the protocol, ran out of time, could not start.
    Failed(CallFailure),
}

/// Runs one `process_jobs` launch to its end. Never panics on anything the extension does.
pub(crate) async fn run(l: Launch<'_>, reasons: Vec<CallReason>) -> CallOutcome {
    let mut kind = CallKind::ProcessJobs { reasons };
    match run_call(l, &mut kind).await {
        Ended::Answered(Ok(v)) => match serde_json::from_value::<ProcessJobsResult>(v) {
            Ok(r) => CallOutcome::Answered {
                status: r.status,
                message: r.message.map(cut_message),
            },
            Err(e) => CallOutcome::Failed {
                failure: CallFailure::ProtocolViolation {
                    message: format!("bad process_jobs answer: {e}"),
                },
            },
        },
        Ended::Answered(Err(e)) => CallOutcome::Answered {
            status: ProcessStatus::Failure,
            message: Some(e.message),
        },
        Ended::Failed(failure) => CallOutcome::Failed { failure },
    }
}

/// The first 1 KiB of a message (on a character boundary).
fn cut_message(mut s: String) -> String {
    if s.len() > 1024 {
        let mut cut = 1024;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Runs one launch of any call kind to its end. Never panics on anything the extension does.
pub(crate) async fn run_call(mut l: Launch<'_>, kind: &mut CallKind<'_>) -> Ended {
    let m = l.manifest;
    let cfg = l.config;
    // Absolute: the extension runs in this folder, so a relative path (a relative
    // `--state-dir`) would name a folder below itself in FERRY_EXTENSION_DATA_DIR.
    let work_dir = cfg.data_dir.join("extensions").join(&m.id);
    let work_dir = std::path::absolute(&work_dir).unwrap_or(work_dir);
    // Under the state folder, the person's alone: created 0700 (the extension's data and log).
    if let Err(e) = ferry_store::private::create_private_dir_all(&work_dir) {
        return spawn_failed(format!("cannot create {}: {e}", work_dir.display()));
    }
    let mut cmd = match &cfg.prlimit {
        Some(prlimit) => {
            let mut c = tokio::process::Command::new(prlimit);
            c.arg(format!("--as={}", cfg.memory_limit_bytes))
                .arg(format!("--nofile={}", cfg.open_files_limit))
                .arg("--")
                .arg(&m.exec);
            c
        }
        None => tokio::process::Command::new(&m.exec),
    };
    cmd.args(&m.args)
        .current_dir(&work_dir)
        .env_clear()
        .envs(
            ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"]
                .iter()
                .filter_map(|k| std::env::var_os(k).map(|v| (*k, v))),
        )
        .env("FERRY_EXTENSION_ID", &m.id)
        .env("FERRY_EXTENSION_DATA_DIR", &work_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return spawn_failed(format!("{}: {e}", m.exec.display())),
    };
    let Some(pgid) = child.id() else {
        return spawn_failed("the process vanished at start".into());
    };
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        signal_group(pgid, "KILL").await;
        return spawn_failed("no pipes to the process".into());
    };
    tokio::spawn(copy_log(
        stderr,
        log_path(&cfg.data_dir, &m.id),
        cfg.max_log_bytes,
    ));

    // Reader: lines → events. Bounded channel: a flooding extension waits on its pipe.
    let (line_tx, mut lines) = mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let mut r = BufReader::with_capacity(64 * 1024, stdout);
        let mut buf = Vec::new();
        loop {
            let ev = match read_line_bounded(&mut r, &mut buf, p::MAX_MESSAGE_BYTES).await {
                Ok(ev) => ev,
                Err(_) => Event::Eof,
            };
            let last = !matches!(ev, Event::Line(_));
            if line_tx.send(ev).await.is_err() || last {
                break;
            }
        }
    });
    // Writer: never blocks the loop; an extension that stops reading fills the queue and is
    // stopped as a violation.
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(256);
    tokio::spawn(async move {
        let mut stdin = stdin;
        while let Some(line) = out_rx.recv().await {
            if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                break;
            }
        }
    });
    let mut out_tx = Some(out_tx);

    let started = Instant::now();
    let budget = kind.budget(m, cfg);
    let grace = Duration::from_millis(
        cfg.will_terminate_grace_ms
            .min(budget.as_millis().min(u128::from(u64::MAX)) as u64 / 2),
    );
    let mut warn_at = Some(started + budget - grace);
    let mut term_at = started + budget;
    let mut terminate_reason = TerminateReason::TimeBudget;
    let mut termed = false;
    let mut kill_at: Option<Instant> = None;
    let mut rate = RateLimit::new(cfg.max_calls_per_second);
    let mut initialized = false;
    // The version the extension answered `initialize` with (at most the one offered).
    let mut negotiated = p::PROTOCOL_VERSION;
    // Lines answered `parse_error` / `invalid_request` in this launch.
    let mut bad_lines = 0u32;
    let mut outcome: Option<Ended> = None;
    let mut exit_status: Option<std::process::ExitStatus> = None;
    let mut exited_at: Option<Instant> = None;
    let (mut gate_live, mut stop_live, mut disabled_live) = (true, true, true);
    // A gate that is already closed or a stop already asked for applies from the start.
    if matches!(*l.gate.borrow(), Gate::Wait(_)) {
        terminate_reason = TerminateReason::Conditions;
        term_at = started + grace;
        warn_at = Some(started);
    }
    if *l.stop.borrow() {
        terminate_reason = TerminateReason::Shutdown;
        term_at = started + grace;
        warn_at = Some(started);
    }
    // An export: hang detection (no append for the idle time) and cancellation. Other kinds
    // get a cancel channel that never turns.
    let idle = Duration::from_millis(cfg.export_idle_timeout_ms);
    let (_no_cancel, never) = watch::channel(false);
    let (mut cancel, mut idle_at) = match kind {
        CallKind::Export(x) => (x.cancel.clone(), Some(started + idle)),
        _ => (never, None),
    };
    let mut cancel_live = true;
    let mut cancelled = false;
    if *cancel.borrow() {
        cancelled = true;
        terminate_reason = TerminateReason::Cancelled;
        term_at = started + grace;
        warn_at = Some(started);
        idle_at = None;
        if let CallKind::Export(x) = kind {
            x.leave_out("cancelled");
        }
    }
    // Appends refused as cancelled: an extension that appends again after being told is
    // stopped at once.
    let mut appends_after_cancel = 0u32;
    let mut consent_check = tokio::time::interval(Duration::from_millis(1000));
    consent_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let send = |tx: &Option<mpsc::Sender<Vec<u8>>>, msg: Message| -> bool {
        match tx {
            Some(tx) => tx.try_send(msg.to_line()).is_ok(),
            None => false,
        }
    };
    let offered = l.init.protocol_version;
    let init_params = match serde_json::to_value(&l.init) {
        Ok(v) => v,
        Err(e) => return spawn_failed(e.to_string()),
    };
    send(
        &out_tx,
        Message::Request {
            id: Id::Number(INITIALIZE_ID),
            method: p::INITIALIZE.into(),
            params: init_params,
        },
    );

    // The main loop: until an outcome is known (then the process is wound down below).
    while outcome.is_none() {
        let deadline = [
            warn_at,
            Some(term_at),
            kill_at,
            idle_at,
            exited_at.map(|t| t + Duration::from_millis(500)),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(term_at);
        tokio::select! {
            ev = lines.recv() => {
                let line = match ev {
                    Some(Event::Line(line)) => line,
                    Some(Event::TooLong(n)) => {
                        outcome = violation(format!("a line of {n} bytes, over the limit of {}", p::MAX_MESSAGE_BYTES));
                        break;
                    }
                    Some(Event::Eof) | None => {
                        // Output closed: wait for the exit status below.
                        if exit_status.is_none() {
                            exit_status = tokio::time::timeout(Duration::from_secs(2), child.wait()).await.ok().and_then(Result::ok);
                        }
                        outcome = Some(if termed { stopped(terminate_reason) } else { crashed(exit_status) });
                        break;
                    }
                };
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let msg = match Message::parse(&line) {
                    Ok(msg) => msg,
                    Err(e) => {
                        // Not JSON, or not JSON-RPC: answered as JSON-RPC 2.0 says (`parse_error`
                        // with a null id, `invalid_request` with the request's id if it has
                        // one), and the call goes on. A few are a stray print; more are a flood
                        // or garbage, and stop the launch.
                        match e.answer() {
                            Some(answer) if bad_lines < p::MAX_BAD_LINES => {
                                bad_lines += 1;
                                if !send(&out_tx, answer) {
                                    outcome = violation("does not read its input".into());
                                    break;
                                }
                                continue;
                            }
                            Some(_) => {
                                outcome = violation(format!(
                                    "more than {} lines that are not JSON-RPC; the last: {e}",
                                    p::MAX_BAD_LINES
                                ));
                                break;
                            }
                            None => {
                                outcome = violation(e.to_string());
                                break;
                            }
                        }
                    }
                };
                match msg {
                    Message::Response { id, result } => {
                        match (id, result) {
                            (Id::Number(INITIALIZE_ID), Ok(v)) if !initialized => {
                                match serde_json::from_value::<InitializeResult>(v) {
                                    // Any version from 1 up to the one offered.
                                    Ok(r) if (p::PROTOCOL_VERSION..=offered).contains(&r.protocol_version) => {
                                        initialized = true;
                                        negotiated = r.protocol_version;
                                        if negotiated < kind.needs_version() {
                                            outcome = Some(Ended::Failed(CallFailure::NotAvailable {
                                                method: kind.method().into(),
                                                version: negotiated,
                                            }));
                                            continue;
                                        }
                                        let left = budget.saturating_sub(started.elapsed());
                                        send(&out_tx, Message::Request {
                                            id: Id::Number(CALL_ID),
                                            method: kind.method().into(),
                                            params: kind.params(left),
                                        });
                                        // The export's silence is counted from its request.
                                        if idle_at.is_some() {
                                            idle_at = Some(Instant::now() + idle);
                                        }
                                    }
                                    Ok(r) => {
                                        outcome = Some(Ended::Failed(CallFailure::VersionMismatch { version: r.protocol_version }));
                                    }
                                    Err(e) => outcome = violation(format!("bad initialize answer: {e}")),
                                }
                            }
                            (Id::Number(INITIALIZE_ID), Err(e)) if !initialized => {
                                outcome = violation(format!("refused initialize: {e}"));
                            }
                            (Id::Number(CALL_ID), result) if initialized => {
                                outcome = Some(Ended::Answered(result));
                            }
                            (Id::Null, Err(e)) => outcome = violation(format!("answered an error without an id (it could not read Ferry's line?): {e}")),
                            (id, _) => outcome = violation(format!("an answer to a request never sent ({id:?})")),
                        }
                    }
                    Message::Notification { .. } => {
                        // Extensions have no notifications to send; ignored, but rate-limited
                        // like requests so a flood costs the extension, not Ferry.
                        if rate.take().is_some() {
                            outcome = violation("a flood of notifications".into());
                        }
                    }
                    Message::Request { id, method, params } => {
                        // Version 2 methods exist only for an extension that speaks version 2:
                        // to a version 1 extension they are as unknown as ever.
                        let known = p::HOST_METHODS.contains(&method.as_str())
                            || (negotiated >= p::MIGRATION_PROTOCOL_VERSION
                                && p::MIGRATION_HOST_METHODS.contains(&method.as_str()));
                        let mut end_now = false;
                        let result = if !initialized {
                            Err(RpcError::new(ErrorCode::NotNow, "no call is outstanding"))
                        } else if !known {
                            Err(RpcError::new(ErrorCode::MethodNotFound, format!("no method {method:?}")))
                        } else if termed {
                            Err(RpcError::new(ErrorCode::NotNow, "the call's time is over"))
                        // `archive.append` is paced by its own answer (each is answered once
                        // its file is durable) and bounded by the export's size limit: a data
                        // folder of many small files must not be refused for its file count.
                        } else if let Some(wait_ms) = (method != p::ARCHIVE_APPEND).then(|| rate.take()).flatten() {
                            let mut data = serde_json::Map::new();
                            data.insert("retry_after_ms".into(), wait_ms.into());
                            Err(RpcError::with_data(ErrorCode::RateLimited, "too many calls", data))
                        } else if method == p::ARCHIVE_APPEND {
                            match kind {
                                CallKind::Export(x) if cancelled => {
                                    appends_after_cancel += 1;
                                    if appends_after_cancel > 1 {
                                        // Told once, it kept going: stopped now.
                                        warn_at = None;
                                        term_at = Instant::now();
                                    }
                                    x.leave_out("cancelled");
                                    Err(RpcError::new(ErrorCode::Cancelled, "the migration was cancelled; answer migration.export and exit"))
                                }
                                CallKind::Export(x) => {
                                    let r = x.append(params).await;
                                    // Silence is counted from the end of the last copy.
                                    idle_at = Some(Instant::now() + idle);
                                    // A verdict (too large) ends the export: its data is left out.
                                    end_now = x.verdict().is_some();
                                    r
                                }
                                _ => Err(RpcError::new(ErrorCode::NotNow, "archive.append is allowed only while migration.export is open")),
                            }
                        } else if matches!(kind, CallKind::ProcessJobs { .. })
                            || method.starts_with("kv.")
                            || method == p::MIGRATION_CLEAR_STATUS
                        {
                            let ctx = l.ctx.clone();
                            let is_tx = method == p::JOBS_TRANSACTION;
                            let r = tokio::task::spawn_blocking(move || serve::handle(&ctx, &method, params))
                                .await
                                .unwrap_or_else(|_| Err(RpcError::new(ErrorCode::Internal, "the handler failed")));
                            if is_tx && r.is_ok() {
                                l.jobs_changed.send_modify(|n| *n = n.wrapping_add(1));
                            }
                            r
                        } else {
                            Err(RpcError::new(ErrorCode::NotNow, format!("{method} is allowed only during process_jobs")))
                        };
                        if !send(&out_tx, Message::Response { id, result }) {
                            outcome = violation("does not read its input".into());
                        } else if end_now {
                            outcome = Some(stopped(TerminateReason::Cancelled));
                        }
                    }
                }
            }
            status = child.wait(), if exit_status.is_none() => {
                // Exited (or its wait failed); give buffered output a moment to arrive.
                exit_status = status.ok();
                exited_at = Some(Instant::now());
            }
            _ = tokio::time::sleep_until(deadline) => {
                let now = Instant::now();
                if exited_at.is_some_and(|t| now >= t + Duration::from_millis(500)) {
                    // Exited on our SIGTERM: stopped; on its own: crashed.
                    outcome = Some(if termed { stopped(terminate_reason) } else { crashed(exit_status) });
                } else if kill_at.is_some_and(|t| now >= t) {
                    signal_group(pgid, "KILL").await;
                    outcome = Some(stopped(terminate_reason));
                } else if now >= term_at && !termed {
                    termed = true;
                    signal_group(pgid, "TERM").await;
                    kill_at = Some(now + Duration::from_millis(cfg.term_grace_ms));
                } else if idle_at.is_some_and(|t| now >= t) {
                    // An export that appends nothing for this long is hung: its data is left
                    // out, and it is wound down like a call out of time.
                    idle_at = None;
                    if let CallKind::Export(x) = kind {
                        x.leave_out(&format!("hung: no append for {} ms", idle.as_millis()));
                    }
                    terminate_reason = TerminateReason::MigrationIdle;
                    hurry(&mut warn_at, &mut term_at, &out_tx, terminate_reason, grace);
                } else if warn_at.is_some_and(|t| now >= t) {
                    warn_at = None;
                    will_terminate(&out_tx, terminate_reason, grace);
                }
            }
            changed = l.gate.changed(), if gate_live => {
                if changed.is_err() {
                    // The gate's sender is gone: nothing will turn it any more; carry on.
                    gate_live = false;
                } else if matches!(*l.gate.borrow(), Gate::Wait(_)) {
                    terminate_reason = TerminateReason::Conditions;
                    hurry(&mut warn_at, &mut term_at, &out_tx, terminate_reason, grace);
                }
            }
            changed = l.stop.changed(), if stop_live => {
                if changed.is_err() {
                    stop_live = false;
                } else if *l.stop.borrow() {
                    terminate_reason = TerminateReason::Shutdown;
                    hurry(&mut warn_at, &mut term_at, &out_tx, terminate_reason, grace);
                    stop_live = false;
                }
            }
            changed = cancel.changed(), if cancel_live => {
                if changed.is_err() {
                    cancel_live = false;
                } else if *cancel.borrow() && !cancelled {
                    cancelled = true;
                    cancel_live = false;
                    idle_at = None;
                    if let CallKind::Export(x) = kind {
                        x.leave_out("cancelled");
                    }
                    terminate_reason = TerminateReason::Cancelled;
                    hurry(&mut warn_at, &mut term_at, &out_tx, terminate_reason, grace);
                }
            }
            changed = l.disabled.changed(), if disabled_live => {
                if changed.is_err() {
                    disabled_live = false;
                }
                disabled_check(&l.ctx, &mut terminate_reason, &mut warn_at, &mut term_at, &out_tx, grace).await;
            }
            _ = consent_check.tick() => {
                disabled_check(&l.ctx, &mut terminate_reason, &mut warn_at, &mut term_at, &out_tx, grace).await;
            }
        }
    }

    // Wind down: close stdin; let it exit on its own briefly, then TERM, then KILL.
    out_tx.take();
    drop(lines);
    if exit_status.is_none() {
        let exit_wait = Duration::from_millis(cfg.exit_grace_ms);
        if tokio::time::timeout(exit_wait, child.wait()).await.is_err() {
            signal_group(pgid, "TERM").await;
            if tokio::time::timeout(Duration::from_millis(cfg.term_grace_ms), child.wait())
                .await
                .is_err()
            {
                signal_group(pgid, "KILL").await;
                let _ = child.wait().await;
            }
        }
    }
    // Children that outlived the extension (same group) go too.
    signal_group(pgid, "KILL").await;
    outcome.unwrap_or(Ended::Failed(CallFailure::Stopped {
        reason: terminate_reason,
    }))
}

fn will_terminate(tx: &Option<mpsc::Sender<Vec<u8>>>, reason: TerminateReason, grace: Duration) {
    if let Some(tx) = tx {
        let params = WillTerminateParams {
            reason,
            grace_ms: grace.as_millis() as u64,
        };
        let _ = tx.try_send(
            Message::Notification {
                method: p::WILL_TERMINATE.into(),
                params: serde_json::to_value(params).unwrap_or_default(),
            }
            .to_line(),
        );
    }
}

/// Moves the end of the call to now + grace, warning now (once).
fn hurry(
    warn_at: &mut Option<Instant>,
    term_at: &mut Instant,
    tx: &Option<mpsc::Sender<Vec<u8>>>,
    reason: TerminateReason,
    grace: Duration,
) {
    let end = Instant::now() + grace;
    if end < *term_at {
        *term_at = end;
        if warn_at.is_some() {
            *warn_at = None;
            will_terminate(tx, reason, grace);
        }
    }
}

async fn disabled_check(
    ctx: &Context,
    reason: &mut TerminateReason,
    warn_at: &mut Option<Instant>,
    term_at: &mut Instant,
    tx: &Option<mpsc::Sender<Vec<u8>>>,
    grace: Duration,
) {
    let ctx2 = ctx.clone();
    let enabled = tokio::task::spawn_blocking(move || {
        ctx2.store
            .lock()
            .ok()
            .and_then(|s| s.consent(&ctx2.extension).ok())
            .map(|c| c.is_some_and(|c| c.is_enabled()))
    })
    .await
    .ok()
    .flatten();
    if enabled == Some(false) {
        *reason = TerminateReason::Disabled;
        hurry(warn_at, term_at, tx, *reason, grace);
    }
}

fn violation(message: String) -> Option<Ended> {
    Some(Ended::Failed(CallFailure::ProtocolViolation { message }))
}

fn stopped(reason: TerminateReason) -> Ended {
    Ended::Failed(CallFailure::Stopped { reason })
}

fn crashed(status: Option<std::process::ExitStatus>) -> Ended {
    use std::os::unix::process::ExitStatusExt;
    Ended::Failed(CallFailure::Crashed {
        code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
    })
}

fn spawn_failed(message: String) -> Ended {
    Ended::Failed(CallFailure::SpawnFailed { message })
}

/// Where an extension's stderr of its latest launch is kept.
pub fn log_path(data_dir: &Path, id: &str) -> std::path::PathBuf {
    data_dir.join("extensions").join(id).join("stderr.log")
}
