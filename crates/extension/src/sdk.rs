//! The Rust SDK for writing an extension: implement [`Extension`], call [`run`] from `main`.
//!
//! The SDK owns the protocol so an extension holds only its own logic: it reads the host's
//! lines on a reader thread (so `will_terminate` is seen at once, even while the extension is
//! busy in a host call or its own network I/O), answers `initialize` and `process_jobs`, and
//! gives `process_jobs` a typed [`Host`] client for every extension → Ferry method.
//!
//! Blocking std I/O only: an extension is a small process with one conversation, and keeping
//! the SDK free of an async runtime keeps extensions small and quick to build.
//!
//! Nothing the host sends can panic the SDK: a bad line is logged to stderr and skipped, a
//! bad answer to a host call becomes [`HostError::Protocol`].
//!
//! Migration (protocol version 2) is opt-in: an extension that implements
//! [`Extension::preflight`], [`Extension::export`] and [`Extension::import`] (and whose
//! manifest lists `export` / `import`) is offered version 2 by Ferry; the defaults refuse the
//! calls, so an extension that does not migrate needs no code for it.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::protocol::*;
use ferry_core::job::{Action, Job, TxItem};

/// What an extension implements. The SDK calls `initialize` once, then `process_jobs` for each
/// call the host makes; `will_terminate` only between calls (inside `process_jobs`, check
/// [`Host::will_terminate_received`] instead).
pub trait Extension {
    /// The launch's settings (config, scope, bases, job limit). An `Err` is sent to the host
    /// as the answer to `initialize`, which then stops the extension.
    fn initialize(&mut self, params: &InitializeParams) -> Result<(), String>;

    /// Does the work of one call: retry, acknowledge, create jobs. Return promptly after
    /// [`Host::will_terminate_received`] turns true.
    fn process_jobs(&mut self, host: &mut Host, params: &ProcessJobsParams) -> ProcessJobsResult;

    /// The host announced the end of the launch while no call was running.
    fn will_terminate(&mut self, _params: &WillTerminateParams) {}

    /// Version 2, `migration.preflight`: how much [`Extension::export`] would append. The
    /// default refuses: this extension does not export.
    fn preflight(&mut self) -> Result<MigrationPreflightResult, String> {
        Err("this extension does not export".into())
    }

    /// Version 2, `migration.export`: append each file of the data folder
    /// (`FERRY_EXTENSION_DATA_DIR`) with [`Archive::append`]; `Ok` once all are appended.
    /// Check [`Archive::will_terminate_received`] between files (cancelled, or silent too long).
    fn export(&mut self, _archive: &mut Archive<'_, '_>) -> Result<(), String> {
        Err("this extension does not export".into())
    }

    /// Version 2, `migration.import`: copy or move what you want out of `dir` into your data
    /// folder. An `Err` (or a crash) makes Ferry wipe the data folder and the key-value store,
    /// so a half-done import never lingers. The outcome is reported in the next `initialize`
    /// ([`InitializeParams::import_status`]) until [`Host::clear_import_status`].
    fn import(
        &mut self,
        _host: &mut Host,
        _dir: &Path,
        _source: &ImportSource,
    ) -> Result<(), String> {
        Err("this extension does not import".into())
    }
}

/// The export in progress: `migration.export`'s handle on the host.
pub struct Archive<'h, 'c> {
    host: &'h mut Host<'c>,
}

impl std::fmt::Debug for Archive<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive").field("host", &self.host).finish()
    }
}

impl<'c> Archive<'_, 'c> {
    /// Sends `archive.append` and waits until Ferry has the bytes safely (its answer is the
    /// progress and the backpressure). Returns the bytes copied. `path` must be a regular file
    /// inside the data folder; `path_in_archive` is relative and `/`-separated.
    pub fn append(
        &mut self,
        path: impl AsRef<Path>,
        path_in_archive: &str,
    ) -> Result<u64, HostError> {
        let Some(path) = path.as_ref().to_str() else {
            return Err(HostError::Invalid {
                method: ARCHIVE_APPEND.into(),
                detail: "the protocol carries only UTF-8 paths".into(),
            });
        };
        let r: ArchiveAppendResult = self.host.call(
            ARCHIVE_APPEND,
            &ArchiveAppendParams {
                path: path.to_owned(),
                path_in_archive: path_in_archive.to_owned(),
            },
        )?;
        Ok(r.size)
    }

    /// Whether Ferry sent `will_terminate` (cancelled, or the export was silent too long).
    pub fn will_terminate_received(&self) -> bool {
        self.host.will_terminate_received()
    }

    /// The host, for the key-value store during an export.
    pub fn host(&mut self) -> &mut Host<'c> {
        self.host
    }
}

/// How to react to a failed host call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Trying again later (this call or the next) can succeed: answer `processing`.
    Transient,
    /// The call itself is wrong or refused; repeating it will fail the same way.
    Permanent,
    /// The host is gone or no longer takes calls: return from `process_jobs` now.
    Terminated,
}

/// A failed host call.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The host answered with an error.
    #[error("{method}: {error}")]
    Rpc { method: String, error: RpcError },
    /// The host closed our stdin (or it broke): no answer will come.
    #[error("{method}: the host closed the connection")]
    Closed { method: String },
    /// The host's answer did not have the documented shape.
    #[error("{method}: unexpected answer from the host: {detail}")]
    Protocol { method: String, detail: String },
    /// Writing to the host failed (stdout closed).
    #[error("{method}: writing to the host: {source}")]
    Write {
        method: String,
        #[source]
        source: std::io::Error,
    },
    /// The request was not sent: it breaks a documented limit (e.g. a kv value too large).
    #[error("{method}: {detail}")]
    Invalid { method: String, detail: String },
}

impl HostError {
    /// What to do next.
    pub fn class(&self) -> ErrorClass {
        match self {
            HostError::Rpc { error, .. } => match error.kind() {
                Some(ErrorCode::NotNow) => ErrorClass::Terminated,
                Some(code) if code.is_transient() => ErrorClass::Transient,
                // An error code from a newer host: assume it may pass.
                None => ErrorClass::Transient,
                Some(_) => ErrorClass::Permanent,
            },
            HostError::Closed { .. } | HostError::Write { .. } => ErrorClass::Terminated,
            HostError::Protocol { .. } | HostError::Invalid { .. } => ErrorClass::Permanent,
        }
    }

    /// The host's error code, when the host answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            HostError::Rpc { error, .. } => error.kind(),
            _ => None,
        }
    }

    /// The host's error object, when it answered with one.
    pub fn rpc(&self) -> Option<&RpcError> {
        match self {
            HostError::Rpc { error, .. } => Some(error),
            _ => None,
        }
    }

    /// `data.reason` of a rejected transaction (`limit_exceeded`, `wrong_state`, …).
    pub fn rejection_reason(&self) -> Option<&str> {
        match self {
            HostError::Rpc { error, .. }
                if error.kind() == Some(ErrorCode::TransactionRejected) =>
            {
                error.data_str("reason")
            }
            _ => None,
        }
    }
}

/// How many times [`Host::call_raw`] repeats a call the host answered `rate_limited`.
pub const RATE_LIMIT_RETRIES: u32 = 5;
/// The longest it waits before one such repeat, whatever the host asked.
pub const RATE_LIMIT_MAX_WAIT_MS: u64 = 2_000;

/// What the reader thread hands the main loop, in stream order.
#[derive(Debug)]
enum Incoming {
    Message(Message),
    /// stdin ended (or failed): the host has nothing more to say.
    Closed,
}

/// `will_terminate` as seen by the reader thread: set when it arrives, cleared when the next
/// `process_jobs` request is read (stream order, so it always refers to the right call).
#[derive(Debug, Default)]
struct TerminateState {
    flag: AtomicBool,
    params: Mutex<Option<WillTerminateParams>>,
}

/// A cheap, cloneable view of the `will_terminate` flag, for threads an extension runs itself.
#[derive(Debug, Clone)]
pub struct TerminateFlag(Arc<TerminateState>);

impl TerminateFlag {
    pub fn is_set(&self) -> bool {
        self.0.flag.load(Ordering::SeqCst)
    }
}

/// Reads one line of at most `max` bytes (newline excluded). `Ok(None)` at end of input;
/// `Ok(Some(Err(len)))` for a line over the limit, which is consumed and dropped.
fn read_bounded_line(
    r: &mut impl BufRead,
    max: usize,
) -> std::io::Result<Option<Result<Vec<u8>, usize>>> {
    let mut line = Vec::new();
    let mut len = 0usize;
    let mut any = false;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            if !any {
                return Ok(None);
            }
            break;
        }
        any = true;
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        len += chunk.len();
        if len <= max {
            line.extend_from_slice(chunk);
        } else {
            line = Vec::new();
        }
        let used = done.unwrap_or(buf.len());
        r.consume(used);
        if done.is_some() {
            break;
        }
    }
    if len > max {
        return Ok(Some(Err(len)));
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(Ok(line)))
}

fn reader_loop(input: impl Read, tx: Sender<Incoming>, terminate: Arc<TerminateState>) {
    let mut r = BufReader::with_capacity(64 * 1024, input);
    loop {
        let line = match read_bounded_line(&mut r, MAX_MESSAGE_BYTES) {
            Ok(Some(Ok(line))) => line,
            Ok(Some(Err(len))) => {
                eprintln!(
                    "ferry-extension: dropped a line of {len} bytes from the host (over the limit)"
                );
                continue;
            }
            Ok(None) => break,
            Err(e) => {
                eprintln!("ferry-extension: reading from the host: {e}");
                break;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let msg = match Message::parse(&line) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("ferry-extension: ignored a line from the host: {e}");
                continue;
            }
        };
        match &msg {
            // The host could not read a line of ours (not JSON, or not JSON-RPC): it answers
            // with a null id, so no call of ours is waiting for this. Logged, never fatal.
            Message::Response {
                id: Id::Null,
                result,
            } => {
                match result {
                    Err(e) => eprintln!("ferry-extension: the host could not read a line: {e}"),
                    Ok(_) => eprintln!("ferry-extension: ignored an answer without an id"),
                }
                continue;
            }
            Message::Notification { method, params } if method == WILL_TERMINATE => {
                let p = serde_json::from_value::<WillTerminateParams>(params.clone()).ok();
                if let Ok(mut slot) = terminate.params.lock() {
                    *slot = p;
                }
                terminate.flag.store(true, Ordering::SeqCst);
            }
            Message::Request { method, .. } if starts_a_call(method) => {
                terminate.flag.store(false, Ordering::SeqCst);
                if let Ok(mut slot) = terminate.params.lock() {
                    *slot = None;
                }
            }
            _ => {}
        }
        if tx.send(Incoming::Message(msg)).is_err() {
            return;
        }
    }
    let _ = tx.send(Incoming::Closed);
}

/// Whether a request from the host opens a call (a fresh `will_terminate` state).
fn starts_a_call(method: &str) -> bool {
    [
        PROCESS_JOBS,
        MIGRATION_PREFLIGHT,
        MIGRATION_EXPORT,
        MIGRATION_IMPORT,
    ]
    .contains(&method)
}

/// The connection to the host, shared by the main loop and [`Host`].
struct Conn {
    rx: Receiver<Incoming>,
    out: Box<dyn Write + Send>,
    terminate: Arc<TerminateState>,
    closed: bool,
    next_id: i64,
}

impl Conn {
    fn send(&mut self, msg: &Message) -> std::io::Result<()> {
        let line = msg.to_line();
        self.out.write_all(&line)?;
        self.out.flush()
    }

    fn respond(&mut self, id: Id, result: Result<serde_json::Value, RpcError>) {
        if let Err(e) = self.send(&Message::Response { id, result }) {
            eprintln!("ferry-extension: writing to the host: {e}");
        }
    }
}

/// The typed client for the host's methods, valid during one `process_jobs` call.
pub struct Host<'c> {
    conn: &'c mut Conn,
}

impl std::fmt::Debug for Host<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("terminating", &self.will_terminate_received())
            .finish()
    }
}

impl Host<'_> {
    /// Whether the host sent `will_terminate` during this call: finish up and return.
    pub fn will_terminate_received(&self) -> bool {
        self.conn.terminate.flag.load(Ordering::SeqCst)
    }

    /// The `will_terminate` parameters, once received (unless they were malformed).
    pub fn termination(&self) -> Option<WillTerminateParams> {
        self.conn
            .terminate
            .params
            .lock()
            .ok()
            .and_then(|p| p.clone())
    }

    /// A flag the extension may poll from its own threads.
    pub fn terminate_flag(&self) -> TerminateFlag {
        TerminateFlag(self.conn.terminate.clone())
    }

    /// Calls any host method with JSON params; waits for its answer. A `rate_limited` answer
    /// is retried after the host's `retry_after_ms` (at most [`RATE_LIMIT_RETRIES`] times,
    /// each wait capped at [`RATE_LIMIT_MAX_WAIT_MS`], never after `will_terminate`).
    pub fn call_raw(
        &mut self,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, HostError> {
        let mut tries = 0;
        loop {
            match self.call_once(method, params.clone()) {
                Err(HostError::Rpc { error, .. })
                    if error.kind() == Some(ErrorCode::RateLimited)
                        && tries < RATE_LIMIT_RETRIES
                        && !self.will_terminate_received() =>
                {
                    tries += 1;
                    let wait_ms = error
                        .data_u64("retry_after_ms")
                        .unwrap_or(100)
                        .min(RATE_LIMIT_MAX_WAIT_MS);
                    std::thread::sleep(std::time::Duration::from_millis(wait_ms));
                }
                other => return other,
            }
        }
    }

    fn call_once(
        &mut self,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, HostError> {
        if self.conn.closed {
            return Err(HostError::Closed {
                method: method.into(),
            });
        }
        self.conn.next_id += 1;
        let id = Id::Number(self.conn.next_id);
        self.conn
            .send(&Message::Request {
                id: id.clone(),
                method: method.into(),
                params,
            })
            .map_err(|source| HostError::Write {
                method: method.into(),
                source,
            })?;
        loop {
            let incoming = match self.conn.rx.recv() {
                Ok(i) => i,
                Err(_) => Incoming::Closed,
            };
            match incoming {
                Incoming::Closed => {
                    self.conn.closed = true;
                    return Err(HostError::Closed {
                        method: method.into(),
                    });
                }
                Incoming::Message(Message::Response { id: rid, result }) if rid == id => {
                    return result.map_err(|error| HostError::Rpc {
                        method: method.into(),
                        error,
                    });
                }
                Incoming::Message(Message::Response { id: rid, .. }) => {
                    eprintln!("ferry-extension: ignored an answer to unknown request {rid:?}");
                }
                // The flag was already set by the reader thread.
                Incoming::Message(Message::Notification { .. }) => {}
                Incoming::Message(Message::Request {
                    id: rid, method, ..
                }) => {
                    // The host may not start a call while one is running.
                    self.conn.respond(
                        rid,
                        Err(RpcError::new(
                            ErrorCode::InvalidRequest,
                            format!("{method}: a call is still running"),
                        )),
                    );
                }
            }
        }
    }

    /// Calls a host method with typed params and result.
    pub fn call<P: Serialize, R: DeserializeOwned>(
        &mut self,
        method: &str,
        params: &P,
    ) -> Result<R, HostError> {
        let params = serde_json::to_value(params).map_err(|e| HostError::Invalid {
            method: method.into(),
            detail: e.to_string(),
        })?;
        let value = self.call_raw(method, params)?;
        serde_json::from_value(value).map_err(|e| HostError::Protocol {
            method: method.into(),
            detail: e.to_string(),
        })
    }

    /// `library.current_token`.
    pub fn current_token(&mut self) -> Result<String, HostError> {
        let r: TokenResult = self.call(LIBRARY_CURRENT_TOKEN, &Empty {})?;
        Ok(r.token)
    }

    /// One page of `library.changes`.
    pub fn changes(&mut self, params: &ChangesParams) -> Result<ChangesResult, HostError> {
        self.call(LIBRARY_CHANGES, params)
    }

    /// Every change after `since`, all pages: the changes and the token to store once they
    /// are handled. Fails with `change_token_expired` when the history was pruned.
    pub fn changes_all(&mut self, since: &str) -> Result<(Vec<AssetChange>, String), HostError> {
        let mut params = ChangesParams {
            since: since.to_owned(),
            until: None,
            offset: 0,
            limit: Some(MAX_CHANGES_PAGE_ITEMS),
        };
        let mut all = Vec::new();
        loop {
            let page = self.changes(&params)?;
            all.extend(page.changes);
            match page.next_offset {
                // A host that does not advance would loop forever.
                Some(next) if next > params.offset => {
                    params.until = Some(page.until);
                    params.offset = next;
                }
                Some(_) => {
                    return Err(HostError::Protocol {
                        method: LIBRARY_CHANGES.into(),
                        detail: "next_offset does not advance".into(),
                    });
                }
                None => return Ok((all, page.until)),
            }
        }
    }

    /// `library.assets` for any number of ids (split into pages of [`MAX_PAGE_ITEMS`]).
    pub fn assets(&mut self, ids: &[String]) -> Result<AssetsResult, HostError> {
        let mut out = AssetsResult {
            assets: Vec::new(),
            missing: Vec::new(),
        };
        for chunk in ids.chunks(MAX_PAGE_ITEMS as usize) {
            let r: AssetsResult = self.call(
                LIBRARY_ASSETS,
                &AssetsParams {
                    ids: chunk.to_vec(),
                },
            )?;
            out.assets.extend(r.assets);
            out.missing.extend(r.missing);
        }
        Ok(out)
    }

    /// One page of `library.list_assets`.
    pub fn list_assets(
        &mut self,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<ListAssetsResult, HostError> {
        self.call(
            LIBRARY_LIST_ASSETS,
            &ListAssetsParams {
                after: after.map(str::to_owned),
                limit,
            },
        )
    }

    /// One page of `jobs.fetch`.
    pub fn fetch(
        &mut self,
        action: Action,
        after: Option<Uuid>,
        limit: Option<u32>,
    ) -> Result<FetchResult, HostError> {
        self.call(
            JOBS_FETCH,
            &FetchParams {
                action,
                after,
                limit,
            },
        )
    }

    /// Every job in `action`'s set, all pages.
    pub fn fetch_all(&mut self, action: Action) -> Result<Vec<Job>, HostError> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self.fetch(action, after, None)?;
            all.extend(page.jobs);
            match page.next_after {
                Some(next) if Some(next) != after => after = Some(next),
                Some(_) => {
                    return Err(HostError::Protocol {
                        method: JOBS_FETCH.into(),
                        detail: "next_after does not advance".into(),
                    });
                }
                None => return Ok(all),
            }
        }
    }

    /// `jobs.transaction`: all items or none.
    pub fn transaction(&mut self, items: Vec<TxItem>) -> Result<TransactionResult, HostError> {
        self.call(JOBS_TRANSACTION, &TransactionParams { items })
    }

    /// `jobs.limit`.
    pub fn limit(&mut self) -> Result<LimitResult, HostError> {
        self.call(JOBS_LIMIT, &Empty {})
    }

    /// `kv.get`.
    pub fn kv_get(&mut self, key: &str) -> Result<Option<String>, HostError> {
        check_key(KV_GET, key)?;
        let r: KvGetResult = self.call(KV_GET, &KvGetParams { key: key.into() })?;
        Ok(r.value)
    }

    /// `kv.set`; `None` deletes. Durable once it returns.
    pub fn kv_set(&mut self, key: &str, value: Option<&str>) -> Result<(), HostError> {
        check_entry(KV_SET, key, value)?;
        let _: Empty = self.call(
            KV_SET,
            &KvSetParams {
                key: key.into(),
                value: value.map(str::to_owned),
            },
        )?;
        Ok(())
    }

    /// `kv.get_many`: the values of `keys` in their order (`None`: not set). Any number of
    /// keys: more than a call may carry are asked for in several calls.
    pub fn kv_get_many(&mut self, keys: &[String]) -> Result<Vec<Option<String>>, HostError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_PAGE_ITEMS as usize) {
            for k in chunk {
                check_key(KV_GET_MANY, k)?;
            }
            let r: KvGetManyResult = self.call(
                KV_GET_MANY,
                &KvGetManyParams {
                    keys: chunk.to_vec(),
                },
            )?;
            if r.values.len() != chunk.len() {
                return Err(HostError::Invalid {
                    method: KV_GET_MANY.into(),
                    detail: format!(
                        "asked for {} keys, answered {} values",
                        chunk.len(),
                        r.values.len()
                    ),
                });
            }
            out.extend(r.values);
        }
        Ok(out)
    }

    /// `kv.set_many`: writes (a `None` value deletes) in one durable commit, all or none.
    /// At most [`MAX_PAGE_ITEMS`] entries: split larger sets where a partial write is safe.
    pub fn kv_set_many(&mut self, entries: &[(String, Option<String>)]) -> Result<(), HostError> {
        if entries.len() > MAX_PAGE_ITEMS as usize {
            return Err(HostError::Invalid {
                method: KV_SET_MANY.into(),
                detail: format!("more than {MAX_PAGE_ITEMS} entries"),
            });
        }
        for (k, v) in entries {
            check_entry(KV_SET_MANY, k, v.as_deref())?;
        }
        let _: Empty = self.call(
            KV_SET_MANY,
            &KvSetManyParams {
                entries: entries
                    .iter()
                    .map(|(key, value)| KvSetParams {
                        key: key.clone(),
                        value: value.clone(),
                    })
                    .collect(),
            },
        )?;
        Ok(())
    }

    /// Version 2, `migration.clear_status`: forget the import status Ferry reports in
    /// `initialize` (once the extension has acted on it).
    pub fn clear_import_status(&mut self) -> Result<(), HostError> {
        let _: Empty = self.call(MIGRATION_CLEAR_STATUS, &Empty {})?;
        Ok(())
    }

    /// `kv.list`: the keys starting with `prefix`.
    pub fn kv_list(&mut self, prefix: &str) -> Result<Vec<String>, HostError> {
        let r: KvListResult = self.call(
            KV_LIST,
            &KvListParams {
                prefix: prefix.into(),
            },
        )?;
        Ok(r.keys)
    }
}

fn check_entry(method: &str, key: &str, value: Option<&str>) -> Result<(), HostError> {
    check_key(method, key)?;
    if value.is_some_and(|v| v.len() > MAX_KV_VALUE_BYTES) {
        return Err(HostError::Invalid {
            method: method.into(),
            detail: format!("value over {MAX_KV_VALUE_BYTES} bytes"),
        });
    }
    Ok(())
}

fn check_key(method: &str, key: &str) -> Result<(), HostError> {
    if key.is_empty() || key.len() > MAX_KV_KEY_BYTES {
        return Err(HostError::Invalid {
            method: method.into(),
            detail: format!("key must be 1..={MAX_KV_KEY_BYTES} bytes"),
        });
    }
    Ok(())
}

/// Why [`run_with`] ended other than by the host closing stdin.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("initialize failed: {0}")]
    Initialize(String),
    #[error(
        "the host offered protocol version {0}; this extension speaks {PROTOCOL_VERSION} to {LATEST_PROTOCOL_VERSION}"
    )]
    Version(u32),
    #[error("writing to the host: {0}")]
    Write(#[source] std::io::Error),
}

/// Speaks the protocol over this process's stdin and stdout until the host closes stdin.
/// Exit code 0 on a clean end, 1 otherwise (the reason goes to stderr).
pub fn run<E: Extension>(ext: E) -> ExitCode {
    match run_with(ext, std::io::stdin(), std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("extension stopped: {e}");
            ExitCode::FAILURE
        }
    }
}

/// [`run`] over any byte streams (tests, in-process use).
pub fn run_with<E: Extension>(
    mut ext: E,
    input: impl Read + Send + 'static,
    output: impl Write + Send + 'static,
) -> Result<(), RunError> {
    let (tx, rx) = channel();
    let terminate = Arc::new(TerminateState::default());
    let reader_state = terminate.clone();
    // Detached: it ends when stdin does; nothing waits on it, so a host that never closes
    // stdin cannot keep the extension from exiting.
    std::thread::spawn(move || reader_loop(input, tx, reader_state));
    let mut conn = Conn {
        rx,
        out: Box::new(output),
        terminate,
        closed: false,
        next_id: 0,
    };
    let mut initialized = false;
    let mut version = PROTOCOL_VERSION;
    while !conn.closed {
        let msg = match conn.rx.recv() {
            Ok(Incoming::Message(m)) => m,
            Ok(Incoming::Closed) | Err(_) => break,
        };
        match msg {
            Message::Request { id, method, params } if method == INITIALIZE => {
                let p = match serde_json::from_value::<InitializeParams>(params) {
                    Ok(p) => p,
                    Err(e) => {
                        conn.respond(
                            id,
                            Err(RpcError::new(ErrorCode::InvalidParams, e.to_string())),
                        );
                        continue;
                    }
                };
                // The host offers 2 only to a manifest that asks for it; answering what was
                // offered keeps a version 1 host (which refuses anything but 1) working.
                if !(PROTOCOL_VERSION..=LATEST_PROTOCOL_VERSION).contains(&p.protocol_version) {
                    let err = RunError::Version(p.protocol_version);
                    conn.respond(
                        id,
                        Err(RpcError::new(ErrorCode::InvalidParams, err.to_string())),
                    );
                    return Err(err);
                }
                match ext.initialize(&p) {
                    Ok(()) => {
                        initialized = true;
                        version = p.protocol_version;
                        let result = serde_json::to_value(InitializeResult {
                            protocol_version: p.protocol_version,
                        })
                        .unwrap_or(serde_json::Value::Null);
                        conn.send(&Message::Response {
                            id,
                            result: Ok(result),
                        })
                        .map_err(RunError::Write)?;
                    }
                    Err(why) => {
                        conn.respond(id, Err(RpcError::new(ErrorCode::Internal, why.clone())));
                        return Err(RunError::Initialize(why));
                    }
                }
            }
            Message::Request { id, method, params } if method == PROCESS_JOBS => {
                if !initialized {
                    conn.respond(
                        id,
                        Err(RpcError::new(
                            ErrorCode::InvalidRequest,
                            "process_jobs before initialize",
                        )),
                    );
                    continue;
                }
                let p = match serde_json::from_value::<ProcessJobsParams>(params) {
                    Ok(p) => p,
                    Err(e) => {
                        conn.respond(
                            id,
                            Err(RpcError::new(ErrorCode::InvalidParams, e.to_string())),
                        );
                        continue;
                    }
                };
                let result = {
                    let mut host = Host { conn: &mut conn };
                    ext.process_jobs(&mut host, &p)
                };
                let value = serde_json::to_value(&result).unwrap_or(serde_json::Value::Null);
                conn.send(&Message::Response {
                    id,
                    result: Ok(value),
                })
                .map_err(RunError::Write)?;
            }
            Message::Request { id, method, params }
                if initialized
                    && version >= MIGRATION_PROTOCOL_VERSION
                    && starts_a_call(&method) =>
            {
                let result = migration_call(&mut ext, &mut conn, &method, params);
                conn.send(&Message::Response { id, result })
                    .map_err(RunError::Write)?;
            }
            Message::Request { id, method, .. } => {
                conn.respond(
                    id,
                    Err(RpcError::new(
                        ErrorCode::MethodNotFound,
                        format!("unknown method {method:?}"),
                    )),
                );
            }
            Message::Notification { method, params } if method == WILL_TERMINATE => {
                if let Ok(p) = serde_json::from_value::<WillTerminateParams>(params) {
                    ext.will_terminate(&p);
                }
            }
            Message::Notification { .. } => {}
            Message::Response { id, .. } => {
                eprintln!("ferry-extension: ignored an answer to unknown request {id:?}");
            }
        }
    }
    Ok(())
}

/// Answers one version 2 call (`migration.*`) with the extension's hooks.
fn migration_call<E: Extension>(
    ext: &mut E,
    conn: &mut Conn,
    method: &str,
    params: serde_json::Value,
) -> Result<serde_json::Value, RpcError> {
    let refused = |why: String| RpcError::new(ErrorCode::Internal, why);
    let value = |v: Result<serde_json::Value, serde_json::Error>| {
        v.map_err(|e| RpcError::new(ErrorCode::Internal, e.to_string()))
    };
    match method {
        MIGRATION_PREFLIGHT => value(serde_json::to_value(ext.preflight().map_err(refused)?)),
        MIGRATION_EXPORT => {
            let mut host = Host { conn };
            let mut archive = Archive { host: &mut host };
            ext.export(&mut archive).map_err(refused)?;
            value(serde_json::to_value(Empty {}))
        }
        MIGRATION_IMPORT => {
            let p: MigrationImportParams = serde_json::from_value(params)
                .map_err(|e| RpcError::new(ErrorCode::InvalidParams, e.to_string()))?;
            let mut host = Host { conn };
            ext.import(&mut host, Path::new(&p.dir), &p.source)
                .map_err(refused)?;
            value(serde_json::to_value(Empty {}))
        }
        // `starts_a_call` lets only the calls above (and process_jobs, matched earlier) in.
        other => Err(RpcError::new(
            ErrorCode::MethodNotFound,
            format!("unknown method {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn bounded_lines_split_and_drop_long_ones() {
        let mut r = Cursor::new(b"ab\r\nxxxxxxxx\ncd".to_vec());
        assert_eq!(
            read_bounded_line(&mut r, 4).unwrap(),
            Some(Ok(b"ab".to_vec()))
        );
        assert_eq!(read_bounded_line(&mut r, 4).unwrap(), Some(Err(8)));
        assert_eq!(
            read_bounded_line(&mut r, 4).unwrap(),
            Some(Ok(b"cd".to_vec()))
        );
        assert_eq!(read_bounded_line(&mut r, 4).unwrap(), None);
    }

    #[test]
    fn errors_are_classified_by_code() {
        let rpc = |c| HostError::Rpc {
            method: "m".into(),
            error: RpcError::new(c, "x"),
        };
        assert_eq!(rpc(ErrorCode::RateLimited).class(), ErrorClass::Transient);
        assert_eq!(rpc(ErrorCode::Unavailable).class(), ErrorClass::Transient);
        assert_eq!(rpc(ErrorCode::NotNow).class(), ErrorClass::Terminated);
        assert_eq!(
            rpc(ErrorCode::ChangeTokenExpired).class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            HostError::Closed { method: "m".into() }.class(),
            ErrorClass::Terminated
        );
        let mut data = serde_json::Map::new();
        data.insert("reason".into(), "limit_exceeded".into());
        let e = HostError::Rpc {
            method: "m".into(),
            error: RpcError::with_data(ErrorCode::TransactionRejected, "x", data),
        };
        assert_eq!(e.rejection_reason(), Some("limit_exceeded"));
    }
}
